"""The receipt: the visitor's own page for a grant, on the engine's origin.

    GET  /wattfare/receipt/<capability>    the page; its `_receipt.html` fragment for htmx
    POST /wattfare/receipt/revoke          form field `receipt=<capability>`: revoke

Grant creation returns `receiptUrl` (api.py), holding the grant's receipt capability
(tokens.py: `wfr_…`, 178 random bits, stored only as SHA-256 in grants.receipt_hash).
It can view and revoke the grant, never spend it: it is no grant token, and a grant
token opens no receipt. The page lists each call of the grant (time, model, tokens in
and out, cost, outcome), what is left of its requests and cap, and when it expires; it
polls itself (htmx, every POLL_SECONDS) while the grant is active or a call runs.

The capability is in the URL's path, so the page says `no-referrer` (no link on it can
leak it), `no-store`, `noindex`, and cannot be framed; the request log masks it
(request_log.py). Revoke is a POST whose body carries the capability and whose Origin
must be this engine's own: another site can neither read the capability nor forge the
request. Without JavaScript the form still works (303 back to the page).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from flask import Blueprint, Response, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ..extensions import db
from .clock import db_now
from .consent import duration, money
from .grants import grant_status
from .models import App, Grant, Usage
from .pricing import pusd_to_usd
from .private_pages import private_page
from .revocation import receipt_hash, revoke_by_receipt

bp = Blueprint("wattfare_receipts", __name__, url_prefix="/wattfare")

POLL_SECONDS = 1
# A grant has at most MAX_GRANT_REQUESTS settled calls, but every refused-upstream call
# leaves a released row too: the page shows the latest ones, and says so.
MAX_ROWS = 200

# Like the consent page's, except that htmx (self-hosted) swaps fragments in, which
# Trusted Types with no policy would forbid, and the Revoke form posts to this origin.
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


@bp.after_request
def _security_headers(response: Response) -> Response:
    private_page(response, CSP)
    response.vary.add("HX-Request")  # one URL serves the page and its fragment
    return response


# --- what the page shows ------------------------------------------------------------------

OUTCOMES = {
    # (Usage.status, Usage.error) → what the visitor reads; error None matches any other.
    ("ok", "cut_at_cap"): ("cut at cap", "The dollar cap ended it; what it wrote is charged."),
    ("ok", "revoked"): ("stopped: revoked", "Revoked while it ran; what it wrote is charged."),
    ("ok", None): ("settled", "Charged what it used."),
    ("failed", None): ("released", "The model provider failed: nothing was charged."),
    ("expired", None): ("released", "It never finished: its hold was given back."),
    ("pending", None): ("running", "Running now: at most its hold can be charged."),
}


@dataclass(frozen=True)
class Call:
    started_at: int
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost: str  # dollars, every digit
    outcome: str
    explanation: str
    running: bool

    @property
    def started_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.started_at, dt.UTC).isoformat()

    @property
    def started_label(self) -> str:
        return dt.datetime.fromtimestamp(self.started_at, dt.UTC).strftime("%H:%M:%S UTC")


@dataclass(frozen=True)
class Receipt:
    capability: str
    app_name: str
    origin: str
    model: str | None
    status: str  # grants.grant_status: active | exhausted | over_cap | expired | revoked
    requests: int
    remaining: int  # requests left, calls in flight counted as spent
    spent: str
    cap: str | None
    cap_left: str | None
    expires_at: int
    expires_in: str | None  # None once expired
    calls: list[Call]
    more_calls: bool  # older calls than those listed exist

    @property
    def live(self) -> bool:
        """Whether the page should keep refreshing: something can still change."""
        return self.status == "active" or any(call.running for call in self.calls)

    @property
    def expires_iso(self) -> str:
        return dt.datetime.fromtimestamp(self.expires_at, dt.UTC).isoformat()

    @property
    def expires_label(self) -> str:
        return dt.datetime.fromtimestamp(self.expires_at, dt.UTC).strftime("%H:%M UTC")


def _dollars(pusd: int) -> str:
    return money(pusd_to_usd(max(pusd, 0)))


def _outcome(status: str, error: str | None) -> tuple[str, str]:
    return OUTCOMES.get((status, error)) or OUTCOMES[(status, None)]


def read_receipt(capability: str) -> Receipt | None:
    """The receipt a capability opens, or None (unknown, malformed, or a grant token)."""
    hashed = receipt_hash(capability)
    if hashed is None:
        return None
    row = db.session.execute(
        select(Grant, App.name, db_now()).join(App).where(Grant.receipt_hash == hashed)
    ).one_or_none()
    if row is None:
        return None
    grant, app_name, now = row
    usage = db.session.scalars(
        select(Usage)
        .where(Usage.grant_id == grant.id)
        .order_by(Usage.id.desc())
        .limit(MAX_ROWS + 1)
    ).all()
    calls = [
        Call(
            started_at=use.started_at,
            model=use.model,
            prompt_tokens=use.prompt_tokens,
            completion_tokens=use.completion_tokens,
            cost=_dollars(use.cost_pusd),
            outcome=outcome,
            explanation=explanation,
            running=use.status == "pending",
        )
        for use in reversed(usage[:MAX_ROWS])
        for outcome, explanation in [_outcome(use.status, use.error)]
    ]
    cap = grant.max_pusd
    left = None if cap is None else cap - grant.spent_pusd - grant.held_pusd
    return Receipt(
        capability=capability,
        app_name=app_name,
        origin=grant.origin,
        model=grant.model,
        status=grant_status(grant, now),
        requests=grant.requests,
        remaining=max(grant.requests - grant.used - grant.reserved, 0),
        spent=_dollars(grant.spent_pusd),
        cap=None if cap is None else _dollars(cap),
        cap_left=None if left is None else _dollars(left),
        expires_at=grant.expires_at,
        expires_in=duration(grant.expires_at - now) if grant.expires_at > now else None,
        calls=calls,
        more_calls=len(usage) > MAX_ROWS,
    )


# --- the routes -------------------------------------------------------------------------------


def _is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def _render(receipt: Receipt, status: int = 200, *, notice: str | None = None) -> Response:
    template = "wattfare/_receipt.html" if _is_htmx() else "wattfare/receipt.html"
    html = render_template(template, r=receipt, poll_seconds=POLL_SECONDS, notice=notice)
    return Response(html, status=status, mimetype="text/html")


def _not_found() -> Response:
    html = render_template(
        "wattfare/receipt_error.html",
        title="This receipt link does not open anything",
        message=(
            "The link is incomplete, mistyped, or not a Wattfare receipt link. Check that "
            "you copied all of it. Nothing was changed."
        ),
    )
    return Response(html, status=404, mimetype="text/html")


@bp.get("/receipt/<capability>")
def receipt(capability: str) -> Response:
    found = read_receipt(capability)
    return _not_found() if found is None else _render(found)


def _same_origin() -> bool:
    """The POST came from a page on this engine's origin. Browsers send Origin on every
    POST; one without it (or from elsewhere) is refused."""
    return request.headers.get("Origin") == request.host_url.rstrip("/")


@bp.post("/receipt/revoke")
def revoke() -> ResponseReturnValue:
    if not _same_origin():
        html = render_template(
            "wattfare/receipt_error.html",
            title="Revoke must come from the receipt page",
            message=(
                "This request did not come from the receipt page on this site, so nothing "
                "was revoked. Open your receipt link and use its Revoke button."
            ),
        )
        return Response(html, status=403, mimetype="text/html")
    capability = request.form.get("receipt", "")
    if not revoke_by_receipt(capability):
        return _not_found()
    found = read_receipt(capability)
    if found is None:  # pragma: no cover - the grant was deleted in between
        return _not_found()
    if not _is_htmx():
        # A plain form post (no JavaScript): back to the page, which now says revoked.
        return redirect(url_for(".receipt", capability=capability), 303)
    return _render(found, notice="Revoked: no further calls can be made with this grant.")


__all__ = ["POLL_SECONDS", "Receipt", "bp", "read_receipt"]
