"""POST /api/v1/chat/completions and GET /api/v1/grant: metering, headers, refusals."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select, update

from tests.helpers import chat_body, plant_stale_hold
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.extensions import db


def chat(client, headers, body=None, **kwargs):
    return client.post(
        "/api/v1/chat/completions", headers=headers, json=body or chat_body(), **kwargs
    )


def test_a_call_converts_and_uses_one_request(app, client, make_grant, api_headers):
    grant = make_grant(3)
    response = chat(client, api_headers(grant), chat_body("<h1>Title</h1><ul><li>a</li></ul>"))
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "chat.completion"
    text = body["choices"][0]["message"]["content"]
    assert "# Title" in text and "- a" in text
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] > 0
    assert response.headers["x-wattfare-grant-remaining"] == "2"
    assert "x-wattfare-grant-remaining-usd" not in response.headers
    with app.app_context():
        usage = db.session.scalar(select(Usage))
        assert usage.status == "ok"
        assert usage.prompt_tokens == body["usage"]["prompt_tokens"]
        assert usage.completion_tokens == body["usage"]["completion_tokens"]
        # local/markdown costs $1/M in and $2/M out: 10**6 and 2*10**6 pUSD per token
        assert usage.cost_pusd == usage.prompt_tokens * 10**6 + usage.completion_tokens * 2 * 10**6
        grant_row = db.session.scalar(select(Grant))
        assert (grant_row.used, grant_row.reserved, grant_row.held_pusd) == (1, 0, 0)
        assert grant_row.spent_pusd == usage.cost_pusd


def test_remaining_usd_header_and_status(client, make_grant, api_headers):
    grant = make_grant(2, max_usd=0.01)
    response = chat(client, api_headers(grant))
    assert response.status_code == 200
    cost = response.get_json()["usage"]
    spent = cost["prompt_tokens"] * 0.000001 + cost["completion_tokens"] * 0.000002
    assert float(response.headers["x-wattfare-grant-remaining-usd"]) == pytest.approx(0.01 - spent)
    status = client.get("/api/v1/grant", headers=api_headers(grant)).get_json()
    assert status["requests"] == 2 and status["remaining"] == 1
    assert status["maxUsd"] == 0.01
    assert status["spentUsd"] == pytest.approx(spent)
    assert status["status"] == "active"


def test_exhausted_grant_is_402_grant_invalid(client, make_grant, api_headers):
    grant = make_grant(1)
    assert chat(client, api_headers(grant)).status_code == 200
    response = chat(client, api_headers(grant))
    assert response.status_code == 402
    error = response.get_json()["error"]
    assert (error["code"], error["reason"]) == ("grant_invalid", "exhausted")
    assert (
        client.get("/api/v1/grant", headers=api_headers(grant)).get_json()["status"] == "exhausted"
    )


def test_expiry_is_decided_by_the_database_clock(app, client, make_grant, api_headers):
    grant = make_grant(3)
    with app.app_context():
        # Expired one second ago by the database's own clock.
        db.session.execute(update(Grant).values(expires_at=Grant.created_at - 1))
        db.session.commit()
    response = chat(client, api_headers(grant))
    assert response.status_code == 402
    assert response.get_json()["error"]["reason"] == "expired"


def test_revoked_grant(app, client, make_grant, api_headers):
    from wattfare_demo.engine import revocation

    grant = make_grant(3)
    with app.app_context():
        revocation.revoke_grant(db.session.scalar(select(Grant)).id)
    response = chat(client, api_headers(grant))
    assert response.get_json()["error"]["reason"] == "revoked"


def test_unknown_and_malformed_grants(client, make_grant, api_headers):
    real = make_grant(1)
    forged = real[:-1] + ("A" if real[-1] != "A" else "B")  # checksum no longer matches
    for token in ("wfg_" + "0" * 36, forged, "nonsense", "wfg_ünïcode"):
        response = chat(client, api_headers(token))
        assert response.status_code == 402, token
        assert response.get_json()["error"]["reason"] == "unknown"


def test_another_apps_grant_is_unknown(app, client, make_grant):
    from wattfare_demo.engine.apps import create_app_record

    grant = make_grant(1)
    with app.app_context():
        other = create_app_record("other", "test", [], app.config["SECRET_KEY"])
    response = chat(
        client, {"Authorization": f"Bearer {other.secret_key}", "x-wattfare-grant": grant}
    )
    assert response.status_code == 402
    assert response.get_json()["error"]["reason"] == "unknown"


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Bearer sk_test_nope",
        "Basic abc",
        "Bearer sk_test_0123456789abcdef_" + "0" * 48,
    ],
)
def test_bad_secret_key_is_401(client, make_grant, authorization):
    headers = {"x-wattfare-grant": make_grant(1)}
    if authorization:
        headers["Authorization"] = authorization
    response = chat(client, headers)
    assert response.status_code == 401
    assert response.get_json()["error"]["type"] == "authentication_error"


def test_missing_grant_header_is_400(client, secret_key):
    response = chat(client, {"Authorization": f"Bearer {secret_key}"})
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "x-wattfare-grant"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "local/markdown"}, "messages"),
        ({"model": "local/markdown", "messages": []}, "messages"),
        ({"model": "local/markdown", "messages": ["hi"]}, "messages[0]"),
        (
            {"model": "local/markdown", "messages": [{"role": "robot", "content": "x"}]},
            "messages[0].role",
        ),
        (
            {"model": "local/markdown", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        (chat_body(max_tokens=0), "max_tokens"),
        (chat_body(max_tokens="10"), "max_tokens"),
        (chat_body(stream="yes"), "stream"),
        (chat_body(n=2), "n"),
        (chat_body(model="nobody/knows"), "model"),
    ],
)
def test_bad_chat_requests_are_400_and_charge_nothing(
    app, client, make_grant, api_headers, body, param
):
    grant = make_grant(1)
    response = chat(client, api_headers(grant), body)
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param
    with app.app_context():
        assert db.session.scalar(select(Grant.used)) == 0
        assert db.session.scalar(select(Usage.id)) is None


def test_max_tokens_cuts_with_finish_reason_length(client, make_grant, api_headers):
    doc = "<p>" + "word " * 200 + "</p>"
    response = chat(client, api_headers(make_grant(1)), chat_body(doc, max_tokens=7))
    body = response.get_json()
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 7


def test_dollar_cap_clamps_max_tokens(app, client, make_grant, api_headers):
    # A cap that pays for the prompt and exactly 5 output tokens.
    doc = "<p>" + "word " * 200 + "</p>"
    body = chat_body(doc)
    probe = chat(client, api_headers(make_grant(1)), chat_body(doc, max_tokens=1)).get_json()
    prompt = probe["usage"]["prompt_tokens"]
    cap_usd = (prompt * 1 + 5 * 2) / 1_000_000
    grant = make_grant(3, max_usd=cap_usd)
    response = chat(client, api_headers(grant), body)
    assert response.status_code == 200
    assert response.get_json()["usage"]["completion_tokens"] == 5
    assert response.get_json()["choices"][0]["finish_reason"] == "length"
    assert response.headers["x-wattfare-grant-remaining-usd"] == "0"
    again = chat(client, api_headers(grant), body)
    assert again.status_code == 402
    assert again.get_json()["error"]["reason"] == "over_cap"


def test_streaming_sends_chunks_usage_and_done(app, client, make_grant, api_headers):
    grant = make_grant(2)
    response = chat(
        client, api_headers(grant), chat_body("<h2>Sub</h2><p>one two</p>", stream=True)
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    assert response.headers["x-wattfare-grant-remaining"] == "1"
    events = [
        line[len("data: ") :] for line in response.get_data(as_text=True).split("\n\n") if line
    ]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert "## Sub" in text
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    with app.app_context():
        usage = db.session.scalar(select(Usage))
        assert (usage.status, usage.stream) == ("ok", True)
        assert usage.completion_tokens == chunks[-1]["usage"]["completion_tokens"]


def test_stream_reaching_the_cap_ends_with_an_error_event(client, make_grant, api_headers):
    doc = "<p>" + "word " * 200 + "</p>"
    probe = chat(client, api_headers(make_grant(1)), chat_body(doc, max_tokens=1)).get_json()
    cap_usd = (probe["usage"]["prompt_tokens"] + 2 * 9) / 1_000_000
    response = chat(
        client, api_headers(make_grant(2, max_usd=cap_usd)), chat_body(doc, stream=True)
    )
    events = [
        line[len("data: ") :] for line in response.get_data(as_text=True).split("\n\n") if line
    ]
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert (error["code"], error["reason"]) == ("grant_invalid", "over_cap")
    usage = json.loads(events[-3])["usage"]
    assert usage["completion_tokens"] == 9


def test_stale_hold_is_released(app, client, make_grant, api_headers):
    grant = make_grant(1, max_usd=0.01)
    with app.app_context():
        # A worker reserved and then died: its hold is never settled.
        plant_stale_hold(app.config["WATTFARE_SECRET_KEY"], grant, max_tokens=100)
    response = chat(client, api_headers(grant))  # refused, sweeps the stale hold, retries
    assert response.status_code == 200
    with app.app_context():
        statuses = sorted(db.session.scalars(select(Usage.status)))
        assert statuses == ["expired", "ok"]
        row = db.session.scalar(select(Grant))
        assert (row.used, row.reserved, row.held_pusd) == (1, 0, 0)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "required"}, "tools"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"logprobs": True}, "logprobs"),
        ({"store": True}, "store"),
        ({"service_tier": "flex"}, "service_tier"),
        ({"provider": {"data_collection": "allow"}}, "provider"),
        ({"logprobs": "yes"}, "logprobs"),
        ({"tools": "all"}, "tools"),
    ],
)
def test_what_the_local_model_or_the_engine_cannot_honour_is_400_and_free(
    app, client, make_grant, api_headers, extra, param
):
    grant = make_grant(1)
    response = chat(client, api_headers(grant), chat_body(**extra))
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param
    with app.app_context():
        assert db.session.scalar(select(Usage.id)) is None
    assert chat(client, api_headers(grant)).status_code == 200


def test_an_unknown_api_path_names_the_endpoints(client):
    response = client.post("/api/v1/completions", json={})
    assert response.status_code == 404
    message = response.get_json()["error"]["message"]
    assert "There is no POST /api/v1/completions" in message
    for endpoint in (
        "POST /api/v1/chat/completions",
        "POST /api/v1/responses",
        "GET /api/v1/grant",
    ):
        assert endpoint in message


def test_the_responses_api_on_the_local_model(client, make_grant, api_headers):
    grant = make_grant(2, max_usd=0.5)
    response = client.post(
        "/api/v1/responses",
        headers=api_headers(grant),
        json={"model": "local/markdown", "input": "Convert this document to markdown: <h1>Hi</h1>"},
    )
    assert response.status_code == 200
    body = response.get_json()
    assert (body["object"], body["status"]) == ("response", "completed")
    assert body["output"][0]["content"][0]["text"] == "# Hi"
    assert response.headers["x-wattfare-grant-remaining"] == "1"
    streamed = client.post(
        "/api/v1/responses",
        headers=api_headers(grant),
        json={"model": "local/markdown", "input": "<h1>Hi</h1>", "stream": True},
    )
    events = [
        json.loads(block.split("data: ", 1)[1])
        for block in streamed.get_data(as_text=True).split("\n\n")
        if block
    ]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created" and events[-1]["type"] == "response.completed"
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "# Hi"
    assert events[-1]["wattfare"]["remaining"] == 0
