"""The LLM judge that sorts ideas into hyper-parameter tweaks and algorithmic changes (the paper's categories)."""
from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from toolkit import fsio
from toolkit.errors import ConfigError
from toolkit.llm.base import PROVIDERS, ChatRequest, LLMClient, LLMSettings
from toolkit.prompts import TEMPLATES, render
from toolkit.report.runs import CATEGORIES, JUDGE_FAILED
from toolkit.state import BASELINE_ID


# ---- the LLM judge of idea categories ----------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    category: str                      # hyper-parameter | algorithm | judge failed
    why: str = ""
    cached: bool = False


class CategoryJudge:
    """Asks an LLM whether each idea is a hyper-parameter change or a new algorithm. Verdicts are cached in
    <out>/judge/verdicts.jsonl (keyed by model and rendered prompt), so a re-run asks only about new ideas."""

    def __init__(self, client: LLMClient, judge_dir: Path) -> None:
        self.client, self.dir = client, judge_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        fsio.atomic_write_text(self.dir / "judge_category.j2", (TEMPLATES / "judge_category.j2").read_text())
        self.cache = {e["key"]: e for e in fsio.read_jsonl(self.verdicts) if e.get("category") in CATEGORIES}
        self.failed: dict[str, dict[str, Any]] = {}     # this build's failures: asked again next time

    @property
    def verdicts(self) -> Path:
        return self.dir / "verdicts.jsonl"

    def key(self, prompt: str) -> str:
        s = self.client.settings
        return hashlib.sha256(f"{s.provider}:{s.model}\n{prompt}".encode()).hexdigest()

    def judge(self, ideas: list[str], description: str) -> list[Verdict]:
        about = description or "(no description)"
        prompts = [render("judge_category", description=about, idea=idea.strip()) for idea in ideas]
        todo = sorted({p for p in prompts if self.key(p) not in self.cache and self.key(p) not in self.failed})
        replies = self.client.complete_many([ChatRequest(prompt=p, tag="judge:category") for p in todo])
        for prompt, reply in zip(todo, replies):
            self._remember(prompt, reply.text if reply.ok else "", reply.reason)
        return [self._verdict(p, p not in todo) for p in prompts]

    def _remember(self, prompt: str, text: str, error: str) -> None:
        category, why = parse_verdict(text)
        entry: dict[str, Any] = dict(key=self.key(prompt), model=self.client.settings.model, category=category,
                                     why=why or error, prompt=prompt, response=text, t=time.time())
        fsio.append_jsonl(self.verdicts, entry)
        (self.cache if category in CATEGORIES else self.failed)[entry["key"]] = entry

    def _verdict(self, prompt: str, cached: bool) -> Verdict:
        key = self.key(prompt)
        entry = self.cache.get(key) or self.failed.get(key, {})
        return Verdict(entry.get("category", JUDGE_FAILED), entry.get("why", ""), cached)


def parse_verdict(text: str) -> tuple[str, str]:
    """(category, why) from the judge's JSON reply; an unreadable reply is "judge failed", never a guess."""
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        data = json.loads(match.group(0)) if match else {}
    except json.JSONDecodeError:
        data = {}
    raw = str(data.get("category", "")).strip().lower() if isinstance(data, dict) else ""
    category = {"hyper-parameter": "hyper-parameter", "hyperparameter": "hyper-parameter",
                "hyper-parameters": "hyper-parameter", "algorithm": "algorithm", "algorithmic": "algorithm"}.get(raw)
    if category is None:
        return JUDGE_FAILED, f"unreadable judge reply: {text[:200]!r}"
    return category, str(data.get("why", ""))


def judge_settings(provider: str, model: str, base_url: str = "") -> LLMSettings:
    if provider not in PROVIDERS:
        raise ConfigError(f"--judge-llm {provider!r} is not one of {', '.join(PROVIDERS)}")
    if not model and provider != "replay":
        raise ConfigError("--judge-llm needs --judge-model (the model that classifies the ideas)")
    return LLMSettings(provider=provider, model=model, base_url=base_url, max_tokens=4000, concurrency=8)


def apply_judge(frame: pd.DataFrame, judge: CategoryJudge | None, description: str) -> tuple[pd.DataFrame, int]:
    """Fill the category column of the ideas (not the baseline); returns the frame and the number of new calls."""
    if judge is None or frame.empty:
        return frame, 0
    mask = frame["cid"] != BASELINE_ID
    verdicts = judge.judge(list(frame.loc[mask, "idea"]), description)
    frame = frame.copy()
    frame.loc[mask, "category"] = [v.category for v in verdicts]
    return frame, sum(1 for v in verdicts if not v.cached)


