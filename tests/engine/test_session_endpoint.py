"""The demo's POST /api/wattfare-token: a session token bound to what the page will ask.

wattfare.js posts requestGrant()'s options, `{"requests", "maxUsd"}`; the converter's
server allows at most CONVERTER_MAX_REQUESTS requests and a cap of at most
WATTFARE_MAX_USD, names WATTFARE_MODEL, and the engine holds the grant to the answer.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from joserfc import jws

from tests.helpers import ORIGIN

TOKEN = "/api/wattfare-token"


def ask(client, body: Any = None, *, raw: bytes | None = None):
    kwargs: dict[str, Any] = {"base_url": ORIGIN, "headers": {"Origin": ORIGIN}}
    if raw is not None:
        kwargs.update(data=raw, content_type="application/json")
    elif body is not None:
        kwargs["json"] = body
    return client.post(TOKEN, **kwargs)


def claims_of(response) -> dict[str, Any]:
    assert response.status_code == 200, response.get_json()
    return json.loads(jws.extract_compact(response.get_json()["token"].encode()).payload)


def grant_with(client, response, body: dict[str, Any]):
    return client.post(
        "/api/v1/grants",
        json=body,
        headers={"Authorization": f"Bearer {response.get_json()['token']}"},
    )


def test_the_token_is_bound_to_the_question_and_the_model(app, client) -> None:
    response = ask(client, {"requests": 3, "maxUsd": 0.5})
    assert response.headers["Cache-Control"] == "no-store"
    claims = claims_of(response)
    assert (claims["requests"], claims["maxUsd"], claims["model"], claims["origin"]) == (
        3,
        0.5,
        app.config["WATTFARE_MODEL"],
        ORIGIN,
    )
    assert "maxUsd" not in claims_of(ask(client, {"requests": 1, "maxUsd": None}))
    assert "maxUsd" not in claims_of(ask(client, {"requests": 1}))


def test_the_engine_holds_the_grant_to_it(client) -> None:
    # More than the page asked (what a script with the page's token might try): refused.
    for body in ({"requests": 4, "maxUsd": 0.5}, {"requests": 3, "maxUsd": 0.6}, {"requests": 3}):
        refused = grant_with(client, ask(client, {"requests": 3, "maxUsd": 0.5}), body)
        assert refused.status_code == 403, body
        assert refused.get_json()["error"]["code"] == "exceeds_session"
    # What it asked: one grant, once.
    response = ask(client, {"requests": 3, "maxUsd": 0.5})
    assert grant_with(client, response, {"requests": 3, "maxUsd": 0.5}).status_code == 200
    assert grant_with(client, response, {"requests": 1, "maxUsd": 0.5}).status_code == 409


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        (None, "body", "Send JSON"),
        ([], "body", "Send JSON"),
        ({}, "requests", "from 1 to 5"),
        ({"requests": 0}, "requests", "from 1 to 5"),
        ({"requests": 6}, "requests", "at most 5 AI requests"),
        ({"requests": 100}, "requests", "at most 5 AI requests"),  # the review's "100"
        ({"requests": 2.0}, "requests", "whole number"),
        ({"requests": "2"}, "requests", "whole number"),
        ({"requests": True}, "requests", "whole number"),
        ({"requests": 1, "maxUsd": 0}, "maxUsd", "more than $0"),
        ({"requests": 1, "maxUsd": 100.01}, "maxUsd", "at most $100"),
        ({"requests": 1, "maxUsd": "1"}, "maxUsd", "number of dollars"),
        ({"requests": 1, "maxUsd": [1]}, "maxUsd", "number of dollars"),
    ],
)
def test_a_question_the_server_does_not_allow_is_400(app, client, body, param, message) -> None:
    app.config["CONVERTER_MAX_REQUESTS"] = 5
    response = ask(client, body)
    assert response.status_code == 400
    error = response.get_json()
    assert (error["error"], error["param"]) == ("invalid_request", param)
    assert message in error["message"]


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting: never a RecursionError (500)
        b'{"requests": 1, "maxUsd": NaN}',
        b'{"requests": 1, "maxUsd": 1e999999}',
        b"\xff\xfe",
        b'{"requests": 1, "pad": "' + b"x" * 5000 + b'"}',
    ],
    ids=["deep", "nan", "huge-exponent", "binary", "large"],
)
def test_hostile_bodies_are_400(client, raw: bytes) -> None:
    response = ask(client, raw=raw)
    assert response.status_code == 400, response.get_data()[:200]
    assert response.get_json()["error"] == "invalid_request"


def test_the_maximum_is_a_setting_and_the_page_offers_the_same(app, client) -> None:
    app.config["CONVERTER_MAX_REQUESTS"] = 2
    assert ask(client, {"requests": 3}).status_code == 400
    assert claims_of(ask(client, {"requests": 2}))["requests"] == 2
    page = client.get("/").get_data(as_text=True)
    assert 'data-max-requests="2"' in page
    assert "at most 2 in all" in page
    assert '<option value="2">' not in page  # no extra requests past the maximum
