"""Open-weight models on the user's own GPUs: a vLLM OpenAI-compatible server as a SLURM job.

The job starts the server command, waits until it answers, then publishes its endpoint (written atomically
to the run directory); the daemon waits for that file and a healthy answer, points the ideator/implementer
at it, and cancels the job when the search ends.
"""
from __future__ import annotations

import dataclasses
import shlex
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from rich.console import Console
from rich.progress import Progress

from toolkit import fsio, jobenv
from toolkit.config import ClusterConfig, ServeConfig
from toolkit.errors import ToolkitError
from toolkit.scheduler import make_cluster, sbatch_environment

@dataclass(frozen=True)
class ServerJob:
    """What runs on the GPU node (small and picklable)."""
    cfg: ServeConfig
    endpoint_file: str

    def __call__(self) -> int:
        command = self.cfg.command.format(model=self.cfg.model, port=self.cfg.port, bind=self.cfg.bind_host,
                                          gpus=self.cfg.gpus)
        proc = subprocess.Popen(shlex.split(command), env=jobenv.job_environ())
        local = f"http://127.0.0.1:{self.cfg.port}/v1"
        while proc.poll() is None and not healthy(local):
            time.sleep(2)
        if proc.poll() is None:
            host = self.cfg.advertise_host or socket.getfqdn()
            fsio.atomic_write_json(Path(self.endpoint_file), {"base_url": f"http://{host}:{self.cfg.port}/v1",
                                                              "model": self.cfg.model, "node": socket.gethostname()})
        return proc.wait()


def healthy(base_url: str, timeout_s: float = 5.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False


def start_server(cfg: ServeConfig, cluster: ClusterConfig, run_dir: Path) -> str:
    """Submit the server job (or re-use a live one recorded in run_dir); return its job id."""
    record = run_dir / "llm_server.json"
    if record.exists():
        job_id = fsio.read_json(record)["job_id"]
        backend = make_cluster(run_dir / "jobs", cluster)
        if backend.states([job_id])[job_id].phase in ("queued", "running"):
            return job_id
    (run_dir / "llm_endpoint.json").unlink(missing_ok=True)
    job_id = _submit(cfg, cluster, run_dir)
    fsio.atomic_write_json(record, {"job_id": job_id, "cluster": cluster.cluster, "model": cfg.model})
    return job_id


def _submit(cfg: ServeConfig, cluster: ClusterConfig, run_dir: Path) -> str:
    executor = submitit.AutoExecutor(folder=run_dir / "jobs", cluster=cluster.cluster)
    params: dict[str, Any] = dict(name=f"toolkit-llm-{run_dir.name}", timeout_min=cfg.time_min,
                                  cpus_per_task=cfg.cpus, mem_gb=cfg.mem_gb)
    if cluster.cluster == "slurm":
        params.update(slurm_partition=cfg.partition or cluster.partition or None, gpus_per_node=cfg.gpus or None,
                      slurm_additional_parameters={"export": "ALL"})
    executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    with sbatch_environment():
        return executor.submit(ServerJob(cfg, str(run_dir / "llm_endpoint.json"))).job_id


def wait_for_endpoint(cfg: ServeConfig, cluster: ClusterConfig, run_dir: Path, job_id: str,
                      console: Console | None = None) -> str:
    """Block (with a progress bar) until the endpoint is published and answers; error if the job dies."""
    endpoint, backend = run_dir / "llm_endpoint.json", make_cluster(run_dir / "jobs", cluster)
    start = time.monotonic()
    with Progress(console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"waiting for the {cfg.model} server (job {job_id})", total=cfg.health_timeout_s)
        while time.monotonic() - start < cfg.health_timeout_s:
            if endpoint.exists() and healthy(url := fsio.read_json(endpoint)["base_url"]):
                return url
            if backend.states([job_id])[job_id].phase == "finished":
                raise ToolkitError(f"the LLM server job {job_id} ended before answering; see {run_dir / 'jobs'}")
            progress.update(task, completed=time.monotonic() - start)
            time.sleep(1.0)
    raise ToolkitError(f"the LLM server job {job_id} did not answer within {cfg.health_timeout_s:.0f} s")


def stop_server(cluster: ClusterConfig, run_dir: Path) -> None:
    record = run_dir / "llm_server.json"
    if record.exists():
        make_cluster(run_dir / "jobs", cluster).cancel(fsio.read_json(record)["job_id"])


def use_endpoint(cfg: Any, serve: ServeConfig, base_url: str) -> Any:
    """Point the configured roles at the served model."""
    llm = cfg.llm
    for role in serve.roles:
        settings = dataclasses.replace(getattr(llm, role), provider="openai-compatible", model=serve.model,
                                       base_url=base_url, replay_file="")
        llm = dataclasses.replace(llm, **{role: settings})
    return dataclasses.replace(cfg, llm=llm)
