"""A 3-epoch search on the dev SLURM cluster, once uninterrupted and once killed with SIGKILL mid-epoch and
restarted with the same command: no duplicate submission, no lost result, the same final state."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from helpers import copy_env
from search_helpers import toy_search_responder
from toolkit.layout import RunLayout
from toolkit.state import load_state
from toolkit.testing.fake_llm import FakeLLMServer

DEADLINE_S = 400


def write_config(tmp_path: Path, base_url: str, name: str) -> Path:
    env = tmp_path / "env" if (tmp_path / "env").exists() else copy_env(tmp_path / "env")
    llm = {"provider": "openai-compatible", "model": "fake", "base_url": base_url + "/v1", "backoff_s": 0.01}
    config = {"env": str(env), "run_dir": str(tmp_path / name), "llm": {"ideator": llm, "implementer": llm},
              "implement": {"samples": 2, "revisions": 1, "workers": 4},
              "cluster": {"cluster": "slurm", "partition": "debug", "poll_s": 1.0, "lost_grace_s": 20},
              "search": {"epochs": 3, "ideas_per_epoch": 4, "ideas_per_call": 2}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def start(config: Path, log: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
    return subprocess.Popen([sys.executable, "-m", "toolkit.cli", "evolve", "--config", str(config)],
                            stdout=log.open("a"), stderr=subprocess.STDOUT, env=env)


def events(run: Path) -> list[dict]:
    path = RunLayout(run).events
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(predicate, what: str, timeout_s: float = DEADLINE_S) -> None:
    end = time.time() + timeout_s
    while time.time() < end:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def final_view(run: Path) -> dict:
    state = load_state(RunLayout(run))
    return {cid: (v.idea, v.epoch, v.origin, v.status, None if v.metric is None else round(v.metric, 6))
            for cid, v in state.candidates.items()}


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_search_survives_a_killed_daemon(tmp_path: Path, sig: signal.Signals) -> None:
    with FakeLLMServer(toy_search_responder()) as server:
        calm_cfg = write_config(tmp_path, server.base_url, "calm")
        killed_cfg = write_config(tmp_path, server.base_url, "killed")
        calm = start(calm_cfg, tmp_path / "calm.log")
        victim = start(killed_cfg, tmp_path / "killed.log")
        run = tmp_path / "killed"
        # kill mid-epoch 1: some of its jobs submitted, not all of its results in
        wait_for(lambda: any(e["kind"] == "submitted" and e["cid"].startswith("e01") for e in events(run)),
                 "a submission in epoch 1")
        victim.send_signal(sig)
        code = victim.wait()
        assert code == (-9 if sig == signal.SIGKILL else 0)      # TERM: a clean stop between ticks
        killed_at = time.time()
        assert not any(e["kind"] == "search_finished" for e in events(run))
        before = len(events(run))
        restarted = start(killed_cfg, tmp_path / "killed.log")
        wait_for(lambda: any(e["kind"] in ("submitted", "result") for e in events(run)[before:]), "resumed work")
        resume_s = time.time() - killed_at
        assert restarted.wait(timeout=DEADLINE_S) == 0, (tmp_path / "killed.log").read_text()[-3000:]
        assert calm.wait(timeout=DEADLINE_S) == 0, (tmp_path / "calm.log").read_text()[-3000:]
    print(f"{sig.name} -> first resumed submission/result: {resume_s:.1f} s")
    log = events(run)
    submitted = Counter(e["cid"] for e in log if e["kind"] == "submitted")
    assert submitted and max(submitted.values()) == 1, f"duplicate submissions: {submitted}"
    results = Counter(e["cid"] for e in log if e["kind"] == "result")
    assert set(results) == set(submitted) and max(results.values()) == 1
    assert sum(1 for e in log if e["kind"] == "search_finished") == 1
    killed_view, calm_view = final_view(run), final_view(tmp_path / "calm")
    assert len(calm_view) == 13 and all(v[3] for v in calm_view.values())
    assert killed_view == calm_view
