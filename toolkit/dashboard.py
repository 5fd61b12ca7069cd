"""Rich views as pure functions of the run state: the live daemon and `toolkit status` show the same."""
from __future__ import annotations

from rich.console import Group
from rich.table import Table
from rich.text import Text

from toolkit.state import CandidateView, RunState

STATUS_STYLE = {"ok": "green", "failed": "red", "timeout": "yellow", "invalid": "magenta", "lost": "red",
                "ready": "green", "implementing": "cyan", "queued": "cyan", "running": "blue"}
IDEA_CHARS = 60


def _fmt(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _styled(text: str) -> Text:
    return Text(text, style=STATUS_STYLE.get(text, ""))


def candidates_table(state: RunState, limit: int = 40) -> Table:
    table = Table(title="candidates", expand=False)
    for column in ("id", "idea", "implement", "job", "status", "metric", "reward"):
        table.add_column(column, overflow="fold" if column == "idea" else "ellipsis")
    views = sorted(state.candidates.values(), key=lambda v: v.cid)
    for v in views[-limit:]:
        table.add_row(v.cid, _short(v.idea), _styled(v.implement_status or "pending"), _job(v), _styled(v.status),
                      _fmt(v.metric), _fmt(v.reward))
    if len(views) > limit:
        table.caption = f"showing the last {limit} of {len(views)}"
    return table


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= IDEA_CHARS else line[: IDEA_CHARS - 1] + "…"


def _job(v: CandidateView) -> Text:
    if not v.job_id:
        return Text("")
    return _styled(v.job_phase or "queued") + Text(f" {v.job_id}", style="dim")


def summary(state: RunState) -> Text:
    counts = {k: n for k, n in state.stage_counts().items() if n}
    rate = state.execution_rate()
    parts = [f"{k} {n}" for k, n in counts.items()]
    parts.append("execution rate " + ("-" if rate is None else f"{rate:.0%}"))
    parts.append(f"LLM ${state.llm_spend_usd:.2f}")
    parts.append(f"GPU-h {state.gpu_hours:.2f}")
    return Text(" | ".join(parts))


def execute_view(state: RunState) -> Group:
    return Group(candidates_table(state), summary(state))
