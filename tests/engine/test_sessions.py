"""Session tokens carry the question the app's server allows, as the SDK mints them.

`wf.create_session(origin=…, requests=…, max_usd=…, model=…)` writes `requests`, `maxUsd`
and `model` claims; the engine's `verify_session` reads them back into a Session, exactly
(a dollar amount survives the trip through JSON), and POST /api/v1/grants holds the grant
to them (tests/engine/test_grants_api.py).
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from joserfc import jws

from tests.helpers import ORIGIN
from wattfare_demo.engine.sessions import verify_session
from wattfare_demo.sdk import Wattfare


@pytest.fixture
def wf(app, secret_key: str) -> Wattfare:
    return Wattfare(secret_key, wsgi_app=app)


def claims_of(token: str) -> dict[str, Any]:
    return json.loads(jws.extract_compact(token.encode()).payload)


def test_requests_is_required(wf: Wattfare) -> None:
    """A session that bounded nothing would let anyone who reaches the app's token
    endpoint ask for the engine's maximum, uncapped: the SDK does not mint one."""
    with pytest.raises(TypeError, match="requests"):
        wf.create_session(origin=ORIGIN)  # type: ignore[call-arg]


def test_the_claims_say_what_the_server_allows(wf: Wattfare) -> None:
    session = wf.create_session(
        "user-1", origin="HTTP://LocalHost:5000/", requests=3, max_usd=Decimal("0.50"),
        model="local/markdown",
    )  # fmt: skip
    claims = claims_of(session.token)
    assert (claims["origin"], claims["requests"], claims["maxUsd"], claims["model"]) == (
        ORIGIN,
        3,
        0.5,
        "local/markdown",
    )
    assert claims["sub"] == "user-1"
    bare = claims_of(wf.create_session(origin=ORIGIN, requests=1).token)
    assert bare["requests"] == 1 and "maxUsd" not in bare and "model" not in bare


@pytest.mark.parametrize(
    ("max_usd", "pusd"),
    [
        (Decimal("0.1"), 100_000_000_000),
        (0.1, 100_000_000_000),  # not 0.1000000000000000055…
        (Decimal("0.000123"), 123_000_000),
        (Decimal("2"), 2 * 10**12),
        (5, 5 * 10**12),
        (1e-9, 1_000),
    ],
)
def test_the_engine_reads_the_cap_exactly(app, wf: Wattfare, max_usd, pusd) -> None:
    token = wf.create_session(origin=ORIGIN, requests=1, max_usd=max_usd).token
    with app.app_context():
        session = verify_session(token, app.config["SECRET_KEY"])
        assert (session.max_pusd, session.requests, session.model) == (pusd, 1, None)
        assert session.origin == ORIGIN
        assert session.jti == claims_of(token)["jti"]
        assert session.expires_at == claims_of(token)["exp"]


@pytest.mark.parametrize(
    "arguments",
    [
        {"requests": 0},
        {"requests": -1},
        {"requests": 1.0},
        {"requests": "3"},
        {"requests": True},
        {"requests": None},
        {"requests": 1, "max_usd": 0},
        {"requests": 1, "max_usd": -0.5},
        {"requests": 1, "max_usd": float("nan")},
        {"requests": 1, "max_usd": float("inf")},
        {"requests": 1, "max_usd": Decimal("NaN")},
        {"requests": 1, "max_usd": "0.5"},
        {"requests": 1, "max_usd": True},
        {"requests": 1, "model": ""},
        {"requests": 1, "model": "   "},
        {"requests": 1, "model": 7},
        {"requests": 1, "model": "m" * 121},
    ],
)
def test_bad_arguments_are_refused_before_any_token_exists(wf: Wattfare, arguments) -> None:
    with pytest.raises(ValueError, match=r"requests|max_usd|model"):
        wf.create_session(origin=ORIGIN, **arguments)
