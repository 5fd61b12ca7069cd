"""The search stage: ideation, exploit/explore policy, the evolutionary search, near-duplicate checks and
certification."""
