"""The stream in a real browser: parts arrive one by one, on a model that is still writing.

The model is tests/fake_upstream.py behind the engine (WATTFARE_MODEL names it, as it
would name a paid model), so the test can hold part 2 mid-sentence with a gate and look
at the page while the conversion is still running.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from tests.e2e.converter_page import ConverterPage
from tests.fake_upstream import FAKE_MODEL, FakeUpstream, StreamReply

pytestmark = pytest.mark.e2e


def document(parts: int) -> str:
    """Markdown of `parts` sections, one part each at CONVERTER_CHUNK_CHARS=2000."""
    return "\n\n".join(f"# Section {n}\n\n" + f"Sentence {n}. " * 120 for n in range(1, parts + 1))


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {
        **app_config,
        **upstream_config,
        "WATTFARE_MODEL": FAKE_MODEL,
        "CONVERTER_CHUNK_CHARS": 2000,
        "CONVERTER_MAX_REQUESTS": 5,
    }


@pytest.fixture
def converter(page: Page, live_server) -> ConverterPage:
    return ConverterPage.open(page, live_server.url)


def test_parts_appear_as_the_model_writes_them(
    converter: ConverterPage, upstream: FakeUpstream
) -> None:
    second_half = threading.Event()
    upstream.respond(
        StreamReply(chunks=("# Section 1\n\n", "The first part, whole.")),
        StreamReply(chunks=("# Section 2\n\n", "The second part, "), gates={1: second_half}),
        StreamReply(chunks=("# Section 3\n\n", "The third part.")),
    )
    converter.choose_file("report.md", document(3))
    converter.expect_plan(requests=3)
    converter.convert_expecting_popup().approve()

    # Part 1 is done and rendered; part 2 has begun and waits for its model.
    expect(converter.parts).to_have_count(1)
    expect(converter.parts.first.get_by_role("heading", name="Section 1")).to_be_visible()
    expect(converter.progress).to_have_text("Part 2 of 3: the AI model is writing…")
    expect(converter.markdown).to_contain_text("# Section 2")
    expect(converter.done).to_have_count(0)  # no copy or download before the end
    expect(converter.convert_button).to_be_disabled()

    second_half.set()
    converter.expect_result("report.md", remaining=0)
    expect(converter.parts).to_have_count(3)
    expect(converter.markdown).to_contain_text("The second part, ")
    expect(converter.markdown).to_contain_text("The third part.")
    assert len(upstream.requests) == 3  # one model call per part


def test_a_file_needing_more_requests_than_allowed_is_refused_before_any_popup(
    converter: ConverterPage,
) -> None:
    converter.choose_file("book.md", document(7))
    expect(converter.plan).to_contain_text("needs 7 AI requests, more than the 5")

    converter.convert_button.click()

    converter.expect_notice("Nothing was sent.")
    assert converter.popups == []
    converter.expect_nothing_sent()


@pytest.mark.skipif(
    not os.environ.get("WATTFARE_SCREENSHOTS"), reason="set WATTFARE_SCREENSHOTS=1 to refresh"
)
def test_screenshot_of_a_stream_in_progress(
    converter: ConverterPage, upstream: FakeUpstream
) -> None:
    """docs/screenshots/5-streaming.png: part 2 of 3 being written (README, tutorial)."""
    later = threading.Event()
    upstream.respond(
        StreamReply(
            chunks=(
                "# Section 1\n\n",
                "Sentence 1. " * 60,
                "\n\n| Year | MWh |\n",
                "| --- | --- |\n| 2024 | 120 |\n| 2025 | 340 |",
            )
        ),
        StreamReply(
            chunks=("# Section 2\n\n", "Sentence 2. " * 25, "Sentence 2. " * 20), gates={2: later}
        ),
        StreamReply(chunks=("# Section 3\n\n", "Sentence 3. " * 60)),
    )
    converter.page.set_viewport_size({"width": 1280, "height": 860})
    converter.choose_file("report.md", document(3))
    converter.convert_expecting_popup().approve()
    expect(converter.progress).to_have_text("Part 2 of 3: the AI model is writing…")
    expect(converter.markdown).to_contain_text("Sentence 2.")
    shots = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
    converter.page.screenshot(path=shots / "5-streaming.png", full_page=True)
    later.set()
    converter.expect_result("report.md", remaining=0)
