"""The OpenAPI document of /api/v1 is valid, complete, and true of our real responses.

`test_real_responses_match_the_document` makes representative calls (a success and every
error family of every operation) through the test client, checks each one against the
document with tests/openapi_check.py, and then checks coverage both ways: every status
the document lists was seen, and a status it does not list fails the check.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate
from sqlalchemy import select, update

from tests.fake_upstream import ErrorReply, FakeUpstream, Model, Reply, StreamReply
from tests.helpers import chat_body, mint_session
from tests.openapi_check import ContractError, check_response, documented_statuses, spec
from wattfare_demo import create_app
from wattfare_demo.engine import revocation
from wattfare_demo.engine.models import Grant
from wattfare_demo.extensions import db

UPSTREAM_MODEL = "fake/model"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
TOO_BIG = b"{" + b" " * (4 * 1024 * 1024) + b"}"  # just over MAX_CONTENT_LENGTH


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(spec())  # raises with the first problem
    assert spec()["openapi"].startswith("3.1")


def test_the_route_serves_the_checked_in_document(client: FlaskClient) -> None:
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == spec()


def test_every_api_route_is_documented_with_exactly_its_methods(app: Flask) -> None:
    served: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1/"):
            methods = set(rule.methods or ()) - {"HEAD", "OPTIONS"}
            served.setdefault(rule.rule.removeprefix("/api/v1"), set()).update(methods)
    documented = {
        path: {verb.upper() for verb in item if verb in ("get", "post", "put", "patch", "delete")}
        for path, item in spec()["paths"].items()
    }
    assert served == documented


# --- every status, through real calls -------------------------------------------------------


@dataclass
class Call:
    method: str
    url: str
    status: int
    response: Any


class Api:
    """Makes calls against one app's test client and keeps what came back."""

    def __init__(self, client: FlaskClient, secret_key: str) -> None:
        self.client = client
        self.secret_key = secret_key
        self.calls: list[Call] = []

    def call(self, expect: int, method: str, url: str, **kwargs: Any) -> Any:
        response = self.client.open(url, method=method, **kwargs)
        # Read a stream to its end now: its generator holds a request context until then.
        response.get_data()
        assert response.status_code == expect, (method, url, response.get_data()[:300])
        self.calls.append(Call(method, url, expect, response))
        return response

    def session(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {mint_session(self.secret_key, **claims)}"}

    def grant(self, requests: int = 3, max_usd: Any = None) -> str:
        body: dict[str, Any] = {"requests": requests}
        if max_usd is not None:
            body["maxUsd"] = max_usd
        response = self.call(200, "POST", "/api/v1/grants", json=body, headers=self.session())
        return response.get_json()["grantToken"]

    def keys(self, grant: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret_key}", "x-wattfare-grant": grant, **extra}


@pytest.fixture
def make_app(app: Flask, app_config: dict[str, Any]) -> Iterator[Callable[..., Flask]]:
    """Another app on the same database (tables made by `app`), with some settings changed."""
    made: list[Flask] = []

    def make(**overrides: Any) -> Flask:
        other = create_app({**app_config, **overrides})
        made.append(other)
        return other

    yield make
    for other in made:
        with other.app_context():
            db.session.remove()
            db.engine.dispose()


def _grant_row_update(app: Flask, **values: Any) -> None:
    with app.app_context():
        db.session.execute(update(Grant).values(**values))
        db.session.commit()


def exercise_grants(api: Api, app: Flask) -> None:
    api.grant(3)
    api.grant(2, max_usd=0.5)
    post = "/api/v1/grants"
    api.call(400, "POST", post, json={"requests": 0}, headers=api.session())
    api.call(400, "POST", post, json={"requests": 1, "extra": 1}, headers=api.session())
    api.call(400, "POST", post, data="requests=1", headers=api.session())
    api.call(401, "POST", post, json={"requests": 1})
    api.call(401, "POST", post, json={"requests": 1}, headers={"Authorization": "Bearer x.y.z"})
    expired = api.session(iat=0, exp=1)
    api.call(401, "POST", post, json={"requests": 1}, headers=expired)
    api.call(403, "POST", post, json={"requests": 1}, headers=api.session(origin="https://x.test"))
    api.call(403, "POST", post, json={"requests": 3}, headers=api.session(requests=2))
    once = api.session()
    api.call(200, "POST", post, json={"requests": 1}, headers=once)
    api.call(409, "POST", post, json={"requests": 1}, headers=once)
    api.call(
        413,
        "POST",
        post,
        data=TOO_BIG,
        headers={**api.session(), "Content-Type": "application/json"},
    )
    api.call(405, "GET", post)
    api.call(405, "DELETE", post)
    api.call(404, "GET", "/api/v1/nothing-here")
    api.call(404, "POST", "/api/v1/grants/")


def exercise_chat(api: Api, app: Flask) -> None:
    url = "/api/v1/chat/completions"
    grant = api.grant(10)
    api.call(200, "POST", url, json=chat_body(), headers=api.keys(grant))
    capped = api.grant(3, max_usd=0.01)
    ok = api.call(200, "POST", url, json=chat_body(), headers=api.keys(capped))
    assert "x-wattfare-grant-remaining-usd" in ok.headers
    api.call(200, "POST", url, json=chat_body(stream=True), headers=api.keys(grant))
    # A stream cut at the dollar cap: an over_cap error event after the usage chunk.
    doc = "<p>" + "word " * 200 + "</p>"
    probe = api.call(
        200, "POST", url, json=chat_body(doc, max_tokens=1), headers=api.keys(grant)
    ).get_json()
    cap = (probe["usage"]["prompt_tokens"] + 2 * 9) / 1_000_000
    api.call(
        200, "POST", url, json=chat_body(doc, stream=True), headers=api.keys(api.grant(2, cap))
    )
    # Idempotency: a replay (200), another body with the same key (422), a used stream key (409).
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.call(200, "POST", url, json=chat_body("a"), headers=api.keys(grant, **key))
    replay = api.call(200, "POST", url, json=chat_body("a"), headers=api.keys(grant, **key))
    assert replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.get_json()["id"] == first.get_json()["id"]
    api.call(422, "POST", url, json=chat_body("b"), headers=api.keys(grant, **key))
    stream_key = {"Idempotency-Key": str(uuid.uuid4())}
    body = chat_body(stream=True)
    api.call(200, "POST", url, json=body, headers=api.keys(grant, **stream_key))
    api.call(409, "POST", url, json=body, headers=api.keys(grant, **stream_key))
    api.call(400, "POST", url, json=body, headers=api.keys(grant, **{"Idempotency-Key": "a b"}))
    # Bad requests, each naming its field.
    for bad in (
        {"model": "local/markdown"},
        chat_body(model="no/such-model"),
        chat_body(messages=[{"role": "wizard", "content": "hi"}]),
        chat_body(max_tokens=0),
        chat_body(n=2),
        chat_body(stream="yes"),
    ):
        api.call(400, "POST", url, json=bad, headers=api.keys(grant))
    api.call(
        400,
        "POST",
        url,
        json=chat_body(),
        headers={"Authorization": api.keys(grant)["Authorization"]},
    )
    api.call(401, "POST", url, json=chat_body(), headers={"x-wattfare-grant": grant})
    api.call(
        401,
        "POST",
        url,
        json=chat_body(),
        headers=api.keys(grant) | {"Authorization": "Bearer sk_test_nope"},
    )
    # 402, every reason.
    api.call(402, "POST", url, json=chat_body(), headers=api.keys("wfg_" + "0" * 36))
    one = api.grant(1)
    api.call(200, "POST", url, json=chat_body(), headers=api.keys(one))
    api.call(402, "POST", url, json=chat_body(), headers=api.keys(one))
    api.call(402, "POST", url, json=chat_body(), headers=api.keys(api.grant(1, max_usd=1e-12)))
    revoked = api.grant(1)
    with app.app_context():
        revocation.revoke_grant(
            db.session.scalars(select(Grant).order_by(Grant.id.desc())).first().id
        )
    api.call(402, "POST", url, json=chat_body(), headers=api.keys(revoked))
    api.call(
        413,
        "POST",
        url,
        data=TOO_BIG,
        headers=api.keys(grant) | {"Content-Type": "application/json"},
    )
    api.call(405, "GET", url)
    expiring = api.grant(1)
    _grant_row_update(app, expires_at=Grant.created_at - 1)
    api.call(402, "POST", url, json=chat_body(), headers=api.keys(expiring))
    reasons = {c.response.get_json()["error"]["reason"] for c in api.calls if c.status == 402}
    assert reasons == {"unknown", "exhausted", "over_cap", "revoked", "expired"}


def exercise_responses(api: Api, app: Flask) -> None:
    url = "/api/v1/responses"
    grant = api.grant(20)
    body = {"model": "local/markdown", "input": "Convert this document to markdown: <h1>Hi</h1>"}
    api.call(200, "POST", url, json=body, headers=api.keys(grant))
    api.call(200, "POST", url, json={**body, "stream": True}, headers=api.keys(grant))
    api.call(200, "POST", url, json={**body, "max_output_tokens": 1}, headers=api.keys(grant))
    doc = "<p>" + "word " * 200 + "</p>"
    probe = api.call(
        200,
        "POST",
        url,
        json={**body, "input": doc, "max_output_tokens": 1},
        headers=api.keys(grant),
    ).get_json()
    cap = (probe["usage"]["input_tokens"] + 2 * 9) / 1_000_000
    capped = api.grant(2, cap)
    api.call(
        200, "POST", url, json={**body, "input": doc, "stream": True}, headers=api.keys(capped)
    )
    key = {"Idempotency-Key": str(uuid.uuid4())}
    api.call(200, "POST", url, json={**body, "stream": True}, headers=api.keys(grant, **key))
    api.call(409, "POST", url, json={**body, "stream": True}, headers=api.keys(grant, **key))
    api.call(422, "POST", url, json=body, headers=api.keys(grant, **key))
    for bad in (
        {"input": "hi"},
        {**body, "store": True},
        {**body, "previous_response_id": "resp_1"},
        {**body, "tools": [{"type": "web_search"}]},
        {**body, "tools": [{"type": "function", "name": "f"}]},  # the local model has none
        {**body, "input": [{"type": "item_reference", "id": "msg_1"}]},
        {**body, "unknown_field": 1},
        {**body, "max_output_tokens": 0},
    ):
        api.call(400, "POST", url, json=bad, headers=api.keys(grant))
    api.call(401, "POST", url, json=body, headers={"x-wattfare-grant": grant})
    api.call(402, "POST", url, json=body, headers=api.keys("wfg_" + "0" * 36))
    api.call(
        413,
        "POST",
        url,
        data=TOO_BIG,
        headers=api.keys(grant) | {"Content-Type": "application/json"},
    )
    api.call(405, "GET", url)


def exercise_grant_status_and_models(api: Api, app: Flask) -> None:
    grant = api.grant(2, max_usd=1)
    api.call(200, "GET", "/api/v1/grant", headers=api.keys(grant))
    api.call(200, "GET", "/api/v1/grant", headers=api.keys(api.grant(2)))
    api.call(400, "GET", "/api/v1/grant", headers={"Authorization": f"Bearer {api.secret_key}"})
    api.call(401, "GET", "/api/v1/grant", headers={"x-wattfare-grant": grant})
    api.call(402, "GET", "/api/v1/grant", headers=api.keys("wfg_nope"))
    api.call(405, "POST", "/api/v1/grant")
    revoked = api.grant(2)
    api.call(200, "DELETE", "/api/v1/grant", headers=api.keys(revoked))
    api.call(402, "POST", "/api/v1/chat/completions", json=chat_body(), headers=api.keys(revoked))
    api.call(400, "DELETE", "/api/v1/grant", headers={"Authorization": f"Bearer {api.secret_key}"})
    api.call(401, "DELETE", "/api/v1/grant", headers={"x-wattfare-grant": revoked})
    api.call(402, "DELETE", "/api/v1/grant", headers=api.keys("wfg_nope"))
    api.call(200, "GET", "/api/v1/models", headers={"Authorization": f"Bearer {api.secret_key}"})
    api.call(401, "GET", "/api/v1/models")
    api.call(200, "GET", "/api/v1/openapi.json")
    api.call(405, "POST", "/api/v1/openapi.json")


def exercise_rate_limits(api: Api) -> None:
    """On an app whose limits are one call a minute."""
    grant = api.grant(5)
    api.call(429, "POST", "/api/v1/grants", json={"requests": 1}, headers=api.session())
    url = "/api/v1/chat/completions"
    api.call(200, "POST", url, json=chat_body(), headers=api.keys(grant))
    api.call(429, "POST", url, json=chat_body(), headers=api.keys(grant))


def exercise_upstream(api: Api, upstream: FakeUpstream) -> None:
    """On an app whose upstream is a fake server on loopback that fails as told."""
    url = "/api/v1/chat/completions"
    grant = api.grant(20)
    body = chat_body(model=UPSTREAM_MODEL)
    upstream.respond(Reply(text="fine"))
    api.call(200, "POST", url, json=body, headers=api.keys(grant))
    upstream.respond(ErrorReply(status=400, message="bad temperature"))
    api.call(400, "POST", url, json=body, headers=api.keys(grant))
    upstream.respond(ErrorReply(status=429, message="slow down"))
    api.call(429, "POST", url, json=body, headers=api.keys(grant))
    upstream.respond(ErrorReply(status=500))
    api.call(502, "POST", url, json=body, headers=api.keys(grant))
    upstream.respond(Reply(delay=2.0))
    api.call(504, "POST", url, json=body, headers=api.keys(grant))
    # A stream whose provider fails mid-way ends with an upstream error event.
    upstream.respond(StreamReply(error_after=1))
    stream = api.call(200, "POST", url, json={**body, "stream": True}, headers=api.keys(grant))
    assert b'"upstream_error"' in stream.get_data()
    # What passes through: tool calls, logprobs, the finish reason, plain and streamed.
    upstream.default = Model()
    tools = {"tools": [WEATHER], "logprobs": True}
    api.call(200, "POST", url, json={**body, **tools}, headers=api.keys(grant))
    api.call(200, "POST", url, json={**body, **tools, "stream": True}, headers=api.keys(grant))
    responses = "/api/v1/responses"
    ask = {
        "model": UPSTREAM_MODEL,
        "input": "Weather?",
        "tools": [{"type": "function", **WEATHER["function"]}],
    }
    api.call(200, "POST", responses, json=ask, headers=api.keys(grant))
    api.call(200, "POST", responses, json={**ask, "stream": True}, headers=api.keys(grant))
    upstream.respond(ErrorReply(status=429, headers={"Retry-After": "3"}))
    limited = api.call(429, "POST", responses, json=ask, headers=api.keys(grant))
    assert limited.headers["Retry-After"] == "3"
    upstream.respond(StreamReply(error_after=1))
    failed = api.call(200, "POST", responses, json={**ask, "stream": True}, headers=api.keys(grant))
    assert b"event: error" in failed.get_data()
    upstream.respond(ErrorReply(status=500))
    api.call(502, "POST", responses, json=ask, headers=api.keys(grant))
    upstream.respond(Model(delay=2.0))
    api.call(504, "POST", responses, json=ask, headers=api.keys(grant))
    api.call(200, "GET", "/api/v1/models", headers={"Authorization": f"Bearer {api.secret_key}"})


def test_real_responses_match_the_document(
    app: Flask, client: FlaskClient, secret_key: str, make_app: Callable[..., Flask]
) -> None:
    api = Api(client, secret_key)
    exercise_grants(api, app)
    exercise_chat(api, app)
    exercise_responses(api, app)
    exercise_grant_status_and_models(api, app)
    limited = make_app(
        RATELIMIT_ENABLED=True,
        WATTFARE_RATE_LIMIT_GRANTS="1/minute",
        WATTFARE_APP_RATE_LIMIT_CHAT="1/minute",
    )
    limited_api = Api(limited.test_client(), secret_key)
    exercise_rate_limits(limited_api)
    with FakeUpstream() as upstream:
        proxied = make_app(
            WATTFARE_UPSTREAM_URL=upstream.url,
            WATTFARE_UPSTREAM_API_KEY="sk-upstream-" + "u" * 40,
            WATTFARE_UPSTREAM_TIMEOUT=0.5,
            WATTFARE_PRICES={UPSTREAM_MODEL: {"input": 1, "output": 2}},
        )
        proxied_api = Api(proxied.test_client(), secret_key)
        exercise_upstream(proxied_api, upstream)

    calls = api.calls + limited_api.calls + proxied_api.calls
    problems = []
    for call in calls:
        try:
            check_response(call.method, call.url, call.response)
        except ContractError as exc:
            problems.append(str(exc))
    assert not problems, "\n\n".join(problems)

    # Both ways: every documented status was seen on its operation ...
    seen = {(c.method, c.url.removeprefix("/api/v1"), c.status) for c in calls}
    unseen = set(documented_statuses()) - seen
    assert not unseen, f"documented but never exercised: {sorted(unseen)}"
    # ... and the codes of the error families are the documented ones.
    codes = {
        c.response.get_json()["error"]["code"]
        for c in calls
        if c.status >= 400 and c.response.mimetype == "application/json"
    }
    assert {"rate_limited", "upstream_rate_limited", "grant_invalid", "not_found"} <= codes


def test_an_undocumented_status_fails_the_check(client: FlaskClient, secret_key: str) -> None:
    # GET /api/v1/models documents 200 and 401 only: a 402 (as if the route started
    # answering one) must not pass, and neither may a 200 with the wrong body.
    response = client.get("/api/v1/models", headers={"Authorization": f"Bearer {secret_key}"})
    response.status_code = 402
    with pytest.raises(ContractError, match="status 402 is not documented"):
        check_response("GET", "/api/v1/models", response)
    response.status_code = 200
    response.set_data(json.dumps({"object": "list", "data": [{"id": 1}]}))
    with pytest.raises(ContractError, match="off-contract"):
        check_response("GET", "/api/v1/models", response)
