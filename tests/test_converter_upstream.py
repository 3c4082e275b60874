"""The converter on a real (OpenAI-compatible) model: what it sends, and its failures.

WATTFARE_MODEL names a model served by tests/fake_upstream.py, a real HTTP server, as it
would name openai/gpt-4o-mini on OpenRouter. An upstream that fails costs the visitor
nothing and is reported as something to retry, never as a 500.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.fake_upstream import FAKE_MODEL, ErrorReply, FakeUpstream, Reply
from wattfare_demo.converter.prompts import MAX_OUTPUT_TOKENS, SYSTEM_PROMPT

MODEL = FAKE_MODEL


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        **upstream_config,
        "WATTFARE_UPSTREAM_TIMEOUT": 2.0,
        "WATTFARE_MODEL": MODEL,
    }


def convert(client: FlaskClient, token: str, htmx: bool = False):
    if htmx:
        return client.post(
            "/api/convert",
            data={"file": (io.BytesIO(b"<h1>Hi</h1>"), "hi.html"), "grantToken": token},
            headers={"HX-Request": "true"},
            content_type="multipart/form-data",
        )
    return client.post(
        "/api/convert", json={"grantToken": token, "file": {"name": "hi.html", "content": "<h1>Hi"}}
    )


def test_the_model_gets_the_seed_prompt_and_its_answer_is_the_result(
    client: FlaskClient, make_grant, upstream: FakeUpstream
) -> None:
    upstream.respond(Reply(text="# Hi\n", usage=(40, 3)))

    response = convert(client, make_grant(requests=2))

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["result"] == "# Hi\n"
    assert response.get_json()["remaining"] == 1
    sent = upstream.requests[0].json
    assert sent["model"] == MODEL
    assert sent["messages"] == [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": "Convert this document to markdown:\n\n<h1>Hi"},
    ]
    assert sent["max_tokens"] == MAX_OUTPUT_TOKENS


def test_a_failing_upstream_is_502_and_charges_nothing(
    client: FlaskClient, make_grant, upstream: FakeUpstream, api_headers
) -> None:
    token = make_grant(requests=1)
    # The SDK retries a 5xx twice (under one idempotency key): fail all three attempts.
    upstream.respond(ErrorReply(status=500), ErrorReply(status=500), ErrorReply(status=500))

    response = convert(client, token, htmx=True)

    assert response.status_code == 502
    page = response.get_data(as_text=True)
    assert "The AI model didn&#39;t answer" in page
    assert "nothing was charged" in page
    assert "HX-Trigger" not in response.headers  # the page keeps its grant
    status = client.get("/api/v1/grant", headers=api_headers(token)).get_json()
    assert status["remaining"] == 1
    assert status["spentUsd"] == 0


def test_a_rate_limited_upstream_is_429(client: FlaskClient, make_grant, upstream) -> None:
    # The SDK retries a 429 twice, after the upstream's Retry-After: fail all three.
    upstream.respond(*[ErrorReply(status=429, headers={"Retry-After": "0"})] * 3)

    response = convert(client, make_grant())

    assert response.status_code == 429
    assert response.get_json()["error"] == "rate_limited"


def test_a_model_the_engine_does_not_know_is_our_fault_not_the_visitors(
    app, client: FlaskClient, make_grant, api_headers
) -> None:
    app.config["WATTFARE_MODEL"] = "nobody/unpriced-model"
    token = make_grant(requests=1)

    response = convert(client, token)

    assert response.status_code == 502
    assert response.get_json()["error"] == "converter_misconfigured"
    assert client.get("/api/v1/grant", headers=api_headers(token)).get_json()["remaining"] == 1
