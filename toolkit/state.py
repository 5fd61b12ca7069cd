"""Search state: a view folded from the append-only event log (resume = rebuild from the log).

The daemon is the single writer of events.jsonl; everything else (status, dashboard, report) reads.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from toolkit import fsio
from toolkit.layout import RunLayout, is_replica

# Stages a candidate passes through, in order; the dashboard counts them.
STAGES = ("proposed", "duplicate", "implementing", "applied", "refused", "impl_failed", "queued", "running",
          "ok", "failed", "timeout", "invalid", "lost")


@dataclass(frozen=True)
class CandidateView:
    cid: str
    idea: str = ""
    epoch: int = 0
    origin: str = ""
    implement_status: str = ""         # "" (not yet) | implementing | ready | failed | invalid
    implement_reason: str = ""
    implement_cost_usd: float = 0.0
    diff_lines: int = 0
    job_id: str = ""
    attempt: int = 0
    job_phase: str = ""                # queued | running | finished | unknown
    job_raw: str = ""
    status: str = ""                   # result status: ok | failed | timeout | invalid | lost
    reason: str = ""
    metric: float | None = None
    reward: float | None = None
    wall_s: float = 0.0
    gpus: int = 0
    node: str = ""
    submitted_at: float = 0.0
    finished_at: float = 0.0
    intent: str = ""                   # job name of a submission that was started (crash-safe re-attach)
    thinking_tokens: int = 0           # the ideator's thinking behind the idea (records.Idea)
    seed: int = -1                     # TOOLKIT_SEED of the run; -1 = the codebase's own (screening runs)
    duplicate_of: str = ""             # a near-duplicate of this earlier idea (toolkit/dedup.py)
    duplicate_score: float = 0.0
    pruned_bytes: int | None = None    # large outputs removed by the disk policy (toolkit/disk.py); None: kept
    # replicas (noise floor, certification re-runs) only
    parent: str = ""                   # the candidate re-run
    purpose: str = ""                  # floor | certify
    round: int = -1                    # the certification round
    # certification of a candidate, from its fresh-seed re-runs (toolkit/certify.py)
    verdict: str = ""                  # "" (not tested) | certified | not significant | unreproducible
    verdict_reason: str = ""
    cert_round: int = -1
    cert_n: int = 0                    # re-runs that ended ok
    cert_metric: float | None = None   # mean metric of the re-runs
    cert_low: float | None = None      # 95% confidence interval of that mean
    cert_high: float | None = None
    cert_reward: float | None = None   # mean reward of the re-runs
    p_value: float | None = None       # one-sided Welch t-test against the round's baseline re-runs

    @property
    def stage(self) -> str:
        if self.status:
            return self.status
        if self.implement_status == "duplicate":
            return "duplicate"
        if self.job_id:
            return "running" if self.job_phase == "running" else "queued"
        return {"ready": "applied", "invalid": "refused", "failed": "impl_failed",
                "implementing": "implementing"}.get(self.implement_status, "proposed")

    @property
    def terminal(self) -> bool:
        return bool(self.status) or self.implement_status in ("failed", "invalid", "duplicate")

    @property
    def ranking_reward(self) -> float | None:
        """The re-runs' mean reward where the candidate was re-run, else its screening reward: one lucky
        seed must not keep steering the search."""
        return self.cert_reward if self.cert_reward is not None else self.reward


@dataclass
class RunState:
    candidates: dict[str, CandidateView] = field(default_factory=dict)
    replicas: dict[str, CandidateView] = field(default_factory=dict)   # noise-floor and certification runs
    meta: dict[str, Any] = field(default_factory=dict)
    llm_spend_usd: float = 0.0
    gpu_hours: float = 0.0
    events: int = 0

    def apply(self, event: dict[str, Any]) -> None:
        self.events += 1
        handler = _HANDLERS.get(event.get("kind", ""))
        if handler is not None:
            handler(self, event)

    def update(self, cid: str, **changes: Any) -> None:
        views = self.replicas if is_replica(cid) else self.candidates
        view = views.get(cid)
        views[cid] = _evolve(view, changes) if view else CandidateView(cid=cid, **changes)

    def view(self, run_id: str) -> CandidateView | None:
        """A candidate or a replica, by its id."""
        return (self.replicas if is_replica(run_id) else self.candidates).get(run_id)

    def runs(self) -> list[CandidateView]:
        """Everything that is (or will be) a job: candidates and replicas."""
        return [*self.candidates.values(), *self.replicas.values()]

    def table(self) -> pd.DataFrame:
        import pandas as pd  # imported here: the daemon's start-up (and resume) should not pay for it

        rows = [{**c.__dict__, "stage": c.stage} for c in self.candidates.values()]
        return pd.DataFrame(rows, columns=[*CandidateView.__dataclass_fields__, "stage"])

    def stage_counts(self) -> dict[str, int]:
        counts = {s: 0 for s in STAGES}
        for c in self.candidates.values():
            counts[c.stage] += 1
        return counts

    def best_screened(self) -> CandidateView | None:
        """The idea with the best screening reward (the baseline aside)."""
        ok = [v for v in self.candidates.values() if v.status == "ok" and v.reward is not None and v.cid != "baseline"]
        return max(ok, key=lambda v: float(v.reward), default=None)  # type: ignore[arg-type]

    def best_certified(self) -> CandidateView | None:
        """The certified idea with the best mean reward over its fresh-seed re-runs."""
        done = [v for v in self.candidates.values() if v.verdict == "certified" and v.cert_reward is not None]
        return max(done, key=lambda v: float(v.cert_reward), default=None)  # type: ignore[arg-type]

    def execution_rate(self) -> float | None:
        """Share of ideas that ran and returned a valid, non-zero result (the paper's definition)."""
        done = [c for c in self.candidates.values() if c.terminal and c.implement_status != "duplicate"]
        if not done:
            return None
        return sum(1 for c in done if c.status == "ok" and c.reward) / len(done)


_VIEW_FIELDS = frozenset(CandidateView.__dataclass_fields__)


def _evolve(view: CandidateView, changes: dict[str, Any]) -> CandidateView:
    """`dataclasses.replace` without its per-field work (6x faster; a restart folds every event)."""
    if not changes.keys() <= _VIEW_FIELDS:
        raise TypeError(f"CandidateView has no fields {sorted(changes.keys() - _VIEW_FIELDS)}")
    new = object.__new__(CandidateView)
    new.__dict__.update(view.__dict__)
    new.__dict__.update(changes)
    return new


def _on_idea(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["idea_id"], idea=e["text"], epoch=e.get("epoch", 0), origin=e.get("origin", ""),
                 thinking_tokens=e.get("thinking_tokens", 0))
    if e.get("duplicate_of"):   # a near-duplicate of an earlier idea: skipped by policy, or only flagged
        skip = {"implement_status": "duplicate"} if e.get("dup_policy", "skip") == "skip" else {}
        state.update(e["idea_id"], duplicate_of=e["duplicate_of"], duplicate_score=e.get("duplicate_score", 0.0),
                     **skip)


def _on_implement_started(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["cid"], implement_status="implementing")


def _on_implemented(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["cid"], implement_status=e["status"], implement_reason=e.get("reason", ""),
                 implement_cost_usd=e.get("cost_usd", 0.0), diff_lines=e.get("diff_lines", 0))


def _on_submitted(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["cid"], job_id=e["job_id"], attempt=e.get("attempt", 0), job_phase="queued",
                 submitted_at=e.get("t", 0.0), gpus=e.get("gpus", 0), status="", reason="")


def _on_submitting(state: RunState, e: dict[str, Any]) -> None:
    state.meta.setdefault("intents", {})[e["name"]] = {"cids": e["cids"], "attempt": e.get("attempt", 0)}
    for cid in e["cids"]:
        state.update(cid, intent=e["name"])


def _on_submit_failed(state: RunState, e: dict[str, Any]) -> None:
    for cid in e.get("cids", []):
        state.update(cid, intent="")


def _on_job_state(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["cid"], job_phase=e["phase"], job_raw=e.get("raw", ""))


def _on_result(state: RunState, e: dict[str, Any]) -> None:
    view = state.view(e["cid"]) or CandidateView(cid=e["cid"])
    state.gpu_hours += view.gpus * e.get("wall_s", 0.0) / 3600
    state.update(e["cid"], status=e["status"], reason=e.get("reason", ""), metric=e.get("metric"),
                 reward=e.get("reward"), wall_s=e.get("wall_s", 0.0), node=e.get("node", ""),
                 job_phase="finished", finished_at=e.get("t", 0.0))


def _on_pruned(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["cid"], pruned_bytes=e.get("bytes", 0))


def _on_replicas_planned(state: RunState, e: dict[str, Any]) -> None:
    """A noise floor or a certification round: its replicas exist (as ready runs) from this event on."""
    for run in e["runs"]:
        parent = state.candidates.get(run["parent"])
        state.update(run["rid"], idea=parent.idea if parent else "", epoch=e.get("epoch", 0), origin="replica",
                     implement_status="ready", seed=run["seed"], parent=run["parent"], purpose=e["purpose"],
                     round=e.get("round", -1))
    if e["purpose"] == "certify":
        state.meta.setdefault("rounds", {})[str(e["round"])] = {"cids": e["cids"], "epoch": e.get("epoch", 0),
                                                                "rids": [r["rid"] for r in e["runs"]]}
        for cid in e["cids"]:   # nominated: a restart before the verdict must not nominate it again
            state.update(cid, cert_round=e["round"])
    state.meta["seeds_issued"] = state.meta.get("seeds_issued", 0) + len(e["runs"])


def _on_verdict(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["cid"], verdict=e["verdict"], verdict_reason=e.get("reason", ""), cert_round=e.get("round", -1),
                 cert_n=e.get("n", 0), cert_metric=e.get("mean"), cert_low=e.get("low"), cert_high=e.get("high"),
                 cert_reward=e.get("reward"), p_value=e.get("p_value"))


def _on_round_judged(state: RunState, e: dict[str, Any]) -> None:
    state.meta.setdefault("judged", []).append(e["round"])


def _on_noise_floor(state: RunState, e: dict[str, Any]) -> None:
    state.meta["floor"] = {k: e.get(k) for k in ("n", "mean", "sd", "mean_reward", "seed_ignored", "runs")}


def _on_certify_checked(state: RunState, e: dict[str, Any]) -> None:
    state.meta.setdefault("certified_after", []).append(e["epoch"])


def _on_certify_stopped(state: RunState, e: dict[str, Any]) -> None:
    state.meta["certify_stopped"] = e.get("reason", "")


def _on_llm(state: RunState, e: dict[str, Any]) -> None:
    state.llm_spend_usd = e.get("spent_usd", state.llm_spend_usd)


def _on_meta(state: RunState, e: dict[str, Any]) -> None:
    state.meta.update(e.get("data", {}))


def _on_epoch_started(state: RunState, e: dict[str, Any]) -> None:
    state.meta.update(epoch=e["epoch"], epoch_started_at=e["t"], plan=e.get("plan", []))


def _on_epoch_ended(state: RunState, e: dict[str, Any]) -> None:
    state.meta.setdefault("epochs_ended", []).append(e["epoch"])


def _on_ideation_failed(state: RunState, e: dict[str, Any]) -> None:
    key = f"ideation_failures_{e['epoch']}"
    state.meta[key] = state.meta.get(key, 0) + 1


def _on_stopping(state: RunState, e: dict[str, Any]) -> None:
    state.meta["stopping"] = e.get("reason", "")


def _on_search_started(state: RunState, e: dict[str, Any]) -> None:
    state.meta.update(search=e.get("search", {}), replay=e.get("replay", False))


def _on_search_finished(state: RunState, e: dict[str, Any]) -> None:
    state.meta["finished"] = True


def _on_pinned(state: RunState, e: dict[str, Any]) -> None:
    state.meta["pins"] = e["pins"]


def _on_alarm(state: RunState, e: dict[str, Any]) -> None:
    state.meta["alarm"] = e["reason"]


_HANDLERS = {"epoch_started": _on_epoch_started, "epoch_ended": _on_epoch_ended,
             "ideation_failed": _on_ideation_failed, "stopping": _on_stopping, "search_started": _on_search_started,
             "search_finished": _on_search_finished,
             "idea": _on_idea, "implement_started": _on_implement_started, "implemented": _on_implemented,
             "submitted": _on_submitted, "submitting": _on_submitting, "submit_failed": _on_submit_failed,
             "job_state": _on_job_state, "result": _on_result, "llm_spend": _on_llm,
             "meta": _on_meta, "pinned": _on_pinned, "alarm": _on_alarm,
             "replicas_planned": _on_replicas_planned, "verdict": _on_verdict, "round_judged": _on_round_judged,
             "certify_stopped": _on_certify_stopped, "noise_floor": _on_noise_floor,
             "certify_checked": _on_certify_checked, "pruned": _on_pruned}


class EventLog:
    """Append-only events plus the folded view; the only writer of state/events.jsonl."""

    def __init__(self, layout: RunLayout) -> None:
        self.layout = layout
        self.state = load_state(layout)
        self.dirty = False
        self.observers: list[Any] = []     # called with each batch of new events (plain progress lines)

    def emit(self, kind: str, **data: Any) -> None:
        """Written at once (a killed daemon loses nothing); made durable by `sync`, once per tick."""
        self.emit_many(kind, [data])

    def emit_many(self, kind: str, items: list[dict[str, Any]]) -> None:
        """Events of one kind appended together (one open, one write)."""
        if not items:
            return
        now = time.time()
        events = [{"kind": kind, "t": now, **data} for data in items]
        fsio.append_jsonl_many(self.layout.events, events, fsync=False)
        for event in events:
            self.state.apply(event)
        self.dirty = True
        for observe in self.observers:
            observe(events)

    def sync(self) -> None:
        if self.dirty:
            fsio.sync_file(self.layout.events)
            self.dirty = False


def load_state(layout: RunLayout) -> RunState:
    state = RunState()
    for event in fsio.read_jsonl(layout.events):
        state.apply(event)
    return state
