"""`toolkit report`: what a search found, as a self-contained HTML page, PNG plots, CSV and Parquet.

Everything is read from the run directory (event log, result files, implement records, the LLM ledger), so a
report can be built from a finished run or from one that is still running, from any shell. It writes only
under --out (default RUN_DIR/report): the page, plots, CSV/Parquet, and the judge's prompt and cached verdicts.

    toolkit report runs/search [--out DIR] [--compare runs/best_of_n ...] [--judge-llm anthropic --judge-model M]
"""
from __future__ import annotations

import argparse
import base64
import dataclasses
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pandas as pd

from toolkit import fsio
from toolkit.disk import human_bytes
from toolkit.layout import RunLayout
from toolkit.llm.base import PROVIDERS, LLMClient, make_client
from toolkit.prompts import TEMPLATES
from toolkit.report import plots
from toolkit.report.judge import CategoryJudge, apply_judge, judge_settings
from toolkit.report.runs import (
    RunData,
    baseline_reward,
    best_certified,
    best_screened,
    ideas_only,
    ideas_table,
    load_run,
    replica_frame,
)
from toolkit.report.tables import (
    category_table,
    certification_summary,
    certification_table,
    comparison_table,
    disk_table,
    diversity_table,
    epoch_table,
    funnel_table,
    reference_table,
    spend_table,
    thinking_table,
    top_ideas,
)


# ---- writing the report ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportOutcome:
    html: Path
    csv: Path
    parquet: Path
    judge_calls: int                   # new judge LLM calls made by this build (0 = all cached or no judge)


def default_out(layout: RunLayout) -> Path:
    return layout.root / "report"


def build_report(run_dir: Path, out_dir: Path | None = None, compare: Iterable[Path] = (),
                 judge_client: LLMClient | None = None) -> ReportOutcome:
    runs = unique_names([load_run(Path(run_dir))] + [load_run(Path(p)) for p in compare])
    out = Path(out_dir) if out_dir else default_out(runs[0].layout)
    out.mkdir(parents=True, exist_ok=True)
    judge = CategoryJudge(judge_client, out / "judge") if judge_client is not None else None
    frames, calls = [], 0
    for run in runs:
        frame, made = apply_judge(ideas_table(run), judge, run.description)
        frames.append(frame)
        calls += made
    return _write(out, runs, frames, judge, calls)


def unique_names(runs: list[RunData]) -> list[RunData]:
    """Runs are told apart by directory name; two runs both called `run` become `a/run` and `b/run`."""
    names = [r.name for r in runs]
    return [r if names.count(r.name) == 1 else dataclasses.replace(r, name=_qualified(r)) for r in runs]


def _qualified(run: RunData) -> str:
    return f"{run.layout.root.resolve().parent.name}/{run.name}"


def _write(out: Path, runs: list[RunData], frames: list[pd.DataFrame], judge: CategoryJudge | None,
           calls: int) -> ReportOutcome:
    tables = report_tables(runs, frames)
    everything = pd.concat(frames, ignore_index=True)
    csv, parquet = out / "ideas.csv", out / "ideas.parquet"
    fsio.atomic_write_text(csv, everything.to_csv(index=False))
    fsio.atomic_write_bytes(parquet, everything.to_parquet(index=False))
    fsio.atomic_write_text(out / "replicas.csv", pd.concat([replica_frame(r) for r in runs]).to_csv(index=False))
    for name, table in tables.items():
        fsio.atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    pngs = plots.all_plots(runs, frames, tables)
    for name, png in pngs.items():
        fsio.atomic_write_bytes(out / "plots" / f"{name}.png", png)
    page = render_page(runs, frames, tables, pngs, judge)
    fsio.atomic_write_text(out / "index.html", page)
    return ReportOutcome(html=out / "index.html", csv=csv, parquet=parquet, judge_calls=calls)


def report_tables(runs: list[RunData], frames: list[pd.DataFrame]) -> dict[str, pd.DataFrame]:
    main, frame = runs[0], frames[0]
    return {"epochs": epoch_table(frame), "references": reference_table(main, frame), "funnel": funnel_table(frames),
            "certification": certification_table(main, frame),
            "certification_summary": certification_summary(main, frame),
            "thinking": thinking_table(frame), "categories": category_table(frame), "diversity": diversity_table(frame),
            "spend": spend_table(main, frame), "comparison": comparison_table(runs, frames), "disk": disk_table(main)}


# ---- HTML ----------------------------------------------------------------------------------------------------
def html_environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              autoescape=True, keep_trailing_newline=True)


def fmt(column: str, value: Any) -> str:
    """How a table cell reads: rates as percentages, money in USD, mean token counts with 1 decimal, rewards with
    4 decimals, none as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and ("rate" in column or "share" in column):
        return f"{value:.0%}"
    if isinstance(value, (int, float)) and column.endswith("_bytes"):
        return human_bytes(value)
    if isinstance(value, (int, float)) and "usd" in column:
        return f"${value:.4f}"
    if isinstance(value, float) and "tokens" in column:
        return f"{value:.1f}"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3g}"
    return str(value)


def html_table(table_id: str, frame: pd.DataFrame, caption: str) -> dict[str, Any]:
    columns = list(frame.columns)
    rows = [[fmt(c, _plain(v)) for c, v in zip(columns, row)] for row in frame.itertuples(index=False)]
    return dict(id=table_id, caption=caption, columns=columns, rows=rows)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


CAPTIONS = {
    "epochs": "Reward per epoch (ideas only; the baseline is the unchanged codebase). Execution rate = valid "
              "results / finished ideas (paper_execution_rate: without the revisions the preflight bought, see the "
              "funnel); mean_reward_failed_as_0 counts failed runs as 0, as RL does.",
    "funnel": "Execution funnel per ideator/implementer model. preflight: whether diffs were compiled and "
              "quick-checked before one won (implement.preflight); preflight_passed = ready to launch. "
              "execution_rate = valid results / finished ideas, as measured; paper_execution_rate = the same as the "
              "paper counted it, where only patchability was checked before launch: an idea whose first applied "
              "diff failed the preflight counts as a failed run, even when a revision then ran (equal to "
              "execution_rate when the preflight was off).",
    "categories": "Idea categories, judged by an LLM (never guessed: without a judge they read 'not judged').",
    "diversity": "Diversity per epoch: distinct ideas (the same set of words = the same idea), mean pairwise "
                 "Jaccard similarity of word sets (lower = more diverse), share of the most common idea.",
    "spend": "LLM spend (from the LLM ledger) and GPU-hours (GPUs x wall time), per epoch and per useful result.",
    "comparison": "Runs side by side (strategy from each run's search_started event).",
    "references": "The best found result against the measured baseline and the environment's published results "
                  "(env.yaml `references`, metric units; not shown for smoke runs). best_found_vs_this = best "
                  "found minus that result.",
    "certification": "Candidates re-run with fresh seeds (TOOLKIT_SEED) in one array with interleaved re-runs of "
                     "the baseline; screened = the first run's metric; mean and 95% confidence interval of the "
                     "re-runs; p = one-sided Welch t-test against the same array's baseline re-runs. The first row "
                     "is the baseline's noise floor (mean and sd over its seeds).",
    "certification_summary": "Certification at a glance: the verdicts, the false certifications alpha allows "
                             "(tested x alpha), what re-runs cost against screening (GPU-hours; task-hours for a "
                             "CPU-only environment), and the near-duplicate ideas skipped with the hours they would "
                             "have cost (at the mean cost of a screening run).",
    "disk": "The run directory's size, and the large outputs (files of at least large_file_mb in a run's code dir "
            "or scratch: checkpoints) removed once scored: every run's but the keep_top_k best ok candidates' "
            "(config `disk`). runs_keeping_outputs counts finished runs whose outputs are all still there.",
    "thinking": "Finished ideas in quartiles of the ideator's thinking length (tokens; for API models the whole "
                "ideation call's thinking, about characters / 4): execution rate and reward per quartile. Empty when "
                "no thinking was recorded (a model without extended thinking).",
}


def embedded(plots: dict[str, bytes]) -> dict[str, str]:
    """PNGs as base64 text for data: URLs (the page is self-contained)."""
    return {name: base64.b64encode(png).decode("ascii") for name, png in plots.items()}


def render_page(runs: list[RunData], frames: list[pd.DataFrame], tables: dict[str, pd.DataFrame],
                plots: dict[str, bytes], judge: CategoryJudge | None) -> str:
    main, frame = runs[0], frames[0]
    return html_environment().get_template("report.html.j2").render(
        run=_run_header(main, frame), runs=[_run_header(r, f) for r, f in zip(runs, frames)],
        tables={name: html_table(name, t, CAPTIONS[name]) for name, t in tables.items()},
        plots=embedded(plots),
        top=top_ideas(main, frame), judge=_judge_header(judge),
        ideas=html_table("ideas", ideas_only(frame)[["cid", "epoch", "origin", "category", "status", "reward",
                                                     "diff_lines", "llm_cost_usd", "job_id", "idea"]], "Every idea."),
        generated=time.strftime("%Y-%m-%d %H:%M:%S"))


def _run_header(run: RunData, frame: pd.DataFrame) -> dict[str, Any]:
    base = baseline_reward(frame)
    ideas = ideas_only(frame)
    best, certified = best_screened(ideas), best_certified(ideas)
    return dict(name=run.name, path=str(run.layout.root), strategy=run.strategy, ideator=run.ideator_model,
                implementer=run.implementer_model, env=str(run.config.get("env", "")),
                status="running" if run.running else ("finished" if run.state.search.finished else "stopped"),
                baseline="-" if base is None else fmt("reward", base), ideas=len(ideas),
                best_screened=fmt("reward", best.reward if best else None),
                best_certified=fmt("reward", certified.cert_reward if certified else None))


def _judge_header(judge: CategoryJudge | None) -> dict[str, Any]:
    if judge is None:
        return dict(used=False, model="", prompt="", spent="")
    s = judge.client.settings
    return dict(used=True, model=f"{s.provider}:{s.model}", prompt="judge/judge_category.j2",
                spent=fmt("usd", judge.client.meter.spent_usd))


# ---- the command line ----------------------------------------------------------------------------------------
def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="HTML page, PNG plots and CSV of what a search run or an RL run found")
    p.add_argument("run_dir", help="a search run directory or an RL directory (finished or still running)")
    p.add_argument("--out", help="output directory (default RUN_DIR/report)")
    p.add_argument("--compare", nargs="+", default=[], metavar="OTHER_RUN_DIR",
                   help="other runs to compare with (e.g. a best-of-N run with the same budget)")
    p.add_argument("--judge-llm", choices=tuple(PROVIDERS), help="provider of the LLM that judges idea categories")
    p.add_argument("--judge-model", default="", help="model of the judge LLM")
    p.add_argument("--judge-base-url", default="", help="endpoint of the judge LLM (openai-compatible servers)")
    p.set_defaults(func=cmd_report)
    return p


def cmd_report(args: argparse.Namespace) -> int:
    client = None
    if args.judge_llm:
        client = make_client(judge_settings(args.judge_llm, args.judge_model, args.judge_base_url))
    outcome = build_report(Path(args.run_dir), Path(args.out) if args.out else None,
                           [Path(p) for p in args.compare], client)
    print(f"report: {outcome.html}\nideas: {outcome.csv} {outcome.parquet}"
          + (f"\njudge: {outcome.judge_calls} new LLM call(s)" if client is not None else ""))
    return 0
