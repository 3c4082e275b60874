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
DEFAULT_APP_NAME = "File converter demo"

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
        # Writers queue on SQLite's lock instead of failing at once (see also the
        # pragmas set on connect in wattfare_demo/db_connections.py).
        return {"connect_args": {"timeout": 30}}
    # Small hosted PostgreSQL plans allow ~20 connections in all: keep each worker's
    # pool small and drop connections the platform closed behind our back: tested
    # before use once they sat idle a second (db_connections.py; pool_pre_ping would
    # ping at every checkout, twice a call). Sizing: docs/deploy.md. A database that
    # does not answer fails a request or /healthz in seconds instead of hanging it until
    # the platform's router gives up.
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": 2,
        "pool_pre_ping": False,
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
    return [item.strip() for item in (value or "").split(",") if item.strip()]


def _int(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a whole number.") from None


# The rate limits, per visitor (the client address, through WATTFARE_PROXY_HOPS trusted
# proxies) unless the name says APP: then per app, a much higher ceiling that only counts
# what did something. docs/configuration-rate-limits.md explains each one.
RATE_LIMIT_DEFAULTS = {
    # The demo's own routes.
    "CONVERTER_RATE_LIMIT_TOKEN": "10/minute",  # POST /api/wattfare-token
    "CONVERTER_RATE_LIMIT_CONVERT": "30/minute",  # POST /api/convert
    "CONVERTER_RATE_LIMIT_PLAN": "60/minute",  # POST /api/convert/plan
    # The engine's.
    "WATTFARE_RATE_LIMIT_CONSENT": "30/minute",  # GET /wattfare/consent (visitor and app)
    "WATTFARE_RATE_LIMIT_GRANTS": "10/minute",  # POST /api/v1/grants
    "WATTFARE_APP_RATE_LIMIT_GRANTS": "600/minute",  # grants created, per app
    "WATTFARE_APP_RATE_LIMIT_CHAT": "6000/minute",  # calls that reserved, per app
}


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
        # Flask-Limiter's X-RateLimit-* headers would tell a visitor the app-wide count.
        "RATELIMIT_HEADERS_ENABLED": False,
        **{name: environ.get(name) or default for name, default in RATE_LIMIT_DEFAULTS.items()},
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
        # Normalised (and refused if they are not origins) in create_app.
        "WATTFARE_ALLOWED_ORIGINS": _list(environ.get("WATTFARE_ALLOWED_ORIGINS")),
        "WATTFARE_API_URL": (environ.get("WATTFARE_API_URL") or "").rstrip("/") or None,
        "WATTFARE_MODEL": environ.get("WATTFARE_MODEL", "local/markdown"),
        # The name visitors see in the consent popup for the demo's own app. Set, it is
        # applied at every start; unset, DEFAULT_APP_NAME names the app when it is created.
        "WATTFARE_APP_NAME": (environ.get("WATTFARE_APP_NAME") or "").strip() or None,
        "WATTFARE_UPSTREAM_URL": upstream_url.rstrip("/") if upstream_url else None,
        "WATTFARE_UPSTREAM_API_KEY": upstream_key or None,
        "WATTFARE_UPSTREAM_TIMEOUT": float(environ.get("WATTFARE_UPSTREAM_TIMEOUT", "60")),
        "WATTFARE_PRICES": json.loads(prices_raw) if prices_raw else {},
        "WATTFARE_MAX_USD": environ.get("WATTFARE_MAX_USD", "100"),
        # The demo app's ceiling on what its calls cost over a rolling day: dollars, or
        # "off". Unset: whatever the database holds (no ceiling for a new app). Checked
        # and applied in create_app; other apps: `flask wattfare set-budget`.
        "WATTFARE_DAILY_BUDGET_USD": (environ.get("WATTFARE_DAILY_BUDGET_USD") or "").strip()
        or None,
        # How many proxies in front of the app append to X-Forwarded-For (and set
        # X-Forwarded-Proto/-Host): 0 trusts none of these headers (a client could forge
        # them), 1 is Heroku's router or Dokku's nginx (the Procfile's default).
        "WATTFARE_PROXY_HOPS": _int(environ, "WATTFARE_PROXY_HOPS", 0),
        "WATTFARE_GRANT_TTL": int(environ.get("WATTFARE_GRANT_TTL", "600")),
        "WATTFARE_HOLD_TTL": int(environ.get("WATTFARE_HOLD_TTL", "900")),
        # engine/sweep.py: each gunicorn worker sweeps this often (0: never).
        "WATTFARE_SWEEP_INTERVAL": float(environ.get("WATTFARE_SWEEP_INTERVAL", "300")),
        # idempotency.py: how long a retry waits for an identical call still running.
        "WATTFARE_RETRY_WAIT": float(environ.get("WATTFARE_RETRY_WAIT", "30")),
        "WATTFARE_AUTO_APPROVE": _bool(environ.get("WATTFARE_AUTO_APPROVE")),
        **rate_limit_settings(environ),
        **converter_settings(environ),
    }


def converter_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    """The demo converter's limits (README, "Configuration"; docs/converter.md)."""
    return {
        # The most AI requests one file may need, and one session may ask for (the
        # engine's grant request is bounded by it too: see POST /api/wattfare-token).
        "CONVERTER_MAX_REQUESTS": int(environ.get("CONVERTER_MAX_REQUESTS", "50")),
        # Characters of extracted Markdown per model call (one request each).
        "CONVERTER_CHUNK_CHARS": int(environ.get("CONVERTER_CHUNK_CHARS", "24000")),
        # The extraction cage: CPU seconds, address space, wall-clock seconds and how
        # many extractions run at once per web process.
        "CONVERTER_EXTRACT_CPU_SECONDS": int(environ.get("CONVERTER_EXTRACT_CPU_SECONDS", "20")),
        "CONVERTER_EXTRACT_MEMORY_MB": int(environ.get("CONVERTER_EXTRACT_MEMORY_MB", "1024")),
        "CONVERTER_EXTRACT_TIMEOUT": float(environ.get("CONVERTER_EXTRACT_TIMEOUT", "25")),
        "CONVERTER_EXTRACT_CONCURRENCY": int(environ.get("CONVERTER_EXTRACT_CONCURRENCY", "2")),
    }
