"""The visitor's side in a real browser, on the offline model: the popup's model and
test-mode note, the receipt filling in as calls are made (a call cut at the cap among
them), and the demo's "Stop using my grant"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from tests.e2e.converter_page import ConverterPage
from tests.e2e.pages import ReceiptPage

pytestmark = pytest.mark.e2e

SHORT = "<h1>Short note</h1><p>A few words.</p>"
# local/markdown costs $1 per million tokens in and $2 out: this one part (20,000
# characters, about 4,200 tokens for its prompt and as many for its Markdown) costs more
# than a $0.01 cap leaves for its answer, so the engine clamps its output to what the
# cap pays for, and the stream is cut there.
LONG = "\n\n".join(f"Paragraph {i} " + "word " * 18 for i in range(200))


@pytest.fixture
def converter(page: Page, live_server) -> ConverterPage:
    return ConverterPage.open(page, live_server.url)


def test_a_test_app_popup_names_the_model_and_says_nobody_is_charged(
    converter: ConverterPage,
) -> None:
    converter.choose_file("note.html", SHORT)
    popup = converter.convert_expecting_popup()
    popup.expect_asking(requests=1, model="local/markdown")
    expect(popup.test_mode_badge).to_have_text("Test mode: nobody is charged")
    expect(popup.quote).to_contain_text("for 1 request (local/markdown)")
    expect(popup.quote).to_contain_text("In test mode nobody is charged.")
    popup.approve()
    converter.expect_result("note.md", remaining=0)


def test_the_receipt_fills_in_as_calls_are_made_and_shows_a_cut_at_cap_call(
    converter: ConverterPage, context: BrowserContext
) -> None:
    converter.approve_extra(1, max_usd="0.01")
    converter.choose_file("note.html", SHORT)
    converter.convert_expecting_popup().approve()
    converter.expect_result("note.md", remaining=1)

    receipt = ReceiptPage.open(context, converter.receipt_url())
    receipt.expect_calls("settled")
    expect(receipt.remaining).to_have_text("1")
    expect(receipt.model).to_have_text("local/markdown")
    expect(receipt.status).to_have_text("Active")

    # The next file, on the same grant: the open receipt shows it without a reload.
    converter.choose_file("long.txt", LONG)
    converter.expect_plan(requests=1)
    converter.convert_with_held_grant()
    expect(converter.done).to_be_visible()
    receipt.expect_calls("settled", "cut at cap")
    expect(receipt.remaining).to_have_text("0")
    expect(receipt.status).to_have_text("Used up")
    expect(receipt.revoke_button).to_have_count(0)  # nothing left to stop


def test_stop_using_my_grant_revokes_it(converter: ConverterPage, context: BrowserContext) -> None:
    converter.approve_extra(2)
    converter.choose_file("note.html", SHORT)
    converter.convert_expecting_popup().approve()
    converter.expect_result("note.md", remaining=2)
    expect(converter.grant_status).to_contain_text("2 approved requests left")
    url = converter.receipt_url()

    converter.stop_grant()

    converter.expect_notice("Stopped: your grant is revoked")
    expect(converter.grant_status).to_be_hidden()
    receipt = ReceiptPage.open(context, url)
    expect(receipt.status).to_have_text("Revoked")
    receipt.expect_calls("settled")
    # The page holds no grant now: the next file asks the visitor again (for 1 + 2 extra).
    converter.choose_file("again.html", SHORT)
    popup = converter.convert_expecting_popup()
    popup.expect_asking(requests=3)
    popup.deny()


@pytest.mark.skipif(
    not os.environ.get("WATTFARE_SCREENSHOTS"), reason="set WATTFARE_SCREENSHOTS=1 to refresh"
)
def test_screenshots_of_the_quote_and_the_receipt(browser: Browser, live_server) -> None:
    shots = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    converter = ConverterPage.open(context.new_page(), live_server.url)
    converter.approve_extra(1, max_usd="0.01")
    converter.choose_file("note.html", SHORT)
    popup = converter.convert_expecting_popup()
    popup.page.set_viewport_size({"width": 460, "height": 700})
    expect(popup.approve_button).to_be_enabled()
    popup.page.screenshot(path=shots / "6-consent-quote.png")
    popup.approve()
    converter.expect_result("note.md", remaining=1)
    url = converter.receipt_url()
    converter.choose_file("long.txt", LONG)
    converter.convert_with_held_grant()
    expect(converter.done).to_be_visible()
    receipt = ReceiptPage.open(context, url)
    receipt.expect_calls("settled", "cut at cap")
    receipt.page.set_viewport_size({"width": 900, "height": 760})
    receipt.page.screenshot(path=shots / "7-receipt.png", full_page=True)
    context.close()
