"""Rich views as pure functions of the run state: the live daemon and `toolkit status` show the same."""
from __future__ import annotations

import math

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from toolkit.disk import human_bytes
from toolkit.state import CandidateView, RunState

STATUS_STYLE = {"ok": "green", "failed": "red", "timeout": "yellow", "invalid": "magenta", "lost": "red",
                "ready": "green", "implementing": "cyan", "queued": "cyan", "running": "blue",
                "certified": "bold green", "not significant": "yellow", "unreproducible": "red",
                "duplicate": "dim"}
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
        table.add_row(Text(v.cid), _short(v.idea), _implement_cell(v), _job(v),
                      _styled(v.status), _fmt(v.metric), _fmt(v.reward))
    if len(views) > limit:
        table.caption = f"showing the last {limit} of {len(views)}"
    return table


def _implement_cell(v: CandidateView) -> Text:
    if v.duplicate_of:   # skipped, or run anyway by policy: either way the original is named
        return Text(f"{v.implement_status or 'pending'} (duplicate of {v.duplicate_of})",
                    style=STATUS_STYLE.get(v.implement_status, ""))
    return _styled(v.implement_status or "pending")


def _short(text: str) -> Text:
    """Plain text, never Rich markup: an idea (LLM output) may hold "[...]" or "[/]"."""
    line = " ".join(text.split())
    return Text(line if len(line) <= IDEA_CHARS else line[: IDEA_CHARS - 1] + "…")


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
    if state.replicas:
        done = sum(1 for v in state.replicas.values() if v.status)
        parts.append(f"re-runs {done}/{len(state.replicas)}")
    return Text(" | ".join(parts))


def disk_line(state: RunState, run_dir_bytes: int) -> Text:
    """The run directory's size (measured by the caller) and what the keep policy (`disk`) removed."""
    pruned = state.pruned()
    return Text(f"disk: run directory {human_bytes(run_dir_bytes)}; large outputs removed: "
                f"{human_bytes(sum(pruned))} ({len(pruned)} finished run(s) pruned)")


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
    table = Table(title=f"top {n} screened")
    for column in ("id", "epoch", "reward", "metric", "verdict", "idea"):
        table.add_column(column, overflow="fold" if column == "idea" else "ellipsis")
    ok = sorted((v for v in state.candidates.values() if v.status == "ok" and v.reward is not None),
                key=lambda v: -math.inf if v.reward is None else v.reward, reverse=True)
    for v in ok[:n]:
        table.add_row(Text(v.cid), str(v.epoch), _fmt(v.reward), _fmt(v.metric), _verdict(v), _short(v.idea))
    return table


def _verdict(v: CandidateView) -> Text:
    if v.verdict:
        return _styled(v.verdict)
    return Text("re-running", style="cyan") if v.cert_round >= 0 else Text("")


def floor_line(state: RunState) -> Text:
    floor = state.certification.floor
    if floor is None:
        return Text("")
    text = Text(f"baseline noise floor: {floor.mean:.4f} ± {floor.sd:.4f} (sd over {floor.n} seeds)")
    if floor.seed_ignored:
        text.append("  every seed gave the same metric: the environment ignores TOOLKIT_SEED", style="bold yellow")
    return text


def certification_table(state: RunState) -> Table:
    """Every candidate sent for fresh-seed re-runs: screening result, re-runs' mean and 95% CI, verdict."""
    table = Table(title="certification (fresh-seed re-runs vs interleaved baseline re-runs)", caption=floor_line(state))
    for column in ("id", "screened", "re-runs mean [95% CI]", "n", "p", "verdict", "idea"):
        table.add_column(column, overflow="fold" if column == "idea" else "ellipsis")
    tested = sorted((v for v in state.candidates.values() if v.cert_round >= 0),
                    key=lambda v: (v.verdict != "certified", v.cert_metric is None, v.cid))
    for v in tested:
        interval = "" if v.cert_metric is None else f"{v.cert_metric:.4f} [{_fmt(v.cert_low)}, {_fmt(v.cert_high)}]"
        table.add_row(Text(v.cid), _fmt(v.metric), interval, str(v.cert_n or ""), _fmt(v.p_value, 3),
                      _verdict(v), _short(v.idea))
    return table


def epoch_progress(state: RunState) -> Table:
    from rich.progress_bar import ProgressBar

    grid = Table.grid(padding=(0, 1))
    epochs, epoch = state.search.epochs or 1, state.search.epoch
    views = [v for v in state.candidates.values() if v.epoch == epoch]
    done = sum(1 for v in views if v.terminal)
    planned = (sum(n for _, n in state.search.plan)
               + (1 if epoch == 0 and "baseline" in state.candidates else 0))
    total = max(planned, len(views), 1)
    grid.add_row(Text(f"epoch {epoch + 1}/{epochs}"), ProgressBar(total=total, completed=done, width=40),
                 Text(f"{done}/{total} results in"))
    return grid


def headline(state: RunState) -> Text:
    base, best, certified = state.baseline_reward(), state.best_screened(), state.best_certified()
    parts = [f"baseline reward {'-' if base is None else _fmt(base)}",
             f"best screened {_fmt(best.reward) if best else '-'}" + (f" ({best.cid})" if best else ""),
             f"best certified {_fmt(certified.cert_reward) if certified else '-'}"
             + (f" ({certified.cid}, mean of {certified.cert_n} re-runs)" if certified else "")]
    if state.search.stopping:
        parts.append(f"stopping new work: {state.search.stopping}")
    if state.search.finished:
        parts.append("search finished")
    return Text(" | ".join(parts))


def banner(state: RunState) -> Text:
    if state.search.replay:
        return Text("REPLAY MODE: LLM answers come from a bundled recording, not a live model "
                    "(set ANTHROPIC_API_KEY or OPENAI_API_KEY to use a real one)", style="bold yellow")
    return Text("")


def search_view(state: RunState, now: float | None = None) -> Group:
    parts: list[RenderableType] = [banner(state), epoch_progress(state), summary(state), headline(state),
                                   top_table(state)]
    if state.certification.floor is not None or state.certification.rounds:
        parts.append(certification_table(state))
    return Group(*parts, candidates_table(state, limit=15))
