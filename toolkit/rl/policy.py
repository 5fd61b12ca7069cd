"""The policy: a Hugging Face causal LM, loaded by name/path or built tiny and offline; full or LoRA (peft).

The tiny model (tests, CPU) is a Qwen3-architecture model with random weights and a byte-level BPE tokenizer
trained on the ideation prompt itself, so nothing is downloaded. It is built once into the RL directory and
from then on loaded like any other model, so both kinds share one code path.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import ConfigError
from toolkit.rl.config import PolicyConfig, TinyModelConfig
from toolkit.rl.layout import RLLayout

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
EOS, PAD = "<|endoftext|>", "<|pad|>"


def torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def quiet_hf() -> None:
    """No progress bars: per-step saves and loads would flood the trainer's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def has_gpu() -> bool:
    return torch.cuda.is_available()


def train_tokenizer(corpus: str, vocab_size: int) -> Any:
    """A byte-level BPE (any text encodes) with `<think>`/`</think>` as single tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS, PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([corpus], trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token=EOS, pad_token=PAD)
    tokenizer.add_tokens([THINK_OPEN, THINK_CLOSE])
    return tokenizer


def build_tiny(cfg: TinyModelConfig, vocab_size: int, seed: int) -> Any:
    from transformers import AutoModelForCausalLM, Qwen3Config

    config = Qwen3Config(vocab_size=vocab_size, hidden_size=cfg.hidden_size, intermediate_size=2 * cfg.hidden_size,
                         num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                         num_key_value_heads=cfg.kv_heads, head_dim=cfg.hidden_size // cfg.heads,
                         max_position_embeddings=cfg.max_positions, tie_word_embeddings=True)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def ensure_base_model(layout: RLLayout, cfg: PolicyConfig, corpus: str, seed: int) -> str:
    """The name/path to load the base policy from; the tiny model is built into the RL directory once."""
    if cfg.model:
        return cfg.model
    if not layout.base_model.exists():
        quiet_hf()
        staging = layout.root / f".base_model-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        tokenizer = train_tokenizer(corpus, cfg.tiny.vocab_size)
        build_tiny(cfg.tiny, len(tokenizer), seed).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.rename(layout.base_model)
    return str(layout.base_model)


def load_tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name)
    if len(tokenizer.encode(THINK_CLOSE, add_special_tokens=False)) != 1:
        raise ConfigError(f"the tokenizer of {name} does not encode {THINK_CLOSE!r} as one token; the ideator "
                          f"must be a thinking model (e.g. Qwen3) so thinking and idea can be told apart")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def think_close_id(tokenizer: Any) -> int:
    return int(tokenizer.convert_tokens_to_ids(THINK_CLOSE))


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """The user message in the model's chat format, ending where the assistant starts (thinking on)."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True, enable_thinking=True)
    else:
        text = f"{text}\n{THINK_OPEN}\n"
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _from_pretrained(path: str, cfg: PolicyConfig) -> Any:
    from transformers import AutoModelForCausalLM

    quiet_hf()

    placement = {"device_map": "auto"} if has_gpu() else {}
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(cfg.dtype), **placement)


def load_policy(base: str, cfg: PolicyConfig, saved: Path | None) -> Any:
    """The trainable policy: `saved` (a checkpoint's policy/ folder) on top of `base`, or fresh."""
    if not cfg.lora_rank:
        model = _from_pretrained(str(saved) if saved else base, cfg)
    else:
        model = _with_lora(_from_pretrained(base, cfg), cfg, saved)
    if cfg.gradient_checkpointing:   # non-reentrant: LoRA's frozen base leaves the checkpointed inputs grad-free
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _with_lora(model: Any, cfg: PolicyConfig, saved: Path | None) -> Any:
    from peft import LoraConfig, PeftModel, get_peft_model

    if saved is not None:
        return PeftModel.from_pretrained(model, str(saved), is_trainable=True)
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets),
                      lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_policy(model: Any, dest: Path) -> None:
    """Full weights, or only the adapter for a LoRA policy (peft's save_pretrained)."""
    model.save_pretrained(str(dest))


def input_device(model: Any) -> torch.device:
    return next(model.parameters()).device


def token_logprobs(model: Any, prompt: list[int], completions: list[list[int]],
                   temperature: float) -> list[torch.Tensor]:
    """log pi(token | prefix) of every completion token, at the sampling temperature (differentiable).

    All completions share the prompt, so rows are right-padded and only the completion positions are projected
    to the vocabulary (`logits_to_keep`): a 150k vocabulary times a long prompt would not fit otherwise.
    """
    lengths = [len(c) for c in completions]
    width = max(lengths)
    rows = [prompt + c + [0] * (width - len(c)) for c in completions]
    ids = torch.tensor(rows, device=input_device(model))
    mask = torch.tensor([[1] * (len(prompt) + n) + [0] * (width - n) for n in lengths], device=ids.device)
    logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=width + 1).logits[:, :-1].float()
    logp = torch.log_softmax(logits / temperature, dim=-1)
    picked = logp.gather(-1, ids[:, len(prompt):].unsqueeze(-1)).squeeze(-1)
    return [picked[i, :n] for i, n in enumerate(lengths)]
