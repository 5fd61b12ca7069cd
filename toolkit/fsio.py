"""Shared-filesystem I/O: atomic writes, tolerant reads, append-only JSONL, the daemon lock.

Every file another process reads is written to a temporary name in the same directory and renamed, so a
reader sees either nothing or the whole file (rename is atomic on POSIX and on NFS within a directory).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from toolkit.errors import LockHeldError


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path | str, retries: int = 3, retry_s: float = 0.05) -> Any:
    """Read a JSON file another process wrote; retry a few times for a lagging shared filesystem."""
    for attempt in range(retries):
        try:
            with open(path, "rb") as f:   # bytes: json detects UTF-8 itself, and skips a text decoder
                return json.loads(f.read())
        except (json.JSONDecodeError, FileNotFoundError):
            if attempt == retries - 1:
                raise
            _refresh_dir_cache(os.path.dirname(path))
            time.sleep(retry_s)
    raise AssertionError("unreachable")


def _refresh_dir_cache(folder: Path | str) -> None:
    """Listing a directory makes NFS clients revalidate its attribute cache."""
    with contextlib.suppress(OSError):
        os.listdir(folder)


def append_jsonl(path: Path, record: dict[str, Any], fsync: bool = True) -> None:
    """Append one line in a single write(2) with O_APPEND: whole lines, even across crashes mid-run.
    A killed process loses nothing written; fsync=False leaves only a machine crash to `sync_file`."""
    append_jsonl_many(path, [record], fsync)


def append_jsonl_many(path: Path, records: list[dict[str, Any]], fsync: bool = True) -> None:
    """Append many lines with one open and O_APPEND writes (a crash can tear only the last line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def sync_file(path: Path) -> None:
    """fsync a file once (e.g. the event log at the end of a tick, not after every line)."""
    if not path.exists():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Yield the complete records of a JSONL file; a torn last line (crash mid-append) is skipped."""
    if not path.exists():
        return
    with path.open(encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def copy_tree(src: Path, dest: Path) -> None:
    """Copy a directory tree, keeping symlinks as links (never following them out of the tree)."""
    import shutil

    shutil.copytree(src, dest, symlinks=True)


class DaemonLock:
    """A lock file holding pid@host. A stale lock (dead pid on this host) is taken over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.owner = f"{os.getpid()}@{socket.gethostname()}"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while not self._try_create():
            holder = self.path.read_text().strip() if self.path.exists() else ""
            if holder and _holder_alive(holder):
                raise LockHeldError(f"{self.path} is held by {holder}: another daemon runs this run directory "
                                    f"(stop it, or delete the file if that process is gone)")
            self.path.unlink(missing_ok=True)

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(self.owner + "\n")
        return True

    def release(self) -> None:
        if self.path.exists() and self.path.read_text().strip() == self.owner:
            self.path.unlink()


def _holder_alive(holder: str) -> bool:
    pid_text, _, host = holder.partition("@")
    if host != socket.gethostname():
        return True  # cannot check another host's pid: assume alive, the message says how to override
    return _pid_alive(int(pid_text))


def _pid_alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status
