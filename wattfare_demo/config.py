"""Settings, read from the environment with embedded defaults.

Every setting is documented in the README ("Configuration"). `load_settings()` returns a
plain dict of Flask config keys so `create_app(config=…)` can override any of them (the
tests do); nothing else in the code reads `os.environ`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

# What a deploy must never run with: the development default of SECRET_KEY.
DEV_SECRET_KEY = "dev-only-not-secret"  # noqa: S105 - the value production refuses

OPENROUTER_URL = "https://openrouter.ai/api/v1"


def database_url(raw: str | None, instance_path: str) -> str:
    """Normalise DATABASE_URL for SQLAlchemy.

    Heroku-style hosts hand out `postgres://…`, which SQLAlchemy 2 refuses; we also pin
    the psycopg 3 driver. Unset: a SQLite file in the instance folder.
    """
    if not raw:
        return f"sqlite:///{os.path.join(instance_path, 'wattfare.db')}"
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix) :]
    return raw


def engine_options(url: str, pool_size: int) -> dict[str, Any]:
    if url.startswith("sqlite"):
        # Writers queue on SQLite's lock instead of failing at once (see also the WAL
        # pragma set on connect in wattfare_demo/__init__.py).
        return {"connect_args": {"timeout": 30}}
    # Small hosted PostgreSQL plans allow ~20 connections in all: keep each worker's
    # pool small and drop connections the platform closed behind our back (sizing:
    # docs/deploy.md). A database that does not answer fails a request or /healthz in
    # seconds instead of hanging it until the platform's router gives up.
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": 2,
        "pool_pre_ping": True,
        "pool_recycle": 300,
        "pool_timeout": 10,
    }
    if "connect_timeout" not in url:
        options["connect_args"] = {"connect_timeout": 5}
    return options


def _bool(value: str | None, default: bool = False) -> bool:
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def _list(value: str | None) -> list[str]:
    return [item.strip().rstrip("/") for item in (value or "").split(",") if item.strip()]


def rate_limit_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """Flask-Limiter's settings and ours; docs/configuration-rate-limits.md explains them.

    On unless RATELIMIT_ENABLED is false or WATTFARE_RATE_LIMITS=off (load tests,
    benchmarks). Counters live in Redis when REDIS_URL is set, so every worker and host
    shares them; otherwise in each process's memory.
    """
    switch = environ.get("WATTFARE_RATE_LIMITS", "on").strip().lower()
    return {
        "RATELIMIT_ENABLED": _bool(environ.get("RATELIMIT_ENABLED"), default=True)
        and switch not in {"off", "0", "false", "no"},
        "RATELIMIT_STORAGE_URI": environ.get("REDIS_URL") or "memory://",
        "RATELIMIT_KEY_PREFIX": "wattfare",
        # A Redis outage must not take the API down with it: count nothing meanwhile.
        "RATELIMIT_SWALLOW_ERRORS": True,
        "WATTFARE_RATE_LIMIT_GRANTS": environ.get("WATTFARE_RATE_LIMIT_GRANTS", "30/minute"),
        "WATTFARE_RATE_LIMIT_CHAT": environ.get("WATTFARE_RATE_LIMIT_CHAT", "600/minute"),
        "WATTFARE_RATE_LIMIT_CONSENT": environ.get("WATTFARE_RATE_LIMIT_CONSENT", "60/minute"),
    }


def load_settings(environ: Mapping[str, str], instance_path: str) -> dict[str, Any]:
    env = environ.get("WATTFARE_ENV", "development").strip().lower()
    db_url = database_url(environ.get("DATABASE_URL"), instance_path)
    upstream_key = environ.get("WATTFARE_UPSTREAM_API_KEY") or environ.get("OPENROUTER_API_KEY")
    upstream_url = environ.get("WATTFARE_UPSTREAM_URL") or (
        OPENROUTER_URL if upstream_key else None
    )
    prices_raw = environ.get("WATTFARE_PRICES")
    return {
        "WATTFARE_ENV": env,
        # Only to derive the development origins (http://localhost:$PORT).
        "PORT": int(environ.get("PORT", "5000")),
        "SECRET_KEY": environ.get("SECRET_KEY") or None,
        "SQLALCHEMY_DATABASE_URI": db_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(db_url, int(environ.get("DB_POOL_SIZE", "5"))),
        "WATTFARE_PUBLISHABLE_KEY": environ.get("WATTFARE_PUBLISHABLE_KEY") or None,
        "WATTFARE_SECRET_KEY": environ.get("WATTFARE_SECRET_KEY") or None,
        "WATTFARE_ALLOWED_ORIGINS": _list(environ.get("WATTFARE_ALLOWED_ORIGINS")),
        "WATTFARE_API_URL": (environ.get("WATTFARE_API_URL") or "").rstrip("/") or None,
        "WATTFARE_MODEL": environ.get("WATTFARE_MODEL", "local/markdown"),
        # The name visitors see in the consent popup for the demo's own app.
        "WATTFARE_APP_NAME": environ.get("WATTFARE_APP_NAME", "File converter demo"),
        "WATTFARE_UPSTREAM_URL": upstream_url.rstrip("/") if upstream_url else None,
        "WATTFARE_UPSTREAM_API_KEY": upstream_key or None,
        "WATTFARE_UPSTREAM_TIMEOUT": float(environ.get("WATTFARE_UPSTREAM_TIMEOUT", "60")),
        "WATTFARE_PRICES": json.loads(prices_raw) if prices_raw else {},
        "WATTFARE_MAX_USD": environ.get("WATTFARE_MAX_USD", "100"),
        "WATTFARE_GRANT_TTL": int(environ.get("WATTFARE_GRANT_TTL", "600")),
        "WATTFARE_HOLD_TTL": int(environ.get("WATTFARE_HOLD_TTL", "900")),
        # engine/sweep.py: each gunicorn worker sweeps this often (0: never).
        "WATTFARE_SWEEP_INTERVAL": float(environ.get("WATTFARE_SWEEP_INTERVAL", "300")),
        # idempotency.py: how long a retry waits for an identical call still running.
        "WATTFARE_RETRY_WAIT": float(environ.get("WATTFARE_RETRY_WAIT", "30")),
        "WATTFARE_AUTO_APPROVE": _bool(environ.get("WATTFARE_AUTO_APPROVE")),
        **rate_limit_settings(environ),
    }
