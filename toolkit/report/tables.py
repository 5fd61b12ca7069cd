"""The report's tables, one function each, from the idea frames of one or more runs."""
from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd

from toolkit.disk import tree_bytes
from toolkit.envs import EnvSpec, tree_sha256
from toolkit.layout import RunLayout
from toolkit.report.runs import (
    RunData,
    baseline_reward,
    best_reward,
    best_screened,
    execution_rate,
    finished_ideas,
    frame_views,
    ideas_only,
    implement_cid,
)
from toolkit.state import BASELINE_ID

FUNNEL = ("proposed", "patch_applied", "preflight_passed", "job_ran", "valid_metric", "beat_baseline")
RATES = ("execution_rate", "paper_execution_rate")
TOP_IDEAS = 5
DIFF_LINES_SHOWN = 400

# ---- per-epoch tables ----------------------------------------------------------------------------------------
def _rewards(group: pd.DataFrame) -> dict[str, Any]:
    valid = group[group["valid"]]["reward"].astype(float)
    return dict(valid=len(valid), best_reward=best_reward(group),
                mean_reward=float(valid.mean()) if len(valid) else None, total=float(valid.sum()))


def epoch_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Best and average reward per epoch (average over valid runs, and with failures as 0 as in RL)."""
    rows, best_so_far = [], None
    for epoch, group in ideas_only(frame).groupby("epoch"):
        stats, finished = _rewards(group), finished_ideas(group)
        best = stats["best_reward"]
        best_so_far = best if best_so_far is None or (best is not None and best > best_so_far) else best_so_far
        rows.append(dict(epoch=int(cast(int, epoch)), ideas=len(group), finished=finished, valid=stats["valid"],
                         **execution_rates(group), best_reward=best,
                         mean_reward=stats["mean_reward"], mean_reward_failed_as_0=_ratio(stats["total"], finished),
                         best_so_far=best_so_far, beat_baseline=_count_true(group["beat_baseline"])))
    return pd.DataFrame(rows, columns=["epoch", "ideas", "finished", "valid", *RATES, "best_reward",
                                       "mean_reward", "mean_reward_failed_as_0", "best_so_far", "beat_baseline"])


def execution_rates(ideas: pd.DataFrame) -> dict[str, float | None]:
    """Valid results per finished idea (`toolkit.state.execution_rate`), and as the paper would have counted them
    (`paper_valid`: without the revisions our preflight bought; the same number when the preflight was off). The
    event-log view (W&B) has no implement records, so no paper rate."""
    paper = _ratio(int(ideas["paper_valid"].sum()), finished_ideas(ideas)) if "paper_valid" in ideas else None
    return dict(execution_rate=execution_rate(ideas), paper_execution_rate=paper)


def _finished(frame: pd.DataFrame) -> pd.Series:
    """Per row: finished as the execution rate counts it (`CandidateView.finished`)."""
    return pd.Series([v.finished for v in frame_views(frame)], index=frame.index, dtype=bool)


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
        rows.append(dict(run=run, ideator=ideator, implementer=implementer, preflight=group["preflight"].iloc[0],
                         **counts, **execution_rates(group)))
    return pd.DataFrame(rows, columns=["run", "ideator", "implementer", "preflight", *FUNNEL, *RATES])


def category_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The paper's table: hyper-parameter vs algorithm ideas, how often they ran, how well they did."""
    ideas, rows = ideas_only(frame), []
    for category, group in ideas.groupby("category"):
        stats = _rewards(group)
        rows.append(dict(category=category, ideas=len(group), share=len(group) / len(ideas), valid=stats["valid"],
                         execution_rate=execution_rate(group), mean_reward=stats["mean_reward"],
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
    rows = []
    for span, group in quantile_groups(ideas, "thinking_tokens", THINKING_BINS):
        stats = _rewards(group)
        rows.append(dict(thinking_tokens=span, ideas=len(group), valid=stats["valid"],
                         execution_rate=execution_rate(group), mean_reward=stats["mean_reward"],
                         best_reward=stats["best_reward"]))
    return pd.DataFrame(rows, columns=columns)


def quantile_groups(frame: pd.DataFrame, column: str, bins: int) -> list[tuple[str, pd.DataFrame]]:
    """The rows in `bins` quantile bins of an integer column (fewer when values repeat), each labelled by the
    span of values it holds ("120-340", or "120" when one value)."""
    if frame.empty:
        return []
    values = pd.to_numeric(frame[column])
    cut = pd.qcut(values, q=min(bins, values.nunique()), duplicates="drop")
    return [(_span(group[column]), group) for _, group in frame.groupby(cut, observed=True)]


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return f"{low}-{high}" if low != high else str(low)


# ---- against published results --------------------------------------------------------------------------------
def reference_table(run: RunData, frame: pd.DataFrame) -> pd.DataFrame:
    """The run's measured baseline and best found result next to the env's `references` (metric units). A
    reference measured with another recipe than this run's codebase is said to be so, not compared."""
    columns = ["result", "metric", "best_found_vs_this", "best_found_better"]
    spec = run.env_spec()
    if spec is None or frame.empty:
        return pd.DataFrame(columns=columns)
    base = frame[frame["valid"] & (frame["cid"] == BASELINE_ID)]
    best = best_screened(frame)
    best_metric = best.metric if best is not None else None
    others = [("this run: baseline (measured)", float(base["metric"].iloc[0]) if not base.empty else None)]
    if not run.smoke:  # a smoke run's metric is not the env's real metric
        others += [(f"reference: {name}", float(value)) for name, value in spec.references.items()]
    same = same_recipe(spec)
    compared = [_versus(spec, label, metric, best_metric) if same or not label.startswith("reference")
                else _versus(spec, f"{label} (measured with another recipe: not comparable)", metric, None)
                for label, metric in others]
    best_row = _versus(spec, f"this run: best found ({best.cid})" if best is not None else "this run: best found",
                       best_metric, None)
    return pd.DataFrame([compared[0], best_row, *compared[1:]], columns=columns)


def same_recipe(spec: EnvSpec) -> bool:
    """Whether this run's codebase is the one the env's references were measured with (when recorded)."""
    return not spec.references_recipe or tree_sha256(spec.code_dir) == spec.references_recipe


def _versus(spec: EnvSpec, label: str, metric: float | None, best: float | None) -> dict[str, Any]:
    if metric is None or best is None:
        return dict(result=label, metric=metric, best_found_vs_this=None, best_found_better=None)
    return dict(result=label, metric=metric, best_found_vs_this=best - metric,
                best_found_better=spec.better(best, metric))


# ---- diversity -----------------------------------------------------------------------------------------------
# The one definition of idea similarity and diversity, for search reports and RL alike (toolkit.rl imports it):
# Jaccard similarity of word sets, words lower-cased, numbers such as 0.3 kept whole (a learning rate is content).
# Ideas whose similarity reaches a threshold are one idea: RL passes its `same_idea_jaccard` (the paper's collapse
# is the same idea in different words); the search report `SAME_WORDS` (only the same words are the same idea).
SAME_WORDS = 1.0
WORD = re.compile(r"[a-z0-9]+(?:\.[0-9]+)?")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def word_set(text: str) -> frozenset[str]:
    return frozenset(words(text))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def mean_pairwise_jaccard(sets: Sequence[frozenset[str]]) -> float | None:
    pairs = [jaccard(a, b) for a, b in itertools.combinations(sets, 2)]
    return _ratio(sum(pairs), len(pairs))


def clusters(sets: Sequence[frozenset[str]], threshold: float) -> list[list[int]]:
    """Greedy leader clustering in order: each idea joins the first leader it overlaps by `threshold`, else leads
    a new cluster. Returns each cluster's member indices. Identical word sets land together without a comparison
    (a collapsed run repeats ideas verbatim, so a whole run's ideas cluster in about one pass)."""
    leaders: list[frozenset[str]] = []
    members: list[list[int]] = []
    known: dict[frozenset[str], int] = {}
    for i, words in enumerate(sets):
        home = known[words] if words in known else _leader(words, leaders, threshold)
        if home == len(leaders):
            leaders.append(words)
            members.append([])
        known[words] = home
        members[home].append(i)
    return members


def _leader(words: frozenset[str], leaders: Sequence[frozenset[str]], threshold: float) -> int:
    """The first leader `words` overlaps by `threshold`; len(leaders) when none does. At a threshold of 1 only
    the same set is the same idea, and `clusters` finds those without comparing."""
    if threshold >= SAME_WORDS:
        return len(leaders)
    return next((k for k, lead in enumerate(leaders) if jaccard(words, lead) >= threshold), len(leaders))


@dataclass(frozen=True)
class Diversity:
    ideas: int
    distinct: int                      # clusters of ideas that are the same idea at the threshold
    mean_jaccard: float | None         # mean over all pairs of ideas
    top_share: float | None            # share of the ideas in the largest cluster


def diversity(ideas: Sequence[str], threshold: float = SAME_WORDS) -> Diversity:
    sets = [word_set(i) for i in ideas]
    sizes = [len(c) for c in clusters(sets, threshold)]
    return Diversity(ideas=len(sets), distinct=len(sizes), mean_jaccard=mean_pairwise_jaccard(sets),
                     top_share=_ratio(max(sizes), len(sets)) if sets else None)


def diversity_table(frame: pd.DataFrame) -> pd.DataFrame:
    rows = [dict(epoch=int(cast(int, e)), **diversity(list(g["idea"])).__dict__)
            for e, g in ideas_only(frame).groupby("epoch")]
    return pd.DataFrame(rows, columns=["epoch", *Diversity.__dataclass_fields__])


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
    return pd.DataFrame(rows, columns=["run", "strategy", "ideator", "epochs", "ideas", "valid", *RATES,
                                       "baseline_reward", "best_reward", "best_epoch", "llm_usd", "gpu_hours"])


def _comparison_row(run: RunData, frame: pd.DataFrame) -> dict[str, Any]:
    ideas = ideas_only(frame)
    best = best_screened(ideas)
    return dict(run=run.name, strategy=run.strategy, ideator=run.ideator_model, epochs=ideas["epoch"].nunique(),
                ideas=len(ideas), valid=int(ideas["valid"].sum()), **execution_rates(ideas),
                baseline_reward=baseline_reward(frame), best_reward=None if best is None else best.reward,
                best_epoch=None if best is None else best.epoch, llm_usd=sum(llm_usd_per_epoch(run).values()),
                gpu_hours=float(frame["gpu_hours"].sum()))


def certification_table(run: RunData, frame: pd.DataFrame) -> pd.DataFrame:
    columns = ["cid", "screened", "rerun_mean", "ci_low", "ci_high", "n", "p_value", "verdict", "idea"]
    floor = run.state.certification.floor
    rows = []
    if floor is not None:
        note = ("floor: every seed gave the same metric (the env ignores TOOLKIT_SEED)" if floor.seed_ignored
                else "noise floor")
        rows.append(dict(cid="baseline", screened=None, rerun_mean=floor.mean, ci_low=floor.mean - floor.sd,
                         ci_high=floor.mean + floor.sd, n=floor.n, p_value=None, verdict=note,
                         idea=f"the unchanged codebase: mean ± sd over {floor.n} seeds"))
    ideas = ideas_only(frame)
    tested = ideas[ideas["verdict"].fillna("") != ""]
    for r in tested.sort_values(["verdict", "cert_metric"]).itertuples():
        rows.append(dict(cid=r.cid, screened=r.metric, rerun_mean=r.cert_metric, ci_low=r.cert_low,
                         ci_high=r.cert_high, n=r.cert_n, p_value=r.p_value, verdict=r.verdict, idea=clip(r.idea)))
    return pd.DataFrame(rows, columns=columns)


def clip(text: str, chars: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= chars else line[: chars - 1] + "…"


def certification_summary(run: RunData, frame: pd.DataFrame) -> pd.DataFrame:
    from toolkit.search.certify import hours, run_hours

    ideas = ideas_only(frame)
    verdicts = ideas["verdict"].fillna("")
    alpha = run.state.search.config.get("certify", {}).get("alpha")
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


def disk_table(run: RunData) -> pd.DataFrame:
    """The run directory's size now, and the large outputs the keep policy (config `disk`) removed."""
    runs, pruned = run.state.runs(), run.state.pruned()
    policy = run.config.get("disk", {})
    row = dict(run_dir_bytes=tree_bytes(run.layout.root), freed_bytes=sum(pruned), runs_pruned=len(pruned),
               runs_keeping_outputs=sum(1 for v in runs if v.status and v.pruned_bytes is None),
               prune=policy.get("prune"), keep_top_k=policy.get("keep_top_k"),
               large_file_mb=policy.get("large_file_mb"))
    return pd.DataFrame([row])


def top_ideas(run: RunData, frame: pd.DataFrame, n: int = TOP_IDEAS) -> list[dict[str, Any]]:
    ideas = ideas_only(frame)
    valid = ideas[ideas["valid"]]
    best = valid.sort_values("reward", ascending=False).head(n)
    return [dict(cid=r.cid, epoch=int(r.epoch), reward=float(r.reward), metric=r.metric, idea=r.idea,
                 category=r.category, diff=_diff_text(run.layout, r.cid), verdict=r.verdict or "not re-run",
                 cert_reward=r.cert_reward) for r in best.itertuples()]


def _diff_text(layout: RunLayout, cid: str) -> str:
    path = layout.candidate(cid).patch
    lines = path.read_text(errors="replace").splitlines() if path.exists() else ["(no patch.diff)"]
    more = len(lines) - DIFF_LINES_SHOWN
    return "\n".join(lines[:DIFF_LINES_SHOWN] + ([f"... {more} more lines in {path}"] if more > 0 else []))


