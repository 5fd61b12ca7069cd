"""`toolkit report`: what a search found, as a self-contained HTML page, PNG plots, CSV and Parquet.

Everything is read from the run directory (event log, result files, implement records, the LLM ledger), so a
report can be built from a finished run or from one that is still running, from any shell. It writes only
under --out (default RUN_DIR/report): the page, plots, CSV/Parquet, and the judge's prompt and cached verdicts.

    toolkit report runs/search [--out DIR] [--compare runs/best_of_n ...] [--judge-llm anthropic --judge-model M]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import jinja2
import pandas as pd

from toolkit import fsio
from toolkit.config import load_yaml
from toolkit.envs import EnvSpec, load_env
from toolkit.errors import ConfigError, EnvError
from toolkit.layout import RunLayout
from toolkit.llm.base import PROVIDERS, ChatRequest, LLMClient, LLMSettings, make_client
from toolkit.policy import BASELINE_ID
from toolkit.prompts import TEMPLATES, render
from toolkit.state import RunState, load_state

NOT_JUDGED = "not judged"
JUDGE_FAILED = "judge failed"
CATEGORIES = ("hyper-parameter", "algorithm")
FUNNEL = ("proposed", "patch_applied", "preflight_passed", "job_ran", "valid_metric", "beat_baseline")
TOP_IDEAS = 5
DIFF_LINES_SHOWN = 400
EXPORT_COLUMNS = ("run", "cid", "epoch", "origin", "idea", "thinking_tokens", "category", "status", "implement_status",
                  "patch_applied", "preflight_passed", "job_ran", "valid", "beat_baseline", "metric", "reward",
                  "metrics", "diff_lines", "llm_cost_usd", "job_id", "node", "gpus", "wall_s", "gpu_hours",
                  "reason", "implement_reason", "ideator_model", "implementer_model", "duplicate_of",
                  "duplicate_score", "verdict", "cert_n", "cert_metric", "cert_low", "cert_high", "cert_reward",
                  "p_value", "verdict_reason")
REPLICA_COLUMNS = ("run", "cid", "parent", "purpose", "round", "seed", "status", "metric", "reward", "wall_s",
                   "job_id", "node", "reason")


# ---- one run, as read from its directory -------------------------------------------------------------------
@dataclass(frozen=True)
class RunData:
    name: str
    layout: RunLayout
    state: RunState
    config: dict[str, Any]
    strategy: str                      # evolve | best_of_n | execute (no search_started event)
    llm_calls: tuple[dict[str, Any], ...]
    events: tuple[dict[str, Any], ...]

    @property
    def ideator_model(self) -> str:
        return _model(self.config, "ideator")

    @property
    def implementer_model(self) -> str:
        return _model(self.config, "implementer")

    @property
    def running(self) -> bool:
        return not self.state.meta.get("finished") and self.layout.lock.exists()

    @property
    def description(self) -> str:
        env_yaml = self.layout.env_dir / "env.yaml"
        return str(load_yaml(env_yaml).get("description", "")).strip() if env_yaml.exists() else ""

    @property
    def smoke(self) -> bool:
        return bool(self.config.get("smoke", False))

    def env_spec(self) -> EnvSpec | None:
        """The run's snapshot of its environment (None for a run directory without one)."""
        try:
            return load_env(str(self.layout.env_dir), smoke=self.smoke)
        except (EnvError, ConfigError):
            return None


def _model(config: dict[str, Any], role: str) -> str:
    settings = config.get("llm", {}).get(role, {})
    return f"{settings.get('provider', '?')}:{settings.get('model') or '-'}"


def load_run(run_dir: Path) -> RunData:
    layout = RunLayout(Path(run_dir))
    if not layout.events.exists():
        raise ConfigError(f"{layout.events}: not found; is {layout.root} a toolkit run directory?")
    state = load_state(layout)
    config = load_yaml(layout.config) if layout.config.exists() else {}
    strategy = state.meta.get("search", {}).get("strategy", "execute")
    return RunData(name=layout.root.resolve().name, layout=layout, state=state, config=config, strategy=strategy,
                   llm_calls=tuple(fsio.read_jsonl(layout.llm_calls)), events=tuple(fsio.read_jsonl(layout.events)))


# ---- every idea as one row -----------------------------------------------------------------------------------
def state_frame(state: RunState) -> pd.DataFrame:
    """What the event log knows per candidate, plus the derived funnel flags (no disk reads: W&B uses it)."""
    frame = state.table()
    if frame.empty:
        return frame.assign(valid=[], beat_baseline=[])
    return _judge_outcomes(frame)


def _judge_outcomes(frame: pd.DataFrame) -> pd.DataFrame:
    """valid = ran and returned a non-zero reward (the paper's execution rate); beat_baseline needs a baseline."""
    frame["valid"] = (frame["status"] == "ok") & pd.to_numeric(frame["reward"]).fillna(0).ne(0)
    frame["beat_baseline"] = _beat(frame, baseline_reward(frame))
    return frame


def baseline_reward(frame: pd.DataFrame) -> float | None:
    rows = frame[(frame["cid"] == BASELINE_ID) & frame["valid"]] if not frame.empty else frame
    return None if rows.empty else float(rows["reward"].iloc[0])


def _beat(frame: pd.DataFrame, base: float | None) -> list[bool | None]:
    if base is None:
        return [None] * len(frame)
    return [bool(valid and reward > base) for valid, reward in zip(frame["valid"], frame["reward"])]


def ideas_table(run: RunData) -> pd.DataFrame:
    """One row per candidate (the baseline included, origin "baseline"), the result files being the truth."""
    frame = state_frame(run.state)
    if frame.empty:
        return pd.DataFrame(columns=list(EXPORT_COLUMNS))
    results = [_result(run.layout, cid) for cid in frame["cid"]]
    for column in ("status", "reason", "metric", "reward", "job_id", "node", "wall_s"):
        frame[column] = [r.get(column, old) if r else old for r, old in zip(results, frame[column])]
    frame["metrics"] = [json.dumps(r.get("metrics", {}), sort_keys=True) if r else "" for r in results]
    return _add_run_columns(run, _judge_outcomes(frame), results)


def _result(layout: RunLayout, cid: str) -> dict[str, Any]:
    path = layout.candidate(cid).result
    try:
        data = fsio.read_json(path) if path.exists() else {}
    except (json.JSONDecodeError, FileNotFoundError):
        return {}     # half-written on a lagging filesystem: the event log's view stands in
    return data if isinstance(data, dict) else {}


def _add_run_columns(run: RunData, frame: pd.DataFrame, results: list[dict[str, Any]]) -> pd.DataFrame:
    attempts = [_attempt_statuses(run.layout, cid) for cid in frame["cid"]]
    ready = frame["implement_status"] == "ready"
    frame["patch_applied"] = [r or bool(a & {"applied", "preflight_failed"}) for r, a in zip(ready, attempts)]
    frame["preflight_passed"] = ready
    frame["job_ran"] = [bool(r) and r.get("status") != "lost" for r in results]
    frame["llm_cost_usd"] = [_implement_cost(run, cid, old)
                             for cid, old in zip(frame["cid"], frame["implement_cost_usd"])]
    frame["gpu_hours"] = frame["gpus"].astype(float) * pd.to_numeric(frame["wall_s"]).fillna(0) / 3600
    frame["category"] = [NOT_JUDGED if cid != BASELINE_ID else "" for cid in frame["cid"]]
    frame["ideator_model"], frame["implementer_model"] = run.ideator_model, run.implementer_model
    frame["run"] = run.name
    metrics = pd.DataFrame([_numeric_metrics(r) for r in results], index=frame.index)
    return pd.concat([frame[list(EXPORT_COLUMNS)], metrics], axis=1)


def _attempt_statuses(layout: RunLayout, cid: str) -> set[str]:
    statuses = set()
    for path in sorted(layout.candidate(cid).implement_dir.glob("s*r*.json")):
        try:
            statuses.add(fsio.read_json(path).get("status", ""))
        except (json.JSONDecodeError, FileNotFoundError, AttributeError):
            continue
    return statuses


def _numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    metrics = result.get("metrics", {}) if result else {}
    return {f"metrics.{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def implement_cid(tag: str) -> str | None:
    """`implement:<cid>:s0r1` -> cid (the implementer tags calls from its staging dir `.building-<cid>`)."""
    parts = tag.split(":")
    if len(parts) < 2 or parts[0] != "implement":
        return None
    return parts[1].removeprefix(".building-")


def _implement_cost(run: RunData, cid: str, from_events: float) -> float:
    ledger = [c.get("cost_usd", 0.0) for c in run.llm_calls if implement_cid(str(c.get("tag", ""))) == cid]
    return float(sum(ledger)) if ledger else float(from_events or 0.0)


def ideas_only(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["cid"] != BASELINE_ID]


# ---- per-epoch tables ----------------------------------------------------------------------------------------
def _rewards(group: pd.DataFrame) -> dict[str, Any]:
    valid = group[group["valid"]]["reward"].astype(float)
    return dict(valid=len(valid), best_reward=float(valid.max()) if len(valid) else None,
                mean_reward=float(valid.mean()) if len(valid) else None, total=float(valid.sum()))


def epoch_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Best and average reward per epoch (average over valid runs, and with failures as 0 as in RL)."""
    rows, best_so_far = [], None
    for epoch, group in ideas_only(frame).groupby("epoch"):
        stats, finished = _rewards(group), int(_finished(group).sum())
        best = stats["best_reward"]
        best_so_far = best if best_so_far is None or (best is not None and best > best_so_far) else best_so_far
        rows.append(dict(epoch=int(epoch), ideas=len(group), finished=finished, valid=stats["valid"],
                         execution_rate=_ratio(stats["valid"], finished), best_reward=best,
                         mean_reward=stats["mean_reward"], mean_reward_failed_as_0=_ratio(stats["total"], finished),
                         best_so_far=best_so_far, beat_baseline=_count_true(group["beat_baseline"])))
    return pd.DataFrame(rows, columns=["epoch", "ideas", "finished", "valid", "execution_rate", "best_reward",
                                       "mean_reward", "mean_reward_failed_as_0", "best_so_far", "beat_baseline"])


def _finished(frame: pd.DataFrame) -> pd.Series:
    return frame["status"].fillna("").ne("") | frame["implement_status"].isin(["failed", "invalid"])


def _count_true(values: Iterable[Any]) -> int | None:
    """How many are True; None when there is no baseline to compare with (every value None)."""
    values = list(values)
    if values and all(v is None for v in values):
        return None
    return sum(1 for v in values if v is True)


def funnel_table(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """proposed -> patch applied -> preflight passed -> job ran -> valid metric -> beat baseline, per model pair."""
    ideas = ideas_only(pd.concat(frames, ignore_index=True))
    rows = []
    for (run, ideator, implementer), group in ideas.groupby(["run", "ideator_model", "implementer_model"], sort=False):
        counts = dict(proposed=len(group), patch_applied=int(group["patch_applied"].sum()),
                      preflight_passed=int(group["preflight_passed"].sum()), job_ran=int(group["job_ran"].sum()),
                      valid_metric=int(group["valid"].sum()), beat_baseline=_count_true(group["beat_baseline"]))
        rate = _ratio(counts["valid_metric"], int(_finished(group).sum()))
        rows.append(dict(run=run, ideator=ideator, implementer=implementer, **counts, execution_rate=rate))
    return pd.DataFrame(rows, columns=["run", "ideator", "implementer", *FUNNEL, "execution_rate"])


def category_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's table: hyper-parameter vs algorithm ideas, how often they ran, how well they did."""
    ideas, rows = ideas_only(frame), []
    for category, group in ideas.groupby("category"):
        stats = _rewards(group)
        rows.append(dict(category=category, ideas=len(group), share=len(group) / len(ideas), valid=stats["valid"],
                         execution_rate=stats["valid"] / len(group), mean_reward=stats["mean_reward"],
                         best_reward=stats["best_reward"], beat_baseline=_count_true(group["beat_baseline"])))
    return pd.DataFrame(rows, columns=["category", "ideas", "share", "valid", "execution_rate", "mean_reward",
                                       "best_reward", "beat_baseline"])


# ---- thinking length vs execution rate -------------------------------------------------------------------------
THINKING_BINS = 4


def thinking_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Finished ideas in quartiles of the ideator's thinking length: does thinking longer give ideas that run?"""
    columns = ["thinking_tokens", "ideas", "valid", "execution_rate", "mean_reward", "best_reward"]
    ideas = ideas_only(frame)
    ideas = ideas[_finished(ideas) & (pd.to_numeric(ideas["thinking_tokens"]).fillna(0) > 0)]
    if ideas.empty:
        return pd.DataFrame(columns=columns)
    tokens = pd.to_numeric(ideas["thinking_tokens"])
    bins = pd.qcut(tokens, q=min(THINKING_BINS, tokens.nunique()), duplicates="drop")
    rows = []
    for _, group in ideas.groupby(bins, observed=True):
        stats, low, high = _rewards(group), int(group["thinking_tokens"].min()), int(group["thinking_tokens"].max())
        rows.append(dict(thinking_tokens=f"{low}-{high}" if low != high else str(low), ideas=len(group),
                         valid=stats["valid"], execution_rate=stats["valid"] / len(group),
                         mean_reward=stats["mean_reward"], best_reward=stats["best_reward"]))
    return pd.DataFrame(rows, columns=columns)


# ---- against published results --------------------------------------------------------------------------------
def reference_table(run: RunData, frame: pd.DataFrame) -> pd.DataFrame:
    """The run's measured baseline and best found result next to the env's `references` (metric units)."""
    columns = ["result", "metric", "best_found_vs_this", "best_found_better"]
    spec = run.env_spec()
    if spec is None or frame.empty:
        return pd.DataFrame(columns=columns)
    valid = frame[frame["valid"]]
    base = valid[valid["cid"] == BASELINE_ID]
    found = valid[valid["cid"] != BASELINE_ID]
    best = found.loc[pd.to_numeric(found["reward"]).idxmax()] if not found.empty else None
    best_metric = float(best["metric"]) if best is not None else None
    others = [("this run: baseline (measured)", float(base["metric"].iloc[0]) if not base.empty else None)]
    if not run.smoke:  # a smoke run's metric is not the env's real metric
        others += [(f"reference: {name}", float(value)) for name, value in spec.references.items()]
    compared = [_versus(spec, label, metric, best_metric) for label, metric in others]
    best_row = _versus(spec, f"this run: best found ({best['cid']})" if best is not None else "this run: best found",
                       best_metric, None)
    return pd.DataFrame([compared[0], best_row, *compared[1:]], columns=columns)


def _versus(spec: EnvSpec, label: str, metric: float | None, best: float | None) -> dict[str, Any]:
    if metric is None or best is None:
        return dict(result=label, metric=metric, best_found_vs_this=None, best_found_better=None)
    return dict(result=label, metric=metric, best_found_vs_this=best - metric,
                best_found_better=spec.better(best, metric))


# ---- diversity -----------------------------------------------------------------------------------------------
WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")     # words and numbers such as 0.3 (a learning rate is content)


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def diversity(texts: list[str]) -> dict[str, Any]:
    """Distinct ideas (same word sequence = same idea), mean pairwise Jaccard of word sets, top idea's share."""
    tokens = [WORD.findall(t.lower()) for t in texts]
    counts = pd.Series([" ".join(t) for t in tokens], dtype=str).value_counts()
    pairs = [jaccard(frozenset(a), frozenset(b)) for a, b in itertools.combinations(tokens, 2)]
    return dict(ideas=len(texts), distinct=int(len(counts)), mean_jaccard=_ratio(sum(pairs), len(pairs)),
                top_share=_ratio(float(counts.iloc[0]), len(texts)) if texts else None)


def diversity_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = [dict(epoch=int(e), **diversity(list(g["idea"]))) for e, g in ideas_only(frame).groupby("epoch")]
    return pd.DataFrame(rows, columns=["epoch", "ideas", "distinct", "mean_jaccard", "top_share"])


# ---- spend ---------------------------------------------------------------------------------------------------
def llm_usd_per_epoch(run: RunData) -> dict[int | None, float]:
    """USD per epoch from the LLM ledger (ideation tags carry the epoch, implement tags the candidate);
    without a ledger, from the cumulative llm_spend events, each delta charged to the epoch then running."""
    if not run.llm_calls:
        return _spend_from_events(run.events)
    epochs = {cid: v.epoch for cid, v in run.state.candidates.items()}
    spend: dict[int | None, float] = {}
    for call in run.llm_calls:
        epoch = _tag_epoch(str(call.get("tag", "")), epochs)
        spend[epoch] = spend.get(epoch, 0.0) + float(call.get("cost_usd", 0.0) or 0.0)
    return spend


def _tag_epoch(tag: str, epochs: dict[str, int]) -> int | None:
    match = re.fullmatch(r"ideate:[^:]*:e(\d+):.*", tag)
    if match:
        return int(match.group(1))
    cid = implement_cid(tag)
    return epochs.get(cid) if cid else None


def _spend_from_events(events: Iterable[dict[str, Any]]) -> dict[int | None, float]:
    spend: dict[int | None, float] = {}
    epoch, last = 0, 0.0
    for event in events:
        if event.get("kind") == "epoch_started":
            epoch = int(event.get("epoch", epoch))
        elif event.get("kind") == "llm_spend":
            spent = float(event.get("spent_usd", last))
            spend[epoch], last = spend.get(epoch, 0.0) + spent - last, spent
    return spend


def spend_table(run: RunData, frame: pd.DataFrame) -> pd.DataFrame:
    """LLM USD and GPU-hours per epoch, and per valid result / per result that beat the baseline."""
    usd = llm_usd_per_epoch(run)
    epochs = sorted({int(e) for e in frame["epoch"]} | {e for e in usd if e is not None})
    rows = [_spend_row(str(e), usd.get(e, 0.0), frame[frame["epoch"] == e]) for e in epochs]
    if None in usd:
        rows.append(_spend_row("unassigned", usd[None], frame.iloc[0:0]))
    rows.append(_spend_row("all", sum(usd.values()), frame))
    return pd.DataFrame(rows, columns=["epoch", "llm_usd", "gpu_hours", "valid", "beat_baseline", "usd_per_valid",
                                       "gpu_hours_per_valid", "usd_per_improvement", "gpu_hours_per_improvement"])


def _spend_row(label: str, usd: float, group: pd.DataFrame) -> dict[str, Any]:
    ideas = ideas_only(group)
    valid, better = int(ideas["valid"].sum()), _count_true(ideas["beat_baseline"])
    gpu_h = float(group["gpu_hours"].sum())
    return dict(epoch=label, llm_usd=usd, gpu_hours=gpu_h, valid=valid, beat_baseline=better,
                usd_per_valid=_ratio(usd, valid), gpu_hours_per_valid=_ratio(gpu_h, valid),
                usd_per_improvement=_ratio(usd, better), gpu_hours_per_improvement=_ratio(gpu_h, better))


def _ratio(total: float, count: int | None) -> float | None:
    return total / count if count else None


# ---- several runs --------------------------------------------------------------------------------------------
def comparison_table(runs: list[RunData], frames: list[pd.DataFrame]) -> pd.DataFrame:
    rows = [_comparison_row(run, frame) for run, frame in zip(runs, frames)]
    return pd.DataFrame(rows, columns=["run", "strategy", "ideator", "epochs", "ideas", "valid", "execution_rate",
                                       "baseline_reward", "best_reward", "best_epoch", "llm_usd", "gpu_hours"])


def _comparison_row(run: RunData, frame: pd.DataFrame) -> dict[str, Any]:
    ideas = ideas_only(frame)
    valid = ideas[ideas["valid"]]
    best = valid.loc[valid["reward"].astype(float).idxmax()] if len(valid) else None
    return dict(run=run.name, strategy=run.strategy, ideator=run.ideator_model, epochs=ideas["epoch"].nunique(),
                ideas=len(ideas), valid=len(valid), execution_rate=_ratio(len(valid), int(_finished(ideas).sum())),
                baseline_reward=baseline_reward(frame), best_reward=None if best is None else float(best["reward"]),
                best_epoch=None if best is None else int(best["epoch"]), llm_usd=sum(llm_usd_per_epoch(run).values()),
                gpu_hours=float(frame["gpu_hours"].sum()))


def replica_frame(run: RunData) -> pd.DataFrame:
    """Every noise-floor and certification re-run, one row each."""
    rows = [{**v.__dict__, "run": run.name} for v in run.state.replicas.values()]
    return pd.DataFrame(rows, columns=list(REPLICA_COLUMNS)) if rows else pd.DataFrame(columns=list(REPLICA_COLUMNS))


def baseline_spread(run: RunData) -> tuple[float, float, int] | None:
    """(mean, sd, n) of the baseline's reward over every seed it ran with (screening + replicas)."""
    from toolkit.certify import baseline_runs

    rewards = [float(v.reward) for v in baseline_runs(run.state) if v.status == "ok" and v.reward is not None]
    if len(rewards) < 2:
        return None
    return float(pd.Series(rewards).mean()), float(pd.Series(rewards).std()), len(rewards)


def certification_table(run: RunData, frame: pd.DataFrame) -> pd.DataFrame:
    columns = ["cid", "screened", "rerun_mean", "ci_low", "ci_high", "n", "p_value", "verdict", "idea"]
    floor = run.state.meta.get("floor")
    rows = []
    if floor:
        note = "floor: every seed gave the same metric (the env ignores TOOLKIT_SEED)" if floor.get("seed_ignored") else "noise floor"
        rows.append(dict(cid="baseline", screened=None, rerun_mean=floor["mean"], ci_low=floor["mean"] - floor["sd"],
                         ci_high=floor["mean"] + floor["sd"], n=floor["n"], p_value=None, verdict=note,
                         idea=f"the unchanged codebase: mean ± sd over {floor['n']} seeds"))
    tested = ideas_only(frame)[lambda f: f["verdict"].fillna("") != ""]
    for r in tested.sort_values(["verdict", "cert_metric"]).itertuples():
        rows.append(dict(cid=r.cid, screened=r.metric, rerun_mean=r.cert_metric, ci_low=r.cert_low,
                         ci_high=r.cert_high, n=r.cert_n, p_value=r.p_value, verdict=r.verdict, idea=_clip(r.idea)))
    return pd.DataFrame(rows, columns=columns)


def _clip(text: str, chars: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= chars else line[: chars - 1] + "…"


def certification_summary(run: RunData, frame: pd.DataFrame) -> pd.DataFrame:
    from toolkit.certify import hours, run_hours

    ideas = ideas_only(frame)
    verdicts = ideas["verdict"].fillna("")
    alpha = run.state.meta.get("search", {}).get("certify", {}).get("alpha")
    screen, cert = hours(run.state)
    ran = [run_hours(v) for v in run.state.candidates.values() if v.status == "ok"]
    dups = int((ideas["duplicate_of"].fillna("") != "").sum())
    row = dict(tested=int((verdicts != "").sum()), certified=int((verdicts == "certified").sum()),
               not_significant=int((verdicts == "not significant").sum()),
               unreproducible=int((verdicts == "unreproducible").sum()), alpha=alpha,
               expected_false_certifications=None if alpha is None else float((verdicts != "").sum() * alpha),
               screening_hours=screen, certification_hours=cert,
               certification_share=cert / (screen + cert) if screen + cert else None,
               duplicates_skipped=dups, duplicate_hours_avoided=dups * (sum(ran) / len(ran) if ran else 0.0))
    return pd.DataFrame([row])


def top_ideas(run: RunData, frame: pd.DataFrame, n: int = TOP_IDEAS) -> list[dict[str, Any]]:
    valid = ideas_only(frame)[lambda f: f["valid"]]
    best = valid.sort_values("reward", ascending=False).head(n)
    return [dict(cid=r.cid, epoch=int(r.epoch), reward=float(r.reward), metric=r.metric, idea=r.idea,
                 category=r.category, diff=_diff_text(run.layout, r.cid), verdict=r.verdict or "not re-run",
                 cert_reward=r.cert_reward) for r in best.itertuples()]


def _diff_text(layout: RunLayout, cid: str) -> str:
    path = layout.candidate(cid).patch
    lines = path.read_text(errors="replace").splitlines() if path.exists() else ["(no patch.diff)"]
    more = len(lines) - DIFF_LINES_SHOWN
    return "\n".join(lines[:DIFF_LINES_SHOWN] + ([f"... {more} more lines in {path}"] if more > 0 else []))


# ---- the LLM judge of idea categories ----------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    category: str                      # hyper-parameter | algorithm | judge failed
    why: str = ""
    cached: bool = False


class CategoryJudge:
    """Asks an LLM whether each idea is a hyper-parameter change or a new algorithm. Verdicts are cached in
    <out>/judge/verdicts.jsonl (keyed by model and rendered prompt), so a re-run asks only about new ideas."""

    def __init__(self, client: LLMClient, judge_dir: Path) -> None:
        self.client, self.dir = client, judge_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        fsio.atomic_write_text(self.dir / "judge_category.j2", (TEMPLATES / "judge_category.j2").read_text())
        self.cache = {e["key"]: e for e in fsio.read_jsonl(self.verdicts) if e.get("category") in CATEGORIES}
        self.failed: dict[str, dict[str, Any]] = {}     # this build's failures: asked again next time

    @property
    def verdicts(self) -> Path:
        return self.dir / "verdicts.jsonl"

    def key(self, prompt: str) -> str:
        s = self.client.settings
        return hashlib.sha256(f"{s.provider}:{s.model}\n{prompt}".encode()).hexdigest()

    def judge(self, ideas: list[str], description: str) -> list[Verdict]:
        about = description or "(no description)"
        prompts = [render("judge_category", description=about, idea=idea.strip()) for idea in ideas]
        todo = sorted({p for p in prompts if self.key(p) not in self.cache and self.key(p) not in self.failed})
        replies = self.client.complete_many([ChatRequest(prompt=p, tag="judge:category") for p in todo])
        for prompt, reply in zip(todo, replies):
            self._remember(prompt, reply.text if reply.ok else "", reply.reason)
        return [self._verdict(p, p not in todo) for p in prompts]

    def _remember(self, prompt: str, text: str, error: str) -> None:
        category, why = parse_verdict(text)
        entry = dict(key=self.key(prompt), model=self.client.settings.model, category=category, why=why or error,
                     prompt=prompt, response=text, t=time.time())
        fsio.append_jsonl(self.verdicts, entry)
        (self.cache if category in CATEGORIES else self.failed)[entry["key"]] = entry

    def _verdict(self, prompt: str, cached: bool) -> Verdict:
        key = self.key(prompt)
        entry = self.cache.get(key) or self.failed.get(key, {})
        return Verdict(entry.get("category", JUDGE_FAILED), entry.get("why", ""), cached)


def parse_verdict(text: str) -> tuple[str, str]:
    """(category, why) from the judge's JSON reply; an unreadable reply is "judge failed", never a guess."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        data = json.loads(match.group(0)) if match else {}
    except json.JSONDecodeError:
        data = {}
    raw = str(data.get("category", "")).strip().lower() if isinstance(data, dict) else ""
    category = {"hyper-parameter": "hyper-parameter", "hyperparameter": "hyper-parameter",
                "hyper-parameters": "hyper-parameter", "algorithm": "algorithm", "algorithmic": "algorithm"}.get(raw)
    if category is None:
        return JUDGE_FAILED, f"unreadable judge reply: {text[:200]!r}"
    return category, str(data.get("why", ""))


def judge_settings(provider: str, model: str, base_url: str = "") -> LLMSettings:
    if provider not in PROVIDERS:
        raise ConfigError(f"--judge-llm {provider!r} is not one of {', '.join(PROVIDERS)}")
    if not model and provider != "replay":
        raise ConfigError("--judge-llm needs --judge-model (the model that classifies the ideas)")
    return LLMSettings(provider=provider, model=model, base_url=base_url, max_tokens=4000, concurrency=8)


def apply_judge(frame: pd.DataFrame, judge: CategoryJudge | None, description: str) -> tuple[pd.DataFrame, int]:
    """Fill the category column of the ideas (not the baseline); returns the frame and the number of new calls."""
    if judge is None or frame.empty:
        return frame, 0
    mask = frame["cid"] != BASELINE_ID
    verdicts = judge.judge(list(frame.loc[mask, "idea"]), description)
    frame = frame.copy()
    frame.loc[mask, "category"] = [v.category for v in verdicts]
    return frame, sum(1 for v in verdicts if not v.cached)


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
    from toolkit import report_plots

    tables = report_tables(runs, frames)
    everything = pd.concat(frames, ignore_index=True)
    csv, parquet = out / "ideas.csv", out / "ideas.parquet"
    fsio.atomic_write_text(csv, everything.to_csv(index=False))
    _atomic_bytes(parquet, everything.to_parquet(index=False))
    fsio.atomic_write_text(out / "replicas.csv", pd.concat([replica_frame(r) for r in runs]).to_csv(index=False))
    for name, table in tables.items():
        fsio.atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    plots = report_plots.all_plots(runs, frames, tables)
    for name, png in plots.items():
        _atomic_bytes(out / "plots" / f"{name}.png", png)
    page = render_page(runs, frames, tables, plots, judge)
    fsio.atomic_write_text(out / "index.html", page)
    return ReportOutcome(html=out / "index.html", csv=csv, parquet=parquet, judge_calls=calls)


def report_tables(runs: list[RunData], frames: list[pd.DataFrame]) -> dict[str, pd.DataFrame]:
    main, frame = runs[0], frames[0]
    return {"epochs": epoch_table(frame), "references": reference_table(main, frame), "funnel": funnel_table(frames),
            "certification": certification_table(main, frame), "certification_summary": certification_summary(main, frame),
            "thinking": thinking_table(frame), "categories": category_table(frame), "diversity": diversity_table(frame),
            "spend": spend_table(main, frame), "comparison": comparison_table(runs, frames)}


def _atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---- HTML ----------------------------------------------------------------------------------------------------
def _html_environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              autoescape=True, keep_trailing_newline=True)


def fmt(column: str, value: Any) -> str:
    """How a table cell reads: rates as percentages, money in USD, rewards with 4 decimals, none as '-'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and ("rate" in column or "share" in column):
        return f"{value:.0%}"
    if isinstance(value, (int, float)) and "usd" in column:
        return f"${value:.4f}"
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
              "results / finished ideas; mean_reward_failed_as_0 counts failed runs as 0, as RL does.",
    "funnel": "Execution funnel per ideator/implementer model.",
    "categories": "Idea categories, judged by an LLM (never guessed: without a judge they read 'not judged').",
    "diversity": "Diversity per epoch: distinct ideas (same word sequence = same idea), mean pairwise Jaccard "
                 "similarity of word sets (lower = more diverse), share of the most common idea.",
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
    "thinking": "Finished ideas in quartiles of the ideator's thinking length (tokens; for API models the whole "
                "ideation call's thinking, about characters / 4): execution rate and reward per quartile. Empty when "
                "no thinking was recorded (a model without extended thinking).",
}


def render_page(runs: list[RunData], frames: list[pd.DataFrame], tables: dict[str, pd.DataFrame],
                plots: dict[str, bytes], judge: CategoryJudge | None) -> str:
    import base64

    main, frame = runs[0], frames[0]
    return _html_environment().get_template("report.html.j2").render(
        run=_run_header(main, frame), runs=[_run_header(r, f) for r, f in zip(runs, frames)],
        tables={name: html_table(name, t, CAPTIONS[name]) for name, t in tables.items()},
        plots={name: base64.b64encode(png).decode("ascii") for name, png in plots.items()},
        top=top_ideas(main, frame), judge=_judge_header(judge),
        ideas=html_table("ideas", ideas_only(frame)[["cid", "epoch", "origin", "category", "status", "reward",
                                                     "diff_lines", "llm_cost_usd", "job_id", "idea"]], "Every idea."),
        generated=time.strftime("%Y-%m-%d %H:%M:%S"))


def _run_header(run: RunData, frame: pd.DataFrame) -> dict[str, Any]:
    base = baseline_reward(frame)
    ideas = ideas_only(frame)
    best = ideas[ideas["valid"]]["reward"].max() if not ideas.empty else None
    certified = ideas[ideas["verdict"].fillna("") == "certified"]["cert_reward"].max() if not ideas.empty else None
    return dict(name=run.name, path=str(run.layout.root), strategy=run.strategy, ideator=run.ideator_model,
                implementer=run.implementer_model, env=str(run.config.get("env", "")),
                status="running" if run.running else ("finished" if run.state.meta.get("finished") else "stopped"),
                baseline="-" if base is None else fmt("reward", base), ideas=len(ideas),
                best_screened=fmt("reward", _plain(best)), best_certified=fmt("reward", _plain(certified)))


def _judge_header(judge: CategoryJudge | None) -> dict[str, Any]:
    if judge is None:
        return dict(used=False, model="", prompt="", spent="")
    s = judge.client.settings
    return dict(used=True, model=f"{s.provider}:{s.model}", prompt="judge/judge_category.j2",
                spent=fmt("usd", judge.client.meter.spent_usd))


# ---- the command line ----------------------------------------------------------------------------------------
def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("report", help="HTML page, PNG plots, CSV and Parquet of what a run found")
    p.add_argument("run_dir", help="a run directory (finished or still running)")
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


__all__ = ["RunData", "load_run", "ideas_table", "state_frame", "epoch_table", "funnel_table", "category_table",
           "diversity", "diversity_table", "spend_table", "comparison_table", "CategoryJudge", "build_report",
           "add_report_parser"]
