"""Clusters without SLURM: `local` runs real processes on this machine through submitit's local executor
(workstations and tests), `debug` runs in-process and synchronously (unit tests of the logic only)."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Any

import submitit

from toolkit import jobenv
from toolkit.cluster.base import Cluster, JobSpec, JobState, time_limit_min
from toolkit.cluster.worker import WorkerTask, run_task
from toolkit.envs import Resources


def unset_secrets_line(environ: dict[str, str], extra_allow: tuple[str, ...] = ()) -> str:
    """A shell line that drops every variable not on the job allow-list (API keys among them)."""
    keep = jobenv.job_environ(environ, extra_allow)
    names = sorted(k for k in environ if k not in keep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k))
    return "unset " + " ".join(names) if names else "true"


class LocalCluster(Cluster):
    """Real processes on this machine through submitit's local executor: for workstations and tests."""
    name = "local"

    def submit(self, tasks: list[WorkerTask], resources: Resources, job_name: str) -> list[str]:
        executor = submitit.LocalExecutor(folder=self.jobs_dir)
        # submitit's local executor copies os.environ into the job; its `setup` lines run in the shell that
        # starts the job, so the secrets are dropped there (os.environ itself is never touched: other
        # threads of the daemon read it concurrently).
        executor.update_parameters(timeout_min=time_limit_min(resources, self.cfg.time_margin_min),
                                   setup=self.setup())
        jobs = executor.map_array(run_task, tasks)
        return [job.job_id for job in jobs]

    def submit_job(self, fn: Any, args: tuple[Any, ...], spec: JobSpec) -> str:
        executor = submitit.LocalExecutor(folder=self.jobs_dir)
        executor.update_parameters(timeout_min=spec.time_min, setup=self.setup())
        return str(executor.submit(fn, *args).job_id)

    def setup(self) -> list[str]:
        return [unset_secrets_line(dict(os.environ), self.cfg.env_passthrough), *self.cfg.setup]

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        return {j: _local_state(j) for j in job_ids}

    def cancel(self, job_id: str) -> None:
        if job_id.isdigit():
            try:
                os.killpg(int(job_id), 15)
            except OSError:
                with contextlib.suppress(OSError):
                    os.kill(int(job_id), 15)


def _local_state(job_id: str) -> JobState:
    pid = int(job_id) if job_id.isdigit() else -1
    _reap(pid)
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return JobState("FINISHED", "finished", "completed")
    return JobState("FINISHED", "finished", "completed") if "\nState:\tZ" in status else JobState("RUNNING", "running")


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class DebugCluster(Cluster):
    """In-process, synchronous (submitit's debug executor): for unit tests of the logic only."""
    name = "debug"

    def submit(self, tasks: list[WorkerTask], resources: Resources, job_name: str) -> list[str]:
        executor = submitit.DebugExecutor(folder=self.jobs_dir)
        jobs = executor.map_array(run_task, tasks)
        for job in jobs:
            job.result()
        return [f"debug-{job.job_id}" for job in jobs]

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        return {j: JobState("FINISHED", "finished", "completed") for j in job_ids}
