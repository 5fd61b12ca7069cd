"""One run as read from its directory, and every idea of it as one row (the frame every table and plot uses)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from toolkit import fsio
from toolkit import state as quantities  # the one definition of each run quantity
from toolkit.config import load_yaml
from toolkit.envs import EnvSpec, load_env
from toolkit.errors import ConfigError, EnvError
from toolkit.layout import RunLayout
from toolkit.state import BASELINE_ID, CandidateView, RunState, load_state, valid_result, view_of

NOT_JUDGED = "not judged"
JUDGE_FAILED = "judge failed"
CATEGORIES = ("hyper-parameter", "algorithm")
EXPORT_COLUMNS = ("run", "cid", "epoch", "origin", "idea", "thinking_tokens", "category", "status", "implement_status",
                  "preflight", "patch_applied", "preflight_passed", "job_ran", "valid", "paper_valid",
                  "beat_baseline", "metric", "reward",
                  "metrics", "diff_lines", "llm_cost_usd", "job_id", "node", "gpus", "wall_s", "gpu_hours",
                  "reason", "implement_reason", "ideator_model", "implementer_model", "duplicate_of",
                  "duplicate_score", "verdict", "cert_n", "cert_metric", "cert_low", "cert_high", "cert_reward",
                  "p_value", "verdict_reason")
REPLICA_COLUMNS = ("run", "cid", "parent", "purpose", "round", "seed", "status", "metric", "reward", "wall_s",
                   "job_id", "node", "reason")



# ---- one run, as read from its directory -------------------------------------------------------------------
@dataclass(frozen=True)
class RunData:
    name: str
    layout: RunLayout
    state: RunState
    config: dict[str, Any]
    strategy: str                      # evolve | best_of_n | execute (no search_started event)
    llm_calls: tuple[dict[str, Any], ...]
    events: tuple[dict[str, Any], ...]

    @property
    def ideator_model(self) -> str:
        return _model(self.config, "ideator")

    @property
    def implementer_model(self) -> str:
        return _model(self.config, "implementer")

    @property
    def running(self) -> bool:
        return not self.state.search.finished and self.layout.lock.exists()

    @property
    def description(self) -> str:
        env_yaml = self.layout.env_dir / "env.yaml"
        return str(load_yaml(env_yaml).get("description", "")).strip() if env_yaml.exists() else ""

    @property
    def preflight(self) -> bool:
        """Did the implementer preflight diffs (compile + quick check) before one won? (the default: on)"""
        return bool(self.config.get("implement", {}).get("preflight", True))

    @property
    def smoke(self) -> bool:
        return bool(self.config.get("smoke", False))

    def env_spec(self) -> EnvSpec | None:
        """The run's snapshot of its environment (None for a run directory without one)."""
        try:
            return load_env(str(self.layout.env_dir), smoke=self.smoke)
        except (EnvError, ConfigError):
            return None


def _model(config: dict[str, Any], role: str) -> str:
    settings = config.get("llm", {}).get(role, {})
    return f"{settings.get('provider', '?')}:{settings.get('model') or '-'}"


def load_run(run_dir: Path) -> RunData:
    layout = RunLayout(Path(run_dir))
    if not layout.events.exists():
        raise ConfigError(f"{layout.events}: not found; is {layout.root} a toolkit run directory (a search run, or an "
                          "RL directory with its config.yaml)?")
    state = load_state(layout)
    config = load_yaml(layout.config) if layout.config.exists() else {}
    strategy = state.search.strategy
    return RunData(name=layout.root.resolve().name, layout=layout, state=state, config=config, strategy=strategy,
                   llm_calls=tuple(fsio.read_jsonl(layout.llm_calls)), events=tuple(fsio.read_jsonl(layout.events)))


# ---- every idea as one row -----------------------------------------------------------------------------------
def state_frame(state: RunState) -> pd.DataFrame:
    """What the event log knows per candidate, plus the derived funnel flags (no disk reads: W&B uses it)."""
    frame = state.table()
    if frame.empty:
        return frame.assign(valid=[], beat_baseline=[])
    return _judge_outcomes(frame)


def _judge_outcomes(frame: pd.DataFrame) -> pd.DataFrame:
    """valid = ran and returned a non-zero reward (the paper's execution rate); beat_baseline needs a baseline."""
    frame["valid"] = [valid_result(_text(s), _number(r)) for s, r in zip(frame["status"], frame["reward"])]
    frame["beat_baseline"] = _beat(frame, baseline_reward(frame))
    return frame


# ---- the run's quantities over a frame: `toolkit.state`'s one definition, on the frame's rows as views ---------
FRAME_VIEW_COLUMNS = ("cid", "epoch", "implement_status", "status", "metric", "reward", "verdict", "cert_reward")


def frame_views(frame: pd.DataFrame) -> list[CandidateView]:
    """The frame's rows as candidate views, holding the frame's outcome (in `ideas_table`, the result files')."""
    rows = zip(*(frame[c].tolist() if c in frame else [None] * len(frame) for c in FRAME_VIEW_COLUMNS))
    return [view_of(dict(cid=cid, epoch=int(epoch or 0), implement_status=_text(impl), status=_text(status),
                         metric=_number(metric), reward=_number(reward), verdict=_text(verdict),
                         cert_reward=_number(cert)))
            for cid, epoch, impl, status, metric, reward, verdict, cert in rows]


def _text(value: Any) -> Any:
    return value if isinstance(value, str) else ""


def _number(value: Any) -> float | None:
    """A float, or None for a missing one (None, NaN or pandas' NA)."""
    return float(value) if isinstance(value, (int, float)) and value == value else None


def baseline_reward(frame: pd.DataFrame) -> float | None:
    return quantities.baseline_reward({v.cid: v for v in frame_views(frame[frame["cid"] == BASELINE_ID])})


def best_screened(frame: pd.DataFrame) -> CandidateView | None:
    return quantities.best_screened(frame_views(frame))


def best_reward(frame: pd.DataFrame) -> float | None:
    best = best_screened(frame)
    return best.reward if best is not None else None


def best_certified(frame: pd.DataFrame) -> CandidateView | None:
    return quantities.best_certified(frame_views(frame))


def execution_rate(frame: pd.DataFrame) -> float | None:
    return quantities.execution_rate(frame_views(frame))


def finished_ideas(frame: pd.DataFrame) -> int:
    return len(quantities.finished_ideas(frame_views(frame)))


def _beat(frame: pd.DataFrame, base: float | None) -> list[bool | None]:
    if base is None:
        return [None] * len(frame)
    return [bool(valid and reward > base) for valid, reward in zip(frame["valid"], frame["reward"])]


def ideas_table(run: RunData) -> pd.DataFrame:
    """One row per candidate (the baseline included, origin "baseline"), the result files being the truth."""
    frame = state_frame(run.state)
    if frame.empty:
        return pd.DataFrame(columns=list(EXPORT_COLUMNS))
    results = [_result(run.layout, cid) for cid in frame["cid"]]
    for column in ("status", "reason", "metric", "reward", "job_id", "node", "wall_s"):
        frame[column] = [r.get(column, old) if r else old for r, old in zip(results, frame[column])]
    frame["metrics"] = [json.dumps(r.get("metrics", {}), sort_keys=True) if r else "" for r in results]
    return _add_run_columns(run, _judge_outcomes(frame), results)


def _result(layout: RunLayout, cid: str) -> dict[str, Any]:
    path = layout.candidate(cid).result
    try:
        data = fsio.read_json(path) if path.exists() else {}
    except (json.JSONDecodeError, FileNotFoundError):
        return {}     # half-written on a lagging filesystem: the event log's view stands in
    return data if isinstance(data, dict) else {}


def _add_run_columns(run: RunData, frame: pd.DataFrame, results: list[dict[str, Any]]) -> pd.DataFrame:
    attempts = [_attempt_statuses(run.layout, cid) for cid in frame["cid"]]
    ready = frame["implement_status"] == "ready"
    frame["patch_applied"] = [r or bool(a & {"applied", "preflight_failed"}) for r, a in zip(ready, attempts)]
    frame["preflight_passed"] = ready
    frame["preflight"] = "on" if run.preflight else "off"
    frame["paper_valid"] = [paper_valid(v, a) for v, a in zip(frame["valid"], attempts)]
    frame["job_ran"] = [bool(r) and r.get("status") != "lost" for r in results]
    frame["llm_cost_usd"] = [_implement_cost(run, cid, old)
                             for cid, old in zip(frame["cid"], frame["implement_cost_usd"])]
    frame["gpu_hours"] = frame["gpus"].astype(float) * pd.to_numeric(frame["wall_s"]).fillna(0) / 3600
    frame["category"] = [NOT_JUDGED if cid != BASELINE_ID else "" for cid in frame["cid"]]
    frame["ideator_model"], frame["implementer_model"] = run.ideator_model, run.implementer_model
    frame["run"] = run.name
    metrics = pd.DataFrame([_numeric_metrics(r) for r in results], index=frame.index)
    return pd.concat([frame[list(EXPORT_COLUMNS)], metrics], axis=1)


def paper_valid(valid: bool, attempt_statuses: set[str]) -> bool:
    """Valid as the paper would have counted it, where only patchability was checked before launch: the paper
    launched the first diff that applied, with no revision for a diff that applies but cannot start. Preflights
    of one idea run one at a time and the first pass ends the race, so an idea with no `preflight_failed`
    attempt ran the first diff that applied (and counts as measured), while one with any had its first applied
    diff fail the compile or the quick check, and counts as a failed run even if a revision later ran well.
    (A quick check failure stands in for a crash at run time.) With the preflight off, this is `valid`."""
    return bool(valid) and "preflight_failed" not in attempt_statuses


def _attempt_statuses(layout: RunLayout, cid: str) -> set[str]:
    statuses = set()
    for path in sorted(layout.candidate(cid).implement_dir.glob("s*r*.json")):
        try:
            statuses.add(fsio.read_json(path).get("status", ""))
        except (json.JSONDecodeError, FileNotFoundError, AttributeError):
            continue
    return statuses


def _numeric_metrics(result: dict[str, Any]) -> dict[str, float]:
    metrics = result.get("metrics", {}) if result else {}
    return {f"metrics.{k}": float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def implement_cid(tag: str) -> str | None:
    """`implement:<cid>:s0r1` -> cid (the implementer tags calls from its staging dir `.building-<cid>`)."""
    parts = tag.split(":")
    if len(parts) < 2 or parts[0] != "implement":
        return None
    return parts[1].removeprefix(".building-")


def _implement_cost(run: RunData, cid: str, from_events: float) -> float:
    ledger = [c.get("cost_usd", 0.0) for c in run.llm_calls if implement_cid(str(c.get("tag", ""))) == cid]
    return float(sum(ledger)) if ledger else float(from_events or 0.0)


def ideas_only(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[frame["cid"] != BASELINE_ID]


def replica_frame(run: RunData) -> pd.DataFrame:
    """Every noise-floor and certification re-run, one row each."""
    rows = [{**v.__dict__, "run": run.name} for v in run.state.replicas.values()]
    return pd.DataFrame(rows, columns=list(REPLICA_COLUMNS)) if rows else pd.DataFrame(columns=list(REPLICA_COLUMNS))


def baseline_spread(run: RunData) -> tuple[float, float, int] | None:
    """(mean, sd, n) of the baseline's reward over every seed it ran with (screening + replicas)."""
    from toolkit.search.certify import baseline_runs

    rewards = [float(v.reward) for v in baseline_runs(run.state) if v.status == "ok" and v.reward is not None]
    if len(rewards) < 2:
        return None
    return float(pd.Series(rewards).mean()), float(pd.Series(rewards).std()), len(rewards)


