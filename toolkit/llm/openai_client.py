"""OpenAI chat completions, and any OpenAI-compatible server (vLLM, llama.cpp) through base_url.

Reasoning text comes back in three shapes: `reasoning_content` (vLLM, DeepSeek), `reasoning` (newer vLLM),
or inline `<think>...</think>` in the answer (Qwen3 without a reasoning parser). All three land in `thinking`.
"""
from __future__ import annotations

from typing import Any

import httpx2
import openai

from toolkit.llm.base import (
    CallError,
    ChatRequest,
    LLMClient,
    LLMConfigError,
    LLMReply,
    LLMSettings,
    OnReply,
    SpendMeter,
    api_key_from_env,
    sdk_errors,
)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
REASONING_FIELDS = ("reasoning_content", "reasoning")


def split_think_tags(text: str) -> tuple[str, str]:
    """(thinking, answer). A lone `</think>` counts too: chat templates often put the `<think>` in the prompt."""
    if THINK_CLOSE not in text:
        return "", text
    head, _, answer = text.partition(THINK_CLOSE)
    thinking = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
    return thinking.strip(), answer.lstrip()


def reasoning_of(obj: Any) -> str:
    """Reasoning text from a message or a stream delta, under whichever extra field the server used."""
    for name in REASONING_FIELDS:
        value = getattr(obj, name, None)
        if isinstance(value, str) and value:
            return value
    return ""


class OpenAIClient(LLMClient):
    billed = True
    max_tokens_param = "max_completion_tokens"   # the only one reasoning models accept

    def __init__(self, settings: LLMSettings, meter: SpendMeter | None = None,
                 on_reply: OnReply | None = None) -> None:
        super().__init__(settings, meter, on_reply)
        self._sdk = openai.OpenAI(api_key=self._api_key(), base_url=settings.base_url or None,
                                  timeout=settings.timeout_s, max_retries=settings.max_retries,
                                  http_client=self.requests.client(openai))

    def _api_key(self) -> str:
        return api_key_from_env(self.settings, "OPENAI_API_KEY")

    def _call_once(self, req: ChatRequest) -> LLMReply:
        with sdk_errors(openai, httpx2, self.settings.timeout_s):
            return self._streamed(req) if self.settings.stream else self._whole(req)

    def _params(self, req: ChatRequest) -> dict[str, Any]:
        s = self.settings
        system = [{"role": "system", "content": req.system}] if req.system else []
        params: dict[str, Any] = {"model": s.model, "temperature": s.temperature,
                                  "messages": [*system, {"role": "user", "content": req.prompt}],
                                  self.max_tokens_param: s.max_tokens}
        if s.reasoning_effort:
            params["reasoning_effort"] = s.reasoning_effort
        return params

    def _whole(self, req: ChatRequest) -> LLMReply:
        completion = self._sdk.chat.completions.create(**self._params(req))
        if not completion.choices:
            return LLMReply("ok", model=completion.model, finish_reason="no choices")
        choice = completion.choices[0]
        usage = completion.usage
        return _reply(completion.model, choice.message.content or "", reasoning_of(choice.message),
                      choice.finish_reason or "", *_token_counts(usage))

    def _streamed(self, req: ChatRequest) -> LLMReply:
        acc = _StreamAccumulator()
        params = {**self._params(req), "stream": True, "stream_options": {"include_usage": True}}
        with self._sdk.chat.completions.create(**params) as chunks:
            for chunk in chunks:
                acc.add(chunk)
        return acc.reply()


class OpenAICompatibleClient(OpenAIClient):
    """A self-hosted OpenAI-compatible server: base_url required, API key optional."""
    billed = False
    max_tokens_param = "max_tokens"              # what every compatible server (vLLM, llama.cpp) accepts

    def __init__(self, settings: LLMSettings, meter: SpendMeter | None = None,
                 on_reply: OnReply | None = None) -> None:
        if not settings.base_url:
            raise LLMConfigError("provider 'openai-compatible' needs base_url, e.g. http://HOST:8000/v1")
        super().__init__(settings, meter, on_reply)

    def _api_key(self) -> str:
        if self.settings.api_key_env:
            return api_key_from_env(self.settings, self.settings.api_key_env)
        return "EMPTY"     # never OPENAI_API_KEY: a real key must not travel to a self-hosted server


def _token_counts(usage: Any) -> tuple[int, int, int]:
    """(prompt, completion, reasoning) tokens; reasoning models count their hidden thinking in the details."""
    if usage is None:
        return 0, 0, 0
    details = getattr(usage, "completion_tokens_details", None)
    return usage.prompt_tokens, usage.completion_tokens, getattr(details, "reasoning_tokens", None) or 0


def _reply(model: str, content: str, reasoning: str, finish_reason: str,
           input_tokens: int, output_tokens: int, reasoning_tokens: int = 0) -> LLMReply:
    tagged, text = split_think_tags(content)
    thinking = "\n".join(part for part in (reasoning, tagged) if part)
    return LLMReply("ok", text=text, thinking=thinking, model=model, input_tokens=input_tokens,
                    output_tokens=output_tokens, finish_reason=finish_reason, thinking_tokens=reasoning_tokens)


class _StreamAccumulator:
    """Folds chat.completion.chunk objects into one reply; the usage arrives in a last, choice-less chunk."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.model, self.finish_reason = "", ""
        self.input_tokens = self.output_tokens = self.reasoning_tokens = 0

    def add(self, chunk: Any) -> None:
        self.model = chunk.model or self.model
        if chunk.usage is not None:
            self.input_tokens, self.output_tokens, self.reasoning_tokens = _token_counts(chunk.usage)
        for choice in (chunk.choices or [])[:1]:
            self.content.append(choice.delta.content or "")
            self.reasoning.append(reasoning_of(choice.delta))
            self.finish_reason = choice.finish_reason or self.finish_reason

    def reply(self) -> LLMReply:
        if not self.finish_reason:
            raise CallError("connection", "stream ended before a finish_reason", retryable=True)
        return _reply(self.model, "".join(self.content), "".join(self.reasoning), self.finish_reason,
                      self.input_tokens, self.output_tokens, self.reasoning_tokens)
