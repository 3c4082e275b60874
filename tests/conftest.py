"""Fixtures: a fresh database per test (SQLite file; PostgreSQL too with TEST_DATABASE_URL).

Engine tests run once per backend. The app fixture builds the real app with fresh test
keys, exactly as `create_app` does in production, only with the tables made by
`create_all` for speed (tests/deploy/test_migrations.py checks the migrations give the same).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.fake_upstream import FAKE_MODEL, FAKE_UPSTREAM_KEY, FakeUpstream
from tests.helpers import ORIGIN, mint_session
from wattfare_demo import create_app
from wattfare_demo.engine import ensure_configured_app
from wattfare_demo.engine.tokens import new_app_id, new_secret_key
from wattfare_demo.extensions import db

PG_URL = os.environ.get("TEST_DATABASE_URL")
# Apps the tests start in other processes (gunicorn workers, `flask` commands) read the
# environment, not app_config: rate limits are off there too.
os.environ["WATTFARE_RATE_LIMITS"] = "off"
BACKENDS = ["sqlite", "postgresql"] if PG_URL else ["sqlite"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(backend: str, tmp_path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    from wattfare_demo.config import database_url as normalise

    return normalise(PG_URL, "")


@pytest.fixture
def keys() -> dict[str, str]:
    app_id = new_app_id()
    return {
        "WATTFARE_PUBLISHABLE_KEY": f"pk_test_{app_id}",
        "WATTFARE_SECRET_KEY": new_secret_key("test", app_id),
    }


@pytest.fixture
def app_config(database_url: str, keys: dict[str, str], tmp_path) -> dict[str, Any]:
    from wattfare_demo.config import engine_options

    return {
        "TESTING": True,
        "SECRET_KEY": "test-secret-key-0123456789abcdef0123456789",
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SQLALCHEMY_ENGINE_OPTIONS": engine_options(database_url, 5),
        "WATTFARE_ALLOWED_ORIGINS": [ORIGIN],
        "WATTFARE_UPSTREAM_URL": None,
        "WATTFARE_UPSTREAM_API_KEY": None,
        "WATTFARE_PRICES": {},
        # Off unless a test turns them on (tests/engine/test_rate_limits.py): the race and
        # fault tests fire far more calls per minute than the default limits allow.
        "RATELIMIT_ENABLED": False,
        **keys,
    }


@pytest.fixture
def app(app_config: dict[str, Any]) -> Iterator[Flask]:
    app = create_app(app_config)
    with app.app_context():
        db.drop_all()  # PostgreSQL: a previous run may have been interrupted
        db.create_all()
    ensure_configured_app(app)
    yield app
    with app.app_context():
        db.session.remove()
        db.drop_all()
        db.engine.dispose()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    """A real OpenAI-compatible fake upstream on loopback (tests/fake_upstream.py)."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def upstream_config(upstream: FakeUpstream) -> dict[str, Any]:
    """Settings that put the engine behind `upstream`; merge them into app_config."""
    return {
        "WATTFARE_UPSTREAM_URL": upstream.url,
        "WATTFARE_UPSTREAM_API_KEY": FAKE_UPSTREAM_KEY,
        "WATTFARE_UPSTREAM_TIMEOUT": 5.0,
        "WATTFARE_PRICES": {FAKE_MODEL: {"input": 1, "output": 2}},
    }


@pytest.fixture
def ledger(app: Flask):
    """ledger() -> ([(status, kept)] per call by id, used requests of all grants).

    `kept` says what the engine keeps to recognise the call's retries: "key" (its
    Idempotency-Key's hash), "request" (a key-less call's request hash), or None.
    """
    from sqlalchemy import func, select

    from wattfare_demo.engine.models import Grant, Replay, Usage

    def read() -> tuple[list[tuple[str, str | None]], int]:
        with app.app_context():
            rows = db.session.execute(
                select(Usage.status, Replay.id, Replay.key_hash)
                .outerjoin(Replay, Replay.usage_id == Usage.id)
                .order_by(Usage.id)
            ).all()
            used = db.session.scalar(select(func.coalesce(func.sum(Grant.used), 0)))
            db.session.remove()
        calls = [
            (status, None if replay is None else ("key" if key_hash else "request"))
            for status, replay, key_hash in rows
        ]
        return calls, int(used)

    return read


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def secret_key(app: Flask) -> str:
    return app.config["WATTFARE_SECRET_KEY"]


@pytest.fixture
def make_grant(client: FlaskClient, secret_key: str):
    """make_grant(requests=3, max_usd=None) -> the grant token, via POST /api/v1/grants."""

    def make(requests: int = 3, max_usd: float | str | None = None, **session: Any) -> str:
        body: dict[str, Any] = {"requests": requests}
        if max_usd is not None:
            body["maxUsd"] = max_usd
        response = client.post(
            "/api/v1/grants",
            json=body,
            headers={"Authorization": f"Bearer {mint_session(secret_key, **session)}"},
        )
        assert response.status_code == 200, response.get_json()
        return response.get_json()["grantToken"]

    return make


@pytest.fixture
def api_headers(secret_key: str):
    def headers(grant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant}

    return headers


class LiveServer:
    """The app served over real HTTP by werkzeug on 127.0.0.1 and an ephemeral port."""

    def __init__(self, app: Flask) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        import threading

        # A short poll interval: shutdown() waits up to one interval (0.5 s by default).
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.thread.join(5)
        self.server.server_close()


@pytest.fixture
def live_server(app: Flask) -> Iterator[LiveServer]:
    """The app on a real port; its two loopback origins are allowed for the demo app."""
    from wattfare_demo.engine.apps import add_origin, app_for_secret_key

    with LiveServer(app) as server:
        with app.app_context():
            demo = app_for_secret_key(app.config["WATTFARE_SECRET_KEY"])
            for host in ("127.0.0.1", "localhost"):
                add_origin(demo, f"http://{host}:{server.port}")
            db.session.remove()
        yield server
