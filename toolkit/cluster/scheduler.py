"""The cluster behind a small interface: slurm, local and debug implementations (no string switches).

A batch of ready candidates becomes ONE submitit array (one sbatch). Job states for all tracked jobs come
from ONE sacct call per tick; the result file stays the truth, states only reveal jobs that died silently.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import re
import subprocess
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import submitit

from toolkit import jobenv
from toolkit.cluster.worker import WorkerTask, run_task
from toolkit.config import ClusterConfig
from toolkit.envs import Resources

TERMINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED", "FINISHED", "INTERRUPTED")
QUEUED = ("PENDING", "REQUEUED", "CONFIGURING", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED")


@dataclass(frozen=True)
class JobState:
    raw: str                           # what the cluster said, e.g. "CANCELLED by 0"
    phase: str                         # queued | running | finished | unknown


def phase_of(raw: str) -> str:
    word = raw.split()[0].rstrip("+") if raw else ""
    if word in TERMINAL:
        return "finished"
    if word in QUEUED:
        return "queued"
    return "running" if word in ("RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING") else "unknown"


def time_limit_min(resources: Resources, margin_min: int) -> int:
    return int(math.ceil(resources.time_min + resources.eval_time_min + margin_min))


class Cluster(ABC):
    name = "abstract"

    def __init__(self, jobs_dir: Path, cfg: ClusterConfig) -> None:
        self.jobs_dir, self.cfg = jobs_dir, cfg

    @abstractmethod
    def submit(self, tasks: list[WorkerTask], resources: Resources, job_name: str) -> list[str]:
        """Submit all tasks as one array; return their job ids in order."""

    @abstractmethod
    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        """Current state of each job (one cluster query for all of them)."""

    def cancel(self, job_id: str) -> None:  # noqa: B027 (optional: a cluster that cannot cancel does nothing)
        """Stop a job (best effort)."""

    def find_jobs(self, job_name: str) -> list[str]:
        """Job ids of an array submitted under this unique name, in task order ([] if none or unknowable)."""
        return []

    def log_tail(self, job_id: str, chars: int = 3000) -> str:
        paths = sorted(self.jobs_dir.glob(f"{job_id}_*_log.*")) + sorted(self.jobs_dir.glob(f"{job_id}_log.*"))
        return "".join(p.read_text(errors="replace")[-chars:] for p in paths if p.is_file())


class SlurmCluster(Cluster):
    name = "slurm"

    def submit(self, tasks: list[WorkerTask], resources: Resources, job_name: str) -> list[str]:
        """One array per batch; a batch larger than the site's MaxArraySize goes out as several arrays under
        the same name (a restart re-attaches to all of them by that name)."""
        size = self.cfg.max_array_size or max_array_size()
        ids: list[str] = []
        for start in range(0, len(tasks), size):
            ids += self._submit_array(tasks[start:start + size], resources, job_name)
        return ids

    def _submit_array(self, tasks: list[WorkerTask], resources: Resources, job_name: str) -> list[str]:
        executor = submitit.AutoExecutor(folder=self.jobs_dir, cluster="slurm")
        executor.update_parameters(**self.parameters(resources, len(tasks), job_name))
        with sbatch_environment(jobenv.sbatch_environ(extra_allow=self.cfg.env_passthrough)):
            jobs = executor.map_array(run_task, tasks)
        return [job.job_id for job in jobs]

    def parameters(self, resources: Resources, count: int, job_name: str) -> dict[str, object]:
        extra: dict[str, object] = {"export": "ALL", **self.cfg.sbatch_extra}
        params: dict[str, object] = dict(
            name=job_name, timeout_min=time_limit_min(resources, self.cfg.time_margin_min),
            cpus_per_task=resources.cpus, mem_gb=resources.mem_gb, nodes=resources.nodes,
            slurm_array_parallelism=min(self.cfg.array_parallelism, count),
            slurm_signal_delay_s=min(60, max(5, self.cfg.time_margin_min * 30)),
            slurm_additional_parameters=extra)
        if resources.gpus:
            params["gpus_per_node"] = resources.gpus
        if self.cfg.setup:   # the site's lines (module loads, environment activation) before the worker starts
            params["slurm_setup"] = list(self.cfg.setup)
        params.update({f"slurm_{k}": v for k, v in (("partition", self.cfg.partition), ("account", self.cfg.account),
                                                      ("qos", self.cfg.qos)) if v})
        return params

    def cancel(self, job_id: str) -> None:
        _run(["scancel", job_id])

    def find_jobs(self, job_name: str) -> list[str]:
        text = _run(["squeue", "-h", "-r", "-t", "all", "-n", job_name, "-o", "%i|%T"])
        text += _run(["sacct", "-X", "-n", "-P", "-S", "now-30days", "--name", job_name, "-o", "JobID,State"])
        ids = set(_parse_rows(text))
        return sorted(ids, key=lambda j: [int(x) for x in j.split("_") if x.isdigit()])

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        if not job_ids:
            return {}
        masters = sorted({j.split("_")[0] for j in job_ids})
        rows = _sacct(masters) or _squeue(masters)
        return {j: rows.get(j, JobState("", "unknown")) for j in job_ids}


DEFAULT_MAX_ARRAY_SIZE = 1001     # SLURM's default MaxArraySize (task indices 0..1000)


@functools.lru_cache(maxsize=1)
def max_array_size() -> int:
    """The site's MaxArraySize (`scontrol show config`), asked once per process."""
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", _run(["scontrol", "show", "config"]), re.MULTILINE)
    return max(1, int(match.group(1))) if match else DEFAULT_MAX_ARRAY_SIZE


def request_flags(cfg: ClusterConfig, resources: Resources) -> list[str]:
    """The sbatch flags of this run's arrays (what `check_request` asks SLURM about)."""
    flags = [f"--time={time_limit_min(resources, cfg.time_margin_min)}", f"--cpus-per-task={resources.cpus}",
             f"--mem={int(math.ceil(resources.mem_gb * 1024))}M", f"--nodes={resources.nodes}"]
    flags += [f"--gpus-per-node={resources.gpus}"] if resources.gpus else []
    flags += [f"--{k}={v}" for k, v in (("partition", cfg.partition), ("account", cfg.account), ("qos", cfg.qos)) if v]
    return flags + [f"--{k}={v}" if v else f"--{k}" for k, v in cfg.sbatch_extra.items() if k != "export"]


def check_request(cfg: ClusterConfig, resources: Resources) -> str:
    """'' when SLURM would accept this run's job request (`sbatch --test-only`: partition, account, QOS, GRES,
    time and memory limits), else SLURM's refusal. Nothing is submitted."""
    cmd = ["sbatch", "--test-only", *request_flags(cfg, resources), "--wrap=true"]
    env = jobenv.sbatch_environ(extra_allow=cfg.env_passthrough)
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    except FileNotFoundError:
        return "sbatch is not installed here (cluster: slurm needs a SLURM login node)"
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{' '.join(cmd)} did not run: {exc!r}"
    return "" if done.returncode == 0 else f"{' '.join(cmd)}: {(done.stderr + done.stdout).strip()[-1000:]}"


_SBATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def sbatch_environment(env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Inside this block, submitit runs `sbatch` with `env` only (`env -i NAME=VALUE ... sbatch FILE`);
    by default the allow-listed environment of `jobenv.sbatch_environ`.

    submitit starts sbatch with this process's whole environment, API keys included, and has no option for
    another one; its array submission builds a fresh `SlurmExecutor`, so the one place to change is that
    class's submission command, swapped for the duration of the block (under a lock; os.environ itself is
    never touched: other threads of the daemon read it). `env` holds only allow-listed, non-secret values.
    """
    env = jobenv.sbatch_environ() if env is None else env
    cls = submitit.SlurmExecutor
    original = cls._make_submission_command
    prefix = ["env", "-i", *(f"{name}={value}" for name, value in sorted(env.items()))]
    with _SBATCH_LOCK:
        cls._make_submission_command = (  # type: ignore[method-assign]
            lambda self, submission_file_path: prefix + original(self, submission_file_path))
        try:
            yield
        finally:
            cls._make_submission_command = original  # type: ignore[method-assign]


def _sacct(masters: list[str]) -> dict[str, JobState]:
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(masters)]
    return _parse_rows(_run(cmd))


def _squeue(masters: list[str]) -> dict[str, JobState]:
    cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(masters)]
    return _parse_rows(_run(cmd))


def _run(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return proc.stdout if proc.returncode == 0 else ""


def _parse_rows(text: str) -> dict[str, JobState]:
    """Rows 'ID|STATE'; pending array ranges like 12_[3-5,7%2] expand to one id per task."""
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        job_id, _, raw = line.strip().partition("|")
        for one in expand_array_id(job_id):
            states[one] = JobState(raw, phase_of(raw))
    return states


def expand_array_id(job_id: str) -> list[str]:
    match = re.fullmatch(r"(\d+)_\[([^\]]+)\]", job_id)
    if not match:
        return [job_id] if job_id else []
    master, spec = match.group(1), match.group(2).split("%")[0]
    ids: list[str] = []
    for part in spec.split(","):
        low, _, high = part.partition("-")
        ids += [f"{master}_{i}" for i in range(int(low), int(high or low) + 1)]
    return ids


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
                                   setup=[unset_secrets_line(dict(os.environ), self.cfg.env_passthrough),
                                          *self.cfg.setup])
        jobs = executor.map_array(run_task, tasks)
        return [job.job_id for job in jobs]

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
        return JobState("FINISHED", "finished")
    return JobState("FINISHED", "finished") if "\nState:\tZ" in status else JobState("RUNNING", "running")


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
        return {j: JobState("FINISHED", "finished") for j in job_ids}


CLUSTER_CLASSES: dict[str, type[Cluster]] = {c.name: c for c in (SlurmCluster, LocalCluster, DebugCluster)}


def make_cluster(jobs_dir: Path, cfg: ClusterConfig) -> Cluster:
    jobs_dir.mkdir(parents=True, exist_ok=True)
    return CLUSTER_CLASSES[cfg.cluster](jobs_dir, cfg)
