"""wattfare.js and the consent popup in a real browser.

The engine runs on http://127.0.0.1:B (the `live_server` fixture); a stand-in customer
page (tests/e2e/opener.py) runs on http://localhost:A, which the demo app allows, so
the flow crosses origins as it does with a hosted engine. The same server reached as
http://127.0.0.1:A is an origin the app has NOT allowed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect

from tests.conftest import LiveServer
from tests.e2e.opener import OpenerPage, create_opener, opener_blueprint, serve
from tests.e2e.pages import ConsentPopup
from wattfare_demo.engine.apps import add_origin, app_for_secret_key, create_app_record
from wattfare_demo.extensions import db

pytestmark = pytest.mark.e2e

DEMO_APP_NAME = "File converter demo"


@dataclass
class Opener:
    url: str  # http://localhost:A, allowed for the demo app and the auto-approve app
    disallowed_url: str  # http://127.0.0.1:A, the same server on an origin nobody allowed
    engine_url: str
    secret_keys: dict[str, str]


@pytest.fixture
def opener(app: Flask, live_server: LiveServer) -> Iterator[Opener]:
    with app.app_context():
        auto = create_app_record(
            "Auto-approving test app", "test", [], app.config["SECRET_KEY"], auto_approve=True
        )
        keys = {
            "demo": (app.config["WATTFARE_PUBLISHABLE_KEY"], app.config["WATTFARE_SECRET_KEY"]),
            "auto": (auto.app.publishable_key, auto.secret_key),
        }
        db.session.remove()
    with serve(create_opener(keys, live_server.url)) as port:
        allowed = f"http://localhost:{port}"
        with app.app_context():
            for _, secret_key in keys.values():
                add_origin(app_for_secret_key(secret_key), allowed)
            db.session.remove()
        yield Opener(
            url=allowed,
            disallowed_url=f"http://127.0.0.1:{port}",
            engine_url=live_server.url,
            secret_keys={name: sk for name, (_, sk) in keys.items()},
        )


def grant_status(client, secret_key: str, grant_token: str) -> dict:
    response = client.get(
        "/api/v1/grant",
        headers={"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant_token},
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()


# --- approve ---------------------------------------------------------------------------


def test_approve_across_origins(page: Page, opener: Opener, client):
    urls: list[str] = []
    page.context.on("request", lambda request: urls.append(request.url))
    app_page = OpenerPage(page).open(opener.url, requests=2, maxUsd=0.5)

    popup = ConsentPopup.opened_by(page, app_page.button.click)
    assert urlsplit(popup.page.url).netloc == urlsplit(opener.engine_url).netloc
    popup.expect_asking(
        app_name=DEMO_APP_NAME,
        origin=opener.url,
        requests=2,
        max_usd="$0.50",
        expires="10 minutes",
    )
    popup.approve()

    outcome = app_page.outcome()
    assert outcome["kind"] == "grant", outcome
    grant = outcome["grant"]
    assert grant["grantToken"].startswith("wfg_")
    assert grant["requests"] == 2
    assert isinstance(grant["expiresAt"], int)
    status = grant_status(client, opener.secret_keys["demo"], grant["grantToken"])
    assert (status["remaining"], status["maxUsd"]) == (2, 0.5)

    # The popup spoke only from the engine's origin, and said hello before answering.
    messages = app_page.received_messages()
    assert {m["origin"] for m in messages} == {opener.engine_url}
    assert [m["data"]["type"] for m in messages] == ["wattfare:ready", "wattfare:grant"]
    # No token (session or grant) ever travelled in a URL.
    assert not [u for u in urls if "eyJ" in u or "wfg_" in u]


def test_approve_with_the_keyboard_from_the_es_module(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.url, module=1, session="function")
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking(requests=1, max_usd="No dollar cap")
    popup.approve_with_keyboard()
    assert app_page.outcome()["kind"] == "grant"


def test_approve_on_the_engines_own_origin(app: Flask, page: Page, request):
    """The demo's default layout: app pages and the engine on one origin."""
    keys = {"demo": (app.config["WATTFARE_PUBLISHABLE_KEY"], app.config["WATTFARE_SECRET_KEY"])}
    app.register_blueprint(opener_blueprint(keys, None), url_prefix="/_test/opener")
    server = request.getfixturevalue("live_server")
    app_page = OpenerPage(page).open(f"{server.url}/_test/opener", requests=3)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking(origin=server.url, requests=3)
    popup.approve()
    assert app_page.outcome()["grant"]["requests"] == 3


def test_auto_approve_for_a_test_app(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.url, keys="auto")
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.wait_closed()  # it opened, approved and closed by itself
    outcome = app_page.outcome()
    assert outcome["kind"] == "grant", outcome


# --- deny, close, time out ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["click", "escape"])
def test_deny_gives_null(page: Page, opener: Opener, how: str):
    app_page = OpenerPage(page).open(opener.url)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    popup.deny() if how == "click" else popup.press_escape()
    assert app_page.outcome() == {"kind": "null"}
    assert [m["data"]["type"] for m in app_page.received_messages()][-1] == "wattfare:deny"


def test_closing_the_popup_gives_null(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.url)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    expect(popup.approve_button).to_be_enabled()  # the session token has arrived
    popup.close_window()
    assert app_page.outcome() == {"kind": "null"}
    # Detected by the popup's goodbye, not by guessing from window.closed.
    assert [m["data"]["type"] for m in app_page.received_messages()] == [
        "wattfare:ready",
        "wattfare:closing",
    ]


def test_a_popup_gone_without_a_goodbye_gives_null(page: Page, opener: Opener):
    """No beforeunload (as when the browser kills the window): `window.closed`, a hint,
    settles it after a grace period, because the popup had said hello."""
    app_page = OpenerPage(page).open(opener.url)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    expect(popup.approve_button).to_be_enabled()
    popup.page.close(run_before_unload=False)
    assert app_page.outcome() == {"kind": "null"}
    assert [m["data"]["type"] for m in app_page.received_messages()] == ["wattfare:ready"]


def test_a_popup_cut_off_by_coop_is_not_a_close(page: Page, opener: Opener):
    """A consent page that sends COOP: same-origin severs the opener's handle, which then
    reads as closed. That is an error to report, not a visitor's "no"."""
    app_page = OpenerPage(page).open(opener.url, engine=f"{opener.disallowed_url}/coop-engine/")
    with page.context.expect_page():
        app_page.button.click()
    outcome = app_page.outcome()
    assert outcome["code"] == "popup_unreachable", outcome


def test_a_popup_left_open_times_out(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.url, timeoutMs=1500)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    popup.wait_closed()  # closed by wattfare.js
    outcome = app_page.outcome()
    assert (outcome["kind"], outcome["code"], outcome["wattfareError"]) == (
        "error",
        "timeout",
        True,
    )


def test_a_failing_session_endpoint(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.url, session="session/fail")
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.wait_closed()
    outcome = app_page.outcome()
    assert outcome["code"] == "session_failed"
    assert "HTTP 500" in outcome["message"]


# --- one popup at a time, blocked popups ---------------------------------------------------


def test_a_second_click_while_the_popup_is_open(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.url)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    first_url = popup.page.url

    app_page.button.click()
    busy = app_page.outcome(0)
    assert (busy["code"], busy["wattfareError"]) == ("popup_busy", True)
    assert len(page.context.pages) == 2  # no second window
    assert popup.page.url == first_url  # and the first one was not reloaded

    popup.approve()  # the first request still completes
    assert app_page.outcome(1)["kind"] == "grant"


def test_a_blocked_popup(launch_browser, opener: Opener):
    # Playwright turns Chromium's popup blocker off; this browser keeps it on, and the
    # page calls requestGrant() at load, with no user gesture.
    browser: Browser = launch_browser(ignore_default_args=["--disable-popup-blocking"])
    try:
        page = browser.new_page()
        app_page = OpenerPage(page).open(opener.url, at="load")
        outcome = app_page.outcome()
        assert (outcome["code"], outcome["wattfareError"]) == ("popup_blocked", True)
        assert page.context.pages == [page]
    finally:
        browser.close()


# --- refusals: an error in the popup, an error (never a token) for the opener ----------------


def test_a_page_on_an_origin_the_app_has_not_allowed_gets_nothing(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.disallowed_url)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_error(f"{opener.disallowed_url} is not allowed")

    outcome = app_page.outcome()
    assert (outcome["code"], outcome["reason"]) == ("grant_failed", "origin_not_allowed")
    messages = app_page.received_messages()
    assert [m["data"]["type"] for m in messages] == ["wattfare:error"]
    assert "wfg_" not in str(messages)


def test_a_page_claiming_an_allowed_origin_gets_nothing(page: Page, opener: Opener):
    """A hostile page opens the popup claiming an allowed origin and offers it a valid
    session token for that origin: the popup ignores it, and answers only that origin."""
    page.goto(f"{opener.disallowed_url}/spoof?claim={opener.url}")
    popup = ConsentPopup.opened_by(page, page.get_by_role("button").click)
    popup.expect_asking(origin=opener.url, requests=5)
    offered = page.evaluate("window.posted")
    page.wait_for_function(f"window.posted >= {offered + 10}")  # ≥ 500 ms of offers
    expect(popup.approve_button).to_be_disabled()
    expect(popup.page.get_by_role("status")).to_contain_text("Connecting to")
    popup.deny()
    assert page.evaluate("window.receivedMessages") == []


@pytest.mark.parametrize(
    ("params", "shown", "param"),
    [
        ({"requests": 0}, "requests must be from 1 to 100", "requests"),
        ({"maxUsd": 1000}, "maxUsd can be at most 100", "maxUsd"),
    ],
)
def test_a_bad_count_or_cap(page: Page, opener: Opener, params, shown, param):
    app_page = OpenerPage(page).open(opener.url, **params)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_error(shown)
    outcome = app_page.outcome()
    assert (outcome["code"], outcome["reason"], outcome["param"]) == (
        "grant_failed",
        "invalid_request",
        param,
    )


def test_an_unknown_publishable_key(page: Page, opener: Opener):
    nonce = "0123456789abcdef0123456789abcdef"
    page.goto(opener.url)  # any page will do as the opener
    url = (
        f"{opener.engine_url}/wattfare/consent?pk=pk_test_0000000000000000"
        f"&origin={opener.url}&nonce={nonce}&requests=1"
    )
    with page.expect_popup() as info:
        page.evaluate("url => { window.open(url, 'wattfare_consent') }", url)
    ConsentPopup(info.value).expect_error("no Wattfare app has")
    page.wait_for_function("window.receivedMessages.length > 0")
    (message,) = page.evaluate("window.receivedMessages")
    assert message["data"]["type"] == "wattfare:error"
    assert message["data"]["nonce"] == nonce
    assert message["data"]["error"]["code"] == "unknown_publishable_key"


def test_the_popup_opened_without_an_opener_cannot_answer(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.url)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    url = popup.page.url
    popup.deny()
    page.goto(url)  # the same consent URL, typed into a tab: no window.opener
    popup = ConsentPopup(page)
    popup.expect_error("lost the page that opened it")
