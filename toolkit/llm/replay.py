"""Recorded responses, replayed without a network: deterministic demos and tests.

A replay file is JSONL, one object a line: {"match": "...", "text": "...", "thinking": "", "model": "replay"}.
A request picks the first least-used entry whose non-empty `match` occurs in its system + prompt + tag; so
entries are used in file order and, once all are used, cycle. Entries without `match` serve the requests no
specific entry matches. `record_file` (any provider) writes this same format with the request tag as `match`.
Stdlib only: the fake server (toolkit.testing.fake_llm) replays through `ReplayBook` too.
"""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from toolkit.llm.base import (
    CallError,
    ChatRequest,
    LLMClient,
    LLMConfigError,
    LLMReply,
    LLMSettings,
    OnReply,
    SpendMeter,
)


def rough_tokens(text: str) -> int:
    """About four characters a token: good enough for replay accounting and the fake server."""
    return len(text) // 4


class ReplayBook:
    """The entries of one replay file and how often each was used (thread-safe)."""

    def __init__(self, entries: list[dict[str, Any]], source: str = "") -> None:
        self.entries, self.source = entries, source
        self._uses = [0] * len(entries)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> ReplayBook:
        if not path.is_file():
            raise LLMConfigError(f"replay_file {path} does not exist (record one with record_file)")
        lines = path.read_text(encoding="utf-8").splitlines()
        return cls([_entry(path, n, line) for n, line in enumerate(lines, 1) if line.strip()], str(path))

    def pick(self, haystack: str) -> dict[str, Any] | None:
        """The first least-used entry for this request text, or None when nothing matches."""
        specific = [i for i, e in enumerate(self.entries) if e.get("match") and e["match"] in haystack]
        pool = specific or [i for i, e in enumerate(self.entries) if not e.get("match")]
        if not pool:
            return None
        with self._lock:
            chosen = min(pool, key=self._uses.__getitem__)   # min keeps the first of equals: file order
            self._uses[chosen] += 1
        return self.entries[chosen]


def _entry(path: Path, line_no: int, line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise LLMConfigError(f"{path}:{line_no} is not JSON ({e.msg})") from e
    if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
        raise LLMConfigError(f"{path}:{line_no} needs an object with a string \"text\"")
    if not isinstance(entry.get("match", ""), str):
        raise LLMConfigError(f"{path}:{line_no}: \"match\" must be a string")
    return entry


class ReplayClient(LLMClient):
    def __init__(self, settings: LLMSettings, meter: SpendMeter | None = None,
                 on_reply: OnReply | None = None) -> None:
        super().__init__(settings, meter, on_reply)
        if not settings.replay_file:
            raise LLMConfigError("provider 'replay' needs replay_file: a JSONL of recorded responses")
        self.book = ReplayBook.load(Path(settings.replay_file))

    def _call_once(self, req: ChatRequest) -> LLMReply:
        haystack = "\n".join((req.system, req.prompt, req.tag))
        entry = self.book.pick(haystack)
        if entry is None:
            detail = f"tag={req.tag!r}, prompt starting {req.prompt[:80]!r} (in {self.book.source})"
            raise CallError("no recorded response matches", detail)
        text, thinking = entry["text"], entry.get("thinking", "")
        return LLMReply("ok", text=text, thinking=thinking, model=entry.get("model") or "replay",
                        input_tokens=rough_tokens(req.system + req.prompt),
                        output_tokens=rough_tokens(thinking + text), finish_reason="stop")
