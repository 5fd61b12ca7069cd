"""Per-step metrics: rewards, execution rate, lengths, diversity, time split; and their Rich table.

Diversity is the search report's one definition (`toolkit.report.tables.diversity`: Jaccard of word sets, ideas
clustered at a threshold), at the run's `same_idea_jaccard`: the paper's collapse is the same idea in different
words, so "distinct" counts clusters of ideas, and the top share is the largest cluster's share of the group.

`exec_rate` is the execution rate per rollout: the runs that ended valid (`toolkit.state.valid_result`, the
search's own test) over every rollout of the step, a rollout without an idea counting as one that did not run.
It is not the search's execution rate (`toolkit.state.execution_rate`, valid results per finished idea): a
rollout that yields no idea is the policy's failure and earns reward 0, while a search's ideation call that
yields no idea is retried and is no idea. `exec_rate = idea_rate * (valid results per idea)`.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table

from toolkit.report.tables import jaccard


def max_jaccard(words: frozenset[str], others: Iterable[frozenset[str]]) -> float:
    return max((jaccard(words, o) for o in others), default=0.0)


def near_duplicate_share(ideas: Sequence[str]) -> float | None:
    """Share of a step's ideas that the search's own duplicate check (toolkit.search.dedup, text method) would skip:
    a near-duplicate of an idea sampled before it in the same step. The same yardstick in search and RL."""
    from toolkit.search.dedup import DuplicateFinder

    if not ideas:
        return None
    finder, found = DuplicateFinder("text"), 0
    seen: list[tuple[str, str]] = []
    for i, text in enumerate(ideas):
        found += finder.find(text, seen) is not None
        seen.append((str(i), text))
    return found / len(ideas)


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


# two tables of (column title, metrics key, format), so each fits an 80-column log
REWARD_COLUMNS = (("step", "step", "d"), ("R avg", "reward_mean", ".4g"), ("R max", "reward_max", ".4g"),
                  ("shaped", "shaped_mean", ".4g"), ("exec", "exec_rate", ".0%"),
                  ("ideas", "idea_rate", ".0%"), ("loss", "loss", ".3g"), ("|grad|", "grad_norm", ".3g"))
SHAPE_COLUMNS = (("step", "step", "d"), ("think", "thinking_tokens_mean", ".0f"),
                 ("idea", "idea_tokens_mean", ".0f"), ("distinct", "distinct_ideas", "d"),
                 ("jacc", "mean_jaccard", ".2f"), ("top", "top_idea_share", ".0%"),
                 ("sample s", "sampling_s", ".1f"), ("exec s", "execution_s", ".1f"), ("update s", "update_s", ".1f"))


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _table(title: str, columns: Sequence[tuple[str, str, str]], rows: Sequence[dict[str, Any]]) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1), expand=False)
    for name, _, _ in columns:
        table.add_column(name, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*(_cell(row.get(key), fmt) for _, key, fmt in columns))
    return table


def metrics_table(rows: Sequence[dict[str, Any]], limit: int = 20) -> Group:
    """A pure function of the metrics lines: the live trainer and `toolkit rl --status` show the same."""
    shown = rows[-limit:]
    more = f" (the last {limit} of {len(rows)} steps)" if len(rows) > limit else ""
    return Group(_table("GRPO: env reward R, execution rate, update" + more, REWARD_COLUMNS, shown),
                 _table("GRPO: mean tokens, idea diversity (top = largest idea's share), seconds", SHAPE_COLUMNS,
                        shown))
