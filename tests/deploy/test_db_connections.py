"""The app's database connections (wattfare_demo/db_connections.py): SQLite's pragmas on
every connection; on PostgreSQL, a pooled connection that died while idle is replaced
before use, and one in use a moment ago is not pinged."""

from __future__ import annotations

import pytest
from flask import Flask
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from wattfare_demo import db_connections
from wattfare_demo.extensions import db


def _backend_pid() -> int:
    return int(db.session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(pid: int) -> None:
    """End one server process from a connection outside the app's pool, as a database
    restart would."""
    other = create_engine(db.engine.url, poolclass=NullPool)
    with other.connect() as connection:
        connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    other.dispose()


def test_sqlite_connections_have_their_pragmas(app: Flask, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("SQLite's pragmas")
    with app.app_context():
        read = {
            name: db.session.execute(text(f"PRAGMA {name}")).scalar_one()
            for name in ("journal_mode", "synchronous", "busy_timeout", "foreign_keys")
        }
    assert read == {
        "journal_mode": "wal",
        "synchronous": 1,
        "busy_timeout": 30000,
        "foreign_keys": 1,
    }


def test_a_connection_that_died_while_idle_is_replaced(
    app: Flask, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's pool")
    # Any connection back in the pool counts as idle: the next checkout pings it.
    monkeypatch.setattr(db_connections, "IDLE_PING_SECONDS", 0.0)
    with app.app_context():
        db.engine.dispose()  # one connection in the pool, so the next call gets the same
        pid = _backend_pid()
        db.session.remove()  # back to the pool
        _kill(pid)
        assert _backend_pid() != pid  # pinged, found dead, replaced: no error
        db.session.remove()


def test_a_connection_in_use_a_moment_ago_is_not_pinged(
    app: Flask, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "postgresql":
        pytest.skip("PostgreSQL's pool")
    # Nothing is idle long enough for a ping: a connection killed between two calls is
    # found dead by the call's own statement, which fails (and commits nothing).
    monkeypatch.setattr(db_connections, "IDLE_PING_SECONDS", 3600.0)
    with app.app_context():
        db.engine.dispose()
        pid = _backend_pid()
        db.session.remove()
        _kill(pid)
        with pytest.raises(OperationalError):
            _backend_pid()
        db.session.rollback()
        db.session.remove()
        assert _backend_pid() != pid  # the pool replaced the dead one after its error
        db.session.remove()
