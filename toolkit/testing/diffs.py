"""Real unified diffs made by string replacement: what the tests, the benchmarks and the quickstart recording
hand to the implementer as an LLM's answer."""
from __future__ import annotations

import difflib
from pathlib import Path


def make_diff(code_dir: Path, rel: str, *pairs: str) -> str:
    """A real unified diff replacing each (old, new) pair in code_dir/rel (each `old` occurs once)."""
    before = after = (code_dir / rel).read_text()
    for old, new in zip(pairs[::2], pairs[1::2]):
        assert after.count(old) == 1, f"{old!r} must occur once in {rel}"
        after = after.replace(old, new)
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 fromfile=f"a/{rel}", tofile=f"b/{rel}")
    return "".join(lines)
