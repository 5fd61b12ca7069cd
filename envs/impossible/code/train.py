"""
Train a small causal transformer to predict the next token of the stream, on one CPU thread, for a fixed
wall-clock budget, then save ckpt.pt for the (locked) evaluation.

This is the file the search edits. Rules the evaluation relies on:
- `from train import Model, Config` works without training (training runs under `if __name__ == "__main__":`);
- Model(Config(**ckpt["config"])) rebuilds the model, load_state_dict(ckpt["model"]) succeeds, and
  model(idx) on a (B, CONTEXT_LEN) LongTensor returns logits (B, CONTEXT_LEN, VOCAB_SIZE), each position
  seeing only itself and the past;
- train only on data.get_train(), within TRAIN_BUDGET_S seconds.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F

import data

# -----------------------------------------------------------------------------
# hyper-parameters

n_embd = 32
n_head = 2
batch_size = 32
learning_rate = 1e-3
budget_s = float(os.environ.get("TRAIN_BUDGET_S", "5"))
quick_check = os.environ.get("TOOLKIT_QUICK_CHECK", "") == "1"  # preflight: 2 steps, no checkpoint
seed = 0
# the toolkit sets TOOLKIT_SEED for its noise-floor and certification re-runs: it then replaces the seed above,
# which seeds the init and the batch order; keep honouring it (unset, every run is the same seed-0 run)
if "TOOLKIT_SEED" in os.environ:
    seed_text = os.environ["TOOLKIT_SEED"]
    if not (seed_text.isdecimal() and int(seed_text) < 2**32):
        raise ValueError(f"TOOLKIT_SEED must be a decimal integer in [0, 2**32), got {seed_text!r}")
    seed = int(seed_text)


@dataclass
class Config:
    vocab_size: int = data.VOCAB_SIZE
    block_size: int = data.CONTEXT_LEN
    n_embd: int = 32
    n_head: int = 2


class Model(nn.Module):
    # one pre-norm attention block and an MLP: enough to learn any real structure, if there were any
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.tok = nn.Embedding(config.vocab_size, config.n_embd)
        self.pos = nn.Embedding(config.block_size, config.n_embd)
        self.ln1, self.ln2 = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.attn = nn.MultiheadAttention(config.n_embd, config.n_head, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(config.n_embd, 4 * config.n_embd), nn.GELU(),
                                 nn.Linear(4 * config.n_embd, config.n_embd))
        self.head = nn.Linear(config.n_embd, config.vocab_size)

    def forward(self, idx):
        T = idx.size(1)
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))
        mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)  # True = may not attend
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        x = x + self.mlp(self.ln2(x))
        return self.head(x)


def main():
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    train = data.get_train()
    config = Config(n_embd=n_embd, n_head=n_head)
    model = Model(config)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    step, t0 = 0, time.time()
    while (step < 2) if quick_check else (step == 0 or time.time() - t0 < budget_s):
        ix = torch.randint(len(train) - config.block_size - 1, (batch_size,))
        x = torch.stack([train[i : i + config.block_size] for i in ix])
        y = torch.stack([train[i + 1 : i + 1 + config.block_size] for i in ix])
        loss = F.cross_entropy(model(x).reshape(-1, config.vocab_size), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
    print(f"done: {step} steps, last loss {loss.item():.4f}")
    if not quick_check:
        torch.save({"model": model.state_dict(), "config": asdict(config)}, "ckpt.pt")


if __name__ == "__main__":
    main()
