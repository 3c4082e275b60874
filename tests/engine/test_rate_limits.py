"""Rate limits: per visitor on every route a browser calls, per app only as a ceiling that
counts what did something, and 429 + Retry-After in each route's own shape.

The shared fixtures turn limits off (tests/conftest.py); each test here builds an app
with them on, on the same test database: at their defaults where the test is about what
a deploy gets, low enough to reach in a few calls otherwise. Visitors are told apart by
their address (REMOTE_ADDR, or X-Forwarded-For behind WATTFARE_PROXY_HOPS proxies).
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import ORIGIN, chat_body, mint_session
from tests.openapi_check import check_response
from wattfare_demo import create_app
from wattfare_demo.config import RATE_LIMIT_DEFAULTS, load_settings
from wattfare_demo.engine.apps import create_app_record
from wattfare_demo.engine.ratelimit import RouteLimit, init_rate_limits, visitor
from wattfare_demo.extensions import db

GRANTS = "/api/v1/grants"
CHAT = "/api/v1/chat/completions"
NONCE = "n" * 22
ALICE = {"REMOTE_ADDR": "192.0.2.1"}
BOB = {"REMOTE_ADDR": "192.0.2.2"}
FAKE_GRANT = "wfg_" + "A" * 36  # well formed, but no grant has it


@pytest.fixture
def limited(app: Flask, app_config: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    """limited(SETTING="2/minute", …) -> an app with rate limits on, on the test database.

    Every limit not named is at its default (what a deploy gets)."""
    made: list[Flask] = []

    def make(**settings: Any) -> Flask:
        limited_app = create_app(
            {
                **app_config,
                "RATELIMIT_ENABLED": True,
                "RATELIMIT_STORAGE_URI": "memory://",
                **RATE_LIMIT_DEFAULTS,
                **settings,
            }
        )
        made.append(limited_app)
        return limited_app

    yield make
    for limited_app in made:
        with limited_app.app_context():
            db.session.remove()
            db.engine.dispose()


def new_grant(client: FlaskClient, secret_key: str, who=ALICE, **body: Any) -> Any:
    return client.post(
        GRANTS,
        json={"requests": 5, **body},
        headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
        environ_base=who,
    )


def chat(client: FlaskClient, secret_key: str, grant: str, body=None) -> Any:
    return client.post(
        CHAT,
        json=body or chat_body(),
        headers={"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant},
    )


def consent_url(app: Flask) -> str:
    return (
        f"/wattfare/consent?pk={app.config['WATTFARE_PUBLISHABLE_KEY']}"
        f"&origin={ORIGIN}&requests=1&nonce={NONCE}"
    )


def assert_rate_limited(response: Any, url: str, who: str = "from your address") -> None:
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    error = response.get_json()["error"]
    assert (error["code"], error["type"]) == ("rate_limited", "rate_limit_error")
    assert f"Too many requests {who}" in error["message"]
    assert f"Retry in {retry_after} second" in error["message"]
    check_response("POST", url, response)  # as the OpenAPI document describes it


def grant_remaining(client: FlaskClient, secret_key: str, grant: str) -> int:
    return client.get(
        "/api/v1/grant",
        headers={"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant},
    ).get_json()["remaining"]


# --- what a visitor runs into ------------------------------------------------------------


def test_grant_creation_is_limited_per_visitor(limited, secret_key: str) -> None:
    client = limited(WATTFARE_RATE_LIMIT_GRANTS="2/minute").test_client()
    assert [new_grant(client, secret_key).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(new_grant(client, secret_key), GRANTS)
    # Bob, approving at the same moment, is not Alice.
    assert new_grant(client, secret_key, who=BOB).status_code == 200


def test_a_flood_from_one_visitor_does_not_lock_out_another(limited, app: Flask) -> None:
    """The attack review's two lock-outs, at the default limits: made-up grant tokens
    sprayed at /api/convert, and session tokens minted from a script."""
    client = limited().test_client()
    convert = {"grantToken": FAKE_GRANT, "file": "<h1>Hi</h1>"}
    flood = Counter()
    for _ in range(60):
        flood[
            client.post(
                "/api/convert",
                json=convert,
                base_url=ORIGIN,
                headers={"Origin": ORIGIN},
                environ_base=ALICE,
            ).status_code
        ] += 1
        flood[
            client.post(
                "/api/wattfare-token",
                json={"requests": 1},
                base_url=ORIGIN,
                headers={"Origin": ORIGIN},
                environ_base=ALICE,
            ).status_code
        ] += 1
    # Alice got what the defaults allow her, and then 429s.
    assert flood[429] == 60 - 30 + 60 - 10, flood
    assert flood[402] == 30 and flood[200] == 10, flood

    # Bob, meanwhile: a session, the popup, a grant, two conversions. No 429 anywhere.
    token = client.post(
        "/api/wattfare-token",
        json={"requests": 2},
        base_url=ORIGIN,
        headers={"Origin": ORIGIN},
        environ_base=BOB,
    )
    assert token.status_code == 200, token.get_json()
    assert client.get(consent_url(app), environ_base=BOB).status_code == 200
    grant = client.post(
        GRANTS,
        json={"requests": 2},
        headers={"Authorization": f"Bearer {token.get_json()['token']}"},
        environ_base=BOB,
    )
    assert grant.status_code == 200, grant.get_json()
    for remaining in (1, 0):
        converted = client.post(
            "/api/convert",
            json={"grantToken": grant.get_json()["grantToken"], "file": "<h1>Report</h1>"},
            base_url=ORIGIN,
            headers={"Origin": ORIGIN},
            environ_base=BOB,
        )
        assert converted.status_code == 200, converted.get_json()
        assert converted.get_json()["remaining"] == remaining


def test_the_demos_429s_come_in_the_demos_shapes(limited) -> None:
    client = limited(CONVERTER_RATE_LIMIT_CONVERT="1/minute").test_client()
    body = {"grantToken": FAKE_GRANT, "file": "x"}
    headers = {"Origin": "http://localhost"}
    assert client.post("/api/convert", json=body, headers=headers).status_code == 402
    refused = client.post("/api/convert", json=body, headers=headers)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert refused.get_json()["error"] == "rate_limited"
    assert "Too many requests from your address" in refused.get_json()["message"]
    fragment = client.post("/api/convert", json=body, headers={**headers, "HX-Request": "true"})
    assert fragment.status_code == 429 and fragment.mimetype == "text/html"
    page = fragment.get_data(as_text=True)
    assert 'data-error="rate_limited"' in page and "Busy right now" in page
    assert "HX-Request" in fragment.headers["Vary"]


def test_the_plan_route_is_limited_per_visitor(limited) -> None:
    """/api/convert/plan parses an upload without any grant: each visitor has an allowance
    of their own, and one visitor using theirs up leaves another's whole."""
    client = limited(CONVERTER_RATE_LIMIT_PLAN="2/minute").test_client()
    body = {"file": {"name": "notes.md", "content": "# Notes\n\nSome text."}}

    def plan(who: dict[str, str]) -> int:
        headers = {"Origin": "http://localhost"}
        return client.post(
            "/api/convert/plan", json=body, headers=headers, environ_base=who
        ).status_code

    assert [plan(ALICE) for _ in range(3)] == [200, 200, 429]
    assert plan(BOB) == 200


# --- the app's ceilings count only what did something ----------------------------------


def test_the_grant_ceiling_counts_only_grants_created(limited, secret_key: str) -> None:
    client = limited(WATTFARE_APP_RATE_LIMIT_GRANTS="2/minute").test_client()
    addresses = iter(f"198.51.100.{n}" for n in range(1, 100))

    def someone() -> dict[str, str]:
        return {"REMOTE_ADDR": next(addresses)}

    # Refusals (a bad body, more than the session allows, a used session) are not grants.
    session = mint_session(secret_key, requests=1)
    auth = {"Authorization": f"Bearer {session}"}
    for body in ({"requests": 0}, {"requests": 2}, {"requests": 1, "extra": 1}):
        assert client.post(GRANTS, json=body, headers=auth, environ_base=someone()).status_code in (
            400,
            403,
        )
    assert client.post(GRANTS, json={"requests": 1}, headers=auth).status_code == 200
    assert client.post(GRANTS, json={"requests": 1}, headers=auth).status_code == 409
    assert new_grant(client, secret_key, who=someone()).status_code == 200
    # Two grants created, from different visitors: the app's ceiling is reached.
    assert_rate_limited(
        new_grant(client, secret_key, who=someone()),
        GRANTS,
        who="for this app, from all its visitors together",
    )


def test_the_chat_ceiling_counts_only_calls_that_reserved(
    limited, secret_key: str, make_grant
) -> None:
    client = limited(WATTFARE_APP_RATE_LIMIT_CHAT="2/minute").test_client()
    grant = make_grant(5)
    for _ in range(20):  # unknown grants, bad bodies: refused, so nothing reserved
        assert chat(client, secret_key, FAKE_GRANT).status_code == 402
        assert chat(client, secret_key, grant, {"model": "local/markdown"}).status_code == 400
    assert [chat(client, secret_key, grant).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(chat(client, secret_key, grant), CHAT, who="for this app")
    assert grant_remaining(client, secret_key, grant) == 3  # the 429 reserved nothing


def test_refused_conversions_do_not_use_up_the_apps_chat_ceiling(limited, make_grant) -> None:
    """Alice's made-up tokens reach the engine (the converter asks it about each one), and
    are refused there: Bob's conversion is not refused for them."""
    client = limited(WATTFARE_APP_RATE_LIMIT_CHAT="2/minute").test_client()
    headers = {"Origin": "http://localhost"}
    for _ in range(10):
        assert (
            client.post(
                "/api/convert",
                json={"grantToken": FAKE_GRANT, "file": "x"},
                headers=headers,
                environ_base=ALICE,
            ).status_code
            == 402
        )
    converted = client.post(
        "/api/convert",
        json={"grantToken": make_grant(1), "file": "<h1>Report</h1>"},
        headers=headers,
        environ_base=BOB,
    )
    assert converted.status_code == 200, converted.get_json()


def test_apps_do_not_share_a_ceiling(limited, app: Flask, secret_key: str) -> None:
    limited_app = limited(WATTFARE_APP_RATE_LIMIT_GRANTS="1/minute")
    client = limited_app.test_client()
    with app.app_context():
        other_key = create_app_record("other", "test", [ORIGIN], app.config["SECRET_KEY"])
        other_key = other_key.secret_key
        db.session.remove()
    assert new_grant(client, secret_key).status_code == 200
    assert new_grant(client, secret_key, who=BOB).status_code == 429
    assert new_grant(client, other_key, who=BOB).status_code == 200  # its own ceiling


def test_forged_credentials_never_spend_an_apps_ceiling(
    limited, secret_key: str, make_grant
) -> None:
    """App ids are public: a wrong key or a forged session naming the app is counted
    against its sender's address (and, refused, not counted at all)."""
    client = limited(
        WATTFARE_APP_RATE_LIMIT_GRANTS="2/minute", WATTFARE_APP_RATE_LIMIT_CHAT="2/minute"
    ).test_client()
    app_id = secret_key.split("_")[2]
    forged_key = f"sk_test_{app_id}_{'0' * 48}"
    attacker = {"REMOTE_ADDR": "198.51.100.7"}
    for _ in range(5):
        forged_session = mint_session(forged_key)
        assert new_grant(client, forged_key, who=attacker).status_code == 401
        assert (
            client.post(
                GRANTS,
                json={"requests": 1},
                headers={"Authorization": f"Bearer {forged_session}"},
                environ_base=attacker,
            ).status_code
            == 401
        )
        assert chat(client, forged_key, FAKE_GRANT).status_code == 401
    grant = make_grant(3)
    assert [new_grant(client, secret_key).status_code for _ in range(2)] == [200, 200]
    assert [chat(client, secret_key, grant).status_code for _ in range(2)] == [200, 200]


# --- the consent page -------------------------------------------------------------------


def test_the_consent_page_is_limited_with_its_own_error_page(limited, app: Flask) -> None:
    client = limited(WATTFARE_RATE_LIMIT_CONSENT="1/minute").test_client()
    assert client.get(consent_url(app)).status_code == 200
    response = client.get(consent_url(app))
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    # The popup's error page, which consent.js posts to the opener: the app learns why.
    assert 'data-error-code="rate_limited"' in page
    assert f'data-nonce="{NONCE}"' in page and f'data-opener-origin="{ORIGIN}"' in page
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_consent_is_counted_per_visitor_and_app(limited, app: Flask) -> None:
    client = limited(WATTFARE_RATE_LIMIT_CONSENT="1/minute").test_client()
    with app.app_context():
        other = create_app_record("other", "test", [ORIGIN], app.config["SECRET_KEY"])
        other_url = consent_url(app).replace(
            app.config["WATTFARE_PUBLISHABLE_KEY"], other.app.publishable_key
        )
        db.session.remove()

    def visit(url: str, who: dict[str, str]) -> int:
        return client.get(url, environ_base=who).status_code

    assert [visit(consent_url(app), ALICE), visit(consent_url(app), ALICE)] == [200, 429]
    assert visit(consent_url(app), BOB) == 200  # another visitor
    assert visit(other_url, ALICE) == 200  # another app's popup


# --- who a visitor is: the trusted proxies -----------------------------------------------


def test_without_a_trusted_proxy_x_forwarded_for_changes_nothing(limited, app: Flask) -> None:
    """WATTFARE_PROXY_HOPS=0 (development): a client rotating X-Forwarded-For is still
    one visitor (the review dodged the consent limit 65 times out of 65 with it)."""
    client = limited(WATTFARE_RATE_LIMIT_CONSENT="2/minute", WATTFARE_PROXY_HOPS=0).test_client()
    statuses = [
        client.get(
            consent_url(app), headers={"X-Forwarded-For": f"203.0.113.{n}"}, environ_base=ALICE
        ).status_code
        for n in range(10)
    ]
    assert statuses == [200, 200] + [429] * 8


def test_behind_one_proxy_the_address_it_appended_is_the_visitor(limited, app: Flask) -> None:
    """WATTFARE_PROXY_HOPS=1 (the Procfile: Heroku's router): the last X-Forwarded-For
    entry is the visitor, whatever a client wrote in front of it."""
    client = limited(WATTFARE_RATE_LIMIT_CONSENT="2/minute", WATTFARE_PROXY_HOPS=1).test_client()
    router = {"REMOTE_ADDR": "10.0.0.1"}  # every request arrives from the router

    def visit(forwarded_for: str) -> int:
        headers = {"X-Forwarded-For": forwarded_for}
        return client.get(consent_url(app), headers=headers, environ_base=router).status_code

    assert [visit(f"198.51.100.{n}, 203.0.113.5") for n in range(3)] == [200, 200, 429]
    assert visit("203.0.113.6") == 200  # another visitor behind the same router


def test_ipv6_visitors_count_per_64(limited, app: Flask) -> None:
    client = limited(WATTFARE_RATE_LIMIT_CONSENT="1/minute").test_client()

    def visit(address: str) -> int:
        return client.get(consent_url(app), environ_base={"REMOTE_ADDR": address}).status_code

    assert visit("2001:db8:1:2::1") == 200
    assert visit("2001:db8:1:2:ffff::9") == 429  # the same /64: one subscriber
    assert visit("2001:db8:1:3::1") == 200
    assert visit("::ffff:192.0.2.9") == 200  # an IPv4 client seen through an IPv6 socket
    assert visit("192.0.2.9") == 429  # ... is that IPv4 visitor


def test_limits_are_attached_by_endpoint_name_and_a_missing_one_is_skipped() -> None:
    """How the demo's routes (demo_limits.py) get limits: by endpoint name, skipped when
    the app has no such route (converter.plan, before the converter grows one)."""
    app = Flask(__name__)
    app.config.update(
        RATELIMIT_STORAGE_URI="memory://", PING_LIMIT="1/minute", GONE_LIMIT="1/minute"
    )

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    limits = [
        RouteLimit("ping", "PING_LIMIT", visitor),
        RouteLimit("no.such.view", "GONE_LIMIT", visitor),
    ]
    assert init_rate_limits(app, limits) is not None
    assert "no.such.view" not in app.view_functions
    client = app.test_client()
    assert [client.get("/ping").status_code for _ in range(2)] == [200, 429]


# --- switches and settings --------------------------------------------------------------


def test_limits_can_be_turned_off(limited, secret_key: str) -> None:
    client = limited(WATTFARE_RATE_LIMIT_GRANTS="1/minute", RATELIMIT_ENABLED=False)
    assert {new_grant(client.test_client(), secret_key).status_code for _ in range(5)} == {200}
    one_route_off = limited(WATTFARE_RATE_LIMIT_GRANTS="off").test_client()
    assert {new_grant(one_route_off, secret_key).status_code for _ in range(5)} == {200}


def test_a_malformed_limit_stops_start_up(limited) -> None:
    with pytest.raises(ValueError, match="CONVERTER_RATE_LIMIT_CONVERT"):
        limited(CONVERTER_RATE_LIMIT_CONVERT="lots")


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, True),
        ({"WATTFARE_RATE_LIMITS": "off"}, False),
        ({"WATTFARE_RATE_LIMITS": "OFF "}, False),
        ({"RATELIMIT_ENABLED": "false"}, False),
        ({"RATELIMIT_ENABLED": "0"}, False),
        ({"RATELIMIT_ENABLED": "true", "WATTFARE_RATE_LIMITS": "on"}, True),
    ],
)
def test_settings_from_the_environment(environ: dict[str, str], enabled: bool) -> None:
    settings = load_settings(environ, "instance")
    assert settings["RATELIMIT_ENABLED"] is enabled
    assert settings["RATELIMIT_STORAGE_URI"] == "memory://"
    assert {name: settings[name] for name in RATE_LIMIT_DEFAULTS} == {
        "CONVERTER_RATE_LIMIT_TOKEN": "10/minute",
        "CONVERTER_RATE_LIMIT_CONVERT": "30/minute",
        "CONVERTER_RATE_LIMIT_PLAN": "60/minute",
        "WATTFARE_RATE_LIMIT_CONSENT": "30/minute",
        "WATTFARE_RATE_LIMIT_GRANTS": "10/minute",
        "WATTFARE_APP_RATE_LIMIT_GRANTS": "600/minute",
        "WATTFARE_APP_RATE_LIMIT_CHAT": "6000/minute",
    }
    assert settings["WATTFARE_PROXY_HOPS"] == 0
    redis = load_settings({"REDIS_URL": "redis://cache:6379/2", **environ}, "instance")
    assert redis["RATELIMIT_STORAGE_URI"] == "redis://cache:6379/2"
    own = load_settings({"CONVERTER_RATE_LIMIT_TOKEN": "3/second", **environ}, "instance")
    assert own["CONVERTER_RATE_LIMIT_TOKEN"] == "3/second"


# --- Redis ------------------------------------------------------------------------------

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def redis_db() -> Iterator[Any]:
    """Database 15 of the local Redis, or a skip. Only this test's keys are touched:
    other suites may be using the same Redis at the same time."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    yield client
    client.close()


def test_redis_storage_is_used_and_shared_by_workers(
    limited, redis_db: Any, secret_key: str
) -> None:
    prefix = f"wattfare-h3-test-{uuid.uuid4().hex[:12]}"
    pattern = f"*{prefix}*"
    assert not list(redis_db.scan_iter(pattern))
    settings = {
        "RATELIMIT_STORAGE_URI": REDIS_URL,
        "RATELIMIT_KEY_PREFIX": prefix,
        "WATTFARE_RATE_LIMIT_GRANTS": "2/minute",
    }
    # Two apps on one Redis are two workers (or hosts) of one deploy: they share counts.
    worker_1 = limited(**settings).test_client()
    worker_2 = limited(**settings).test_client()
    try:
        assert new_grant(worker_1, secret_key).status_code == 200
        keys = sorted(key.decode() for key in redis_db.scan_iter(pattern))
        app_id = secret_key.split("_")[2]
        # The visitor's count, and the app's ceiling (counted after the grant was made).
        assert len(keys) == 2, keys
        assert re.search(rf"{prefix}/app:{app_id}/wattfare_api\.create_grant", keys[0]), keys
        assert re.search(rf"{prefix}/visitor:192\.0\.2\.1/wattfare_api\.create_grant", keys[1])
        assert new_grant(worker_2, secret_key).status_code == 200
        assert_rate_limited(new_grant(worker_1, secret_key), GRANTS)
        assert int(redis_db.get(keys[1])) >= 2
    finally:
        for key in redis_db.scan_iter(pattern):
            redis_db.delete(key)


def test_an_unreachable_redis_does_not_take_the_api_down(limited, secret_key: str) -> None:
    # Port 9 (discard) on loopback: nothing listens. The limits fail open, and say so in
    # the log, rather than answer 500.
    client = limited(RATELIMIT_STORAGE_URI="redis://127.0.0.1:9/0").test_client()
    assert new_grant(client, secret_key).status_code == 200
