"""
Evaluate ckpt.pt: validation loss on a fixed subset of the validation split.

LOCKED and HIDDEN: the search neither sees nor changes this file. It trusts
nothing the training run wrote except ckpt.pt, and builds the model with the
candidate's own classes (`from train import GPT, GPTConfig`). Settings are fixed
here, not read from the environment, so every candidate is scored identically.

Last stdout line, one JSON object:
  {"val_loss": ..., "val_tokens": ..., "train_loss": ...}   a valid result (train_loss: on the
                                                            train text just before val)
  {"invalid": "reason"}                                     the candidate broke the rules (exit 0)
Any other failure (no checkpoint, a crash, a non-finite loss) exits non-zero.

Guards:
- the checkpoint must declare data.py's context length and vocabulary, and the
  logits must have shape (B, CONTEXT_LEN, VOCAB_SIZE);
- the loss is cross-entropy computed here from the logits (never a loss the
  model returns), so it is always a proper normalised distribution;
- causality: for every position t of a window, the tokens after t are changed
  and the logits at positions <= t must not move;
- determinism: the same input twice must give the same logits;
- validation leakage: a val loss clearly below the loss on the same amount of
  train text just before the split (the same genre) means the model was trained
  on the validation text. This catches wholesale training on val, not a trickle.
"""
from __future__ import annotations

import json
import math
import os
import sys

import torch
from torch.nn import functional as F

import data

# -----------------------------------------------------------------------------
# fixed evaluation settings

N_VAL_WINDOWS = 512  # 512 x 128 = 65,536 scored validation characters
N_TRAIN_WINDOWS = 128  # reference loss for the leakage guard, from the train text just before val
N_CAUSAL_WINDOWS = 1  # each is tested at all CONTEXT_LEN - 1 cut points
BATCH = 32
SEED = 0
LEAK_ATOL = 1e-3  # logits are ~O(10); batch-composition noise in float32 is ~1e-6
# honest models scored val from 0.013 below to 0.03 above the train tail (both are tragedies;
# 45 s to 240 s runs); 45 s of training on the val split itself put val 0.078 below it
VAL_BELOW_TRAIN_MAX = 0.05
CKPT = "ckpt.pt"


class Invalid(Exception):
    """The candidate broke a rule of the environment (reported as data, exit 0)."""


def windows(split_data, n):
    # evenly spaced, non-overlapping windows of CONTEXT_LEN + 1 characters: inputs and shifted targets
    T = data.CONTEXT_LEN
    offsets = torch.linspace(0, len(split_data) - T - 1, n).long()
    w = torch.stack([split_data[o : o + T + 1] for o in offsets])
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def logits_of(model, x):
    out = model(x)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    expected = (x.size(0), data.CONTEXT_LEN, data.VOCAB_SIZE)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise Invalid(f"model(idx) must return logits of shape {expected}, got {shape}")
    return logits.float()


def mean_loss(model, x, y):
    total = 0.0
    for i in range(0, len(x), BATCH):
        logits = logits_of(model, x[i : i + BATCH])
        loss = F.cross_entropy(logits.reshape(-1, data.VOCAB_SIZE), y[i : i + BATCH].reshape(-1), reduction="sum")
        total += loss.item()
    return total / y.numel()


def check_deterministic(model, x):
    a, b = logits_of(model, x[:BATCH]), logits_of(model, x[:BATCH])
    if not torch.equal(a, b):
        raise Invalid("model output is not deterministic in eval mode (same input, different logits)")


def check_causal(model, window, generator):
    # copy t (t = 0 .. T-2) keeps positions <= t and replaces every later token by a different one;
    # a causal model gives the same logits at positions <= t as on the original window
    T, V = data.CONTEXT_LEN, data.VOCAB_SIZE
    base = logits_of(model, window.expand(BATCH, T).contiguous())[0]
    shift = torch.randint(1, V, (T,), generator=generator)
    for start in range(0, T - 1, BATCH):
        cuts = torch.arange(start, min(start + BATCH, T - 1))
        after = torch.arange(T)[None, :] > cuts[:, None]
        x = torch.where(after, (window + shift) % V, window)
        if len(cuts) < BATCH:  # pad so every forward has the same batch size as the reference
            x = torch.cat([x, window.expand(BATCH - len(cuts), T)])
        logits = logits_of(model, x)[: len(cuts)]
        moved = ((logits - base).abs() > LEAK_ATOL) & ~after[:, :, None]
        if moved.any():
            k = int(moved.any(dim=2).any(dim=1).nonzero()[0])
            p = int(moved[k].any(dim=1).nonzero()[0])
            raise Invalid(f"attention leaks future tokens: logits at position {p} changed "
                          f"when tokens after position {int(cuts[k])} were changed")


def load_model():
    if not os.path.exists(CKPT):
        raise FileNotFoundError(f"{CKPT} not found in {os.getcwd()}: the training run did not save it")
    ckpt = torch.load(CKPT, map_location="cpu", weights_only=True)
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict) or "model" not in ckpt:
        raise Invalid("ckpt.pt must be a dict with 'model' (state_dict) and 'config' (dict of GPTConfig fields)")
    for key, want in (("block_size", data.CONTEXT_LEN), ("vocab_size", data.VOCAB_SIZE)):
        if config.get(key) != want:
            raise Invalid(f"checkpoint declares {key}={config.get(key)!r}, data.py requires {want}")
    from train import GPT, GPTConfig  # the candidate's own model code

    model = GPT(GPTConfig(**config))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def evaluate():
    model = load_model()
    generator = torch.Generator().manual_seed(SEED)
    val_data, train_data = data.get_split("val"), data.get_split("train")
    x_val, y_val = windows(val_data, N_VAL_WINDOWS)
    x_train, y_train = windows(train_data[-len(val_data) :], N_TRAIN_WINDOWS)
    with torch.no_grad():
        check_deterministic(model, x_val)
        for window in x_val[:N_CAUSAL_WINDOWS]:
            check_causal(model, window, generator)
        val_loss = mean_loss(model, x_val, y_val)
        train_loss = mean_loss(model, x_train, y_train)
    if not math.isfinite(val_loss):
        raise FloatingPointError(f"validation loss is {val_loss}")
    if val_loss < train_loss - VAL_BELOW_TRAIN_MAX:
        raise Invalid(f"val loss {val_loss:.3f} is far below train loss {train_loss:.3f}: "
                      "trained on the validation split?")
    return {"val_loss": round(val_loss, 6), "val_tokens": int(y_val.numel()), "train_loss": round(train_loss, 6)}


def main():
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    sys.path.insert(0, os.getcwd())  # the candidate's train.py lives beside the checkpoint
    try:
        result = evaluate()
    except Invalid as e:
        result = {"invalid": str(e)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
