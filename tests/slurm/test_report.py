"""`toolkit report` on REAL run directories: an evolutionary search and a best-of-N search of two epochs each,
run on the dev SLURM cluster (h100 partition, one fake GPU per job) with a scripted fake LLM whose ideas cover
every stage of the funnel. The report's tables and exports are checked against the files on disk; the page is
rendered in headless Chromium (screenshot kept in tests/artifacts/)."""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
import yaml
from rich.console import Console

from helpers import copy_env, make_diff
from search_helpers import _user_text
from toolkit.config import SearchRunConfig, WandbSettings, from_dict
from toolkit.layout import RunLayout
from toolkit.loop import run_search
from toolkit.report import dashboard
from toolkit.report.judge import parse_verdict
from toolkit.report.page import add_report_parser, build_report, fmt
from toolkit.report.progress import progress_line
from toolkit.report.runs import NOT_JUDGED, ideas_table, load_run
from toolkit.report.tables import diversity, spend_table
from toolkit.report.wandb_log import WandbLogger
from toolkit.state import RunState, load_state
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# One ideation call per epoch (3 ideas each); the markers tell the fake implementer what diff to write.
LR = "Set the learning rate LR to {} to converge faster."
PLANS = {
    "evolve": [[LR.format("0.3"), "CRASH: validate the inputs aggressively and stop on any doubt.",
                "SYNTAX: rewrite the training loop in a compact style."],
               [LR.format("0.6"), "NODIFF: fit the line with a quantum annealer instead.", LR.format("1.5")]],
    "best_of_n": [[LR.format("0.15"), LR.format("0.02"), "EVAL: make the evaluation more lenient."],
                  [LR.format("0.45"), "CRASH: validate the inputs aggressively and stop on any doubt.",
                   LR.format("0.1")]],
}
# evolve: 6 ideas; NODIFF never applies, SYNTAX applies but fails preflight, CRASH fails at run time,
# LR 1.5 diverges (invalid metric); LR 0.3 and 0.6 beat the baseline's LR 0.05.
THINKING_CHARS = 400          # the first ideation call thinks 100 rough tokens, the second 200
REFERENCES = {"a weak published result": 0.5, "a strong published result": 0.0001}   # val_mse, lower is better
EVOLVE_FUNNEL = dict(proposed=6, patch_applied=5, preflight_passed=4, job_ran=4, valid_metric=2, beat_baseline=2)


def search_responder(plan: list[list[str]], code: Path):
    calls, lock = itertools.count(), threading.Lock()

    def respond(request: dict) -> FakeReply:
        prompt = _user_text(request)
        if "Reply with ONLY a JSON array" in prompt:
            with lock:
                call = next(calls)
            batch = plan[min(call, len(plan) - 1)]
            return FakeReply(text=json.dumps([{"title": f"idea {i}", "description": d} for i, d in enumerate(batch)]),
                             thinking="t" * THINKING_CHARS * (call + 1))   # thinking grows with each call
        return FakeReply(text=implement_reply(prompt.split("# The idea to implement")[-1], code))
    return respond


def implement_reply(idea: str, code: Path) -> str:
    lr = re.search(r"learning rate LR to ([0-9.]+)", idea)
    if lr:
        return make_diff(code, "train.py", "LR = 0.05 ", f"LR = {lr.group(1)} ")
    if "CRASH" in idea:
        return make_diff(code, "train.py", "    w, b = train()\n", "    raise RuntimeError('boom')\n")
    if "SYNTAX" in idea:
        return make_diff(code, "train.py", "LR = 0.05 ", "LR = = 0.05 ")
    if "EVAL" in idea:
        return make_diff(code, "eval.py", "mse = sum(", "mse = 0.01 + 0 * sum(")
    return "I cannot implement that."


def search_run(root: Path, strategy: str) -> Path:
    env = copy_env(root / f"env-{strategy}")
    spec = yaml.safe_load((env / "env.yaml").read_text())
    spec["resources"]["gpus"] = 1                         # GPU-hours are counted per GPU: use the fake GPUs
    spec["references"] = REFERENCES
    (env / "env.yaml").write_text(yaml.safe_dump(spec))
    with FakeLLMServer(search_responder(PLANS[strategy], env / "code")) as server:
        llm = {"provider": "openai-compatible", "model": f"fake-{strategy}", "base_url": server.base_url + "/v1",
               "backoff_s": 0.01, "price_input_per_mtok": 3.0, "price_output_per_mtok": 15.0}
        cfg = from_dict(SearchRunConfig, {
            "env": str(env), "llm": {"ideator": llm, "implementer": llm},
            "implement": {"samples": 1, "revisions": 1, "workers": 3},
            "cluster": {"cluster": "slurm", "partition": "h100", "poll_s": 0.5, "lost_grace_s": 30},
            "search": {"epochs": 2, "ideas_per_epoch": 3, "ideas_per_call": 3, "strategy": strategy}}, "test")
        state = run_search(root / strategy, cfg, Console(record=True), live=False)
    assert state.search.finished, f"the {strategy} search did not finish: {state.search}"
    return root / strategy


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("report-runs")
    return {strategy: search_run(root, strategy) for strategy in PLANS}


def judge_responder(request: dict) -> FakeReply:
    idea = _user_text(request).split("# The idea")[-1].split("# Categories")[0]
    if "NODIFF" in idea:
        return FakeReply(text="I would rather not say.")
    category = "hyper-parameter" if "learning rate" in idea else "algorithm"
    return FakeReply(text=json.dumps({"category": category, "why": "fake judge"}))


def report_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="toolkit")
    add_report_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report-out")
    with FakeLLMServer(judge_responder) as judge:
        rc = report_cli(["report", str(runs["evolve"]), "--out", str(out), "--compare", str(runs["best_of_n"]),
                         "--judge-llm", "openai-compatible", "--judge-model", "fake-judge",
                         "--judge-base-url", judge.base_url + "/v1"])
        assert rc == 0
        # every idea of both runs, the baselines not; the CRASH idea has the same text in both: judged once
        assert len(judge.requests) == 11
    return out


# ---- what is on disk, read without the report's code ----------------------------------------------------------
def disk_rows(run_dir: Path) -> list[dict]:
    """One dict per candidate, from idea.json, implement.json, implement/*.json and result.json only."""
    rows = []
    for cand in sorted((run_dir / "candidates").iterdir()):
        idea = json.loads((cand / "idea.json").read_text())
        impl = json.loads((cand / "implement.json").read_text())
        attempts = {json.loads(p.read_text())["status"] for p in (cand / "implement").glob("s*r*.json")}
        result = json.loads((cand / "result.json").read_text()) if (cand / "result.json").exists() else None
        rows.append(dict(cid=cand.name, epoch=idea["epoch"], origin=idea["origin"], impl=impl["status"],
                         attempts=attempts, result=result))
    return rows


def disk_funnel(rows: list[dict]) -> dict[str, int]:
    base = next(r["result"]["reward"] for r in rows if r["cid"] == "baseline")
    ideas = [r for r in rows if r["cid"] != "baseline"]
    valid = [r for r in ideas if r["result"] and r["result"]["status"] == "ok" and r["result"]["reward"]]
    return dict(proposed=len(ideas),
                patch_applied=sum(1 for r in ideas
                                  if r["impl"] == "ready" or r["attempts"] & {"applied", "preflight_failed"}),
                preflight_passed=sum(1 for r in ideas if r["impl"] == "ready"),
                job_ran=sum(1 for r in ideas if r["result"] and r["result"]["status"] != "lost"),
                valid_metric=len(valid), beat_baseline=sum(1 for r in valid if r["result"]["reward"] > base))


def best_per_epoch(rows: list[dict]) -> dict[int, float]:
    best: dict[int, float] = {}
    for r in rows:
        if r["cid"] != "baseline" and r["result"] and r["result"]["status"] == "ok":
            best[r["epoch"]] = max(best.get(r["epoch"], -math.inf), r["result"]["reward"])
    return best


class Tables(HTMLParser):
    """The page's tables by id: {id: [[cell, ...], ...]} (header row first)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "table":
            self._table = None

    def rows(self, table_id: str) -> list[dict[str, str]]:
        header, *body = self.tables[table_id]
        return [dict(zip(header, row)) for row in body]


# ---- the real runs -------------------------------------------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.slow
def test_ideas_export_matches_result_files(runs, report) -> None:
    rows = {r["cid"]: r for r in disk_rows(runs["evolve"])}
    csv = pd.read_csv(report / "ideas.csv", dtype={"job_id": str})
    mine = csv[csv["run"] == "evolve"].set_index("cid")
    assert set(mine.index) == set(rows) and len(csv) == 14     # 6 ideas + baseline, in each of the two runs
    for cid, row in rows.items():
        got = mine.loc[cid]
        if row["result"] is None:
            assert pd.isna(got["reward"]) and got["job_ran"] == False  # noqa: E712  (numpy bool)
            continue
        assert got["status"] == row["result"]["status"] and got["job_id"] == row["result"]["job_id"]
        assert got["node"] == row["result"]["node"]
        assert got["wall_s"] == pytest.approx(row["result"]["wall_s"])
        if row["result"]["reward"] is not None:
            assert got["reward"] == pytest.approx(row["result"]["reward"])
            assert got["metrics.val_mse"] == pytest.approx(row["result"]["metrics"]["val_mse"])
    parquet = pd.read_parquet(report / "ideas.parquet")
    assert list(parquet.columns) == list(csv.columns) and len(parquet) == len(csv)
    assert parquet["reward"].sum() == pytest.approx(csv["reward"].sum())


@pytest.mark.slurm
@pytest.mark.slow
def test_funnel_and_execution_rate_match_disk(runs, report) -> None:
    funnel = pd.read_csv(report / "funnel.csv").set_index("run")
    for strategy, run_dir in runs.items():
        expected = disk_funnel(disk_rows(run_dir))
        row = funnel.loc[strategy]
        assert {k: int(row[k]) for k in expected} == expected
        assert row["ideator"] == row["implementer"] == f"openai-compatible:fake-{strategy}"
        assert row["execution_rate"] == pytest.approx(expected["valid_metric"] / expected["proposed"])
    assert {k: int(funnel.loc["evolve"][k]) for k in EVOLVE_FUNNEL} == EVOLVE_FUNNEL
    page = Tables((report / "index.html").read_text())
    shown = {r["run"]: r for r in page.rows("funnel")}
    assert shown["evolve"]["preflight_passed"] == "4" and shown["evolve"]["execution_rate"] == "33%"


@pytest.mark.slurm
@pytest.mark.slow
def test_reward_per_epoch_and_comparison_match_disk(runs, report) -> None:
    rows = disk_rows(runs["evolve"])
    epochs = pd.read_csv(report / "epochs.csv").set_index("epoch")
    best = best_per_epoch(rows)
    assert sorted(best) == [0, 1]
    for epoch, reward in best.items():
        assert epochs.loc[epoch, "best_reward"] == pytest.approx(reward)
    assert epochs.loc[1, "best_so_far"] == pytest.approx(max(best.values()))
    page = Tables((report / "index.html").read_text())
    assert [r["best_reward"] for r in page.rows("epochs")] == [fmt("best_reward", best[e]) for e in (0, 1)]
    comparison = pd.read_csv(report / "comparison.csv").set_index("run")
    assert comparison.loc["evolve", "strategy"] == "evolve" and comparison.loc["best_of_n", "strategy"] == "best_of_n"
    for strategy, run_dir in runs.items():
        best_on_disk = max(best_per_epoch(disk_rows(run_dir)).values())
        assert comparison.loc[strategy, "best_reward"] == pytest.approx(best_on_disk)
    assert (report / "plots" / "comparison.png").stat().st_size > 5000


@pytest.mark.slurm
@pytest.mark.slow
def test_thinking_length_and_references_match_disk(runs, report) -> None:
    rows = [r for r in disk_rows(runs["evolve"]) if r["cid"] != "baseline"]
    ideas = [json.loads((runs["evolve"] / "candidates" / r["cid"] / "idea.json").read_text()) for r in rows]
    assert {i["epoch"]: i["thinking_tokens"] for i in ideas} == {0: 100, 1: 200}
    thinking = pd.read_csv(report / "thinking.csv", dtype={"thinking_tokens": str}).set_index("thinking_tokens")
    assert list(thinking.index) == ["100", "200"]
    for tokens, epoch in (("100", 0), ("200", 1)):
        group = [r for r in rows if r["epoch"] == epoch]
        valid = [r for r in group if r["result"] and r["result"]["status"] == "ok" and r["result"]["reward"]]
        assert thinking.loc[tokens, "ideas"] == len(group) == 3
        assert thinking.loc[tokens, "execution_rate"] == pytest.approx(len(valid) / len(group))
    refs = pd.read_csv(report / "references.csv").set_index("result")
    everything = disk_rows(runs["evolve"])
    base = next(r["result"]["metric"] for r in everything if r["cid"] == "baseline")
    best = max((r for r in rows if r["result"] and r["result"]["status"] == "ok"), key=lambda r: r["result"]["reward"])
    assert refs.loc["this run: baseline (measured)", "metric"] == pytest.approx(base)
    assert refs.loc[f"this run: best found ({best['cid']})", "metric"] == pytest.approx(best["result"]["metric"])
    weak, strong = refs.loc["reference: a weak published result"], refs.loc["reference: a strong published result"]
    assert bool(weak["best_found_better"]) and not bool(strong["best_found_better"])
    assert weak["best_found_vs_this"] == pytest.approx(best["result"]["metric"] - 0.5)
    assert bool(refs.loc["this run: baseline (measured)", "best_found_better"])    # the best beat the baseline
    page = Tables((report / "index.html").read_text())
    assert len(page.rows("thinking")) == 2 and len(page.rows("references")) == 4


@pytest.mark.slurm
@pytest.mark.slow
def test_spend_and_gpu_hours_match_ledger_and_results(runs, report) -> None:
    calls = [json.loads(line) for line in (runs["evolve"] / "state" / "llm_calls.jsonl").read_text().splitlines()]
    spend = pd.read_csv(report / "spend.csv").set_index("epoch")
    assert spend.loc["all", "llm_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls))
    assert spend.loc["all", "llm_usd"] > 0
    epoch0 = [c["cost_usd"] for c in calls if c["tag"].startswith("ideate:") and ":e0:" in c["tag"]]
    assert spend.loc["0", "llm_usd"] >= sum(epoch0) > 0
    results = [r["result"] for r in disk_rows(runs["evolve"]) if r["result"]]
    gpu_h = sum(r["wall_s"] for r in results) / 3600      # one GPU per job
    assert spend.loc["all", "gpu_hours"] == pytest.approx(gpu_h) and gpu_h > 0
    assert spend.loc["all", "usd_per_valid"] == pytest.approx(spend.loc["all", "llm_usd"] / 2)
    ideas = pd.read_csv(report / "ideas.csv").set_index(["run", "cid"])
    crash = ideas.loc[("evolve", "e00-001")]
    own = [c["cost_usd"] for c in calls if c["tag"].split(":")[1].removeprefix(".building-") == "e00-001"
           and c["tag"].startswith("implement:")]
    assert crash["llm_cost_usd"] == pytest.approx(sum(own)) and crash["llm_cost_usd"] > 0


@pytest.mark.slurm
@pytest.mark.slow
def test_categories_judged_once_and_cached(runs, report) -> None:
    ideas = pd.read_csv(report / "ideas.csv", keep_default_na=False)
    evolve = ideas[(ideas["run"] == "evolve") & (ideas["cid"] != "baseline")].set_index("cid")
    for cid, row in evolve.iterrows():
        expected = ("judge failed" if "NODIFF" in row["idea"] else
                    "hyper-parameter" if "learning rate" in row["idea"] else "algorithm")
        assert row["category"] == expected, (cid, row["idea"])
    table = pd.read_csv(report / "categories.csv").set_index("category")
    assert table.loc["hyper-parameter", "ideas"] == 3 and table.loc["algorithm", "ideas"] == 2
    assert table.loc["hyper-parameter", "valid"] == 2
    verdicts = [json.loads(line) for line in (report / "judge" / "verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 11 and all("# The idea" in v["prompt"] for v in verdicts)
    assert (report / "judge" / "judge_category.j2").read_text().startswith("You are classifying")
    with FakeLLMServer(judge_responder) as judge:   # again: only the failed verdicts are asked again
        outcome = build_report(runs["evolve"], report, [runs["best_of_n"]], _judge_client(judge.base_url))
        assert outcome.judge_calls == 1 and len(judge.requests) == 1


def _judge_client(base_url: str):
    from toolkit.llm.base import make_client
    from toolkit.report.judge import judge_settings

    return make_client(judge_settings("openai-compatible", "fake-judge", base_url + "/v1"))


@pytest.mark.slurm
@pytest.mark.slow
def test_without_judge_every_category_reads_not_judged(runs, tmp_path) -> None:
    build_report(runs["evolve"], tmp_path / "plain")
    ideas = pd.read_csv(tmp_path / "plain" / "ideas.csv", keep_default_na=False)
    assert set(ideas[ideas["cid"] != "baseline"]["category"]) == {NOT_JUDGED}
    page = Tables((tmp_path / "plain" / "index.html").read_text())
    assert [r["category"] for r in page.rows("categories")] == [NOT_JUDGED]
    assert not (tmp_path / "plain" / "judge").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_report_of_a_running_run(runs, tmp_path) -> None:
    """A run caught mid-epoch 1 (its event log cut there, the daemon's lock held): the report still builds."""
    run_dir = tmp_path / "running"
    shutil.copytree(runs["evolve"], run_dir, symlinks=True)
    events = (run_dir / "state" / "events.jsonl").read_text().splitlines(keepends=True)
    cut = next(i for i, line in enumerate(events) if '"kind": "submitted"' in line and '"e01-' in line)
    (run_dir / "state" / "events.jsonl").write_text("".join(events[:cut]))
    failed = sum(1 for e in map(json.loads, events[:cut])
                 if e["kind"] == "implemented" and e["cid"].startswith("e01-") and e["status"] != "ready")
    for cid in ("e01-000", "e01-001", "e01-002"):
        (run_dir / "candidates" / cid / "result.json").unlink(missing_ok=True)
    (run_dir / "daemon.lock").write_text(f"{os.getpid()}@test\n")
    outcome = build_report(run_dir, tmp_path / "out")
    page = (tmp_path / "out" / "index.html").read_text()
    assert 'id="run-status" class="badge running"' in page
    epochs = pd.read_csv(tmp_path / "out" / "epochs.csv").set_index("epoch")
    assert epochs.loc[1, "valid"] == 0 and epochs.loc[1, "finished"] == failed   # no result in epoch 1 yet
    assert outcome.parquet.exists()


# ---- one definition per quantity: the live view, the report and W&B agree on the real runs ---------------------
def disk_valid(row: dict) -> bool:
    return bool(row["result"] and row["result"]["status"] == "ok" and row["result"]["reward"])


def disk_finished_ideas(run_dir: Path) -> list[dict]:
    """The ideas with an outcome, from the files: a result, or an implementation that failed."""
    return [r for r in disk_rows(run_dir) if r["cid"] != "baseline" and (r["result"] or r["impl"] != "ready")]


def live_text(state: RunState) -> str:
    """What `toolkit status` (the live view) and the plain progress line show."""
    console = Console(record=True, width=240, color_system=None)
    console.print(dashboard.search_view(state))
    return console.export_text() + "\n" + progress_line(state)


def wandb_of(state: RunState, folder: Path) -> FakeWandb:
    """What the W&B stage sends for this state (the daemon's last tick)."""
    fake = FakeWandb()
    WandbLogger(WandbSettings(enabled=True), folder, {}, module=fake).update(state)
    return fake


def wandb_epochs(fake: FakeWandb) -> dict[int, dict]:
    return {r["epoch/epoch"]: r for r in fake.rows if "epoch/epoch" in r}


@pytest.mark.slurm
@pytest.mark.slow
def test_one_baseline_reward_live_in_the_report_and_in_wandb(runs, report, tmp_path) -> None:
    comparison = pd.read_csv(report / "comparison.csv").set_index("run")
    for strategy, run_dir in runs.items():
        state, base = load_state(RunLayout(run_dir)), next(r for r in disk_rows(run_dir) if r["cid"] == "baseline")
        assert disk_valid(base)
        reward = base["result"]["reward"]
        assert state.baseline_reward() == pytest.approx(reward)
        assert f"baseline reward {reward:.4f}" in live_text(state)
        assert comparison.loc[strategy, "baseline_reward"] == pytest.approx(reward)
        assert wandb_of(state, tmp_path / strategy).summary["baseline_reward"] == pytest.approx(reward)


@pytest.mark.slurm
@pytest.mark.slow
def test_one_best_live_in_the_report_and_in_wandb(runs, report, tmp_path) -> None:
    comparison = pd.read_csv(report / "comparison.csv").set_index("run")
    for strategy, run_dir in runs.items():
        state = load_state(RunLayout(run_dir))
        valid = [r for r in disk_rows(run_dir) if r["cid"] != "baseline" and disk_valid(r)]
        best = max(valid, key=lambda r: r["result"]["reward"])
        reward = best["result"]["reward"]
        assert sum(r["result"]["reward"] == reward for r in valid) == 1        # no tie: the cid is the one best
        view = state.best_screened()
        assert view is not None and (view.cid, view.reward) == (best["cid"], pytest.approx(reward))
        text = live_text(state)
        assert f"best screened {reward:.4f} ({best['cid']})" in text                   # the live view
        assert f"best screened {reward:.4g} ({best['cid']})" in text                   # the progress line
        assert comparison.loc[strategy, "best_reward"] == pytest.approx(reward)
        assert comparison.loc[strategy, "best_epoch"] == best["epoch"]
        fake = wandb_of(state, tmp_path / strategy)
        assert fake.summary["best_reward"] == pytest.approx(reward)
    evolve = load_state(RunLayout(runs["evolve"]))
    epochs, fake = pd.read_csv(report / "epochs.csv").set_index("epoch"), wandb_of(evolve, tmp_path)
    for epoch, best_of_epoch in best_per_epoch(disk_rows(runs["evolve"])).items():
        assert epochs.loc[epoch, "best_reward"] == pytest.approx(best_of_epoch)
        assert wandb_epochs(fake)[epoch]["epoch/best_reward"] == pytest.approx(best_of_epoch)
    refs = pd.read_csv(report / "references.csv")
    assert f"this run: best found ({evolve.best_screened().cid})" in set(refs["result"])


@pytest.mark.slurm
@pytest.mark.slow
def test_one_execution_rate_live_in_the_report_and_in_wandb(runs, report, tmp_path) -> None:
    funnel = pd.read_csv(report / "funnel.csv").set_index("run")
    comparison = pd.read_csv(report / "comparison.csv").set_index("run")
    for strategy, run_dir in runs.items():
        state, finished = load_state(RunLayout(run_dir)), disk_finished_ideas(run_dir)
        rate = sum(disk_valid(r) for r in finished) / len(finished)
        assert 0 < rate < 1 and state.execution_rate() == pytest.approx(rate)
        assert f"execution rate {rate:.0%}" in live_text(state)
        assert funnel.loc[strategy, "execution_rate"] == pytest.approx(rate)
        assert comparison.loc[strategy, "execution_rate"] == pytest.approx(rate)
        assert wandb_of(state, tmp_path / strategy).summary["execution_rate"] == pytest.approx(rate)
    epochs = pd.read_csv(report / "epochs.csv").set_index("epoch")
    fake = wandb_of(load_state(RunLayout(runs["evolve"])), tmp_path)
    for epoch in (0, 1):
        done = [r for r in disk_finished_ideas(runs["evolve"]) if r["epoch"] == epoch]
        rate = sum(disk_valid(r) for r in done) / len(done)
        assert epochs.loc[epoch, "execution_rate"] == pytest.approx(rate)
        assert wandb_epochs(fake)[epoch]["epoch/execution_rate"] == pytest.approx(rate)


@pytest.mark.slurm
@pytest.mark.slow
def test_one_diversity_in_the_report_in_wandb_and_rl(runs, report, tmp_path) -> None:
    from toolkit.report import tables
    from toolkit.rl import report as rl_report
    from toolkit.rl import trainer

    assert trainer.diversity is rl_report.diversity is tables.diversity          # RL measures with the same one
    shown = pd.read_csv(report / "diversity.csv").set_index("epoch")
    fake = wandb_of(load_state(RunLayout(runs["evolve"])), tmp_path)
    for epoch in (0, 1):
        texts = [json.loads((runs["evolve"] / "candidates" / r["cid"] / "idea.json").read_text())["text"]
                 for r in disk_rows(runs["evolve"]) if r["cid"] != "baseline" and r["epoch"] == epoch]
        sets = [frozenset(re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", t.lower())) for t in texts]
        pairs = [len(a & b) / len(a | b) for a, b in itertools.combinations(sets, 2)]
        expected = dict(ideas=len(texts), distinct=len(set(sets)), mean_jaccard=sum(pairs) / len(pairs),
                        top_share=max(sets.count(s) for s in sets) / len(sets))
        logged = wandb_epochs(fake)[epoch]
        for key, value in expected.items():
            assert shown.loc[epoch, key] == pytest.approx(value), key
            assert logged[f"epoch/{key}"] == pytest.approx(value), key


@pytest.mark.slurm
@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(report, tmp_path) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    dom, log = chromium(report / "index.html", tmp_path, "--dump-dom")
    body = re.search(r"<body[^>]*>", dom).group(0)
    plots = len(list((report / "plots").glob("*.png")))
    assert f'data-images-ok="{plots}"' in body and 'data-images-broken="0"' in body, body
    for table_id in ("epochs", "comparison", "funnel", "categories", "diversity", "spend", "ideas"):
        assert f'<table id="{table_id}">' in dom
    assert "CONSOLE" not in log, [line for line in log.splitlines() if "CONSOLE" in line]
    _, log = chromium(report / "index.html", tmp_path, f"--screenshot={shot}", "--window-size=1200,5000")
    assert "CONSOLE" not in log
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000


def chromium(page: Path, tmp_path: Path, *action: str) -> tuple[str, str]:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           "--enable-logging=stderr", "--v=0", *action, page.resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, done.stderr


# ---- pure parts, no cluster ----------------------------------------------------------------------------------
def test_diversity_numbers() -> None:
    same = "Use a cosine learning-rate schedule."
    got = diversity([same, same, "Use EMA of weights.", same.upper()])
    assert got.ideas == 4 and got.distinct == 2 and got.top_share == 0.75
    a, b = {"use", "a", "cosine", "learning", "rate", "schedule"}, {"use", "ema", "of", "weights"}
    cross = len(a & b) / len(a | b)
    assert got.mean_jaccard == pytest.approx((3 * 1.0 + 3 * cross) / 6)
    assert diversity(["one idea only"]).mean_jaccard is None


@pytest.mark.parametrize("reply, category", [
    ('{"category": "hyper-parameter", "why": "lr"}', "hyper-parameter"),
    ('Sure. {"category": "algorithmic"}', "algorithm"),
    ('{"category": "both"}', "judge failed"),
    ("no json here", "judge failed"),
])
def test_parse_verdict_never_guesses(reply: str, category: str) -> None:
    assert parse_verdict(reply)[0] == category


def test_spend_from_events_without_ledger(tmp_path: Path) -> None:
    """No llm_calls.jsonl: the cumulative llm_spend events are split by the epoch running at the time."""
    layout = RunLayout(tmp_path / "run")
    layout.make()
    events = [{"kind": "search_started", "search": {"strategy": "evolve"}},
              {"kind": "epoch_started", "epoch": 0, "t": 1},
              {"kind": "llm_spend", "spent_usd": 0.5}, {"kind": "llm_spend", "spent_usd": 0.75},
              {"kind": "epoch_started", "epoch": 1, "t": 2}, {"kind": "llm_spend", "spent_usd": 2.0}]
    layout.events.write_text("".join(json.dumps(e) + "\n" for e in events))
    run = load_run(layout.root)
    spend = spend_table(run, ideas_table(run)).set_index("epoch")
    assert spend.loc["0", "llm_usd"] == pytest.approx(0.75) and spend.loc["1", "llm_usd"] == pytest.approx(1.25)
    assert spend.loc["all", "llm_usd"] == pytest.approx(2.0) and pd.isna(spend.loc["all", "usd_per_valid"])


class FakeWandb:
    """Records what a WandbLogger sends, in place of the wandb module."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.summary: dict = {}
        self.init_kwargs: dict = {}

    def init(self, **kwargs):
        self.init_kwargs = kwargs
        return self

    def define_metric(self, *args, **kwargs) -> None:
        pass

    def log(self, row: dict) -> None:
        self.rows.append(row)

    def finish(self) -> None:
        self.rows.append({"finished": True})


def search_state() -> RunState:
    state = RunState()
    events = [{"kind": "search_started", "search": {"strategy": "evolve"}},
              {"kind": "idea", "idea_id": "baseline", "text": "Baseline", "epoch": 0, "origin": "baseline"},
              {"kind": "result", "cid": "baseline", "status": "ok", "reward": 2.0, "metric": 0.5, "wall_s": 1.0}]
    for i, (reward, status) in enumerate([(4.0, "ok"), (None, "failed"), (1.0, "ok")]):
        events += [{"kind": "idea", "idea_id": f"e00-{i:03d}", "text": f"idea {i}", "epoch": 0, "origin": "fresh"},
                   {"kind": "implemented", "cid": f"e00-{i:03d}", "status": "ready"},
                   {"kind": "result", "cid": f"e00-{i:03d}", "status": status, "reward": reward, "wall_s": 2.0}]
    for event in events:
        state.apply(event)
    return state


def test_wandb_logger_logs_each_result_and_epoch_once(tmp_path: Path) -> None:
    fake, state = FakeWandb(), search_state()
    logger = WandbLogger(WandbSettings(enabled=True), tmp_path / "run", {"k": 1}, module=fake)
    assert fake.init_kwargs["mode"] == "offline" and fake.init_kwargs["resume"] == "allow"
    logger.update(state)
    assert [r["result/index"] for r in fake.rows] == [1, 2, 3, 4] and not any("epoch/epoch" in r for r in fake.rows)
    state.apply({"kind": "epoch_ended", "epoch": 0})
    logger.update(state)
    logger.update(state)
    epochs = [r for r in fake.rows if "epoch/epoch" in r]
    assert len(epochs) == 1 and len(fake.rows) == 5
    assert epochs[0]["epoch/best_reward"] == 4.0 and epochs[0]["epoch/beat_baseline"] == 1
    assert epochs[0]["epoch/execution_rate"] == pytest.approx(2 / 3)
    assert fake.summary["best_reward"] == 4.0 and fake.summary["baseline_reward"] == 2.0


@pytest.mark.slow
def test_wandb_offline_mode_writes_a_local_run(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    logger = WandbLogger(WandbSettings(enabled=True, mode="offline"), tmp_path / "run", {"env": "toy"})
    logger.update(search_state())
    assert logger.run.summary["baseline_reward"] == 2.0
    logger.finish()
    files = list((tmp_path / "run" / "wandb").glob("offline-run-*/*.wandb"))
    assert len(files) == 1 and files[0].stat().st_size > 0


def test_wandb_settings_reject_unknown_mode() -> None:
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match="wandb.mode"):
        WandbSettings(mode="cloud")


def test_report_refuses_a_directory_that_is_not_a_run(tmp_path: Path) -> None:
    from toolkit.errors import ConfigError

    with pytest.raises(ConfigError, match="events.jsonl"):
        build_report(tmp_path)



def just_started_run(run_dir: Path) -> Path:
    """A search whose first idea failed to implement and nothing else happened yet."""
    layout = RunLayout(run_dir)
    layout.make()
    events = [{"kind": "search_started", "search": {"strategy": "evolve"}},
              {"kind": "epoch_started", "epoch": 0, "t": 1},
              {"kind": "idea", "idea_id": "e00-000", "text": "Use a bigger model.", "epoch": 0, "origin": "fresh"},
              {"kind": "implemented", "cid": "e00-000", "status": "failed", "reason": "no diff found"}]
    layout.events.write_text("".join(json.dumps(e) + "\n" for e in events))
    return run_dir


def test_report_of_runs_with_the_same_name_and_no_results(tmp_path: Path) -> None:
    first, second = just_started_run(tmp_path / "a" / "run"), just_started_run(tmp_path / "b" / "run")
    outcome = build_report(first, compare=[second])
    assert outcome.html == first / "report" / "index.html" and outcome.html.exists()
    funnel = pd.read_csv(first / "report" / "funnel.csv")
    assert list(funnel["run"]) == ["a/run", "b/run"] and list(funnel["proposed"]) == [1, 1]
    assert list(funnel["patch_applied"]) == [0, 0] and list(funnel["execution_rate"]) == [0.0, 0.0]
    assert funnel["beat_baseline"].isna().all()          # no baseline measured: not counted as 0
    page = Tables(outcome.html.read_text())
    assert page.rows("epochs")[0]["best_reward"] == "-" and "No valid result yet" in outcome.html.read_text()


def test_judge_needs_a_model() -> None:
    from toolkit.errors import ConfigError
    from toolkit.report.judge import judge_settings

    with pytest.raises(ConfigError, match="--judge-model"):
        judge_settings("anthropic", "")


@pytest.mark.parametrize("env", ["nanogpt", "grpo_math"])
def test_the_paper_figures_are_set_only_against_the_recipe_they_were_measured_with(tmp_path: Path, env: str) -> None:
    """env.yaml's references hold for the codebase it ships (references_recipe); a run of another recipe (here
    nanogpt's documented 16,000-step variant) still sees them, marked as not comparable and not compared."""
    import shutil
    from types import SimpleNamespace

    import pandas as pd

    from toolkit.envs import load_env, tree_sha256
    from toolkit.report.tables import reference_table, same_recipe

    shipped = load_env(str(ROOT / "envs" / env))
    assert same_recipe(shipped), (f"envs/{env}/code changed: if the paper's figures still hold for it, set "
                                  f"references_recipe: {tree_sha256(shipped.code_dir)} in envs/{env}/env.yaml")
    copy = tmp_path / env
    shutil.copytree(ROOT / "envs" / env, copy, ignore=shutil.ignore_patterns("__pycache__"))
    train = copy / "code" / "train.py"
    train.write_text(train.read_text().replace("num_iterations = 26_880", "num_iterations = 16_000")
                     if env == "nanogpt" else train.read_text() + "\n# another recipe\n")
    frame = pd.DataFrame([{"cid": "baseline", "status": "ok", "valid": True, "metric": 3.3, "reward": 1 / 3.3},
                          {"cid": "e00-000", "status": "ok", "valid": True, "metric": 3.2, "reward": 1 / 3.2}])
    for spec, comparable in ((shipped, True), (load_env(str(copy)), False)):
        table = reference_table(SimpleNamespace(env_spec=lambda spec=spec: spec, smoke=False), frame)
        papers = table[table["result"].str.startswith("reference: paper")]
        assert len(papers) == len(shipped.references)
        assert papers["result"].str.contains("another recipe: not comparable").eq(not comparable).all()
        assert papers["best_found_vs_this"].notna().eq(comparable).all()
