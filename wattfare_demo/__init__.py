"""The Wattfare grants demo: a file converter (the demo) and an embedded Wattfare (the engine).

`create_app()` is the one app factory. The demo reaches the engine only through the SDK
and HTTP; this module is the one place that wires both into a single Flask app.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from typing import Any

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from werkzeug.middleware.proxy_fix import ProxyFix

from . import dev_keys, health, request_log
from .config import DEV_SECRET_KEY, load_settings
from .converter.routes import bp as converter_bp
from .engine import ensure_configured_app, init_engine
from .extensions import db, migrate

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
    # Uploads are checked (2 MB) by the converter; this only stops absurd bodies early.
    app.config["MAX_CONTENT_LENGTH"] = 4 * 1024 * 1024
    app.config["SQLALCHEMY_RECORD_QUERIES"] = False
    if config:
        app.config.update(config)
    _complete_settings(app)
    # Hosted platforms (Heroku, Render, Dokku, Fly) end TLS at a proxy in front of the
    # app and pass the original scheme, host and client address in X-Forwarded-Proto,
    # -Host and -For. Trusting one hop makes request.scheme, request.host and
    # url_for(_external=True) say https://the-public-host, and remote_addr the client
    # (the last X-Forwarded-For entry, the one the proxy appended). Behind no proxy, or
    # two, change the counts: see "Behind the platform's proxy" in docs/deploy.md.
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)

    db.init_app(app)
    migrate.init_app(app, db, directory=os.path.join(ROOT, "migrations"))
    request_log.init_app(app)
    app.register_blueprint(health.bp)
    init_engine(app)
    app.register_blueprint(converter_bp)  # the demo: pages, /api/wattfare-token, /api/convert
    try:
        ensure_configured_app(app)
    except OperationalError as exc:
        # The database is down while a worker boots (a platform restart during database
        # maintenance, say). Serve anyway: /healthz answers 503 until it is back, and
        # requests work again without a restart, instead of the platform crash-looping
        # the process. The keys are checked again on the next start; `flask db upgrade`
        # in the release phase still fails loudly on the same error.
        app.logger.error("Database unreachable at start-up: %s", health.summary(exc))
    return app


def _complete_settings(app: Flask) -> None:
    """Fill development defaults, or refuse to start a production app that lacks them."""
    cfg = app.config
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


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; busy waiting is set by the driver's
    # timeout (config.py). Foreign keys are off by default in SQLite. secure_delete
    # overwrites deleted and replaced content with zeros in the pages it writes anyway,
    # so what the sweep forgets is gone from the table's pages too. FAST, not ON: ON also
    # rewrites whole freed pages (more than doubling a call's writes, bench/), and what
    # could be left on one is only ever sealed (engine/sealing.py).
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA secure_delete=FAST")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()
