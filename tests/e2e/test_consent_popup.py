"""wattfare.js and the consent popup in a real browser.

The engine runs on http://127.0.0.1:B (the `live_server` fixture); a stand-in customer
page (tests/e2e/opener.py) runs on http://localhost:A, which the demo app allows, so
the flow crosses origins as it does with a hosted engine. The same server reached as
http://127.0.0.1:A is an origin the app has NOT allowed.

The last part forges messages at both windows, one test per check of the protocol, so
that removing any one of those checks fails a test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from flask import Flask
from playwright.sync_api import Browser, Page, expect

from tests.conftest import LiveServer
from tests.e2e.opener import (
    SESSION_GATE,
    OpenerPage,
    create_opener,
    opener_blueprint,
    serve,
)
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


# --- the session's question, seen from the popup -------------------------------------------


def test_a_session_allowing_less_than_the_page_asks_is_refused_before_approve(
    page: Page, opener: Opener
):
    """The app's server allowed 1 request; the page asks for 3. The popup says so at once
    (the engine would refuse the grant: 403 exceeds_session)."""
    app_page = OpenerPage(page).open(opener.url, requests=3, session="session?keys=demo&allow=1")
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_error("The app allows at most 1 request(s) here, but this page asks for 3")
    outcome = app_page.outcome()
    assert (outcome["code"], outcome["reason"]) == ("grant_failed", "exceeds_session")


def test_the_apps_refusal_of_the_question_reaches_the_page(page: Page, opener: Opener):
    app_page = OpenerPage(page).open(opener.url, requests=9, session="session/refuse")
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.wait_closed()
    outcome = app_page.outcome()
    assert outcome["code"] == "session_failed"
    assert "HTTP 400: This converter approves at most 5 conversions at once." in outcome["message"]


# --- forged messages: every check of the protocol has a test that fails without it ---------
#
# Each test below passes only because of one check in static/wattfare.js or
# static/consent.js (named in its docstring); with that check removed, it fails. The
# attacker is given the nonce (read from the popup's URL) so that the check under test is
# the only one standing.

FORGED_GRANT = "wfg_" + "F" * 36


def forged_grant(nonce: str) -> str:
    grant = {"grantToken": FORGED_GRANT, "expiresAt": 4102444800, "requests": 1}
    return json.dumps({"type": "wattfare:grant", "nonce": nonce, "grant": grant})


def nonce_of(popup_page: Page) -> str:
    return parse_qs(urlsplit(popup_page.url).query)["nonce"][0]


def wait_for_forged_grants(page: Page, count: int) -> None:
    """Until the opener page itself has received `count` forged grants (it records every
    message): wattfare.js has had them all to look at."""
    page.wait_for_function(
        """([token, count]) => window.receivedMessages.filter(
            (m) => m.data && m.data.grant && m.data.grant.grantToken === token
        ).length >= count""",
        arg=[FORGED_GRANT, count],
    )


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """The opener's session endpoint (`session?gate=1`) answers once this is set."""
    SESSION_GATE.clear()
    yield SESSION_GATE
    SESSION_GATE.set()


@pytest.fixture
def engine_forger(app: Flask) -> str:
    """A hostile page on the engine's own origin (as another window there could be)."""
    app.register_blueprint(opener_blueprint({}, None), url_prefix="/_test/evil")
    return "/_test/evil/forge"


def test_the_opener_ignores_a_grant_from_another_window_on_the_engines_origin(
    page: Page, engine_forger: str, opener: Opener
):
    """wattfare.js: `event.source !== popup`."""
    app_page = OpenerPage(page).open(opener.url)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    query = urlencode({"to": "parent", "message": forged_grant(nonce_of(popup.page))})
    page.evaluate(
        "url => { const frame = document.createElement('iframe'); frame.src = url; "
        "document.body.append(frame); }",
        f"{opener.engine_url}{engine_forger}?{query}",
    )
    wait_for_forged_grants(page, 5)
    app_page.expect_no_outcome()
    popup.approve()
    outcome = app_page.outcome()
    assert outcome["kind"] == "grant" and outcome["grant"]["grantToken"] != FORGED_GRANT


def test_the_opener_ignores_its_popup_once_it_is_on_another_origin(page: Page, opener: Opener):
    """wattfare.js: `event.origin !== engineOrigin`. The popup window is the right one,
    but it was sent to another site (here: its first page redirects there)."""
    app_page = OpenerPage(page).open(opener.url)

    def to_the_attacker(route) -> None:
        nonce = parse_qs(urlsplit(route.request.url).query)["nonce"][0]
        query = urlencode({"message": forged_grant(nonce)})
        route.fulfill(status=302, headers={"Location": f"{opener.disallowed_url}/forge?{query}"})

    page.context.route(f"{opener.engine_url}/wattfare/consent*", to_the_attacker)
    with page.expect_popup() as opened:
        app_page.button.click()
    wait_for_forged_grants(page, 5)
    app_page.expect_no_outcome()
    opened.value.close()
    assert app_page.outcome()["code"] == "popup_unreachable"  # never a grant


def test_the_opener_ignores_its_popups_message_about_another_question(page: Page, opener: Opener):
    """wattfare.js: `message.nonce !== nonce` (a reused popup's late answer, say)."""
    app_page = OpenerPage(page).open(opener.url)
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    expect(popup.approve_button).to_be_enabled()  # the real exchange is done
    for _ in range(3):
        popup.page.evaluate(
            "([message, origin]) => window.opener.postMessage(JSON.parse(message), origin)",
            [forged_grant("0" * 32), opener.url],
        )
    wait_for_forged_grants(page, 3)
    app_page.expect_no_outcome()
    popup.approve()
    assert app_page.outcome()["grant"]["grantToken"] != FORGED_GRANT


def test_the_session_token_never_reaches_a_page_the_popup_was_sent_to(
    page: Page, opener: Opener, gate: threading.Event
):
    """wattfare.js: the session token is posted to the engine's origin, never "*". The
    popup said hello, then (before the app's server answered) it was navigated to another
    site, and its goodbye was lost."""
    # Lose the goodbye (as when the browser tears a page down before it can speak): the
    # consent page's beforeunload and pagehide listeners never get registered, so that
    # wattfare.js still takes the window for its consent page once it has moved on.
    page.context.add_init_script(
        """if (location.pathname === "/wattfare/consent") {
            const add = EventTarget.prototype.addEventListener;
            EventTarget.prototype.addEventListener = function (type, ...rest) {
                if (this === window && (type === "beforeunload" || type === "pagehide")) return;
                return add.call(this, type, ...rest);
            };
        }"""
    )
    app_page = OpenerPage(page).open(opener.url, session="function", sessionQuery="&gate=1")
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    page.wait_for_function(
        "window.receivedMessages.some((m) => m.data && m.data.type === 'wattfare:ready')"
    )
    popup.page.goto(f"{opener.disallowed_url}/forge")
    gate.set()  # now the app's server answers, and wattfare.js hands the token over
    page.wait_for_function("window.sessionDelivered === true")
    # A marker from the same window after it: anything posted before it has arrived first.
    page.evaluate("() => window.open('', 'wattfare_consent').postMessage({ type: 'marker' }, '*')")
    popup.page.wait_for_function("window.got.some((m) => m.data && m.data.type === 'marker')")
    received = popup.page.evaluate("window.got")
    assert [m["data"] for m in received] == [{"type": "marker"}], received
    # It was still waiting for its consent page: the token was handed over, to nobody.
    assert [m["data"]["type"] for m in app_page.received_messages()] == ["wattfare:ready"]
    popup.page.close()
    assert app_page.outcome() == {"kind": "null"}


def test_the_popup_ignores_a_session_from_another_window_of_the_openers_origin(
    page: Page, opener: Opener, gate: threading.Event
):
    """consent.js: `event.source !== opener`. A frame on the app's own origin (the right
    origin, the right nonce) offers the popup a session token before the app does."""
    app_page = OpenerPage(page).open(opener.url, session="function", sessionQuery="&gate=1")
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    forged = {"type": "wattfare:session", "nonce": nonce_of(popup.page), "token": "a.forged.jwt"}
    page.evaluate(
        """url => new Promise((resolve) => {
            const frame = document.createElement("iframe");
            frame.onload = () => {
                frame.contentWindow.target = window.open("", "wattfare_consent");
                resolve();
            };
            frame.src = url;
            document.body.append(frame);
        })""",
        f"{opener.url}/forge?" + urlencode({"to": "handed", "message": json.dumps(forged)}),
    )
    page.wait_for_function("document.querySelector('iframe').contentWindow.posted >= 10")
    expect(popup.problem).to_be_hidden()
    expect(popup.approve_button).to_be_disabled()  # still waiting for the app's token
    gate.set()
    popup.approve()
    assert app_page.outcome()["kind"] == "grant"


def test_the_popup_ignores_a_session_for_another_question(
    page: Page, opener: Opener, gate: threading.Event
):
    """consent.js: `message.nonce !== nonce`. The opener itself, about another question."""
    app_page = OpenerPage(page).open(opener.url, session="function", sessionQuery="&gate=1")
    popup = ConsentPopup.opened_by(page, app_page.button.click)
    popup.expect_asking()
    forged = {"type": "wattfare:session", "nonce": "f" * 32, "token": "a.forged.jwt"}
    for _ in range(3):
        page.evaluate(
            "([message, origin]) => "
            "window.open('', 'wattfare_consent').postMessage(message, origin)",
            [forged, opener.engine_url],
        )
    gate.set()  # the real token comes after the forged ones, from the same window
    popup.approve()
    assert app_page.outcome()["kind"] == "grant"
