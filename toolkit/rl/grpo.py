"""GRPO: group-normalised advantages and one policy-gradient update per step.

Advantage A_i = (r_i - mean(r)) / (std(r) + eps) over the G rollouts of the prompt (population std).
Loss = -(1/G) * sum_i A_i * mean_t log pi(y_it), over the tokens the policy sampled (a forced `</think>` is
masked out). GRPO's clipped ratio objective is not needed: with ONE update on freshly sampled rollouts the
ratio pi/pi_old is exactly 1, clipping is inactive and its gradient equals this one. No KL term (beta = 0,
as in TRL's default). Rollouts with A_i = 0 (e.g. a group with equal rewards) add nothing and are skipped.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from toolkit.rl.config import OptimConfig
from toolkit.rl.policy import token_logprobs, trainable_parameters
from toolkit.rl.sampling import Rollout

ADVANTAGE_EPS = 1e-6


def group_advantages(rewards: Sequence[float], eps: float = ADVANTAGE_EPS) -> list[float]:
    r = torch.tensor(rewards, dtype=torch.float64)
    return ((r - r.mean()) / (r.std(unbiased=False) + eps)).tolist()


@dataclass(frozen=True)
class UpdateStats:
    loss: float                        # the surrogate loss summed over micro-batches
    grad_norm: float                   # before clipping; 0 when no update happened
    trained_rollouts: int              # rollouts with a non-zero advantage and sampled tokens
    trained_tokens: int


def make_optimizer(model: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    beta1, beta2 = cfg.betas
    return torch.optim.AdamW(trainable_parameters(model), lr=cfg.lr, betas=(beta1, beta2),
                             weight_decay=cfg.weight_decay)


def batch_loss(model: Any, prompt: list[int], rollouts: Sequence[Rollout], advantages: Sequence[float],
               temperature: float, group: int) -> torch.Tensor:
    logps = token_logprobs(model, prompt, [list(r.ids) for r in rollouts], temperature)
    terms = []
    for logp, rollout, advantage in zip(logps, rollouts, advantages):
        mask = torch.tensor(rollout.mask, dtype=logp.dtype, device=logp.device)
        terms.append(-advantage * (logp * mask).sum() / mask.sum())
    return torch.stack(terms).sum() / group


def policy_gradient_step(model: Any, optimizer: torch.optim.Optimizer, prompt: list[int],
                         rollouts: Sequence[Rollout], advantages: Sequence[float], cfg: OptimConfig,
                         temperature: float) -> UpdateStats:
    active = [k for k, (r, a) in enumerate(zip(rollouts, advantages)) if a != 0.0 and sum(r.mask) != 0]
    if not active:
        return UpdateStats(0.0, 0.0, 0, 0)
    optimizer.zero_grad(set_to_none=True)
    model.train()
    loss = 0.0
    for start in range(0, len(active), cfg.micro_batch):
        chunk = active[start:start + cfg.micro_batch]
        part = batch_loss(model, prompt, [rollouts[k] for k in chunk], [advantages[k] for k in chunk],
                          temperature, len(rollouts))
        part.backward()
        loss += part.item()
    norm = torch.nn.utils.clip_grad_norm_(trainable_parameters(model), cfg.max_grad_norm or math.inf)
    optimizer.step()
    tokens = sum(sum(rollouts[k].mask) for k in active)
    return UpdateStats(loss, float(norm), len(active), tokens)
