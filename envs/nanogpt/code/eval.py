"""
LOCKED and HIDDEN evaluation of the nanogpt environment: the val loss of ckpt.pt on a fixed validation set.

Usage (eval.sh does this in the candidate's directory, after train.py has written ckpt.pt):
    torchrun --standalone --nproc_per_node=8 eval.py     # the real eval, any number of GPUs
    TOOLKIT_SMOKE=1 python eval.py                       # smoke: CPU, fp32, far fewer tokens

Trusts nothing the run wrote except the weights: it rebuilds the model from the candidate's own classes
(`from train import GPT, GPTConfig`), reads the validation shards itself from $TOOLKIT_DATA_DIR, and computes
the cross-entropy itself from the logits, on the first 10,485,760 validation tokens cut into sequences of
1024 in file order, with frozen batch settings. Before scoring, a leak check: for one batch it replaces every
token after a random position t of each sequence and requires that the log-probabilities at positions <= t
do not move, which catches any attention (or batch statistic) that lets a position see its future.

The last stdout line is {"val_loss": ..., "val_tokens": ...}, or {"invalid": "..."} when a leak is found
(exit 0 in both cases); any other failure exits non-zero.
"""
import glob
import json
import math
import os
import sys

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

# Bound before train.py is imported, so a candidate cannot swap the functions that score it.
cross_entropy = F.cross_entropy
log_softmax = F.log_softmax

SMOKE = os.environ.get("TOOLKIT_SMOKE") == "1"
DATA_DIR = os.environ.get("TOOLKIT_DATA_DIR", "data")
VAL_PATTERN = "fineweb_val_*.bin"
VOCAB_SIZE = 50257
CKPT_PATH = "ckpt.pt"
VAL_TOKENS = 10_485_760    # = 10240 sequences of 1024: the paper's fixed validation set
SEQ_LEN = 1024
BATCH_SIZE = 16            # sequences per forward pass, on every rank
LEAK_VARIANTS = 4          # forward passes with perturbed futures, each at fresh random cut points
LEAK_SEED = 0
# Allowed change of a log-probability when only future tokens change: a causal model gives exactly 0 here
# (same shapes, same kernels), so these only absorb rounding; any real leak moves them far more.
LEAK_TOL_FP32 = 1e-4
LEAK_TOL_BF16 = 2e-2
if SMOKE:
    DATA_DIR = os.path.join(DATA_DIR, "smoke")
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


def val_sequences(data_dir, n_tokens, seq_len):
    """The first n_tokens + 1 validation tokens as (inputs, targets), each of shape (n_seq, seq_len)."""
    files = sorted(glob.glob(os.path.join(data_dir, VAL_PATTERN)))
    if not files:
        raise FileNotFoundError(f"no {VAL_PATTERN} in {data_dir}: run prepare.py (or set TOOLKIT_SMOKE=1)")
    parts, have = [], 0
    for path in files:
        if have > n_tokens:
            break
        parts.append(load_tokens(path))
        have += len(parts[-1])
    if have < n_tokens + 1:
        raise ValueError(f"{data_dir}: {have} validation tokens, eval needs {n_tokens + 1}")
    tokens = torch.from_numpy(np.concatenate(parts)[:n_tokens + 1].astype(np.int64))
    return tokens[:-1].view(-1, seq_len), tokens[1:].view(-1, seq_len)


def strip_prefixes(state_dict):
    """Accept weights saved from a torch.compile'd or DDP-wrapped model as well as from the bare one."""
    clean = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        clean[key.replace("._orig_mod.", ".")] = value
    return clean


def load_model(device):
    from train import GPT, GPTConfig  # the candidate's architecture; imported only now (see above)
    ckpt = torch.load(CKPT_PATH, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_config"]))
    model.load_state_dict(strip_prefixes(ckpt["model"]), strict=True)
    return model.to(device).eval()


def logits_of(model, x, autocast):
    with torch.no_grad(), autocast:
        out = model(x)
    logits = out[0] if isinstance(out, (tuple, list)) else out
    if logits.dim() != 3 or logits.shape[:2] != x.shape or logits.size(-1) < VOCAB_SIZE:
        raise ValueError(f"model(idx) must return logits of shape {tuple(x.shape)} + (>= {VOCAB_SIZE},), "
                         f"got {tuple(logits.shape)}")
    return logits.float()


def leak_check(model, x, autocast, tol):
    """None if causal, else a reason. Each variant replaces the tokens after a random position t of every
    sequence; the log-probs at positions <= t must match those of the unperturbed batch."""
    gen = torch.Generator().manual_seed(LEAK_SEED)
    n_seq, seq_len = x.shape
    base = log_softmax(logits_of(model, x.to(model_device(model)), autocast), dim=-1)
    worst, worst_at = 0.0, None
    for _ in range(LEAK_VARIANTS):
        cuts = torch.randint(0, seq_len - 1, (n_seq,), generator=gen)  # t in [0, seq_len - 2]
        future = torch.arange(seq_len)[None, :] > cuts[:, None]
        noise = torch.randint(0, VOCAB_SIZE, x.shape, generator=gen)
        variant = torch.where(future, noise, x)
        logp = log_softmax(logits_of(model, variant.to(base.device), autocast), dim=-1)
        diff = (logp - base).abs().amax(dim=-1).masked_fill(future.to(base.device), 0.0)  # past only
        if diff.max().item() > worst:
            worst = diff.max().item()
            seq = int(diff.amax(dim=1).argmax())
            worst_at = (seq, int(diff[seq].argmax()), int(cuts[seq]))
    if worst > tol:
        seq, pos, cut = worst_at
        return (f"attention leaks future tokens: changing tokens after position {cut} of sequence {seq} "
                f"moved the log-probs at position {pos} by {worst:.3g} (tolerance {tol:g})")
    return None


def model_device(model):
    return next(model.parameters()).device


def main():
    ddp = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and not SMOKE
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = False  # what autocast leaves in fp32 stays fp32
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    # bf16 on GPU (as in training), plain fp32 on the CPU
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else torch.autocast("cpu", enabled=False)

    x_all, y_all = val_sequences(DATA_DIR, VAL_TOKENS, SEQ_LEN)
    model = load_model(device)

    # every rank checks the same batch, so all of them agree on the verdict
    leak = leak_check(model, x_all[:BATCH_SIZE], autocast, LEAK_TOL_BF16 if use_cuda else LEAK_TOL_FP32)
    if leak is not None:
        if rank == 0:
            print(json.dumps({"invalid": leak}), flush=True)
        if ddp:
            dist.destroy_process_group()
        return

    # rank r scores sequences r, r + world, r + 2 * world, ... in batches of BATCH_SIZE
    mine = torch.arange(rank, len(x_all), world_size)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for i in range(0, len(mine), BATCH_SIZE):
        idx = mine[i:i + BATCH_SIZE]
        x, y = x_all[idx].to(device), y_all[idx].to(device)
        logits = logits_of(model, x, autocast)
        loss_sum += cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1), reduction="sum").double()
        count += y.numel()
    if ddp:
        dist.all_reduce(loss_sum)
        dist.all_reduce(count)
    val_loss = (loss_sum / count).item()
    if rank == 0:
        if not math.isfinite(val_loss):
            sys.exit(f"eval: val loss is {val_loss}: the checkpoint produces non-finite logits")
        print(json.dumps({"val_loss": round(val_loss, 6), "val_tokens": int(count.item())}), flush=True)
    if ddp:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
