"""Integration checks for the single-node dev cluster (slurm/dev-cluster.sh start)."""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="no SLURM here: run slurm/dev-cluster.sh start"),
]

JOB_NAME = "test-dev-cluster"
DEADLINE_S = 60.0
POLL_S = 0.25


def slurm(*args: str, timeout_s: float = 30.0) -> str:
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout_s, check=True)
    return done.stdout.strip()


def sbatch(*args: str) -> str:
    return slurm("sbatch", "--parsable", f"--job-name={JOB_NAME}", "--output=/dev/null", *args).split(";")[0]


def wait_for(predicate, what: str, deadline_s: float = DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(POLL_S)


def sacct_states(job_id: str) -> dict[str, str]:
    rows = slurm("sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State").splitlines()
    return dict(row.split("|", 1) for row in rows if "|" in row)


def test_sinfo_shows_debug_default_and_h100_up() -> None:
    rows = slurm("sinfo", "-h", "-o", "%P %a").splitlines()
    assert "debug* up" in rows
    assert "h100 up" in rows


def test_array_tasks_become_completed_in_sacct() -> None:
    job_id = sbatch("--partition=debug", "--array=0-3", "--wrap=hostname")
    want = {f"{job_id}_{task}": "COMPLETED" for task in range(4)}
    # sacct is fed asynchronously; array task rows can lag the job by seconds.
    wait_for(lambda: sacct_states(job_id) == want, f"array {job_id} tasks COMPLETED in sacct")


def test_gres_job_sees_one_fake_gpu() -> None:
    env = slurm("srun", "--partition=h100", "--gres=gpu:1", f"--job-name={JOB_NAME}",
                "printenv", "CUDA_VISIBLE_DEVICES")
    assert env == "0"


def test_both_partitions_run_several_jobs_at_once() -> None:
    partitions = ("debug", "debug", "h100", "h100")
    job_ids = [sbatch(f"--partition={part}", "--time=1", "--wrap=sleep 60") for part in partitions]
    try:
        def all_running() -> bool:
            return slurm("squeue", "-h", "-j", ",".join(job_ids), "-o", "%T").split() == ["RUNNING"] * 4
        wait_for(all_running, "4 one-CPU jobs running together", deadline_s=20.0)
    finally:
        slurm("scancel", *job_ids)
