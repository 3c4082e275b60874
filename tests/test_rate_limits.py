"""Rate limits: 429 + Retry-After on grants, chat and the consent page, counted per app.

The shared fixtures turn limits off (tests/conftest.py); each test here builds an app
with them on, low enough to reach in a few calls, on the same test database.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.helpers import ORIGIN, chat_body, mint_session
from tests.openapi_check import check_response
from wattfare_demo import create_app
from wattfare_demo.config import load_settings
from wattfare_demo.engine.apps import create_app_record
from wattfare_demo.extensions import db

GRANTS = "/api/v1/grants"
CHAT = "/api/v1/chat/completions"
NONCE = "n" * 22


@pytest.fixture
def limited(app: Flask, app_config: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    """limited(grants="2/minute", …) -> an app with rate limits on, on the test database."""
    made: list[Flask] = []

    def make(grants: str = "2/minute", chat: str = "2/minute", consent: str = "2/minute", **extra):
        limited_app = create_app(
            {
                **app_config,
                "RATELIMIT_ENABLED": True,
                "RATELIMIT_STORAGE_URI": "memory://",
                "WATTFARE_RATE_LIMIT_GRANTS": grants,
                "WATTFARE_RATE_LIMIT_CHAT": chat,
                "WATTFARE_RATE_LIMIT_CONSENT": consent,
                **extra,
            }
        )
        made.append(limited_app)
        return limited_app

    yield make
    for limited_app in made:
        with limited_app.app_context():
            db.session.remove()
            db.engine.dispose()


def new_grant(client: FlaskClient, secret_key: str) -> Any:
    return client.post(
        GRANTS,
        json={"requests": 5},
        headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
    )


def chat(client: FlaskClient, secret_key: str, grant: str) -> Any:
    return client.post(
        CHAT,
        json=chat_body(),
        headers={"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant},
    )


def assert_rate_limited(response: Any, url: str) -> None:
    assert response.status_code == 429
    retry_after = int(response.headers["Retry-After"])
    assert 1 <= retry_after <= 61
    error = response.get_json()["error"]
    assert (error["code"], error["type"]) == ("rate_limited", "rate_limit_error")
    assert f"Retry in {retry_after} second" in error["message"]
    check_response("POST", url, response)  # as the OpenAPI document describes it


def other_app_key(app: Flask) -> str:
    with app.app_context():
        key = create_app_record("other", "test", [ORIGIN], app.config["SECRET_KEY"]).secret_key
        db.session.remove()
    return key


def test_grant_creation_is_limited_per_app(limited, secret_key: str) -> None:
    client = limited(grants="2/minute").test_client()
    assert [new_grant(client, secret_key).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(new_grant(client, secret_key), GRANTS)


def test_chat_is_limited_per_app_and_a_refused_call_uses_nothing(
    limited, secret_key: str, make_grant
) -> None:
    app = limited(chat="2/minute")
    client = app.test_client()
    grant = make_grant(5)
    assert [chat(client, secret_key, grant).status_code for _ in range(2)] == [200, 200]
    assert_rate_limited(chat(client, secret_key, grant), CHAT)
    status = client.get(
        "/api/v1/grant",
        headers={"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant},
    ).get_json()
    assert status["remaining"] == 3  # the 429 reserved nothing


def test_the_consent_page_is_limited_with_its_own_error_page(limited, app: Flask) -> None:
    client = limited(consent="1/minute").test_client()
    url = (
        f"/wattfare/consent?pk={app.config['WATTFARE_PUBLISHABLE_KEY']}"
        f"&origin={ORIGIN}&requests=1&nonce={NONCE}"
    )
    assert client.get(url).status_code == 200
    response = client.get(url)
    assert response.status_code == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 61
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    # The popup's error page, which consent.js posts to the opener: the app learns why.
    assert 'data-error-code="rate_limited"' in page
    assert f'data-nonce="{NONCE}"' in page and f'data-opener-origin="{ORIGIN}"' in page
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_consent_is_counted_per_app_and_visitor(limited, app: Flask) -> None:
    client = limited(consent="1/minute").test_client()
    url = (
        f"/wattfare/consent?pk={app.config['WATTFARE_PUBLISHABLE_KEY']}"
        f"&origin={ORIGIN}&requests=1&nonce={NONCE}"
    )

    def visit(address: str) -> int:
        return client.get(url, environ_base={"REMOTE_ADDR": address}).status_code

    assert [visit("192.0.2.1"), visit("192.0.2.1")] == [200, 429]
    # Another visitor of the same app is not locked out by the first one.
    assert visit("192.0.2.2") == 200


def test_apps_do_not_share_an_allowance(limited, app: Flask, secret_key: str) -> None:
    limited_app = limited(grants="1/minute", chat="1/minute")
    client = limited_app.test_client()
    other_key = other_app_key(app)
    assert new_grant(client, secret_key).status_code == 200
    assert new_grant(client, secret_key).status_code == 429
    other_grant = new_grant(client, other_key)
    assert other_grant.status_code == 200  # the other app still has its own
    ours = new_grant(app.test_client(), secret_key).get_json()["grantToken"]  # limits off
    assert chat(client, secret_key, ours).status_code == 200
    assert chat(client, secret_key, ours).status_code == 429
    assert chat(client, other_key, other_grant.get_json()["grantToken"]).status_code == 200


def test_forged_credentials_cannot_spend_an_apps_allowance(
    limited, app: Flask, secret_key: str, make_grant
) -> None:
    """A wrong key or session naming the app is counted against its sender's address."""
    client = limited(grants="2/minute", chat="2/minute").test_client()
    app_id = secret_key.split("_")[2]
    forged_key = f"sk_test_{app_id}_{'0' * 48}"
    attacker = {"REMOTE_ADDR": "198.51.100.7"}
    for _ in range(3):
        client.post(
            GRANTS,
            json={"requests": 1},
            headers={"Authorization": "Bearer " + mint_session(forged_key)},
            environ_base=attacker,
        )
        client.post(
            CHAT,
            json=chat_body(),
            headers={"Authorization": f"Bearer {forged_key}", "x-wattfare-grant": "wfg_x"},
            environ_base=attacker,
        )
    # The attacker's own address is now limited ...
    refused = client.post(
        CHAT,
        json=chat_body(),
        headers={"Authorization": f"Bearer {forged_key}"},
        environ_base=attacker,
    )
    assert refused.status_code == 429
    # ... and the real app, calling from that same address, is not.
    grant = make_grant(3)
    assert new_grant(client, secret_key).status_code == 200
    real = client.post(
        CHAT,
        json=chat_body(),
        headers={"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant},
        environ_base=attacker,
    )
    assert real.status_code == 200


def test_limits_can_be_turned_off(limited, secret_key: str) -> None:
    client = limited(grants="1/minute", RATELIMIT_ENABLED=False).test_client()
    assert {new_grant(client, secret_key).status_code for _ in range(5)} == {200}
    one_route_off = limited(grants="off", chat="1/minute").test_client()
    assert {new_grant(one_route_off, secret_key).status_code for _ in range(5)} == {200}


def test_a_malformed_limit_stops_start_up(limited) -> None:
    with pytest.raises(ValueError, match="WATTFARE_RATE_LIMIT_CHAT"):
        limited(chat="lots")


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
    assert settings["WATTFARE_RATE_LIMIT_GRANTS"] == "30/minute"
    assert settings["WATTFARE_RATE_LIMIT_CHAT"] == "600/minute"
    assert settings["WATTFARE_RATE_LIMIT_CONSENT"] == "60/minute"
    redis = load_settings({"REDIS_URL": "redis://cache:6379/2", **environ}, "instance")
    assert redis["RATELIMIT_STORAGE_URI"] == "redis://cache:6379/2"


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
    prefix = f"wattfare-test-{uuid.uuid4().hex[:12]}"
    pattern = f"*{prefix}*"
    assert not list(redis_db.scan_iter(pattern))
    settings = {"RATELIMIT_STORAGE_URI": REDIS_URL, "RATELIMIT_KEY_PREFIX": prefix}
    # Two apps on one Redis are two workers (or hosts) of one deploy: they share counts.
    worker_1 = limited(grants="2/minute", **settings).test_client()
    worker_2 = limited(grants="2/minute", **settings).test_client()
    try:
        assert new_grant(worker_1, secret_key).status_code == 200
        keys = [key.decode() for key in redis_db.scan_iter(pattern)]
        app_id = secret_key.split("_")[2]
        assert len(keys) == 1 and re.search(
            rf"{prefix}/app:{app_id}/wattfare_api\.create_grant", keys[0]
        ), keys
        assert new_grant(worker_2, secret_key).status_code == 200
        assert_rate_limited(new_grant(worker_1, secret_key), GRANTS)
        assert int(redis_db.get(keys[0])) >= 2
    finally:
        for key in redis_db.scan_iter(pattern):
            redis_db.delete(key)


def test_an_unreachable_redis_does_not_take_the_api_down(limited, secret_key: str) -> None:
    # Port 9 (discard) on loopback: nothing listens. The limits fail open, and say so in
    # the log, rather than answer 500.
    client = limited(RATELIMIT_STORAGE_URI="redis://127.0.0.1:9/0").test_client()
    assert new_grant(client, secret_key).status_code == 200
