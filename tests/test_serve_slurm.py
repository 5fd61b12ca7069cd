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
from toolkit.evolve import run_search


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
    command = f"{sys.executable} -m toolkit.testing.fake_llm --host 127.0.0.1 --port {{port}} --replay {tmp_path / 'replay.jsonl'}"
    cfg = from_dict(SearchRunConfig, {
        "env": str(copy_env(tmp_path / "env")),
        "serve_llm": {"model": "Qwen/Qwen3-30B-A3B", "partition": "h100", "gpus": 1, "cpus": 1, "mem_gb": 1,
                      "port": port, "command": command, "advertise_host": "127.0.0.1", "health_timeout_s": 120},
        "implement": {"samples": 1, "revisions": 0},
        "cluster": {"cluster": "slurm", "partition": "debug", "poll_s": 1.0},
        "search": {"epochs": 1, "ideas_per_epoch": 2, "ideas_per_call": 2, "run_baseline": False}}, "test")
    state = run_search(tmp_path / "run", cfg, Console(record=True), live=False)
    assert state.meta["finished"]
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
