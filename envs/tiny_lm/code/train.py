"""
Train a small character-level GPT on Shakespeare, on one CPU thread, for a fixed
wall-clock budget, then save ckpt.pt for the (locked) evaluation.

This is the file the search edits. Rules the evaluation relies on:
- `from train import GPT, GPTConfig` must work without training (the training
  code only runs under `if __name__ == "__main__":`);
- GPT(GPTConfig(**ckpt["config"])) must rebuild the model, load_state_dict(
  ckpt["model"]) must succeed, and model(idx) on a (B, CONTEXT_LEN) LongTensor
  must return the logits of shape (B, CONTEXT_LEN, VOCAB_SIZE) (or a tuple whose
  first element is those logits), each position seeing only itself and the past;
- train only on data.get_split("train"), within TRAIN_BUDGET_S seconds.

Run: TRAIN_BUDGET_S=45 python train.py
Preflight (a few seconds, no checkpoint): TOOLKIT_QUICK_CHECK=1 python train.py
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

import data

# -----------------------------------------------------------------------------
# hyper-parameters

# model: ~0.35M parameters, small enough for 250-350 steps in 45 s on one core
n_layer = 3
n_head = 4
n_embd = 96
dropout = 0.0  # far less than one epoch is seen in the budget: no overfitting to fight
# optimisation
batch_size = 16  # sequences per step; each is data.CONTEXT_LEN characters
learning_rate = 3e-3  # small models tolerate (and need) a high lr to get far in few steps
min_lr_ratio = 0.1  # decay to 10% of the peak by the end of the budget
warmup_frac = 0.05  # share of the budget spent warming the lr up linearly
weight_decay = 0.1
beta1, beta2 = 0.9, 0.95
grad_clip = 1.0
# run
budget_s = float(os.environ.get("TRAIN_BUDGET_S", "45"))  # wall-clock training budget
quick_check = os.environ.get("TOOLKIT_QUICK_CHECK", "") == "1"  # preflight: 2 tiny steps, no checkpoint
log_every = 25
seed = 1337
# the toolkit sets TOOLKIT_SEED for its noise-floor and certification re-runs: it then replaces the seed above,
# which seeds the init and the batch order; keep honouring it (unset, every run is the same seed-1337 run)
if "TOOLKIT_SEED" in os.environ:
    seed_text = os.environ["TOOLKIT_SEED"]
    if not (seed_text.isdecimal() and int(seed_text) < 2**32):
        raise ValueError(f"TOOLKIT_SEED must be a decimal integer in [0, 2**32), got {seed_text!r}")
    seed = int(seed_text)

# -----------------------------------------------------------------------------
# model (nanoGPT-style: pre-norm transformer, learned positions, tied embeddings)


@dataclass
class GPTConfig:
    block_size: int = data.CONTEXT_LEN
    vocab_size: int = data.VOCAB_SIZE
    n_layer: int = 3
    n_head: int = 4
    n_embd: int = 96
    dropout: float = 0.0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        self.dropout = config.dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim) so every head attends independently
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        # is_causal: position t may only attend to positions <= t (the evaluation checks this)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        # pre-norm residual blocks train stably without a long warmup
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying: input and output share the char embedding
        self.apply(self._init_weights)
        # GPT-2 scaling: shrink the residual projections so the residual stream's variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        assert T <= self.config.block_size, f"sequence length {T} > block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # logits at every position: the evaluation scores them all
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


# -----------------------------------------------------------------------------
# training


def get_batch(split_data, batch_size, block_size, generator):
    # random windows: x is the input, y the same window shifted by one character
    ix = torch.randint(len(split_data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([split_data[i : i + block_size] for i in ix])
    y = torch.stack([split_data[i + 1 : i + 1 + block_size] for i in ix])
    return x, y


def lr_at(progress):
    # the budget is wall-clock, so the schedule follows elapsed time, not a step count:
    # linear warmup, then cosine decay to min_lr_ratio * learning_rate
    if progress < warmup_frac:
        return learning_rate * progress / warmup_frac
    decay = min(1.0, (progress - warmup_frac) / (1.0 - warmup_frac))
    return learning_rate * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * decay)))


def make_optimizer(model):
    # decay the matrices only; norms and (none here) biases stay un-decayed, as in nanoGPT
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2))


def save_checkpoint(model, config, path):
    # config as a plain dict so the evaluation can torch.load(weights_only=True)
    ckpt = {"model": model.state_dict(), "config": asdict(config)}
    tmp = f"{path}.tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)  # never leave a half-written checkpoint behind


def preflight(model, config):
    # what the evaluation will do, in miniature: round-trip the checkpoint and check the logits' shape
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.pt")
        save_checkpoint(model, config, path)
        ckpt = torch.load(path, weights_only=True)
    clone = GPT(GPTConfig(**ckpt["config"]))
    clone.load_state_dict(ckpt["model"])
    clone.eval()
    with torch.no_grad():
        out = clone(torch.zeros(2, data.CONTEXT_LEN, dtype=torch.long))
    logits = out[0] if isinstance(out, tuple) else out
    expected = (2, data.CONTEXT_LEN, data.VOCAB_SIZE)
    assert tuple(logits.shape) == expected, f"logits shape {tuple(logits.shape)} != {expected}"
    print(f"quick check ok: checkpoint round-trip, logits {expected}")


def main():
    torch.set_num_threads(1)  # the job gets one core; more threads would only contend
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_data = data.get_split("train")

    config = GPTConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd, dropout=dropout)
    model = GPT(config)
    optimizer = make_optimizer(model)
    n_params = sum(p.numel() for p in model.parameters())
    bs = 2 if quick_check else batch_size  # the preflight only proves the code runs
    print(f"model {n_params / 1e6:.2f}M params, batch {bs}x{config.block_size}, budget {budget_s:.0f}s")

    model.train()
    step, t0 = 0, time.time()
    while True:
        elapsed = time.time() - t0
        done = step >= 2 if quick_check else (step > 0 and elapsed >= budget_s)
        if done:
            break
        lr = lr_at(min(1.0, elapsed / budget_s) if budget_s > 0 else 1.0)
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = get_batch(train_data, bs, config.block_size, generator)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if step % log_every == 0:
            print(f"step {step:5d} | loss {loss.item():.4f} | lr {lr:.2e} | {elapsed:6.1f}s")
        step += 1
    print(f"done: {step} steps in {time.time() - t0:.1f}s, last loss {loss.item():.4f}")

    if quick_check:
        preflight(model, config)
        return
    save_checkpoint(model, config, "ckpt.pt")
    print("saved ckpt.pt")


if __name__ == "__main__":
    main()
