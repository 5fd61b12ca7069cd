"""A deterministic fake LLM for searches on the toy env: ideas are learning rates, diffs set them."""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from helpers import TOY_ENV, make_diff
from toolkit.testing.fake_llm import FakeReply

LRS = ["0.02", "0.08", "0.1", "0.15", "0.2", "0.3", "0.45", "0.6", "1.5"]


def _user_text(request: dict) -> str:
    body = request.get("body", {})
    messages = body.get("messages", []) if isinstance(body, dict) else []
    parts = [m.get("content") for m in messages if isinstance(m, dict)]
    return "\n".join(p if isinstance(p, str) else json.dumps(p) for p in parts)


def toy_search_responder(code: Path = TOY_ENV / "code"):
    def respond(request: dict) -> FakeReply:
        prompt = _user_text(request)
        if "Reply with ONLY a JSON array" in prompt:
            return FakeReply(text=json.dumps(_ideas(prompt)))
        match = re.search(r"learning rate LR to ([0-9.]+)", prompt.split("# The idea to implement")[-1])
        if not match:
            return FakeReply(text="I cannot implement that.")
        return FakeReply(text=make_diff(code, "train.py", "LR = 0.05 ", f"LR = {match.group(1)} "))
    return respond


def _ideas(prompt: str) -> list[dict]:
    count = int(re.search(r"JSON array of (\d+) objects", prompt).group(1))
    digest = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
    mode = "exploit" if "beat the baseline" in prompt else "explore" if "Earlier ideas" in prompt else "fresh"
    return [{"title": f"{mode} idea {digest % 997}-{i}",
             "description": f"Set the learning rate LR to {LRS[(digest >> (4 * i)) % len(LRS)]} to converge faster."}
            for i in range(count)]
