"""The reward of a rollout: the environment's reward from execution (0 without an idea or for a failed run),
plus the mitigations against collapse, each off at weight 0:

- length reward (paper): + min(cap, per_token * thinking tokens), for runs that succeeded, so a long thinking
  is never paid for by itself;
- Jaccard penalty (paper): - w * the idea's largest word-set Jaccard similarity to the previous step's ideas;
- novelty bonus (ours): + w * (1 - largest Jaccard similarity to EVERY idea executed in earlier steps), for
  runs that succeeded: the paper's penalty only looks one step back, so a policy can cycle between two ideas;
  against the whole archive a repeated idea stops paying, and only working ideas are paid for being new.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from toolkit.report.tables import word_set
from toolkit.rl.config import MitigationConfig
from toolkit.rl.metrics import max_jaccard
from toolkit.rl.sampling import Rollout
from toolkit.state import CandidateView


@dataclass(frozen=True)
class Reward:
    env: float                         # the environment's reward; 0 without an idea or when the run failed
    status: str                        # the executor's status ("" = no idea, nothing executed)
    length: float = 0.0
    jaccard_penalty: float = 0.0
    novelty: float = 0.0

    @property
    def total(self) -> float:
        return self.env + self.length - self.jaccard_penalty + self.novelty


def execution_outcome(view: CandidateView | None) -> tuple[float, str]:
    """(reward, status) of an executed idea: the env's reward only for an ok run, else 0 (the paper)."""
    if view is None:
        return 0.0, ""
    status = view.status or view.implement_status or "unknown"
    return (float(view.reward), status) if view.status == "ok" and view.reward is not None else (0.0, status)


def length_bonus(thinking_tokens: int, per_token: float, cap: float) -> float:
    return min(cap, per_token * thinking_tokens)


def shape_reward(rollout: Rollout, view: CandidateView | None, previous: Sequence[frozenset[str]],
                 archive: Sequence[frozenset[str]], cfg: MitigationConfig) -> Reward:
    env, status = execution_outcome(view)
    if rollout.idea is None:
        return Reward(env=0.0, status="")
    words, ok = word_set(rollout.idea), status == "ok"
    length = length_bonus(rollout.thinking_tokens, cfg.length_reward_per_token, cfg.length_reward_cap) if ok else 0.0
    novelty = cfg.novelty_bonus * (1.0 - max_jaccard(words, archive)) if ok and cfg.novelty_bonus else 0.0
    penalty = cfg.jaccard_penalty * max_jaccard(words, previous) if cfg.jaccard_penalty else 0.0
    return Reward(env=env, status=status, length=length, jaccard_penalty=penalty, novelty=novelty)
