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

from tests.fake_upstream import FAKE_MODEL, ErrorReply, FakeUpstream, Reply, StreamReply
from wattfare_demo.converter.prompts import MAX_OUTPUT_TOKENS, SYSTEM_PROMPT

# Two parts at CONVERTER_CHUNK_CHARS=2000.
TWO_PARTS = "# One\n\n" + "First part. " * 150 + "\n\n# Two\n\n" + "Second part. " * 150

MODEL = FAKE_MODEL


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """The demo's routes on one database: the engine's tests cover the database matrix."""
    return request.param


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        **upstream_config,
        "WATTFARE_UPSTREAM_TIMEOUT": 2.0,
        "WATTFARE_MODEL": MODEL,
        "CONVERTER_CHUNK_CHARS": 2000,
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


def test_the_model_gets_the_job_and_the_document_in_a_block(
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
        {"role": "user", "content": "The file hi.html.\n<document>\n# Hi\n</document>"},
    ]
    assert sent["max_tokens"] == MAX_OUTPUT_TOKENS
    assert "join lines broken inside a paragraph" in SYSTEM_PROMPT
    assert "drop page furniture" in SYSTEM_PROMPT


def test_each_part_is_one_call_and_the_parts_are_joined_in_order(
    client: FlaskClient, make_grant, upstream: FakeUpstream, api_headers
) -> None:
    upstream.respond(Reply(text="# One\n\nfirst"), Reply(text="# Two\n\nsecond"))
    token = make_grant(requests=2)

    response = client.post(
        "/api/convert", json={"grantToken": token, "file": {"name": "r.md", "content": TWO_PARTS}}
    )

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["result"] == "# One\n\nfirst\n\n# Two\n\nsecond"
    prompts = [r.json["messages"][1]["content"] for r in upstream.requests]
    assert prompts[0].startswith("Part 1 of 2 of r.md.\n<document>\n# One")
    assert prompts[1].startswith("Part 2 of 2 of r.md.\n<document>\n# Two")
    assert client.get("/api/v1/grant", headers=api_headers(token)).get_json()["remaining"] == 0


def test_the_page_gets_the_models_deltas_as_they_come(
    client: FlaskClient, make_grant, upstream: FakeUpstream
) -> None:
    upstream.respond(StreamReply(chunks=("# Hi", "\n\nthere"), usage=(30, 4)))

    response = convert(client, make_grant(requests=1), htmx=True)

    body = response.get_data(as_text=True)
    assert response.mimetype == "text/event-stream"
    assert upstream.requests[0].json["stream"] is True
    assert "event: part" in body and "<h1>Hi</h1>" in body
    assert "0 requests remaining" in body


def test_a_part_that_fails_keeps_the_parts_before_it_and_charges_only_them(
    client: FlaskClient, make_grant, upstream: FakeUpstream, api_headers
) -> None:
    # Part 2 fails all three attempts (the SDK retries a 5xx twice, under one key).
    upstream.respond(Reply(text="# One", usage=(50, 2)), *[ErrorReply(status=500)] * 3)
    token = make_grant(requests=2)

    response = client.post(
        "/api/convert", json={"grantToken": token, "file": {"name": "r.md", "content": TWO_PARTS}}
    )

    assert response.status_code == 502
    body = response.get_json()
    assert (body["error"], body["partsConverted"], body["parts"]) == ("upstream_error", 1, 2)
    assert body["result"] == "# One"
    status = client.get("/api/v1/grant", headers=api_headers(token)).get_json()
    assert status["remaining"] == 1  # the failed part charged nothing


def test_a_failing_upstream_is_502_and_charges_nothing(
    client: FlaskClient, make_grant, upstream: FakeUpstream, api_headers
) -> None:
    token = make_grant(requests=1)
    # The SDK retries a 5xx twice (under one idempotency key): fail all three attempts.
    upstream.respond(ErrorReply(status=500), ErrorReply(status=500), ErrorReply(status=500))

    response = convert(client, token, htmx=True)

    assert response.status_code == 200  # the stream had begun; its end says what happened
    page = response.get_data(as_text=True)
    assert "event: done" in page
    assert "The AI model didn&#39;t answer" in page
    assert "Nothing was charged" in page
    assert 'data-grant-remaining="1"' in page  # the page keeps its grant
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
