"""
Pre-train GPT-2 small (124M) on FineWeb for a fixed 1500 s (25 min) of training wall-clock on 8 GPUs.
The score is the validation loss of the checkpoint this script leaves behind: lower is better.
The baseline is the paper release's recipe (its 3.255 after 25 minutes on 8 x H100); as in the release, there
is no validation during training: the locked eval validates once, at the end.

This one file is the whole training recipe, and the file to change. run.sh launches it:
    torchrun --standalone --nproc_per_node=8 train.py     # the real run, one node of 8 x H100
    TOOLKIT_SMOKE=1 python train.py                       # smoke run: tiny model, synthetic tokens, CPU
    TOOLKIT_SMOKE=1 TOOLKIT_QUICK_CHECK=1 python train.py # the preflight: the smoke run cut to two steps

What the (locked) evaluation relies on, so keep it true whatever else you change:
  * rank 0 writes ckpt.pt = {"model": state_dict, "model_config": dict, "tokens": int, "train_s": float};
  * eval.py does `from train import GPT, GPTConfig`, builds GPT(GPTConfig(**ckpt["model_config"])), loads
    ckpt["model"] into it, and calls model(idx) on int64 token ids of shape (batch, 1024) (64 when smoke);
    the output (or its first element) must be logits of shape (batch, seq, >= 50257) (>= 1024 when smoke);
  * the model must be causal: eval changes future tokens and rejects the run if earlier logits move;
  * importing this file must not start training (hence the `if __name__ == "__main__"` at the bottom);
  * never read the validation shards (fineweb_val_*) here: eval scores on them.
"""
import contextlib
import glob
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

# -----------------------------------------------------------------------------
# hyper-parameters
smoke = os.environ.get("TOOLKIT_SMOKE") == "1"
data_dir = os.environ.get("TOOLKIT_DATA_DIR", "data")
train_pattern = "fineweb_train_*.bin"
# model: GPT-2 small
n_layer = 12
n_head = 12
n_embd = 768
vocab_size = 50257
block_size = 1024          # context length; eval scores sequences of exactly this length
# batch: 262,144 tokens per optimizer step = 32 sequences x 1024 tokens x 8 GPUs; with fewer GPUs the
# same step is reached by accumulating gradients over several micro-steps
batch_size = 32            # sequences per GPU per micro-step
total_batch_size = 262_144 # tokens per optimizer step, over all GPUs and micro-steps
# optimizer: AdamW, weight decay on every parameter (the baseline's are all matrices and embeddings)
learning_rate = 0.0015
betas = (0.9, 0.95)
weight_decay = 0.1
grad_clip = 1.0
# schedule: linear warmup, then linear decay to 0.1/1.1 of the peak at step num_iterations.
# num_iterations is the paper release's 26,880, the recipe behind the paper's 3.255. The 1500 s budget stops
# training first (8 x H100 get through roughly 17,700 steps: bench/gpu/RESULTS.md), so the decay never
# finishes and the last steps run at about 0.4 of the peak. Training stops at the budget or at num_iterations,
# whichever comes first, and the final log line reports both.
# A variant, not the paper's recipe: num_iterations = 16_000, recalibrated from one H200's throughput so the
# decay ends inside the budget. A search whose baseline uses it is not comparable with the paper's figures
# (env.yaml `references`), so remove those from env.yaml for such a search.
warmup_iters = 256
num_iterations = 26_880
# the budget: training wall-clock seconds, measured on rank 0 and obeyed by every rank on the same step
train_budget_s = 1500.0
compile_model = True       # torch.compile; its compile time is spent before the clock starts
log_every = 100
seed = 1337
data_seed = None           # None: the shards in name order, each read from its first token
# the toolkit sets TOOLKIT_SEED for its noise-floor and certification re-runs: it then replaces the seed above
# (the init) and also seeds the data order (DataLoader: the shard order and where the first shard starts);
# keep honouring it (unset, every run is the same seed-1337, name-ordered run)
if "TOOLKIT_SEED" in os.environ:
    seed_text = os.environ["TOOLKIT_SEED"]
    if not (seed_text.isdecimal() and int(seed_text) < 2**32):
        raise ValueError(f"TOOLKIT_SEED must be a decimal integer in [0, 2**32), got {seed_text!r}")
    seed = data_seed = int(seed_text)

if smoke:  # a few CPU seconds: tiny model, fp32, no compile, synthetic shards (made by the smoke `prepare`)
    data_dir = os.path.join(data_dir, "smoke")
    n_layer, n_head, n_embd, block_size = 2, 2, 64, 64
    vocab_size = 1024                       # the synthetic shards use ids below 1024
    batch_size, total_batch_size = 8, 1024  # two micro-steps of 8 x 64, so accumulation is exercised
    warmup_iters, num_iterations = 5, 50
    train_budget_s = 20.0
    compile_model = False
    log_every = 5
    # the implementer's preflight (TOOLKIT_QUICK_CHECK=1) only proves that the patched code starts, steps,
    # saves and passes the eval's interface checks: two steps, so many patched copies can be checked at once
    if os.environ.get("TOOLKIT_QUICK_CHECK") == "1":
        num_iterations = 2


# -----------------------------------------------------------------------------
# the model
@dataclass
class GPTConfig:
    block_size: int = 1024
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768


def rmsnorm(x, eps=1e-6):
    # RMSNorm without a learnable gain (the release's): nothing to train, nothing in the state_dict.
    # Computed in fp32: under bf16 autocast the mean of squares would lose precision.
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x)


class CausalSelfAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=False)  # q, k, v in one matmul
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=False)
        # the attention branch is scaled down in the forward pass (1/sqrt(24) at 12 layers, the release's)
        # instead of GPT-2's smaller init for c_proj, so the residual stream does not grow with depth
        self.out_scale = 1 / math.sqrt(2 * config.n_layer)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim): every head attends independently
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        # is_causal: position t sees positions <= t only (flash attention on GPU)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y) * self.out_scale


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=False)

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attn = CausalSelfAttention(config)
        self.mlp = MLP(config)

    def forward(self, x):
        # pre-norm residual block: the residual stream itself is never normalised
        x = x + self.attn(rmsnorm(x))
        x = x + self.mlp(rmsnorm(x))
        return x


class GPT(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),   # token embeddings
            wpe=nn.Embedding(config.block_size, config.n_embd),   # learned position embeddings
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # tied: one matrix embeds and un-embeds
        # the release's init: embeddings (hence the tied lm_head) N(0, 0.02); the linear layers keep
        # PyTorch's default init (no special c_proj init: the attention scale above replaces it)
        for embedding in (self.transformer.wte, self.transformer.wpe):
            torch.nn.init.normal_(embedding.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        B, T = idx.size()
        assert T <= self.config.block_size, f"sequence of {T} tokens > block_size {self.config.block_size}"
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(rmsnorm(x))
        loss = None
        if targets is not None:  # the loss in fp32: bf16 logits lose precision in the softmax
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss


# -----------------------------------------------------------------------------
# the data: llm.c token shards, a 256 x int32 header then uint16 GPT-2 token ids
def load_tokens(path):
    header = np.fromfile(path, dtype=np.int32, count=256)
    assert header[0] == 20240520 and header[1] == 1, f"{path}: not an llm.c token shard (magic/version)"
    tokens = np.fromfile(path, dtype=np.uint16, offset=256 * 4)
    assert len(tokens) == header[2], f"{path}: header says {header[2]} tokens, file holds {len(tokens)}"
    return tokens


class DataLoader:
    """Reads the shards in order. Each step takes one chunk of B*T*world tokens, and rank r trains on
    the r-th slice of it, so the ranks never see the same tokens. Wraps around after the last shard.
    With a seed, the shard order is a seeded permutation and the first shard is entered at a seeded
    position; every rank draws the same numbers from the same seed, so they still split the same chunks."""

    def __init__(self, pattern, B, T, rank, world_size, seed=None):
        self.files = sorted(glob.glob(pattern))
        assert self.files, f"no shards match {pattern}: run prepare.py (or set TOOLKIT_SMOKE=1)"
        self.B, self.T, self.rank, self.world_size = B, T, rank, world_size
        if seed is not None:
            rng = np.random.default_rng(seed)
            self.files = [self.files[i] for i in rng.permutation(len(self.files))]
        self.shard = -1
        self.next_shard()
        if seed is not None:  # a seeded start too: permuting few shards (smoke: two) changes little
            self.pos = int(rng.integers(max(1, len(self.tokens) - B * T * world_size)))

    def next_shard(self):
        self.shard = (self.shard + 1) % len(self.files)
        self.tokens = load_tokens(self.files[self.shard])
        self.pos = 0  # start of the current chunk, the same on every rank

    def next_batch(self):
        B, T = self.B, self.T
        if self.pos + B * T * self.world_size + 1 > len(self.tokens):
            self.next_shard()
        start = self.pos + self.rank * B * T
        buf = torch.from_numpy(self.tokens[start:start + B * T + 1].astype(np.int64))
        self.pos += B * T * self.world_size
        return buf[:-1].view(B, T), buf[1:].view(B, T)  # targets are the inputs shifted by one


def get_lr(it):
    if it < warmup_iters:
        return learning_rate * (it + 1) / warmup_iters
    decay_ratio = min((it - warmup_iters) / (num_iterations - warmup_iters), 1.0)
    return learning_rate * (0.1 + (1 - decay_ratio)) / (0.1 + 1)


# -----------------------------------------------------------------------------
# training
def train():
    # torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; plain `python train.py` is a world of one
    ddp = "RANK" in os.environ
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() and not smoke
    device = torch.device(f"cuda:{local_rank}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    master = rank == 0
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True

    tokens_per_micro_step = batch_size * block_size * world_size
    assert total_batch_size % tokens_per_micro_step == 0, "total_batch_size must divide into micro-steps"
    grad_accum_steps = total_batch_size // tokens_per_micro_step
    loader = DataLoader(os.path.join(data_dir, train_pattern), batch_size, block_size, rank, world_size,
                        data_seed)

    config = GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                       n_embd=n_embd)
    raw_model = GPT(config).to(device)
    model = torch.compile(raw_model) if compile_model else raw_model
    if ddp:
        model = DDP(model, device_ids=[local_rank] if use_cuda else None)
    optimizer = torch.optim.AdamW(raw_model.parameters(), lr=learning_rate, betas=betas,
                                  weight_decay=weight_decay, fused=use_cuda)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_cuda else contextlib.nullcontext()
    if master:
        n_params = sum(p.numel() for p in raw_model.parameters())
        print(f"{n_params / 1e6:.1f}M parameters, world {world_size}, {grad_accum_steps} micro-steps "
              f"per step, device {device}, data {data_dir}")

    # Compile (and let DDP build its buckets) on random tokens before the clock starts; the gradients
    # are thrown away and the optimizer has not stepped, so this trains nothing.
    warm_x = torch.randint(0, vocab_size, (batch_size, block_size), device=device)
    with autocast:
        _, loss = model(warm_x, warm_x)
    loss.backward()
    optimizer.zero_grad(set_to_none=True)

    if use_cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    step = 0
    while step < num_iterations:
        # Rank 0's clock decides for everyone: all ranks stop on the same step. The .item() also keeps
        # the CPU from running more than one step ahead of the GPU, so the clock measures real work.
        out_of_time = torch.tensor(float(master and time.perf_counter() - t0 >= train_budget_s),
                                   device=device)
        if ddp:
            dist.all_reduce(out_of_time, op=dist.ReduceOp.MAX)
        if out_of_time.item() > 0:
            break
        lr = get_lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        train_loss = torch.zeros((), device=device)
        for micro_step in range(grad_accum_steps):
            x, y = loader.next_batch()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # gradients are all-reduced across ranks only on the last micro-step of a step
            last = micro_step == grad_accum_steps - 1
            with (model.no_sync() if ddp and not last else contextlib.nullcontext()), autocast:
                _, loss = model(x, y)
            loss = loss / grad_accum_steps  # the mean over the whole step, not the sum of the means
            train_loss += loss.detach()
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if master and (step % log_every == 0 or step == 1):
            elapsed_s = time.perf_counter() - t0
            print(f"step {step:6d} | loss {train_loss.item():.4f} | norm {grad_norm.item():.3f} | "
                  f"lr {lr:.2e} | {elapsed_s:7.1f}s | {1000 * elapsed_s / step:.1f} ms/step", flush=True)
    if use_cuda:
        torch.cuda.synchronize()
    train_s = time.perf_counter() - t0

    if master:
        tokens = step * total_batch_size
        print(f"trained {step} of num_iterations={num_iterations} steps ({tokens / 1e9:.3f}B tokens) in "
              f"{train_s:.1f}s of the {train_budget_s:.0f}s budget", flush=True)
        ckpt = {"model": raw_model.state_dict(), "model_config": asdict(config), "tokens": tokens,
                "train_s": train_s}
        torch.save(ckpt, "ckpt.pt.tmp")
        os.replace("ckpt.pt.tmp", "ckpt.pt")  # eval never sees a half-written checkpoint
    if ddp:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    train()
