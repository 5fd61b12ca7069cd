"""PNG plots of the RL report (toolkit.rl.report), drawn like the search report's (toolkit.report.plots)."""
from __future__ import annotations

from typing import Any

import pandas as pd

from toolkit.report.plots import axes, empty, png
from toolkit.report.tables import clip

LEGEND_CHARS = 50                      # a repeated idea's legend label


def _per_step(ax: Any, steps: pd.DataFrame) -> None:
    if steps.empty:
        empty(ax, "rewarded steps")
    ax.xaxis.get_major_locator().set_params(integer=True)


def reward_plot(steps: pd.DataFrame) -> bytes:
    """Fig. 5: the mean and max environment reward of each step's group (and the shaped mean when it differs)."""
    fig, ax = axes("Reward per step", "step", "reward (failed run = 0)")
    _per_step(ax, steps)
    ax.plot(steps["step"], steps["reward_mean"].astype(float), "s-", label="mean")
    ax.plot(steps["step"], steps["reward_max"].astype(float), "o-", label="max")
    if not steps["shaped_mean"].astype(float).equals(steps["reward_mean"].astype(float)):
        ax.plot(steps["step"], steps["shaped_mean"].astype(float), ":", label="mean shaped (with mitigations)")
    ax.legend(fontsize=8)
    return png(fig)


def length_plot(steps: pd.DataFrame) -> bytes:
    """Fig. 6: mean thinking length and mean idea length per step."""
    fig, ax = axes("Thinking length vs idea length", "step", "mean tokens")
    _per_step(ax, steps)
    ax.plot(steps["step"], steps["thinking_tokens_mean"].astype(float), "o-", label="thinking")
    ax.plot(steps["step"], steps["idea_tokens_mean"].astype(float), "s-", label="idea")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    return png(fig)


def thinking_plot(thinking: pd.DataFrame) -> bytes:
    """Rollout execution rate per thinking-length tercile, each bar labelled with its rollouts."""
    fig, ax = axes("Execution rate by thinking length", "thinking tokens (tercile)", "rollout execution rate")
    if thinking.empty:
        empty(ax, "rewarded steps")
    rates = thinking["rollout_execution_rate"].astype(float)
    bars = ax.bar(thinking["thinking_tokens"].astype(str), rates, color="tab:green")
    ax.bar_label(bars, labels=[f"{n} rollouts" for n in thinking["rollouts"]], fontsize=8)
    ax.set_ylim(0, 1.1)
    return png(fig)


def repeated_plot(by_step: pd.DataFrame, repeated: pd.DataFrame) -> bytes:
    """Fig. 7 (left): how many of each step's ideas were each of the run's most repeated ideas."""
    fig, ax = axes("Most repeated ideas per step", "step", "ideas in the step")
    _per_step(ax, by_step)
    texts = dict(zip(repeated["same_idea"], repeated["idea"]))
    for column in [c for c in by_step.columns if c.startswith("idea_")]:
        k = int(column.removeprefix("idea_"))
        ax.plot(by_step["step"], by_step[column], "o-", label=f"#{k} {_label(texts.get(k, ''))}")
    ax.plot(by_step["step"], by_step["others"], ":", color="gray", label="any other idea")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
    return png(fig)


def _label(idea: str) -> str:
    """An idea as a legend label: clipped, without control characters (a sampled idea can hold any token)."""
    return clip("".join(ch if ch.isprintable() else " " for ch in idea), LEGEND_CHARS)


def diversity_plot(steps: pd.DataFrame) -> bytes:
    """Fig. 7 (right): Jaccard similarity of the ideas over steps, and the largest idea's share."""
    fig, ax = axes("Jaccard similarity over steps", "step", "similarity / share")
    _per_step(ax, steps)
    ax.plot(steps["step"], steps["mean_jaccard"].astype(float), "s-", label="mean pairwise Jaccard in the step")
    ax.plot(steps["step"], steps["jaccard_to_previous"].astype(float), "^-",
            label="largest Jaccard to the previous step")
    ax.plot(steps["step"], steps["top_idea_share"].astype(float), "o:", label="share of the step's top idea")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    return png(fig)


def all_plots(tables: dict[str, pd.DataFrame]) -> dict[str, bytes]:
    steps = tables["steps"]
    return {"reward": reward_plot(steps), "lengths": length_plot(steps), "thinking": thinking_plot(tables["thinking"]),
            "repeated": repeated_plot(tables["repeated_by_step"], tables["repeated"]),
            "diversity": diversity_plot(steps)}
