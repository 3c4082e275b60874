"""One definition of the grant request (validation.GRANT_REQUEST_FIELDS): POST
/api/v1/grants, the consent page, the OpenAPI document, wattfare.js and the SDK's
create_session all agree with it, so a new field touches few places. And the grant's
`model` field: the page's, held to the session's."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

import pytest

from tests.helpers import ORIGIN, mint_session
from wattfare_demo.engine.openapi import document
from wattfare_demo.engine.validation import GRANT_REQUEST_FIELDS

ROOT = Path(__file__).resolve().parents[2]
NAMES = [field.name for field in GRANT_REQUEST_FIELDS]


def test_the_openapi_document_has_exactly_these_fields() -> None:
    schema = document()["components"]["schemas"]["GrantRequest"]
    assert sorted(schema["properties"]) == sorted(NAMES)
    assert sorted(schema["required"]) == sorted(f.name for f in GRANT_REQUEST_FIELDS if f.required)


def test_wattfare_js_passes_each_field_to_the_popup_and_the_session() -> None:
    source = (ROOT / "static" / "wattfare.js").read_text()
    signature = re.search(r"function requestGrant\(\{(.*?)\}", source, re.DOTALL)
    assert signature is not None
    for name in NAMES:
        assert re.search(rf"\b{name}\b", signature.group(1)), name
        assert f'url.searchParams.set("{name}"' in source, name


def test_the_sdk_session_takes_each_field() -> None:
    import inspect

    from wattfare_demo.sdk import Wattfare

    parameters = inspect.signature(Wattfare.create_session).parameters
    snake = [re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower() for name in NAMES]
    assert set(snake) <= set(parameters)


def test_the_consent_page_posts_back_each_field_it_was_asked(app, client) -> None:
    query = {
        "pk": app.config["WATTFARE_PUBLISHABLE_KEY"],
        "origin": ORIGIN,
        "nonce": "0123456789abcdef0123456789abcdef",
        "requests": "2",
        "maxUsd": "0.5",
        "model": "local/markdown",
    }
    assert set(NAMES) <= set(query)
    html = client.get("/wattfare/consent?" + urlencode(query)).get_data(as_text=True)
    body = re.search(r'data-grant-body="([^"]*)"', html)
    assert body is not None
    for name in NAMES:
        assert f"&#34;{name}&#34;" in body.group(1), name


def grant(client, session: str, body: dict):
    return client.post("/api/v1/grants", json=body, headers={"Authorization": f"Bearer {session}"})


def test_an_unknown_field_names_the_ones_there_are(client, secret_key) -> None:
    response = grant(client, mint_session(secret_key), {"requests": 1, "colour": "red"})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["param"] == "colour"
    assert "requests, maxUsd, model" in error["message"]


def test_the_pages_model_must_be_the_sessions(client, secret_key) -> None:
    session = mint_session(secret_key, model="local/markdown")
    other = grant(client, session, {"requests": 1, "model": "openai/gpt-4o-mini"})
    assert other.status_code == 403
    error = other.get_json()["error"]
    assert (error["code"], error["param"]) == ("exceeds_session", "model")
    same = grant(
        client,
        mint_session(secret_key, model="local/markdown"),
        {"requests": 1, "model": "local/markdown"},
    )
    assert same.status_code == 200


@pytest.mark.parametrize("model", ["", 3, "x" * 121, ["local/markdown"]])
def test_a_bad_model_is_400(client, secret_key, model) -> None:
    response = grant(client, mint_session(secret_key), {"requests": 1, "model": model})
    assert response.status_code == 400
    assert response.get_json()["error"]["param"] == "model"


def test_a_grant_naming_a_model_is_bound_to_it(app, client, secret_key, api_headers) -> None:
    from sqlalchemy import select

    from wattfare_demo.engine.models import Grant
    from wattfare_demo.extensions import db

    response = grant(client, mint_session(secret_key), {"requests": 1, "model": "local/markdown"})
    assert response.status_code == 200
    with app.app_context():
        assert db.session.scalar(select(Grant.model)) == "local/markdown"
        db.session.remove()
    unserved = grant(client, mint_session(secret_key), {"requests": 1, "model": "openai/gpt-4o"})
    assert unserved.status_code == 400
    assert unserved.get_json()["error"]["param"] == "model"
