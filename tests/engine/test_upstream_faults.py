"""Faults from a real (fake) upstream on loopback, through the real /api/v1 API.

Each fault is charged exactly as the policy in `api._stream` and the README says:
a failed upstream call (error status, timeout, reset, error chunk, broken answer)
charges nothing, before or during a stream; a client that goes away mid-stream is
charged for what was generated before it left; and no hold is ever left behind.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.fake_upstream import (
    FAKE_MODEL,
    FAKE_UPSTREAM_KEY,
    ErrorReply,
    RawReply,
    Reply,
    Reset,
    StreamReply,
)
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.extensions import db

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = FAKE_MODEL
# $1 per million prompt tokens and $2 per million completion tokens, in pUSD per token.
IN_PUSD, OUT_PUSD = 10**6, 2 * 10**6
UPSTREAM_KEY = FAKE_UPSTREAM_KEY
TIMEOUT = 0.5  # WATTFARE_UPSTREAM_TIMEOUT: seconds without a byte from the upstream


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        **upstream_config,
        "WATTFARE_UPSTREAM_TIMEOUT": TIMEOUT,
    }


def body(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 50,
        "stream": stream,
        **extra,
    }


def chat(client, headers, payload=None):
    return client.post("/api/v1/chat/completions", headers=headers, json=payload or body())


def account(app) -> tuple[int, int, int, int]:
    """(used, reserved, spent_pusd, held_pusd) of the one grant."""
    with app.app_context():
        grant = db.session.scalar(select(Grant))
        db.session.remove()
        return grant.used, grant.reserved, grant.spent_pusd, grant.held_pusd


def ledger(app) -> list[Usage]:
    with app.app_context():
        rows = list(db.session.scalars(select(Usage).order_by(Usage.id)))
        db.session.expunge_all()
        db.session.remove()
        return rows


def assert_charged_nothing(app, error: str) -> None:
    assert account(app) == (0, 0, 0, 0)
    [row] = ledger(app)
    assert (row.status, row.error, row.cost_pusd) == ("failed", error, 0)


def sse_events(text: str) -> list[Any]:
    events = [block.removeprefix("data: ") for block in text.split("\n\n") if block.strip()]
    return [event if event == "[DONE]" else json.loads(event) for event in events]


def stream_text(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content", "")
        for e in events
        if isinstance(e, dict) and e.get("choices")
    )


# --- non-streaming ---------------------------------------------------------------------


def test_a_good_call_is_charged_the_upstream_usage(app, client, make_grant, api_headers, upstream):
    upstream.respond(Reply(text="hello", usage=(12, 5)))
    response = chat(client, api_headers(make_grant(2)))
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["choices"][0]["message"]["content"] == "hello"
    assert account(app) == (1, 0, 12 * IN_PUSD + 5 * OUT_PUSD, 0)
    assert upstream.last.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert upstream.last.json["max_tokens"] == 50


@pytest.mark.parametrize(
    ("fault", "status", "code", "error"),
    [
        (ErrorReply(status=500), 502, "upstream_error", "upstream_status"),
        (ErrorReply(status=503, message="overloaded"), 502, "upstream_error", "upstream_status"),
        (RawReply(status=502, body=b"<html>Bad gateway</html>", content_type="text/html"), 502,
         "upstream_error", "upstream_status"),
        (ErrorReply(status=400, message="max_tokens is too large"), 400, "upstream_rejected",
         "upstream_rejected"),
        (ErrorReply(status=401, message="Incorrect API key provided"), 502, "upstream_error",
         "upstream_auth"),
        (ErrorReply(status=429, message="slow down"), 429, "upstream_rate_limited",
         "upstream_rate_limited"),
        (Reply(delay=TIMEOUT * 4), 504, "upstream_timeout", "timeout"),
        (Reset(), 502, "upstream_error", "connection"),
        (RawReply(status=200, body=b"{not json", content_type="application/json"), 502,
         "upstream_error", "bad_response"),
        (Reply(finish_reason="error"), 502, "upstream_error", "upstream_status"),
    ],
    ids=["500", "503", "502-html", "400", "401", "429", "timeout", "reset", "bad-json",
         "finish-error"],
)  # fmt: skip
def test_a_failed_call_charges_nothing(
    app, client, make_grant, api_headers, upstream, fault, status, code, error
):
    grant = make_grant(1)
    upstream.respond(fault)
    response = chat(client, api_headers(grant))
    assert response.status_code == status
    assert response.mimetype == "application/json"
    payload = response.get_json()["error"]
    assert payload["code"] == code
    assert UPSTREAM_KEY not in response.get_data(as_text=True)
    if status == 429:
        assert int(response.headers["Retry-After"]) > 0
    assert_charged_nothing(app, error)
    # The request went back to the grant: the one approved call still works.
    upstream.respond(Reply(usage=(3, 2)))
    assert chat(client, api_headers(grant)).status_code == 200
    assert account(app) == (1, 0, 3 * IN_PUSD + 2 * OUT_PUSD, 0)


def test_upstream_401_is_not_passed_on_as_the_callers_401(
    client, make_grant, api_headers, upstream
):
    # A 401 would tell the app its own secret key is wrong; the fault is ours.
    upstream.respond(ErrorReply(status=401, message=f"bad key {UPSTREAM_KEY}"))
    response = chat(client, api_headers(make_grant(1)))
    assert response.status_code == 502
    assert UPSTREAM_KEY not in response.get_data(as_text=True)


def test_usage_above_the_hold_is_charged_the_hold(app, client, make_grant, api_headers, upstream):
    # An upstream that reports (or bills) more than max_tokens allows is clamped to the
    # hold: the grant never pays more than the worst case it reserved.
    grant = make_grant(2, max_usd=1)
    upstream.respond(Reply(usage=(10**6, 10**6)))
    assert chat(client, api_headers(grant)).status_code == 200
    [row] = ledger(app)
    assert row.status == "ok"
    assert row.cost_pusd == row.hold_pusd < 10**6 * (IN_PUSD + OUT_PUSD)
    assert account(app) == (1, 0, row.hold_pusd, 0)


# --- streaming ---------------------------------------------------------------------------


def test_a_good_stream_is_charged_the_final_usage(app, client, make_grant, api_headers, upstream):
    upstream.respond(StreamReply(chunks=("Hel", "lo"), usage=(12, 3)))
    response = chat(client, api_headers(make_grant(2)), body(stream=True))
    events = sse_events(response.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    assert stream_text(events) == "Hello"
    assert events[-2]["usage"]["completion_tokens"] == 3
    assert account(app) == (1, 0, 12 * IN_PUSD + 3 * OUT_PUSD, 0)
    assert upstream.last.json["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize(
    ("fault", "error", "code"),
    [
        (StreamReply(chunks=("a", "b", "c"), reset_after=2), "connection", "upstream_error"),
        (StreamReply(chunks=("a", "b", "c"), error_after=1), "upstream_status", "upstream_error"),
        (StreamReply(chunks=("a", "b", "c"), interval=TIMEOUT * 4), "timeout", "upstream_timeout"),
        (StreamReply(chunks=("a", "b"), finish_reason=None, done=False), "connection",
         "upstream_error"),
    ],
    ids=["reset-mid-stream", "error-chunk", "stalled", "cut-short"],
)  # fmt: skip
def test_a_stream_that_fails_charges_nothing(
    app, client, make_grant, api_headers, upstream, fault, error, code
):
    grant = make_grant(1)
    upstream.respond(fault)
    response = chat(client, api_headers(grant), body(stream=True))
    events = sse_events(response.get_data(as_text=True))
    assert events[-1] == "[DONE]"
    assert events[-2]["error"]["code"] == code
    assert not any(isinstance(e, dict) and e.get("usage") for e in events)
    assert_charged_nothing(app, error)
    upstream.respond(StreamReply(usage=(4, 2)))
    again = chat(client, api_headers(grant), body(stream=True))
    assert sse_events(again.get_data(as_text=True))[-1] == "[DONE]"
    assert account(app) == (1, 0, 4 * IN_PUSD + 2 * OUT_PUSD, 0)


# --- over real HTTP: slow streams and clients that leave ---------------------------------


def _read_until(sock: socket.socket, marker: bytes, deadline: float) -> bytes:
    data = b""
    while marker not in data:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        part = sock.recv(65536)
        if not part:
            raise AssertionError(f"connection closed before {marker!r}: {data!r}")
        data += part
    return data


def _open_stream(url: str, headers: dict[str, str], payload: dict[str, Any]) -> socket.socket:
    """A streaming chat request on a raw socket, so the test decides when to hang up."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    raw = json.dumps(payload).encode()
    head = [
        "POST /api/v1/chat/completions HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(raw)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + raw)
    return sock


def wait_until_settled(app, deadline_s: float = 10.0) -> Usage:
    """Poll the ledger until the one call leaves 'pending' (no fixed sleeps)."""
    deadline = time.monotonic() + deadline_s
    while True:
        [row] = ledger(app)
        if row.status != "pending":
            return row
        if time.monotonic() > deadline:
            raise AssertionError("the call was never settled: its hold is left behind")
        time.sleep(0.02)


def test_a_slow_stream_is_relayed_as_it_comes_and_charged_once(
    app, live_server, make_grant, api_headers, upstream
):
    gates = {1: threading.Event(), 2: threading.Event()}
    upstream.respond(StreamReply(chunks=("one ", "two ", "three"), usage=(9, 4), gates=gates))
    events: list[Any] = []
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            "POST",
            f"{live_server.url}/api/v1/chat/completions",
            headers=api_headers(make_grant(1)),
            json=body(stream=True),
        ) as response,
    ):
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
            text = stream_text(events)
            # Each chunk reaches us before the upstream sends the next one: no buffering
            # (a buffering engine would leave the gate shut, and the upstream resets).
            if text == "one ":
                gates[1].set()
            elif text == "one two ":
                gates[2].set()
    assert events[-1] == "[DONE]"
    assert stream_text(events) == "one two three"
    assert account(app) == (1, 0, 9 * IN_PUSD + 4 * OUT_PUSD, 0)


def _hang_up(sock: socket.socket, abort: bool) -> None:
    if abort:  # a TCP RST: what a killed process or a closed tab often sends
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _leave_after_first_chunk(url: str, headers: dict[str, str], how: str) -> None:
    """Read the stream up to its first content chunk, then go away."""
    if how == "httpx":  # a real client: closing the response mid-stream drops the socket
        with (
            httpx.Client(timeout=5) as http,
            http.stream(
                "POST", f"{url}/api/v1/chat/completions", headers=headers, json=body(stream=True)
            ) as response,
        ):
            for line in response.iter_lines():
                if '"content":"first"' in line:
                    break
        return
    sock = _open_stream(url, headers, body(stream=True))
    _read_until(sock, b'"content":"first"', time.monotonic() + 5)
    _hang_up(sock, abort=how == "reset")


def client_leaves_mid_stream(app, url, headers, upstream, how: str) -> Usage:
    more, rest = threading.Event(), threading.Event()
    upstream.respond(
        StreamReply(
            chunks=("first", "-second", "-third", "-fourth"),
            usage=(9, 4),
            gates={1: more, 3: rest},
        )
    )
    _leave_after_first_chunk(url, headers, how)
    more.set()  # the upstream goes on generating; the engine finds the client gone
    row = wait_until_settled(app)
    # The request counts and what was generated is charged, within the hold.
    assert (row.status, row.error) == ("ok", "client_disconnected")
    assert row.completion_tokens >= 2  # at least "first" (5 bytes / 3 per token)
    assert 0 < row.cost_pusd <= row.hold_pusd
    assert account(app) == (1, 0, row.cost_pusd, 0)
    # And the engine hung up on the upstream too, so it stops generating (and billing).
    rest.set()
    assert upstream.last.aborted.wait(5), "the upstream was left streaming to nobody"
    return row


@pytest.mark.parametrize("how", ["httpx", "close", "reset"])
def test_a_client_that_leaves_is_charged_what_was_generated(
    app, live_server, make_grant, api_headers, upstream, how
):
    client_leaves_mid_stream(app, live_server.url, api_headers(make_grant(1)), upstream, how)


def test_a_client_gone_before_the_first_byte_is_charged_nothing(
    app, live_server, make_grant, api_headers, upstream
):
    # The upstream takes its time to answer at all; the client gives up first (a
    # timeout). When the upstream opens, nothing of the answer can reach the client.
    arrived = threading.Event()

    class Announced(StreamReply):
        def serve(self, request, out):
            arrived.set()
            super().serve(request, out)

    upstream.respond(Announced(delay=TIMEOUT / 2, chunks=("never", "read")))
    sock = _open_stream(live_server.url, api_headers(make_grant(1)), body(stream=True))
    assert arrived.wait(5)
    sock.close()
    row = wait_until_settled(app)
    assert (row.status, row.error, row.cost_pusd) == ("failed", "client_gone", 0)
    assert account(app) == (0, 0, 0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(params=["sync", "gthread"])
def gunicorn_server(request, app, app_config) -> Iterator[str]:
    """One gunicorn worker (sync, or gthread with 4 threads) serving the test database."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
        "SECRET_KEY": app_config["SECRET_KEY"],
        "WATTFARE_PUBLISHABLE_KEY": app_config["WATTFARE_PUBLISHABLE_KEY"],
        "WATTFARE_SECRET_KEY": app_config["WATTFARE_SECRET_KEY"],
        "WATTFARE_ALLOWED_ORIGINS": ",".join(app_config["WATTFARE_ALLOWED_ORIGINS"]),
        "WATTFARE_UPSTREAM_URL": app_config["WATTFARE_UPSTREAM_URL"],
        "WATTFARE_UPSTREAM_API_KEY": UPSTREAM_KEY,
        "WATTFARE_UPSTREAM_TIMEOUT": str(TIMEOUT),
        "WATTFARE_PRICES": json.dumps(app_config["WATTFARE_PRICES"]),
        "WATTFARE_ENV": "production",
        "WATTFARE_DAILY_BUDGET_USD": "off",  # production with a paid provider asks for one
    }
    env.pop("OPENROUTER_API_KEY", None)
    threads = ["--threads", "4"] if request.param == "gthread" else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--workers", "1", "--worker-class", request.param,
         *threads, "--bind", f"127.0.0.1:{port}", "app:app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/api/v1/models", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(proc.stderr.read().decode()) from None
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.mark.parametrize("how", ["httpx", "reset"])
def test_a_client_that_leaves_gunicorn_is_charged_what_was_generated(
    app, gunicorn_server, make_grant, api_headers, upstream, how
):
    client_leaves_mid_stream(app, gunicorn_server, api_headers(make_grant(1)), upstream, how)


def test_a_client_that_leaves_after_the_first_chunk_is_charged_the_prompt(
    app, client, make_grant, api_headers, upstream
):
    # The upstream is called before any header goes out; the role chunk follows. A
    # client gone by then (an SDK user closes the stream as soon as the headers arrive)
    # made the provider read the prompt, and the provider bills it: so is the grant.
    grant = make_grant(1)
    upstream.respond(StreamReply(chunks=["a", "b"], interval=1.0))
    response = client.post(
        "/api/v1/chat/completions",
        headers=api_headers(grant),
        json=body(stream=True),
        buffered=False,
    )
    first = next(iter(response.response))
    assert b'"role":"assistant"' in first
    response.close()
    assert len(upstream.requests) == 1
    prompt = 64 + 8 + len("user") + len("Say hello.")  # the provider's upper bound
    assert account(app) == (1, 0, prompt * IN_PUSD, 0)
    [row] = ledger(app)
    assert (row.status, row.error) == ("ok", "client_disconnected")


def test_a_stream_refused_before_its_first_token_gets_the_status(
    app, client, make_grant, api_headers, upstream
):
    grant = make_grant(1)
    upstream.respond(ErrorReply(status=429, message="slow down", headers={"Retry-After": "7"}))
    response = chat(client, api_headers(grant), body(stream=True))
    assert response.status_code == 429
    assert response.mimetype == "application/json"
    assert response.headers["Retry-After"] == "7"
    assert response.get_json()["error"]["code"] == "upstream_rate_limited"
    assert_charged_nothing(app, "upstream_rate_limited")
    upstream.respond(ErrorReply(status=400, message="bad temperature"))
    refused = chat(client, api_headers(grant), body(stream=True))
    assert refused.status_code == 400
    assert refused.get_json()["error"]["code"] == "upstream_rejected"


def test_a_stream_that_runs_past_the_cap_is_cut_and_charged_the_cap(
    app, client, make_grant, api_headers, upstream
):
    # The cap pays for the prompt and 10 completion tokens; the upstream ignores the
    # max_tokens it is sent and keeps going.
    prompt = 64 + 8 + len("user") + len("Say hello.")  # the provider's upper bound
    cap = prompt * IN_PUSD + 10 * OUT_PUSD
    grant = make_grant(3, max_usd=cap / 10**12)
    upstream.respond(StreamReply(chunks=["abcdef"] * 40, usage=(prompt, 80), comments=False))
    response = chat(client, api_headers(grant), body(stream=True, max_tokens=None))
    events = sse_events(response.get_data(as_text=True))
    assert upstream.last.json["max_tokens"] == 10
    assert events[-1] == "[DONE]"
    assert (events[-2]["error"]["code"], events[-2]["error"]["reason"]) == (
        "grant_invalid",
        "over_cap",
    )
    assert len(stream_text(events)) < 40 * 6  # cut, not relayed to the end
    assert account(app) == (1, 0, cap, 0)
    assert chat(client, api_headers(grant)).get_json()["error"]["reason"] == "over_cap"
