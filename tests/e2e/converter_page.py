"""`ConverterPage`: the demo's converter page (/) as a visitor uses it.

    converter = ConverterPage.open(page, live_server.url)
    converter.choose_file("report.html", HTML)     # waits for "This file needs N AI requests"
    popup = converter.convert_expecting_popup()    # a tests.e2e.pages.ConsentPopup
    popup.approve()
    converter.expect_result("report.md", remaining=0)   # the stream's `done` has arrived

It also records what the page did behind the visitor's back (popups opened, POSTs to
/api/convert and /api/convert/plan), so tests can say "nothing was sent" without waiting
for anything.
"""

from __future__ import annotations

import re

from playwright.sync_api import Page, Request, expect

from tests.e2e.pages import ConsentPopup

MIME = {
    ".html": "text/html",
    ".csv": "text/csv",
    ".md": "text/markdown",
    ".txt": "text/plain",
    ".json": "application/json",
    ".pdf": "application/pdf",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
}


class ConverterPage:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.file_input = page.get_by_label("Choose a file")
        self.file_info = page.locator("[data-file-info]")
        self.extra_select = page.get_by_label("Extra requests for your next files")
        self.plan = page.locator("#plan")
        self.cap_input = page.get_by_label("Dollar cap")
        self.convert_button = page.get_by_role("button", name="Convert with AI")
        self.notice = page.locator("[data-notice]")
        self.grant_status = page.locator("[data-grant-status]")
        self.receipt_link = self.grant_status.get_by_role("link", name="See its receipt")
        self.done_receipt_link = page.locator("[data-done]").get_by_role("link", name="Receipt")
        self.stop_button = page.get_by_role("button", name="Stop using my grant")
        self.how_it_works = page.get_by_role("heading", name="How it works")
        self.result_title = page.locator("#result-title")
        self.progress = page.locator("#result .progress")
        self.parts = page.locator("[data-preview] .part")
        self.done = page.locator("[data-done]")
        self.preview = page.locator("[data-preview]")
        self.markdown = page.locator("#markdown-source")
        self.remaining = page.locator("[data-remaining]")
        self.alert = page.locator("#result").get_by_role("alert")
        self.new_grant_button = page.get_by_role("button", name="Approve a new grant and convert")
        self.copy_button = page.get_by_role("button", name="Copy Markdown")
        self.download_link = page.get_by_role("link", name="Download .md")
        self.popups: list[Page] = []
        self.convert_posts: list[Request] = []
        self.plan_posts: list[Request] = []
        page.on("popup", lambda popup: self.popups.append(popup))
        page.on("request", self._record)

    @classmethod
    def open(cls, page: Page, base_url: str) -> ConverterPage:
        converter = cls(page)
        page.goto(base_url + "/")
        expect(converter.convert_button).to_be_enabled()
        # The page's scripts are deferred: wait until htmx has set the form up.
        page.wait_for_function("() => window.htmx && window.Wattfare")
        return converter

    def _record(self, request: Request) -> None:
        if request.method == "POST" and request.url.endswith("/api/convert"):
            self.convert_posts.append(request)
        elif request.method == "POST" and request.url.endswith("/api/convert/plan"):
            self.plan_posts.append(request)

    # --- what a visitor does ------------------------------------------------------------

    def choose_file(
        self, name: str, content: str | bytes, mime: str | None = None, *, planned: bool = True
    ) -> None:
        """Pick a file; with `planned`, wait for the page to say what it needs (or can't)."""
        data = content.encode() if isinstance(content, str) else content
        extension = name[name.rfind(".") :] if "." in name else ""
        self.file_input.set_input_files(
            {"name": name, "mimeType": mime or MIME.get(extension, "text/plain"), "buffer": data}
        )
        expect(self.file_info).to_contain_text(name)
        if planned:
            expect(self.plan.locator("[data-plan]")).to_be_visible()

    def expect_plan(self, requests: int) -> None:
        word = "request" if requests == 1 else "requests"
        expect(self.plan).to_contain_text(f"This file needs {requests} AI {word}")

    def approve_extra(self, extra: int, max_usd: str | None = None) -> None:
        """Ask for `extra` requests beyond what the file needs (and a dollar cap)."""
        self.extra_select.select_option(str(extra))
        if max_usd is not None:
            self.cap_input.fill(max_usd)

    def stop_grant(self) -> None:
        """ "Stop using my grant": the page asks the demo's server to revoke it."""
        with self.page.expect_response(re.compile(r"/api/grant/revoke$")):
            self.stop_button.click()

    def receipt_url(self, *, held: bool = True) -> str:
        """The receipt link beside the held grant's requests left (`held`), or beside
        "N requests remaining" in the last conversion's footer."""
        link = self.receipt_link if held else self.done_receipt_link
        expect(link).to_be_visible()
        href = link.get_attribute("href")
        assert href is not None
        return href

    def convert_expecting_popup(self) -> ConsentPopup:
        return ConsentPopup.opened_by(self.page, self.convert_button.click)

    def ask_for_a_new_grant(self) -> ConsentPopup:
        """The "Approve a new grant and convert" button a used-up grant offers."""
        return ConsentPopup.opened_by(self.page, self.new_grant_button.click)

    def convert_with_held_grant(self) -> None:
        """Convert on the grant the page already holds: a POST, and no popup."""
        popups = len(self.popups)
        with self.page.expect_response(re.compile(r"/api/convert$")):
            self.convert_button.click()
        assert len(self.popups) == popups, "the page asked for a new grant"

    def convert_with_keyboard(self) -> None:
        self.convert_button.focus()
        with self.page.expect_response(re.compile(r"/api/convert$")):
            self.page.keyboard.press("Enter")

    # --- what a visitor sees ------------------------------------------------------------

    def expect_result(self, download_name: str, remaining: int) -> None:
        expect(self.result_title).to_have_text(download_name)
        word = "request" if remaining == 1 else "requests"
        expect(self.remaining).to_have_text(f"{remaining} {word} remaining")
        expect(self.notice).to_be_empty()
        expect(self.convert_button).to_be_enabled()

    def expect_notice(self, text: str | re.Pattern[str]) -> None:
        expect(self.notice).to_contain_text(text)

    def expect_nothing_sent(self) -> None:
        assert self.convert_posts == [], "the form was posted"
