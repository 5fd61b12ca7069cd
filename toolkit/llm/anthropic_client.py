"""Anthropic messages API: one attempt per `_call_once`, streamed or not, extended thinking when budgeted."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import anthropic
import httpx2

from toolkit.llm.base import (
    CallError,
    ChatRequest,
    LLMClient,
    LLMReply,
    LLMSettings,
    OnReply,
    SpendMeter,
    api_key_from_env,
    check_thinking,
    sdk_errors,
)


class AnthropicClient(LLMClient):
    billed = True
    takes_thinking_budget = True
    def __init__(self, settings: LLMSettings, meter: SpendMeter | None = None,
                 on_reply: OnReply | None = None) -> None:
        super().__init__(settings, meter, on_reply)
        check_thinking(settings)
        self._sdk = anthropic.Anthropic(api_key=api_key_from_env(settings, "ANTHROPIC_API_KEY"),
                                        base_url=settings.base_url or None,
                                        timeout=settings.timeout_s, max_retries=settings.max_retries,
                                        http_client=self.requests.client(anthropic))

    def _call_once(self, req: ChatRequest) -> LLMReply:
        with sdk_errors(anthropic, httpx2, self.settings.timeout_s):
            return self._streamed(req) if self.settings.stream else self._whole(req)

    def _params(self, req: ChatRequest) -> dict[str, Any]:
        s = self.settings
        params: dict[str, Any] = {"model": s.model, "max_tokens": s.max_tokens,
                                  "messages": [{"role": "user", "content": req.prompt}]}
        if req.system:
            params["system"] = req.system
        budget = self.thinking_budget(req)
        if budget > 0:
            params["thinking"] = {"type": "enabled", "budget_tokens": budget}
        else:   # the SDK no longer takes temperature as a keyword; with thinking on it must stay at 1 (default)
            params["extra_body"] = {"temperature": s.temperature}
        return params

    def thinking_budget(self, req: ChatRequest) -> int:
        """This call's budget: the request's (the search's per-epoch setting), else the settings'."""
        if req.thinking_budget_tokens is None:
            return self.settings.thinking_budget_tokens
        check_thinking(replace(self.settings, thinking_budget_tokens=req.thinking_budget_tokens))
        return req.thinking_budget_tokens

    def _whole(self, req: ChatRequest) -> LLMReply:
        msg = self._sdk.messages.create(**self._params(req))
        blocks = list(msg.content)
        return LLMReply("ok", text=_joined(blocks, "text"), thinking=_joined(blocks, "thinking"),
                        model=msg.model, input_tokens=msg.usage.input_tokens,
                        output_tokens=msg.usage.output_tokens, finish_reason=msg.stop_reason or "")

    def _streamed(self, req: ChatRequest) -> LLMReply:
        acc = _StreamAccumulator()
        with self._sdk.messages.create(**self._params(req), stream=True) as events:
            for event in events:
                acc.add(event)
        return acc.reply()


def _joined(blocks: list[Any], kind: str) -> str:
    return "".join(getattr(b, kind, "") or "" for b in blocks if b.type == kind)


_DELTA_FIELD = {"text_delta": "text", "thinking_delta": "thinking"}   # delta type -> its field and our part


class _StreamAccumulator:
    """Folds raw stream events (message_start ... message_stop) into one reply."""

    def __init__(self) -> None:
        self.parts: dict[str, list[str]] = {"text": [], "thinking": []}
        self.model, self.finish_reason, self.stopped = "", "", False
        self.input_tokens = self.output_tokens = 0

    def add(self, event: Any) -> None:
        handler = getattr(self, f"_on_{event.type}", None)
        if handler is not None:
            handler(event)

    def _on_message_start(self, event: Any) -> None:
        self.model = event.message.model
        self.input_tokens = event.message.usage.input_tokens or 0
        self.output_tokens = event.message.usage.output_tokens or 0

    def _on_content_block_delta(self, event: Any) -> None:
        kind = _DELTA_FIELD.get(event.delta.type)   # signature and tool deltas are ignored
        if kind is not None:
            self.parts[kind].append(getattr(event.delta, kind))

    def _on_message_delta(self, event: Any) -> None:
        self.finish_reason = event.delta.stop_reason or self.finish_reason
        self.output_tokens = event.usage.output_tokens or self.output_tokens   # cumulative
        self.input_tokens = getattr(event.usage, "input_tokens", None) or self.input_tokens

    def _on_message_stop(self, event: Any) -> None:
        self.stopped = True

    def reply(self) -> LLMReply:
        if not self.stopped:
            raise CallError("connection", "stream ended before message_stop", retryable=True)
        return LLMReply("ok", text="".join(self.parts["text"]), thinking="".join(self.parts["thinking"]),
                        model=self.model, input_tokens=self.input_tokens, output_tokens=self.output_tokens,
                        finish_reason=self.finish_reason)

