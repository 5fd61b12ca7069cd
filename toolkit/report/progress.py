"""Plain progress for logs nobody watches live: a batch job's output file, a pipe, `nohup`.

The Rich live view redraws a terminal; without one it prints nothing until it exits, so a two-day
`sbatch slurm/launch_search.sh` log would stay empty. Here the same state becomes stdlib `logging` lines: one
per state change worth knowing (a submission, a result, a lost job, a verdict, an epoch), and a progress line
(counts by status, best screened and certified, spend) every `every_s` seconds.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from toolkit.disk import human_bytes
from toolkit.state import RunState

log = logging.getLogger("toolkit.report.progress")
PROGRESS_EVERY_S = 60.0


def _result(e: dict[str, Any]) -> str:
    metric = f", metric {e['metric']:.4g}" if isinstance(e.get("metric"), (int, float)) else ""
    reason = f": {str(e.get('reason', ''))[:200]}" if e.get("status") != "ok" and e.get("reason") else ""
    return f"result {e['cid']}: {e['status']}{metric}{reason}"


def _submitted(e: dict[str, Any]) -> str:
    return f"submitted {e['cid']} as job {e['job_id']}" + (f" (retry {e['attempt']})" if e.get("attempt") else "")


def _pruned(e: dict[str, Any]) -> str | None:
    if not e.get("bytes"):
        return None
    return f"removed {human_bytes(e['bytes'])} of large outputs of {e['cid']} ({', '.join(e.get('files', [])[:3])})"


def _implemented(e: dict[str, Any]) -> str | None:
    if e.get("status") == "ready":
        return None
    return f"implement {e['cid']}: {e['status']}: {str(e.get('reason', ''))[:200]}"


LINES: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "submitted": _submitted,
    "result": _result,
    "implemented": _implemented,
    "pruned": _pruned,
    "lost": lambda e: f"lost {e['cid']} (job {e['job_id']}: {e.get('raw') or 'no state'})",
    "verdict": lambda e: f"{e['cid']}: {e['verdict']} ({e.get('reason', '')[:240]})",
    "noise_floor": lambda e: f"baseline noise floor: {e['mean']:.4g} ± {e['sd']:.3g} over {e['n']} seeds",
    "replicas_planned": lambda e: (f"re-running {', '.join(e['cids'])} with {len(e['runs'])} fresh-seed runs "
                                   f"({e['purpose']})"),
    "epoch_started": lambda e: f"epoch {e['epoch'] + 1} started",
    "epoch_ended": lambda e: f"epoch {e['epoch'] + 1} ended ({e.get('reason', '')})",
    "ideation_failed": lambda e: f"ideation failed: {str(e.get('reason', ''))[:200]}",
    "stopping": lambda e: f"no new work: {e.get('reason', '')}",
    "certify_stopped": lambda e: f"certification stopped: {e.get('reason', '')}",
    "alarm": lambda e: f"ALARM: {e.get('reason', '')}",
    "search_finished": lambda e: f"search finished ({e.get('reason', '')})",
}


def event_line(event: dict[str, Any]) -> str | None:
    make = LINES.get(event.get("kind", ""))
    return make(event) if make else None


def progress_line(state: RunState) -> str:
    counts = " | ".join(f"{k} {n}" for k, n in state.stage_counts().items() if n)
    best, top = state.best_screened(), state.best_certified()
    epochs = state.search.epochs
    head = f"epoch {state.search.epoch + 1}/{epochs} | " if epochs else ""
    return (f"progress: {head}{counts or 'nothing yet'} | best screened "
            f"{f'{best.reward:.4g} ({best.cid})' if best else '-'} | best certified "
            f"{f'{top.cert_reward:.4g} ({top.cid})' if top else '-'} | LLM ${state.llm_spend_usd:.2f} | "
            f"GPU-h {state.gpu_hours:.2f}")


class PlainProgress:
    """An EventLog observer (`on_events`) plus a timer (`tick`, once per loop): logging lines, no redraws."""

    def __init__(self, every_s: float = PROGRESS_EVERY_S, clock: Callable[[], float] = time.time) -> None:
        self.every_s, self.clock = every_s, clock
        self.last = float("-inf")

    def on_events(self, events: list[dict[str, Any]]) -> None:
        for event in events:
            line = event_line(event)
            if line:
                log.info(line)

    def tick(self, state: RunState) -> None:
        if self.clock() - self.last >= self.every_s:
            self.last = self.clock()
            log.info(progress_line(state))
