"""The Python server SDK against the real embedded engine, in-process over WSGI.

generate_text, stream_text, grant status, exhaustion and the dollar cap as typed errors,
empty tokens, secret keys, sessions the engine accepts, the lazily built embedded
engine, and the seam: the SDK imports neither the engine nor Flask.
"""

from __future__ import annotations

import ast
import pathlib
from decimal import Decimal

import pytest
from sqlalchemy import select

from tests.helpers import ORIGIN
from wattfare_demo.engine.models import Grant
from wattfare_demo.engine.tokens import session_signing_key
from wattfare_demo.extensions import db
from wattfare_demo.sdk import (
    GenerateTextResult,
    Wattfare,
    WattfareAuthError,
    WattfareGrantError,
    WattfareInvalidRequestError,
    to_wattfare_error,
)
from wattfare_demo.sdk.sessions import signing_key

SDK = pathlib.Path(__file__).resolve().parents[2] / "wattfare_demo" / "sdk"
MODEL = "local/markdown"
PROMPT = "Convert this document to markdown: <h1>Title</h1><ul><li>a</li><li>b</li></ul>"
LONG_DOC = "Convert this document to markdown: <p>" + "word " * 200 + "</p>"


@pytest.fixture
def wf(app, secret_key, monkeypatch):
    monkeypatch.delenv("WATTFARE_API_URL", raising=False)
    with Wattfare(secret_key, wsgi_app=app) as client:
        yield client


def test_generate_text_uses_one_request(app, wf, make_grant, ledger):
    result = wf.grant(make_grant(3)).model(MODEL).generate_text(PROMPT)
    assert isinstance(result, GenerateTextResult)
    assert result.text.startswith("# Title") and "- a" in result.text
    assert result.finish_reason == "stop"
    assert result.usage.completion_tokens > 0
    assert result.usage.total_tokens == result.usage.prompt_tokens + result.usage.completion_tokens
    assert (result.remaining, result.remaining_usd) == (2, None)
    assert result.raw["object"] == "chat.completion"
    # The SDK sent an Idempotency-Key, and the engine kept (the hash of) it to replay.
    assert ledger() == ([("ok", "key")], 1)


def test_remaining_usd_is_an_exact_decimal(wf, make_grant):
    grant = wf.grant(make_grant(2, max_usd=0.5))
    result = grant.model(MODEL).generate_text(PROMPT)
    spent = Decimal(result.usage.prompt_tokens) * Decimal("0.000001") + Decimal(
        result.usage.completion_tokens
    ) * Decimal("0.000002")
    assert result.remaining_usd == Decimal("0.5") - spent
    status = grant.status()
    assert (status.requests, status.remaining, status.status) == (2, 1, "active")
    assert (status.max_usd, status.spent_usd) == (Decimal("0.5"), spent)
    assert status.expires_at > 0


def test_messages_system_and_options(wf, make_grant):
    model = wf.grant(make_grant(3)).model(MODEL)
    result = model.generate_text(
        messages=[{"role": "user", "content": PROMPT}],
        system="You convert documents.",
        max_tokens=2,
        temperature=0,
    )
    assert (result.finish_reason, result.usage.completion_tokens) == ("length", 2)
    with pytest.raises(TypeError):
        model.generate_text(PROMPT, messages=[{"role": "user", "content": PROMPT}])
    with pytest.raises(TypeError):
        model.generate_text()
    with pytest.raises(TypeError, match="stream"):
        model.generate_text(PROMPT, stream=True)


def test_stream_text_yields_deltas_then_totals(wf, make_grant):
    stream = wf.grant(make_grant(2, max_usd=0.5)).model(MODEL).stream_text(PROMPT)
    assert stream.usage is None
    text = "".join(stream)
    assert text.startswith("# Title") and "- b" in text
    assert stream.finish_reason == "stop"
    assert stream.usage.completion_tokens > 0
    assert stream.remaining == 1
    assert isinstance(stream.remaining_usd, Decimal) and 0 < stream.remaining_usd < Decimal("0.5")


def test_a_stream_cut_at_the_cap_raises_after_its_totals(wf, make_grant):
    model = wf.grant(make_grant(1)).model(MODEL)
    prompt_tokens = model.generate_text(LONG_DOC, max_tokens=1).usage.prompt_tokens
    cap_usd = (prompt_tokens + 2 * 9) / 1_000_000  # pays for 9 completion tokens
    stream = wf.grant(make_grant(2, max_usd=cap_usd)).model(MODEL).stream_text(LONG_DOC)
    deltas = []
    with pytest.raises(WattfareGrantError) as caught:
        deltas.extend(stream)
    assert deltas
    assert (caught.value.code, caught.value.reason, caught.value.status) == (
        "grant_invalid",
        "over_cap",
        None,  # it came in the stream, after a 200
    )
    assert stream.usage.completion_tokens == 9
    assert (stream.finish_reason, stream.remaining_usd) == ("length", 0)


def test_an_exhausted_grant_raises_grant_error(wf, make_grant):
    grant = wf.grant(make_grant(1))
    grant.model(MODEL).generate_text(PROMPT)
    for call in (grant.model(MODEL).generate_text, grant.model(MODEL).stream_text):
        with pytest.raises(WattfareGrantError) as caught:
            call(PROMPT)  # a stream is started at once, so it is refused here too
        error = caught.value
        assert (error.code, error.reason, error.status) == ("grant_invalid", "exhausted", 402)
        assert to_wattfare_error(error) is error
    assert grant.status().status == "exhausted"


def test_unknown_grant_is_a_grant_error(wf):
    with pytest.raises(WattfareGrantError) as caught:
        wf.grant("wfg_" + "0" * 36).model(MODEL).generate_text(PROMPT)
    assert caught.value.reason == "unknown"


@pytest.mark.parametrize("token", ["", "   ", None, 42, b"wfg_bytes"])
def test_an_empty_or_non_string_token_is_an_auth_error(wf, token):
    with pytest.raises(WattfareAuthError) as caught:
        wf.grant(token)
    assert caught.value.code == "grant_token_missing"


def test_secret_key_from_the_environment_or_a_clear_error(app, secret_key, monkeypatch):
    monkeypatch.delenv("WATTFARE_API_URL", raising=False)
    monkeypatch.delenv("WATTFARE_SECRET_KEY", raising=False)
    with pytest.raises(WattfareAuthError, match="WATTFARE_SECRET_KEY") as caught:
        Wattfare(wsgi_app=app)
    assert caught.value.code == "missing_secret_key"
    with pytest.raises(WattfareAuthError, match="publishable key"):
        Wattfare(app.config["WATTFARE_PUBLISHABLE_KEY"], wsgi_app=app)
    monkeypatch.setenv("WATTFARE_SECRET_KEY", secret_key)
    wf = Wattfare(wsgi_app=app)
    assert secret_key not in repr(wf)


def test_a_wrong_secret_key_is_an_auth_error(app, make_grant):
    wf = Wattfare("sk_test_0123456789abcdef_" + "0" * 48, wsgi_app=app)
    with pytest.raises(WattfareAuthError) as caught:
        wf.grant(make_grant(1)).model(MODEL).generate_text(PROMPT)
    assert (caught.value.status, caught.value.code) == (401, "invalid_api_key")


def test_a_bad_request_names_the_field(wf, make_grant):
    grant = wf.grant(make_grant(1))
    with pytest.raises(WattfareInvalidRequestError) as caught:
        grant.model(MODEL).generate_text(PROMPT, max_tokens=0)
    assert (caught.value.status, caught.value.param) == (400, "max_tokens")
    with pytest.raises(WattfareInvalidRequestError) as caught:
        grant.model("openai/gpt-4o-mini").generate_text(PROMPT)
    assert (caught.value.code, caught.value.param) == ("model_not_found", "model")
    assert grant.status().remaining == 1  # refusals cost nothing


def test_sessions_are_accepted_by_the_engine(app, client, wf, secret_key):
    # The SDK derives the signing key on its own; it must be the engine's.
    assert signing_key(secret_key) == session_signing_key(secret_key)
    session = wf.create_session("user-7", origin=ORIGIN, requests=2, ttl=120)
    response = client.post(
        "/api/v1/grants",
        json={"requests": 2},
        headers={"Authorization": f"Bearer {session.token}"},
    )
    assert response.status_code == 200, response.get_json()
    with app.app_context():
        assert db.session.scalar(select(Grant.subject)) == "user-7"
    anonymous = wf.create_session(origin=ORIGIN + "/", requests=1)
    assert anonymous.expires_at > session.expires_at
    response = client.post(
        "/api/v1/grants",
        json={"requests": 1},
        headers={"Authorization": f"Bearer {anonymous.token}"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("origin", "ttl"),
    [("localhost:5000", 60), ("http://localhost:5000/page", 60), (ORIGIN, 601), (ORIGIN, 0)],
)
def test_session_arguments_are_checked(wf, origin, ttl):
    with pytest.raises(ValueError):
        wf.create_session(origin=origin, requests=1, ttl=ttl)


def test_without_url_or_app_the_embedded_engine_is_built(app, app_config, make_grant, monkeypatch):
    # The environment a deployed app would have; the engine the SDK builds with
    # create_app() shares the test's database.
    monkeypatch.delenv("WATTFARE_API_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", app_config["SQLALCHEMY_DATABASE_URI"])
    monkeypatch.setenv("SECRET_KEY", app_config["SECRET_KEY"])
    for name in ("WATTFARE_PUBLISHABLE_KEY", "WATTFARE_SECRET_KEY"):
        monkeypatch.setenv(name, app_config[name])
    with Wattfare() as wf:
        assert wf.base_url == "http://wattfare.in-process/api/v1"
        result = wf.grant(make_grant(2)).model(MODEL).generate_text(PROMPT)
        assert result.remaining == 1
        embedded = wf._connection.wsgi_app()
        assert embedded is not app
        with embedded.app_context():
            db.engine.dispose()  # its pool would outlive the test's database


def test_the_sdk_imports_neither_the_engine_nor_flask():
    """The seam: the SDK is what a customer's backend imports (DESIGN.md)."""
    allowed_late_import = ("transport.py", "wattfare_demo")  # _embedded_engine, by design
    for path in SDK.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                # Besides itself, the SDK may import the one pure module it shares with
                # the engine: wattfare_demo/origins.py (the standard library only).
                shared = node.level == 2 and node.module == "origins"
                assert node.level <= 1 or shared, f"{path.name} imports outside the SDK"
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top not in {"flask", "werkzeug", "sqlalchemy", "flask_sqlalchemy"}, (
                    path.name,
                    name,
                )
                if top == "wattfare_demo":
                    assert (path.name, name) == allowed_late_import
                    assert node.col_offset > 0, "import the engine lazily, inside a function"
