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


def results_progress(state: RunState) -> Table:
    from rich.progress_bar import ProgressBar

    total = max(len(state.candidates), 1)
    done = sum(1 for v in state.candidates.values() if v.terminal)
    grid = Table.grid(padding=(0, 1))
    grid.add_row(Text("results"), ProgressBar(total=total, completed=done, width=40), Text(f"{done}/{total}"))
    return grid


def execute_view(state: RunState) -> Group:
    return Group(candidates_table(state), results_progress(state), summary(state))


# ---- the search view (toolkit evolve / toolkit status) ------------------------------------------------------
def top_table(state: RunState, n: int = 5) -> Table:
    table = Table(title=f"top {n}")
    for column in ("id", "epoch", "reward", "metric", "idea"):
        table.add_column(column, overflow="fold" if column == "idea" else "ellipsis")
    ok = sorted((v for v in state.candidates.values() if v.status == "ok" and v.reward is not None),
                key=lambda v: v.reward, reverse=True)
    for v in ok[:n]:
        table.add_row(v.cid, str(v.epoch), _fmt(v.reward), _fmt(v.metric), _short(v.idea))
    return table


def epoch_progress(state: RunState) -> Table:
    from rich.progress_bar import ProgressBar

    grid = Table.grid(padding=(0, 1))
    epochs = state.meta.get("search", {}).get("epochs", 1)
    epoch = int(state.meta.get("epoch", 0))
    views = [v for v in state.candidates.values() if v.epoch == epoch]
    done = sum(1 for v in views if v.terminal)
    planned = sum(n for _, n in state.meta.get("plan", [])) + (1 if epoch == 0 and "baseline" in state.candidates else 0)
    total = max(planned, len(views), 1)
    grid.add_row(Text(f"epoch {epoch + 1}/{epochs}"), ProgressBar(total=total, completed=done, width=40),
                 Text(f"{done}/{total} results in"))
    return grid


def headline(state: RunState) -> Text:
    meta = state.meta
    base = state.candidates.get("baseline")
    best = max((v for v in state.candidates.values() if v.status == "ok" and v.reward is not None and v.cid != "baseline"),
               key=lambda v: v.reward, default=None)
    parts = [f"baseline reward {_fmt(base.reward) if base and base.reward is not None else '-'}",
             f"best {_fmt(best.reward) if best else '-'}" + (f" ({best.cid}: {_short(best.idea)})" if best else "")]
    if meta.get("stopping"):
        parts.append(f"stopping new work: {meta['stopping']}")
    if meta.get("finished"):
        parts.append("search finished")
    return Text(" | ".join(parts))


def banner(state: RunState) -> Text:
    if state.meta.get("replay"):
        return Text("REPLAY MODE: LLM answers come from a bundled recording, not a live model "
                    "(set ANTHROPIC_API_KEY or OPENAI_API_KEY to use a real one)", style="bold yellow")
    return Text("")


def search_view(state: RunState, now: float | None = None) -> Group:
    return Group(banner(state), epoch_progress(state), summary(state), headline(state), top_table(state),
                 candidates_table(state, limit=15))
