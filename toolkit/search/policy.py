"""Search policy as pure functions: epoch plans (exploit/explore split), exemplar selection, stop rules."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from toolkit.config import SearchConfig
from toolkit.state import BASELINE_ID, CandidateView, NoiseFloor, baseline_reward


@dataclass(frozen=True)
class Call:
    mode: str                          # fresh | exploit | explore
    count: int


def exploit_share(cfg: SearchConfig, epoch: int) -> float:
    return min(cfg.exploit_base + cfg.exploit_step * math.floor(epoch / cfg.exploit_every), cfg.exploit_max)


def split(cfg: SearchConfig, epoch: int, have_exemplars: bool) -> tuple[int, int]:
    """(exploit, explore) counts for an epoch. Epoch 0, best-of-N, or nothing beating the baseline yet:
    all explore/fresh. The exploit count is rounded down to a multiple of ideas_per_call."""
    n = cfg.ideas_per_epoch
    if epoch == 0 or cfg.strategy == "best_of_n" or not have_exemplars:
        return 0, n
    exploit = int(exploit_share(cfg, epoch) * n) // cfg.ideas_per_call * cfg.ideas_per_call
    return exploit, n - exploit


def epoch_calls(cfg: SearchConfig, epoch: int, have_exemplars: bool) -> list[Call]:
    exploit, explore = split(cfg, epoch, have_exemplars)
    other = "fresh" if epoch == 0 or cfg.strategy == "best_of_n" else "explore"
    return _chunks("exploit", exploit, cfg.ideas_per_call) + _chunks(other, explore, cfg.ideas_per_call)


def _chunks(mode: str, total: int, size: int) -> list[Call]:
    return [Call(mode, min(size, total - start)) for start in range(0, total, size)]


def remaining_calls(plan: list[Call], done: dict[str, int]) -> list[Call]:
    """Calls still to make, given how many ideas of each mode this epoch already has (for resume)."""
    left = dict(done)
    out = []
    for call in plan:
        used = min(left.get(call.mode, 0), call.count)
        left[call.mode] = left.get(call.mode, 0) - used
        if call.count - used > 0:
            out.append(Call(call.mode, call.count - used))
    return out


def baseline_bar(views: dict[str, CandidateView], floor: NoiseFloor | None = None) -> float | None:
    """The reward an idea must beat to be shown as an exemplar: the baseline's mean reward over its noise-floor
    seeds where measured (one seed's luck must not set the bar), else its screening reward
    (`toolkit.state.baseline_reward`, what the tables and the report show)."""
    if floor is not None and floor.mean_reward is not None:
        return floor.mean_reward
    return baseline_reward(views)


def exemplars(views: dict[str, CandidateView], limit: int, before_epoch: int,
              floor: NoiseFloor | None = None) -> list[CandidateView]:
    """Ideas of earlier epochs that beat the measured baseline, best first (all ok ideas when no baseline
    was run), ranked by their re-runs' mean where they were re-run (`ranking_reward`): a lucky seed stops
    steering the search once its re-runs are in. Only earlier epochs: the prompt must not depend on when
    this epoch's results arrive."""
    bar = baseline_bar(views, floor)
    good = [v for v in views.values() if v.cid != BASELINE_ID and v.status == "ok" and v.ranking_reward is not None
            and v.epoch < before_epoch and (bar is None or v.ranking_reward > bar)]
    return sorted(good, key=lambda v: v.ranking_reward, reverse=True)[:limit]  # type: ignore[arg-type, return-value]


def explore_sample(views: dict[str, CandidateView], limit: int, seed: int, before_epoch: int) -> list[CandidateView]:
    """A random sample of all earlier epochs' ideas with an outcome (results and implementation failures)."""
    done = sorted((v for v in views.values() if v.cid != BASELINE_ID and v.terminal and v.epoch < before_epoch
                   and v.implement_status != "duplicate"),
                  key=lambda v: v.cid)
    rng = random.Random(seed)
    return done if len(done) <= limit else sorted(rng.sample(done, limit), key=lambda v: v.cid)


def outcome_line(view: CandidateView) -> str:
    if view.status == "ok" and view.cert_reward is not None:
        return (f"mean reward {view.cert_reward:.4f} over {view.cert_n} re-runs with fresh seeds, {view.verdict}; "
                f"first run {view.reward:.4f}")
    if view.status == "ok" and view.verdict:
        return f"reward {view.reward:.4f} in one run; re-runs {view.verdict}"
    if view.status == "ok":
        return f"reward {view.reward:.4f}"
    if view.status:
        return f"FAILED ({view.status})"
    return f"FAILED (not implementable: {view.implement_status})"
