"""One small interface to every LLM. Timeouts, concurrency, cost accounting and the retries the SDKs leave
to us live here, once.

A provider implements `_call_once` (one attempt) and raises `CallError` for API trouble; the base class turns
every failure into an `LLMReply` with a status and a reason, so callers never see a vendor exception. Config
bugs (unknown provider, missing API key, conflicting settings) raise `LLMConfigError`.

HTTP-level retries (429, 5xx, time-outs, connection errors) belong to the official SDKs: they follow the
server's `x-should-retry` and Retry-After (seconds or an HTTP date), and we count every request they send. Our
own loop re-asks only what an SDK cannot see: an empty reply, and a stream cut short after it began.
"""
from __future__ import annotations

import importlib
import logging
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from toolkit.errors import ConfigError
from toolkit.fsio import append_jsonl
from toolkit.llm import prices

log = logging.getLogger(__name__)

MAX_EMPTY_RETRIES = 2          # an empty reply is retried at most this often (it usually means a thinking overrun)
MAX_SLEEP_S = 300.0            # cap on one backoff sleep of our own loop
MIN_THINKING_BUDGET_TOKENS = 1024   # the Anthropic API's floor for budget_tokens

# provider -> "module:Class"; modules load lazily so `import toolkit.llm` never imports a vendor SDK
PROVIDERS: dict[str, str] = {
    "anthropic": "toolkit.llm.anthropic_client:AnthropicClient",
    "openai": "toolkit.llm.openai_client:OpenAIClient",
    "openai-compatible": "toolkit.llm.openai_client:OpenAICompatibleClient",
    "replay": "toolkit.llm.replay:ReplayClient",
}


class LLMConfigError(ConfigError, ValueError):
    """LLM settings that cannot work (unknown provider, missing key, conflicting fields)."""


@dataclass(frozen=True)
class LLMSettings:
    provider: str = "replay"            # "anthropic" | "openai" | "openai-compatible" | "replay"
    model: str = ""
    temperature: float = 1.0
    max_tokens: int = 10000
    thinking_budget_tokens: int = 0     # anthropic extended thinking (paper: ~3000); 0 = off
    reasoning_effort: str = ""          # openai reasoning models: "low"|"medium"|"high"; "" = not sent
    base_url: str = ""                  # openai-compatible (vLLM) endpoint, or override for the others
    api_key_env: str = ""               # env var holding the key; "" = the provider's default variable
    stream: bool = False
    timeout_s: float = 600.0            # per HTTP call
    max_retries: int = 6                # the SDK's HTTP retries per call (429, 5xx, time-outs, connection errors),
                                        # and ours for a stream cut short
    backoff_s: float = 2.0              # base of our backoff (empty replies, cut streams); the SDK's own is fixed
    concurrency: int = 32               # parallel calls in complete_many (and in flight per client)
    replay_file: str = ""               # replay provider: JSONL of recorded responses
    record_file: str = ""               # any provider: append each ok response to this JSONL in replay format
    price_input_per_mtok: float = -1.0  # USD per million tokens; -1 = the built-in table in prices.py
    price_output_per_mtok: float = -1.0

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise LLMConfigError(f"llm provider {self.provider!r} is unknown; valid: {', '.join(PROVIDERS)}")
        for name in ("max_tokens", "concurrency", "timeout_s"):
            if getattr(self, name) <= 0:
                raise LLMConfigError(f"llm {name}={getattr(self, name)} must be > 0")
        if self.max_retries < 0 or self.backoff_s < 0:
            raise LLMConfigError("llm max_retries and backoff_s must be >= 0")


def check_thinking(settings: LLMSettings) -> None:
    """Anthropic extended thinking needs temperature 1 and room for an answer after the thinking budget. Here,
    not in the vendor module, so a config can check its per-epoch budgets without importing an SDK."""
    budget = settings.thinking_budget_tokens
    if budget <= 0:
        return
    if budget < MIN_THINKING_BUDGET_TOKENS:
        raise LLMConfigError(f"thinking_budget_tokens={budget} is below the API minimum "
                             f"{MIN_THINKING_BUDGET_TOKENS}: raise it, or set 0 to turn thinking off")
    if settings.temperature != 1.0:
        raise LLMConfigError(f"anthropic extended thinking requires temperature 1.0 (got {settings.temperature}): "
                             f"set temperature: 1.0, or thinking_budget_tokens: 0")
    if settings.max_tokens <= budget:
        raise LLMConfigError(f"max_tokens={settings.max_tokens} must exceed thinking_budget_tokens={budget} "
                             f"(thinking counts toward max_tokens): raise max_tokens, e.g. to {budget + 8000}")


@dataclass(frozen=True)
class ChatRequest:
    prompt: str                 # the user message
    system: str = ""
    tag: str = ""               # free label for accounting (e.g. "implement:<cid>:s3")
    # this call's extended-thinking budget (anthropic only), e.g. the search's per-epoch one; None = the
    # settings' thinking_budget_tokens
    thinking_budget_tokens: int | None = None


@dataclass(frozen=True)
class LLMReply:
    status: str                 # "ok" | "error" | "budget"
    text: str = ""
    thinking: str = ""
    reason: str = ""            # why not ok
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    wall_s: float = 0.0
    attempts: int = 0
    finish_reason: str = ""     # a truncated reply ("length"/"max_tokens") is still ok, but marked
    thinking_tokens: int = 0    # reasoning tokens the provider counted (OpenAI reasoning models return no text)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class CallError(Exception):
    """One failed attempt, raised by a provider's `_call_once`. `retryable`: our loop may ask again (a stream
    cut short); an error the SDK has already retried, or may not retry, is final."""

    def __init__(self, code: str, detail: str = "", retryable: bool = False) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code, self.detail, self.retryable = code, detail, retryable

    def reason(self, retries: int) -> str:
        head = f"{self.code} after {retries} retries" if retries else self.code
        return f"{head}: {self.detail}" if self.detail else head


@contextmanager
def sdk_errors(sdk: Any, transport: Any, timeout_s: float) -> Iterator[None]:
    """Map an official SDK's exceptions (openai and anthropic name them alike) to CallError. The SDK raises
    status, time-out and connection errors after its own retries, so those are final; the transport's
    (httpx2) errors surface only mid-stream, where the SDK does not retry, so our loop may."""
    try:
        yield
    except sdk.APIStatusError as e:
        raise CallError(str(e.status_code), error_detail(e.body, e.message)) from e
    except sdk.APITimeoutError as e:
        raise CallError("timeout", f"no answer within timeout_s={timeout_s}") from e
    except sdk.APIConnectionError as e:
        raise CallError("connection", str(e) or type(e).__name__) from e
    except transport.TimeoutException as e:
        raise CallError("timeout", f"a stream stalled for timeout_s={timeout_s}", True) from e
    except transport.TransportError as e:
        raise CallError("connection", str(e) or type(e).__name__, True) from e
    except sdk.APIError as e:           # malformed answer, or an error object inside a stream
        raise CallError("api error", str(e), True) from e


def error_detail(body: Any, fallback: str) -> str:
    """The human message of an API error body ({"error": {"message": ...}} or the inner object), else fallback."""
    inner = body.get("error", body) if isinstance(body, dict) else None
    message = inner.get("message") if isinstance(inner, dict) else None
    return str(message) if message else fallback


class RequestCounter:
    """Counts the HTTP requests a thread sends through an SDK's client, its retries included (an httpx2
    request hook: the SDK's sync client retries in the calling thread)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def count(self, request: Any = None) -> None:
        self._local.sent = self.sent() + 1

    def sent(self) -> int:
        return getattr(self._local, "sent", 0)

    def client(self, sdk: Any) -> Any:
        """The SDK's default HTTP client, counting through this counter."""
        return sdk.DefaultHttpxClient(event_hooks={"request": [self.count]})


def api_key_from_env(settings: LLMSettings, default_env: str) -> str:
    env = settings.api_key_env or default_env
    key = os.environ.get(env, "")
    if not key:
        raise LLMConfigError(f"llm provider {settings.provider!r} needs an API key in ${env} "
                             f"(export it, or set api_key_env to the variable that holds it)")
    return key


class SpendMeter:
    """Thread-safe running total of tokens and USD, shared by all clients of a run."""

    def __init__(self, cap_usd: float | None = None, spent_usd: float = 0.0) -> None:
        self.cap_usd = cap_usd
        self._lock = threading.Lock()
        self._spent_usd, self._calls, self._input_tokens, self._output_tokens = spent_usd, 0, 0, 0

    def exhausted(self) -> bool:
        return self.cap_usd is not None and self.spent_usd >= self.cap_usd

    def charge(self, reply: LLMReply) -> None:
        with self._lock:
            self._spent_usd += reply.cost_usd
            self._calls += 1
            self._input_tokens += reply.input_tokens
            self._output_tokens += reply.output_tokens

    @property
    def spent_usd(self) -> float:
        with self._lock:
            return self._spent_usd

    @property
    def calls(self) -> int:
        return self._calls

    @property
    def input_tokens(self) -> int:
        return self._input_tokens

    @property
    def output_tokens(self) -> int:
        return self._output_tokens


OnReply = Callable[[ChatRequest, LLMReply], None]
_RECORD_LOCK = threading.Lock()


class LLMClient(ABC):
    billed = False      # True: the provider charges per token, so an unpriced model deserves a warning
    takes_thinking_budget = False   # True: a request's thinking_budget_tokens reaches the API (anthropic)

    def __init__(self, settings: LLMSettings, meter: SpendMeter | None = None,
                 on_reply: OnReply | None = None) -> None:
        if self.billed and not prices.has_price(settings):
            log.warning("llm model %r has no price in toolkit/llm/prices.py: its cost counts as 0 and the spend "
                        "cap cannot stop it; set price_input_per_mtok and price_output_per_mtok", settings.model)
        self.settings = settings
        self.meter = meter if meter is not None else SpendMeter()
        self._on_reply = on_reply
        self._slots = threading.BoundedSemaphore(settings.concurrency)
        self._sleep = time.sleep
        self.requests = RequestCounter()      # the SDK clients hook it into their HTTP client

    @abstractmethod
    def _call_once(self, req: ChatRequest) -> LLMReply:
        """One attempt: an "ok" reply with tokens (cost is added here), or raise CallError."""

    def complete(self, req: ChatRequest) -> LLMReply:
        """Never raises for API trouble; a spent meter gives a "budget" reply without calling the API."""
        if req.thinking_budget_tokens is not None and not self.takes_thinking_budget:
            raise LLMConfigError(f"llm provider {self.settings.provider!r} takes no per-call thinking budget "
                                 f"(request {req.tag!r}); only anthropic does")
        with self._slots:    # the meter is read after the wait for a slot, so queued calls see the cap
            reply = self._budget_reply() if self.meter.exhausted() else self._with_retries(req)
        if reply.status != "budget":
            self.meter.charge(reply)
            self._record(req, reply)
        if self._on_reply is not None:
            self._on_reply(req, reply)
        return reply

    def _budget_reply(self) -> LLMReply:
        return LLMReply("budget", reason=f"spend cap {self.meter.cap_usd:.2f} USD reached", model=self.settings.model)

    def complete_many(self, reqs: Sequence[ChatRequest]) -> list[LLMReply]:
        if not reqs:
            return []
        workers = min(self.settings.concurrency, len(reqs))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm") as pool:
            return list(pool.map(self.complete, reqs))

    def _with_retries(self, req: ChatRequest) -> LLMReply:
        """The SDK retried each HTTP failure already; here an empty reply (at most MAX_EMPTY_RETRIES times) or
        a stream cut short (at most max_retries times) is asked again. `attempts` counts every request sent."""
        start, used, empties, first = time.monotonic(), LLMReply("error"), 0, self.requests.sent()
        for attempt in range(1, self.settings.max_retries + 2):
            try:
                reply = self._counted_call(req)
            except CallError as err:
                if not err.retryable or attempt > self.settings.max_retries:
                    return self._failed(err, used, self.requests.sent() - first, start)
                self._sleep(self._backoff_s(attempt))
                continue
            used = _add_usage(used, self._priced(reply))
            if reply.text.strip():
                return self._stamped(reply, used, self.requests.sent() - first, start)
            empties += 1
            if empties > MAX_EMPTY_RETRIES or attempt > self.settings.max_retries:
                empty = CallError("empty output", f"finish_reason={reply.finish_reason or '?'}", retryable=True)
                return self._failed(empty, used, self.requests.sent() - first, start)
            self._sleep(self._backoff_s(attempt))
        raise AssertionError("unreachable: the last attempt always returns")

    def _counted_call(self, req: ChatRequest) -> LLMReply:
        before = self.requests.sent()
        try:
            return self._call_once(req)
        finally:
            if self.requests.sent() == before:   # no HTTP (replay), or it failed before a request was sent
                self.requests.count()

    def _backoff_s(self, attempt: int) -> float:
        return min(self.settings.backoff_s * 2 ** (attempt - 1), MAX_SLEEP_S) * random.uniform(0.5, 1.0)

    def _priced(self, reply: LLMReply) -> LLMReply:
        cost = prices.cost_usd(self.settings, reply.model, reply.input_tokens, reply.output_tokens)
        return replace(reply, cost_usd=cost)

    def _stamped(self, reply: LLMReply, used: LLMReply, attempts: int, start: float) -> LLMReply:
        return replace(reply, input_tokens=used.input_tokens, output_tokens=used.output_tokens,
                       cost_usd=used.cost_usd, attempts=attempts, wall_s=time.monotonic() - start)

    def _failed(self, err: CallError, used: LLMReply, attempts: int, start: float) -> LLMReply:
        failed = LLMReply("error", reason=err.reason(attempts - 1), model=self.settings.model)
        return self._stamped(failed, used, attempts, start)

    def _record(self, req: ChatRequest, reply: LLMReply) -> None:
        if not self.settings.record_file or not reply.ok:
            return
        line = {"match": req.tag, "text": reply.text, "thinking": reply.thinking, "model": reply.model}
        with _RECORD_LOCK:
            append_jsonl(Path(self.settings.record_file), line)


def _add_usage(total: LLMReply, more: LLMReply) -> LLMReply:
    return replace(total, input_tokens=total.input_tokens + more.input_tokens,
                   output_tokens=total.output_tokens + more.output_tokens,
                   cost_usd=total.cost_usd + more.cost_usd)


def make_client(settings: LLMSettings, meter: SpendMeter | None = None,
                on_reply: OnReply | None = None) -> LLMClient:
    """The client for settings.provider; raises LLMConfigError for settings that cannot work."""
    target = PROVIDERS.get(settings.provider)
    if target is None:
        raise LLMConfigError(f"llm provider {settings.provider!r} is unknown; valid: {', '.join(PROVIDERS)}")
    module_name, class_name = target.split(":")
    cls: type[LLMClient] = getattr(importlib.import_module(module_name), class_name)
    return cls(settings, meter, on_reply)
