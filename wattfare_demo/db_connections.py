"""How the app's database connections are set up: once per connection, not per call.

- **SQLite**: the pragmas below run when a connection is opened. The pool keeps the
  connection open, so every later call finds them set.
- **PostgreSQL**: a pooled connection may have been closed behind our back (a platform
  restarting its database, an idle timeout), so a connection is tested before use, but
  only one that sat in the pool for IDLE_PING_SECONDS or more. SQLAlchemy's
  `pool_pre_ping` pings at every checkout, and a metered call checks a connection out
  twice (the reservation and the settlement): two round trips out of fifteen, spent on
  connections that were in use a millisecond before (docs/benchmarks.md). A connection
  that fails its ping is replaced, as with `pool_pre_ping`; one that dies in the second
  after its last use fails its statement instead, which the request answers as any
  database error (the call is then not charged: its transaction never commits).
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

IDLE_PING_SECONDS = 1.0
_IDLE_SINCE = "wattfare_idle_since"


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer, and with synchronous=NORMAL a commit
    # waits for no fsync (WAL is still crash-safe; a power cut may lose the last
    # commits, never corrupt the file). busy_timeout makes a writer queue on the lock
    # instead of failing at once (the driver's timeout sets the same; said here so it
    # holds whatever opened the connection). A larger page cache (8 MB a connection, not
    # 2) keeps the hot indexes in memory as the ledger grows. Foreign keys are off by
    # default in SQLite. secure_delete overwrites deleted and replaced content with
    # zeros in the pages it writes anyway, so what the sweep forgets is gone from the
    # table's pages too. FAST, not ON: ON also rewrites whole freed pages (more than
    # doubling a call's writes, bench/), and what could be left on one is only ever
    # sealed (engine/sealing.py).
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA secure_delete=FAST")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA cache_size=-8000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()


def ping_after_idle(engine: Engine) -> None:
    """Test a pooled connection before use only when it sat idle IDLE_PING_SECONDS."""
    if engine.dialect.name == "sqlite":
        return  # a file, not a server: nothing can close it behind our back

    @event.listens_for(engine.pool, "checkin")
    def _idle_from(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.pool, "checkout")
    def _ping_if_idle(
        dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
    ) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return  # just opened, or in use a moment ago
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error:
            alive = False
        if not alive:
            # The pool discards this connection and checks out another (a new one).
            raise DisconnectionError("the pooled connection was closed while idle")
