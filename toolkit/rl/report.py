"""`toolkit report RL_DIR`: the paper's analyses of a GRPO run of the ideator, as a page like the search report's.

Everything is read from the step records (steps/step-N/rollouts.json and rewards.json: what was sampled and what
it earned), so the numbers are those the update used, for a finished run or one still training. It writes only
under --out (default RL_DIR/report), each file atomically: index.html, plots/*.png, a CSV per table and
rollouts.csv (one row per rollout).

- reward per step, mean and max (the paper's Fig. 5: the mean rises, the max does not);
- thinking length vs idea length per step (Fig. 6: the thinking shrinks);
- rollout execution rate by thinking-length tercile;
- the most repeated ideas, how often each step proposed them, and Jaccard similarity over steps (Fig. 7: collapse).

"The same idea" is the trainer's: word sets whose Jaccard similarity reaches `same_idea_jaccard` (the clusters and
the similarity of toolkit.report.tables); "executed" is the search's valid result (`toolkit.state.valid_result`: the
run ended ok with a non-zero reward), and the rollout execution rate counts it over every rollout of the group (a
rollout without an idea never runs), not over finished ideas as the search's execution rate does (see
toolkit.rl.metrics).
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd

from toolkit import fsio
from toolkit.errors import ConfigError
from toolkit.report import page
from toolkit.report.tables import clip, clusters, diversity, quantile_groups, word_set
from toolkit.rl import report_plots
from toolkit.rl.config import MitigationConfig, RLConfig, load_rl_config
from toolkit.rl.layout import RLLayout, StepPaths
from toolkit.rl.metrics import max_jaccard, mean
from toolkit.schema import load_yaml
from toolkit.state import valid_result

ROLLOUT_COLUMNS = ["step", "idea_id", "thinking_tokens", "idea_tokens", "forced_close", "has_idea", "status",
                   "executed", "reward", "shaped", "advantage", "same_idea", "idea"]
TYPES = {"step": int, "thinking_tokens": int, "idea_tokens": int, "forced_close": bool, "has_idea": bool,
         "executed": bool, "reward": float, "shaped": float, "advantage": float}     # also when there is no row
OUTCOME_COLUMNS = ["rollouts", "ideas", "executed", "rollout_execution_rate", "reward_mean", "reward_max"]
STEP_COLUMNS = ["step", *OUTCOME_COLUMNS, "shaped_mean", "thinking_tokens_mean", "idea_tokens_mean",
                "distinct_ideas", "top_idea_share", "mean_jaccard", "jaccard_to_previous"]
REPEATED_COLUMNS = ["same_idea", "ideas", "share", "steps", "first_step", "last_step", "in_last_step",
                    "last_step_share", "rollout_execution_rate", "reward_mean", "idea"]
THINKING_BINS = 3                      # terciles
TOP_REPEATED = 10                      # ideas proposed more than once listed in the repeated-ideas table ...
PLOTTED_REPEATED = 5                   # ... and followed per step


# ---- the RL directory, read back ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RLRun:
    layout: RLLayout
    cfg: RLConfig
    rollouts: pd.DataFrame             # one row per rollout of every rewarded step (ROLLOUT_COLUMNS)
    unrewarded: tuple[int, ...]        # steps sampled but not rewarded yet (the trainer is in one, or stopped there)

    @property
    def steps_done(self) -> int:
        return int(self.rollouts["step"].max()) if len(self.rollouts) else 0

    @property
    def status(self) -> str:
        if self.steps_done >= self.cfg.steps:
            return "finished"
        return "running" if self.layout.lock.exists() else "stopped"


def is_rl_dir(path: Path) -> bool:
    """An RL directory: its config.yaml is an RL config (a search run's config has no `sampling`)."""
    config = RLLayout(Path(path)).config
    return config.is_file() and "sampling" in load_yaml(config)


def load_rl_run(root: Path) -> RLRun:
    layout = RLLayout(Path(root))
    cfg = load_rl_config(layout.config)
    numbers = layout.step_numbers()
    rewarded = [n for n in numbers if layout.step(n).rewards.exists()]
    rows = [row for n in rewarded for row in step_rows(n, layout.step(n))]
    read = pd.DataFrame(rows, columns=[c for c in ROLLOUT_COLUMNS if c != "same_idea"]).astype(TYPES)
    frame = with_same_idea(read, cfg.same_idea_jaccard)
    return RLRun(layout, cfg, frame, tuple(n for n in numbers if n not in rewarded))


def step_rows(n: int, paths: StepPaths) -> list[dict[str, Any]]:
    """One row per rollout of step n: the sample (rollouts.json) beside what it earned (rewards.json)."""
    rollouts, rewards = fsio.read_json(paths.rollouts)["rollouts"], fsio.read_json(paths.rewards)
    if [r["idea_id"] for r in rollouts] != [r["idea_id"] for r in rewards]:
        raise ConfigError(f"{paths.rewards} does not list the rollouts of {paths.rollouts} in the same order; "
                          f"the step's records disagree (move {paths.root} aside to report the other steps)")
    return [_rollout_row(n, ro, re) for ro, re in zip(rollouts, rewards)]


def _rollout_row(n: int, rollout: dict[str, Any], reward: dict[str, Any]) -> dict[str, Any]:
    idea = rollout["idea"]
    return dict(step=n, idea_id=rollout["idea_id"], thinking_tokens=rollout["thinking_tokens"],
                idea_tokens=rollout["idea_tokens"], forced_close=rollout["forced_close"], has_idea=idea is not None,
                status=reward["status"], executed=valid_result(reward["status"], reward["env"]),
                reward=float(reward["env"]), shaped=float(reward["total"]), advantage=float(reward["advantage"]),
                idea=idea or "")


def with_same_idea(frame: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """`same_idea`: which idea of the run a rollout proposed, ranked by how often the run proposed it (1 = the
    most repeated; ties in order of first appearance); 0 without an idea."""
    ideas = frame[frame["has_idea"]]
    ranked = sorted(clusters([word_set(t) for t in ideas["idea"]], threshold), key=len, reverse=True)
    rank = pd.Series(0, index=frame.index, dtype=int)
    for k, members in enumerate(ranked, start=1):
        rank.loc[ideas.index[members]] = k
    return frame.assign(same_idea=rank)[ROLLOUT_COLUMNS]


# ---- tables ------------------------------------------------------------------------------------------------
def outcomes(group: pd.DataFrame) -> dict[str, Any]:
    """Rollouts, ideas, executed, rollout execution rate and env reward (a failed run or no idea = 0) of some
    rollouts."""
    executed = int(group["executed"].sum())
    return dict(rollouts=len(group), ideas=int(group["has_idea"].sum()), executed=executed,
                rollout_execution_rate=executed / len(group), reward_mean=float(group["reward"].mean()),
                reward_max=float(group["reward"].max()))


def steps_table(frame: pd.DataFrame, same_idea: float) -> pd.DataFrame:
    """Per step: outcomes, mean shaped reward, mean lengths, and the ideas' diversity (as the trainer logs it)
    with their mean largest Jaccard similarity to the previous step's ideas (what the paper's penalty uses)."""
    rows: list[dict[str, Any]] = []
    previous: list[frozenset[str]] = []
    for step, group in frame.groupby("step"):
        ideas = list(group.loc[group["has_idea"], "idea"])
        rows.append({"step": int(cast(int, step)), **outcomes(group), "shaped_mean": float(group["shaped"].mean()),
                     **_lengths(group), **_diversity(ideas, previous, same_idea)})
        previous = [word_set(i) for i in ideas]
    return pd.DataFrame(rows, columns=STEP_COLUMNS)


def _lengths(group: pd.DataFrame) -> dict[str, float | None]:
    """Mean thinking tokens over every rollout; mean idea tokens over the rollouts with an idea."""
    return dict(thinking_tokens_mean=float(group["thinking_tokens"].mean()),
                idea_tokens_mean=mean(list(group.loc[group["has_idea"], "idea_tokens"].astype(float))))


def _diversity(ideas: list[str], previous: list[frozenset[str]], same_idea: float) -> dict[str, Any]:
    div = diversity(ideas, same_idea)
    to_previous = mean([max_jaccard(word_set(i), previous) for i in ideas]) if previous else None
    return dict(distinct_ideas=div.distinct, top_idea_share=div.top_share, mean_jaccard=div.mean_jaccard,
                jaccard_to_previous=to_previous)


def thinking_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every rollout of the run in terciles of its thinking length: do longer thoughts give ideas that run?"""
    groups = quantile_groups(frame, "thinking_tokens", THINKING_BINS)
    return pd.DataFrame([dict(thinking_tokens=span, **outcomes(g)) for span, g in groups],
                        columns=["thinking_tokens", *OUTCOME_COLUMNS])


def repeated_table(frame: pd.DataFrame, top: int = TOP_REPEATED) -> pd.DataFrame:
    """The run's most repeated ideas (proposed more than once): how many rollouts proposed each, over which steps,
    how many in the last step, how often they ran, what they earned; the idea as first proposed."""
    ideas = frame[frame["has_idea"]]
    last = ideas[ideas["step"] == frame["step"].max()]
    top_ideas = ideas[ideas["same_idea"].isin(_repeated(ideas, top))].groupby("same_idea")
    rows = [_repeated_row(int(k), group, len(ideas), last) for k, group in top_ideas]
    return pd.DataFrame(rows, columns=REPEATED_COLUMNS)


def _repeated_row(rank: int, group: pd.DataFrame, ideas: int, last: pd.DataFrame) -> dict[str, Any]:
    in_last = int((last["same_idea"] == rank).sum())
    return dict(same_idea=rank, ideas=len(group), share=len(group) / ideas, steps=int(group["step"].nunique()),
                first_step=int(group["step"].min()), last_step=int(group["step"].max()), in_last_step=in_last,
                last_step_share=in_last / len(last) if len(last) else None,
                rollout_execution_rate=float(group["executed"].mean()),
                reward_mean=float(group["reward"].mean()), idea=clip(group["idea"].iloc[0]))


def _repeated(ideas: pd.DataFrame, top: int) -> list[int]:
    """The ranks of the `top` most repeated ideas that were proposed more than once."""
    counts = ideas["same_idea"].value_counts()
    return sorted(int(cast(int, k)) for k, n in counts.items() if n > 1 and int(cast(int, k)) <= top)


def repeated_by_step(frame: pd.DataFrame, top: int = PLOTTED_REPEATED) -> pd.DataFrame:
    """Per step: its ideas, how many were each of the run's `top` most repeated ideas (idea_1 = the most
    repeated; only ideas proposed more than once), and how many were any other idea."""
    ideas = frame[frame["has_idea"]]
    steps = sorted(int(s) for s in frame["step"].unique())
    table = pd.DataFrame({"step": steps, "ideas": [int((ideas["step"] == s).sum()) for s in steps]})
    for k in _repeated(ideas, top):
        table[f"idea_{k}"] = [int(((ideas["step"] == s) & (ideas["same_idea"] == k)).sum()) for s in steps]
    return table.assign(others=table["ideas"] - table.drop(columns=["step", "ideas"]).sum(axis=1))


def rl_tables(run: RLRun) -> dict[str, pd.DataFrame]:
    frame = run.rollouts
    return {"steps": steps_table(frame, run.cfg.same_idea_jaccard), "thinking": thinking_table(frame),
            "repeated": repeated_table(frame), "repeated_by_step": repeated_by_step(frame)}


# ---- writing the report ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RLReportOutcome:
    html: Path
    csv: Path                          # rollouts.csv: every rollout


def build_rl_report(root: Path, out_dir: Path | None = None) -> RLReportOutcome:
    run = load_rl_run(root)
    out = Path(out_dir) if out_dir else run.layout.report
    tables = rl_tables(run)
    fsio.atomic_write_text(out / "rollouts.csv", run.rollouts.to_csv(index=False))
    for name, table in tables.items():
        fsio.atomic_write_text(out / f"{name}.csv", table.to_csv(index=False))
    pngs = report_plots.all_plots(tables)
    for name, png in pngs.items():
        fsio.atomic_write_bytes(out / "plots" / f"{name}.png", png)
    fsio.atomic_write_text(out / "index.html", render_rl_page(run, tables, pngs))
    return RLReportOutcome(html=out / "index.html", csv=out / "rollouts.csv")


CAPTIONS = {
    "steps": "Every step. Reward = the environment's (a failed run or a rollout without an idea earns 0), over all "
             "rollouts; shaped = with the mitigations, what the update used. Rollout execution rate = runs that ended "
             "ok with a non-zero reward / rollouts (a rollout without an idea counts; the search's rate is per "
             "finished idea). Tokens: thinking over all rollouts, idea over those with an idea. "
             "distinct = ideas told apart at the run's same-idea Jaccard; top share = the largest one's share; "
             "mean Jaccard = over all pairs of the step's ideas; to previous = each idea's largest Jaccard with the "
             "previous step's ideas, averaged.",
    "thinking": "Every rollout of the run in terciles of its thinking length (tokens; fewer bins when lengths "
                "repeat): rollout execution rate and reward per tercile. Later steps think less, so the terciles also "
                "split the run in time.",
    "repeated": "The run's most repeated ideas, proposed more than once (ideas whose word sets overlap by the run's "
                "same-idea Jaccard are one idea), each as first proposed: rollouts that proposed it, its share of all "
                "ideas, the steps it appears in, its count and share in the last step, how often it ran and its mean "
                "reward.",
    "repeated_by_step": "How many of each step's ideas were each of the most repeated ideas (idea_1 is the first "
                        "row of the table above), and how many were any other idea.",
}


def render_rl_page(run: RLRun, tables: dict[str, pd.DataFrame], plots: dict[str, bytes]) -> str:
    return page.html_environment().get_template("report_rl.html.j2").render(
        run=_header(run), tables={name: page.html_table(name, t, CAPTIONS[name]) for name, t in tables.items()},
        plots=page.embedded(plots), generated=time.strftime("%Y-%m-%d %H:%M:%S"))


def _header(run: RLRun) -> dict[str, Any]:
    cfg, implementer = run.cfg, run.cfg.run.llm.implementer
    return dict(name=run.layout.root.resolve().name, path=str(run.layout.root), status=run.status,
                env=cfg.run.env, ideator=cfg.policy.model or "a tiny model built from the config (random init)",
                implementer=f"{implementer.provider}:{implementer.model or '-'}", group_size=cfg.sampling.group_size,
                steps_done=run.steps_done, steps=cfg.steps, mitigations=mitigations_text(cfg.mitigations),
                same_idea=cfg.same_idea_jaccard, unrewarded=list(run.unrewarded))


def mitigations_text(m: MitigationConfig) -> str:
    """The mitigations that are on, as `name value`; the length cap only with the length reward."""
    on = {k: v for k, v in dataclasses.asdict(m).items()
          if v and (k != "length_reward_cap" or m.length_reward_per_token)}
    return ", ".join(f"{k} {v}" for k, v in on.items()) or "none"


# ---- the command line --------------------------------------------------------------------------------------
def add_report_parser(subparsers: Any) -> argparse.ArgumentParser:
    """`toolkit report`: the search report's command, which reports an RL directory with this page."""
    parser = page.add_report_parser(subparsers)
    parser.set_defaults(func=cmd_report)
    return parser


def cmd_report(args: argparse.Namespace) -> int:
    if not is_rl_dir(Path(args.run_dir)):
        return page.cmd_report(args)
    if args.compare or args.judge_llm:
        raise ConfigError(f"{args.run_dir} is an RL directory: --compare and --judge-llm apply to search runs; "
                          "drop them to report the RL run")
    outcome = build_rl_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"report: {outcome.html}\nrollouts: {outcome.csv}")
    return 0
