"""The cluster behind one small interface: what a submission asks for, what a job's state is, and the one
place where SLURM's commands run.

Every submission (candidate arrays, the vLLM server, the RL trainer) and every query goes through a `Cluster`
(`slurm`, `local`, `debug`; chosen by name, loaded lazily so a job's worker never imports SLURM code), and
every SLURM command through `run_command`, which raises `ClusterError` with the command and its output.
Job states are typed once here (`JobState.phase`, `JobState.end`), never re-parsed downstream.
"""
from __future__ import annotations

import importlib
import math
import subprocess
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from toolkit.config import ClusterConfig
from toolkit.envs import Resources
from toolkit.errors import ToolkitError

if TYPE_CHECKING:
    from toolkit.cluster.worker import WorkerTask

Phase = Literal["queued", "running", "finished", "unknown"]
End = Literal["completed", "failed", "cancelled", "timeout", "node_fail", "out_of_memory", "preempted", "other", ""]

QUEUED = ("PENDING", "REQUEUED", "CONFIGURING", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED")
RUNNING = ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING")
ENDS: dict[str, End] = {"COMPLETED": "completed", "FINISHED": "completed", "FAILED": "failed",
                        "CANCELLED": "cancelled", "TIMEOUT": "timeout", "DEADLINE": "timeout",
                        "NODE_FAIL": "node_fail", "OUT_OF_MEMORY": "out_of_memory", "PREEMPTED": "preempted",
                        "BOOT_FAIL": "node_fail", "INTERRUPTED": "other"}
COMMAND_TIMEOUT_S = 60.0


class ClusterError(ToolkitError):
    """A cluster command failed: the command and what it printed are in the message."""


@dataclass(frozen=True)
class JobState:
    raw: str                           # what the cluster said, e.g. "CANCELLED by 0" (kept for the record)
    phase: Phase
    end: End = ""                      # how a finished job ended; "" while it has not

    @classmethod
    def parse(cls, raw: str) -> JobState:
        word = raw.split()[0].rstrip("+") if raw else ""
        if word in ENDS:
            return cls(raw, "finished", ENDS[word])
        return cls(raw, "queued" if word in QUEUED else "running" if word in RUNNING else "unknown")


UNKNOWN = JobState("", "unknown")


@dataclass(frozen=True)
class JobSpec:
    """One long-lived job (the vLLM server, the RL trainer): what it asks the cluster for."""
    name: str
    time_min: int
    cpus: int = 1
    mem_gb: float = 4.0
    gpus: int = 0
    partition: str = ""                # "" = the cluster config's partition
    sbatch_extra: dict[str, Any] = field(default_factory=dict)


def time_limit_min(resources: Resources, margin_min: int) -> int:
    return int(math.ceil(resources.time_min + resources.eval_time_min + margin_min))


def run_command(cmd: list[str], env: dict[str, str] | None = None, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """The one place SLURM commands run: stdout, or ClusterError naming the command and its output."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except FileNotFoundError as exc:
        raise ClusterError(f"{cmd[0]} is not installed here (cluster: slurm needs a SLURM login node)") from exc
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClusterError(f"{' '.join(cmd)} did not run: {exc!r}") from exc
    if done.returncode != 0:
        raise ClusterError(f"{' '.join(cmd)} exited {done.returncode}: {(done.stderr + done.stdout).strip()[-1000:]}")
    return done.stdout


class Cluster(ABC):
    name = "abstract"

    def __init__(self, jobs_dir: Path, cfg: ClusterConfig) -> None:
        self.jobs_dir, self.cfg = jobs_dir, cfg

    @abstractmethod
    def submit(self, tasks: list[WorkerTask], resources: Resources, job_name: str) -> list[str]:
        """Submit all tasks as one array; return their job ids in order."""

    @abstractmethod
    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        """Current state of each job (one cluster query for all of them); ClusterError if it cannot be asked."""

    def submit_job(self, fn: Any, args: tuple[Any, ...], spec: JobSpec) -> str:
        """Submit one long-lived job running fn(*args) with the job environment's allow-list; its id."""
        raise ClusterError(f"the {self.name} cluster cannot run a long-lived job ({spec.name})")

    def cancel(self, job_id: str) -> None:  # noqa: B027  (an optional hook: nothing to stop by default)
        """Stop a job (best effort)."""

    def find_jobs(self, job_name: str) -> list[str]:
        """Job ids of an array submitted under this unique name, in task order ([] if none or unknowable)."""
        return []

    def log_tail(self, job_id: str, chars: int = 3000) -> str:
        paths = sorted(self.jobs_dir.glob(f"{job_id}_*_log.*")) + sorted(self.jobs_dir.glob(f"{job_id}_log.*"))
        return "".join(p.read_text(errors="replace")[-chars:] for p in paths if p.is_file())


CLUSTERS: dict[str, str] = {"slurm": "toolkit.cluster.slurm:SlurmCluster",
                            "local": "toolkit.cluster.local:LocalCluster",
                            "debug": "toolkit.cluster.local:DebugCluster"}


def make_cluster(jobs_dir: Path, cfg: ClusterConfig) -> Cluster:
    module, name = CLUSTERS[cfg.cluster].split(":")
    jobs_dir.mkdir(parents=True, exist_ok=True)
    cls: type[Cluster] = getattr(importlib.import_module(module), name)
    return cls(jobs_dir, cfg)
