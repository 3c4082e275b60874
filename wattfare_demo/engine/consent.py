"""The consent popup: the page a visitor sees when an app asks for a grant.

    GET /wattfare/consent?pk=pk_test_…&origin=https://app.example&requests=3&maxUsd=0.5
                         &model=openai/gpt-4o-mini&nonce=…

`static/wattfare.js` opens this URL in a popup. The query string is the *question* (which
app, for which page, how much, on which model: validation.GRANT_REQUEST_FIELDS): it is
public, so it is checked here and rendered on the server, with the quote (quote.py). The
*credential* (the app's session token) never travels in a URL: the opener sends it by
postMessage once the engine's `static/consent.js` says it is ready, and Approve sends it
to POST /api/v1/grants, which checks it again. docs/browser-client.md has the protocol.

Anything wrong with the question (unknown key, an origin the app has not allowed, a bad
count or cap) renders a readable error page; consent.js posts the error, never a token,
to the opener.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from flask import Blueprint, Response, current_app, render_template, request

from ..origins import normalise_origin
from .apps import app_for_publishable_key, origin_allowed
from .errors import ApiError, invalid_request
from .metering import registry
from .pricing import pusd_to_usd
from .private_pages import private_page
from .quote import Quote, quote, round_up_to_cent
from .validation import MAX_GRANT_REQUESTS, parse_grant_request

# The engine's pages bring their own templates (templates/wattfare/) and their own CSS
# and JS (static/, served at /wattfare/static/): nothing of the host app's. The receipt
# pages (receipts.py) use the same folders.
bp = Blueprint(
    "wattfare_consent",
    __name__,
    url_prefix="/wattfare",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

_NONCE = re.compile(r"^[A-Za-z0-9_-]{16,128}$")

# Only our own files, no inline script or style, no plugins, no forms, no framing.
# Trusted Types with no policy make every DOM-XSS sink (innerHTML, …) throw.
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)


@bp.after_request
def _security_headers(response: Response) -> Response:
    private_page(response, CSP)
    # Said explicitly so no site-wide default replaces it: a COOP of same-origin (or
    # same-origin-allow-popups here, on a page the app opened) would cut this window
    # off from its opener, and the answer could never be delivered.
    response.headers["Cross-Origin-Opener-Policy"] = "unsafe-none"
    return response


@dataclass(frozen=True)
class Question:
    app_name: str
    app_id: str
    test_mode: bool
    auto_approve: bool
    origin: str
    requests: int
    max_usd: Decimal | None
    model: str | None  # None: any priced model
    quote: Quote

    @property
    def grant_body(self) -> str:
        """The exact JSON the popup will POST: built here, so no float ever touches it."""
        fields = [f'"requests": {self.requests}']
        if self.max_usd is not None:
            fields.append(f'"maxUsd": {format(self.max_usd, "f")}')
        if self.model is not None:
            fields.append(f'"model": {json.dumps(self.model)}')
        return "{" + ", ".join(fields) + "}"

    @property
    def quote_text(self) -> str:
        """The quote in words: "At most $0.04 for 3 requests (openai/gpt-4o-mini)"."""
        q = self.quote
        calls = f"{q.requests} request{'' if q.requests == 1 else 's'}"
        on = f" ({q.model})" if q.model else ""
        if q.most_pusd is None:
            return (
                f"No upper bound worth showing: {calls} on any model the app picks, and "
                "prices differ a lot between models. Set a dollar cap to bound it."
            )
        if q.capped:
            return f"At most {money(pusd_to_usd(q.most_pusd))} for {calls}{on}: the cap."
        shown = money(pusd_to_usd(round_up_to_cent(q.most_pusd)))
        return f"At most {shown} for {calls}{on}, even if every call is the largest allowed."


class ConsentError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param


def _count(raw: str | None) -> int:
    if raw is None or raw == "":
        raise invalid_request("requests", "requests is required: how many AI calls to allow.")
    if not re.fullmatch(r"[0-9]{1,9}", raw):
        raise invalid_request(
            "requests", f"requests must be a whole number from 1 to {MAX_GRANT_REQUESTS}."
        )
    return int(raw)


def _dollars(raw: str | None) -> Decimal | None:
    if raw is None or raw == "":
        return None
    try:
        return Decimal(raw)
    except InvalidOperation:
        raise invalid_request("maxUsd", "maxUsd must be a number of dollars, or omitted.") from None


def read_question(args: dict[str, str], origin: str) -> Question:
    """The app and the amounts named by the query string, or ConsentError saying why not."""
    app = app_for_publishable_key(args.get("pk", ""))
    if app is None:
        raise ConsentError(
            404,
            "unknown_publishable_key",
            "This page was opened with a publishable key that no Wattfare app has. "
            "The site that sent you here needs to check its configuration.",
        )
    if not origin_allowed(app, origin):
        raise ConsentError(
            403,
            "origin_not_allowed",
            f"{origin} is not allowed to ask for grants for {app.name!r}, so nothing was "
            "approved. If this is your app, add the origin with `flask wattfare add-origin`.",
        )
    try:
        ask = parse_grant_request(
            {
                "requests": _count(args.get("requests")),
                "maxUsd": _dollars(args.get("maxUsd")),
                "model": args.get("model") or None,
            },
            Decimal(current_app.config["WATTFARE_MAX_USD"]),
        )
        price = None if ask.model is None else registry().route(ask.model).price
    except ApiError as exc:
        raise ConsentError(400, exc.code, exc.message, exc.param) from None
    max_usd = _dollars(args.get("maxUsd")) if ask.max_pusd is not None else None
    return Question(
        app_name=app.name,
        app_id=app.id,
        test_mode=app.mode == "test",
        # Belt and braces: the engine never stores auto_approve on a live app either.
        auto_approve=app.auto_approve and app.mode == "test",
        origin=origin,
        requests=ask.requests,
        max_usd=max_usd,
        model=ask.model,
        quote=quote(ask.requests, ask.max_pusd, ask.model, price),
    )


def money(amount: Decimal) -> str:
    """$0.50, $12.00, $0.005: cents when they say it all, every digit otherwise."""
    if amount == amount.quantize(Decimal("0.01")):
        return f"${amount:,.2f}"
    return f"${format(amount.normalize(), 'f')}"


def duration(seconds: int) -> str:
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} seconds"


@bp.get("/consent")
def consent() -> tuple[str, int]:
    args = request.args.to_dict()
    raw_origin = args.get("origin", "")
    origin = normalise_origin(raw_origin) if raw_origin else None
    nonce = args.get("nonce", "")
    if origin is None or not _NONCE.match(nonce):
        # Without an origin and a nonce there is nobody we could answer: just say so.
        error = ConsentError(
            400,
            "invalid_request",
            "This page must be opened by an app's “Approve AI requests” button, with a "
            "valid origin and nonce. Close this window and try again from the app.",
            "origin" if origin is None else "nonce",
        )
        return render_template(
            "wattfare/consent_error.html", error=error, origin=None, nonce=None
        ), 400
    try:
        question = read_question(args, origin)
    except ConsentError as error:
        return render_template(
            "wattfare/consent_error.html", error=error, origin=origin, nonce=nonce
        ), error.status
    return render_template(
        "wattfare/consent.html",
        q=question,
        nonce=nonce,
        max_usd=money(question.max_usd) if question.max_usd is not None else None,
        expires_in=duration(current_app.config["WATTFARE_GRANT_TTL"]),
    ), 200
