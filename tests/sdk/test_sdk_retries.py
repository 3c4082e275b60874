"""The SDK's retries, against the real engine: they never charge twice.

A dropped connection after the engine did the work is retried under the same
Idempotency-Key and replayed (a real loopback TCP proxy drops it); a 5xx is retried and
the call runs again, because a failed call charged nothing; a 429 is retried after its
Retry-After; a read timeout is retried, told 409 while the call runs, and then gets its
answer; any other 4xx is not retried. A fake upstream (a real HTTP server on loopback)
supplies the faults.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from tests.fake_upstream import FAKE_MODEL, ErrorReply, Reply, StreamReply
from wattfare_demo.engine.models import Grant, Replay, Usage
from wattfare_demo.extensions import db
from wattfare_demo.sdk import (
    Wattfare,
    WattfareConnectionError,
    WattfareInvalidRequestError,
    WattfareRateLimitError,
    WattfareTimeoutError,
    WattfareUpstreamError,
)

MODEL = FAKE_MODEL
PROMPT = "Convert this document to markdown: <h1>Title</h1><p>text</p>"


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        **upstream_config,
    }


@pytest.fixture
def wf(app, secret_key, monkeypatch) -> Iterator[Wattfare]:
    monkeypatch.delenv("WATTFARE_API_URL", raising=False)
    with Wattfare(secret_key, wsgi_app=app) as client:
        yield client


def ledger(app) -> tuple[list[tuple[str, bool]], int]:
    """([(status, has an idempotency key)] by id, the grant's used count)."""
    with app.app_context():
        rows = db.session.execute(
            select(Usage.status, Replay.key_hash)
            .outerjoin(Replay, Replay.usage_id == Usage.id)
            .order_by(Usage.id)
        ).all()
        used = db.session.scalar(select(Grant.used))
        db.session.remove()
        return [(status, key is not None) for status, key in rows], used


# --- a proxy that loses answers -----------------------------------------------------


def _read_message(sock: socket.socket, pending: bytearray) -> bytes | None:
    """One HTTP/1.1 message with a Content-Length body (or none), or None at EOF."""
    while b"\r\n\r\n" not in pending:
        data = sock.recv(65536)
        if not data:
            return None
        pending += data
    head, _, _ = bytes(pending).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    size = len(head) + 4 + length
    while len(pending) < size:
        data = sock.recv(65536)
        if not data:
            return None
        pending += data
    message = bytes(pending[:size])
    del pending[:size]
    return message


@dataclass
class Exchange:
    request: bytes
    response: bytes
    relayed: bool

    def header(self, which: str, name: str) -> str | None:
        head = getattr(self, which).partition(b"\r\n\r\n")[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


class DroppingProxy:
    """A loopback TCP proxy to a server, which loses the first `drop` answers.

    It forwards each request to the server and reads the whole answer, so the server
    has done the work, and then, for the first `drop` requests, hangs up on the client
    instead of relaying it: a connection lost on the way back.
    """

    def __init__(self, target_port: int, drop: int = 1) -> None:
        self.target_port = target_port
        self.drop = drop
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> DroppingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self._listener.close()
        self._thread.join(5)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        pending = bytearray()
        with client:
            client.settimeout(10)
            while (request := _read_message(client, pending)) is not None:
                with socket.create_connection(("127.0.0.1", self.target_port), 10) as server:
                    server.sendall(request)
                    response = _read_message(server, bytearray())
                assert response is not None
                with self._lock:
                    relay = len(self.exchanges) >= self.drop
                    self.exchanges.append(Exchange(request, response, relay))
                if not relay:
                    return  # hang up: the client never sees the answer
                client.sendall(response)


# --- tests ----------------------------------------------------------------------------


def test_a_retry_after_a_dropped_connection_charges_once(
    app, live_server, secret_key, make_grant, monkeypatch
):
    monkeypatch.delenv("WATTFARE_API_URL", raising=False)
    token = make_grant(3)
    with (
        DroppingProxy(live_server.port, drop=1) as proxy,
        Wattfare(secret_key, base_url=proxy.url) as wf,
    ):
        result = wf.grant(token).model("local/markdown").generate_text(PROMPT)
    assert result.text.startswith("# Title")
    assert result.remaining == 2  # the figures of the call that ran, replayed
    first, retry = proxy.exchanges
    assert not first.relayed and retry.relayed
    key = first.header("request", "Idempotency-Key")
    assert key and retry.header("request", "Idempotency-Key") == key
    assert retry.header("response", "Idempotent-Replayed") == "true"
    assert ledger(app) == ([("ok", True)], 1)


def test_a_5xx_is_retried_and_the_call_runs_again(app, wf, make_grant, upstream):
    upstream.respond(ErrorReply(status=500))
    result = wf.grant(make_grant(2)).model(MODEL).generate_text(PROMPT)
    assert result.remaining == 1
    assert len(upstream.requests) == 2
    # The failed attempt charged nothing and freed the key for the retry.
    assert ledger(app) == ([("failed", False), ("ok", True)], 1)


def test_retries_give_up_after_max_retries(app, secret_key, make_grant, upstream):
    upstream.default = ErrorReply(status=500)
    for max_retries, attempts in ((2, 3), (0, 1)):
        upstream.requests.clear()
        with (
            Wattfare(secret_key, wsgi_app=app, max_retries=max_retries) as wf,
            pytest.raises(WattfareUpstreamError) as caught,
        ):
            wf.grant(make_grant(1)).model(MODEL).generate_text(PROMPT)
        assert (caught.value.status, caught.value.code) == (502, "upstream_error")
        assert len(upstream.requests) == attempts
    assert all(status == "failed" for status, _ in ledger(app)[0])


def test_a_4xx_is_never_retried(wf, make_grant, upstream):
    upstream.respond(ErrorReply(status=400, message="bad model args"))
    with pytest.raises(WattfareInvalidRequestError) as caught:
        wf.grant(make_grant(1)).model(MODEL).generate_text(PROMPT)
    assert caught.value.status == 400
    assert len(upstream.requests) == 1


def test_a_429_is_retried_after_its_retry_after(app, secret_key, make_grant, upstream):
    # Retry-After: 0 from the upstream reaches the SDK, which retries at once.
    upstream.respond(ErrorReply(status=429, headers={"Retry-After": "0"}))
    with Wattfare(secret_key, wsgi_app=app) as wf:
        result = wf.grant(make_grant(1)).model(MODEL).generate_text(PROMPT)
    assert result.remaining == 0
    assert len(upstream.requests) == 2
    upstream.respond(*[ErrorReply(status=429, headers={"Retry-After": "0"})] * 3)
    with (
        Wattfare(secret_key, wsgi_app=app) as wf,
        pytest.raises(WattfareRateLimitError) as caught,
    ):
        wf.grant(make_grant(1)).model(MODEL).generate_text(PROMPT)
    assert caught.value.retry_after == 0.0
    assert len(upstream.requests) == 5


def test_a_connection_refused_is_retried_then_raised(secret_key, make_grant):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    with (
        Wattfare(secret_key, base_url=f"http://127.0.0.1:{port}", max_retries=1) as wf,
        pytest.raises(WattfareConnectionError) as caught,
    ):
        wf.grant(make_grant(1)).model(MODEL).generate_text(PROMPT)
    assert (caught.value.code, caught.value.status) == ("connection_error", None)


def test_a_read_timeout_is_retried_and_charged_once(
    app, live_server, secret_key, make_grant, upstream
):
    # The model takes 1 s, the SDK waits 0.3 s: the retry is told 409 (Retry-After: 1)
    # while the call runs, and the one after it gets the call's answer.
    upstream.respond(Reply(delay=1.0, text="slow but sure"))
    with Wattfare(secret_key, base_url=live_server.url, timeout=0.3, max_retries=3) as wf:
        result = wf.grant(make_grant(2)).model(MODEL).generate_text(PROMPT)
    assert result.text == "slow but sure"
    assert result.remaining == 1
    assert len(upstream.requests) == 1
    assert ledger(app) == ([("ok", True)], 1)


def test_a_timeout_that_outlasts_the_retries_is_a_timeout_error(
    live_server, secret_key, make_grant, upstream
):
    upstream.respond(Reply(delay=1.5))
    with (
        Wattfare(secret_key, base_url=live_server.url, timeout=0.3, max_retries=0) as wf,
        pytest.raises(WattfareTimeoutError) as caught,
    ):
        wf.grant(make_grant(1)).model(MODEL).generate_text(PROMPT)
    assert isinstance(caught.value, WattfareConnectionError)
    assert caught.value.code == "timeout"


def test_a_provider_failure_mid_stream_raises_and_charges_nothing(app, wf, make_grant, upstream):
    upstream.respond(StreamReply(chunks=("Hello", " world"), error_after=1))
    stream = wf.grant(make_grant(1)).model(MODEL).stream_text(PROMPT)
    assert next(stream) == "Hello"
    with pytest.raises(WattfareUpstreamError) as caught:
        next(stream)
    assert (caught.value.code, caught.value.status) == ("upstream_error", None)
    assert stream.usage is None
    assert ledger(app) == ([("failed", False)], 0)  # charged nothing: the key is free
