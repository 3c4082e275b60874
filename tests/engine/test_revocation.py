"""Revoking a grant: DELETE /api/v1/grant (the app), the receipt capability apart from the
grant token, and a stream stopped within a second of a revocation, in this process and
across processes (gunicorn), for chat completions and the Responses API."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from tests.fake_upstream import FAKE_MODEL, FAKE_UPSTREAM_KEY, StreamReply
from tests.helpers import chat_body, mint_session
from tests.procfile import WebProcess, procfile_env
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.extensions import db

# $1 per million prompt tokens and $2 per million completion tokens (upstream_config).
IN_PUSD, OUT_PUSD = 10**6, 2 * 10**6


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, **upstream_config}


def new_grant(client, secret_key: str, requests: int = 3) -> dict[str, Any]:
    response = client.post(
        "/api/v1/grants",
        json={"requests": requests},
        headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def capability_of(receipt_url: str) -> str:
    return receipt_url.rsplit("/", 1)[1]


def reason_of(response) -> str:
    body = response.get_json()
    return body["error"]["reason"]


# --- DELETE /api/v1/grant ---------------------------------------------------------------


def test_delete_revokes_and_later_calls_are_402_revoked(client, secret_key, api_headers):
    grant = new_grant(client, secret_key)["grantToken"]
    headers = api_headers(grant)
    first = client.post("/api/v1/chat/completions", headers=headers, json=chat_body())
    assert first.status_code == 200

    response = client.delete("/api/v1/grant", headers=headers)
    assert response.status_code == 200
    body = response.get_json()
    assert (body["status"], body["remaining"], body["requests"]) == ("revoked", 2, 3)

    refused = client.post("/api/v1/chat/completions", headers=headers, json=chat_body())
    assert refused.status_code == 402
    assert reason_of(refused) == "revoked"
    responses = client.post(
        "/api/v1/responses", headers=headers, json={"model": "local/markdown", "input": "Hi"}
    )
    assert (responses.status_code, reason_of(responses)) == (402, "revoked")
    # Revoking again changes nothing, and answers the same.
    again = client.delete("/api/v1/grant", headers=headers)
    assert again.status_code == 200 and again.get_json() == body
    assert client.get("/api/v1/grant", headers=headers).get_json()["status"] == "revoked"


def test_the_first_revocation_time_is_kept(app, client, secret_key, api_headers):
    grant = new_grant(client, secret_key)["grantToken"]
    client.delete("/api/v1/grant", headers=api_headers(grant))
    with app.app_context():
        first = db.session.scalar(select(Grant.revoked_at))
        db.session.remove()
    time.sleep(1.1)  # the database clock has whole seconds
    client.delete("/api/v1/grant", headers=api_headers(grant))
    with app.app_context():
        assert db.session.scalar(select(Grant.revoked_at)) == first
        db.session.remove()


def test_delete_refuses_what_get_refuses(client, secret_key, api_headers):
    grant = new_grant(client, secret_key)["grantToken"]
    no_grant = client.delete("/api/v1/grant", headers={"Authorization": f"Bearer {secret_key}"})
    assert no_grant.status_code == 400
    assert no_grant.get_json()["error"]["param"] == "x-wattfare-grant"
    assert client.delete("/api/v1/grant", headers={"x-wattfare-grant": grant}).status_code == 401
    unknown = client.delete("/api/v1/grant", headers=api_headers("wfg_" + "0" * 36))
    assert (unknown.status_code, reason_of(unknown)) == (402, "unknown")
    # Nothing of the above revoked it.
    assert client.get("/api/v1/grant", headers=api_headers(grant)).get_json()["status"] == "active"


def test_the_sdk_revokes(app, client, secret_key):
    from wattfare_demo.sdk import Wattfare, WattfareGrantError

    grant = new_grant(client, secret_key)["grantToken"]
    wf = Wattfare(secret_key=secret_key, wsgi_app=app)
    status = wf.grant(grant).revoke()
    assert (status.status, status.remaining) == ("revoked", 3)
    with pytest.raises(WattfareGrantError) as refused:
        wf.grant(grant).model("local/markdown").generate_text("Convert this to markdown: hi")
    assert refused.value.reason == "revoked"


# --- the receipt capability is not a grant token, nor the other way round ---------------


def test_grant_creation_returns_a_receipt_url_on_the_engines_origin(app, client, secret_key):
    body = new_grant(client, secret_key)
    assert set(body) == {"grantToken", "expiresAt", "requests", "receiptUrl"}
    url = body["receiptUrl"]
    assert url.startswith("http://localhost/wattfare/receipt/wfr_")
    capability = capability_of(url)
    assert capability != body["grantToken"]
    with app.app_context():
        grant = db.session.scalar(select(Grant))
        # Only hashes are stored: neither secret is in any column.
        for value in vars(grant).values():
            assert capability not in str(value) and body["grantToken"] not in str(value)
        db.session.remove()


def test_a_receipt_capability_spends_nothing(client, secret_key, api_headers):
    body = new_grant(client, secret_key)
    capability = capability_of(body["receiptUrl"])
    headers = api_headers(capability)
    refused = client.post("/api/v1/chat/completions", headers=headers, json=chat_body())
    assert (refused.status_code, reason_of(refused)) == (402, "unknown")
    assert client.get("/api/v1/grant", headers=headers).status_code == 402
    assert client.delete("/api/v1/grant", headers=headers).status_code == 402
    status = client.get("/api/v1/grant", headers=api_headers(body["grantToken"])).get_json()
    assert (status["remaining"], status["status"]) == (3, "active")


def test_a_grant_token_opens_no_receipt_and_revokes_nothing(client, secret_key, api_headers):
    body = new_grant(client, secret_key)
    token = body["grantToken"]
    assert client.get(f"/wattfare/receipt/{token}").status_code == 404
    revoke = client.post(
        "/wattfare/receipt/revoke", data={"receipt": token}, headers={"Origin": "http://localhost"}
    )
    assert revoke.status_code == 404
    assert client.get("/api/v1/grant", headers=api_headers(token)).get_json()["status"] == "active"


# --- a running stream stops within a second ---------------------------------------------


def _events(raw: bytes) -> list[Any]:
    blocks = [b for b in raw.decode().split("\n\n") if b.strip()]
    out: list[Any] = []
    for block in blocks:
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            out.append(data[0] if data[0] == "[DONE]" else json.loads(data[0]))
    return out


def stream_then_revoke(url: str, headers: dict[str, str], path: str, payload: dict, revoke) -> Any:
    """Open a stream, revoke once its first text arrived, read to its end.

    Returns (seconds from the revocation to the end of the stream, its events)."""
    raw = b""
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", url + path, headers=headers, json=payload) as response,
    ):
        assert response.status_code == 200, response.read()
        chunks = response.iter_bytes()
        while b"Hello" not in raw:
            raw += next(chunks)
        revoke()
        revoked_at = time.monotonic()
        for chunk in chunks:
            raw += chunk
        took = time.monotonic() - revoked_at
    return took, _events(raw)


def a_long_stream(upstream) -> int:
    """The upstream streams 200 pieces, 20 a second: ten seconds unless stopped."""
    upstream.respond(StreamReply(chunks=["Hello"] + ["word "] * 199, interval=0.05))
    return 200


def assert_charged_what_it_generated(app) -> None:
    with app.app_context():
        [use] = db.session.scalars(select(Usage)).all()
        grant = db.session.scalar(select(Grant))
        db.session.remove()
    assert (use.status, use.error) == ("ok", "revoked")
    assert 0 < use.completion_tokens < 100  # a second's worth at most, not ten
    assert use.cost_pusd == use.prompt_tokens * IN_PUSD + use.completion_tokens * OUT_PUSD
    assert (grant.used, grant.reserved, grant.held_pusd) == (1, 0, 0)
    assert grant.spent_pusd == use.cost_pusd


def test_revoking_stops_a_running_chat_stream_within_a_second(
    app, live_server, client, secret_key, api_headers, upstream
):
    a_long_stream(upstream)
    grant = new_grant(client, secret_key)["grantToken"]
    took, events = stream_then_revoke(
        live_server.url,
        api_headers(grant),
        "/api/v1/chat/completions",
        chat_body(model=FAKE_MODEL, stream=True),
        lambda: client.delete("/api/v1/grant", headers=api_headers(grant)),
    )
    assert took < 1.0
    assert events[-1] == "[DONE]"
    error = events[-2]["error"]
    assert (error["code"], error["reason"]) == ("grant_invalid", "revoked")
    assert events[-3]["usage"]["completion_tokens"] > 0  # the usage chunk before it
    assert_charged_what_it_generated(app)


def test_revoking_on_the_receipt_stops_a_responses_stream(
    app, live_server, client, secret_key, api_headers, upstream
):
    a_long_stream(upstream)
    body = new_grant(client, secret_key)
    receipt = live_server.url + "/wattfare/receipt/revoke"

    def revoke_on_the_receipt() -> None:
        response = httpx.post(
            receipt,
            data={"receipt": capability_of(body["receiptUrl"])},
            headers={"Origin": live_server.url, "HX-Request": "true"},
        )
        assert response.status_code == 200

    took, events = stream_then_revoke(
        live_server.url,
        api_headers(body["grantToken"]),
        "/api/v1/responses",
        {"model": FAKE_MODEL, "input": "Say hello.", "stream": True},
        revoke_on_the_receipt,
    )
    assert took < 1.0
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "grant_invalid"
    assert_charged_what_it_generated(app)


@pytest.mark.skipif(os.environ.get("WATTFARE_SKIP_GUNICORN") == "1", reason="no gunicorn")
def test_a_revocation_in_another_process_stops_a_gunicorn_stream(
    app, app_config, client, secret_key, api_headers, upstream, tmp_path
):
    """The stream runs in a gunicorn worker; the revocation is made here, in the test's
    own process: only the database connects them."""
    env = procfile_env(
        {
            "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
            "SECRET_KEY": app_config["SECRET_KEY"],
            "WATTFARE_PUBLISHABLE_KEY": app_config["WATTFARE_PUBLISHABLE_KEY"],
            "WATTFARE_SECRET_KEY": app_config["WATTFARE_SECRET_KEY"],
            "WATTFARE_ALLOWED_ORIGINS": ",".join(app_config["WATTFARE_ALLOWED_ORIGINS"]),
            "WATTFARE_UPSTREAM_URL": app_config["WATTFARE_UPSTREAM_URL"],
            "WATTFARE_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY,
            "WATTFARE_PRICES": json.dumps(app_config["WATTFARE_PRICES"]),
            "WATTFARE_DAILY_BUDGET_USD": "off",
        }
    )
    a_long_stream(upstream)
    grant = new_grant(client, secret_key)["grantToken"]
    with WebProcess(env, tmp_path, workers=1) as web:
        took, events = stream_then_revoke(
            web.url,
            api_headers(grant),
            "/api/v1/chat/completions",
            chat_body(model=FAKE_MODEL, stream=True),
            lambda: client.delete("/api/v1/grant", headers=api_headers(grant)),
        )
    assert took < 1.0
    assert events[-2]["error"]["reason"] == "revoked"
    assert_charged_what_it_generated(app)
