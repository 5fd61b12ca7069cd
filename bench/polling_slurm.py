"""Benchmark: SLURM job-state queries per minute while an implementation is in flight.

The pipeline's tick returns when it is next due (at most poll_s) and a finished implementation wakes the loop;
the job-state query (sacct, squeue as its fallback) has its own due time: poll_s, backing off to 4 x poll_s
while the states do not change. Scenario, on the dev cluster through the real loop (`Pipeline.tick`, then a
wait on `Pipeline.wake` for what it returns): one job runs for the whole
window (a ready candidate whose run sleeps longer than the window), and one idea is being implemented for the
whole window (the loopback fake LLM answers its one call after WINDOW seconds). The window runs from the job's
`submitted` event to the idea's `implemented` event. SLURM commands are counted by shims first on PATH
(`benchlib.SlurmCalls`, here with a time stamp and the parent pid, so only the daemon's own commands count).

Ours: poll_s 10 with the poll gate. Alternative (the old behaviour): a 1 s tick while an implementation is in
flight and the gate disabled (`cluster_due_at` always due), i.e. one query per tick. Target: at most one query
per poll_s.

    python bench/polling_slurm.py [--window-s 100] [--poll-s 10] [--json PATH] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from itertools import pairwise
from pathlib import Path

from benchlib import (
    Report,
    SlurmCalls,
    bench_config,
    cancel,
    make_diff,
    open_bench_run,
    run_bench,
    sleep_env,
    write_ready_candidate,
)
from toolkit.config import ClusterConfig, ImplementConfig
from toolkit.execute.pipeline import Pipeline
from toolkit.records import Idea
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply

STATE_QUERIES = ("sacct", "squeue")
JOB_TAIL_S = 10.0         # the job sleeps this much longer than the window: it runs through all of it
RUN_TIMEOUT_S = 300.0     # on top of the window: set-up, submission and the last job


def cli() -> argparse.Namespace:
    """This benchmark's own flags; the rest (--json, --keep) are left for run_bench."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--window-s", type=float, default=100.0, help="how long the implementation is in flight")
    parser.add_argument("--poll-s", type=float, default=10.0, help="cluster.poll_s of the run")
    args, rest = parser.parse_known_args()
    sys.argv[1:] = rest
    return args


class StampedCalls(SlurmCalls):
    """Shims that log `<epoch s> <parent pid> <name> <args>`: a job's own processes inherit PATH too."""

    def _shim(self, name: str, real: str) -> None:
        path = self.bin / name
        path.write_text(f'#!/bin/sh\necho "$(date +%s.%N) $PPID {name} $*" >> \'{self.log}\'\n'
                        f'exec \'{real}\' "$@"\n')
        path.chmod(0o755)

    def rows(self) -> list[tuple[float, str, str]]:
        """(time, name, args) of the commands this process ran (the daemon's), in order."""
        rows = []
        for line in self.log.read_text().splitlines():
            stamp, ppid, name, *args = line.split(" ")
            if int(ppid) == os.getpid():
                rows.append((float(stamp), name, " ".join(args)))
        return rows


class GateOff(Pipeline):
    """The old behaviour: a 1 s tick while an implementation is in flight, and the collector's due time always
    now, so every tick asks the cluster."""
    cluster_due_at = property(lambda self: 0.0, lambda self, value: None)

    def tick(self) -> float:
        due = super().tick()
        return 1.0 if self.inflight else due


def state_queries(rows: list[tuple[float, str, str]]) -> list[float]:
    """`SlurmCluster.states` is one query: sacct, plus squeue at once when sacct knew none of the jobs yet."""
    times, before = [], ""
    for t, name, args in rows:
        fallback = name == "squeue" and before == "sacct" and " -j " in f" {args} "
        if name in STATE_QUERIES and not fallback:
            times.append(t)
        before = name
    return times


def scenario(work: Path, mode: str, calls: StampedCalls, window_s: float, poll_s: float) -> dict:
    """One run: a job sleeping through the window and an idea whose implementation takes the window."""
    folder = work / mode
    env = sleep_env(folder / "env", run="bash train.sh", time_min=(window_s + JOB_TAIL_S) / 60 + 1)
    code = env / "code"
    (code / "train.sh").write_text((code / "train.sh").read_text() + "sleep 1\n")
    long_code = folder / "long-code"
    shutil.copytree(code, long_code)
    (long_code / "train.sh").write_text((code / "train.sh").read_text().replace(
        "sleep 1\n", f"sleep {window_s + JOB_TAIL_S:.0f}\n"))
    diff = make_diff(code, "train.sh", "STEPS=10", "STEPS=20")
    with FakeLLMServer(lambda request: FakeReply(text="```diff\n" + diff + "```\n", delay_s=window_s)) as server:
        cfg = bench_config(env, ClusterConfig(cluster="slurm", partition="debug", poll_s=poll_s),
                           base_url=server.base_url + "/v1",
                           implement=ImplementConfig(samples=1, revisions=0, workers=2))
        parts = open_bench_run(folder / "run", cfg)
        write_ready_candidate(parts.layout, "running", code_from=long_code)
        daemon = (GateOff if mode == "gate off" else Pipeline)(parts)
        daemon.add_ideas([Idea(idea_id="thinking", text="train for 20 steps")])
        mark, start = len(calls.rows()), time.time()
        deadline = start + window_s + RUN_TIMEOUT_S
        try:
            while not daemon.done() and time.time() < deadline:
                daemon.wake.wait(daemon.tick())
                daemon.wake.clear()
        finally:
            daemon.close()
            job_ids = [v.job_id for v in daemon.state.runs() if v.job_id]
            if not daemon.done():
                cancel(job_ids)
        took = time.time() - start
    views = daemon.state.candidates
    if not daemon.done() or any(views[c].status != "ok" for c in ("running", "thinking")):
        raise RuntimeError(f"{mode}: the run did not finish ok in time: "
                           f"{ {c: (v.implement_status, v.status, v.reason) for c, v in views.items()} }")
    events = [json.loads(line) for line in parts.layout.events.read_text().splitlines()]

    def when(kind: str, cid: str) -> float:
        return next(e["t"] for e in events if e["kind"] == kind and e.get("cid") == cid)

    opened = when("submitted", "running")
    closed = min(when("implemented", "thinking"), when("result", "running"))
    rows = calls.rows()[mark:]
    seen = [t for t in state_queries(rows) if opened <= t <= closed]
    window = closed - opened
    return {"window_s": window, "queries": len(seen), "per_min": 60 * len(seen) / window, "took_s": took,
            "gaps_s": [round(b - a, 2) for a, b in pairwise(seen)],
            "commands": dict(Counter(name for _, name, _ in rows)),
            "sacct_in_window": sum(1 for t, n, _ in rows if n == "sacct" and opened <= t <= closed),
            "squeue_in_window": sum(1 for t, n, _ in rows if n == "squeue" and opened <= t <= closed)}


def body(work: Path, report: Report, window_s: float, poll_s: float) -> None:
    calls = StampedCalls(work).install()
    runs = {mode: scenario(work, mode, calls, window_s, poll_s) for mode in ("poll gate", "gate off")}
    report.figures.update(window_s=window_s, poll_s=poll_s, runs=runs)
    ours, old = runs["poll gate"], runs["gate off"]
    limit = ours["window_s"] / poll_s + 1
    report.add(f"SLURM state queries per minute, poll_s {poll_s:g}, implementation in flight",
               f"{ours['per_min']:.1f}/min", f"{old['per_min']:.1f}/min (1 s cadence, gate off)",
               f"<= {60 / poll_s:.1f}/min (one per poll_s)", ours["queries"] <= limit)
    for mode, r in runs.items():
        report.add(f"  {mode}: queries in the window", f"{r['queries']} in {r['window_s']:.1f} s "
                   f"(sacct {r['sacct_in_window']}, squeue {r['squeue_in_window']})", "", "", None)
    for mode, r in runs.items():
        report.add(f"  {mode}: all SLURM commands of the run ({r['took_s']:.0f} s)",
                   ", ".join(f"{n} {c}" for n, c in sorted(r["commands"].items())), "", "", None)
    gaps = ours["gaps_s"]
    if gaps:
        report.add("  poll gate: seconds between queries (min / max)", f"{min(gaps):.2f} / {max(gaps):.2f}",
                   "", f">= {poll_s:g} - start-up jitter", None)


if __name__ == "__main__":
    flags = cli()
    run_bench("polling_slurm", lambda work, report: body(work, report, flags.window_s, flags.poll_s),
              f"SLURM queries while an implementation is in flight ({flags.window_s:g} s, poll_s {flags.poll_s:g})")
