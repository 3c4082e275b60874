"""A real OpenAI-compatible HTTP server on 127.0.0.1, whose answers (and faults) tests pick.

    with FakeUpstream() as upstream:
        upstream.respond(Reply(text="hi", usage=(3, 1)), ErrorReply(429))
        provider = OpenAICompatibleProvider(upstream.url, "sk-test")
        provider.complete(...)                      # served by Reply
        provider.complete(...)                      # served by ErrorReply(429)
        assert upstream.requests[0].json["max_tokens"] == 16

Each request takes the next behaviour queued with `respond()`, or `upstream.default`
(a plain `Reply()`) once the queue is empty. The server speaks HTTP/1.1 with keep-alive,
Content-Length for JSON and chunked encoding for streams, like a real upstream, and
records every request it receives in `upstream.requests`.

A behaviour is any object with `serve(request: RecordedRequest, out: Out)`: subclass
`Behaviour` (or write a small class) to inject a fault the ones below do not cover.
`Out` has the primitives: send_json, send_raw, start_stream / event / comment /
end_stream, reset (a TCP RST), sleep and wait (both cut short when the server stops).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# How long a stream waits on a test's gate before giving up. It then resets the
# connection, so a client that buffers (and so never lets the test open the gate)
# fails loudly instead of passing late.
GATE_TIMEOUT = 5.0


class _Stop(Exception):
    """The server is shutting down, or the connection was reset on purpose."""


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    client_port: int  # the same port on two requests means a reused (pooled) connection
    # Set when a write to the client failed: it hung up before the answer was complete.
    aborted: threading.Event = field(default_factory=threading.Event)

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


class Out:
    """What a behaviour writes with: thin helpers over the request handler's socket."""

    def __init__(self, handler: _Handler, stopping: threading.Event) -> None:
        self._handler = handler
        self._stopping = stopping

    def sleep(self, seconds: float) -> None:
        if seconds > 0 and self._stopping.wait(seconds):
            raise _Stop

    def wait(self, event: threading.Event, timeout: float = GATE_TIMEOUT) -> bool:
        """Wait for a test's event; False if it was not set in time."""
        step = 0.05
        waited = 0.0
        while not event.wait(step):
            if self._stopping.is_set():
                raise _Stop
            waited += step
            if waited >= timeout:
                return False
        return True

    def send_raw(
        self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
    ) -> None:
        h = self._handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def send_json(self, status: int, payload: Any) -> None:
        self.send_raw(status, json.dumps(payload).encode(), "application/json")

    def start_stream(self, status: int = 200) -> None:
        h = self._handler
        h.send_response(status)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()

    def chunk(self, data: bytes) -> None:
        """One HTTP chunk, on the wire now (the handler's wfile is unbuffered)."""
        self._handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def event(self, payload: Any) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.chunk(f"data: {data}\n\n".encode())

    def comment(self, text: str = "OPENROUTER PROCESSING") -> None:
        self.chunk(f": {text}\n\n".encode())

    def end_stream(self) -> None:
        self._handler.wfile.write(b"0\r\n\r\n")

    def reset(self) -> None:
        """Close the socket with a TCP RST (SO_LINGER 0): a connection reset by peer."""
        h = self._handler
        h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        h.rfile.close()  # makefile() holds a reference that would delay the real close
        h.connection.close()
        h.close_connection = True
        raise _Stop


def _echo(request: RecordedRequest) -> str:
    messages = (request.json or {}).get("messages") or [{}]
    content = messages[-1].get("content")
    return f"echo: {content}" if isinstance(content, str) else "echo"


def _model(request: RecordedRequest) -> str:
    return (request.json or {}).get("model") or "fake/model"


def _usage(usage: tuple[int, int]) -> dict[str, int]:
    return {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}


@dataclass(kw_only=True)
class Behaviour:
    delay: float = 0.0  # seconds before anything is sent (longer than a timeout: a hang)

    def serve(self, request: RecordedRequest, out: Out) -> None:
        out.sleep(self.delay)
        self.answer(request, out)

    def answer(self, request: RecordedRequest, out: Out) -> None:
        raise NotImplementedError


@dataclass(kw_only=True)
class Reply(Behaviour):
    """A normal chat completion. text=None echoes the last message; usage=None omits it."""

    text: str | None = None
    usage: tuple[int, int] | None = (12, 5)  # (prompt_tokens, completion_tokens)
    finish_reason: str | None = "stop"

    def answer(self, request: RecordedRequest, out: Out) -> None:
        body: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": _model(request),
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": _echo(request) if self.text is None else self.text,
                    },
                    "finish_reason": self.finish_reason,
                }
            ],
        }
        if self.usage is not None:
            body["usage"] = _usage(self.usage)
        out.send_json(200, body)


@dataclass(kw_only=True)
class StreamReply(Behaviour):
    """An SSE stream as OpenAI sends it with stream_options.include_usage.

    An opening role chunk, one chunk per entry of `chunks`, a finish chunk, a usage
    chunk (choices []), then `data: [DONE]`. Faults, counted in content chunks sent:
    `reset_after=n` resets the connection, `error_after=n` sends an OpenRouter-style
    `error` chunk and ends the stream. `gates={i: event}` holds chunk i until the test
    sets the event; `interval` sleeps between chunks. finish_reason=None and done=False
    give a stream that ends cleanly but unfinished.
    """

    chunks: Sequence[str] = ("Hello", ", ", "world")
    usage: tuple[int, int] | None = (12, 3)
    finish_reason: str | None = "stop"
    usage_in_finish_chunk: bool = False  # OpenRouter may put usage on the finish chunk
    interval: float = 0.0
    gates: Mapping[int, threading.Event] = field(default_factory=dict)
    reset_after: int | None = None
    error_after: int | None = None
    error: Mapping[str, Any] = field(
        default_factory=lambda: {"code": 502, "message": "Provider disconnected unexpectedly"}
    )
    comments: bool = True  # ": OPENROUTER PROCESSING" keep-alives before and between
    done: bool = True

    def answer(self, request: RecordedRequest, out: Out) -> None:
        model = _model(request)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            out.event(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    "usage": None,
                    **extra,
                }
            )

        out.start_stream()
        if self.comments:
            out.comment()
        chunk({"role": "assistant", "content": ""})
        for i in range(len(self.chunks) + 1):
            if self.reset_after == i:
                out.reset()
            if self.error_after == i:
                chunk({"content": ""}, "error", error=dict(self.error))
                out.end_stream()
                return
            if i == len(self.chunks):
                break
            if i in self.gates:
                if not out.wait(self.gates[i]):
                    out.reset()
            elif i:
                out.sleep(self.interval)
            chunk({"content": self.chunks[i]})
            if self.comments and i == 0:
                out.comment()
        usage = _usage(self.usage) if self.usage is not None else None
        if self.finish_reason is not None:
            if self.usage_in_finish_chunk and usage:
                chunk({}, self.finish_reason, usage=usage)
            else:
                chunk({}, self.finish_reason)
        if usage and not self.usage_in_finish_chunk:
            out.event(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        if self.done:
            out.event("[DONE]")
        out.end_stream()


@dataclass(kw_only=True)
class ErrorReply(Behaviour):
    """An HTTP error with an OpenAI-style body: {"error": {message, type, code}}."""

    status: int = 500
    message: str = "The server had an error while processing your request."
    type: str = "invalid_request_error"
    code: str | int | None = None

    def answer(self, request: RecordedRequest, out: Out) -> None:
        error = {"message": self.message, "type": self.type, "param": None, "code": self.code}
        out.send_json(self.status, {"error": error})


@dataclass(kw_only=True)
class RawReply(Behaviour):
    """Any status and body as given: HTML error pages, broken JSON, …"""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    def answer(self, request: RecordedRequest, out: Out) -> None:
        out.send_raw(self.status, self.body, self.content_type)


@dataclass(kw_only=True)
class Reset(Behaviour):
    """Read the request, then reset the connection without answering."""

    def answer(self, request: RecordedRequest, out: Out) -> None:
        out.reset()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, like real upstreams
    timeout = 10  # idle keep-alive connections are dropped after this
    server: _Server

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        request = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=self.rfile.read(length),
            client_port=self.client_address[1],
        )
        fake = self.server.fake
        with fake.lock:
            fake.requests.append(request)
            behaviour = fake.queue.popleft() if fake.queue else fake.default
        try:
            behaviour.serve(request, Out(self, fake.stopping))
        except _Stop:
            self.close_connection = True
        except (ConnectionError, TimeoutError):
            request.aborted.set()
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet tests


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # never wait on a handler a test left hanging

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A bug in a behaviour: keep it for the test, and show it.
        self.fake.errors.append(sys.exc_info()[1])
        traceback.print_exc()


# What tests that put the engine behind a FakeUpstream configure (tests/conftest.py's
# `upstream_config`): a model priced like local/markdown, and the engine's upstream key.
FAKE_MODEL = "fake/model"
FAKE_UPSTREAM_KEY = "sk-upstream-" + "u" * 40


class FakeUpstream:
    def __init__(self, default: Behaviour | None = None) -> None:
        self.default: Behaviour = default or Reply()
        self.requests: list[RecordedRequest] = []
        self.errors: list[BaseException | None] = []
        self.queue: deque[Behaviour] = deque()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def respond(self, *behaviours: Behaviour) -> None:
        """Queue behaviours for the next requests, in order."""
        with self.lock:
            self.queue.extend(behaviours)

    @property
    def port(self) -> int:
        assert self._server is not None, "use FakeUpstream as a context manager"
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """The base URL a provider takes (requests go to {url}/chat/completions)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def last(self) -> RecordedRequest:
        return self.requests[-1]

    def __enter__(self) -> FakeUpstream:
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()  # wakes behaviours that sleep or wait on a gate
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
