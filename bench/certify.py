"""Benchmark 8: certification on the dev SLURM cluster, with tiny_lm (45 s of training per run, one CPU core).

A real search (replayed LLM answers, real training and the trusted scorer on SLURM) over six ideas whose truth
is known in advance: two changes that cannot matter (a comment, a renamed variable), one clearly harmful change
(learning rate 100x lower) and three plausible improvements. The baseline runs with three seeds (the noise
floor); after the epoch the screened candidates that beat the baseline are re-run with three fresh seeds each,
in one array with three interleaved baseline re-runs, and judged (one-sided Welch t-test, alpha 0.01).

Measured: the noise floor of tiny_lm on one core, each idea's verdict, what certification cost against the
screening it certifies (task-hours), and the search's wall time. Each task asks for 4 of the dev node's 8
advertised CPUs, so that at most two runs share its two real cores (a wall-clock-budgeted run slows when
cores are oversubscribed).

    python bench/certify.py [--json OUT.json]       (BENCH_SMOKE=1: the 5 s smoke budget, for a quick try)
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from benchlib import REPO, Report, make_diff, run_bench, secs
from toolkit.layout import RunLayout
from toolkit.search.certify import baseline_runs, hours
from toolkit.state import load_state

TINY = REPO / "envs" / "tiny_lm"
# (marker, title, description, truth, [(old, new), ...]) -- each old string occurs once in train.py
IDEAS = [
    ("noop-comment", "Document the model size", "Add a comment that the model has about 0.35M parameters.",
     "no-op", [("n_layer = 3\n", "# about 0.35M parameters in all\nn_layer = 3\n")]),
    ("noop-rename", "Rename the batch variable", "Rename the local variable bs in main() to rows.",
     "no-op", [("bs = 2 if quick_check else batch_size", "rows = 2 if quick_check else batch_size"),
               ("batch {bs}x", "batch {rows}x"), ("get_batch(train_data, bs,", "get_batch(train_data, rows,")]),
    ("harm-lr", "Much lower learning rate", "Set learning_rate to 3e-5 for very careful updates.",
     "harmful", [("learning_rate = 3e-3", "learning_rate = 3e-5")]),
    ("lr-6e-3", "Higher peak learning rate", "Raise learning_rate from 3e-3 to 6e-3.",
     "plausible", [("learning_rate = 3e-3", "learning_rate = 6e-3")]),
    ("batch-8", "Smaller batch, more steps", "Halve batch_size from 16 to 8 so twice as many steps fit.",
     "plausible", [("batch_size = 16", "batch_size = 8")]),
    ("wide-2", "Wider, shallower model", "Use n_layer = 2 and n_embd = 128.",
     "plausible", [("n_layer = 3\n", "n_layer = 2\n"), ("n_embd = 96\n", "n_embd = 128\n")]),
]


def replay_file(folder: Path) -> Path:
    ideas = [{"title": f"[{m}] {t}", "description": d} for m, t, d, _, _ in IDEAS]
    entries = [{"match": "ideate:fresh:", "text": json.dumps(ideas), "model": "replay"}]
    for marker, _, _, _, changes in IDEAS:
        diff = make_diff(TINY / "code", "train.py", *(s for pair in changes for s in pair))
        entries.append({"match": f"[{marker}]", "text": f"```diff\n{diff}```\n", "model": "replay"})
    path = folder / "replay.jsonl"
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def demo_env(folder: Path, smoke: bool) -> Path:
    env = folder / "tiny_lm"
    shutil.copytree(TINY, env)
    spec = yaml.safe_load((env / "env.yaml").read_text())
    key = ("smoke", "resources") if smoke else ("resources",)
    where = spec
    for k in key[:-1]:
        where = where[k]
    where[key[-1]]["cpus"] = 4          # two runs at a time on the dev node's two real cores
    (env / "env.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return env


def config(folder: Path, smoke: bool) -> Path:
    replay = {"provider": "replay", "replay_file": str(replay_file(folder)), "model": "replay"}
    cfg = {"env": str(demo_env(folder, smoke)), "smoke": smoke, "run_dir": str(folder / "run"),
           "llm": {"ideator": replay, "implementer": replay}, "implement": {"samples": 1, "revisions": 0},
           "cluster": {"cluster": "slurm", "partition": "debug", "poll_s": 2.0},
           "search": {"epochs": 1, "ideas_per_epoch": len(IDEAS), "ideas_per_call": len(IDEAS),
                      "dedup": {"method": "off"},
                      "certify": {"noise_floor_seeds": 3, "top_k": len(IDEAS), "seeds": 3, "baseline_seeds": 3,
                                  "budget_share": 0.75}}}
    path = folder / "certify.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def body(work: Path, report: Report) -> None:
    smoke = os.environ.get("BENCH_SMOKE") == "1"
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "toolkit.cli", "evolve", "--config", str(config(work, smoke))],
                          capture_output=True, text=True, timeout=3600)
    wall_s = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"the search failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
    state = load_state(RunLayout(work / "run"))
    floor = state.certification.floor
    if floor is None:
        raise RuntimeError("the search recorded no noise floor")
    report.add(f"noise floor of tiny_lm{' (smoke)' if smoke else ''}: val loss over {floor.n} seeds",
               f"{floor.mean:.4f} ± {floor.sd:.4f} (sd)", "", "sd > 0 (the env honours TOOLKIT_SEED)",
               floor.sd > 0)
    truth = {m: t for m, _, _, t, _ in IDEAS}
    for view in sorted(state.candidates.values(), key=lambda v: v.cid):
        if view.cid == "baseline":
            continue
        marker = view.idea.split("]")[0].lstrip("[")
        verdict = view.verdict or ("not nominated (screened no better than the baseline)" if view.status == "ok"
                                   else f"{view.status or view.implement_status}")
        reruns = "" if view.cert_metric is None else (
            f"re-runs {view.cert_metric:.4f} [{view.cert_low:.4f}, {view.cert_high:.4f}], p={view.p_value:.2g}")
        expected = {"no-op": "never certified", "harmful": "never certified"}.get(truth[marker], "")
        met = None if not expected else view.verdict != "certified"
        report.add(f"{marker} ({truth[marker]}): screened {view.metric:.4f}" if view.metric is not None else marker,
                   f"{verdict}{'; ' + reruns if reruns else ''}", "", expected, met)
        report.figures[marker] = {"screened": view.metric, "verdict": view.verdict, "reruns": view.cert_metric,
                                  "low": view.cert_low, "high": view.cert_high, "p": view.p_value}
    screen, cert = hours(state)
    report.add("certification cost (noise floor + re-runs), task-hours", f"{cert:.3f} h ({len(state.replicas)} runs)",
               f"{screen:.3f} h screening ({len(state.candidates)} runs)", "", None)
    report.add("  as a share of the search", f"{cert / (screen + cert):.0%}", "0% (no certification)", "", None)
    report.add("search wall time (1 epoch, 2 runs at a time)", secs(wall_s), "", "", None)
    base = [v.metric for v in baseline_runs(state) if v.status == "ok"]
    report.figures.update(floor=floor, baseline_metrics=base, screen_hours=screen, cert_hours=cert, wall_s=wall_s)
    report.notes.append(f"every baseline run's val loss: {', '.join(f'{m:.4f}' for m in base)} "
                        f"(sd {statistics.stdev(base):.4f})" if len(base) > 1 else "")


if __name__ == "__main__":
    run_bench("certify", body, "certification on the dev cluster: tiny_lm noise floor, verdicts, cost")
