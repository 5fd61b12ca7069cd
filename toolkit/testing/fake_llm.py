"""A loopback fake of the OpenAI and Anthropic HTTP APIs, so tests run the REAL SDKs over real sockets.

Mocking libraries patch `httpx`, but the current SDKs speak `httpx2`, so such mocks silently miss. This server
(stdlib only) binds 127.0.0.1 on an ephemeral port and serves:
  POST /v1/chat/completions   OpenAI chat completions, streamed (SSE chunks + usage chunk + [DONE]) or not
  POST /v1/messages           Anthropic messages, streamed (message_start ... message_stop) or not
  POST /v1/embeddings         OpenAI embeddings: a hashed bag of words per input (similar texts, similar vectors),
                              as float lists or base64 (the openai SDK asks for base64 unless told otherwise)
  GET  /v1/models, GET /health
As a process, in place of a vLLM server:  python -m toolkit.testing.fake_llm --port N [--replay FILE]
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import json
import math
import os
import re
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from toolkit.llm.replay import ReplayBook, rough_tokens

CHUNK_CHARS = 16      # streamed text arrives in pieces this long, so clients must join deltas
EMBEDDING_DIM = 256   # unless the request asks for `dimensions`
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")


@dataclass
class FakeReply:
    text: str = ""
    thinking: str = ""
    status: int = 200                    # != 200: an API error whose message is `text`
    delay_s: float = 0.0                 # sleep before answering (timeouts, concurrency)
    retry_after_s: float | None = None   # sent as a Retry-After header
    truncate: bool = False               # half the text, finish_reason "length" / stop_reason "max_tokens"
    reasoning_tokens: int = 0            # hidden reasoning (OpenAI reasoning models): counted in usage, no text
    headers: tuple[tuple[str, str], ...] = ()   # more headers on an error answer (x-should-retry, a dated Retry-After)
    cut: bool = False                    # a stream that stops half-way, with no finish event (a dropped connection)


Responder = Callable[[dict], FakeReply]


class FakeLLMServer:
    """Context manager: `with FakeLLMServer([...]) as srv: OpenAI(base_url=srv.openai_base_url, ...)`."""

    def __init__(self, responder: Responder | Sequence[FakeReply | str] | None = None, port: int = 0,
                 api_key: str = "") -> None:
        self.api_key = api_key            # like vLLM's --api-key: a request without it gets 401
        self.requests: list[dict] = []   # every POST, as {"path", "body", "headers" (lower-case names)}
        self._respond = _as_responder(responder)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_class(self))
        self._httpd.daemon_threads = True    # a handler still sleeping on delay_s must not block shutdown
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def openai_base_url(self) -> str:
        return self.base_url + "/v1"

    def start(self) -> FakeLLMServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-llm",
                                        daemon=True)   # poll often: stop() waits one poll
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread until interrupted (process mode)."""
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reply_for(self, request: dict) -> FakeReply:
        with self._lock:
            self.requests.append(request)
            return self._respond(request)


def _as_responder(responder: Responder | Sequence[FakeReply | str] | None) -> Responder:
    if responder is None:
        return lambda request: FakeReply(text="echo: " + _last_user_text(request["body"]))
    if callable(responder):
        return responder
    queue = iter([FakeReply(text=r) if isinstance(r, str) else r for r in responder])
    exhausted = FakeReply(status=400, text="fake server: the list of replies is exhausted")
    return lambda request: next(queue, exhausted)


def replay_responder(path: Path) -> Responder:
    """Answers from a replay JSONL with the client's matching rules (request text = system + prompt)."""
    book = ReplayBook.load(path)

    def respond(request: dict) -> FakeReply:
        entry = book.pick(_prompt_text(request["body"]))
        if entry is None:
            return FakeReply(status=400, text=f"no recorded response matches this request (in {path})")
        return FakeReply(text=entry["text"], thinking=entry.get("thinking", ""))
    return respond


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content or [] if isinstance(block, dict))


def _prompt_text(body: dict) -> str:
    parts = [_content_text(body.get("system", ""))]
    parts += [_content_text(m.get("content")) for m in body.get("messages", [])]
    return "\n".join(parts)


def _last_user_text(body: dict) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return _content_text(users[-1].get("content")) if users else ""


def _delivered(reply: FakeReply) -> str:
    return reply.text[: len(reply.text) // 2] if reply.truncate else reply.text


def _pieces(text: str) -> Iterator[str]:
    return (text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS))


def _usage(body: dict, reply: FakeReply) -> tuple[int, int]:
    return rough_tokens(_prompt_text(body)), rough_tokens(reply.thinking + _delivered(reply))


# ---- OpenAI chat completions -------------------------------------------------------------------------------

def _openai_finish(reply: FakeReply) -> str:
    return "length" if reply.truncate else "stop"


def _openai_usage(body: dict, reply: FakeReply) -> dict:
    prompt, completion = _usage(body, reply)
    completion += reply.reasoning_tokens
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": prompt + completion}
    if reply.reasoning_tokens:
        usage["completion_tokens_details"] = {"reasoning_tokens": reply.reasoning_tokens}
    return usage


def _openai_whole(body: dict, reply: FakeReply) -> dict:
    message: dict[str, Any] = {"role": "assistant", "content": _delivered(reply)}
    if reply.thinking:
        message["reasoning_content"] = reply.thinking
    choice = {"index": 0, "message": message, "finish_reason": _openai_finish(reply)}
    return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", ""), "choices": [choice], "usage": _openai_usage(body, reply)}


def _openai_chunk(body: dict, choices: list, usage: dict | None = None) -> str:
    chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
             "model": body.get("model", ""), "choices": choices, "usage": usage}
    return f"data: {json.dumps(chunk)}\n\n"


def _openai_stream(body: dict, reply: FakeReply) -> Iterator[str]:
    deltas = [{"reasoning_content": p} for p in _pieces(reply.thinking)]
    deltas += [{"content": p} for p in _pieces(_delivered(reply))]
    for delta in [{"role": "assistant", "content": ""}, *deltas]:
        yield _openai_chunk(body, [{"index": 0, "delta": delta, "finish_reason": None}])
    yield _openai_chunk(body, [{"index": 0, "delta": {}, "finish_reason": _openai_finish(reply)}])
    if (body.get("stream_options") or {}).get("include_usage"):
        yield _openai_chunk(body, [], _openai_usage(body, reply))
    yield "data: [DONE]\n\n"


# ---- Anthropic messages ------------------------------------------------------------------------------------

def _anthropic_blocks(reply: FakeReply) -> list[dict]:
    thinking = [{"type": "thinking", "thinking": reply.thinking, "signature": "fake"}] if reply.thinking else []
    return [*thinking, {"type": "text", "text": _delivered(reply)}]


def _anthropic_message(body: dict, content: list, stop: str | None, usage: dict) -> dict:
    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model", ""),
            "content": content, "stop_reason": stop, "stop_sequence": None, "usage": usage}


def _anthropic_stop(reply: FakeReply) -> str:
    return "max_tokens" if reply.truncate else "end_turn"


def _anthropic_whole(body: dict, reply: FakeReply) -> dict:
    prompt, completion = _usage(body, reply)
    usage = {"input_tokens": prompt, "output_tokens": completion}
    return _anthropic_message(body, _anthropic_blocks(reply), _anthropic_stop(reply), usage)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n"


def _anthropic_stream(body: dict, reply: FakeReply) -> Iterator[str]:
    prompt, completion = _usage(body, reply)
    start = _anthropic_message(body, [], None, {"input_tokens": prompt, "output_tokens": 1})
    yield _sse("message_start", {"message": start})
    for index, block in enumerate(_anthropic_blocks(reply)):
        yield from _anthropic_block_events(index, block)
    yield _sse("message_delta", {"delta": {"stop_reason": _anthropic_stop(reply), "stop_sequence": None},
                                 "usage": {"output_tokens": completion}})
    yield _sse("message_stop", {})


def _anthropic_block_events(index: int, block: dict) -> Iterator[str]:
    kind = block["type"]
    yield _sse("content_block_start", {"index": index, "content_block": {**block, kind: ""}})
    for piece in _pieces(block[kind]):
        yield _sse("content_block_delta", {"index": index, "delta": {"type": f"{kind}_delta", kind: piece}})
    if kind == "thinking":
        yield _sse("content_block_delta", {"index": index, "delta": {"type": "signature_delta",
                                                                     "signature": "fake"}})
    yield _sse("content_block_stop", {"index": index})


# ---- OpenAI embeddings ------------------------------------------------------------------------------------

def fake_embedding(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    """A unit vector from hashed lower-cased words (signed feature hashing): deterministic across processes, and
    texts sharing words get a high cosine. Not a semantic model: synonyms share nothing."""
    vector = [0.0] * dim
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        h = zlib.crc32(word.encode())
        vector[h % dim] += 1.0 if h & (1 << 31) else -1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def _embedding_value(vector: list[float], encoding: str | None) -> list[float] | str:
    """As the real API: base64 of little-endian float32 when asked, else a list of floats."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if encoding == "base64" else vector


def _openai_embeddings(body: dict, reply: FakeReply) -> dict:
    texts = body.get("input", [])
    texts = [texts] if isinstance(texts, str) else list(texts)
    dim = int(body.get("dimensions") or EMBEDDING_DIM)
    data = [{"object": "embedding", "index": i,
             "embedding": _embedding_value(fake_embedding(str(t), dim), body.get("encoding_format"))}
            for i, t in enumerate(texts)]
    tokens = sum(rough_tokens(str(t)) for t in texts)
    return {"object": "list", "data": data, "model": body.get("model", ""),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def _never_streamed(body: dict, reply: FakeReply) -> Iterator[str]:
    """Embeddings have no streamed form (the API has no `stream` flag): a request that sets one gets nothing."""
    return iter(())


# path -> (whole answer, stream of SSE events)
_ROUTES: dict[str, tuple[Callable[[dict, FakeReply], dict], Callable[[dict, FakeReply], Iterator[str]]]] = {
    "/v1/chat/completions": (_openai_whole, _openai_stream),
    "/v1/messages": (_anthropic_whole, _anthropic_stream),
    "/v1/embeddings": (_openai_embeddings, _never_streamed),
}


def _error_body(reply: FakeReply) -> dict:
    """One shape both SDKs parse: Anthropic's {"type": "error", "error": {...}} holds OpenAI's "error" too."""
    message = reply.text or f"fake error {reply.status}"
    return {"type": "error", "error": {"type": "fake_error", "message": message, "code": reply.status}}


def _handler_class(fake: FakeLLMServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        server_fake = fake
    return Handler


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeLLMServer

    def log_message(self, format: str, *args: Any) -> None:   # keep test output clean
        pass

    def _authorized(self) -> bool:
        key = self.server_fake.api_key
        if not key or self.headers.get("authorization", "") == f"Bearer {key}":
            return True
        self._send_json(401, {"error": {"message": "Unauthorized"}})
        return False

    def do_GET(self) -> None:
        if not self._authorized():
            return
        pages: dict[str, dict] = {"/health": {"status": "ok"},
                                  "/v1/models": {"object": "list", "data": [
                                      {"id": "fake", "object": "model", "created": 0, "owned_by": "fake"}]}}
        path = self.path.split("?")[0]
        self._send_json(200 if path in pages else 404, pages.get(path, {"error": {"message": "not found"}}))

    def do_POST(self) -> None:
        if not self._authorized():
            return
        path = self.path.split("?")[0]
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.loads(raw or b"{}")
        if path not in _ROUTES:
            return self._send_json(404, {"error": {"message": f"fake server has no route {path}"}})
        headers = {name.lower(): value for name, value in self.headers.items()}
        reply = self.server_fake.reply_for({"path": path, "body": body, "headers": headers})
        time.sleep(reply.delay_s)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):   # the client gave up (its timeout)
            self._answer(path, body, reply)

    def _answer(self, path: str, body: dict, reply: FakeReply) -> None:
        whole, stream = _ROUTES[path]
        if reply.status != 200:
            extra = {} if reply.retry_after_s is None else {"retry-after": f"{reply.retry_after_s:g}"}
            return self._send_json(reply.status, _error_body(reply), {**extra, **dict(reply.headers)})
        if not body.get("stream"):
            return self._send_json(200, whole(body, reply))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()    # HTTP/1.0: the stream ends when the connection closes
        events = list(stream(body, reply))
        for event in events[:len(events) // 2] if reply.cut else events:
            self.wfile.write(event.encode())

    def _send_json(self, status: int, data: dict, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(data).encode()
        self.send_response(status)
        for name, value in {"content-type": "application/json", "content-length": str(len(payload)),
                            **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Loopback fake of the OpenAI/Anthropic APIs (tests only).")
    parser.add_argument("--host", default="127.0.0.1", choices=LOOPBACK_HOSTS, help="loopback only")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (printed)")
    parser.add_argument("--replay", type=Path, default=None, help="replay JSONL to answer from (else echo)")
    args = parser.parse_args(argv)
    # like vLLM: VLLM_API_KEY in the environment makes every request need it
    server = FakeLLMServer(replay_responder(args.replay) if args.replay else None, port=args.port,
                           api_key=os.environ.get("VLLM_API_KEY", ""))
    print(f"listening on {server.base_url}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
