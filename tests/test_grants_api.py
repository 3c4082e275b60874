"""POST /api/v1/grants: session auth, strict validation, tokens stored only as hashes."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from tests.helpers import ORIGIN, mint_session
from wattfare_demo.engine.models import Grant
from wattfare_demo.engine.tokens import grant_token_is_well_formed, sha256_hex
from wattfare_demo.extensions import db


def post_grant(client, token: str, body=None, **kwargs):
    return client.post(
        "/api/v1/grants", headers={"Authorization": f"Bearer {token}"}, json=body, **kwargs
    )


def test_creates_a_grant_and_stores_only_its_hash(app, client, secret_key):
    before = int(time.time())
    response = post_grant(client, mint_session(secret_key), {"requests": 3, "maxUsd": 1.5})
    assert response.status_code == 200
    body = response.get_json()
    assert set(body) == {"grantToken", "expiresAt", "requests"}
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
