"""Search state: a view folded from the append-only event log (resume = rebuild from the log).

The daemon is the single writer of events.jsonl; everything else (status, dashboard, report) reads.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:
    import pandas as pd

from toolkit import fsio
from toolkit.layout import RunLayout, is_replica

BASELINE_ID = "baseline"               # the unchanged codebase, run as a candidate of its own

ImplementStatus = Literal["", "implementing", "ready", "failed", "invalid", "duplicate"]   # "" = not yet
ResultStatus = Literal["", "ok", "failed", "timeout", "invalid", "lost"]                   # "" = no result yet
JobPhase = Literal["", "queued", "running", "finished", "unknown"]                         # "" = not submitted
VerdictLabel = Literal["", "certified", "not significant", "unreproducible"]               # "" = not tested
Purpose = Literal["", "floor", "certify"]                                                 # "" = not a replica
# Stages a candidate passes through, in order; the dashboard counts them.
Stage = Literal["proposed", "duplicate", "implementing", "applied", "refused", "impl_failed", "queued", "running",
                "ok", "failed", "timeout", "invalid", "lost"]
STAGES: tuple[Stage, ...] = get_args(Stage)
_IMPLEMENT_STAGES: dict[str, Stage] = {"ready": "applied", "invalid": "refused", "failed": "impl_failed",
                                       "implementing": "implementing"}


@dataclass(frozen=True)
class CandidateView:
    cid: str
    idea: str = ""
    epoch: int = 0
    origin: str = ""
    implement_status: ImplementStatus = ""
    implement_reason: str = ""
    implement_cost_usd: float = 0.0
    diff_lines: int = 0
    job_id: str = ""
    attempt: int = 0
    job_phase: JobPhase = ""
    job_raw: str = ""
    status: ResultStatus = ""
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
    purpose: Purpose = ""
    round: int = -1                    # the certification round
    # certification of a candidate, from its fresh-seed re-runs (toolkit/certify.py)
    verdict: VerdictLabel = ""
    verdict_reason: str = ""
    cert_round: int = -1
    cert_n: int = 0                    # re-runs that ended ok
    cert_metric: float | None = None   # mean metric of the re-runs
    cert_low: float | None = None      # 95% confidence interval of that mean
    cert_high: float | None = None
    cert_reward: float | None = None   # mean reward of the re-runs
    p_value: float | None = None       # one-sided Welch t-test against the round's baseline re-runs

    @property
    def stage(self) -> Stage:
        if self.status:
            return self.status
        if self.implement_status == "duplicate":
            return "duplicate"
        if self.job_id:
            return "running" if self.job_phase == "running" else "queued"
        return _IMPLEMENT_STAGES.get(self.implement_status, "proposed")

    @property
    def terminal(self) -> bool:
        return bool(self.status) or self.implement_status in ("failed", "invalid", "duplicate")

    @property
    def finished(self) -> bool:
        """Has an outcome the execution rate counts: a result, or an implementation that failed (a duplicate
        skipped by policy has neither: it never tried to run)."""
        return bool(self.status) or self.implement_status in ("failed", "invalid")

    @property
    def valid(self) -> bool:
        return valid_result(self.status, self.reward)

    @property
    def ranking_reward(self) -> float | None:
        """The re-runs' mean reward where the candidate was re-run, else its screening reward: one lucky
        seed must not keep steering the search."""
        return self.cert_reward if self.cert_reward is not None else self.reward


def valid_result(status: str, reward: float | None) -> bool:
    """The paper's valid result: the run ended ok with a non-zero reward (a failed run earns 0; NaN is no result)."""
    return status == "ok" and reward is not None and reward != 0 and not math.isnan(reward)


# ---- the run's quantities, one definition each (the dashboard, the report, W&B and RL use these) ----------------
def finished_ideas(views: Iterable[CandidateView]) -> list[CandidateView]:
    """The ideas the execution rate counts: finished, the baseline aside (it is no idea)."""
    return [v for v in views if v.finished and v.cid != BASELINE_ID]


def execution_rate(views: Iterable[CandidateView]) -> float | None:
    """Valid results per finished idea (the paper's execution rate); None before any idea finished."""
    done = finished_ideas(views)
    return sum(1 for v in done if v.valid) / len(done) if done else None


def best_screened(views: Iterable[CandidateView]) -> CandidateView | None:
    """The idea (the baseline aside) with the best valid screening reward; the first one on a tie."""
    return max((v for v in views if v.valid and v.cid != BASELINE_ID), key=_reward, default=None)


def best_certified(views: Iterable[CandidateView]) -> CandidateView | None:
    """The certified idea with the best mean reward over its fresh-seed re-runs."""
    done = (v for v in views if v.verdict == "certified" and v.cert_reward is not None)
    return max(done, key=lambda v: float(v.cert_reward or 0.0), default=None)


def baseline_reward(views: Mapping[str, CandidateView]) -> float | None:
    """The baseline's screening reward, when its run is valid (None: not run, not yet, or it failed)."""
    base = views.get(BASELINE_ID)
    return base.reward if base is not None and base.valid else None


def _reward(view: CandidateView) -> float:
    return float(view.reward or 0.0)


# ---- what the log says beyond the candidates ---------------------------------------------------------------------
@dataclass(frozen=True)
class NoiseFloor:
    """The baseline's spread across seeds (a `noise_floor` event): what noise alone does to the metric."""
    n: int                             # runs that ended ok
    mean: float                        # their mean metric
    sd: float
    mean_reward: float | None
    seed_ignored: bool                 # every seed gave the same metric: the env ignores TOOLKIT_SEED
    runs: int                          # runs of the floor, failed ones included


@dataclass(frozen=True)
class Round:
    """A certification round (a `replicas_planned` event with purpose certify)."""
    cids: tuple[str, ...]              # the candidates re-run
    epoch: int                         # the epoch after which it was planned
    rids: tuple[str, ...]              # its replicas, the baseline's included


@dataclass(frozen=True)
class Intent:
    """A submission started (a `submitting` event): a restart finds the array by its name (`RunState.intents`)."""
    cids: tuple[str, ...]
    attempt: int


@dataclass
class SearchProgress:
    """The search's progress, from its events; `started` is False for an execute-only run."""
    started: bool = False
    config: dict[str, Any] = field(default_factory=dict)   # the search config as started (`search_started`)
    replay: bool = False               # LLM answers come from a recording
    epoch: int = 0
    epoch_started_at: float | None = None
    plan: list[tuple[str, int]] = field(default_factory=list)   # this epoch's ideation calls: (mode, ideas)
    epochs_ended: list[int] = field(default_factory=list)
    ideation_failures: dict[int, int] = field(default_factory=dict)   # epoch -> failed ideation calls
    stopping: str = ""                 # why no new work starts (a budget spent); "" = none
    finished: bool = False

    @property
    def epochs(self) -> int | None:
        """The planned number of epochs (None before the search started)."""
        epochs = self.config.get("epochs")
        return int(epochs) if epochs is not None else None

    @property
    def strategy(self) -> str:
        """evolve | best_of_n; execute for a run without a search."""
        return str(self.config.get("strategy", "execute"))


@dataclass
class Certification:
    """Noise floor, rounds and verdicts' bookkeeping, from the certification events."""
    floor: NoiseFloor | None = None
    rounds: dict[int, Round] = field(default_factory=dict)
    judged: list[int] = field(default_factory=list)         # rounds with their verdicts
    certified_after: list[int] = field(default_factory=list)   # epochs whose nomination was done
    stopped: str = ""                  # why no more rounds are planned; "" = not stopped
    seeds_issued: int = 0              # fresh seeds handed out so far (never reused)

    def busy(self) -> bool:
        """A round still waiting for its verdicts."""
        return any(n not in self.judged for n in self.rounds)


@dataclass
class RunState:
    candidates: dict[str, CandidateView] = field(default_factory=dict)
    replicas: dict[str, CandidateView] = field(default_factory=dict)   # noise-floor and certification runs
    search: SearchProgress = field(default_factory=SearchProgress)
    certification: Certification = field(default_factory=Certification)
    intents: dict[str, Intent] = field(default_factory=dict)          # by the job name of the submission
    pins: dict[str, dict[str, str]] | None = None    # hashes of the snapshot and data, pinned at the first start
    alarm: str = ""                    # why no new work starts (pinned inputs changed); "" = none
    llm_spend_usd: float = 0.0
    gpu_hours: float = 0.0
    events: int = 0

    def apply(self, event: dict[str, Any]) -> None:
        self.events += 1
        handler = _HANDLERS.get(event.get("kind", ""))
        if handler is not None:
            handler(self, event)

    def update(self, cid: str, **changes: Any) -> None:
        views = self.views_of(cid)
        view = views.get(cid)
        views[cid] = _evolve(view, changes) if view else CandidateView(cid=cid, **changes)

    def views_of(self, run_id: str) -> dict[str, CandidateView]:
        """The dict a run's view lives in: the replicas for a re-run, else the candidates."""
        return self.replicas if is_replica(run_id) else self.candidates

    def view(self, run_id: str) -> CandidateView:
        """A candidate or a replica, by its id (KeyError for an unknown one)."""
        return self.views_of(run_id)[run_id]

    def runs(self) -> list[CandidateView]:
        """Everything that is (or will be) a job: candidates and replicas."""
        return [*self.candidates.values(), *self.replicas.values()]

    def pruned(self) -> list[int]:
        """Bytes of large outputs removed, one entry per pruned run (the disk policy's `pruned` events)."""
        return [v.pruned_bytes for v in self.runs() if v.pruned_bytes is not None]

    def table(self) -> pd.DataFrame:
        import pandas as pd  # imported here: the daemon's start-up (and resume) should not pay for it

        rows = [{**c.__dict__, "stage": c.stage} for c in self.candidates.values()]
        return pd.DataFrame(rows, columns=[*CandidateView.__dataclass_fields__, "stage"])

    def stage_counts(self) -> dict[Stage, int]:
        counts = dict.fromkeys(STAGES, 0)
        for c in self.candidates.values():
            counts[c.stage] += 1
        return counts

    def best_screened(self) -> CandidateView | None:
        return best_screened(self.candidates.values())

    def best_certified(self) -> CandidateView | None:
        return best_certified(self.candidates.values())

    def execution_rate(self) -> float | None:
        return execution_rate(self.candidates.values())

    def baseline_reward(self) -> float | None:
        return baseline_reward(self.candidates)


_VIEW_FIELDS = frozenset(CandidateView.__dataclass_fields__)


def _evolve(view: CandidateView, changes: dict[str, Any]) -> CandidateView:
    """`dataclasses.replace` without its per-field work (6x faster; a restart folds every event)."""
    if not changes.keys() <= _VIEW_FIELDS:
        raise TypeError(f"CandidateView has no fields {sorted(changes.keys() - _VIEW_FIELDS)}")
    new = object.__new__(CandidateView)
    new.__dict__.update(view.__dict__)
    new.__dict__.update(changes)
    return new


_BLANK = CandidateView(cid="")


def view_of(fields: dict[str, Any]) -> CandidateView:
    """A view from some of its fields (the rest at their defaults), as fast as the fold builds them: a report
    reads thousands of rows as views."""
    return _evolve(_BLANK, fields)


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
    state.intents[e["name"]] = Intent(cids=tuple(e["cids"]), attempt=e.get("attempt", 0))
    for cid in e["cids"]:
        state.update(cid, intent=e["name"])


def _on_submit_failed(state: RunState, e: dict[str, Any]) -> None:
    for cid in e.get("cids", []):
        state.update(cid, intent="")


def _on_job_state(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["cid"], job_phase=e["phase"], job_raw=e.get("raw", ""))


def _on_result(state: RunState, e: dict[str, Any]) -> None:
    view = state.views_of(e["cid"]).get(e["cid"])
    state.gpu_hours += (view.gpus if view else 0) * e.get("wall_s", 0.0) / 3600
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
    cert = state.certification
    if e["purpose"] == "certify":
        cert.rounds[int(e["round"])] = Round(cids=tuple(e["cids"]), epoch=e.get("epoch", 0),
                                             rids=tuple(r["rid"] for r in e["runs"]))
        for cid in e["cids"]:   # nominated: a restart before the verdict must not nominate it again
            state.update(cid, cert_round=e["round"])
    cert.seeds_issued += len(e["runs"])


def _on_verdict(state: RunState, e: dict[str, Any]) -> None:
    state.update(e["cid"], verdict=e["verdict"], verdict_reason=e.get("reason", ""), cert_round=e.get("round", -1),
                 cert_n=e.get("n", 0), cert_metric=e.get("mean"), cert_low=e.get("low"), cert_high=e.get("high"),
                 cert_reward=e.get("reward"), p_value=e.get("p_value"))


def _on_round_judged(state: RunState, e: dict[str, Any]) -> None:
    state.certification.judged.append(int(e["round"]))


def _on_noise_floor(state: RunState, e: dict[str, Any]) -> None:
    state.certification.floor = NoiseFloor(n=e["n"], mean=e["mean"], sd=e["sd"], mean_reward=e.get("mean_reward"),
                                           seed_ignored=bool(e.get("seed_ignored")), runs=e.get("runs", e["n"]))


def _on_certify_checked(state: RunState, e: dict[str, Any]) -> None:
    state.certification.certified_after.append(e["epoch"])


def _on_certify_stopped(state: RunState, e: dict[str, Any]) -> None:
    state.certification.stopped = e.get("reason", "")


def _on_llm(state: RunState, e: dict[str, Any]) -> None:
    state.llm_spend_usd = e.get("spent_usd", state.llm_spend_usd)


def _on_epoch_started(state: RunState, e: dict[str, Any]) -> None:
    search = state.search
    search.epoch, search.epoch_started_at = e["epoch"], e["t"]
    search.plan = [(mode, int(count)) for mode, count in e.get("plan", [])]


def _on_epoch_ended(state: RunState, e: dict[str, Any]) -> None:
    state.search.epochs_ended.append(e["epoch"])


def _on_ideation_failed(state: RunState, e: dict[str, Any]) -> None:
    failures = state.search.ideation_failures
    failures[e["epoch"]] = failures.get(e["epoch"], 0) + 1


def _on_stopping(state: RunState, e: dict[str, Any]) -> None:
    state.search.stopping = e.get("reason", "")


def _on_search_started(state: RunState, e: dict[str, Any]) -> None:
    search = state.search
    search.started, search.config, search.replay = True, e.get("search", {}), e.get("replay", False)


def _on_search_finished(state: RunState, e: dict[str, Any]) -> None:
    state.search.finished = True


def _on_pinned(state: RunState, e: dict[str, Any]) -> None:
    state.pins = e["pins"]


def _on_alarm(state: RunState, e: dict[str, Any]) -> None:
    state.alarm = e["reason"]


_HANDLERS = {"epoch_started": _on_epoch_started, "epoch_ended": _on_epoch_ended,
             "ideation_failed": _on_ideation_failed, "stopping": _on_stopping, "search_started": _on_search_started,
             "search_finished": _on_search_finished,
             "idea": _on_idea, "implement_started": _on_implement_started, "implemented": _on_implemented,
             "submitted": _on_submitted, "submitting": _on_submitting, "submit_failed": _on_submit_failed,
             "job_state": _on_job_state, "result": _on_result, "llm_spend": _on_llm,
             "pinned": _on_pinned, "alarm": _on_alarm,
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
