"""serve-llm on the dev cluster, with the loopback fake server in place of the vLLM command: the job, the
health wait, the hand-off to the ideator/implementer and the stop at the end are all real."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from helpers import TOY_ENV, copy_env, make_diff
from toolkit.config import SearchRunConfig, from_dict
from toolkit.loop import run_search


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_replay(path: Path) -> None:
    ideas = [{"title": "Faster LR", "description": "Set LR to 0.3 [LR-0.3]"},
             {"title": "Slower LR", "description": "Set LR to 0.02 [LR-0.02]"}]
    entries = [{"match": "Reply with ONLY a JSON array", "text": json.dumps(ideas)}]
    for lr in ("0.3", "0.02"):
        diff = make_diff(TOY_ENV / "code", "train.py", "LR = 0.05 ", f"LR = {lr} ")
        entries.append({"match": f"[LR-{lr}]\n\n# Your answer", "text": diff})
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


@pytest.mark.slurm
@pytest.mark.slow
def test_search_with_served_model(tmp_path: Path) -> None:
    write_replay(tmp_path / "replay.jsonl")
    port = free_port()
    command = (f"{sys.executable} -m toolkit.testing.fake_llm --host {{bind}} --port {{port}} "
               f"--replay {tmp_path / 'replay.jsonl'}")
    cfg = from_dict(SearchRunConfig, {
        "env": str(copy_env(tmp_path / "env")),
        "serve_llm": {"model": "Qwen/Qwen3-30B-A3B", "partition": "h100", "gpus": 1, "cpus": 1, "mem_gb": 1,
                      "port": port, "command": command, "advertise_host": "127.0.0.1", "health_timeout_s": 120},
        "implement": {"samples": 1, "revisions": 0},
        "cluster": {"cluster": "slurm", "partition": "debug", "poll_s": 1.0},
        "search": {"epochs": 1, "ideas_per_epoch": 2, "ideas_per_call": 2, "run_baseline": False}}, "test")
    state = run_search(tmp_path / "run", cfg, Console(record=True), live=False)
    assert state.search.finished
    assert sorted(v.status for v in state.candidates.values()) == ["ok", "ok"]
    calls = [json.loads(line) for line in (tmp_path / "run" / "state" / "llm_calls.jsonl").read_text().splitlines()]
    assert len(calls) == 3 and all(c["model"] == "Qwen/Qwen3-30B-A3B" and c["status"] == "ok" for c in calls)
    assert {c["tag"].split(":")[0] for c in calls} == {"ideate", "implement"}
    job_id = json.loads((tmp_path / "run" / "llm_server.json").read_text())["job_id"]
    partition = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "Partition,AllocTRES", "-j", job_id],
                               capture_output=True, text=True).stdout
    assert "h100" in partition and "gres/gpu=1" in partition
    for _ in range(60):  # cancelled with the search (sacct is eventually consistent)
        state_out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
        if not state_out.strip() or "CANCEL" in state_out or "COMPLETING" in state_out:
            break
        import time
        time.sleep(1)
    assert not state_out.strip() or "RUNNING" not in state_out


@pytest.mark.slurm
def test_served_endpoints_are_private_distinct_and_never_a_foreign_server(tmp_path: Path) -> None:
    """Two servers at once, both preferring a port a foreign (keyless) server already holds: each gets its own
    free port, answers only its own key, and the foreign one is never published; the key is in no command
    line, no job record and no file of the run directory but its 0600 secret file."""
    from toolkit.cluster.serve import _status, start_server, stop_server, wait_for_endpoint
    from toolkit.config import ClusterConfig, ServeConfig
    from toolkit.testing.fake_llm import FakeLLMServer

    cluster = ClusterConfig(cluster="slurm", partition="debug")
    runs = [tmp_path / "a", tmp_path / "b"]
    with FakeLLMServer() as foreign:
        taken = int(foreign.base_url.rsplit(":", 1)[1])
        command = f"{sys.executable} -m toolkit.testing.fake_llm --host {{bind}} --port {{port}}"
        cfg = ServeConfig(model="m", partition="debug", gpus=0, cpus=1, mem_gb=1, port=taken, command=command,
                          health_timeout_s=120)
        for run in runs:
            run.mkdir()
        try:
            jobs = [start_server(cfg, cluster, run) for run in runs]
            urls = [wait_for_endpoint(cfg, cluster, run, job, Console(quiet=True)) for run, job in zip(runs, jobs)]
            keys = [(run / "llm_secret").read_text().strip() for run in runs]
            ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in urls]
            assert taken not in ports and ports[0] != ports[1], ports
            for url, key, other in zip(urls, keys, reversed(keys)):
                assert (_status(url, ""), _status(url, other), _status(url, key)) == (401, 401, 200)
            ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
            shown = subprocess.run(["scontrol", "show", "job", "-d", *jobs], capture_output=True, text=True).stdout
            for run, key in zip(runs, keys):
                assert key not in ps and key not in shown
                assert (run / "llm_secret").stat().st_mode & 0o777 == 0o600
                assert (run / "llm_endpoint.json").stat().st_mode & 0o777 == 0o600
                carriers = [p for p in run.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
                assert carriers == [run / "llm_secret"], carriers
        finally:
            for run in runs:
                stop_server(cluster, run)
