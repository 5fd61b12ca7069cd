"""The same batch as test_execute.py, submitted as a real SLURM array to the dev cluster."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from test_execute import check_batch, run_batch
from toolkit.state import load_state


@pytest.mark.slurm
def test_execute_batch_on_slurm(tmp_path: Path) -> None:
    layout = run_batch(tmp_path, {"cluster": "slurm"}, ["--partition", "debug"])
    check_batch(layout)
    state = load_state(layout)
    job_ids = [v.job_id for v in state.candidates.values() if v.job_id]
    batches = layout.events.read_text().count('"kind": "submitting"')
    # each tick's ready candidates go out as one array (one sbatch): as many arrays as batches
    assert len({j.split("_")[0] for j in job_ids}) == batches <= len(job_ids), job_ids
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "JobID,Partition", "-j", job_ids[0].split("_")[0]],
                         capture_output=True, text=True, check=True).stdout
    assert "debug" in out
    result = json.loads(layout.candidate(job_ids and next(v.cid for v in state.candidates.values()
                                                           if v.status == "ok")).result.read_text())
    assert result["job_id"] in job_ids
    # the job's other processes (batch shell, worker, launcher) are out of the sandboxed candidate's reach:
    # it reads only its own environment through /proc, and that holds no key and none of the login
    # environment SLURM loads under --export=<names> (`su -` sets MAIL there; sbatch --export=ALL never runs it)
    good = next(v for v in state.candidates.values() if v.idea.startswith("IDEA-GOOD"))
    procs = json.loads((layout.candidate(good.cid).code / "env_dump.json").read_text())["job_processes"]
    assert len(procs) == 1, "the sandbox lets the candidate read its own /proc/<pid>/environ only"
    assert "planted-secret" not in json.dumps(procs) and not any("MAIL" in env for env in procs)
