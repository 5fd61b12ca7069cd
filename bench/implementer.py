"""Benchmark 6: implementer throughput against the loopback fake LLM server (1 s per call).

50 ideas x 10 parallel samples through the daemon's implement stage (`Pipeline.tick` harvests and starts
implementations in its pool; `Implementer.implement` samples, patches and preflights), with the real
openai SDK (`make_client`, concurrency 32) talking to `FakeLLMServer` over loopback; every reply is a diff
that applies. Ideal: the calls the implementer made, 32 at a time, 1 s each: ceil(calls / 32) s.
Target: at most 1.2x the ideal.
Run twice: an environment without a quick check (byte-compile only), and one whose quick check takes
QUICK_CHECK_S (real ones import torch and run a step: seconds); at least one quick check per idea is
needed, 2 at a time (implement.preflight_concurrency), so the ideal is then the larger of the two bounds.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

from benchlib import Report, bench_config, cids, make_diff, open_bench_run, run_bench, secs, sleep_env
from toolkit.config import ClusterConfig, ImplementConfig
from toolkit.execute.pipeline import Pipeline
from toolkit.records import Idea
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply

IDEAS, SAMPLES, CONCURRENCY, DELAY_S = 50, 10, 32, 1.0
QUICK_CHECK_S = 0.5
IMPLEMENT = ImplementConfig(samples=SAMPLES, revisions=2, workers=8)
CLUSTER = ClusterConfig(cluster="slurm", partition="debug", sbatch_extra={"hold": True})


def responder(code: Path):
    diff = "```diff\n" + make_diff(code, "train.sh", "STEPS=10", "STEPS=20") + "```\n"
    return lambda request: FakeReply(text=diff, delay_s=DELAY_S)


def implement_all(daemon: Pipeline, timeout_s: float = 600.0) -> float:
    """Tick the implement stage (harvest + start) until every idea has an outcome; no job is submitted."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        daemon.harvest_implemented()
        daemon.start_implementations()
        if all(v.implement_status not in ("", "implementing") for v in daemon.state.candidates.values()):
            return time.monotonic() - start
        time.sleep(0.2)
    raise TimeoutError(f"implementations not done after {timeout_s} s")


def run_once(work: Path, quick_check: str) -> dict:
    env = sleep_env(work / "env", quick_check=quick_check)
    with FakeLLMServer(responder(env / "code")) as server:
        cfg = bench_config(env, CLUSTER, base_url=server.openai_base_url, implement=IMPLEMENT)
        parts = open_bench_run(work / "run", cfg)
        assert parts.implementer.llm.settings.concurrency == CONCURRENCY
        daemon = Pipeline(parts)
        daemon.add_ideas([Idea(idea_id=cid, text=f"idea {cid}: train for more steps") for cid in cids(IDEAS)])
        elapsed_s = implement_all(daemon)
        daemon.close()
        calls = len(server.requests)
    llm_bound_s = math.ceil(calls / CONCURRENCY) * DELAY_S
    check_bound_s = IDEAS * QUICK_CHECK_S / IMPLEMENT.preflight_concurrency if quick_check else 0.0
    statuses = Counter(json.loads(f.read_text())["status"] for c in cids(IDEAS)
                       for f in parts.layout.candidate(c).implement_dir.glob("s*r*.json"))
    ready = sum(1 for v in daemon.state.candidates.values() if v.implement_status == "ready")
    return {"elapsed_s": elapsed_s, "calls": calls, "ideal_s": max(llm_bound_s, check_bound_s), "ready": ready,
            "attempt_statuses": dict(statuses),
            "preflighted": statuses["applied"] + statuses["preflight_failed"]}


def body(work: Path, report: Report) -> None:
    runs = {"compile only": run_once(work / "plain", ""),
            f"quick check {QUICK_CHECK_S:g} s": run_once(work / "checked", f"sleep {QUICK_CHECK_S:g}")}
    report.figures.update(runs)
    for label, r in runs.items():
        ratio = r["elapsed_s"] / r["ideal_s"]
        report.add(f"{IDEAS} ideas x {SAMPLES} samples, {DELAY_S:g} s per call, {label}",
                   f"{secs(r['elapsed_s'])} = {ratio:.2f}x", f"{secs(r['ideal_s'])} (ideal)", "<= 1.2x ideal",
                   ratio <= 1.2)
        report.add(f"  LLM calls / diffs fully preflighted, {label}", f"{r['calls']} / {r['preflighted']}",
                   f"{IDEAS * SAMPLES} / {IDEAS} (one winner per idea)", "", None)
        report.add(f"  ideas implemented (ready), {label}", str(r["ready"]), str(IDEAS), str(IDEAS),
                   r["ready"] == IDEAS)
    checked = runs[f"quick check {QUICK_CHECK_S:g} s"]
    if checked["elapsed_s"] > 1.2 * checked["ideal_s"]:
        report.notes.append(f"with a quick check: every sample whose diff applies is preflighted, even after another "
                            f"sample of the same idea has won ({checked['preflighted']} preflighted diffs for "
                            f"{IDEAS} ideas), and the quick checks run {IMPLEMENT.preflight_concurrency} at a time, so "
                            "the losers' checks delay every idea. Fix: skip the patch and the quick check of a "
                            "sample once the race is won (checked after the LLM reply and after waiting for a "
                            "preflight slot).")


if __name__ == "__main__":
    run_bench("implementer", body, f"implementer throughput, {IDEAS} ideas x {SAMPLES} samples")
