"""Revoke on the receipt stops a conversion streaming in the converter, within a second.

The model is tests/fake_upstream.py behind the engine, streaming slowly (about ten
seconds for the part), so the conversion is still running when the visitor revokes.
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.converter_page import ConverterPage
from tests.e2e.pages import ReceiptPage
from tests.fake_upstream import FAKE_MODEL, FakeUpstream, StreamReply

pytestmark = pytest.mark.e2e


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, **upstream_config, "WATTFARE_MODEL": FAKE_MODEL}


@pytest.fixture
def converter(page: Page, live_server) -> ConverterPage:
    return ConverterPage.open(page, live_server.url)


def test_revoke_on_the_receipt_stops_a_running_conversion_within_a_second(
    converter: ConverterPage, context: BrowserContext, upstream: FakeUpstream
) -> None:
    upstream.respond(StreamReply(chunks=["# Notes\n\n"] + ["word "] * 200, interval=0.05))
    converter.choose_file("notes.md", "# Notes\n\nSome words to tidy.")
    converter.convert_expecting_popup().approve()
    expect(converter.markdown).to_contain_text("# Notes")  # the model is writing
    receipt = ReceiptPage.open(context, converter.receipt_url())
    receipt.expect_calls("running")

    receipt.revoke()

    # The engine ends the stream at its next check (every 0.5 s): the converter says so.
    expect(converter.alert).to_contain_text("revoked", timeout=1000)
    expect(converter.convert_button).to_be_enabled()
    receipt.expect_calls("stopped: revoked")
    expect(receipt.status).to_have_text("Revoked")
