"""The converter page in a real browser, as a visitor uses it: file, popup, Markdown.

Each test runs the whole stack: the page and htmx, wattfare.js and the consent popup, the
converter's routes and the SDK, the embedded engine and the offline local/markdown model.
"""

from __future__ import annotations

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from tests.e2e.converter_page import ConverterPage

pytestmark = pytest.mark.e2e

REPORT_HTML = """<!doctype html>
<html><head><title>Report</title></head>
<body>
  <h1>Quarterly report</h1>
  <p>Output was <strong>up</strong> this quarter.</p>
  <ul><li>Solar panels</li><li>Wind turbines</li></ul>
  <table>
    <tr><th>Source</th><th>MWh</th></tr>
    <tr><td>Solar</td><td>120</td></tr>
    <tr><td>Wind</td><td>340</td></tr>
  </table>
</body></html>
"""

CITIES_CSV = "City,Country,Population\nParis,France,2102650\nLima,Peru,10092000\n"

HOSTILE_HTML = """<!doctype html>
<html><head><script>window.pwned = "head script"; alert("pwned")</script></head>
<body>
  <h1>Innocent heading</h1>
  <script>window.pwned = "body script"; alert("pwned")</script>
  <img src="x" onerror="window.pwned = 'onerror'; alert('pwned')">
  <p><a href="javascript:window.pwned='link'">click me</a></p>
  <iframe src="javascript:parent.pwned='iframe'"></iframe>
</body></html>
"""


@pytest.fixture
def converter(page: Page, live_server) -> ConverterPage:
    return ConverterPage.open(page, live_server.url)


def test_html_file_comes_back_as_markdown(converter: ConverterPage, context: BrowserContext):
    converter.choose_file("report.html", REPORT_HTML)
    expect(converter.file_info).to_have_text(f"report.html · {len(REPORT_HTML)} bytes")
    converter.expect_plan(requests=1)

    popup = converter.convert_expecting_popup()
    popup.expect_asking(requests=1)
    popup.approve()

    converter.expect_result("report.md", remaining=0)
    preview = converter.preview
    expect(preview.get_by_role("heading", name="Quarterly report", level=1)).to_be_visible()
    expect(preview.get_by_role("listitem")).to_have_text(["Solar panels", "Wind turbines"])
    expect(converter.parts).to_have_count(1)
    expect(preview.get_by_role("table")).to_be_visible()
    expect(preview.get_by_role("cell", name="340")).to_be_visible()
    expect(converter.markdown).to_contain_text("# Quarterly report")
    expect(converter.markdown).to_contain_text("Solar panels")
    expect(converter.markdown).to_contain_text("| Source | MWh |")

    # Copy and download give the raw Markdown.
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    converter.copy_button.click()
    expect(converter.page.get_by_role("button", name="Copied")).to_be_visible()
    copied = converter.page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("# Quarterly report")
    with converter.page.expect_download() as download:
        converter.download_link.click()
    assert download.value.suggested_filename == "report.md"
    with open(download.value.path(), encoding="utf-8") as saved:
        assert saved.read() == copied


def test_csv_file_comes_back_as_a_markdown_table(converter: ConverterPage) -> None:
    converter.choose_file("cities.csv", CITIES_CSV)

    popup = converter.convert_expecting_popup()
    popup.approve_with_keyboard()  # Tab to Approve, Enter

    converter.expect_result("cities.md", remaining=0)
    table = converter.preview.get_by_role("table")
    expect(table.get_by_role("columnheader")).to_have_text(["City", "Country", "Population"])
    expect(table.get_by_role("row")).to_have_count(3)
    expect(table.get_by_role("cell", name="Lima")).to_be_visible()
    expect(converter.markdown).to_contain_text("| City | Country | Population |")


def test_deny_sends_nothing_and_leaves_the_page_as_it_was(converter: ConverterPage) -> None:
    converter.choose_file("report.html", REPORT_HTML)

    popup = converter.convert_expecting_popup()
    popup.deny()

    converter.expect_notice("No grant was approved, so nothing was sent.")
    expect(converter.how_it_works).to_be_visible()
    expect(converter.file_info).to_contain_text("report.html")
    expect(converter.convert_button).to_be_enabled()
    converter.expect_nothing_sent()


def test_closing_the_popup_sends_nothing(converter: ConverterPage) -> None:
    converter.choose_file("cities.csv", CITIES_CSV)

    popup = converter.convert_expecting_popup()
    popup.expect_asking(requests=1)  # the visitor reads the question, then closes the window
    popup.close_window()

    converter.expect_notice("No grant was approved, so nothing was sent.")
    expect(converter.how_it_works).to_be_visible()
    converter.expect_nothing_sent()


def test_extra_requests_convert_the_next_files_without_asking_again(converter: ConverterPage):
    converter.approve_extra(2)
    converter.choose_file("one.html", "<h1>One</h1><p>first</p>")
    popup = converter.convert_expecting_popup()
    popup.expect_asking(requests=3)  # the file's 1, and 2 more
    popup.approve()
    converter.expect_result("one.md", remaining=2)
    expect(converter.grant_status).to_contain_text("2 approved requests left")

    converter.choose_file("two.csv", "a,b\n1,2\n")
    converter.convert_with_held_grant()
    converter.expect_result("two.md", remaining=1)
    expect(converter.grant_status).to_contain_text("1 approved request left")

    converter.choose_file("three.txt", "Three\n\nThe last one.")
    converter.convert_with_keyboard()  # Enter on the focused button works too
    converter.expect_result("three.md", remaining=0)
    expect(converter.grant_status).to_be_hidden()
    assert len(converter.popups) == 1
    assert len(converter.convert_posts) == 3

    # The grant is spent: the fourth file asks for a new one.
    converter.choose_file("four.txt", "Four")
    popup = converter.convert_expecting_popup()
    popup.expect_asking(requests=3)
    popup.deny()
    converter.expect_notice("nothing was sent")
    assert len(converter.convert_posts) == 3


def test_a_cap_that_runs_out_keeps_the_parts_it_paid_for_and_a_new_grant_finishes(
    converter: ConverterPage,
) -> None:
    # local/markdown costs $1 per million tokens in and $2 out. This ~7,500-token text is
    # two parts; a $0.01 cap pays for the first, and the second is refused at the cap.
    long_text = "\n\n".join(f"Paragraph {i} " + "word " * 30 for i in range(240))
    converter.approve_extra(0, max_usd="0.01")
    converter.choose_file("long.txt", long_text)
    converter.expect_plan(requests=2)
    converter.convert_expecting_popup().approve()

    expect(converter.alert).to_contain_text("Stopped after 1 of 2 parts")
    expect(converter.alert).to_contain_text("dollar cap has been reached")
    expect(converter.parts).to_have_count(1)
    expect(converter.download_link).to_be_visible()  # the part that arrived is yours
    expect(converter.markdown).to_contain_text("Paragraph 0 word")

    converter.cap_input.fill("")
    popup = converter.ask_for_a_new_grant()
    popup.expect_asking(requests=2)
    popup.approve()
    converter.expect_result("long.md", remaining=0)
    expect(converter.parts).to_have_count(2)
    expect(converter.markdown).to_contain_text("Paragraph 239 word")


def test_oversize_file_is_refused_before_anything_is_sent(
    converter: ConverterPage, tmp_path
) -> None:
    big = tmp_path / "huge.csv"  # from disk: the browser reads it, nothing is copied in
    with big.open("wb") as out:
        out.truncate(21 * 1024 * 1024)  # 21 MB
    converter.file_input.set_input_files(big)
    expect(converter.file_info).to_have_text("huge.csv · 21 MB")
    converter.expect_notice("huge.csv is 21 MB, over the 20 MB limit")

    converter.convert_button.click()

    converter.expect_notice("Nothing was sent.")
    assert converter.popups == []
    assert converter.plan_posts == []
    converter.expect_nothing_sent()


def test_an_unreadable_file_is_explained_before_any_popup(converter: ConverterPage) -> None:
    converter.choose_file("broken.json", '{"unterminated": ')
    expect(converter.plan).to_contain_text("broken.json is not valid JSON")

    converter.convert_button.click()

    converter.expect_notice("broken.json is not valid JSON")
    converter.expect_notice("Nothing was sent.")
    assert converter.popups == []
    converter.expect_nothing_sent()

    converter.choose_file("fixed.json", '{"ok": true}')
    converter.expect_plan(requests=1)
    converter.convert_expecting_popup().approve()
    converter.expect_result("fixed.md", remaining=0)


def test_a_script_in_the_uploaded_file_never_runs(converter: ConverterPage) -> None:
    dialogs: list[str] = []
    converter.page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    converter.choose_file("evil.html", HOSTILE_HTML)

    converter.convert_expecting_popup().approve()

    converter.expect_result("evil.md", remaining=0)
    expect(converter.preview.get_by_role("heading", name="Innocent heading")).to_be_visible()
    link = converter.preview.get_by_role("link", name="click me")
    if link.count():
        assert not (link.get_attribute("href") or "").startswith("javascript:")
    assert converter.preview.locator("script, iframe, [onerror]").count() == 0
    assert converter.page.evaluate("typeof window.pwned") == "undefined"
    assert dialogs == []
