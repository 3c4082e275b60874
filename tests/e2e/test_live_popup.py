"""The popup of a live-mode app: the model by name and the most the grant can cost."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.converter_page import ConverterPage
from wattfare_demo.engine.tokens import new_app_id, new_secret_key

pytestmark = pytest.mark.e2e


@pytest.fixture
def keys() -> dict[str, str]:
    """A live app: the demo runs as a customer's production site would."""
    app_id = new_app_id()
    return {
        "WATTFARE_PUBLISHABLE_KEY": f"pk_live_{app_id}",
        "WATTFARE_SECRET_KEY": new_secret_key("live", app_id),
    }


def test_a_live_popup_shows_the_model_and_the_quote(page: Page, live_server) -> None:
    converter = ConverterPage.open(page, live_server.url)
    converter.approve_extra(2)
    converter.choose_file("note.html", "<h1>Note</h1><p>Hello.</p>")
    popup = converter.convert_expecting_popup()
    popup.expect_asking(
        requests=3,
        model="local/markdown",
        quote=re.compile(r"^At most \$[\d,]+\.\d\d for 3 requests \(local/markdown\)"),
    )
    expect(popup.test_mode_badge).to_have_count(0)
    expect(popup.quote).not_to_contain_text("nobody is charged")

    converter.cap_input.fill("0.5")
    popup.deny()
    popup = converter.convert_expecting_popup()
    popup.expect_asking(quote="At most $0.50 for 3 requests (local/markdown): the cap.")
    popup.deny()
