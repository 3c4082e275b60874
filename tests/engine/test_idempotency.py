"""A retry is not a new call: Idempotency-Key, and key-less retries, at the HTTP level.

With a key: replay, 422 for another request under the same key, 409 while the first call
runs, racing calls that run once, keys freed by failed calls, stale holds and age,
streams. Without one: a retry of a call still running waits for it, an answer its caller
could not take waits for the retry, a call marked as a retry gets the latest answer, and
two identical calls one after another are two calls. A fake upstream (a real HTTP server
on loopback) holds calls open where a test needs a call in flight; everything else is
the real engine.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text, update

from tests.fake_upstream import (
    FAKE_MODEL,
    ErrorReply,
    Out,
    RecordedRequest,
    Reply,
    StreamReply,
)
from tests.helpers import ORIGIN, chat_body, mint_session
from wattfare_demo.engine import grants, idempotency
from wattfare_demo.engine.errors import ApiError
from wattfare_demo.engine.idempotency import REPLAY_TTL
from wattfare_demo.engine.models import Grant, Replay, Usage
from wattfare_demo.extensions import db

MODEL = FAKE_MODEL


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, **upstream_config, "WATTFARE_RETRY_WAIT": 5.0}


@dataclass(kw_only=True)
class Gated(Reply):
    """A normal answer, held until the test opens `gate`; `arrived` is set on arrival."""

    gate: threading.Event
    arrived: threading.Event

    def serve(self, request: RecordedRequest, out: Out) -> None:
        self.arrived.set()
        if not out.wait(self.gate):
            out.reset()
            return
        super().serve(request, out)


@dataclass(kw_only=True)
class AnnouncedStream(StreamReply):
    """A stream that sets `arrived` when its request reaches the upstream."""

    arrived: threading.Event

    def serve(self, request: RecordedRequest, out: Out) -> None:
        self.arrived.set()
        super().serve(request, out)


def fake_body(text: str = "Say hello.", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def post(client, headers: dict[str, str], key: str | None, body: dict[str, Any]):
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    return client.post("/api/v1/chat/completions", headers=headers, json=body)


def age_replays(app, seconds: int) -> None:
    """Make every kept call `seconds` older, as if that time had passed."""
    with app.app_context():
        db.session.execute(update(Replay).values(created_at=Replay.created_at - seconds))
        db.session.commit()
        db.session.remove()


# --- with an Idempotency-Key ---------------------------------------------------------------


def test_same_key_replays_the_stored_response(app, client, make_grant, api_headers, ledger):
    headers = api_headers(make_grant(1, max_usd=0.5))
    first = post(client, headers, "key-1", chat_body())
    assert first.status_code == 200
    assert "Idempotent-Replayed" not in first.headers
    # The grant is now used up, yet the retry gets the answer it paid for.
    again = post(client, headers, "key-1", chat_body())
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_data() == first.get_data()
    for name in ("x-wattfare-grant-remaining", "x-wattfare-grant-remaining-usd"):
        assert again.headers[name] == first.headers[name]
    assert again.mimetype == "application/json"
    assert ledger() == ([("ok", "key")], 1)
    # Without the key it is a new call, refused: the grant is used up.
    assert post(client, headers, None, chat_body()).status_code == 402


def test_nothing_kept_is_readable_without_what_the_caller_sends(
    app, client, make_grant, api_headers
):
    marker = "Zebra-marker-71"
    grant = make_grant(2)
    post(client, api_headers(grant), "secret-key-1", chat_body(f"<p>{marker}</p>"))
    with app.app_context():
        row = db.session.execute(select(Replay)).scalar_one()
        db.session.remove()
    stored = " ".join(str(v) for v in (row.key_hash, row.request_hash, row.answer))
    assert marker not in stored and "secret-key-1" not in stored and grant not in stored
    assert len(row.key_hash) == 64 and len(row.request_hash) == 64


def test_the_sweep_forgets_kept_calls_within_the_hour(app, client, make_grant, api_headers):
    headers = api_headers(make_grant(2))
    assert post(client, headers, "old-key", chat_body()).status_code == 200
    age_replays(app, REPLAY_TTL + 1)
    assert post(client, headers, "new-key", chat_body()).status_code == 200
    result = app.test_cli_runner().invoke(args=["wattfare", "sweep"])
    assert result.exit_code == 0, result.output
    assert "Forgot 1 call(s) older than 30 minutes kept for replay" in result.output
    with app.app_context():
        kept = db.session.scalar(select(func.count()).select_from(Replay))
        calls = db.session.scalar(select(func.count()).select_from(Usage))
        db.session.remove()
    # The ledger keeps both calls; only the old call's replay record is gone.
    assert (kept, calls) == (1, 2)


def test_numbers_are_compared_by_value(client, make_grant, api_headers):
    headers = api_headers(make_grant(2))
    assert post(client, headers, "k", chat_body(temperature=1)).status_code == 200
    replay = post(client, headers, "k", chat_body(temperature=1.0))
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_same_key_for_another_request_is_422(app, client, make_grant, api_headers, ledger):
    grant = make_grant(3)
    assert post(client, api_headers(grant), "k", chat_body("<p>one</p>")).status_code == 200
    for headers, body in [
        (api_headers(grant), chat_body("<p>two</p>")),  # another body
        (api_headers(make_grant(3)), chat_body("<p>one</p>")),  # another grant
    ]:
        response = post(client, headers, "k", body)
        assert response.status_code == 422
        error = response.get_json()["error"]
        assert (error["code"], error["param"]) == ("idempotency_key_reused", "Idempotency-Key")
    assert ledger() == ([("ok", "key")], 1)


def test_keys_are_per_app(app, client, make_grant, api_headers):
    from wattfare_demo.engine.apps import create_app_record

    assert post(client, api_headers(make_grant(1)), "shared", chat_body()).status_code == 200
    with app.app_context():
        other = create_app_record("other", "test", [ORIGIN], app.config["SECRET_KEY"])
    session = mint_session(other.secret_key)
    grant = client.post(
        "/api/v1/grants", json={"requests": 1}, headers={"Authorization": f"Bearer {session}"}
    ).get_json()["grantToken"]
    response = post(
        client,
        {"Authorization": f"Bearer {other.secret_key}", "x-wattfare-grant": grant},
        "shared",
        chat_body(),
    )
    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers


def test_same_key_while_the_first_call_runs_is_409(
    app, client, make_grant, api_headers, upstream, ledger
):
    gate, arrived = threading.Event(), threading.Event()
    upstream.respond(Gated(gate=gate, arrived=arrived, text="Hello"))
    headers = api_headers(make_grant(2))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, app.test_client(), headers, "slow", fake_body())
        assert arrived.wait(5)
        busy = post(client, headers, "slow", fake_body())
        assert busy.status_code == 409
        assert busy.get_json()["error"]["code"] == "idempotency_key_in_use"
        assert busy.headers["Retry-After"] == "1"
        assert post(client, headers, "slow", fake_body("Other.")).status_code == 422
        gate.set()
        assert first.result(10).status_code == 200
    replay = post(client, headers, "slow", fake_body())
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["choices"][0]["message"]["content"] == "Hello"
    assert len(upstream.requests) == 1
    assert ledger() == ([("ok", "key")], 1)


def race(url: str, headers: dict[str, str], body: dict[str, Any], n: int) -> Counter:
    """n calls fired at once with the same key: Counter of (status, replayed)."""
    barrier = threading.Barrier(n)

    def one(_: int) -> tuple[int, bool]:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            response = http.post(f"{url}/api/v1/chat/completions", headers=headers, json=body)
            return response.status_code, "Idempotent-Replayed" in response.headers

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(one, range(n)))


def test_racing_calls_with_a_new_key_run_once(
    app, live_server, make_grant, api_headers, upstream, ledger
):
    gate, arrived = threading.Event(), threading.Event()
    upstream.respond(Gated(gate=gate, arrived=arrived))
    headers = {**api_headers(make_grant(5)), "Idempotency-Key": "race"}
    with ThreadPoolExecutor(1) as opener:
        opener.submit(lambda: arrived.wait(10) and gate.set())
        outcomes = race(live_server.url, headers, fake_body(), 8)
    # One call ran; the others were told it was running (409) or, if they arrived after
    # it finished, got its replay.
    assert outcomes[(200, False)] == 1
    assert set(outcomes) <= {(200, False), (200, True), (409, False)}
    assert len(upstream.requests) == 1
    assert ledger() == ([("ok", "key")], 1)


def test_a_race_with_an_instant_model_runs_once(app, live_server, make_grant, api_headers, ledger):
    headers = {**api_headers(make_grant(5)), "Idempotency-Key": "instant"}
    outcomes = race(live_server.url, headers, chat_body(), 16)
    assert outcomes[(200, False)] == 1
    assert set(outcomes) <= {(200, False), (200, True), (409, False)}
    assert ledger() == ([("ok", "key")], 1)


def test_a_racing_key_is_answered_without_waiting_on_the_grant(
    app, backend, database_url, live_server, make_grant, api_headers, ledger
):
    """The race the key claim exists for, made deterministic with a held lock.

    The test holds the grant's row lock, so the first call with the key claims it and then
    queues on the grant. A second call with the same key must be answered 409 *while the
    lock is still held*: it never touches the grant. Were the key checked inside the
    reservation's transaction, the second call would queue on the grant behind the first
    and, on PostgreSQL, could deadlock with its settle (as it once did).
    """
    if backend != "postgresql":
        pytest.skip("SQLite has one writer at a time: no row locks to hold")
    token = make_grant(3)
    headers = {**api_headers(token), "Idempotency-Key": "held"}
    holder = create_engine(database_url)
    try:
        with holder.connect() as lock, ThreadPoolExecutor(2) as pool:
            lock.execute(text("SELECT id FROM grants FOR UPDATE"))
            url = f"{live_server.url}/api/v1/chat/completions"
            first = pool.submit(httpx.post, url, headers=headers, json=chat_body(), timeout=20)
            deadline = time.monotonic() + 10
            while not _claimed(app):  # the first call has claimed the key
                assert time.monotonic() < deadline, "the first call never claimed its key"
                time.sleep(0.02)
            second = pool.submit(httpx.post, url, headers=headers, json=chat_body(), timeout=20)
            answer = second.result(timeout=5)  # the lock is still held
            assert answer.status_code == 409
            assert answer.json()["error"]["code"] == "idempotency_key_in_use"
            assert not first.done()
            lock.rollback()  # let the first call have the grant
            assert first.result(timeout=10).status_code == 200
    finally:
        holder.dispose()
    assert ledger() == ([("ok", "key")], 1)


def _claimed(app) -> bool:
    with app.app_context():
        found = db.session.scalar(select(func.count()).select_from(Replay)) == 1
        db.session.remove()
    return found


def test_a_claim_decides_a_race(app, make_grant, secret_key):
    """Both calls passed the lookup before either reserved: the second claim loses."""
    token = make_grant(3)
    app_id = secret_key.split("_")[2]
    body = fake_body()

    def retry(the_body: dict[str, Any]) -> idempotency.Retry:
        with app.test_request_context(headers={"Idempotency-Key": "k"}):
            return idempotency.from_request(app_id, token, the_body, endpoint="chat", stream=False)

    with app.app_context():
        assert retry(body).earlier_answer() is None  # the first claims the key
        for other_body, status in [(body, 409), (fake_body("Other."), 422)]:
            with pytest.raises(ApiError) as refused:
                retry(other_body).earlier_answer()
            assert refused.value.status == status
        assert db.session.scalar(select(Grant.reserved)) == 0  # nobody touched the grant
        db.session.remove()


def test_a_call_that_charged_nothing_frees_its_key(
    app, client, make_grant, api_headers, upstream, ledger
):
    upstream.respond(ErrorReply(status=500))
    headers = api_headers(make_grant(2))
    failed = post(client, headers, "retry-me", fake_body())
    assert failed.status_code == 502
    retried = post(client, headers, "retry-me", fake_body())
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried.headers
    assert ledger() == ([("failed", None), ("ok", "key")], 1)


def test_a_dead_call_holding_the_key_is_released(app, client, make_grant, secret_key, ledger):
    token = make_grant(2)
    body = chat_body()
    app_id = secret_key.split("_")[2]
    with app.test_request_context(headers={"Idempotency-Key": "orphan"}):
        # A worker claimed the key and reserved, then died: its hold is never settled.
        retry = idempotency.from_request(app_id, token, body, endpoint="chat", stream=False)
        assert retry.earlier_answer() is None
        grants.reserve(
            app_id,
            token,
            model="local/markdown",
            price=app.extensions["wattfare_providers"].route("local/markdown").price,
            prompt_tokens=10,
            max_tokens=10,
            hold_ttl=-1,
            on_reserved=retry.on_reserved,
        )
    response = post(
        client,
        {"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": token},
        "orphan",
        body,
    )
    assert response.status_code == 200
    assert ledger() == ([("expired", None), ("ok", "key")], 1)


def test_keys_older_than_the_replay_window_can_be_used_again(
    app, client, make_grant, api_headers, ledger
):
    headers = api_headers(make_grant(2))
    assert post(client, headers, "old", chat_body("<p>one</p>")).status_code == 200
    age_replays(app, REPLAY_TTL)
    response = post(client, headers, "old", chat_body("<p>two</p>"))
    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers
    assert ledger()[1] == 2


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "clé"])
def test_a_malformed_key_is_400(client, make_grant, api_headers, key):
    response = client.post(
        "/api/v1/chat/completions",
        headers={**api_headers(make_grant(1)), "Idempotency-Key": key.encode().decode("latin-1")},
        json=chat_body(),
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "Idempotency-Key"


def test_a_stream_runs_once_but_is_not_replayed(
    app, client, make_grant, api_headers, upstream, ledger
):
    gate, arrived = threading.Event(), threading.Event()
    upstream.respond(AnnouncedStream(arrived=arrived, chunks=("Hello", "!"), gates={1: gate}))
    headers = api_headers(make_grant(3))
    body = fake_body(stream=True)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(lambda: post(app.test_client(), headers, "s", body).get_data())
        assert arrived.wait(5)
        busy = post(client, headers, "s", body)
        assert busy.status_code == 409
        assert busy.get_json()["error"]["code"] == "idempotency_key_in_use"
        gate.set()
        assert b"Hello" in first.result(10)
    done = post(client, headers, "s", body)
    assert done.status_code == 409
    assert done.get_json()["error"]["code"] == "idempotency_key_used"
    assert ledger() == ([("ok", "key")], 1)


# --- without a key ---------------------------------------------------------------------------


def _send_and_hang_up(url: str, headers: dict[str, str], body: dict[str, Any]) -> None:
    """A client that sends a chat call and gives up before the answer (a timeout)."""
    host, port = url.removeprefix("http://").split(":")
    raw = json.dumps(body).encode()
    head = [
        "POST /api/v1/chat/completions HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        f"Content-Length: {len(raw)}",
        *(f"{k}: {v}" for k, v in headers.items()),
    ]
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + raw)


def test_a_retry_of_a_call_still_running_waits_and_gets_its_answer(
    app, live_server, make_grant, api_headers, upstream, ledger
):
    gate, arrived = threading.Event(), threading.Event()
    upstream.respond(Gated(gate=gate, arrived=arrived, text="Worth the wait"))
    headers = api_headers(make_grant(3))
    _send_and_hang_up(live_server.url, headers, fake_body())  # timed out
    assert arrived.wait(5)
    age_replays(app, idempotency.PARALLEL_SECONDS)  # the retry comes seconds later
    with ThreadPoolExecutor(1) as pool:
        retry = pool.submit(
            httpx.post,
            f"{live_server.url}/api/v1/chat/completions",
            headers=headers,  # no key, no retry marker: LlamaIndex's own retry
            json=fake_body(),
            timeout=10,
        )
        gate.set()
        answer = retry.result(10)
    assert answer.status_code == 200
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert answer.json()["choices"][0]["message"]["content"] == "Worth the wait"
    assert answer.headers["x-wattfare-grant-remaining"] == "2"
    assert len(upstream.requests) == 1
    assert ledger() == ([("ok", "request")], 1)


def test_identical_calls_made_at_the_same_moment_are_parallel_calls(
    app, client, make_grant, api_headers, upstream, ledger
):
    gate, arrived = threading.Event(), threading.Event()
    upstream.respond(Gated(gate=gate, arrived=arrived, text="first"), Reply(text="second"))
    headers = api_headers(make_grant(2))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, app.test_client(), headers, None, fake_body())
        assert arrived.wait(5)
        # Unmarked, and the first began this very second: not its retry.
        second = post(client, headers, None, fake_body())
        assert second.get_json()["choices"][0]["message"]["content"] == "second"
        gate.set()
        assert first.result(10).get_json()["choices"][0]["message"]["content"] == "first"
    assert ledger()[1] == 2


def test_an_answer_its_caller_left_waits_for_the_retry(
    app, live_server, make_grant, api_headers, upstream, ledger
):
    gate, arrived = threading.Event(), threading.Event()
    upstream.respond(Gated(gate=gate, arrived=arrived, text="Kept for you"))
    headers = api_headers(make_grant(3))
    _send_and_hang_up(live_server.url, headers, fake_body())
    assert arrived.wait(5)
    gate.set()
    deadline = time.monotonic() + 10
    while ledger()[1] != 1:  # the call finished, its caller long gone
        assert time.monotonic() < deadline
        time.sleep(0.02)
    url = f"{live_server.url}/api/v1/chat/completions"
    answer = httpx.post(url, headers=headers, json=fake_body(), timeout=10)
    assert answer.headers["Idempotent-Replayed"] == "true"
    assert answer.json()["choices"][0]["message"]["content"] == "Kept for you"
    # Delivered now: the same call once more is a new call.
    again = httpx.post(url, headers=headers, json=fake_body(), timeout=10)
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
    assert ledger() == ([("ok", "request"), ("ok", "request")], 2)


def test_two_identical_calls_one_after_another_are_two_calls(
    client, make_grant, api_headers, upstream, ledger
):
    headers = api_headers(make_grant(3))
    first = post(client, headers, None, fake_body())
    second = post(client, headers, None, fake_body())
    assert first.status_code == second.status_code == 200
    assert "Idempotent-Replayed" not in second.headers
    assert second.headers["x-wattfare-grant-remaining"] == "1"
    assert len(upstream.requests) == 2
    assert ledger()[1] == 2


def test_a_call_marked_as_a_retry_gets_the_latest_answer(
    client, make_grant, api_headers, upstream, ledger
):
    """openai-python marks its retries; the engine may not have seen the caller leave
    (a proxy kept the connection), so the mark alone makes it the same call. The first
    call is slow, as one a client timed out on is."""
    headers = api_headers(make_grant(3))
    upstream.respond(Reply(delay=idempotency.SLOW_CALL_SECONDS))
    first = post(client, headers, None, fake_body())
    retried = post(client, {**headers, "x-stainless-retry-count": "1"}, None, fake_body())
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.get_data() == first.get_data()
    # A marked retry of a call that failed runs: failures charge nothing.
    upstream.respond(ErrorReply(status=500))
    other = fake_body("Another question.")
    assert post(client, headers, None, other).status_code == 502
    rerun = post(client, {**headers, "x-stainless-retry-count": "1"}, None, other)
    assert rerun.status_code == 200 and "Idempotent-Replayed" not in rerun.headers
    assert ledger()[1] == 2


def test_a_retry_still_waiting_gives_up_with_409(
    app, client, make_grant, api_headers, upstream, ledger
):
    app.config["WATTFARE_RETRY_WAIT"] = 0.2
    gate, arrived = threading.Event(), threading.Event()
    upstream.respond(Gated(gate=gate, arrived=arrived))
    headers = api_headers(make_grant(2))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, app.test_client(), headers, None, fake_body())
        assert arrived.wait(5)
        marked = {**headers, "x-stainless-retry-count": "1"}
        busy = post(client, marked, None, fake_body())
        assert busy.status_code == 409
        assert busy.get_json()["error"]["code"] == "call_in_progress"
        assert busy.headers["Retry-After"] == "2"
        gate.set()
        assert first.result(10).status_code == 200
    assert ledger() == ([("ok", "request")], 1)


def test_a_fast_delivered_answer_is_not_kept(app, client, make_grant, api_headers, ledger):
    headers = api_headers(make_grant(2))
    assert post(client, headers, None, chat_body()).status_code == 200
    with app.app_context():
        answer = db.session.scalar(select(Replay.answer))
        db.session.remove()
    assert answer is None  # nobody can retry it: not worth a write
    marked = post(client, {**headers, "x-stainless-retry-count": "1"}, None, chat_body())
    assert "Idempotent-Replayed" not in marked.headers
    assert ledger()[1] == 2
