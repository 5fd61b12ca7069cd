"""Pinned inputs: the run's snapshot and data, hashed when the run starts and verified before every use.

Candidates cannot write these trees (the sandbox forbids it); the pins catch everything else: a person or
another tool editing the snapshot, a data cache rebuilt under a running search, a node whose shared
filesystem serves stale files. A mismatch is a run-level alarm: no new work starts.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

FULL_HASH_MAX_BYTES = 64 << 20     # larger files (data shards): size + mtime + the first and last MiB
SAMPLE_BYTES = 1 << 20
STAMP = ".toolkit-prepared"        # written by the toolkit after `prepare`; not itself pinned


def fingerprint(path: Path) -> str:
    """sha256 of a file's content (sampled beyond FULL_HASH_MAX_BYTES); a symlink pins its target path."""
    if path.is_symlink():
        return "link:" + os.readlink(path)
    st = path.stat()
    h = hashlib.sha256()
    with path.open("rb") as f:
        if st.st_size <= FULL_HASH_MAX_BYTES:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
            return h.hexdigest()
        h.update(f.read(SAMPLE_BYTES))
        f.seek(st.st_size - SAMPLE_BYTES)
        h.update(f.read(SAMPLE_BYTES))
    return f"sampled:{st.st_size}:{st.st_mtime_ns}:{h.hexdigest()}"


def pin_tree(folder: Path) -> dict[str, str]:
    """Every file under folder (bytecode caches and the prepare stamp skipped), by relative path."""
    if not folder.is_dir():
        return {}
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = Path(root) / name
            if name != STAMP and not name.endswith(".pyc"):
                found[path.relative_to(folder).as_posix()] = fingerprint(path)
    return found


def pin_inputs(env_dir: Path, data_dir: Path, hidden_dir: Path) -> dict[str, dict[str, str]]:
    return {"snapshot": pin_tree(env_dir), "data": pin_tree(data_dir), "hidden": pin_tree(hidden_dir)}


def changed(pinned: dict[str, dict[str, str]], current: dict[str, dict[str, str]]) -> list[str]:
    """'<tree>/<path>' of every file added, removed or altered since the pins were taken."""
    out = []
    for tree in sorted(set(pinned) | set(current)):
        before, now = pinned.get(tree, {}), current.get(tree, {})
        out += [f"{tree}/{p}" for p in sorted(set(before) | set(now)) if before.get(p) != now.get(p)]
    return out


def verify(pinned: dict[str, dict[str, str]], trees: dict[str, Path]) -> list[str]:
    """Check only the named trees (e.g. the snapshot and hidden data before an eval)."""
    return changed({k: pinned.get(k, {}) for k in trees}, {k: pin_tree(p) for k, p in trees.items()})
