"""The cluster stage: submitting arrays and the model server, the worker that runs one candidate, its confinement
and the trusted scorer."""
