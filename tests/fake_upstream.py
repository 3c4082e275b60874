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

`Model()` answers like a model that follows the request (tool calls when it has tools,
JSON when asked for a schema, logprobs when asked, plain or streamed as asked): the
compatibility tests put real client packages in front of it.

A behaviour is any object with `serve(request: RecordedRequest, out: Out)`: subclass
`Behaviour` (or write a small class) to inject a fault the ones below do not cover.
`Out` has the primitives: send_json, send_raw, start_stream / event / comment /
end_stream, reset (a TCP RST), sleep and wait (both cut short when the server stops).
"""

from __future__ import annotations

import json
import re
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
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: Mapping[str, str] | None = None,
    ) -> None:
        h = self._handler
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def send_json(
        self, status: int, payload: Any, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_raw(status, json.dumps(payload).encode(), "application/json", headers)

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


def _text(content: Any) -> str:
    """A message's text: a string, or its text parts joined."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


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


def logprobs_of(text: str) -> dict[str, Any]:
    """Chat-completions logprobs for a text, one entry per word: what OpenAI sends."""
    tokens = [t for t in text.split(" ") if t] or [text]
    return {
        "content": [
            {
                "token": token,
                "logprob": -0.25,
                "bytes": list(token.encode()),
                "top_logprobs": [{"token": token, "logprob": -0.25, "bytes": list(token.encode())}],
            }
            for token in tokens
        ],
        "refusal": None,
    }


@dataclass(kw_only=True)
class Reply(Behaviour):
    """A normal chat completion. text=None echoes the last message; usage=None omits it.

    `tool_calls` (OpenAI's shape, without `index`), `logprobs` and `refusal` are put in
    the message and choice as OpenAI does.
    """

    text: str | None = None
    usage: tuple[int, int] | None = (12, 5)  # (prompt_tokens, completion_tokens)
    finish_reason: str | None = "stop"
    tool_calls: Sequence[Mapping[str, Any]] | None = None
    logprobs: Mapping[str, Any] | None = None
    refusal: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # top-level fields

    def answer(self, request: RecordedRequest, out: Out) -> None:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": _echo(request) if self.text is None else self.text,
        }
        if self.refusal is not None:
            message["refusal"] = self.refusal
        if self.tool_calls is not None:
            message["tool_calls"] = [dict(call) for call in self.tool_calls]
        body: dict[str, Any] = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 0,
            "model": _model(request),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": None if self.logprobs is None else dict(self.logprobs),
                }
            ],
            **self.extra,
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
    # Streamed after the text as OpenAI does: per call, a delta with its index, id and
    # name, then its arguments in `argument_pieces` pieces.
    tool_calls: Sequence[Mapping[str, Any]] = ()
    argument_pieces: int = 2
    logprobs: bool = False  # logprobs on each content chunk

    def answer(self, request: RecordedRequest, out: Out) -> None:
        model = _model(request)

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
            if self.logprobs and delta.get("content"):
                choice["logprobs"] = logprobs_of(delta["content"])
            out.event(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": 0,
                    "model": model,
                    "choices": [choice],
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
        for index, call in enumerate(self.tool_calls):
            function = call["function"]
            head = {"index": index, "id": call["id"], "type": "function"}
            chunk(
                {"tool_calls": [{**head, "function": {"name": function["name"], "arguments": ""}}]}
            )
            arguments = function["arguments"]
            step = max(1, -(-len(arguments) // self.argument_pieces))
            for start in range(0, len(arguments), step):
                piece = arguments[start : start + step]
                chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
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
    headers: Mapping[str, str] = field(default_factory=dict)  # e.g. {"Retry-After": "7"}

    def answer(self, request: RecordedRequest, out: Out) -> None:
        error = {"message": self.message, "type": self.type, "param": None, "code": self.code}
        out.send_json(self.status, {"error": error}, self.headers)


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


def example_of(schema: Any) -> Any:
    """A small value that fits a JSON schema: what a model asked for that schema writes."""
    if not isinstance(schema, Mapping):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            options = [o for o in schema[key] if isinstance(o, Mapping) and o.get("type") != "null"]
            return example_of(options[0] if options else schema[key][0])
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        properties = schema.get("properties") or {}
        return {name: example_of(sub) for name, sub in properties.items()}
    if kind == "array":
        return [example_of(schema.get("items") or {"type": "string"})] * max(
            1, schema.get("minItems", 1)
        )
    return {"string": "Paris", "integer": 3, "number": 1.5, "boolean": True, "null": None}.get(
        kind, "Paris"
    )


@dataclass(kw_only=True)
class Model(Behaviour):
    """Answers like a model that does what the request asks, plain or streamed.

    With tools (and tool_choice not "none"), unless the last message is a tool's result:
    a call of the chosen (or first) tool with arguments that fit its schema,
    finish_reason "tool_calls". With a json_schema response_format: JSON that fits it;
    json_object: {"answer": "ok"}. Otherwise the text `text`, or "Tool said: …" after a
    tool result. Logprobs when asked for. `delay` holds the answer (a slow model).
    """

    text: str = "Hello from the fake model"
    usage: tuple[int, int] = (12, 5)
    # Prompts already held back by a "[slow N once]" marker (see `serve`).
    slowed: set[str] = field(default_factory=set)

    def serve(self, request: RecordedRequest, out: Out) -> None:
        """A last message with "[slow 1.5]" is answered 1.5 s late; "[slow 1.5 once]"
        only the first time that message comes (a retry is then fast)."""
        messages = (request.json or {}).get("messages") or [{}]
        content = _text(messages[-1].get("content"))
        marker = re.search(r"\[slow ([0-9.]+)( once)?\]", content)
        if marker and not (marker.group(2) and content in self.slowed):
            self.slowed.add(content)
            out.sleep(float(marker.group(1)))
        super().serve(request, out)

    def answer(self, request: RecordedRequest, out: Out) -> None:
        body = request.json or {}
        messages = body.get("messages") or [{}]
        calls = self._tool_calls(body, messages[-1])
        content: str | None = None
        if not calls:
            content = self._content(body, messages[-1])
        logprobs = bool(body.get("logprobs"))
        if body.get("stream"):
            StreamReply(
                chunks=[content] if content else [],
                usage=self.usage,
                finish_reason="tool_calls" if calls else "stop",
                tool_calls=calls,
                logprobs=logprobs,
                comments=False,
            ).answer(request, out)
            return
        Reply(
            text=content,
            usage=self.usage,
            finish_reason="tool_calls" if calls else "stop",
            tool_calls=calls or None,
            logprobs=logprobs_of(content or "") if logprobs else None,
            extra={"system_fingerprint": "fp_fake"},
        ).answer(request, out)

    @staticmethod
    def _tool_calls(body: Mapping[str, Any], last: Mapping[str, Any]) -> list[dict[str, Any]]:
        tools = [t for t in body.get("tools") or [] if t.get("type") == "function"]
        choice = body.get("tool_choice")
        if not tools or choice == "none" or last.get("role") == "tool":
            return []
        tool = tools[0]
        if isinstance(choice, Mapping):
            wanted = (choice.get("function") or {}).get("name")
            tool = next((t for t in tools if t["function"]["name"] == wanted), tool)
        function = tool["function"]
        arguments = example_of(function.get("parameters") or {"type": "object"})
        return [
            {
                "id": "call_fake_1",
                "type": "function",
                "function": {"name": function["name"], "arguments": json.dumps(arguments)},
            }
        ]

    def _content(self, body: Mapping[str, Any], last: Mapping[str, Any]) -> str:
        response_format = body.get("response_format") or {}
        if response_format.get("type") == "json_schema":
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            return json.dumps(example_of(schema))
        if response_format.get("type") == "json_object":
            return json.dumps({"answer": "ok"})
        if last.get("role") == "tool":
            return f"Tool said: {last.get('content')}"
        return self.text


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
