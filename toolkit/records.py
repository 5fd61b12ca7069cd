"""The vocabulary of a run: ideas, implement outcomes, job records, results, events.

Records cross process boundaries as JSON files; `from_json` is tolerant of extra keys (newer writers)
and strict about missing required ones (a malformed file is reported, not guessed).
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

SCHEMA_VERSION = 1
RESULT_STATUSES = ("ok", "failed", "timeout", "invalid", "lost")
IMPLEMENT_STATUSES = ("ready", "failed", "invalid")

R = TypeVar("R")


def to_json(record: Any) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, **dataclasses.asdict(record)}


def from_json(cls: type[R], data: dict[str, Any]) -> R:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Idea:
    idea_id: str
    text: str
    epoch: int = 0
    origin: str = "user"               # user | fresh | exploit | explore | best_of_n | rl
    created_at: float = field(default_factory=time.time)
    # the ideator's thinking behind the idea: exact for an RL rollout; for an API model the whole ideation
    # call's thinking (shared by the ideas of that call), about characters / 4; 0 = none recorded
    thinking_tokens: int = 0


@dataclass(frozen=True)
class ImplementOutcome:
    cid: str
    status: str                        # ready | failed | invalid
    reason: str = ""
    sample: int = -1                   # which parallel sample won (-1: none)
    revision: int = -1                 # which revision of that sample applied
    attempts: int = 0                  # LLM calls made
    files: tuple[str, ...] = ()
    diff_lines: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    preflight: str = ""                # "passed" | "skipped" | "failed: ..." of the winner


@dataclass(frozen=True)
class JobRecord:
    cid: str
    job_id: str                        # "<array>_<task>" on SLURM; pid-based on local
    attempt: int = 0                   # 0 for the first submission, +1 per retry of a lost task
    cluster: str = "local"
    submitted_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Result:
    cid: str
    status: str                        # ok | failed | timeout | invalid | lost
    reason: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    metric: float | None = None        # the env's primary metric
    reward: float | None = None        # only for status ok
    wall_s: float = 0.0                # run + eval
    run_s: float = 0.0
    eval_s: float = 0.0
    job_id: str = ""
    node: str = ""
    gpu: str = ""
    code_sha256: str = ""
    locked_sha256: dict[str, str] = field(default_factory=dict)
    log_tail: str = ""
    attempt: int = 0
    finished_at: float = field(default_factory=time.time)
    versions: dict[str, str] = field(default_factory=dict)
    sandbox: str = ""                  # the confinement the candidate's code ran under (e.g. landlock-abi7)
    alarm: str = ""                    # a run-level problem seen by the worker (pinned inputs changed)

    @property
    def succeeded(self) -> bool:
        return self.status == "ok"


# The event the daemon records for a result file: every field but the log tail (kept in the file).
RESULT_EVENT_FIELDS = tuple(f.name for f in dataclasses.fields(Result) if f.name != "log_tail")
_RESULT_DEFAULTS = {f.name: f for f in dataclasses.fields(Result)}
_RESULT_NUMBERS = ("wall_s", "run_s", "eval_s", "finished_at")
_RESULT_OPTIONAL_NUMBERS = ("metric", "reward")


def result_event(data: Any, cid: str) -> dict[str, Any]:
    """A worker's result.json as the daemon's `result` event, checked and with defaults filled in: the lean
    path of `from_json(Result, ...)` (a restart may fold thousands). Raises ValueError for a malformed one."""
    if not isinstance(data, dict) or data.get("status") not in RESULT_STATUSES:
        raise ValueError(f"status must be one of {RESULT_STATUSES}")
    data = {**data, "cid": cid}   # the directory names the candidate, whatever the file says
    event = {name: data[name] if name in data else _default(name) for name in RESULT_EVENT_FIELDS}
    bad = [n for n in _RESULT_NUMBERS if not _is_number(event[n])]
    bad += [n for n in _RESULT_OPTIONAL_NUMBERS if event[n] is not None and not _is_number(event[n])]
    if bad:
        raise ValueError(f"not numbers: {', '.join(bad)}")
    if event["status"] == "ok" and event["reward"] is None:
        raise ValueError("status ok without a numeric reward")
    return event


def _default(name: str) -> Any:
    f = _RESULT_DEFAULTS[name]
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise ValueError(f"{name} is required")   # cid and status: always present by here


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
