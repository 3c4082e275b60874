"""Page objects for the browser tests.

`ConsentPopup` is the Wattfare consent popup as a visitor sees it. It knows nothing of
the page that opened it, so any opener's tests can use it:

    popup = ConsentPopup.opened_by(page, lambda: convert_button.click())
    popup.expect_asking(requests=3, max_usd="$0.50", model="local/markdown")
    popup.approve()          # waits until the popup has closed itself

`ReceiptPage` is the grant's receipt, as the visitor opens it from its link:

    receipt = ReceiptPage.open(context, url)
    receipt.expect_calls("settled", "cut at cap")   # it refreshes itself: no reload
    receipt.revoke()                                # confirms the dialog
"""

from __future__ import annotations

import re
from collections.abc import Callable

from playwright.sync_api import BrowserContext, Page, expect
from playwright.sync_api import Error as PlaywrightError


class ConsentPopup:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.heading = page.get_by_role("heading", level=1)
        self.approve_button = page.get_by_role("button", name="Approve", exact=True)
        self.deny_button = page.get_by_role("button", name="Deny", exact=True)
        self.close_button = page.get_by_role("button", name="Close", exact=True)
        self.problem = page.get_by_role("alert")
        self.quote = page.locator("#quote")
        self.test_mode_badge = page.locator(".badge")

    @classmethod
    def opened_by(cls, opener: Page, action: Callable[[], object]) -> ConsentPopup:
        """Run `action` (a click) on the opener and return the popup it opens."""
        with opener.expect_popup() as popup:
            action()
        return cls(popup.value)

    # --- what it shows ---------------------------------------------------------------

    def expect_asking(
        self,
        *,
        app_name: str | None = None,
        origin: str | None = None,
        requests: int | None = None,
        max_usd: str | None = None,
        expires: str | None = None,
        model: str | None = None,
        quote: str | re.Pattern[str] | None = None,
    ) -> None:
        """The consent question is on screen (and says what is given, if given)."""
        expect(self.heading).to_contain_text("asks to use AI")
        if app_name is not None:
            expect(self.heading).to_contain_text(app_name)
        if origin is not None:
            expect(self.summary("Requested by")).to_have_text(origin)
        if requests is not None:
            word = "request" if requests == 1 else "requests"
            expect(self.summary("AI requests")).to_have_text(f"{requests} {word}")
        if max_usd is not None:
            expect(self.summary("Spending cap")).to_contain_text(max_usd)
        if expires is not None:
            expect(self.summary("Expires")).to_contain_text(expires)
        if model is not None:
            expect(self.summary("Model")).to_contain_text(model)
        if quote is not None:
            expect(self.quote).to_contain_text(quote)

    def summary(self, term: str):
        """The value shown beside `term` in the summary list."""
        row = self.page.locator(".summary > div").filter(
            has=self.page.get_by_text(term, exact=True)
        )
        return row.locator("dd")

    def expect_error(self, text: str | re.Pattern[str]) -> None:
        """A refusal: the message is shown, Approve is gone, Close is offered."""
        expect(self.problem).to_contain_text(text)
        expect(self.approve_button).to_be_hidden()
        expect(self.close_button).to_be_visible()

    # --- what a visitor does ----------------------------------------------------------

    def approve(self) -> None:
        """Click Approve (it is enabled once the app's session has arrived) and wait
        for the popup to close itself."""
        expect(self.approve_button).to_be_enabled()
        self._until_closed(self.approve_button.click)

    def approve_with_keyboard(self) -> None:
        expect(self.approve_button).to_be_enabled()
        while not self.approve_button.evaluate("b => b === document.activeElement"):
            self.page.keyboard.press("Tab")
        self._until_closed(lambda: self.page.keyboard.press("Enter"))

    def deny(self) -> None:
        self._until_closed(self.deny_button.click)

    def press_escape(self) -> None:
        expect(self.heading).to_be_visible()
        self._until_closed(lambda: self.page.keyboard.press("Escape"))

    def close_window(self) -> None:
        """Close the window as a visitor does: beforeunload and pagehide handlers run."""
        self._until_listening()
        self.page.close(run_before_unload=True)
        self.wait_closed()

    def wait_closed(self) -> None:
        if not self.page.is_closed():
            self.page.wait_for_event("close")

    def _until_listening(self) -> None:
        """Wait until consent.js listens for the visitor. It is a `defer` script: the page
        shows its heading and buttons before it runs, and a click or a key before then
        does nothing. Deferred scripts run before DOMContentLoaded."""
        self.page.wait_for_load_state("domcontentloaded")

    def _until_closed(self, action: Callable[[], object]) -> None:
        """Do `action`, which makes the popup close itself, and wait until it has."""
        self._until_listening()
        with self.page.expect_event("close"):
            try:
                action()
            except PlaywrightError as exc:
                # It may close before Playwright hears back from the key or the click.
                if "closed" not in str(exc):
                    raise


class ReceiptPage:
    """The receipt of a grant (/wattfare/receipt/<capability>), on the engine's origin."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.status = page.locator("[data-receipt-status]")
        self.remaining = page.locator("[data-receipt-remaining]")
        self.spent = page.locator("[data-receipt-spent]")
        self.model = page.locator("[data-receipt-model]")
        self.rows = page.locator("[data-receipt-calls] tbody tr")
        self.outcomes = self.rows.locator("td:last-child")
        self.revoke_button = page.get_by_role("button", name="Revoke", exact=True)

    @classmethod
    def open(cls, context: BrowserContext, url: str) -> ReceiptPage:
        page = context.new_page()
        page.goto(url)
        receipt = cls(page)
        expect(receipt.status).to_be_visible()
        page.wait_for_function("() => window.htmx")  # its polling runs on htmx
        return receipt

    def expect_calls(self, *outcomes: str) -> None:
        """The calls listed, oldest first, by outcome (the page polls itself)."""
        expect(self.outcomes).to_have_text(list(outcomes))

    def revoke(self) -> None:
        """Click Revoke and accept the confirmation; wait for the page to say Revoked."""
        self.page.once("dialog", lambda dialog: dialog.accept())
        with self.page.expect_response(re.compile(r"/wattfare/receipt/revoke$")):
            self.revoke_button.click()
        expect(self.status).to_have_text("Revoked")
