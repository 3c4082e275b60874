"""Inputs Schemathesis found (tests/engine/test_schemathesis.py), kept as plain regression tests.

Each was answered 500, or accepted although the OpenAPI document says it is invalid; each
is now a 400 naming the field, and charges nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers import chat_body, mint_session
from tests.openapi_check import check_response

URL = "/api/v1/chat/completions"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # A list as a role was unhashable in the `in ROLES` test: a 500.
        ({"model": "local/markdown", "messages": [{"role": [None, None]}]}, "messages[0].role"),
        ({"model": "local/markdown", "messages": [{"role": {"a": 1}}]}, "messages[0].role"),
        # Accepted and silently dropped; OpenAI refuses it.
        (chat_body(stream_options=[None, None]), "stream_options"),
        (chat_body(stream_options="yes"), "stream_options"),
        # A text part whose text is not a string, or missing: accepted, converted as "".
        (
            chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": [1]}]}]),
            "messages[0].content",
        ),
        (
            chat_body(messages=[{"role": "user", "content": [{"type": "text"}]}]),
            "messages[0].content",
        ),
    ],
)
def test_refused_with_400_naming_the_field(
    client, make_grant, api_headers, body: dict[str, Any], param: str
) -> None:
    grant = make_grant(1)
    response = client.post(URL, json=body, headers=api_headers(grant))
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == param
    check_response("POST", URL, response)
    # Nothing was used: the one request is still there.
    assert client.post(URL, json=chat_body(), headers=api_headers(grant)).status_code == 200


def test_valid_variants_still_pass(client, make_grant, api_headers) -> None:
    parts = [{"type": "text", "text": "<h1>Hi</h1>"}, {"type": "image_url", "image_url": {}}]
    for body in (
        chat_body(stream_options=None),
        chat_body(stream_options={"include_usage": True}),
        chat_body(messages=[{"role": "user", "content": parts}]),
    ):
        response = client.post(URL, json=body, headers=api_headers(make_grant(1)))
        assert response.status_code == 200, response.get_json()


def test_an_unknown_field_named_empty_string_is_named(client, secret_key) -> None:
    # param "" used to be dropped from the error (falsy), breaking the documented shape.
    response = client.post(
        "/api/v1/grants",
        json={"": []},
        headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
    )
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == ""
    check_response("POST", "/api/v1/grants", response)
