"""Idempotency-Key on POST /api/v1/chat/completions, at the HTTP level.

Replay, 422 for another request under the same key, 409 while the first call runs,
racing calls that run once, keys freed by failed calls, stale holds and age, streams.
A fake upstream (a real HTTP server on loopback) holds calls open where a test needs a
call in flight; everything else is the real engine.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.fake_upstream import (
    FAKE_MODEL,
    ErrorReply,
    Out,
    RecordedRequest,
    Reply,
    StreamReply,
)
from tests.helpers import ORIGIN, chat_body, mint_session
from wattfare_demo.engine import grants
from wattfare_demo.engine.errors import ApiError
from wattfare_demo.engine.idempotency import KEY_TTL, Idempotency, fingerprint
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.extensions import db

MODEL = FAKE_MODEL


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        **upstream_config,
    }


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


def ledger(app) -> tuple[list[tuple[str, str | None]], int]:
    """([(status, idempotency_key)] by id, the grant's used count) of the one grant."""
    with app.app_context():
        rows = db.session.execute(
            select(Usage.status, Usage.idempotency_key).order_by(Usage.id)
        ).all()
        used = db.session.scalar(select(Grant.used))
        db.session.remove()
        return [tuple(row) for row in rows], used


def test_same_key_replays_the_stored_response(app, client, make_grant, api_headers):
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
    assert ledger(app) == ([("ok", "key-1")], 1)
    # Without the key it is a new call, refused: the grant is used up.
    assert post(client, headers, None, chat_body()).status_code == 402


def test_sweep_forgets_keys_and_answers_after_a_day(app, client, make_grant, api_headers):
    headers = api_headers(make_grant(2))
    assert post(client, headers, "old-key", chat_body()).status_code == 200
    assert post(client, headers, "new-key", chat_body()).status_code == 200
    with app.app_context():
        db.session.execute(
            update(Usage)
            .where(Usage.idempotency_key == "old-key")
            .values(started_at=Usage.started_at - KEY_TTL - 1)
        )
        db.session.commit()
        db.session.remove()
    result = app.test_cli_runner().invoke(args=["wattfare", "sweep"])
    assert result.exit_code == 0, result.output
    assert "Forgot 1 idempotency key(s)" in result.output
    with app.app_context():
        rows = db.session.execute(
            select(Usage.status, Usage.idempotency_key, Usage.response_body.is_(None)).order_by(
                Usage.id
            )
        ).all()
        db.session.remove()
    # The ledger keeps both calls; only the day-old key and its stored answer are gone.
    assert [tuple(r) for r in rows] == [("ok", None, True), ("ok", "new-key", False)]


def test_numbers_are_compared_by_value(client, make_grant, api_headers):
    headers = api_headers(make_grant(2))
    assert post(client, headers, "k", chat_body(temperature=1)).status_code == 200
    replay = post(client, headers, "k", chat_body(temperature=1.0))
    assert replay.headers["Idempotent-Replayed"] == "true"


def test_same_key_for_another_request_is_422(app, client, make_grant, api_headers):
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
    assert ledger(app) == ([("ok", "k")], 1)


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


def test_same_key_while_the_first_call_runs_is_409(app, client, make_grant, api_headers, upstream):
    gate, arrived = threading.Event(), threading.Event()
    upstream.respond(Gated(gate=gate, arrived=arrived, text="Hello"))
    headers = api_headers(make_grant(2))
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(post, app.test_client(), headers, "slow", fake_body())
        assert arrived.wait(5)
        busy = post(client, headers, "slow", fake_body())
        assert busy.status_code == 409
        assert busy.get_json()["error"]["code"] == "idempotency_key_in_use"
        assert post(client, headers, "slow", fake_body("Other.")).status_code == 422
        gate.set()
        assert first.result(10).status_code == 200
    replay = post(client, headers, "slow", fake_body())
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.get_json()["choices"][0]["message"]["content"] == "Hello"
    assert len(upstream.requests) == 1
    assert ledger(app) == ([("ok", "slow")], 1)


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


def test_racing_calls_with_a_new_key_run_once(app, live_server, make_grant, api_headers, upstream):
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
    assert ledger(app) == ([("ok", "race")], 1)


def test_a_race_with_an_instant_model_runs_once(app, live_server, make_grant, api_headers):
    # The winner settles while the others still queue for the grant: on PostgreSQL this
    # deadlocked before racing calls were queued on the key (Idempotency._locked_row).
    headers = {**api_headers(make_grant(5)), "Idempotency-Key": "instant"}
    outcomes = race(live_server.url, headers, chat_body(), 16)
    assert outcomes[(200, False)] == 1
    assert set(outcomes) <= {(200, False), (200, True), (409, False)}
    assert ledger(app) == ([("ok", "instant")], 1)


def test_the_unique_constraint_decides_a_race(app, make_grant, secret_key):
    """Both calls passed the lookup before either reserved: the second insert loses."""
    token = make_grant(3)
    app_id = secret_key.split("_")[2]
    body = fake_body()
    route = app.extensions["wattfare_providers"].route(MODEL)

    def reserve(idem: Idempotency) -> None:
        with idem.claim():
            grants.reserve(
                app_id,
                token,
                model=MODEL,
                price=route.price,
                prompt_tokens=10,
                max_tokens=10,
                hold_ttl=60,
                idempotency_key=idem.key,
                request_fingerprint=idem.fingerprint,
            )

    with app.test_request_context():
        reserve(Idempotency(app_id, "k", fingerprint(token, body)))
        for other_body, status in [(body, 409), (fake_body("Other."), 422)]:
            with pytest.raises(ApiError) as refused:
                reserve(Idempotency(app_id, "k", fingerprint(token, other_body)))
            assert refused.value.status == status
        # The losers' reservations were rolled back with their inserts.
        assert db.session.scalar(select(Grant.reserved)) == 1
        assert db.session.scalar(select(func.count()).select_from(Usage)) == 1


def test_a_call_that_charged_nothing_frees_its_key(app, client, make_grant, api_headers, upstream):
    upstream.respond(ErrorReply(status=500))
    headers = api_headers(make_grant(2))
    failed = post(client, headers, "retry-me", fake_body())
    assert failed.status_code == 502
    retried = post(client, headers, "retry-me", fake_body())
    assert retried.status_code == 200
    assert "Idempotent-Replayed" not in retried.headers
    assert ledger(app) == ([("failed", None), ("ok", "retry-me")], 1)


def test_a_dead_call_holding_the_key_is_released(app, client, make_grant, api_headers, secret_key):
    token = make_grant(2)
    body = chat_body()
    with app.app_context():
        # A worker reserved under the key, then died: its hold is never settled.
        grants.reserve(
            secret_key.split("_")[2],
            token,
            model="local/markdown",
            price=app.extensions["wattfare_providers"].route("local/markdown").price,
            prompt_tokens=10,
            max_tokens=10,
            hold_ttl=-1,
            idempotency_key="orphan",
            request_fingerprint=fingerprint(token, body),
        )
    response = post(client, api_headers(token), "orphan", body)
    assert response.status_code == 200
    assert ledger(app) == ([("expired", None), ("ok", "orphan")], 1)


def test_keys_older_than_a_day_can_be_used_again(app, client, make_grant, api_headers):
    headers = api_headers(make_grant(2))
    assert post(client, headers, "old", chat_body("<p>one</p>")).status_code == 200
    with app.app_context():
        db.session.execute(update(Usage).values(started_at=Usage.started_at - KEY_TTL))
        db.session.commit()
    response = post(client, headers, "old", chat_body("<p>two</p>"))
    assert response.status_code == 200
    assert "Idempotent-Replayed" not in response.headers
    assert ledger(app) == ([("ok", None), ("ok", "old")], 2)
    with app.app_context():
        assert db.session.scalar(select(Usage.response_body).order_by(Usage.id)) is None


@pytest.mark.parametrize("key", ["", "has space", "x" * 256, "clé"])
def test_a_malformed_key_is_400(client, make_grant, api_headers, key):
    response = client.post(
        "/api/v1/chat/completions",
        headers={**api_headers(make_grant(1)), "Idempotency-Key": key.encode().decode("latin-1")},
        json=chat_body(),
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "Idempotency-Key"


def test_a_stream_runs_once_but_is_not_replayed(app, client, make_grant, api_headers, upstream):
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
    assert ledger(app) == ([("ok", "s")], 1)
