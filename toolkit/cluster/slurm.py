"""SLURM through submitit: ONE array per batch of candidates (one sbatch), job states for all tracked jobs from
ONE sacct call, single long-lived jobs (the vLLM server, the RL trainer) with the same scrubbed environment.
The result file stays the truth; states only reveal jobs that died silently.
"""
from __future__ import annotations

import contextlib
import functools
import math
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import submitit

from toolkit import jobenv
from toolkit.cluster.base import UNKNOWN, Cluster, ClusterError, JobSpec, JobState, run_command, time_limit_min
from toolkit.cluster.worker import WorkerTask, run_task
from toolkit.config import ClusterConfig
from toolkit.envs import Resources


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

    def submit_job(self, fn: Any, args: tuple[Any, ...], spec: JobSpec) -> str:
        executor = submitit.AutoExecutor(folder=self.jobs_dir, cluster="slurm")
        executor.update_parameters(**self.job_parameters(spec))
        with sbatch_environment(jobenv.sbatch_environ(extra_allow=self.cfg.env_passthrough)):
            return str(executor.submit(fn, *args).job_id)

    def job_parameters(self, spec: JobSpec) -> dict[str, object]:
        extra: dict[str, object] = {"export": "ALL", **self.cfg.sbatch_extra, **spec.sbatch_extra}
        params: dict[str, object] = dict(name=spec.name, timeout_min=spec.time_min, cpus_per_task=spec.cpus,
                                         mem_gb=spec.mem_gb, slurm_additional_parameters=extra)
        if spec.gpus:
            params["gpus_per_node"] = spec.gpus
        if self.cfg.setup:
            params["slurm_setup"] = list(self.cfg.setup)
        return {**params, **self.site(spec.partition)}

    def site(self, partition: str = "") -> dict[str, object]:
        """Partition (a job's own, else the config's), account and QOS, as submitit parameters."""
        given = (("partition", partition or self.cfg.partition), ("account", self.cfg.account), ("qos", self.cfg.qos))
        return {f"slurm_{k}": v for k, v in given if v}

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
        return {**params, **self.site()}

    def cancel(self, job_id: str) -> None:
        with contextlib.suppress(ClusterError):    # best effort: the job may be gone already
            run_command(["scancel", job_id])

    def find_jobs(self, job_name: str) -> list[str]:
        """Raises ClusterError when SLURM cannot be asked: then nobody knows, and nothing may be resubmitted."""
        text = run_command(["squeue", "-h", "-r", "-t", "all", "-n", job_name, "-o", "%i|%T"])
        text += run_command(["sacct", "-X", "-n", "-P", "-S", "now-30days", "--name", job_name, "-o", "JobID,State"])
        ids = set(_parse_rows(text))
        return sorted(ids, key=lambda j: [int(x) for x in j.split("_") if x.isdigit()])

    def states(self, job_ids: list[str]) -> dict[str, JobState]:
        """sacct first (it knows finished jobs); squeue when sacct fails or does not know them yet."""
        if not job_ids:
            return {}
        masters = sorted({j.split("_")[0] for j in job_ids})
        try:
            rows = _sacct(masters)
        except ClusterError:
            rows = {}
        rows = rows or _squeue(masters)
        return {j: rows.get(j, UNKNOWN) for j in job_ids}


DEFAULT_MAX_ARRAY_SIZE = 1001     # SLURM's default MaxArraySize (task indices 0..1000)


@functools.lru_cache(maxsize=1)
def max_array_size() -> int:
    """The site's MaxArraySize (`scontrol show config`), asked once per process."""
    try:
        text = run_command(["scontrol", "show", "config"])
    except ClusterError:
        return DEFAULT_MAX_ARRAY_SIZE
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE)
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
    try:
        run_command(cmd, env=jobenv.sbatch_environ(extra_allow=cfg.env_passthrough))
    except ClusterError as exc:
        return str(exc)
    return ""


_SBATCH_ENV = threading.local()
_INSTALL_LOCK = threading.Lock()


@contextlib.contextmanager
def sbatch_environment(env: Mapping[str, str] | None = None) -> Iterator[None]:
    """Inside this block, submitit runs `sbatch` with `env` only (`env -i NAME=VALUE ... sbatch FILE`);
    by default the allow-listed environment of `jobenv.sbatch_environ`.

    submitit starts sbatch with this process's whole environment, API keys included, and has no option for
    another one; its array submission builds a fresh `SlurmExecutor`, so the one place to change is that
    class's submission command. It is wrapped once, for good, and the wrapper reads the environment of the
    calling thread's innermost block: blocks in several threads never see each other's environment, and
    outside a block the command is submitit's own. (Swapping the method per block leaked a block's
    environment into every later submission when two threads overlapped.) os.environ is never touched:
    other threads of the daemon read it. `env` holds only allow-listed, non-secret values.
    """
    env = jobenv.sbatch_environ() if env is None else env
    _install_env_prefix()
    outer = getattr(_SBATCH_ENV, "env", None)
    _SBATCH_ENV.env = dict(env)
    try:
        yield
    finally:
        _SBATCH_ENV.env = outer


def _install_env_prefix() -> None:
    """Wrap `SlurmExecutor._make_submission_command` once per process (idempotent, thread-safe)."""
    cls = submitit.SlurmExecutor
    with _INSTALL_LOCK:
        original = cls._make_submission_command
        if getattr(original, "toolkit_env_prefix", False):
            return

        @functools.wraps(original)
        def command(self: submitit.SlurmExecutor, submission_file_path: Any) -> list[str]:
            env: dict[str, str] | None = getattr(_SBATCH_ENV, "env", None)
            bare: list[str] = original(self, submission_file_path)
            return bare if env is None else _env_prefix(env) + bare

        command.toolkit_env_prefix = True  # type: ignore[attr-defined]
        cls._make_submission_command = command  # type: ignore[method-assign]


def _env_prefix(env: Mapping[str, str]) -> list[str]:
    return ["env", "-i", *(f"{name}={value}" for name, value in sorted(env.items()))]


def _sacct(masters: list[str]) -> dict[str, JobState]:
    cmd = ["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(masters)]
    return _parse_rows(run_command(cmd))


def _squeue(masters: list[str]) -> dict[str, JobState]:
    cmd = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T", "-j", ",".join(masters)]
    return _parse_rows(run_command(cmd))


def _parse_rows(text: str) -> dict[str, JobState]:
    """Rows 'ID|STATE'; pending array ranges like 12_[3-5,7%2] expand to one id per task."""
    states: dict[str, JobState] = {}
    for line in text.splitlines():
        job_id, _, raw = line.strip().partition("|")
        for one in expand_array_id(job_id):
            states[one] = JobState.parse(raw)
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


