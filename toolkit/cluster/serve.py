"""Open-weight models on the user's own GPUs: a vLLM OpenAI-compatible server as a SLURM job, private.

The daemon writes a per-server secret to a file only the user can read (`llm_secret`, 0600). The job reads
it on the node and hands it to the server as its API key through the server's environment (`VLLM_API_KEY`),
never on a command line (world-readable in /proc/<pid>/cmdline) nor in the job's submission. It binds
loopback when the daemon runs on the same node, else the node's own address (never 0.0.0.0 by default),
on a port found free at start. Before publishing the endpoint (0600, atomically) it checks that the server
answering is the one it started: a request without the key must be refused and one with it accepted, so a
foreign server already on that port is never published. The daemon's clients send the key.
"""
from __future__ import annotations

import dataclasses
import os
import secrets
import shlex
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

from toolkit import fsio, jobenv
from toolkit.cluster.base import JobSpec, make_cluster
from toolkit.config import ClusterConfig, ServeConfig
from toolkit.errors import ToolkitError

KEY_ENV = "TOOLKIT_LLM_SERVER_KEY"     # where the daemon's clients find the key (a *KEY* name: never sent to jobs)
SERVER_KEY_ENV = "VLLM_API_KEY"        # where vLLM (and the test stand-in) read it


@dataclass(frozen=True)
class ServerJob:
    """What runs on the GPU node (small and picklable: the secret itself is not in it)."""
    cfg: ServeConfig
    endpoint_file: str
    secret_file: str = ""
    daemon_host: str = ""

    def __call__(self) -> int:
        key = Path(self.secret_file).read_text().strip()
        bind = self.cfg.bind_host or bind_address(self.daemon_host)
        port = free_port(bind, self.cfg.port)
        command = self.cfg.command.format(model=self.cfg.model, port=port, bind=bind, gpus=self.cfg.gpus)
        proc = subprocess.Popen(shlex.split(command), env={**jobenv.job_environ(), SERVER_KEY_ENV: key})
        local = f"http://{'127.0.0.1' if bind in ('0.0.0.0', '127.0.0.1') else bind}:{port}/v1"
        while proc.poll() is None and not is_ours(local, key):
            time.sleep(2)
        if proc.poll() is None:
            host = self.cfg.advertise_host or (bind if bind != "0.0.0.0" else socket.getfqdn())
            write_private(Path(self.endpoint_file), {"base_url": f"http://{host}:{port}/v1", "model": self.cfg.model,
                                                     "node": socket.gethostname(), "port": port})
        return proc.wait()


def bind_address(daemon_host: str) -> str:
    """Loopback when the daemon shares this node; else the address other nodes reach this one by."""
    if daemon_host in (socket.gethostname(), socket.getfqdn()):
        return "127.0.0.1"
    return socket.gethostbyname(socket.getfqdn())


def free_port(bind: str, preferred: int = 0) -> int:
    """The preferred port if nothing holds it, else one the kernel finds free."""
    for port in ([preferred] if preferred else []) + [0]:
        with socket.socket() as probe:
            try:
                probe.bind((bind, port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise ToolkitError(f"no free port on {bind}")


def is_ours(base_url: str, key: str) -> bool:
    """The server that answers is the one holding our key: refused without it, answering with it."""
    return _status(base_url, "") == 401 and _status(base_url, key) == 200


def healthy(base_url: str, key: str = "", timeout_s: float = 5.0) -> bool:
    return _status(base_url, key, timeout_s) == 200


def _status(base_url: str, key: str, timeout_s: float = 5.0) -> int:
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


def write_private(path: Path, data: Any) -> None:
    """JSON or text readable only by the user, written to a temporary name and renamed."""
    import json
    text = data if isinstance(data, str) else json.dumps(data)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def server_secret(run_dir: Path) -> str:
    """The run's server key: made once (0600), reused by a restarted daemon for the same live server."""
    path = run_dir / "llm_secret"
    if not path.exists():
        write_private(path, secrets.token_urlsafe(32))
    return path.read_text().strip()


def start_server(cfg: ServeConfig, cluster: ClusterConfig, run_dir: Path) -> str:
    """Submit the server job (or re-use a live one recorded in run_dir); return its job id."""
    record = run_dir / "llm_server.json"
    if record.exists():
        job_id = fsio.read_json(record)["job_id"]
        backend = make_cluster(run_dir / "jobs", cluster)
        if backend.states([job_id])[job_id].phase in ("queued", "running"):
            return job_id
    (run_dir / "llm_endpoint.json").unlink(missing_ok=True)
    server_secret(run_dir)
    job_id = _submit(cfg, cluster, run_dir)
    fsio.atomic_write_json(record, {"job_id": job_id, "cluster": cluster.cluster, "model": cfg.model})
    return job_id


def _submit(cfg: ServeConfig, cluster: ClusterConfig, run_dir: Path) -> str:
    spec = JobSpec(name=f"toolkit-llm-{run_dir.name}", time_min=cfg.time_min, cpus=cfg.cpus, mem_gb=cfg.mem_gb,
                   gpus=cfg.gpus, partition=cfg.partition)
    job = ServerJob(cfg, str(run_dir / "llm_endpoint.json"), str(run_dir / "llm_secret"), socket.gethostname())
    return make_cluster(run_dir / "jobs", cluster).submit_job(job, (), spec)


def wait_for_endpoint(cfg: ServeConfig, cluster: ClusterConfig, run_dir: Path, job_id: str,
                      console: Console | None = None) -> str:
    """Block (with a progress bar) until the endpoint is published and answers; error if the job dies."""
    endpoint, backend = run_dir / "llm_endpoint.json", make_cluster(run_dir / "jobs", cluster)
    key = server_secret(run_dir)
    os.environ[KEY_ENV] = key   # the daemon's clients send it (a *KEY* name never reaches a job)
    start = time.monotonic()
    with Progress(console=console or Console(stderr=True), transient=True) as progress:
        task = progress.add_task(f"waiting for the {cfg.model} server (job {job_id})", total=cfg.health_timeout_s)
        while time.monotonic() - start < cfg.health_timeout_s:
            if endpoint.exists() and is_ours(url := fsio.read_json(endpoint)["base_url"], key):
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
                                       base_url=base_url, replay_file="", api_key_env=KEY_ENV)
        llm = dataclasses.replace(llm, **{role: settings})
    return dataclasses.replace(cfg, llm=llm)
