"""`sbatch slurm/launch_search.sh CONFIG` runs the search daemon as a SLURM job to the end: USR1 (the time
limit's warning) makes it stop cleanly and requeue itself, and the requeued job resumes the run; a plain
`scancel` (TERM) stops it cleanly without a requeue. Its log, with no terminal, gets plain progress lines."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from helpers import copy_env
from search_helpers import toy_search_responder
from toolkit.testing.fake_llm import FakeLLMServer

ROOT = Path(__file__).resolve().parents[2]


def sacct_states(job_id: str) -> list[str]:
    out = subprocess.run(["sacct", "-D", "-X", "-n", "-P", "-o", "State", "-j", job_id], capture_output=True,
                         text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def finished(run: Path) -> bool:
    events = run / "state" / "events.jsonl"
    return events.exists() and '"kind": "search_finished"' in events.read_text()


def launch(tmp_path: Path, base_url: str, search: dict) -> tuple[str, Path, float]:
    """`sbatch slurm/launch_search.sh` on a toy search; returns (job id, run dir, deadline) once the daemon,
    inside the job, has submitted its first candidate."""
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": base_url + "/v1"}
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({
        "env": str(copy_env(tmp_path / "env")), "run_dir": str(tmp_path / "run"),
        "llm": {"ideator": llm, "implementer": llm}, "implement": {"samples": 1, "revisions": 1},
        "cluster": {"cluster": "local", "poll_s": 1.0}, "search": search}))
    out = subprocess.run(["sbatch", "--parsable", f"--chdir={ROOT}", f"--output={tmp_path}/daemon-%j.out",
                          f"--export=ALL,TOOLKIT_BIN={ROOT}/.venv/bin/toolkit",
                          str(ROOT / "slurm" / "launch_search.sh"), str(config)],
                         capture_output=True, text=True, check=True).stdout.strip()
    run, deadline = tmp_path / "run", time.time() + 240
    while time.time() < deadline and '"kind": "submitted"' not in _events(run):
        time.sleep(0.5)
    return out.split(";")[0], run, deadline


@pytest.mark.slurm
@pytest.mark.slow
def test_launch_search_requeues_and_completes(tmp_path: Path) -> None:
    with FakeLLMServer(toy_search_responder()) as server:
        search = {"epochs": 2, "ideas_per_epoch": 3, "ideas_per_call": 3, "certify": {"enabled": False},
                  "dedup": {"method": "off"}}
        job_id, run, deadline = launch(tmp_path, server.base_url, search)
        subprocess.run(["scancel", "--batch", "--signal=USR1", job_id], check=True)  # as at the time limit
        while time.time() < deadline and not finished(run):
            time.sleep(1)
        assert finished(run), _log(tmp_path)
        while time.time() < deadline and "COMPLETED" not in sacct_states(job_id):
            time.sleep(1)
    log = _log(tmp_path)
    assert "requeueing" in log and "restart 1" in log, log
    assert "REQUEUED" in sacct_states(job_id) and "COMPLETED" in sacct_states(job_id)
    events = [json.loads(line) for line in _events(run).splitlines()]
    first = [e["cid"] for e in events if e["kind"] == "submitted" and e["attempt"] == 0]
    assert len(first) == len(set(first)) == 7   # 2 epochs x 3 ideas + baseline, each submitted once
    # (a local task killed with the requeued job may be retried as attempt 1: a retry, not a duplicate)
    results = {e["cid"] for e in events if e["kind"] == "result"}
    assert results == set(first)


@pytest.mark.slurm
@pytest.mark.slow
def test_scancel_stops_the_search_without_a_requeue(tmp_path: Path) -> None:
    with FakeLLMServer(toy_search_responder()) as server:
        job_id, run, deadline = launch(tmp_path, server.base_url,
                                       {"epochs": 50, "ideas_per_epoch": 3, "ideas_per_call": 3})
        subprocess.run(["scancel", job_id], check=True)
        while time.time() < deadline and not any(s.startswith("CANCELLED") for s in sacct_states(job_id)):
            time.sleep(1)
        time.sleep(3)
    states = sacct_states(job_id)
    assert any(s.startswith("CANCELLED") for s in states) and "REQUEUED" not in states, states
    log = _log(tmp_path)
    assert "not requeueing" in log and "restart 1" not in log, log
    assert "progress:" in log, log       # no terminal: plain progress lines, not a Rich frame at exit
    assert not finished(run)


def _events(run: Path) -> str:
    path = run / "state" / "events.jsonl"
    return path.read_text() if path.exists() else ""


def _log(tmp_path: Path) -> str:
    return "".join(p.read_text() for p in sorted(tmp_path.glob("daemon-*.out")))
