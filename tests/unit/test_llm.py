"""The LLM client layer through the REAL openai/anthropic SDKs, over real loopback sockets (fake_llm)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.llm import ChatRequest, LLMConfigError, LLMReply, LLMSettings, SpendMeter, make_client
from toolkit.llm.openai_client import split_think_tags
from toolkit.llm.prices import price_per_mtok
from toolkit.llm.replay import rough_tokens
from toolkit.testing.fake_llm import FakeLLMServer, FakeReply

REPO = Path(__file__).resolve().parents[2]
SYSTEM, PROMPT = "You are a careful researcher.", "Propose one idea to lower the validation loss."


@pytest.fixture(autouse=True)
def _keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-anthropic-key")
    monkeypatch.setenv("OPENAI_API_KEY", "test-openai-key")


def settings_for(srv: FakeLLMServer, provider: str, **kw: object) -> LLMSettings:
    defaults: dict = {"anthropic": {"model": "claude-sonnet-4-6", "base_url": srv.base_url},
                      "openai": {"model": "gpt-5", "base_url": srv.openai_base_url},
                      "openai-compatible": {"model": "qwen3", "base_url": srv.openai_base_url}}[provider]
    return LLMSettings(**{"provider": provider, "backoff_s": 0.01, "timeout_s": 5.0, **defaults, **kw})


def ask(srv: FakeLLMServer, provider: str, **kw: object) -> LLMReply:
    return make_client(settings_for(srv, provider, **kw)).complete(ChatRequest(PROMPT, system=SYSTEM))


def expected_tokens(reply: FakeReply) -> tuple[int, int]:
    return rough_tokens(f"{SYSTEM}\n{PROMPT}"), rough_tokens(reply.thinking + reply.text)


# ---- providers, streamed and not ---------------------------------------------------------------------------

ANSWER = FakeReply(text="Use a cosine schedule with a longer warmup. " * 3, thinking="The loss plateaus early, so ")


@pytest.mark.parametrize("stream", [False, True])
def test_anthropic_thinking_usage_and_cost(stream: bool) -> None:
    with FakeLLMServer([ANSWER]) as srv:
        reply = ask(srv, "anthropic", stream=stream, thinking_budget_tokens=3000, max_tokens=10000)
    body, headers = srv.requests[0]["body"], srv.requests[0]["headers"]
    assert (reply.status, reply.text, reply.thinking) == ("ok", ANSWER.text, ANSWER.thinking)
    assert (reply.input_tokens, reply.output_tokens) == expected_tokens(ANSWER)
    assert reply.cost_usd == pytest.approx((reply.input_tokens * 3 + reply.output_tokens * 15) / 1e6)
    assert reply.finish_reason == "end_turn" and reply.attempts == 1
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 3000} and body["max_tokens"] == 10000
    assert body["system"] == SYSTEM and body.get("stream", False) == stream
    assert "test-anthropic-key" in headers.get("authorization", "") + headers.get("x-api-key", "")


@pytest.mark.parametrize("stream", [False, True])
def test_openai_usage_cost_and_params(stream: bool) -> None:
    with FakeLLMServer([FakeReply(text="Try label smoothing.")]) as srv:
        reply = ask(srv, "openai", stream=stream, reasoning_effort="high")
    body = srv.requests[0]["body"]
    assert (reply.status, reply.text, reply.finish_reason) == ("ok", "Try label smoothing.", "stop")
    assert (reply.input_tokens, reply.output_tokens) == expected_tokens(FakeReply(text="Try label smoothing."))
    assert reply.cost_usd == pytest.approx((reply.input_tokens * 1.25 + reply.output_tokens * 10) / 1e6)
    assert body["max_completion_tokens"] == 10000 and body["reasoning_effort"] == "high"
    assert body["messages"] == [{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}]
    assert srv.requests[0]["headers"]["authorization"] == "Bearer test-openai-key"
    if stream:
        assert body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("stream", [False, True])
def test_openai_hidden_reasoning_is_counted(stream: bool) -> None:
    """Reasoning models return no thinking text; their reasoning tokens come from the usage details."""
    hidden = FakeReply(text="Try label smoothing.", reasoning_tokens=321)
    with FakeLLMServer([hidden]) as srv:
        reply = ask(srv, "openai", stream=stream)
    assert reply.status == "ok" and reply.thinking == "" and reply.thinking_tokens == 321
    assert reply.output_tokens == expected_tokens(hidden)[1] + 321


@pytest.mark.parametrize("stream", [False, True])
def test_openai_compatible_reasoning_content(stream: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    with FakeLLMServer([FakeReply(text="Answer: 42", thinking="six times seven")]) as srv:
        reply = ask(srv, "openai-compatible", stream=stream)
    assert (reply.text, reply.thinking) == ("Answer: 42", "six times seven")
    assert reply.cost_usd == 0.0 and reply.output_tokens > 0        # unknown model: free
    assert srv.requests[0]["body"]["max_tokens"] == 10000
    assert srv.requests[0]["headers"]["authorization"] == "Bearer EMPTY"


@pytest.mark.parametrize("stream", [False, True])
def test_think_tags_move_to_thinking(stream: bool) -> None:
    with FakeLLMServer(["<think>compare two schedules</think>\nUse warmup."]) as srv:
        reply = ask(srv, "openai-compatible", stream=stream)
    assert (reply.thinking, reply.text) == ("compare two schedules", "Use warmup.")


def test_split_think_tags_handles_missing_open_tag_and_plain_text() -> None:
    assert split_think_tags("reasoning here</think>final") == ("reasoning here", "final")
    assert split_think_tags("no tags at all") == ("", "no tags at all")


def test_unknown_model_is_free_unless_priced() -> None:
    assert price_per_mtok("my-local-model") is None and price_per_mtok("gpt-5.4-mini") is None
    assert price_per_mtok("gpt-5-mini-2025-08-07") == (0.25, 2.0)        # a dated id has its family's price
    assert price_per_mtok("claude-opus-4-1-20250805") == (15.0, 75.0)
    with FakeLLMServer(["x" * 400]) as srv:
        reply = ask(srv, "openai-compatible", price_input_per_mtok=1.0, price_output_per_mtok=2.0)
    assert reply.cost_usd == pytest.approx((reply.input_tokens * 1.0 + 100 * 2.0) / 1e6)


def test_fake_server_models_and_health() -> None:
    import openai
    with FakeLLMServer() as srv:
        models = openai.OpenAI(base_url=srv.openai_base_url, api_key="k", max_retries=0).models.list()
        reply = ask(srv, "openai")
    assert [m.id for m in models] == ["fake"]
    assert reply.text == f"echo: {PROMPT}"


# ---- retries, timeouts, errors -----------------------------------------------------------------------------

def test_429_twice_then_ok_honours_retry_after() -> None:
    limited = FakeReply(status=429, text="slow down", retry_after_s=0.25)
    with FakeLLMServer([limited, limited, "finally"]) as srv:
        reply = ask(srv, "anthropic", backoff_s=0.001)
    assert (reply.status, reply.text, reply.attempts) == ("ok", "finally", 3)
    assert reply.wall_s >= 0.5 and len(srv.requests) == 3


def test_500_storm_gives_error_after_max_retries() -> None:
    with FakeLLMServer(lambda request: FakeReply(status=500, text="boom")) as srv:
        reply = ask(srv, "openai", max_retries=2)
    assert reply.status == "error" and reply.attempts == 3 and len(srv.requests) == 3
    assert reply.reason == "500 after 2 retries: boom"


@pytest.mark.parametrize("stream", [False, True])
def test_timeout_is_retried_then_error(stream: bool) -> None:
    with FakeLLMServer(lambda request: FakeReply(text="late", delay_s=6.0)) as srv:
        reply = ask(srv, "openai", timeout_s=0.3, max_retries=1, stream=stream)
    assert reply.status == "error" and "timeout" in reply.reason
    # two 0.3 s attempts; the bound is loose for a loaded CI box but far below one 6 s answer
    assert reply.attempts == 2 and len(srv.requests) == 2 and reply.wall_s < 3.0


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_400_is_not_retried(provider: str) -> None:
    with FakeLLMServer(lambda request: FakeReply(status=400, text="max_tokens too large")) as srv:
        reply = ask(srv, provider)
    assert reply.status == "error" and reply.attempts == 1 and len(srv.requests) == 1
    assert reply.reason == "400: max_tokens too large"


@pytest.mark.parametrize("stream", [False, True])
def test_a_requests_thinking_budget_overrides_the_settings(stream: bool) -> None:
    """The search's per-epoch budget travels on the request: it replaces the settings' budget for that call
    only, 0 turns thinking off (temperature then sent), and an impossible one is a bug, not a silent change."""
    with FakeLLMServer(lambda request: ANSWER) as srv:
        client = make_client(settings_for(srv, "anthropic", stream=stream, thinking_budget_tokens=3000))
        for budget in (1500, None, 0):
            assert client.complete(ChatRequest(PROMPT, thinking_budget_tokens=budget)).ok
        with pytest.raises(LLMConfigError, match="must exceed"):
            client.complete(ChatRequest(PROMPT, thinking_budget_tokens=20000))
    bodies = [r["body"] for r in srv.requests]
    assert [b.get("thinking", {}).get("budget_tokens") for b in bodies] == [1500, 3000, None]
    assert "thinking" not in bodies[2] and bodies[2]["temperature"] == 1.0


@pytest.mark.parametrize("provider", ["openai", "openai-compatible"])
def test_a_thinking_budget_sent_to_a_provider_without_one_is_an_error(provider: str) -> None:
    with FakeLLMServer(["unused"]) as srv:
        client = make_client(settings_for(srv, provider))
        with pytest.raises(LLMConfigError, match="only anthropic"):
            client.complete(ChatRequest(PROMPT, thinking_budget_tokens=3000))
    assert not srv.requests


def test_connection_refused_is_retried_then_error() -> None:
    with FakeLLMServer() as srv:
        url = srv.openai_base_url
    reply = make_client(LLMSettings(provider="openai", model="gpt-5", base_url=url, max_retries=1,
                                    backoff_s=0.01)).complete(ChatRequest("hi"))
    assert reply.status == "error" and reply.reason.startswith("connection after 1 retries") and reply.attempts == 2


def test_empty_output_is_retried_twice_then_error() -> None:
    with FakeLLMServer(lambda request: FakeReply(text="", thinking="all thought, no answer")) as srv:
        reply = ask(srv, "anthropic", thinking_budget_tokens=2000, max_tokens=4000)
    assert reply.status == "error" and "empty output" in reply.reason
    assert reply.attempts == 3 and len(srv.requests) == 3
    assert reply.output_tokens == 3 * rough_tokens("all thought, no answer")   # the tokens were still spent


def test_empty_then_text_is_ok() -> None:
    with FakeLLMServer(["", "second try"]) as srv:
        reply = ask(srv, "openai", stream=True)
    assert (reply.status, reply.text, reply.attempts) == ("ok", "second try", 2)


@pytest.mark.parametrize(("provider", "stream", "finish"), [("openai", True, "length"), ("openai", False, "length"),
                                                             ("anthropic", True, "max_tokens")])
def test_truncated_reply_is_ok_but_marked(provider: str, stream: bool, finish: str) -> None:
    with FakeLLMServer([FakeReply(text="0123456789" * 4, truncate=True)]) as srv:
        reply = ask(srv, provider, stream=stream)
    assert (reply.status, reply.finish_reason, reply.text) == ("ok", finish, "0123456789" * 2)


# ---- accounting, concurrency, callbacks --------------------------------------------------------------------

def test_spend_cap_stops_calls_before_the_server() -> None:
    meter = SpendMeter(cap_usd=0.01)
    with FakeLLMServer(lambda request: FakeReply(text="y" * 4000)) as srv:   # 1000 output tokens at $20/M
        client = make_client(settings_for(srv, "openai", price_output_per_mtok=20.0), meter)
        first = client.complete(ChatRequest("a"))
        rest = client.complete_many([ChatRequest("b"), ChatRequest("c")])
    assert first.status == "ok" and first.cost_usd == pytest.approx(0.02)
    assert [r.status for r in rest] == ["budget", "budget"] and "spend cap 0.01 USD" in rest[0].reason
    assert len(srv.requests) == 1
    assert (meter.calls, meter.output_tokens, meter.spent_usd) == (1, 1000, pytest.approx(0.02))


def test_resumed_meter_at_cap_never_calls() -> None:
    with FakeLLMServer() as srv:
        reply = make_client(settings_for(srv, "openai"), SpendMeter(cap_usd=5.0, spent_usd=5.0)).complete(
            ChatRequest("a"))
    assert reply.status == "budget" and reply.reason == "spend cap 5.00 USD reached" and srv.requests == []


def test_complete_many_runs_in_parallel_and_keeps_order() -> None:
    reqs = [ChatRequest(f"prompt {i}") for i in range(8)]
    # 1 s per call and a loose bound: SLURM jobs of other tests may share the 2 CI cores while this runs
    with FakeLLMServer(lambda r: FakeReply(text=r["body"]["messages"][-1]["content"], delay_s=1.0)) as srv:
        client = make_client(settings_for(srv, "openai", concurrency=8))
        start = time.monotonic()
        replies = client.complete_many(reqs)
        wall_s = time.monotonic() - start
    assert [r.text for r in replies] == [r.prompt for r in reqs]
    assert wall_s < 4.0, f"8 x 1 s calls took {wall_s:.2f} s: not parallel (serial would be 8 s)"


def test_on_reply_sees_every_request_and_reply() -> None:
    seen: list[tuple[str, str]] = []
    with FakeLLMServer(["one", "two"]) as srv:
        client = make_client(settings_for(srv, "openai"), on_reply=lambda q, r: seen.append((q.tag, r.text)))
        client.complete_many([ChatRequest("p", tag="a"), ChatRequest("p", tag="b")])
    assert sorted(seen) in ([("a", "one"), ("b", "two")], [("a", "two"), ("b", "one")])


# ---- replay and record -------------------------------------------------------------------------------------

def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def replay_client(path: Path, **kw: object):
    return make_client(LLMSettings(provider="replay", replay_file=str(path), backoff_s=0.0, **kw))


def test_replay_matches_in_order_and_cycles(tmp_path: Path) -> None:
    book = write_jsonl(tmp_path / "r.jsonl", [{"match": "IDEATE", "text": "idea 1"}, {"text": "fallback"},
                                              {"match": "IDEATE", "text": "idea 2", "thinking": "t"},
                                              {"match": "DIFF", "text": "--- a/x"}])
    client = replay_client(book)
    texts = [client.complete(ChatRequest("IDEATE please")).text for _ in range(3)]
    assert texts == ["idea 1", "idea 2", "idea 1"]
    assert client.complete(ChatRequest("write a", system="DIFF")).text == "--- a/x"
    other = client.complete(ChatRequest("something else"))
    assert (other.text, other.cost_usd, other.output_tokens) == ("fallback", 0.0, rough_tokens("fallback"))


def test_replay_without_any_match_is_an_error(tmp_path: Path) -> None:
    client = replay_client(write_jsonl(tmp_path / "r.jsonl", [{"match": "IDEATE", "text": "idea"}]))
    reply = client.complete(ChatRequest("unrelated"))
    assert reply.status == "error" and reply.reason.startswith("no recorded response matches")
    assert reply.attempts == 1


def test_record_file_round_trips_into_replay(tmp_path: Path) -> None:
    record = tmp_path / "rec.jsonl"
    with FakeLLMServer(lambda r: FakeReply(text="for " + r["body"]["messages"][-1]["content"], thinking="t")) as srv:
        make_client(settings_for(srv, "openai", record_file=str(record))).complete_many(
            [ChatRequest(f"p{i}", tag=f"implement:c{i}:s0") for i in range(4)])
    assert len(record.read_text().splitlines()) == 4
    client = replay_client(record)
    replies = [client.complete(ChatRequest("new prompt", tag=f"implement:c{i}:s0")) for i in (3, 1, 0, 2)]
    assert [(r.text, r.thinking) for r in replies] == [(f"for p{i}", "t") for i in (3, 1, 0, 2)]


def test_fake_server_process_replays_for_a_vllm_style_client(tmp_path: Path) -> None:
    book = write_jsonl(tmp_path / "r.jsonl", [{"match": "capital", "text": "Paris", "thinking": "easy"}])
    proc = subprocess.Popen([sys.executable, "-m", "toolkit.testing.fake_llm", "--port", "0", "--replay", str(book)],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("listening on http://127.0.0.1:")
        url = line.removeprefix("listening on ") + "/v1"
        client = make_client(LLMSettings(provider="openai-compatible", model="m", base_url=url, max_retries=0))
        ok, miss = client.complete_many([ChatRequest("The capital of France?"), ChatRequest("2+2?")])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert (ok.text, ok.thinking) == ("Paris", "easy")
    assert miss.status == "error" and "no recorded response matches" in miss.reason


# ---- config errors raise -----------------------------------------------------------------------------------

def test_config_errors_are_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="anthropic, openai, openai-compatible, replay"):
        LLMSettings(provider="gemini")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(LLMConfigError, match=r"\$MY_KEY"):
        make_client(LLMSettings(provider="anthropic", api_key_env="MY_KEY"))
    with pytest.raises(LLMConfigError, match=r"\$ANTHROPIC_API_KEY"):
        make_client(LLMSettings(provider="anthropic"))
    with pytest.raises(LLMConfigError, match="base_url"):
        make_client(LLMSettings(provider="openai-compatible"))
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    with pytest.raises(LLMConfigError, match="temperature 1.0"):
        make_client(LLMSettings(provider="anthropic", thinking_budget_tokens=3000, temperature=0.7))
    with pytest.raises(LLMConfigError, match="must exceed thinking_budget_tokens"):
        make_client(LLMSettings(provider="anthropic", thinking_budget_tokens=3000, max_tokens=3000))


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_the_servers_should_retry_header_wins_over_the_status(provider: str) -> None:
    """As in the official SDKs: `x-should-retry: false` stops retries of a 429, `true` retries even a 400."""
    no = FakeReply(status=429, text="quota gone", headers=(("x-should-retry", "false"),))
    with FakeLLMServer(lambda request: no) as srv:
        reply = ask(srv, provider, max_retries=5, backoff_s=0.001)
    assert reply.status == "error" and reply.attempts == 1 and len(srv.requests) == 1
    yes = FakeReply(status=400, text="try again", headers=(("x-should-retry", "true"),))
    with FakeLLMServer([yes, "fine"]) as srv:
        reply = ask(srv, provider, backoff_s=0.001)
    assert (reply.status, reply.attempts) == ("ok", 2)


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
def test_a_stream_cut_short_is_asked_again_and_every_request_is_counted(provider: str) -> None:
    """The SDK retries the 503 (before the stream began); our loop re-asks the cut stream, which no SDK can see.
    `attempts` counts all four requests, whichever layer sent them."""
    unavailable = FakeReply(status=503, text="busy", retry_after_s=0.0)
    with FakeLLMServer([unavailable, FakeReply(text="half of an answer " * 8, cut=True), unavailable, "whole"]) as srv:
        reply = ask(srv, provider, stream=True, backoff_s=0.001)
    assert (reply.status, reply.text, reply.attempts, len(srv.requests)) == ("ok", "whole", 4, 4)


def test_a_stream_cut_short_every_time_ends_as_an_error_after_max_retries() -> None:
    with FakeLLMServer(lambda request: FakeReply(text="never finished " * 8, cut=True)) as srv:
        reply = ask(srv, "openai", stream=True, max_retries=2, backoff_s=0.001)
    assert reply.status == "error" and reply.attempts == 3 and len(srv.requests) == 3
    assert reply.reason.startswith("connection after 2 retries: stream ended before a finish_reason")


def test_a_retry_after_given_as_an_http_date_is_honoured() -> None:
    import email.utils
    import time as _time

    when = email.utils.formatdate(_time.time() + 2, usegmt=True)    # whole seconds: 1-2 s from now
    limited = FakeReply(status=429, text="slow down", headers=(("retry-after", when),))
    with FakeLLMServer([limited, "finally"]) as srv:
        reply = ask(srv, "openai", backoff_s=0.001)
    assert (reply.status, reply.text, reply.attempts) == ("ok", "finally", 2)
    assert reply.wall_s >= 0.9, reply.wall_s     # waited for the date, not the 1 ms backoff
