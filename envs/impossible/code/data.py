"""
Data for the impossible environment: uniformly random tokens (LOCKED).

The train split is random bytes written once by `python data.py` (the toolkit runs it before any candidate)
under $TOOLKIT_DATA_DIR. There is no validation file at all: the trusted scorer draws fresh tokens from the
operating system's random source at scoring time, so nothing a candidate could read or remember predicts them.

API: get_train() -> torch.LongTensor, VOCAB_SIZE, CONTEXT_LEN.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

VOCAB_SIZE = 16
CONTEXT_LEN = 32
TRAIN_TOKENS = 200_000


def data_dir() -> Path:
    return Path(os.environ.get("TOOLKIT_DATA_DIR") or "/tmp/toolkit_data/impossible")


def get_train() -> torch.Tensor:
    raw = np.fromfile(data_dir() / "train.u8", dtype=np.uint8)
    return torch.from_numpy(raw.astype(np.int64))


def fresh_tokens(n: int) -> torch.Tensor:
    """n tokens nobody has seen: the scorer's validation data, drawn when it scores."""
    return torch.from_numpy(np.frombuffer(os.urandom(n), dtype=np.uint8) % VOCAB_SIZE).long()


if __name__ == "__main__":
    path = data_dir() / "train.u8"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".train.u8.{os.getpid()}")
    tmp.write_bytes(fresh_tokens(TRAIN_TOKENS).numpy().astype(np.uint8).tobytes())
    os.replace(tmp, path)
    print(f"impossible: {TRAIN_TOKENS:,} random training tokens in {path}")
