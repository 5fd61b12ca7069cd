"""G completions per prompt, in two phases so thinking has a budget (budget forcing):

1. sample the thinking until `</think>`, an end-of-sequence token, or `think_budget_tokens`;
2. a thinking that hit the budget gets `</think>` appended (when `force_close_thinking`; the forced token is
   masked out of the loss, the policy did not choose it), then the idea is sampled until end-of-sequence.

A completion whose thinking never closed has no idea: reward 0, not executed. Two backends share this logic:
plain `generate` of Hugging Face (CPU, small GPUs, tests) and vLLM (GPU clusters; needs LoRA, since each step's
adapter is loaded into the engine from the newest checkpoint; NOT exercised by the CPU test suite).
"""
from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from toolkit.rl.config import PolicyConfig, SamplingConfig
from toolkit.rl.policy import has_gpu, input_device, think_close_id


@dataclass(frozen=True)
class Completion:
    ids: tuple[int, ...]               # generated tokens, forced ones included
    mask: tuple[int, ...]              # 1 = sampled by the policy (trained on), 0 = forced `</think>`


@dataclass(frozen=True)
class Rollout:
    """One sampled completion, split into thinking and idea (saved in the step's rollouts.json)."""
    index: int
    idea_id: str                       # the executor's idea id (one per rollout, even without an idea)
    ids: tuple[int, ...]
    mask: tuple[int, ...]
    thinking: str
    idea: str | None                   # None: no extractable idea (reward 0, not executed)
    thinking_tokens: int
    idea_tokens: int
    forced_close: bool                 # the thinking hit its budget and `</think>` was appended

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rollout:
        return cls(**{**data, "ids": tuple(data["ids"]), "mask": tuple(data["mask"])})


def cut(ids: list[int], stops: tuple[int, ...]) -> list[int]:
    """Up to and including the first stop token (anything after it is padding)."""
    for k, token in enumerate(ids):
        if token in stops:
            return ids[:k + 1]
    return ids


def split_completion(ids: tuple[int, ...], close_id: int, stops: tuple[int, ...]) -> tuple[list[int], list[int] | None]:
    """(thinking tokens, idea tokens); the idea is None when the thinking never closed."""
    if close_id not in ids:
        return [t for t in ids if t not in stops], None
    k = ids.index(close_id)
    return list(ids[:k]), [t for t in cut(list(ids[k + 1:]), stops) if t not in stops]


def clean_idea(text: str) -> str | None:
    """The idea as the implementer will see it; None when nothing is left."""
    idea = text.replace("<think>", " ").replace("</think>", " ").strip()
    return idea or None


def to_rollout(index: int, completion: Completion, tokenizer: Any, close_id: int, stops: tuple[int, ...]) -> Rollout:
    thinking, idea = split_completion(completion.ids, close_id, stops)
    text = tokenizer.decode(thinking, skip_special_tokens=True).replace("<think>", "").strip()
    idea_text = clean_idea(tokenizer.decode(idea, skip_special_tokens=True)) if idea is not None else None
    return Rollout(index=index, idea_id=f"r{index:04d}", ids=completion.ids, mask=completion.mask, thinking=text,
                   idea=idea_text, thinking_tokens=len(thinking), idea_tokens=len(idea or []),
                   forced_close=0 in completion.mask)


def stop_ids(tokenizer: Any, model: Any) -> tuple[int, ...]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra = configured if isinstance(configured, list) else [configured]
    return tuple(sorted({int(t) for t in [tokenizer.eos_token_id, *extra] if t is not None}))


class Sampler(ABC):
    def __init__(self, cfg: SamplingConfig, close_id: int, stops: tuple[int, ...]) -> None:
        self.cfg, self.close_id, self.stops = cfg, close_id, stops
        self.think_stops = (close_id, *stops)

    @abstractmethod
    def generate(self, prompts: list[list[int]], n: int, max_tokens: int,
                 stops: tuple[int, ...]) -> list[list[list[int]]]:
        """For each prompt, n sampled continuations, each cut after its first stop token."""

    def sync(self, policy_dir: Path | None) -> None:  # noqa: B027 (optional: the live model needs no sync)
        """Make the next samples come from the weights saved in `policy_dir` (None: the initial policy)."""

    def sample(self, prompt: list[int], n: int) -> list[Completion]:
        thoughts = self.generate([prompt], n, self.cfg.think_budget_tokens, self.think_stops)[0]
        first = [self._close(t) for t in thoughts]
        open_ = [i for i, c in enumerate(first) if c.ids and c.ids[-1] == self.close_id]
        tails = self.generate([prompt + list(first[i].ids) for i in open_], 1, self.cfg.idea_max_tokens, self.stops)
        done = list(first)
        for i, tail in zip(open_, tails):
            done[i] = Completion(first[i].ids + tuple(tail[0]), first[i].mask + (1,) * len(tail[0]))
        return done

    def _close(self, ids: list[int]) -> Completion:
        mask = (1,) * len(ids)
        if (ids and ids[-1] in self.think_stops) or not self.cfg.force_close_thinking:
            return Completion(tuple(ids), mask)
        return Completion(tuple(ids) + (self.close_id,), mask + (0,))


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


class HFSampler(Sampler):
    """`model.generate` on the live training model (no weight copy to sync)."""

    def __init__(self, cfg: SamplingConfig, model: Any, tokenizer: Any, stops: tuple[int, ...]) -> None:
        super().__init__(cfg, think_close_id(tokenizer), stops)
        self.model, self.pad_id = model, int(tokenizer.pad_token_id)

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int,
                 stops: tuple[int, ...]) -> list[list[list[int]]]:
        if not prompts:
            return []
        ids, mask = left_pad(prompts, self.pad_id)
        device = input_device(self.model)
        self.model.eval()
        out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                  temperature=self.cfg.temperature, top_k=0, top_p=1.0, max_new_tokens=max_tokens,
                                  num_return_sequences=n, eos_token_id=list(stops), pad_token_id=self.pad_id)
        new = out[:, ids.shape[1]:].tolist()
        return [[cut(new[p * n + j], stops) for j in range(n)] for p in range(len(prompts))]


class VLLMSampler(Sampler):
    """A vLLM engine on the base weights; each step's LoRA adapter is loaded from the newest checkpoint."""

    def __init__(self, cfg: SamplingConfig, policy: PolicyConfig, base: str, tokenizer: Any,
                 stops: tuple[int, ...], seed: int) -> None:
        from vllm import LLM

        super().__init__(cfg, think_close_id(tokenizer), stops)
        self.llm = LLM(model=base, enable_lora=True, max_lora_rank=policy.lora_rank, dtype=policy.dtype, seed=seed,
                       gpu_memory_utilization=cfg.vllm_gpu_memory_utilization, generation_config="vllm",
                       tensor_parallel_size=cfg.vllm_tensor_parallel)
        self.lora: Any = None
        self.adapters = 0

    def sync(self, policy_dir: Path | None) -> None:
        from vllm.lora.request import LoRARequest

        self.adapters += 1
        self.lora = LoRARequest(f"policy-{self.adapters}", self.adapters, str(policy_dir)) if policy_dir else None

    def generate(self, prompts: list[list[int]], n: int, max_tokens: int,
                 stops: tuple[int, ...]) -> list[list[list[int]]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not prompts:
            return []
        params = SamplingParams(n=n, temperature=self.cfg.temperature, top_p=1.0, top_k=-1, max_tokens=max_tokens,
                                stop_token_ids=list(stops), skip_special_tokens=False)
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params,
                                 lora_request=self.lora, use_tqdm=False)
        return [[cut(_with_stop(list(o.token_ids), o.stop_reason), stops) for o in out.outputs] for out in outs]


def _with_stop(ids: list[int], stop_reason: Any) -> list[int]:
    """vLLM reports a stop token in `stop_reason`; keep it in the ids so phase 1 knows how thinking ended."""
    if isinstance(stop_reason, int) and (not ids or ids[-1] != stop_reason):
        return [*ids, stop_reason]
    return ids


def resolve_backend(cfg: SamplingConfig, policy: PolicyConfig) -> str:
    if cfg.backend != "auto":
        return cfg.backend
    vllm_ok = importlib.util.find_spec("vllm") is not None and has_gpu() and policy.lora_rank > 0
    return "vllm" if vllm_ok else "hf"


def make_sampler(cfg: SamplingConfig, policy: PolicyConfig, model: Any, tokenizer: Any, base: str,
                 seed: int) -> Sampler:
    stops = stop_ids(tokenizer, model)
    makers = {"hf": lambda: HFSampler(cfg, model, tokenizer, stops),
              "vllm": lambda: VLLMSampler(cfg, policy, base, tokenizer, stops, seed)}
    return makers[resolve_backend(cfg, policy)]()
