"""The one LLM interface the ideator and implementer use; they never import a vendor SDK.

    client = make_client(settings, meter)           # settings: LLMSettings (one per role)
    reply = client.complete(ChatRequest(prompt, system, tag))
    if reply.status == "ok": ...                     # else reply.reason says why ("error" or "budget")
"""
from __future__ import annotations

from toolkit.llm.base import (
    PROVIDERS,
    ChatRequest,
    LLMClient,
    LLMConfigError,
    LLMReply,
    LLMSettings,
    SpendMeter,
    make_client,
)

__all__ = ["PROVIDERS", "ChatRequest", "LLMClient", "LLMConfigError", "LLMReply", "LLMSettings", "SpendMeter",
           "make_client"]
