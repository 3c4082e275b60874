"""Rate limits (Flask-Limiter): per visitor, with each app's limits only as a ceiling.

    endpoint                       setting                         default      counted per
    wattfare_consent.consent       WATTFARE_RATE_LIMIT_CONSENT     30/minute    visitor, app
    wattfare_api.create_grant      WATTFARE_RATE_LIMIT_GRANTS      10/minute    visitor
    wattfare_api.create_grant      WATTFARE_APP_RATE_LIMIT_GRANTS  600/minute   app (created)
    wattfare_api.chat_completions  WATTFARE_APP_RATE_LIMIT_CHAT    6000/minute  app (reserved)
    wattfare_api.responses         WATTFARE_APP_RATE_LIMIT_CHAT    6000/minute  app (reserved)
    + the host app's own routes, passed to `init_rate_limits` (the demo's: demo_limits.py)

A visitor is the client address as the trusted proxies report it (WATTFARE_PROXY_HOPS,
applied by ProxyFix in create_app); IPv6 addresses count per /64, the block one
subscriber gets. One visitor, or a script, reloading the popup, minting sessions or
flooding an endpoint only runs into its own limit: every other visitor keeps theirs.

The per-app ceilings are there for a flood from many addresses at once, and they count
only what did something: a grant created (200), a call that reserved (not a 4xx: a 402,
400 or 401 reserved nothing). So requests refused for a bad token, a bad key or a used-up
grant, which cost nothing, use up nobody's allowance. A credential that does not check
out is counted against the sender's address, never against the app it names: app ids
are public (they are in the publishable key).

Over a limit: 429 `rate_limited` (type `rate_limit_error`) in the API's JSON error shape
with `Retry-After`; on the consent page the popup's own error page (which tells the
opener), with the same status and header; on the host app's routes whatever their
`respond` builds. docs/configuration-rate-limits.md has the settings: Redis (REDIS_URL)
or memory storage, per-route values, and off switches.

Why not `@limiter.limit` decorators on the routes: a `Limiter` holds one app's storage and
on/off switch, and `create_app` can build several apps in one process (the tests do), so
each app gets its own `Limiter` here and the limits are attached to its view functions.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import cast

from flask import Flask, Response, current_app, render_template, request
from flask.typing import RouteCallable
from flask_limiter import Limiter, RequestLimit
from limits import parse_many

from ..origins import normalise_origin
from ..request_log import note
from .apps import app_for_publishable_key, calling_app
from .errors import ApiError, error_response
from .sessions import verify_session

log = logging.getLogger(__name__)

CONSENT_ENDPOINT = "wattfare_consent.consent"
GRANTS_ENDPOINT = "wattfare_api.create_grant"
CHAT_ENDPOINT = "wattfare_api.chat_completions"
RESPONSES_ENDPOINT = "wattfare_api.responses"  # metered like chat, sharing its ceiling


# --- whose allowance a request spends ----------------------------------------------------


def visitor() -> str:
    """The visitor: the client address (as trusted proxies report it), IPv6 per /64.

    remote_addr is the real client only when WATTFARE_PROXY_HOPS matches the proxies in
    front of the app; set too low, every visitor behind the proxy shares one count.
    """
    address = request.remote_addr or ""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"visitor:{address or 'unknown'}"
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return f"visitor:{ip.ipv4_mapped}"
        return f"visitor:{ipaddress.IPv6Network((ip, 64), strict=False)}"
    return f"visitor:{ip}"


def _bearer() -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def app_of_secret_key() -> str:
    """The app whose secret key authorises the call (apps.calling_app: cached), else the sender."""
    app = calling_app(_bearer())
    if app is not None:
        note(app=app.id)  # for the request log line, 429s included
        return f"app:{app.id}"
    return visitor()


def app_of_session() -> str:
    """The app of a valid session JWT, else the sender.

    Verified, not just decoded: the `iss` of an unverified token is anyone's to write.
    The view verifies it again; the app row is then already in the session's identity map.
    """
    token = _bearer()
    if token:
        try:
            session = verify_session(token, current_app.config["SECRET_KEY"])
        except ApiError:
            return visitor()
        note(app=session.app.id)
        return f"app:{session.app.id}"
    return visitor()


def visitor_of_publishable_key() -> str:
    """The visitor, within the app the consent page is for (each app's popup counts
    apart, so one site's visitors never use up another's)."""
    app = app_for_publishable_key(request.args.get("pk", ""))
    if app is None:
        return visitor()
    return f"app:{app.id}:{visitor()}"


# --- what counts -------------------------------------------------------------------------


def grant_created(response: Response) -> bool:
    return response.status_code == 200


def reserved_something(response: Response) -> bool:
    """A call that got past the reservation: a success, or a provider failure (5xx, whose
    hold was released). Every 4xx was refused before anything was reserved (or, for the
    provider's own 429, released at once)."""
    return not 400 <= response.status_code < 500


# --- the limits --------------------------------------------------------------------------

Responder = Callable[[int, str], Response]  # (seconds to wait, message) -> the 429


@dataclass(frozen=True)
class RouteLimit:
    """A limit on one view, by endpoint name.

    `counts` decides after the response whether the request is counted (None: every
    request is); `respond` builds the 429 (None: the API's JSON error); `who` says in the
    message whose allowance it is.
    """

    endpoint: str
    setting: str
    key_func: Callable[[], str]
    who: str = "from your address"
    counts: Callable[[Response], bool] | None = None
    respond: Responder | None = None


def _consent_page(wait: int, message: str) -> Response:
    """The popup's error page, so consent.js tells the opener instead of showing raw JSON."""
    from . import consent  # the popup module renders the page; it does not import us

    error = ApiError(
        429, "rate_limited", message, type="rate_limit_error", headers={"Retry-After": str(wait)}
    )
    raw_origin = request.args.get("origin", "")
    nonce = request.args.get("nonce", "")
    html = render_template(
        "wattfare/consent_error.html",
        error=error,
        origin=normalise_origin(raw_origin) if raw_origin else None,
        nonce=nonce if consent._NONCE.match(nonce) else None,
    )
    # The consent blueprint's after_request still adds its strict headers (CSP, no framing).
    return Response(html, status=429, headers=error.headers, mimetype="text/html")


LIMITS = (
    RouteLimit(
        CONSENT_ENDPOINT,
        "WATTFARE_RATE_LIMIT_CONSENT",
        visitor_of_publishable_key,
        respond=_consent_page,
    ),
    RouteLimit(GRANTS_ENDPOINT, "WATTFARE_RATE_LIMIT_GRANTS", visitor),
    RouteLimit(
        GRANTS_ENDPOINT,
        "WATTFARE_APP_RATE_LIMIT_GRANTS",
        app_of_session,
        who="for this app, from all its visitors together",
        counts=grant_created,
    ),
    RouteLimit(
        CHAT_ENDPOINT,
        "WATTFARE_APP_RATE_LIMIT_CHAT",
        app_of_secret_key,
        who="for this app",
        counts=reserved_something,
    ),
    RouteLimit(
        RESPONSES_ENDPOINT,
        "WATTFARE_APP_RATE_LIMIT_CHAT",
        app_of_secret_key,
        who="for this app",
        counts=reserved_something,
    ),
)


# --- the 429 ----------------------------------------------------------------------------


def retry_after(limit: RequestLimit) -> int:
    """Whole seconds until the window that was breached resets (at least 1)."""
    return max(1, math.ceil(limit.reset_at - time.time()))


def too_many_requests(route: RouteLimit, limit: RequestLimit) -> Response:
    wait = retry_after(limit)
    message = (
        f"Too many requests {route.who}: the limit here is {limit.limit}. "
        f"Retry in {wait} second{'s' if wait != 1 else ''}. Nothing was charged."
    )
    if route.respond is not None:
        return route.respond(wait, message)
    return error_response(
        ApiError(
            429,
            "rate_limited",
            message,
            type="rate_limit_error",
            headers={"Retry-After": str(wait)},
        )
    )


# --- wiring -----------------------------------------------------------------------------


def init_rate_limits(app: Flask, extra: Sequence[RouteLimit] = ()) -> Limiter | None:
    """Give `app` its own Limiter and attach LIMITS and `extra` to its views.

    Call it after the blueprints are registered: it wraps `app.view_functions`. A limit
    whose endpoint the app does not have is skipped. Returns None when RATELIMIT_ENABLED
    is false (then nothing is wrapped and nothing is counted).
    """
    if not app.config.get("RATELIMIT_ENABLED", True):
        return None
    routes = (*LIMITS, *extra)
    for route in routes:
        value = app.config.get(route.setting) or ""
        if value and value != "off":
            try:
                parse_many(value)
            except ValueError:
                raise ValueError(
                    f'{route.setting}={value!r} is not a rate limit: use e.g. "30/minute", '
                    '"5/second;100/hour", or "off".'
                ) from None
    limiter = Limiter(
        key_func=visitor,
        # RATELIMIT_STORAGE_URI (memory:// or REDIS_URL), RATELIMIT_KEY_PREFIX,
        # RATELIMIT_SWALLOW_ERRORS and RATELIMIT_HEADERS_ENABLED come from the app config.
    )
    limiter.init_app(app)
    for route in routes:
        value = app.config.get(route.setting) or "off"
        view = app.view_functions.get(route.endpoint)
        if value == "off" or view is None:
            continue
        # Several limits on one view stack: Flask-Limiter checks them all, once.
        limited = limiter.limit(
            value,
            key_func=route.key_func,
            deduct_when=route.counts,
            on_breach=partial(too_many_requests, route),
        )(view)
        # Flask-Limiter types its wrapper as sync or async alike; it wraps a sync view.
        app.view_functions[route.endpoint] = cast("RouteCallable", limited)
    return limiter
