"""A fake OpenAI-compatible server on 127.0.0.1 for tests that cannot run a real LLM.

It speaks the real protocol over real HTTP (``POST /v1/chat/completions``, ``GET /v1/models``,
Bearer auth, OpenAI error bodies), so the real ``openai`` client and our retry/cache code run
unchanged against it. Each test programs it:

- ``push(FakeReply(...), ...)`` queues replies, served in arrival order: a status code with an
  error body, a delay (to make the client time out), a dropped connection, a raw body (garbage,
  truncated JSON), or a message content with a ``finish_reason``;
- when the queue is empty, ``responder(body) -> FakeReply`` answers (default: a 500 saying
  nothing was programmed); ``dialogue_responder()`` answers our task prompts sensibly;
- ``requests`` records every request (path, headers, JSON body), ``max_in_flight`` the most
  requests it was serving at once.

Usage::

    with FakeOpenAIServer(api_key="k") as srv:
        srv.push(FakeReply(status=503), FakeReply.json_content({"turns": [...]}))
        client = LLMClient([srv.base_url], api_key="k", model=srv.model)
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kespeechchat.llm.tasks import JUDGE_FLAGS, JUDGE_LABELS, extract_dialogue


@dataclass
class FakeReply:
    """One programmed answer; by default a 200 chat completion with ``content``."""

    status: int = 200
    content: str | None = "{}"
    finish_reason: str = "stop"
    delay_s: float = 0.0
    raw_body: bytes | None = None  # sent as-is instead of a chat completion (garbage, truncated JSON)
    drop_connection: bool = False  # close the socket without answering
    headers: dict[str, str] = field(default_factory=dict)
    error_message: str = "programmed error"
    tokens_in: int | None = None
    tokens_out: int | None = None

    @classmethod
    def json_content(cls, value: Any, **kw: Any) -> FakeReply:
        return cls(content=json.dumps(value, ensure_ascii=False), **kw)

    @classmethod
    def error(cls, status: int, message: str = "programmed error", **kw: Any) -> FakeReply:
        return cls(status=status, content=None, error_message=message, **kw)


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any
    index: int


Responder = Callable[[dict], FakeReply]


def _unprogrammed(body: dict) -> FakeReply:
    return FakeReply.error(500, "fake server: no reply programmed for this request")


def dialogue_responder(transform: Callable[[str, str], str] | None = None, label: str = "ok") -> Responder:
    """Answer our task prompts: echo the dialogue's turns (through ``transform(role, text)``) when
    the schema asks for turns, or judge answers that lead to ``label`` when it asks for those."""
    if label not in JUDGE_LABELS:
        raise ValueError(f"label {label!r} not in {JUDGE_LABELS}")
    verdict = {
        name: (bad_when if reason == label else not bad_when) for name, bad_when, reason in JUDGE_FLAGS
    }

    def respond(body: dict) -> FakeReply:
        schema = (
            ((body.get("response_format") or {}).get("json_schema") or {}).get("schema")
            or (body.get("response_format") or {}).get("schema")
            or {}
        )
        props = schema.get("properties", {})
        if set(verdict) <= set(props):
            return FakeReply.json_content(verdict)
        roles, texts = extract_dialogue(body["messages"][-1]["content"])
        fn = transform or (lambda role, text: text)
        return FakeReply.json_content(
            {"turns": [{"role": r, "text": fn(r, t)} for r, t in zip(roles, texts, strict=True)]}
        )

    return respond


class FakeOpenAIServer:
    """Threaded HTTP server on a random loopback port; a context manager."""

    def __init__(
        self,
        *,
        api_key: str | None = "test-key",
        model: str = "fake-model",
        responder: Responder | None = None,
    ):
        self.api_key = api_key
        self.model = model
        self.responder: Responder = responder or _unprogrammed
        self.requests: list[RecordedRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._queue: deque[FakeReply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- programming -------------------------------------------------------------------------
    def push(self, *replies: FakeReply) -> None:
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def chat_requests(self) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> FakeOpenAIServer:
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- used by the handler -------------------------------------------------------------------
    def _record(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append(RecordedRequest(method, path, headers, body, len(self.requests)))

    def _next_reply(self, body: dict) -> FakeReply:
        with self._lock:
            reply = self._queue.popleft() if self._queue else None
        return reply if reply is not None else self.responder(body)

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Server(ThreadingHTTPServer):
    # socketserver's default listen backlog is 5: a client opening dozens of connections at once
    # would see refused connections that no real server gives
    request_queue_size = 256


class _Handler(BaseHTTPRequestHandler):
    fake: FakeOpenAIServer
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), headers)

    def _send_bytes(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _authorised(self) -> bool:
        key = self.fake.api_key
        if key is None or self.headers.get("Authorization") == f"Bearer {key}":
            return True
        self._send_json(
            401,
            {
                "error": {
                    "message": "Invalid API key",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            },
        )
        return False

    def do_GET(self) -> None:
        self.fake._record("GET", self.path, _lower(self.headers), None)
        if not self._authorised():
            return
        if self.path.rstrip("/") == "/v1/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [{"id": self.fake.model, "object": "model", "created": 0, "owned_by": "fake"}],
                },
            )
        else:
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            body = None
        self.fake._record("POST", self.path, _lower(self.headers), body)
        if not self._authorised():
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send_json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        if not isinstance(body, dict):
            self._send_json(
                400, {"error": {"message": "body is not a JSON object", "type": "invalid_request_error"}}
            )
            return
        self.fake._enter()
        try:
            self._answer(body, self.fake._next_reply(body))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout); that is the point of a delay
        finally:
            self.fake._leave()

    def _answer(self, body: dict, reply: FakeReply) -> None:
        if reply.delay_s > 0:
            self.fake._stopping.wait(reply.delay_s)
        if reply.drop_connection:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.raw_body is not None:
            self._send_bytes(reply.status, reply.raw_body, reply.headers)
            return
        if reply.status != 200:
            self._send_json(
                reply.status,
                {"error": {"message": reply.error_message, "type": "server_error", "code": reply.status}},
                reply.headers,
            )
            return
        prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        tokens_in = reply.tokens_in if reply.tokens_in is not None else prompt_chars // 4 + 1
        tokens_out = reply.tokens_out if reply.tokens_out is not None else len(reply.content or "") // 4 + 1
        self._send_json(
            200,
            {
                "id": f"chatcmpl-fake-{len(self.fake.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.fake.model),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.content},
                        "finish_reason": reply.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": tokens_in,
                    "completion_tokens": tokens_out,
                    "total_tokens": tokens_in + tokens_out,
                },
            },
            reply.headers,
        )


def _lower(headers: Any) -> dict[str, str]:
    """Header names are case-insensitive; record them lower-cased."""
    return {k.lower(): v for k, v in headers.items()}
