"""Refresh the screenshots in docs/screenshots/ (used by the README and docs/tutorial.md).

Skipped unless asked for, so an ordinary test run never rewrites tracked files:

    WATTFARE_SCREENSHOTS=1 .venv/bin/pytest tests/e2e/test_converter_screenshots.py \
        tests/e2e/test_converter_stream.py
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from tests import documents
from tests.e2e.converter_page import ConverterPage

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        not os.environ.get("WATTFARE_SCREENSHOTS"),
        reason="set WATTFARE_SCREENSHOTS=1 to refresh docs/screenshots/",
    ),
]

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
PDF = "application/pdf"


@pytest.fixture
def app_config(app_config: dict[str, Any]) -> dict[str, Any]:
    # Small parts, so a three-page report shows the stream's parts.
    return {**app_config, "CONVERTER_CHUNK_CHARS": 700}


def test_take_screenshots(browser: Browser, live_server) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    report = documents.pdf_report(pages=3)
    context = browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme="light")
    page = context.new_page()
    converter = ConverterPage.open(page, live_server.url)
    converter.approve_extra(2, max_usd="0.50")
    converter.choose_file("annual-report.pdf", report, PDF)
    converter.expect_plan(requests=3)
    page.screenshot(path=SHOTS / "1-page.png", full_page=True)

    popup = converter.convert_expecting_popup()
    popup.page.set_viewport_size({"width": 460, "height": 640})
    popup.expect_asking(requests=5, max_usd="$0.50")
    expect(popup.approve_button).to_be_enabled()
    popup.page.screenshot(path=SHOTS / "2-consent-popup.png")
    popup.approve()

    converter.expect_result("annual-report.md", remaining=2)
    expect(converter.parts).to_have_count(3)
    page.screenshot(path=SHOTS / "3-result.png", full_page=True)

    mobile = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    phone = ConverterPage.open(mobile.new_page(), live_server.url)
    phone.choose_file(
        "minutes.docx",
        documents.word_report(),
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    )
    phone.page.screenshot(path=SHOTS / "4-phone-dark.png", full_page=True)
    mobile.close()
    context.close()
