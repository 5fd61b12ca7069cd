"""USD per million tokens, by model id.

List prices as published by the vendors (standard tier, no caching, no batch discount). Check them before
trusting a cost report; override per role with price_input_per_mtok / price_output_per_mtok in the config.
An unknown model costs 0 (a local vLLM server, a replay), so the spend cap never stops those; a billed
provider (anthropic, openai) with an unpriced model logs a warning when its client is made.
Thinking / reasoning tokens are billed as output tokens, and the APIs already count them in output_tokens.
"""
from __future__ import annotations

import re
from typing import Protocol


class Priced(Protocol):
    """What pricing reads of a role's LLM settings (toolkit.llm.base.LLMSettings has these fields)."""
    @property
    def model(self) -> str: ...

    @property
    def price_input_per_mtok(self) -> float: ...

    @property
    def price_output_per_mtok(self) -> float: ...


# model id (a dated id such as claude-opus-4-1-20250805 or gpt-5-2025-08-07 maps to its undated id):
# (input, output) USD per million tokens. Models not listed here cost 0 unless priced in the settings.
PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "claude-opus-4-0": (15.0, 75.0),
    "claude-opus-4": (15.0, 75.0),
    "claude-opus-4-1": (15.0, 75.0),
    "claude-opus-4-5": (5.0, 25.0),
    "claude-opus-4-6": (5.0, 25.0),
    "claude-sonnet-4-0": (3.0, 15.0),
    "claude-sonnet-4": (3.0, 15.0),
    "claude-sonnet-4-5": (3.0, 15.0),
    "claude-sonnet-4-6": (3.0, 15.0),
    "claude-haiku-4-5": (1.0, 5.0),
    "gpt-5": (1.25, 10.0),
    "gpt-5-mini": (0.25, 2.0),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-pro": (15.0, 120.0),
    "gpt-5.1": (1.25, 10.0),
    "gpt-5.2": (1.75, 14.0),
    "gpt-4.1": (2.0, 8.0),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4o": (2.50, 10.0),
    "gpt-4o-mini": (0.15, 0.60),
}
_DATE_SUFFIX = re.compile(r"-\d{4}-?\d{2}-?\d{2}$")


def price_per_mtok(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for a model id, or None when the table does not know it."""
    return PRICES_PER_MTOK.get(_DATE_SUFFIX.sub("", model))


def has_price(settings: Priced) -> bool:
    given = settings.price_input_per_mtok >= 0 and settings.price_output_per_mtok >= 0
    return given or price_per_mtok(settings.model) is not None


def cost_usd(settings: Priced, reply_model: str, input_tokens: int, output_tokens: int) -> float:
    """Cost of one call: settings prices when given (>= 0), else the table for the configured model."""
    table_in, table_out = price_per_mtok(settings.model or reply_model) or (0.0, 0.0)
    usd_in = settings.price_input_per_mtok if settings.price_input_per_mtok >= 0 else table_in
    usd_out = settings.price_output_per_mtok if settings.price_output_per_mtok >= 0 else table_out
    return (input_tokens * usd_in + output_tokens * usd_out) / 1e6
