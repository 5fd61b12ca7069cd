"""Real SLURM queries while an implementation is in flight: the daemon's tick runs every second then, but it
asks SLURM for job states at most once per `cluster.poll_s` (sites rate-limit or ban one sacct a second).

The fake-clock unit test in test_faults.py counts calls to `Cluster.states`; this one counts the commands that
really run: shims first on PATH log every sacct/squeue (and sbatch, scontrol, ...) and exec the real binary,
while the real daemon loop (`execute_ideas`) runs one job on the dev cluster and implements a second idea whose
LLM reply the fake server holds back."""
from __future__ import annotations

import json
import os
import shutil
import time
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from helpers import copy_env, make_diff
from toolkit.config import ClusterConfig, ImplementConfig, LLMConfig, RunConfig
from toolkit.layout import RunLayout
from toolkit.llm.base import LLMSettings
from toolkit.loop import execute_ideas
from toolkit.records import Idea
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply

POLL_S = 2.0
SLEEP_S = 30          # the running job: longer than the held-back reply plus any preflight on a loaded box
HOLD_S = 20.0         # the implementation in flight: its one LLM reply comes this late
STATE_QUERIES = ("sacct", "squeue")
SHIMMED = ("sacct", "squeue", "sbatch", "scontrol", "scancel", "sinfo")


def install_shims(folder: Path, log: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each shim appends `<epoch s> <parent pid> <name> <args>` to `log`, then execs the real command."""
    folder.mkdir()
    log.touch()
    for name in SHIMMED:
        real = shutil.which(name)
        if real:
            shim = folder / name
            shim.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $PPID {name} $*" >> \'{log}\'\nexec \'{real}\' "$@"\n')
            shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    assert shutil.which("sacct") == str(folder / "sacct")


def calls(log: Path) -> list[tuple[float, int, str, str]]:
    """(time, parent pid, name, args) of every shimmed command run by this process (the daemon's thread; a
    job's own processes, which inherit PATH, are someone else's parent)."""
    rows = []
    for line in log.read_text().splitlines():
        stamp, ppid, name, *args = line.split(" ")
        if int(ppid) == os.getpid():
            rows.append((float(stamp), int(ppid), name, " ".join(args)))
    return rows


def state_queries(rows: list[tuple[float, int, str, str]]) -> list[float]:
    """Times of the job-state queries. `SlurmCluster.states` is ONE query: sacct, and only when sacct knows
    none of the jobs yet (slurmdbd lags sbatch), squeue at once after it; that squeue is not counted again."""
    times: list[float] = []
    before = ""
    for t, _, name, args in rows:
        fallback = name == "squeue" and before == "sacct" and " -j " in f" {args} "
        if name in STATE_QUERIES and not fallback:
            times.append(t)
        before = name
    return times


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_is_queried_once_per_poll_s_while_an_implementation_is_in_flight(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = copy_env(tmp_path / "env")
    spec = yaml.safe_load((env / "env.yaml").read_text())
    spec["resources"]["time_min"] = 3            # the worker's own run limit must not cut the sleeping job short
    (env / "env.yaml").write_text(yaml.safe_dump(spec))
    code = env / "code"
    sleeper = make_diff(code, "train.py", "    w, b = train()\n",
                        f"    import time\n    time.sleep({SLEEP_S})\n    w, b = train()\n")
    quick = make_diff(code, "train.py", "LR = 0.05 ", "LR = 0.3 ")

    def respond(request: dict) -> FakeReply:
        text = json.dumps(request.get("body", ""))
        if "RUN-LONG" in text:
            return FakeReply(text="```diff\n" + sleeper + "```\n")
        if "THINK-LONG" in text:
            return FakeReply(text="```diff\n" + quick + "```\n", delay_s=HOLD_S)
        return FakeReply(text="no diff here")

    shims, log = tmp_path / "shims", tmp_path / "slurm-calls.log"
    install_shims(shims, log, monkeypatch)
    ideas = [Idea(idea_id="running", text="RUN-LONG: train after a long pause"),
             Idea(idea_id="thinking", text="THINK-LONG: set LR to 0.3")]
    with FakeLLMServer(respond) as server:
        llm = LLMSettings(provider="openai-compatible", model="fake", base_url=server.base_url + "/v1",
                          backoff_s=0.01, max_retries=0, timeout_s=120.0)
        cfg = RunConfig(env=str(env), llm=LLMConfig(ideator=llm, implementer=llm),
                        implement=ImplementConfig(samples=1, revisions=0, workers=2),
                        cluster=ClusterConfig(cluster="slurm", poll_s=POLL_S, lost_grace_s=30))
        start = time.time()
        state = execute_ideas(tmp_path / "run", cfg, ideas)
        took = time.time() - start

    views = state.candidates
    assert views["running"].status == "ok" and views["thinking"].status == "ok", views
    events = [json.loads(line) for line in RunLayout(tmp_path / "run").events.read_text().splitlines()]

    def when(kind: str, cid: str) -> float:
        return next(e["t"] for e in events if e["kind"] == kind and e.get("cid") == cid)

    # the window: the job is on the cluster without a result, and the other idea's implementation is in flight
    opened = when("submitted", "running")
    closed = min(when("implemented", "thinking"), when("result", "running"))
    window = closed - opened
    assert when("implement_started", "thinking") < opened, "the implementation was in flight from the start"
    assert window >= HOLD_S / 2, f"window of {window:.1f} s: too short to tell a 1 s cadence from poll_s"
    seen = [t for t in state_queries(calls(log)) if opened <= t <= closed]
    limit = window / POLL_S + 2
    detail = (f"{len(seen)} state queries in a {window:.1f} s window at poll_s={POLL_S} (limit {limit:.1f}); "
              f"gaps {[round(b - a, 2) for a, b in pairwise(seen)]}; run took {took:.1f} s")
    assert 1 <= len(seen) <= limit, detail
    print(detail)
