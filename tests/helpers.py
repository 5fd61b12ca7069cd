"""Shared test helpers: real unified diffs against a codebase, and a scripted fake-LLM responder."""
from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from toolkit.testing.diffs import make_diff  # noqa: F401 (tests import it from here)
from toolkit.testing.fake_llm import FakeReply

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TOY_ENV = FIXTURES / "toy_env"
REVISION_MARK = "Your previous attempt did not work"


def scripted(rules: dict[str, Callable[[bool], str]], default: str = "no diff here") -> Callable[[dict], FakeReply]:
    """Reply by the idea marker found in the prompt; the callable gets `is_revision`."""
    def respond(request: dict) -> FakeReply:
        text = str(request.get("body", ""))
        for marker, make in rules.items():
            if marker in text:
                return FakeReply(text="```diff\n" + make(REVISION_MARK in text) + "```\n")
        return FakeReply(text=default)
    return respond


def copy_env(dest: Path, src: Path = TOY_ENV) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "model.json"))
    return dest
