"""Disk hygiene: a run's large outputs (checkpoints) removed without ever leaving the run's own dirs.

Only the dirs candidate code writes are looked at (`CandidatePaths.outputs`: its code dir and scratch); the
toolkit's own records (result.json, worker.log, patch.diff, idea.json, implement/, control/) live beside them
and are never touched. The walk holds directory file descriptors (os.fwalk) and never follows a symlink, so
a link planted by candidate code cannot steer a deletion outside the run. Removing is idempotent: a second
pass over a pruned run finds nothing, and a pass cut short by a crash is finished by the next one.
"""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from toolkit.layout import CandidatePaths

MB = 1_000_000
UNITS = ("B", "kB", "MB", "GB", "TB", "PB")


@dataclass(frozen=True)
class Pruned:
    bytes: int = 0
    files: tuple[str, ...] = ()        # removed, relative to the candidate's dir (code/ckpt.pt)


def own_output_dirs(paths: CandidatePaths) -> list[Path]:
    """The candidate's code dir and scratch, each only where it is a real directory of the candidate's own
    (a symlinked candidate dir, code dir or scratch leads elsewhere: refused)."""
    if paths.root.is_symlink() or not paths.root.is_dir():
        return []
    root = paths.root.resolve()
    return [d for d in paths.outputs if d.is_dir() and not d.is_symlink() and d.resolve().parent == root]


def prune_outputs(paths: CandidatePaths, min_bytes: int) -> Pruned:
    """Remove every regular file of at least `min_bytes` in the candidate's output dirs; links stay links."""
    freed, files = 0, []
    for top in own_output_dirs(paths):
        for folder, name, info, dir_fd in _regular_files(top):
            if info.st_size >= min_bytes and _unlink(name, dir_fd):
                freed += info.st_size
                files.append(os.path.relpath(os.path.join(folder, name), paths.root))
    return Pruned(bytes=freed, files=tuple(sorted(files)))


def tree_bytes(root: Path) -> int:
    """The apparent size of every regular file under `root` (links are not followed; 0 when it is missing)."""
    if root.is_symlink() or not root.is_dir():
        return 0
    return sum(info.st_size for _, _, info, _ in _regular_files(root))


def _regular_files(top: Path) -> Iterator[tuple[str, str, os.stat_result, int]]:
    """(folder, name, lstat, the folder's fd) of each regular file below `top`, never through a symlink."""
    for folder, _, names, dir_fd in os.fwalk(top, follow_symlinks=False):
        for name in names:
            try:
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except OSError:       # gone since the listing
                continue
            if stat.S_ISREG(info.st_mode):
                yield folder, name, info, dir_fd


def _unlink(name: str, dir_fd: int) -> bool:
    """False when it is gone already, or cannot go (a folder candidate code made read-only keeps it)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return False
    return True


def human_bytes(n: int | float) -> str:
    """1234567 -> '1.2 MB' (decimal units, like `large_file_mb`)."""
    size, unit = float(n), 0
    while abs(size) >= 1000 and unit < len(UNITS) - 1:
        size, unit = size / 1000, unit + 1
    return f"{size:.0f} {UNITS[unit]}" if unit == 0 else f"{size:.1f} {UNITS[unit]}"
