"""POST /api/v1/grants: session auth, strict validation, tokens stored only as hashes, and
the session's question: no more requests, no higher cap and only the model it names, and
one grant per session (under a race too).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from tests.fake_upstream import FAKE_MODEL
from tests.helpers import ORIGIN, chat_body, mint_session
from wattfare_demo.engine.models import Grant, SessionUse
from wattfare_demo.engine.tokens import grant_token_is_well_formed, sha256_hex
from wattfare_demo.extensions import db


def race_post(url: str, headers: dict[str, str], body: dict, n: int) -> Counter:
    """n threads POST at once (a barrier), each with its own connection."""
    barrier = threading.Barrier(n)

    def one(_: int) -> int:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            return http.post(url, headers=headers, json=body).status_code

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(one, range(n)))


def post_grant(client, token: str, body=None, **kwargs):
    return client.post(
        "/api/v1/grants", headers={"Authorization": f"Bearer {token}"}, json=body, **kwargs
    )


def test_creates_a_grant_and_stores_only_its_hash(app, client, secret_key):
    before = int(time.time())
    response = post_grant(client, mint_session(secret_key), {"requests": 3, "maxUsd": 1.5})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"grantToken", "expiresAt", "requests", "receiptUrl"}
    assert body["requests"] == 3
    assert grant_token_is_well_formed(body["grantToken"])
    assert before + 590 <= body["expiresAt"] <= int(time.time()) + 610
    with app.app_context():
        grant = db.session.scalar(select(Grant))
        assert grant.token_hash == sha256_hex(body["grantToken"])
        assert grant.max_pusd == 1_500_000_000_000
        assert grant.origin == ORIGIN
        assert grant.subject is None
        # the token itself appears in no column of any row
        for value in vars(grant).values():
            assert body["grantToken"] not in str(value)


def test_records_the_subject_when_the_session_names_a_user(app, client, secret_key):
    post_grant(client, mint_session(secret_key, sub="user-42"), {"requests": 1})
    with app.app_context():
        assert db.session.scalar(select(Grant.subject)) == "user-42"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "requests"),
        ({"requests": 0}, "requests"),
        ({"requests": -1}, "requests"),
        ({"requests": 101}, "requests"),
        ({"requests": 1.5}, "requests"),
        ({"requests": 3.0}, "requests"),
        ({"requests": "3"}, "requests"),
        ({"requests": True}, "requests"),
        ({"requests": None}, "requests"),
        ({"requests": 1, "maxUsd": 0}, "maxUsd"),
        ({"requests": 1, "maxUsd": -2}, "maxUsd"),
        ({"requests": 1, "maxUsd": "1"}, "maxUsd"),
        ({"requests": 1, "maxUsd": True}, "maxUsd"),
        ({"requests": 1, "maxUsd": 1e300}, "maxUsd"),
        ({"requests": 1, "maxUsd": 100.01}, "maxUsd"),
        ({"requests": 1, "maxUsd": 1e-15}, "maxUsd"),
        ({"requests": 1, "extra": 1}, "extra"),
        ([1, 2], "body"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(client, secret_key, body, field):
    response = post_grant(client, mint_session(secret_key), body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert error["param"] == field
    assert error["message"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        ('{"requests": NaN}', "application/json"),
        ('{"requests": 1, "maxUsd": Infinity}', "application/json"),
        ("requests=1", "application/x-www-form-urlencoded"),
        ("{not json", "application/json"),
        ('{"requests": 1}', "text/plain"),
        (b"\xff\xfe\x00", "application/json"),
    ],
)
def test_non_json_is_400(client, secret_key, data, content_type):
    response = client.post(
        "/api/v1/grants",
        data=data,
        content_type=content_type,
        headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "body"


@pytest.mark.parametrize(
    "make_token",
    [
        lambda sk: mint_session(sk, ttl=-30),  # expired
        lambda sk: mint_session(sk, aud="someone-else"),
        lambda sk: mint_session(sk, ttl=3600),  # longer than 10 minutes
        lambda sk: mint_session(sk, iss="0123456789abcdef"),  # unknown app
        lambda sk: mint_session(sk[:-4] + "0000"),  # signed with another key
        lambda sk: mint_session(sk) + "x",  # bad signature
        lambda sk: "not-a-jwt",
        lambda sk: sk,  # a secret key is not a session token
    ],
)
def test_bad_sessions_are_401_session_invalid(client, secret_key, make_token):
    response = post_grant(client, make_token(secret_key), {"requests": 1})
    assert response.status_code == 401
    assert response.get_json()["error"]["code"] == "session_invalid"


def test_missing_authorization_is_401(client):
    response = client.post("/api/v1/grants", json={"requests": 1})
    assert response.status_code == 401
    assert response.get_json()["error"]["type"] == "authentication_error"


def test_origin_not_allowed_is_403(client, secret_key):
    response = post_grant(
        client, mint_session(secret_key, origin="https://evil.example"), {"requests": 1}
    )
    assert response.status_code == 403
    assert response.get_json()["error"]["code"] == "origin_not_allowed"


def test_unknown_routes_and_methods_answer_json(client):
    assert client.get("/api/v1/nope").get_json()["error"]["code"] == "not_found"
    response = client.get("/api/v1/grants")
    assert response.status_code == 405
    assert response.get_json()["error"]["code"] == "method_not_allowed"


# --- the session is bound to the question, and used once ------------------------------


def error_of(response) -> dict:
    return response.get_json()["error"]


@pytest.mark.parametrize(
    ("claims", "body", "param"),
    [
        ({"requests": 2}, {"requests": 3}, "requests"),
        ({"requests": 1}, {"requests": 100}, "requests"),
        ({"maxUsd": 0.5}, {"requests": 1, "maxUsd": 0.51}, "maxUsd"),
        ({"maxUsd": 0.5}, {"requests": 1, "maxUsd": "0.5000001"}, "maxUsd"),
        ({"maxUsd": 1}, {"requests": 1}, "maxUsd"),  # the session requires a cap
        ({"maxUsd": 1}, {"requests": 1, "maxUsd": None}, "maxUsd"),
    ],
)
def test_a_grant_asking_more_than_its_session_allows_is_403(
    app, client, secret_key, claims, body, param
):
    if isinstance(body.get("maxUsd"), str):  # an exact decimal, as the popup sends it
        data = f'{{"requests": {body["requests"]}, "maxUsd": {body["maxUsd"]}}}'
        response = client.post(
            "/api/v1/grants",
            data=data,
            content_type="application/json",
            headers={"Authorization": f"Bearer {mint_session(secret_key, **claims)}"},
        )
    else:
        response = post_grant(client, mint_session(secret_key, **claims), body)
    assert response.status_code == 403
    error = error_of(response)
    assert (error["code"], error["type"], error["param"]) == (
        "exceeds_session",
        "permission_error",
        param,
    )
    assert "session allows" in error["message"]
    with app.app_context():
        assert db.session.scalar(select(Grant)) is None


@pytest.mark.parametrize(
    ("claims", "body"),
    [
        ({"requests": 3}, {"requests": 3}),
        ({"requests": 3}, {"requests": 1}),
        ({"requests": 3, "maxUsd": 0.5}, {"requests": 3, "maxUsd": 0.5}),
        ({"requests": 3, "maxUsd": 0.5}, {"requests": 3, "maxUsd": 0.01}),
        ({"requests": 1, "maxUsd": 0.1}, {"requests": 1, "maxUsd": 0.1}),  # not 0.1000…01
        ({"requests": 1, "maxUsd": 2}, {"requests": 1, "maxUsd": 2}),
        ({"requests": 1}, {"requests": 1, "maxUsd": 7}),  # a cap the session did not need
    ],
)
def test_a_grant_within_its_session_is_created(client, secret_key, claims, body):
    response = post_grant(client, mint_session(secret_key, **claims), body)
    assert response.status_code == 200, response.get_json()
    assert response.headers["Cache-Control"] == "no-store"  # it carries a token


def test_a_session_creates_one_grant(app, client, secret_key):
    session = mint_session(secret_key, requests=1)
    assert post_grant(client, session, {"requests": 1}).status_code == 200
    again = post_grant(client, session, {"requests": 1})
    assert again.status_code == 409
    assert error_of(again)["code"] == "session_used"
    assert "one grant" in error_of(again)["message"]
    # A refused request does not use the session up: the popup may try again.
    other = mint_session(secret_key, requests=2)
    assert post_grant(client, other, {"requests": 3}).status_code == 403
    assert post_grant(client, other, {"requests": 0}).status_code == 400
    assert post_grant(client, other, {"requests": 2}).status_code == 200
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Grant)) == 2


def test_threads_racing_one_session_over_http_create_one_grant(app, live_server, secret_key):
    session = mint_session(secret_key, requests=1)
    statuses = race_post(
        f"{live_server.url}/api/v1/grants",
        {"Authorization": f"Bearer {session}"},
        {"requests": 1},
        n=12,
    )
    assert statuses == Counter({200: 1, 409: 11})
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Grant)) == 1
        assert db.session.scalar(select(func.count()).select_from(SessionUse)) == 1


@pytest.mark.parametrize(
    "claims",
    [
        {"requests": None},  # the app's server must say how many
        {"requests": 0},
        {"requests": "3"},
        {"requests": True},
        {"requests": 1.5},
        {"maxUsd": "1"},
        {"maxUsd": 0},
        {"maxUsd": -1},
        {"maxUsd": True},
        {"maxUsd": 1e-15},  # rounds to nothing
        {"model": ""},
        {"model": 5},
        {"model": "m" * 121},
        {"jti": "x" * 129},
        {"jti": "with space"},
        {"jti": 7},
        {"origin": "https://app.example/path"},
        {"origin": "not an origin"},
    ],
)
def test_bad_question_claims_are_401_session_invalid(client, secret_key, claims):
    response = post_grant(client, mint_session(secret_key, **claims), {"requests": 1})
    assert response.status_code == 401, response.get_json()
    assert error_of(response)["code"] == "session_invalid"
    assert "session token" in error_of(response)["message"]


def test_the_session_origin_is_compared_in_its_normal_form(client, secret_key):
    # What another client library might write for the allowed origin http://localhost:5000
    for spelled in ("HTTP://LocalHost:5000", "http://localhost:5000/"):
        response = post_grant(client, mint_session(secret_key, origin=spelled), {"requests": 1})
        assert response.status_code == 200, (spelled, response.get_json())


# --- the model is part of the question ---------------------------------------------------


def test_the_grant_records_the_sessions_model_and_is_spent_only_on_it(
    app, client, secret_key, api_headers
):
    grant = post_grant(
        client, mint_session(secret_key, model="local/markdown"), {"requests": 3}
    ).get_json()["grantToken"]
    with app.app_context():
        assert db.session.scalar(select(Grant.model)) == "local/markdown"
    ok = client.post("/api/v1/chat/completions", headers=api_headers(grant), json=chat_body())
    assert ok.status_code == 200


def test_another_model_is_402_model_not_granted(app_config, secret_key, upstream, upstream_config):
    """A grant for one model, called with another priced model that the engine serves."""
    from wattfare_demo import create_app
    from wattfare_demo.engine import ensure_configured_app

    served = create_app({**app_config, **upstream_config})
    ensure_configured_app(served)
    client = served.test_client()
    grant = post_grant(
        client, mint_session(secret_key, model="local/markdown"), {"requests": 3}
    ).get_json()["grantToken"]
    headers = {"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant}
    refused = client.post(
        "/api/v1/chat/completions", headers=headers, json=chat_body(model=FAKE_MODEL)
    )
    assert refused.status_code == 402
    error = error_of(refused)
    assert (error["code"], error["reason"]) == ("grant_invalid", "model_not_granted")
    assert "'local/markdown' only, not 'fake/model'" in error["message"]
    assert upstream.requests == []  # nothing reached the provider
    status = client.get("/api/v1/grant", headers=headers).get_json()
    assert status["remaining"] == 3  # and nothing was used
    # A grant without a model works for any priced model, as before.
    any_model = post_grant(client, mint_session(secret_key), {"requests": 1}).get_json()
    response = client.post(
        "/api/v1/chat/completions",
        headers={**headers, "x-wattfare-grant": any_model["grantToken"]},
        json=chat_body(model=FAKE_MODEL),
    )
    assert response.status_code == 200, response.get_json()
    with served.app_context():
        db.session.remove()
        db.engine.dispose()


def test_a_session_for_a_model_the_engine_cannot_serve_is_400(client, secret_key):
    response = post_grant(client, mint_session(secret_key, model="no/such-model"), {"requests": 1})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["param"]) == ("model_not_found", "model")
    assert error["message"].startswith("The session names a model this engine cannot serve.")


# --- used session ids are forgotten once they expire --------------------------------------


def test_sweep_forgets_used_session_ids_after_they_expire(app, client, secret_key):
    fresh = mint_session(secret_key)
    assert post_grant(client, fresh, {"requests": 1}).status_code == 200
    with app.app_context():
        # A session used long ago (its token expired): what the sweep may forget.
        row = SessionUse(app_id=secret_key.split("_")[2], jti="old", expires_at=1)
        db.session.add(row)
        db.session.commit()
        db.session.remove()
    result = app.test_cli_runner().invoke(args=["wattfare", "sweep"])
    assert result.exit_code == 0, result.output
    assert "Forgot 1 used session id(s) past their expiry." in result.output
    with app.app_context():
        assert db.session.scalars(select(SessionUse.jti)).all() != ["old"]
        assert db.session.scalar(select(func.count()).select_from(SessionUse)) == 1
        db.session.remove()
    # The one still live is remembered: it cannot create a second grant.
    assert post_grant(client, fresh, {"requests": 1}).status_code == 409
