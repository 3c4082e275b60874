"""Refresh the screenshots in docs/screenshots/ (used by docs/tutorial.md).

Skipped unless asked for, so an ordinary test run never rewrites tracked files:

    WATTFARE_SCREENSHOTS=1 .venv/bin/pytest tests/e2e/test_converter_screenshots.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.e2e.converter_page import ConverterPage
from tests.e2e.test_converter import REPORT_HTML

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.environ.get("WATTFARE_SCREENSHOTS"),
        reason="set WATTFARE_SCREENSHOTS=1 to refresh docs/screenshots/",
    ),
]

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"


def test_take_screenshots(browser: Browser, live_server) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    page = context.new_page()
    converter = ConverterPage.open(page, live_server.url)
    page.screenshot(path=SHOTS / "1-page.png", full_page=True)

    converter.approve_at_once(3, max_usd="0.50")
    converter.choose_file("report.html", REPORT_HTML)
    popup = converter.convert_expecting_popup()
    popup.page.set_viewport_size({"width": 460, "height": 640})
    popup.expect_asking(requests=3, max_usd="$0.50")
    expect(popup.approve_button).to_be_enabled()
    popup.page.screenshot(path=SHOTS / "2-consent-popup.png")
    popup.approve()

    converter.expect_result("report.md", remaining=2)
    page.screenshot(path=SHOTS / "3-result.png", full_page=True)

    mobile = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    phone = ConverterPage.open(mobile.new_page(), live_server.url)
    phone.choose_file("report.html", REPORT_HTML)
    phone.page.screenshot(path=SHOTS / "4-phone-dark.png", full_page=True)
    mobile.close()
    context.close()
