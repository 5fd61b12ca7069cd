"""
LOCKED and HIDDEN evaluation of the nanogpt environment: the val loss of ckpt.pt on a fixed validation set.

Usage (the toolkit runs eval.sh from the run's pinned snapshot, after train.py has written ckpt.pt in the
candidate's directory, which it names in $TOOLKIT_CODE_DIR):
    torchrun --standalone --nproc_per_node=8 eval.py     # the real eval, any number of GPUs
    TOOLKIT_SMOKE=1 python eval.py                       # smoke: CPU, fp32, far fewer tokens

This process is the trusted scorer: it never imports candidate code. Each rank runs the candidate's model
(`from train import GPT, GPTConfig` + ckpt.pt) in a confined child process (toolkit.cluster.scoring.ModelChild) that
gets token ids and returns logits; this process reads the validation shard itself (from $TOOLKIT_HIDDEN_DIR,
which training cannot read) and computes the cross-entropy itself, on the first 10,485,760 validation tokens
cut into sequences of 1024 in file order, with frozen batch settings.

Causality is audited on every scored sequence: each gets a twin that keeps it up to a random cut t and
continues with real training text. Originals and twins are dealt at random between two children that run
one after the other (fresh processes: no shared state, no channel between them), in shuffled batches; the
log-probabilities at positions <= t must agree. A model that sees its future, or that behaves differently
from call to call, fails.

The last stdout line is {"val_loss": ..., "val_tokens": ...}, or {"invalid": "..."} when a leak is found
(exit 0 in both cases); any other failure exits non-zero.
"""
import glob
import json
import math
import os
import stat
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from toolkit.cluster.scoring import ChildError, ModelChild

SMOKE = os.environ.get("TOOLKIT_SMOKE") == "1"
DATA_DIR = os.environ.get("TOOLKIT_DATA_DIR", "data")
HIDDEN_DIR = os.environ.get("TOOLKIT_HIDDEN_DIR", DATA_DIR + ".hidden")
CODE_DIR = os.environ.get("TOOLKIT_CODE_DIR", ".")
VAL_PATTERN = "fineweb_val_*.bin"
TRAIN_PATTERN = "fineweb_train_*.bin"
VOCAB_SIZE = 50257
CKPT_PATH = "ckpt.pt"
VAL_TOKENS = 10_485_760    # = 10240 sequences of 1024: the paper's fixed validation set
SEQ_LEN = 1024
BATCH_SIZE = 16            # sequences per forward pass, on every rank
LEAK_SEED = 0
PROBES = 64                # vocabulary ids whose log-probs the audit compares at every position (plus the target)
CALL_TIMEOUT_S = 600       # one forward pass of a batch; the whole eval is bounded by eval_budget_s
# Allowed change of a log-probability when only future tokens change: a causal model gives exactly 0 here
# (same shapes, same kernels), so these only absorb rounding; any real leak moves them far more.
LEAK_TOL_FP32 = 1e-4
LEAK_TOL_BF16 = 2e-2
if SMOKE:
    DATA_DIR = os.path.join(DATA_DIR, "smoke")
    HIDDEN_DIR = os.path.join(HIDDEN_DIR, "smoke")
    VOCAB_SIZE = 1024      # the synthetic shards' ids (synthetic_data.py --vocab 1024)
    VAL_TOKENS = 4096      # 64 sequences of 64
    SEQ_LEN = 64
    BATCH_SIZE = 8


def load_tokens(path):
    """One llm.c shard: 256 int32 header (magic 20240520, version 1, count), then uint16 token ids."""
    header = np.fromfile(path, dtype=np.int32, count=256)
    if len(header) < 256 or header[0] != 20240520 or header[1] != 1:
        raise ValueError(f"{path}: not an llm.c token shard (bad header)")
    tokens = np.fromfile(path, dtype=np.uint16, offset=256 * 4)
    if len(tokens) != header[2]:
        raise ValueError(f"{path}: header says {header[2]} tokens, file holds {len(tokens)}")
    return tokens


def read_tokens(data_dir, pattern, n_tokens):
    """The first n_tokens of the shards matching pattern, in file order."""
    files = sorted(glob.glob(os.path.join(data_dir, pattern)))
    if not files:
        raise FileNotFoundError(f"no {pattern} in {data_dir}: run prepare.py (or set TOOLKIT_SMOKE=1)")
    parts, have = [], 0
    for path in files:
        if have > n_tokens:
            break
        parts.append(load_tokens(path))
        have += len(parts[-1])
    if have < n_tokens:
        raise ValueError(f"{data_dir}: {have} tokens in {pattern}, eval needs {n_tokens}")
    return torch.from_numpy(np.concatenate(parts)[:n_tokens].astype(np.int64))


def val_sequences(data_dir, n_tokens, seq_len):
    """The first n_tokens + 1 validation tokens as (inputs, targets), each of shape (n_seq, seq_len)."""
    tokens = read_tokens(data_dir, VAL_PATTERN, n_tokens + 1)
    return tokens[:-1].view(-1, seq_len), tokens[1:].view(-1, seq_len)


# what each model child runs: it is untrusted from its first import of train.py on
LOADER = """
import torch
from train import GPT, GPTConfig
DEVICE, VOCAB = {device!r}, {vocab}
ckpt = torch.load("ckpt.pt", map_location="cpu", weights_only=True)
clean = {{}}
for key, value in ckpt["model"].items():   # weights saved from torch.compile'd or DDP-wrapped models too
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    clean[key.replace("._orig_mod.", ".")] = value
model = GPT(GPTConfig(**ckpt["model_config"]))
model.load_state_dict(clean, strict=True)
model = model.to(DEVICE).eval()
if DEVICE.startswith("cuda"):
    torch.cuda.set_device(DEVICE)
    torch.backends.cuda.matmul.allow_tf32 = False
    autocast = torch.autocast("cuda", dtype=torch.bfloat16)
else:
    autocast = torch.autocast("cpu", enabled=False)

def forward(x):
    with autocast:
        out = model(x.to(DEVICE))
    logits = out[0] if isinstance(out, (tuple, list)) else out
    return logits[..., :VOCAB] if logits.dim() == 3 else logits
"""


def check_checkpoint():
    path = os.path.join(CODE_DIR, CKPT_PATH)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{CKPT_PATH} not found in {CODE_DIR}: the training run did not save it") from None
    if not stat.S_ISREG(mode):
        raise Invalid(f"{CKPT_PATH} must be a regular file")


class Invalid(Exception):
    """The candidate broke a rule (reported as data, exit 0)."""


def twins(x, train_tokens, gen):
    """Each sequence kept up to a random cut t, then continued with real training text."""
    n_seq, seq_len = x.shape
    cuts = torch.randint(0, seq_len - 1, (n_seq,), generator=gen)
    starts = torch.randint(0, len(train_tokens) - seq_len, (n_seq,), generator=gen)
    out = x.clone()
    for i, (t, s) in enumerate(zip(cuts.tolist(), starts.tolist())):
        out[i, t + 1:] = train_tokens[s:s + seq_len - 1 - t]
    return out, cuts


def score_in_children(x, x_twin, y, cuts, device, gen):
    """Two children, one after the other; a sequence and its twin never share one. Returns the summed target
    log-prob of every original and, for every original and twin, the log-probs up to its cut at the targets
    and at PROBES random vocabulary ids (what the audit compares; full rows would not fit in memory)."""
    n = len(x)
    probes = torch.randperm(VOCAB_SIZE, generator=gen)[:PROBES].to(device)
    flip = torch.randint(0, 2, (n,), generator=gen).tolist()
    items = [(("orig", i), x[i], flip[i]) for i in range(n)] + [(("twin", i), x_twin[i], 1 - flip[i]) for i in range(n)]
    out = {}
    for child in (0, 1):
        mine = [(k, w) for k, w, c in items if c == child]
        mine = [mine[j] for j in torch.randperm(len(mine), generator=gen).tolist()]
        out.update(run_child(mine, device, lambda key, logp: summarise(key, logp, y, cuts, probes, device)))
    return out


def summarise(key, logp, y, cuts, probes, device):
    kind, i = key
    t = int(cuts[i])
    target = y[i].to(device)
    picked = logp.gather(-1, target[:, None])[:, 0]
    seen = torch.cat([picked[:t + 1, None], logp[:t + 1].index_select(-1, probes)], dim=1)
    return (-picked.sum().double() if kind == "orig" else None), seen


def run_child(items, device, keep):
    out = {}
    loader = LOADER.format(device=str(device), vocab=VOCAB_SIZE)
    try:
        with ModelChild(loader, call_timeout_s=CALL_TIMEOUT_S) as model:
            for i in range(0, len(items), BATCH_SIZE):
                keys = [k for k, _ in items[i:i + BATCH_SIZE]]
                batch = torch.stack([w for _, w in items[i:i + BATCH_SIZE]])
                logits = model(batch, as_float=False)   # bf16 on GPU: converted there, not on the CPU
                if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(batch.shape) or logits.size(-1) != VOCAB_SIZE:
                    raise Invalid(f"model(idx) must return logits of shape {tuple(batch.shape)} + (>= {VOCAB_SIZE},), "
                                  f"got {tuple(logits.shape)}")
                logp = F.log_softmax(logits.to(device).float(), dim=-1)
                out.update((k, keep(k, row)) for k, row in zip(keys, logp))
    except ChildError as exc:
        raise Invalid(f"the model could not be evaluated: {exc}") from None
    return out


def leak(scored, cuts, tol):
    """None if every original agrees with its twin up to the cut, else a reason."""
    for i, t in enumerate(cuts.tolist()):
        diff = (scored[("orig", i)][1] - scored[("twin", i)][1]).abs().amax(dim=-1)
        if diff.max().item() > tol:
            pos = int(diff.argmax())
            return (f"changing only the tokens after position {t} of sequence {i} moved the log-probs at position "
                    f"{pos} by {diff.max().item():.3g} (tolerance {tol:g}): the model sees its future, or keeps "
                    f"state across calls")
    return None


def main():
    ddp = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and not SMOKE
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    check_checkpoint()
    x_all, y_all = val_sequences(HIDDEN_DIR, VAL_TOKENS, SEQ_LEN)
    train_tokens = read_tokens(DATA_DIR, TRAIN_PATTERN, min(VAL_TOKENS, 4 * SEQ_LEN * 64))
    gen = torch.Generator().manual_seed(LEAK_SEED + rank)

    # rank r scores sequences r, r + world, r + 2 * world, ...
    mine = torch.arange(rank, len(x_all), world_size)
    x_twin, cuts = twins(x_all[mine], train_tokens, gen)
    try:
        scored = score_in_children(x_all[mine], x_twin, y_all[mine], cuts, device, gen)
        reason = leak(scored, cuts, LEAK_TOL_BF16 if use_cuda else LEAK_TOL_FP32)
    except Invalid as exc:
        reason, scored = str(exc), {}
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    bad = torch.tensor(1.0 if reason else 0.0, device=device)
    if not reason:
        for i in range(len(mine)):
            loss_sum += scored[("orig", i)][0]
            count += SEQ_LEN
    if ddp:
        for value in (loss_sum, count, bad):
            dist.all_reduce(value)
    if bad.item() > 0:
        if rank == 0:
            print(json.dumps({"invalid": reason or "another rank found the model invalid"}), flush=True)
    elif rank == 0:
        val_loss = (loss_sum / count).item()
        if not math.isfinite(val_loss):
            sys.exit(f"eval: val loss is {val_loss}: the checkpoint produces non-finite logits")
        print(json.dumps({"val_loss": round(val_loss, 6), "val_tokens": int(count.item()), "audited": len(x_all)}),
              flush=True)
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
