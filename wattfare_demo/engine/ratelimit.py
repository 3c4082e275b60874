"""Per-app rate limits (Flask-Limiter) on grant creation, the consent page and the proxy.

    endpoint                         setting                       default      counted per
    wattfare_api.create_grant        WATTFARE_RATE_LIMIT_GRANTS    30/minute    app (session JWT)
    wattfare_api.chat_completions    WATTFARE_RATE_LIMIT_CHAT      600/minute   app (secret key)
    wattfare_consent.consent         WATTFARE_RATE_LIMIT_CONSENT   60/minute    app + client address

A request is counted against its app only when its credential checks out; anything else
(no key, a wrong key, a forged JWT) is counted against the client address, so nobody can
spend an app's allowance by sending its public app id. The consent page has no secret at
all (its `pk` is public), so it is counted per app *and* client address: one visitor
reloading the popup cannot lock the app's other visitors out.

Over the limit: 429 `rate_limited` (type `rate_limit_error`) in the API's JSON error shape
with `Retry-After`; on the consent page the popup's own error page (which tells the
opener), with the same status and header. docs/configuration-rate-limits.md has the
settings: Redis (REDIS_URL) or memory storage, per-route values, and off switches.

Why not `@limiter.limit` decorators on the routes: a `Limiter` holds one app's storage and
on/off switch, and `create_app` can build several apps in one process (the tests do), so
each app gets its own `Limiter` here and the limits are attached to its view functions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, Response, current_app, render_template, request
from flask_limiter import Limiter, RequestLimit
from limits import parse_many

from ..request_log import note
from .apps import app_for_publishable_key, app_for_secret_key, normalise_origin
from .errors import ApiError, error_response
from .sessions import verify_session

log = logging.getLogger(__name__)

CONSENT_ENDPOINT = "wattfare_consent.consent"


# --- whose allowance a request spends ----------------------------------------------------


def client_address() -> str:
    # remote_addr is the real client when a ProxyFix (or the host) sets it up; without
    # one, everyone behind the same proxy shares this fallback bucket.
    return f"addr:{request.remote_addr or 'unknown'}"


def _bearer() -> str:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def app_of_secret_key() -> str:
    """The app whose secret key authorises the call (one indexed lookup), else the address."""
    app = app_for_secret_key(_bearer())
    if app is not None:
        note(app=app.id)  # for the request log line, 429s included
        return f"app:{app.id}"
    return client_address()


def app_of_session() -> str:
    """The app of a valid session JWT, else the address.

    Verified, not just decoded: the `iss` of an unverified token is anyone's to write.
    The view verifies it again; the app row is then already in the session's identity map.
    """
    token = _bearer()
    if token:
        try:
            session = verify_session(token, current_app.config["SECRET_KEY"])
        except ApiError:
            return client_address()
        note(app=session.app.id)
        return f"app:{session.app.id}"
    return client_address()


def app_and_address_of_publishable_key() -> str:
    app = app_for_publishable_key(request.args.get("pk", ""))
    if app is None:
        return client_address()
    return f"app:{app.id}:{client_address()}"


@dataclass(frozen=True)
class RouteLimit:
    endpoint: str
    setting: str
    key_func: Callable[[], str]


LIMITS = (
    RouteLimit("wattfare_api.create_grant", "WATTFARE_RATE_LIMIT_GRANTS", app_of_session),
    RouteLimit("wattfare_api.chat_completions", "WATTFARE_RATE_LIMIT_CHAT", app_of_secret_key),
    RouteLimit("wattfare_api.responses", "WATTFARE_RATE_LIMIT_CHAT", app_of_secret_key),
    RouteLimit(CONSENT_ENDPOINT, "WATTFARE_RATE_LIMIT_CONSENT", app_and_address_of_publishable_key),
)


# --- the 429 ----------------------------------------------------------------------------


def retry_after(limit: RequestLimit) -> int:
    """Whole seconds until the window that was breached resets (at least 1)."""
    return max(1, math.ceil(limit.reset_at - time.time()))


def too_many_requests(limit: RequestLimit) -> Response:
    wait = retry_after(limit)
    error = ApiError(
        429,
        "rate_limited",
        f"Too many requests: the limit here is {limit.limit}. "
        f"Retry in {wait} second{'s' if wait != 1 else ''}. Nothing was charged.",
        type="rate_limit_error",
        headers={"Retry-After": str(wait)},
    )
    if request.endpoint == CONSENT_ENDPOINT:
        return _consent_page(error)
    return error_response(error)


def _consent_page(error: ApiError) -> Response:
    """The popup's error page, so consent.js tells the opener instead of showing raw JSON."""
    from . import consent  # the popup module renders the page; it does not import us

    raw_origin = request.args.get("origin", "")
    nonce = request.args.get("nonce", "")
    html = render_template(
        "consent/error.html",
        error=error,
        origin=normalise_origin(raw_origin) if raw_origin else None,
        nonce=nonce if consent._NONCE.match(nonce) else None,
    )
    # The consent blueprint's after_request still adds its strict headers (CSP, no framing).
    return Response(html, status=error.status, headers=error.headers, mimetype="text/html")


# --- wiring -----------------------------------------------------------------------------


def init_rate_limits(app: Flask) -> Limiter | None:
    """Give `app` its own Limiter and attach the limits above to its views.

    Call it after the blueprints are registered: it wraps `app.view_functions`. Returns
    None when RATELIMIT_ENABLED is false (then nothing is wrapped and nothing is counted).
    """
    if not app.config.get("RATELIMIT_ENABLED", True):
        return None
    for route in LIMITS:
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
        key_func=client_address,
        on_breach=too_many_requests,
        # RATELIMIT_STORAGE_URI (memory:// or REDIS_URL), RATELIMIT_KEY_PREFIX and
        # RATELIMIT_SWALLOW_ERRORS come from the app config (config.py).
    )
    limiter.init_app(app)
    for route in LIMITS:
        value = app.config.get(route.setting) or "off"
        view = app.view_functions.get(route.endpoint)
        if value == "off" or view is None:
            continue
        app.view_functions[route.endpoint] = limiter.limit(value, key_func=route.key_func)(view)
    return limiter
