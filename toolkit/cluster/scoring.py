"""Trusted scoring: the candidate's model runs in a confined child; the trusted scorer sends it inputs and
reads back outputs, and computes every metric itself.

A locked evaluation (running from the run's pinned snapshot, never from a directory a candidate can write)
uses it like this:

    with ModelChild(LOADER) as model:          # LOADER: source text that defines forward(x) -> logits
        logits = model(x)                      # a float tensor, checked for shape and dtype

The child is started through `toolkit.cluster.confine` with a policy that lets it read the candidate's code dir and
the interpreter, write only a private scratch dir, and nothing else (no data, no network, no other
process). It receives the loader's source over a pipe, runs it with the code dir first on sys.path (so
`from train import GPT` is the candidate's class), then answers `forward` requests. Nothing the child sends
is unpickled: a reply is a JSON header (dtype from an allow-list, shape) and raw bytes, both checked.

Each child is a fresh process: a scorer that starts two children one after the other (and never both at
once) gets two models that cannot share state or signal each other, which is what `causal_audit` relies on.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import mmap
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from toolkit.cluster import confine

CHILD_PROGRAM = Path(__file__).with_name("scoring_child.py")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}
HEADER_MAX_BYTES = 1 << 16
# logits come back through a shared-memory buffer (one copy each side; a pipe moved 0.36 GB/s here); larger
# replies fall back to the pipe. Pages are allocated only as far as the child writes.
SHM_BYTES = 8 << 30
DEFAULT_CALL_TIMEOUT_S = 600.0


class ChildError(RuntimeError):
    """The model child failed, answered out of protocol, or ran out of time (the candidate's fault)."""


def scorer_context() -> dict[str, str]:
    """What the worker tells a scorer (environment variables; set by `toolkit.cluster.worker` for the eval step)."""
    keys = ("TOOLKIT_CODE_DIR", "TOOLKIT_SCRATCH", "TOOLKIT_SANDBOX")
    return {k: os.environ.get(k, "") for k in keys}


class ModelChild:
    """The candidate's model behind a process boundary. `loader` is source text defining `forward(x)`."""

    def __init__(self, loader: str, code_dir: str = "", scratch: str = "", sandbox: str = "",
                 call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S) -> None:
        ctx = scorer_context()
        self.code_dir = code_dir or ctx["TOOLKIT_CODE_DIR"] or os.getcwd()
        self.sandbox = confine.resolve(sandbox or ctx["TOOLKIT_SANDBOX"] or "auto")
        self.base = Path(scratch or ctx["TOOLKIT_SCRATCH"] or tempfile.gettempdir())
        self.loader, self.call_timeout_s = loader, call_timeout_s
        self.proc: subprocess.Popen | None = None

    # ---- lifecycle ----
    def __enter__(self) -> ModelChild:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def start(self) -> None:
        self.scratch = Path(tempfile.mkdtemp(prefix="model-child-", dir=self.base))
        control = Path(tempfile.mkdtemp(prefix="toolkit-scorer-"))  # the launcher's files: out of the child's reach
        policy = confine.candidate_policy(Path(self.code_dir), self.scratch, [], self.sandbox, code_writable=False)
        self.launch = confine.launch_argv(policy, self._child_argv(), control)
        self.control = control
        to_child_r, self.to_child = os.pipe()
        self.from_child, from_child_w = os.pipe()
        for fd in (self.to_child, self.from_child):
            _widen(fd)
        env = confine.confined_environ(_child_env(), self.scratch)
        self.shm_fd = os.memfd_create("toolkit-logits", os.MFD_CLOEXEC)
        os.ftruncate(self.shm_fd, SHM_BYTES)   # pages are only allocated when the child writes them
        self.shm = mmap.mmap(self.shm_fd, SHM_BYTES)
        env.update(TOOLKIT_CHILD_FDS=f"{to_child_r},{from_child_w},{self.shm_fd}")
        # the child's prints go to stderr: the scorer's stdout carries only the scorer's own verdict
        self.proc = subprocess.Popen(self.launch.argv, cwd=self.code_dir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=sys.stderr.fileno(), pass_fds=(to_child_r, from_child_w, self.shm_fd),
                                     start_new_session=True)
        os.close(to_child_r)
        os.close(from_child_w)
        self._send({"op": "load", "loader": self.loader, "code_dir": self.code_dir})
        self._reply()

    def _child_argv(self) -> list[str]:
        return [sys.executable, "-I", "-c", CHILD_PROGRAM.read_text()]

    def close(self) -> confine.Report:
        """End the child and everything it started (found by ancestry); returns the launcher's report."""
        for fd in (getattr(self, "to_child", -1), getattr(self, "from_child", -1)):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.to_child = self.from_child = -1
        if getattr(self, "shm_fd", -1) >= 0:
            self.shm.close()
            os.close(self.shm_fd)
            self.shm_fd = -1
        if self.proc is None:
            return confine.Report(returncode=None)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.terminate()  # the launcher kills the child's whole tree on TERM
            self.proc.wait()
        self.proc = None
        report = confine.read_report(self.launch.report)
        shutil.rmtree(self.control, ignore_errors=True)
        shutil.rmtree(self.scratch, ignore_errors=True)
        return report

    # ---- calls ----
    def __call__(self, x: torch.Tensor, as_float: bool = True) -> torch.Tensor:
        """The model's output for x (a tensor of token ids) on the CPU: float32, or as the child sent it
        (bf16 logits convert faster on the scorer's GPU than here)."""
        x = x.detach().to("cpu").contiguous()
        self._send({"op": "forward", "dtype": str(x.dtype).replace("torch.", ""), "shape": list(x.shape)},
                   x.numpy().tobytes())
        out = self._reply()
        return out.float() if as_float else out

    def _send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        data = json.dumps({**header, "nbytes": len(payload)}).encode() + b"\n" + payload
        try:
            _write_all(self.to_child, data, self.call_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise ChildError(f"model child stopped reading its requests ({exc!r})") from exc

    def _reply(self) -> torch.Tensor:
        reader = _Reader(self.from_child, time.monotonic() + self.call_timeout_s)
        line = reader.line(HEADER_MAX_BYTES)
        try:
            header = json.loads(line)
        except ValueError as exc:
            raise ChildError("model child answered out of protocol") from exc
        if not isinstance(header, dict) or not header.get("ok"):
            error = header.get("error", "") if isinstance(header, dict) else ""
            raise ChildError(f"model child failed: {str(error)[-1500:]}")
        return _tensor(header, reader, self.shm)


F_SETPIPE_SZ = 1031


def _widen(fd: int) -> None:
    """1 MiB pipe buffers instead of 64 KiB: far fewer wake-ups per gigabyte of logits."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, 1 << 20)


def _child_env() -> dict[str, str]:
    keep = ("PATH", "LANG", "LC_ALL", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
            "TOOLKIT_SMOKE", "PYTHONUNBUFFERED")
    return {k: os.environ[k] for k in keep if k in os.environ}


def _tensor(header: dict[str, Any], reader: _Reader, shm: mmap.mmap) -> torch.Tensor:
    dtype, shape = header.get("dtype"), header.get("shape")
    if dtype not in DTYPES or dtype == "int64":
        raise ChildError(f"model child returned dtype {dtype!r}; a float tensor is required")
    if not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape) or len(shape) > 8:
        raise ChildError(f"model child returned a malformed shape {shape!r}")
    count = 1
    for n in shape:
        count *= n
    nbytes = count * torch.empty((), dtype=DTYPES[dtype]).element_size()
    if header.get("shm") is True:   # the bytes are in the shared buffer, copied out at once
        if nbytes > SHM_BYTES:
            raise ChildError(f"model child put {nbytes} bytes in a {SHM_BYTES}-byte buffer")
        return torch.frombuffer(shm, dtype=DTYPES[dtype], count=count).reshape(shape).clone() if nbytes \
            else torch.empty(shape)
    if header.get("nbytes") != nbytes:
        raise ChildError(f"model child announced {header.get('nbytes')} bytes for shape {shape} of {dtype}")
    raw = reader.exact(nbytes)
    return torch.frombuffer(raw, dtype=DTYPES[dtype]).reshape(shape) if nbytes else torch.empty(shape)


class _Reader:
    """Bounded reads from the child's pipe under one deadline (a silent child is a time-out, not a hang)."""

    def __init__(self, fd: int, deadline: float) -> None:
        self.fd, self.deadline, self.buffer = fd, deadline, bytearray()

    def _more(self, want: int) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0 or not select.select([self.fd], [], [], left)[0]:
            raise ChildError("model child did not answer in time")
        chunk = os.read(self.fd, max(want, 1 << 16))
        if not chunk:
            raise ChildError("model child exited before answering (a crash, or it was killed)")
        self.buffer += chunk

    def line(self, limit: int) -> bytes:
        while b"\n" not in self.buffer:
            if len(self.buffer) > limit:
                raise ChildError("model child sent an oversized header")
            self._more(limit)
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return line

    def exact(self, n: int) -> bytearray:
        """n bytes, read straight into one preallocated buffer (logits can be gigabytes)."""
        out = bytearray(n)
        have = min(n, len(self.buffer))
        out[:have] = self.buffer[:have]
        del self.buffer[:have]
        view = memoryview(out)
        while have < n:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise ChildError("model child did not answer in time")
            got = os.readv(self.fd, [view[have:]])
            if not got:
                raise ChildError("model child exited before answering (a crash, or it was killed)")
            have += got
        return out


def _write_all(fd: int, data: bytes, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    view = memoryview(data)
    while view:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([], [fd], [], left)[1]:
            raise TimeoutError("write timed out")
        view = view[os.write(fd, view[: 1 << 20]):]
