"""The ideator: one LLM call asks for `count` ideas (fresh, exploit or explore) and returns their texts."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from toolkit.envs import EnvSpec
from toolkit.execute.implementer import codebase_listing
from toolkit.llm.base import ChatRequest, LLMClient
from toolkit.llm.replay import rough_tokens
from toolkit.prompts import render
from toolkit.search.policy import Call, outcome_line
from toolkit.state import CandidateView


@dataclass(frozen=True)
class Proposal:
    status: str                        # ok | error
    ideas: tuple[str, ...] = ()
    reason: str = ""
    prompt: str = ""
    response: str = ""
    thinking_tokens: int = 0           # of the call's thinking: as the provider counted it, else characters / 4


def ideate_prompt(spec: EnvSpec, call: Call, exemplars: list[CandidateView], avoid: list[str],
                  baseline: float | None) -> str:
    shown = [{"idea": " ".join(v.idea.split()), "outcome": outcome_line(v)} for v in exemplars]
    return render("ideate", description=spec.description.strip(), files=codebase_listing(spec), mode=call.mode,
                  exemplars=shown, avoid=[" ".join(a.split())[:300] for a in avoid], count=call.count,
                  baseline=baseline, guidance=spec.ideation_guidance.strip())


class Ideator:
    def __init__(self, spec: EnvSpec, llm: LLMClient) -> None:
        self.spec, self.llm = spec, llm
        self.system = render("ideate_system")

    def propose(self, call: Call, exemplars: list[CandidateView], avoid: list[str], baseline: float | None,
                tag: str, thinking_budget_tokens: int | None = None) -> Proposal:
        """`thinking_budget_tokens`: this call's (the search's per-epoch budget); None = the client's settings."""
        prompt = ideate_prompt(self.spec, call, exemplars, avoid, baseline)
        reply = self.llm.complete(ChatRequest(prompt=prompt, system=self.system, tag=f"ideate:{call.mode}:{tag}",
                                              thinking_budget_tokens=thinking_budget_tokens))
        if reply.status != "ok":
            return Proposal("error", reason=f"LLM {reply.status}: {reply.reason}", prompt=prompt)
        ideas = parse_ideas(reply.text)[: call.count]
        if not ideas:
            return Proposal("error", reason="no ideas found in the reply", prompt=prompt, response=reply.text)
        return Proposal("ok", tuple(ideas), prompt=prompt, response=reply.text,
                        thinking_tokens=reply.thinking_tokens or rough_tokens(reply.thinking))


def parse_ideas(text: str) -> list[str]:
    """A JSON array of {"title","description"} (or of strings) anywhere in the text; else a numbered list."""
    return _from_json(text) or _from_list(text)


def _from_json(text: str) -> list[str]:
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return []
    try:
        items = json.loads(text[start: end + 1])
    except json.JSONDecodeError:
        return []
    return [idea for idea in (_idea_text(item) for item in items if isinstance(items, list)) if idea]


def _idea_text(item: object) -> str:
    if isinstance(item, str):
        return item.strip()
    if isinstance(item, dict):
        title, body = str(item.get("title", "")).strip(), str(item.get("description", "")).strip()
        return f"{title}: {body}" if title and body else title or body
    return ""


def _from_list(text: str) -> list[str]:
    parts = re.split(r"(?m)^\s*(?:\d+[.)]|[-*]|Idea\s+\d+:)\s+", text)
    return [" ".join(p.split()) for p in parts[1:] if len(p.split()) >= 4]
