"""The Wattfare grants demo: a file converter (the demo) and an embedded Wattfare (the engine).

`create_app()` is the one app factory. The demo reaches the engine only through the SDK
and HTTP; this module is the one place that wires both into a single Flask app.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import click
from flask import Flask, Response, request
from sqlalchemy.exc import OperationalError
from werkzeug.middleware.proxy_fix import ProxyFix

from . import demo_limits, dev_keys, health, request_log
from .config import DEV_SECRET_KEY, database_url, load_settings
from .converter.routes import bp as converter_bp
from .db_connections import ping_after_idle
from .engine import ensure_configured_app, init_engine
from .engine.apps import parse_daily_budget
from .extensions import db, migrate
from .origins import normalise_origin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(RuntimeError):
    """A setting is missing or wrong; the message says which and what to set."""


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(
        __name__,
        template_folder=os.path.join(ROOT, "templates"),
        static_folder=os.path.join(ROOT, "static"),
        instance_path=os.path.join(ROOT, "instance"),
    )
    app.config.update(load_settings(os.environ, app.instance_path))
    # The converter takes uploads up to 20 MB (27 MB as base64 in JSON); this only stops
    # absurd bodies early. The engine's /api/v1 keeps its own 2 MB limit (engine/api.py).
    app.config["MAX_CONTENT_LENGTH"] = 28 * 1024 * 1024
    app.config["SQLALCHEMY_RECORD_QUERIES"] = False
    if config:
        app.config.update(config)
    _complete_settings(app)
    # Hosted platforms (Heroku, Render, Dokku, Fly) end TLS at a proxy in front of the
    # app and pass the original scheme, host and client address in X-Forwarded-Proto,
    # -Host and -For. Trusting WATTFARE_PROXY_HOPS of them (1 under the Procfile) makes
    # request.scheme, request.host and url_for(_external=True) say https://the-public-host,
    # and remote_addr the visitor (the entry the nearest trusted proxy appended to
    # X-Forwarded-For), which is what the per-visitor rate limits count. 0 trusts none:
    # with no proxy in front, a client could write these headers itself and pose as
    # anyone. See "Behind the platform's proxy" in docs/deploy.md.
    hops = app.config["WATTFARE_PROXY_HOPS"]
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)
    if app.config["WATTFARE_ENV"] == "production":
        app.after_request(_strict_transport_security)

    db.init_app(app)
    with app.app_context():
        ping_after_idle(db.engine)  # and SQLite's pragmas: db_connections.py
    migrate.init_app(app, db, directory=os.path.join(ROOT, "migrations"))
    request_log.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(converter_bp)  # the demo: pages, /api/wattfare-token, /api/convert
    # The engine last: its rate limits wrap the views registered before it, the demo's
    # routes too (by endpoint name, wattfare_demo/demo_limits.py).
    init_engine(app, extra_limits=demo_limits.LIMITS)
    try:
        ensure_configured_app(app, quiet_without_tables=_loaded_by_a_cli_group())
    except OperationalError as exc:
        # The database is down while a worker boots (a platform restart during database
        # maintenance, say). Serve anyway: /healthz answers 503 until it is back, and
        # requests work again without a restart, instead of the platform crash-looping
        # the process. The keys are checked again on the next start; `flask db upgrade`
        # in the release phase still fails loudly on the same error.
        app.logger.error("Database unreachable at start-up: %s", health.summary(exc))
    return app


def _strict_transport_security(response: Response) -> Response:
    # Only on an answer that came over https (the proxy's X-Forwarded-Proto, trusted with
    # WATTFARE_PROXY_HOPS): browsers ignore the header over http, and it must never make a
    # site that has no certificate unreachable. No includeSubDomains: the app does not
    # know what else lives under its domain.
    if request.is_secure:
        response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
    return response


def _loaded_by_a_cli_group() -> bool:
    """Whether `flask` is loading the app to find one of its commands (`flask db …`,
    `flask wattfare …`), as opposed to serving it (gunicorn, `flask run`)."""
    context = click.get_current_context(silent=True)
    return context is not None and isinstance(context.command, click.Group)


def _complete_settings(app: Flask) -> None:
    """Fill development defaults, or refuse to start a production app that lacks them."""
    cfg = app.config
    _check_common_settings(app)
    if cfg["WATTFARE_ENV"] == "production":
        missing = [
            name
            for name in (
                "SECRET_KEY",
                "WATTFARE_PUBLISHABLE_KEY",
                "WATTFARE_SECRET_KEY",
                "WATTFARE_ALLOWED_ORIGINS",
            )
            if not cfg.get(name)
        ]
        if missing:
            raise ConfigError(
                f"WATTFARE_ENV=production needs {', '.join(missing)}. See README, "
                "'Configuration'; `flask wattfare create-app` prints a key pair."
            )
        if cfg["SQLALCHEMY_DATABASE_URI"] == database_url(None, app.instance_path):
            raise ConfigError(
                "WATTFARE_ENV=production needs DATABASE_URL. Without it every grant and "
                "ledger row would go to a SQLite file on the host's disk, which hosted "
                "platforms wipe at each restart. Add a PostgreSQL database (Heroku: "
                "`heroku addons:create heroku-postgresql:essential-0`; Dokku: "
                "`dokku postgres:link`), which sets DATABASE_URL. To keep SQLite on a disk "
                "that lasts, say so: DATABASE_URL=sqlite:////absolute/path/wattfare.db."
            )
        if cfg.get("WATTFARE_UPSTREAM_URL") and not cfg.get("WATTFARE_DAILY_BUDGET_USD"):
            raise ConfigError(
                "WATTFARE_ENV=production with a paid model provider needs "
                "WATTFARE_DAILY_BUDGET_USD: the most the app's calls may cost in a day, "
                "e.g. 5 (or `off` to run with no ceiling, knowingly)."
            )
        if cfg["SECRET_KEY"] == DEV_SECRET_KEY or len(cfg["SECRET_KEY"]) < 32:
            raise ConfigError(
                "SECRET_KEY is a development value or shorter than 32 characters: set a "
                "random one, e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`."
            )
        # Cookies only over https, not readable from scripts, and not sent on cross-site
        # sub-requests (the consent popup is a top-level window, which Lax allows).
        cfg["SESSION_COOKIE_SECURE"] = True
        cfg["SESSION_COOKIE_HTTPONLY"] = True
        cfg["SESSION_COOKIE_SAMESITE"] = cfg.get("SESSION_COOKIE_SAMESITE") or "Lax"
        # url_for(_external=True) outside a request (CLI, background work): https.
        cfg["PREFERRED_URL_SCHEME"] = "https"
        return
    if not (cfg.get("WATTFARE_PUBLISHABLE_KEY") and cfg.get("WATTFARE_SECRET_KEY")):
        generated = dev_keys.load_or_create(app.instance_path)
        cfg["WATTFARE_PUBLISHABLE_KEY"] = generated["WATTFARE_PUBLISHABLE_KEY"]
        cfg["WATTFARE_SECRET_KEY"] = generated["WATTFARE_SECRET_KEY"]
        cfg["SECRET_KEY"] = cfg.get("SECRET_KEY") or generated["SECRET_KEY"]
    cfg["SECRET_KEY"] = cfg.get("SECRET_KEY") or DEV_SECRET_KEY
    if not cfg["WATTFARE_ALLOWED_ORIGINS"]:
        port = cfg["PORT"]
        cfg["WATTFARE_ALLOWED_ORIGINS"] = [f"http://localhost:{port}", f"http://127.0.0.1:{port}"]


def _check_common_settings(app: Flask) -> None:
    """Settings whose mistakes would otherwise show up only at the first request."""
    cfg = app.config
    origins = []
    for raw in cfg["WATTFARE_ALLOWED_ORIGINS"]:
        origin = normalise_origin(raw)
        if origin is None:
            raise ConfigError(
                f"WATTFARE_ALLOWED_ORIGINS: {raw!r} is not an origin. Give scheme://host[:port] "
                "with no path, e.g. https://convert.example.com."
            )
        origins.append(origin)
    cfg["WATTFARE_ALLOWED_ORIGINS"] = list(dict.fromkeys(origins))
    budget = cfg.get("WATTFARE_DAILY_BUDGET_USD")
    if budget is not None:
        try:
            parse_daily_budget(str(budget))
        except ValueError as exc:
            raise ConfigError(f"WATTFARE_DAILY_BUDGET_USD: {exc}") from None
    hops = cfg["WATTFARE_PROXY_HOPS"]
    if isinstance(hops, bool) or not isinstance(hops, int) or not 0 <= hops <= 5:
        raise ConfigError(
            f"WATTFARE_PROXY_HOPS={hops!r}: give the number of proxies in front of the app "
            "that set X-Forwarded-For, from 0 (none) to 5; 1 on Heroku or Dokku."
        )
