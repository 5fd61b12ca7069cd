"""
Synthetic token shards in the FineWeb .bin format, for CPU smoke runs (LOCKED: part of the data pipeline).

Usage:
    python synthetic_data.py --out DIR --hidden-out HDIR --vocab 1024   # the smoke `prepare` of env.yaml
    python synthetic_data.py --out DIR --val-tokens 10485761            # GPT-2 ids, enough for the full-size eval

Writes DIR/fineweb_train_000001.bin ... and HDIR/fineweb_val_000000.bin (DIR without --hidden-out: training
may read DIR, only the scorer reads HDIR) in the llm.c / modded-nanogpt
format: a header of 256 int32 (magic 20240520, version 1, number of tokens, zeros), then the tokens as
uint16. It does nothing when the shards are already there, so every smoke job may call it. Each file is
written under a temporary name and renamed, and its bytes depend only on the arguments, so concurrent
jobs that share a data dir never see a half-written shard and always agree on its content.

The tokens follow a random order-1 Markov chain over 512 ids of the vocabulary (each id has four likely
successors), so a tiny model learns something within a few steps: the loss falls from ln(vocab) (6.9 for
the smoke vocabulary of 1024) towards the entropy of the chain (~1.1 nats).
"""
import argparse
import os
import uuid

import numpy as np

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
ALPHABET = 512           # how many distinct ids the chain uses
SUCCESSORS = 4           # likely next tokens per token


def write_shard(path, tokens):
    """Write one shard atomically: a temporary file in the same directory, then os.replace."""
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1 and (len(tokens) == 0 or (tokens.min() >= 0 and tokens.max() < 2**16))
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[0], header[1], header[2] = MAGIC, VERSION, len(tokens)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())
    os.replace(tmp, path)


def markov_tokens(n_tokens, vocab_size, chain_seed, walk_seed):
    """n_tokens ids walked along the Markov chain fixed by chain_seed, with steps drawn from walk_seed."""
    chain = np.random.default_rng(chain_seed)
    alphabet = chain.choice(vocab_size, size=ALPHABET, replace=False)
    successors = chain.integers(0, ALPHABET, size=(ALPHABET, SUCCESSORS)).tolist()
    walk_rng = np.random.default_rng([chain_seed, walk_seed])
    picks = walk_rng.choice(SUCCESSORS, size=n_tokens, p=[0.55, 0.25, 0.15, 0.05]).tolist()
    state, walk = int(walk_rng.integers(0, ALPHABET)), []
    for pick in picks:   # a plain loop: each token depends on the previous one
        state = successors[state][pick]
        walk.append(state)
    return alphabet[np.array(walk, dtype=np.int64)]


def shard_plan(out_dir, train_shards, shard_tokens, val_tokens, hidden_dir=None):
    """(path, n_tokens, seed) for every shard; the val shard gets its own seed, so it is not train data."""
    plan = [(os.path.join(hidden_dir or out_dir, "fineweb_val_000000.bin"), val_tokens, 0)]
    for i in range(1, train_shards + 1):
        plan.append((os.path.join(out_dir, f"fineweb_train_{i:06d}.bin"), shard_tokens, i))
    return plan


def ensure_shards(out_dir, vocab_size=50257, train_shards=2, shard_tokens=100_000, val_tokens=32_768,
                  chain_seed=1234, hidden_dir=None):
    """Create the shards that are missing; returns the paths written (empty when all were there)."""
    for folder in (out_dir, hidden_dir or out_dir):
        os.makedirs(folder, exist_ok=True)
    written = []
    for path, n_tokens, seed in shard_plan(out_dir, train_shards, shard_tokens, val_tokens, hidden_dir):
        if os.path.exists(path):
            continue
        # every shard walks the same chain, each from its own randomness
        write_shard(path, markov_tokens(n_tokens, vocab_size, chain_seed, seed))
        written.append(path)
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory for the train shards")
    parser.add_argument("--hidden-out", default=None, help="directory for the val shard (default: --out)")
    parser.add_argument("--vocab", type=int, default=50257, help="ids are drawn below this (GPT-2: 50257)")
    parser.add_argument("--train-shards", type=int, default=2)
    parser.add_argument("--shard-tokens", type=int, default=100_000, help="tokens per train shard")
    parser.add_argument("--val-tokens", type=int, default=32_768)
    parser.add_argument("--seed", type=int, default=1234, help="seed of the Markov chain")
    args = parser.parse_args()
    written = ensure_shards(args.out, args.vocab, args.train_shards, args.shard_tokens, args.val_tokens,
                            args.seed, args.hidden_out)
    print(f"synthetic_data: {len(written)} shard(s) written to {args.out}" if written
          else f"synthetic_data: shards already present in {args.out}")


if __name__ == "__main__":
    main()
