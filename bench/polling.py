"""Benchmark 3: the cost of polling SLURM while 2,000 jobs are tracked.

Real jobs to poll: 10 held arrays of 200 tasks (`sbatch --hold`, cancelled at the end; nothing runs). A run
directory is synthesised with 200, 1,000 and 2,000 submitted candidates pointing at those tasks (the real
event and record formats), and the real daemon ticks over it (`Pipeline.tick`: harvest, schedule, collect with
one state query for all jobs). Alternative: one state query per job, as tools that poll job by job do (timed
on 20 jobs, scaled to the count). Targets: SLURM commands per tick constant in the number of jobs; ms per tick.
"""
from __future__ import annotations

import statistics
import time
from collections import Counter
from pathlib import Path

from benchlib import (
    Report,
    SlurmCalls,
    bench_config,
    cancel,
    cancel_named,
    cids,
    ms,
    open_bench_run,
    ready_events,
    real_slurm,
    run_bench,
    sleep_env,
    submitted_event,
    timed_cluster,
    write_events,
    write_ready_candidate,
)
from toolkit.config import ClusterConfig
from toolkit.execute.pipeline import Pipeline

ARRAYS, TASKS_PER_ARRAY = 10, 200
COUNTS = (200, 1000, 2000)
TICKS = 5
PER_JOB_SAMPLE = 20
CLUSTER = ClusterConfig(cluster="slurm", partition="debug")
JOB_NAME = "bench-polling"


def held_arrays() -> list[str]:
    masters: list[str] = []
    try:
        for _ in range(ARRAYS):
            masters.append(real_slurm(["sbatch", "--parsable", "--hold", f"--array=0-{TASKS_PER_ARRAY - 1}", "-p",
                                       "debug", "-J", JOB_NAME, "-o", "/dev/null", "--wrap", "true"]
                                      ).strip().split(";")[0])
        wait_for_accounting(masters)
    except BaseException:
        cancel_named(JOB_NAME)
        raise
    return [f"{m}_{i}" for m in masters for i in range(TASKS_PER_ARRAY)]


def wait_for_accounting(masters: list[str], timeout_s: float = 60.0) -> None:
    """Steady state: slurmdbd lists a new job a moment after sbatch (until then the daemon asks squeue too)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = real_slurm(["sacct", "-X", "-n", "-P", "-o", "JobID", "-j", ",".join(masters)])
        if {line.split("_")[0] for line in text.split()} >= set(masters):
            return
        time.sleep(1.0)


def tracked_run(work: Path, job_ids: list[str]) -> Pipeline:
    parts = open_bench_run(work / f"run-{len(job_ids)}", bench_config(sleep_env(work / f"env-{len(job_ids)}"),
                                                                     CLUSTER))
    names = cids(len(job_ids))
    now = time.time()
    for cid in names:
        write_ready_candidate(parts.layout, cid)
    write_events(parts.layout, [e for cid, job in zip(names, job_ids)
                                for e in [*ready_events(cid, now), submitted_event(cid, job, now)]])
    timed_cluster(parts)
    return Pipeline(parts)


def measure_ticks(daemon: Pipeline, calls: SlurmCalls) -> dict:
    durations, commands, cluster = [], [], daemon.p.cluster
    for _ in range(TICKS):
        mark = calls.mark()
        start = time.perf_counter()
        daemon.tick()
        durations.append(time.perf_counter() - start)
        commands.append(calls.since(mark))
    daemon.close()
    return {"tick_ms_median": 1000 * statistics.median(durations), "tick_ms_max": 1000 * max(durations),
            "query_ms_mean": 1000 * cluster.states_s / TICKS,
            "commands_per_tick": [len(c) for c in commands], "commands": dict(Counter(sum(commands, [])))}


def per_job_query_s(job_ids: list[str]) -> float:
    """Seconds for one `sacct -j <job>` (the per-job alternative), averaged over a sample."""
    start = time.perf_counter()
    for job in job_ids[:PER_JOB_SAMPLE]:
        real_slurm(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", job])
    return (time.perf_counter() - start) / PER_JOB_SAMPLE


def body(work: Path, report: Report) -> None:
    calls = SlurmCalls(work).install()
    job_ids = held_arrays()
    try:
        runs = {n: measure_ticks(tracked_run(work, job_ids[:n]), calls) for n in COUNTS}
        one_s = per_job_query_s(job_ids)
    finally:
        cancel(job_ids)
    report.figures.update(ticks=runs, per_job_query_s=one_s)
    per_tick = {n: max(r["commands_per_tick"]) for n, r in runs.items()}
    constant = len(set(per_tick.values())) == 1
    for n, r in runs.items():
        report.add(f"SLURM commands per tick, {n} jobs", f"{per_tick[n]} ({_fmt(r['commands'], TICKS)})",
                   f"{n} (one query per job)", "constant", constant)
    for n, r in runs.items():
        report.add(f"ms per tick, {n} jobs (median of {TICKS})", ms(r["tick_ms_median"] / 1000),
                   f"{n * one_s:.1f} s (measured {one_s * 1000:.0f} ms per query)", "", None)
    for n, r in runs.items():
        report.add(f"  of which the sacct query, {n} jobs", ms(r["query_ms_mean"] / 1000), "", "", None)


def _fmt(counts: dict, ticks: int) -> str:
    return ", ".join(f"{name} {n / ticks:g}/tick" for name, n in sorted(counts.items()))


if __name__ == "__main__":
    run_bench("polling", body, "polling SLURM with 2,000 tracked jobs")
