"""PNG plots of a report, drawn with matplotlib's Agg canvas (no display, no pyplot global state)."""
from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")

from matplotlib.figure import Figure  # imported after the backend is chosen, before any figure exists

from toolkit.report.runs import RunData, baseline_reward, baseline_spread
from toolkit.report.tables import FUNNEL, epoch_table

if TYPE_CHECKING:
    import pandas as pd

DPI = 110
SIZE_IN = (7.0, 3.6)


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def axes(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=SIZE_IN)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes, color="gray")


def _baseline(ax: Any, base: float | None, label: str = "baseline") -> None:
    if base is not None:
        ax.axhline(base, color="black", linestyle="--", linewidth=1, label=f"{label} {base:.4g}")


def reward_plot(epochs: pd.DataFrame, base: float | None, band: tuple[float, float, int] | None = None,
                certified: float | None = None) -> bytes:
    """Best and mean per epoch, the baseline, its noise band (mean ± 2 sd over its seeds) and the best
    certified result (the mean of its fresh-seed re-runs)."""
    fig, ax = axes("Reward per epoch", "epoch", "reward")
    if epochs["valid"].sum() == 0:
        empty(ax, "valid results")
    x = epochs["epoch"]
    ax.plot(x, epochs["best_reward"].astype(float), "o-", label="best of the epoch")
    ax.plot(x, epochs["mean_reward"].astype(float), "s-", label="mean of valid runs")
    ax.plot(x, epochs["best_so_far"].astype(float), ":", color="green", label="best so far")
    _baseline(ax, base)
    if band is not None:
        mean, sd, n = band
        ax.axhspan(mean - 2 * sd, mean + 2 * sd, color="gray", alpha=0.2, label=f"baseline noise ±2 sd ({n} seeds)")
    if certified is not None:
        ax.axhline(certified, color="tab:green", linewidth=1.5, label=f"best certified {certified:.4g}")
    ax.set_xticks(list(x))
    ax.legend(fontsize=8)
    return png(fig)


def comparison_plot(runs: list[RunData], frames: list[pd.DataFrame]) -> bytes:

    fig, ax = axes("Best reward so far: " + " vs ".join(r.strategy for r in runs), "epoch", "best reward so far")
    for run, frame in zip(runs, frames):
        epochs = epoch_table(frame)
        ax.step(epochs["epoch"], epochs["best_so_far"].astype(float), "o-", where="post",
                label=f"{run.name} ({run.strategy})")
    _baseline(ax, baseline_reward(frames[0]))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return png(fig)


def funnel_plot(funnel: pd.DataFrame) -> bytes:

    fig, ax = axes("Execution funnel", "", "ideas")
    width = 0.8 / max(len(funnel), 1)
    for i, row in enumerate(funnel.itertuples(index=False)):
        counts = [getattr(row, stage) or 0 for stage in FUNNEL]
        positions = [k + i * width for k in range(len(FUNNEL))]
        ax.bar(positions, counts, width=width, label=f"{row.ideator} / {row.implementer} ({row.run})")
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(FUNNEL))], [s.replace("_", "\n") for s in FUNNEL], fontsize=8)
    if len(funnel):
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1)
    else:
        empty(ax, "ideas")
    return png(fig)


def diversity_plot(diversity: pd.DataFrame) -> bytes:
    fig, ax = axes("Idea diversity per epoch", "epoch", "share")
    x = diversity["epoch"]
    ax.plot(x, diversity["distinct"] / diversity["ideas"].clip(lower=1), "o-", label="distinct / ideas")
    ax.plot(x, diversity["mean_jaccard"].astype(float), "s-", label="mean pairwise Jaccard")
    ax.plot(x, diversity["top_share"].astype(float), "^-", label="share of the most common idea")
    ax.set_ylim(0, 1.05)
    ax.set_xticks(list(x))
    ax.legend(fontsize=8)
    return png(fig)


def spend_plot(spend: pd.DataFrame) -> bytes:
    rows = spend[spend["epoch"] != "all"]
    fig, ax = axes("LLM spend and GPU-hours per epoch", "epoch", "LLM USD")
    ax.bar(rows["epoch"].astype(str), rows["llm_usd"].astype(float), color="tab:blue", alpha=0.7, label="LLM USD")
    gpu = ax.twinx()
    gpu.plot(rows["epoch"].astype(str), rows["gpu_hours"].astype(float), "o-", color="tab:red", label="GPU-hours")
    gpu.set_ylabel("GPU-hours")
    gpu.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + gpu.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower left")
    return png(fig)


def category_plot(categories: pd.DataFrame) -> bytes:
    fig, ax = axes("Idea categories", "", "ideas")
    ax.bar(categories["category"], categories["ideas"], color="tab:gray", label="ideas")
    ax.bar(categories["category"], categories["valid"], color="tab:green", label="valid results")
    ax.legend(fontsize=8)
    return png(fig)


def all_plots(runs: list[RunData], frames: list[pd.DataFrame], tables: dict[str, pd.DataFrame]) -> dict[str, bytes]:

    certified = tables["certification"]
    best = certified[certified["verdict"] == "certified"]
    best_reward = None
    if not best.empty:
        best_reward = float(frames[0].set_index("cid").loc[list(best["cid"]), "cert_reward"].max())
    plots = {"reward": reward_plot(tables["epochs"], baseline_reward(frames[0]), baseline_spread(runs[0]), best_reward),
             "funnel": funnel_plot(tables["funnel"]), "categories": category_plot(tables["categories"]),
             "diversity": diversity_plot(tables["diversity"]), "spend": spend_plot(tables["spend"])}
    if len(runs) > 1:
        plots["comparison"] = comparison_plot(runs, frames)
    return plots
