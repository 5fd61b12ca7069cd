"""Per-step metrics: rewards, execution rate, lengths, diversity, time split; and their Rich table.

Diversity is measured with the search report's one definition of similarity (toolkit.report.tables: Jaccard
of word sets): the paper's collapse is the same idea in different words, so "distinct" counts clusters of ideas
whose Jaccard similarity reaches a threshold (greedy leader clustering, in sampling order), and the top share is
the largest cluster's share of the group.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table

from toolkit.report.tables import jaccard, mean_pairwise_jaccard, word_set


def max_jaccard(words: frozenset[str], others: Iterable[frozenset[str]]) -> float:
    return max((jaccard(words, o) for o in others), default=0.0)


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
    """The first leader `words` overlaps by `threshold`; len(leaders) when none does."""
    return next((k for k, lead in enumerate(leaders) if jaccard(words, lead) >= threshold), len(leaders))


def cluster_sizes(sets: Sequence[frozenset[str]], threshold: float) -> list[int]:
    return [len(c) for c in clusters(sets, threshold)]


@dataclass(frozen=True)
class Diversity:
    distinct: int                      # clusters of near-identical ideas
    mean_jaccard: float | None         # mean over all pairs of ideas
    top_share: float | None            # share of the ideas in the largest cluster


def diversity(ideas: Sequence[str], threshold: float) -> Diversity:
    sets = [word_set(i) for i in ideas]
    sizes = cluster_sizes(sets, threshold)
    top = max(sizes) / len(sets) if sets else None
    return Diversity(distinct=len(sizes), mean_jaccard=mean_pairwise_jaccard(sets), top_share=top)


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
