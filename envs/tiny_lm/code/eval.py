"""
Evaluate ckpt.pt: validation loss on a fixed subset of the validation split.

LOCKED and HIDDEN: the search neither sees nor changes this file. It is the
trusted scorer: the toolkit runs it from the run's pinned snapshot (never from
the candidate's directory), with the candidate's directory in $TOOLKIT_CODE_DIR
and the validation split in $TOOLKIT_HIDDEN_DIR. It never imports candidate
code. The candidate's model runs in a confined child process
(toolkit.cluster.scoring.ModelChild) built from `from train import GPT, GPTConfig` and
ckpt.pt; the child gets token ids and returns logits, and this process computes
the loss itself. The child cannot read the validation data, write anywhere
that matters, or reach the network.

Last stdout line, one JSON object:
  {"val_loss": ..., "val_tokens": ..., "train_loss": ..., "audited": ...}
  {"invalid": "reason"}          the candidate broke the rules (exit 0)
Any other failure (no checkpoint, a crash, a non-finite loss) exits non-zero.

Guards:
- the checkpoint must declare data.py's context length and vocabulary, and the
  logits must have shape (B, CONTEXT_LEN, VOCAB_SIZE);
- the loss is cross-entropy computed here from the logits (never a loss the
  model returns), so it is always a proper normalised distribution;
- causality, audited with twins: every scored window w gets a twin that keeps
  w up to a random cut c and continues with other real text (from the train
  split). Originals and twins are dealt at random between two model children
  that run one after the other (fresh processes: no shared state, no way to
  signal each other), in shuffled batches, so a model cannot tell a twin from
  an original. The logits at positions <= c must agree between the two; a
  model that peeks at the future, or that behaves differently from call to
  call (state kept across calls), fails that;
- validation leakage: a val loss clearly below the loss on the same amount of
  train text just before the split means the model was trained on the
  validation text.
"""
from __future__ import annotations

import json
import math
import os
import stat

import torch
from torch.nn import functional as F

import data
from toolkit.cluster.scoring import ChildError, ModelChild

# -----------------------------------------------------------------------------
# fixed evaluation settings

N_VAL_WINDOWS = 512  # 512 x 128 = 65,536 scored validation characters
N_TRAIN_WINDOWS = 128  # reference loss for the leakage guard, from the train text just before val
BATCH = 32
SEED = 0
LEAK_ATOL = 1e-3  # logits are ~O(10); batch-composition noise in float32 is ~1e-6
# honest models scored val from 0.013 below to 0.03 above the train tail (both are tragedies;
# 45 s to 240 s runs); 45 s of training on the val split itself put val 0.078 below it
VAL_BELOW_TRAIN_MAX = 0.05
CKPT = "ckpt.pt"
CALL_TIMEOUT_S = 60  # one forward of 32 windows takes well under a second on one core

# what the model child runs (it is untrusted from its first import of train.py on)
LOADER = """
import torch
torch.set_num_threads(1)
from train import GPT, GPTConfig
ckpt = torch.load("ckpt.pt", map_location="cpu", weights_only=True)
model = GPT(GPTConfig(**ckpt["config"]))
model.load_state_dict(ckpt["model"])
model.eval()

def forward(x):
    return model(x)
"""


class Invalid(Exception):
    """The candidate broke a rule of the environment (reported as data, exit 0)."""


def windows(split_data, n):
    # evenly spaced, non-overlapping windows of CONTEXT_LEN + 1 characters: inputs and shifted targets
    T = data.CONTEXT_LEN
    offsets = torch.linspace(0, len(split_data) - T - 1, n).long()
    w = torch.stack([split_data[o : o + T + 1] for o in offsets])
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def code_dir():
    return os.environ.get("TOOLKIT_CODE_DIR") or os.getcwd()


def check_checkpoint():
    # read as data only (weights_only), never through a link the candidate planted
    path = os.path.join(code_dir(), CKPT)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{CKPT} not found in {code_dir()}: the training run did not save it") from None
    if not stat.S_ISREG(mode):
        raise Invalid(f"{CKPT} must be a regular file")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = ckpt.get("config") if isinstance(ckpt, dict) else None
    if not isinstance(config, dict) or "model" not in ckpt:
        raise Invalid("ckpt.pt must be a dict with 'model' (state_dict) and 'config' (dict of GPTConfig fields)")
    for key, want in (("block_size", data.CONTEXT_LEN), ("vocab_size", data.VOCAB_SIZE)):
        if config.get(key) != want:
            raise Invalid(f"checkpoint declares {key}={config.get(key)!r}, data.py requires {want}")


def twins(x, train_data, generator):
    # keep each window up to a random cut c, continue with real text from the train split
    T = data.CONTEXT_LEN
    cuts = torch.randint(0, T - 1, (len(x),), generator=generator)
    starts = torch.randint(0, len(train_data) - T, (len(x),), generator=generator)
    out = x.clone()
    for i, (c, s) in enumerate(zip(cuts.tolist(), starts.tolist())):
        out[i, c + 1 :] = train_data[s : s + T - 1 - c]
    return out, cuts


def run_child(items):
    T, V = data.CONTEXT_LEN, data.VOCAB_SIZE
    out = {}
    try:
        with ModelChild(LOADER, call_timeout_s=CALL_TIMEOUT_S) as model:
            for i in range(0, len(items), BATCH):
                keys = [k for k, _ in items[i : i + BATCH]]
                logits = model(torch.stack([w for _, w in items[i : i + BATCH]]))
                if tuple(logits.shape) != (len(keys), T, V):
                    raise Invalid(f"model(idx) must return logits of shape {(len(keys), T, V)}, "
                                  f"got {tuple(logits.shape)}")
                out.update(zip(keys, logits))
    except ChildError as exc:
        raise Invalid(f"the model could not be evaluated: {exc}") from None
    return out


def pair_items(x_val, x_twin, x_train, generator):
    # original i and its twin go to different children: deal the pairs, then the train windows
    flip = torch.randint(0, 2, (len(x_val),), generator=generator).tolist()
    items = []
    for i in range(len(x_val)):
        items.append((("val", i), x_val[i], flip[i]))
        items.append((("twin", i), x_twin[i], 1 - flip[i]))
    side = torch.randint(0, 2, (len(x_train),), generator=generator).tolist()
    items += [(("train", i), x_train[i], side[i]) for i in range(len(x_train))]
    return items


def run_pairs(items, generator):
    out = {}
    for child in (0, 1):
        mine = [(k, w) for k, w, c in items if c == child]
        order = torch.randperm(len(mine), generator=generator).tolist()
        out.update(run_child([mine[j] for j in order]))
    return out


def audit(logits, cuts):
    for i, c in enumerate(cuts.tolist()):
        diff = (logits[("val", i)][: c + 1] - logits[("twin", i)][: c + 1]).abs()
        if diff.max().item() > LEAK_ATOL:
            p = int(diff.amax(dim=1).gt(LEAK_ATOL).nonzero()[0])
            raise Invalid(f"the model's prediction at position {p} of window {i} changed when only the "
                          f"characters after position {c} changed (it sees the future, or keeps state "
                          f"across calls)")


def mean_loss(logits, y, kind):
    total = sum(F.cross_entropy(logits[(kind, i)], y[i], reduction="sum").item() for i in range(len(y)))
    return total / y.numel()


def evaluate():
    check_checkpoint()
    generator = torch.Generator().manual_seed(SEED)
    val_data, train_data = data.get_split("val"), data.get_split("train")
    x_val, y_val = windows(val_data, N_VAL_WINDOWS)
    x_train, y_train = windows(train_data[-len(val_data) :], N_TRAIN_WINDOWS)
    x_twin, cuts = twins(x_val, train_data[: -len(val_data)], generator)
    logits = run_pairs(pair_items(x_val, x_twin, x_train, generator), generator)
    audit(logits, cuts)
    val_loss, train_loss = mean_loss(logits, y_val, "val"), mean_loss(logits, y_train, "train")
    if not math.isfinite(val_loss):
        raise FloatingPointError(f"validation loss is {val_loss}")
    if val_loss < train_loss - VAL_BELOW_TRAIN_MAX:
        raise Invalid(f"val loss {val_loss:.3f} is far below train loss {train_loss:.3f}: "
                      "trained on the validation split?")
    return {"val_loss": round(val_loss, 6), "val_tokens": int(y_val.numel()), "train_loss": round(train_loss, 6),
            "audited": len(x_val)}


def main():
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    try:
        result = evaluate()
    except Invalid as e:
        result = {"invalid": str(e)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
