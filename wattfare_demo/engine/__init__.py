"""The embedded Wattfare: what the hosted service does, inside this Flask app.

`init_engine(app)` mounts the API (and the consent popup), builds the provider
registry and registers the `flask wattfare` commands. Nothing here imports the demo.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flask import Flask, Response, current_app, request
from sqlalchemy import inspect
from werkzeug.exceptions import HTTPException

from ..config import DEFAULT_APP_NAME
from ..extensions import db
from . import api, consent, openapi, receipts
from .apps import KEEP, KeyConfigError, ensure_app, parse_daily_budget
from .errors import http_error_response
from .providers import ProviderRegistry
from .ratelimit import RouteLimit, init_rate_limits

log = logging.getLogger(__name__)


def init_engine(app: Flask, extra_limits: Sequence[RouteLimit] = ()) -> None:
    """Mount the engine. `extra_limits`: rate limits for the host app's own routes (by
    endpoint name), counted by the same limiter; the app factory passes the demo's."""
    from . import cli

    app.extensions["wattfare_providers"] = ProviderRegistry(app.config)
    app.register_blueprint(api.bp)
    app.register_blueprint(consent.bp)
    app.register_blueprint(receipts.bp)
    app.register_blueprint(openapi.bp)
    app.before_request(_limit_api_body)
    # Unmatched URLs never reach a blueprint's handlers: answer them here, in JSON
    # under /api/v1 and as usual elsewhere (413: a body too large for any route there).
    for code in (404, 405, 413):
        app.register_error_handler(code, _json_under_api)
    cli.register(app)
    # Last: it wraps the views registered above (grants, chat, the consent page), and
    # those of the host app registered before init_engine.
    init_rate_limits(app, extra_limits)


def _limit_api_body() -> None:
    # App-wide with a prefix test, not a blueprint hook: two blueprints (api and
    # openapi) serve /api/v1, and a body is refused the same on both.
    if request.path.startswith(api.bp.url_prefix or "/api/v1"):
        api.limit_body()


def _json_under_api(exc: HTTPException) -> Response | HTTPException:
    prefix = api.bp.url_prefix or "/api/v1"
    if not request.path.startswith(prefix):
        return exc
    if exc.code == 404 and exc.response is None:
        # Name the endpoints there are: a client pointed at the wrong path (a Responses
        # client at a chat-only proxy, a typo in a base URL) sees what to call instead.
        endpoints = sorted(
            f"{method} {rule.rule}"
            for rule in current_app.url_map.iter_rules()
            if rule.rule.startswith(prefix + "/")
            for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}
        )
        exc.description = (
            f"There is no {request.method} {request.path}. The endpoints under {prefix} "
            f"are: {', '.join(endpoints)}."
        )
    return http_error_response(exc)


def ensure_configured_app(app: Flask, *, quiet_without_tables: bool = False) -> None:
    """Create or check the app named by WATTFARE_PUBLISHABLE_KEY / WATTFARE_SECRET_KEY,
    with WATTFARE_ALLOWED_ORIGINS added, and WATTFARE_APP_NAME and
    WATTFARE_DAILY_BUDGET_USD applied when they are set.

    Skipped while the database has no tables yet, so that `flask db upgrade` itself can
    start; with a hint, unless `quiet_without_tables` (a `flask` command is loading the
    app: `flask db upgrade` must not tell its own log to run `flask db upgrade`).
    """
    pk = app.config.get("WATTFARE_PUBLISHABLE_KEY")
    sk = app.config.get("WATTFARE_SECRET_KEY")
    if not (pk and sk):
        return
    budget = app.config.get("WATTFARE_DAILY_BUDGET_USD")
    name = app.config.get("WATTFARE_APP_NAME")
    with app.app_context():
        if not inspect(db.engine).has_table("apps"):
            if not quiet_without_tables:
                log.warning("The database has no tables yet: run `flask db upgrade`.")
            return
        try:
            ensure_app(
                pk,
                sk,
                name=name or DEFAULT_APP_NAME,
                rename=name is not None,
                origins=app.config["WATTFARE_ALLOWED_ORIGINS"],
                flask_secret=app.config["SECRET_KEY"],
                auto_approve=app.config["WATTFARE_AUTO_APPROVE"],
                daily_budget_pusd=KEEP if budget is None else parse_daily_budget(str(budget)),
            )
        finally:
            db.session.remove()


__all__ = ["KeyConfigError", "ensure_configured_app", "init_engine"]
