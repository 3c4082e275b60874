"""GET /wattfare/consent: what the popup shows, what it refuses, and the headers it sends.

The browser side (postMessage, Approve, Deny, close) is in tests/e2e/test_consent_popup.py.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.helpers import ORIGIN
from wattfare_demo.engine.apps import create_app_record
from wattfare_demo.engine.consent import duration, money
from wattfare_demo.extensions import db

NONCE = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def pk(app) -> str:
    return app.config["WATTFARE_PUBLISHABLE_KEY"]


def consent_url(**params: Any) -> str:
    return "/wattfare/consent?" + urlencode({k: v for k, v in params.items() if v is not None})


def ask(client, pk: str, **params: Any):
    query = {"pk": pk, "origin": ORIGIN, "nonce": NONCE, "requests": 3, **params}
    return client.get(consent_url(**query))


class Page(HTMLParser):
    """The parts of a consent page the tests look at."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.body: dict[str, str | None] = {}
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script = False
        self.attributes: list[str] = []
        self.buttons: list[str] = []
        self._button: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attributes += [name for name, _ in attrs]
        if tag == "body":
            self.body = dict(attrs)
        if tag == "script":
            self.scripts.append(dict(attrs))
        if tag == "style":
            self.inline_script = True
        if tag == "button" and "hidden" not in dict(attrs):
            self._button = []

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)
        if self.lasttag == "script" and data.strip():
            self.inline_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            self.buttons.append("".join(self._button).strip())
            self._button = None


def page_of(response) -> Page:
    return Page(response.get_data(as_text=True))


def text_of(response) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.get_data(as_text=True))).split())


# --- the consent page ---------------------------------------------------------------


def test_shows_the_app_the_origin_the_count_the_cap_and_the_expiry(client, pk):
    response = ask(client, pk, requests=3, maxUsd="0.5")
    assert response.status_code == 200
    text = text_of(response)
    assert "File converter demo asks to use AI on your behalf" in text
    assert ORIGIN in text
    assert "3 requests" in text
    assert "At most $0.50 in all" in text
    assert "10 minutes after you approve" in text
    assert "Test mode" in text
    page = page_of(response)
    assert page.buttons == ["Deny", "Approve"]
    assert page.body["data-opener-origin"] == ORIGIN
    assert page.body["data-nonce"] == NONCE
    assert page.body["data-grant-body"] == '{"requests": 3, "maxUsd": 0.5}'
    assert "data-auto-approve" not in page.body


def test_without_a_cap_the_page_says_so_and_the_body_has_none(client, pk):
    response = ask(client, pk, requests=1)
    assert "No dollar cap" in text_of(response)
    assert "1 request " in text_of(response) + " "
    assert page_of(response).body["data-grant-body"] == '{"requests": 1}'


def test_the_grant_body_keeps_every_digit_of_the_cap(client, pk):
    response = ask(client, pk, maxUsd="0.000123")
    assert "$0.000123" in text_of(response)
    assert page_of(response).body["data-grant-body"] == '{"requests": 3, "maxUsd": 0.000123}'
    response = ask(client, pk, maxUsd="1e-3")
    assert page_of(response).body["data-grant-body"] == '{"requests": 3, "maxUsd": 0.001}'


def test_the_origin_is_compared_in_its_normal_form(client, pk):
    response = ask(client, pk, origin="HTTP://LOCALHOST:5000/")
    assert response.status_code == 200
    assert page_of(response).body["data-opener-origin"] == ORIGIN


def test_security_headers(client, pk):
    for response in (ask(client, pk), ask(client, "pk_test_0000000000000000")):
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["frame-ancestors"] == "'none'"
        assert directives["script-src"] == "'self'"
        assert directives["default-src"] == "'none'"
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "no-store" in headers["Cache-Control"]
        # No COOP that would cut the popup off from its opener.
        assert headers.get("Cross-Origin-Opener-Policy", "unsafe-none") == "unsafe-none"


def test_no_inline_script_or_style_and_no_event_handler_attributes(client, pk):
    for response in (ask(client, pk), ask(client, pk, requests=0)):
        page = page_of(response)
        assert page.scripts and all(s.get("src") for s in page.scripts)
        assert not page.inline_script
        assert not [a for a in page.attributes if a.startswith("on") or a == "style"]


def test_the_app_name_is_escaped(app, client):
    with app.app_context():
        created = create_app_record(
            '<script>alert("x")</script>', "test", [ORIGIN], app.config["SECRET_KEY"]
        )
        pk = created.app.publishable_key
        db.session.remove()
    body = ask(client, pk).get_data(as_text=True)
    assert "<script>alert" not in body
    assert "&lt;script&gt;alert" in body


def test_only_get(client, pk):
    response = client.post(consent_url(pk=pk, origin=ORIGIN, nonce=NONCE, requests=1))
    assert response.status_code == 405


# --- refusals: a readable page, and an error (never a token) for the opener -------------


def assert_refused(response, status: int, code: str, param: str | None = None) -> Page:
    assert response.status_code == status
    page = page_of(response)
    assert page.body["data-state"] == "error"
    assert page.body["data-error-code"] == code
    assert page.body.get("data-error-param") == param
    assert page.body["data-error-message"]
    assert page.body["data-error-message"] in text_of(response)
    assert page.buttons == ["Close"]  # no Approve on an error page
    assert "wfg_" not in response.get_data(as_text=True)
    return page


@pytest.mark.parametrize(
    "bad_pk", ["pk_test_0000000000000000", "pk_live_{id}", "pk_nope", "sk_test_{id}", ""]
)
def test_an_unknown_publishable_key(app, client, pk, bad_pk):
    app_id = pk.split("_")[2]
    response = ask(client, bad_pk.format(id=app_id))
    page = assert_refused(response, 404, "unknown_publishable_key")
    # The opener is still told, on the origin it claimed.
    assert page.body["data-opener-origin"] == ORIGIN
    assert page.body["data-nonce"] == NONCE


def test_an_origin_the_app_has_not_allowed(client, pk):
    response = ask(client, pk, origin="https://evil.example")
    page = assert_refused(response, 403, "origin_not_allowed")
    assert "https://evil.example is not allowed" in text_of(response)
    assert page.body["data-opener-origin"] == "https://evil.example"


@pytest.mark.parametrize(
    ("params", "param", "message"),
    [
        ({"requests": None}, "requests", "requests is required"),
        ({"requests": ""}, "requests", "requests is required"),
        ({"requests": 0}, "requests", "from 1 to 100"),
        ({"requests": 101}, "requests", "from 1 to 100"),
        ({"requests": "1.5"}, "requests", "whole number"),
        ({"requests": "-1"}, "requests", "whole number"),
        ({"requests": "three"}, "requests", "whole number"),
        ({"maxUsd": "0"}, "maxUsd", "more than 0"),
        ({"maxUsd": "-1"}, "maxUsd", "more than 0"),
        ({"maxUsd": "NaN"}, "maxUsd", "more than 0"),
        ({"maxUsd": "Infinity"}, "maxUsd", "more than 0"),
        ({"maxUsd": "1e-15"}, "maxUsd", "too small"),
        ({"maxUsd": "100.01"}, "maxUsd", "at most 100"),
        ({"maxUsd": "1e999999"}, "maxUsd", "at most 100"),
        ({"maxUsd": "five"}, "maxUsd", "number of dollars"),
    ],
)
def test_a_bad_count_or_cap(client, pk, params, param, message):
    response = ask(client, pk, **params)
    assert_refused(response, 400, "invalid_request", param)
    assert message in text_of(response)


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"origin": None}, "origin"),
        ({"origin": "javascript:alert(1)"}, "origin"),
        ({"origin": "https://app.example/path"}, "origin"),
        ({"origin": "null"}, "origin"),
        ({"nonce": None}, "nonce"),
        ({"nonce": "short"}, "nonce"),
        ({"nonce": "x" * 200}, "nonce"),
        ({"nonce": "<script>" * 4}, "nonce"),
    ],
)
def test_without_a_valid_origin_and_nonce_there_is_nobody_to_answer(client, pk, params, param):
    page = assert_refused(ask(client, pk, **params), 400, "invalid_request", param)
    assert "data-opener-origin" not in page.body
    assert "data-nonce" not in page.body


# --- auto-approve: test apps that asked for it, never live ones, not by default ---------


def make_app(app, mode: str, auto_approve: bool, force: bool = False) -> str:
    with app.app_context():
        created = create_app_record(
            f"{mode} app", mode, [ORIGIN], app.config["SECRET_KEY"], auto_approve=auto_approve
        )
        if force:  # as if the database had been edited by hand
            created.app.auto_approve = True
            db.session.commit()
        pk = created.app.publishable_key
        db.session.remove()
    return pk


def test_auto_approve_for_a_test_app_that_asked_for_it(app, client):
    pk = make_app(app, "test", auto_approve=True)
    response = ask(client, pk)
    assert page_of(response).body["data-auto-approve"] == "true"
    assert "approving automatically" in text_of(response)


def test_live_apps_always_ask(app, client):
    pk = make_app(app, "live", auto_approve=True, force=True)
    response = ask(client, pk)
    assert response.status_code == 200
    assert "data-auto-approve" not in page_of(response).body
    assert "Test mode" not in text_of(response)


def test_the_default_setting_asks(client, pk, app):
    assert app.config["WATTFARE_AUTO_APPROVE"] is False
    assert "data-auto-approve" not in page_of(ask(client, pk)).body


def test_the_setting_turns_on_auto_approve_for_the_demo_app(app_config):
    from wattfare_demo import create_app
    from wattfare_demo.engine import ensure_configured_app

    auto = create_app({**app_config, "WATTFARE_AUTO_APPROVE": True})
    with auto.app_context():
        db.create_all()
    ensure_configured_app(auto)
    response = ask(auto.test_client(), auto.config["WATTFARE_PUBLISHABLE_KEY"])
    assert page_of(response).body["data-auto-approve"] == "true"
    with auto.app_context():
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


# --- formatting ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "shown"),
    [("0.5", "$0.50"), ("12", "$12.00"), ("0.005", "$0.005"), ("1234.5", "$1,234.50")],
)
def test_money(amount, shown):
    from decimal import Decimal

    assert money(Decimal(amount)) == shown


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (600, "10 minutes"),
        (60, "1 minute"),
        (3600, "1 hour"),
        (7200, "2 hours"),
        (90, "90 seconds"),
    ],
)
def test_duration(seconds, shown):
    assert duration(seconds) == shown
