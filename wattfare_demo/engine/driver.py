"""The accounting's statements, compiled once and run on the driver's own cursor.

A metered call runs six to eight statements. Through `db.session.execute`, each one cost
35-50 µs above the driver's own time (docs/benchmarks.md, the per-call budget): the
session's ORM execute path, then Core deriving the statement's cache key, looking up its
compiled form, building an execution context and a result; even `exec_driver_sql`, which
skips the compiling, spent 15-25 µs a statement on the context and the result. A
`Statement` here is compiled the first time it runs on a dialect; after that a call is
`cursor.execute` on the DBAPI connection the session's transaction holds, with the SQL
text and the parameters as the driver takes them, and the rows read at once into small
named tuples. The statement still runs in the session's transaction (what the
reservation writes, the metering's retry record beside it, commit together or not at
all); only the per-statement machinery is skipped.

What that machinery gave, kept here:

- **Errors** are SQLAlchemy's (`sqlalchemy.exc.IntegrityError`, `OperationalError`…),
  built by `DBAPIError.instance` as Core builds them, and a connection the driver says
  is gone is invalidated, so the pool never hands it out again.
- **Observers** still see every statement. Listeners of the engine's
  `before_cursor_execute` and `after_cursor_execute` are called here as Core calls them
  (bench/statements.py captures the hot statements that way for their query plans,
  bench/budget.py times them), with no execution context (None) and without the
  `retval=True` power to rewrite the statement. When SQL logging is on (`echo`, or the
  `sqlalchemy.engine` logger at INFO), statements go through SQLAlchemy as before, which
  logs them.

Only statements whose every value is a bound parameter or SQL qualify: a statement with
a Python-side column default or an expanding IN list is refused when compiled, since
the driver would not fill it in. Rows carry the driver's own values: a Boolean is 0 or 1
on SQLite (truthy, never `is True`).
"""

from __future__ import annotations

import logging
from collections import namedtuple
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Any

from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from ..extensions import db
from . import sqlite_writers


class Statement:
    """One prebuilt Core statement, compiled once per dialect."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def run(self, **params: Any) -> Result:
        """Execute in the current `transaction()` or `read()`, else in the session's
        transaction (it begins one if none is open)."""
        own = _current.get()
        if own is not None:
            return self._compiled_for(own.engine.dialect).execute(own, params)
        connection = db.session.connection()
        compiled = self._compiled_for(connection.dialect)
        if connection.engine.logger.isEnabledFor(logging.INFO):  # SQL logging: Core logs it
            result = connection.exec_driver_sql(compiled.sql, compiled.parameters(params))
            rows = list(result.all()) if result.returns_rows else []
            return Result(rows, result.rowcount)
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None  # the session's transaction holds it
        return compiled.execute(_OnSession(connection, dbapi_connection), params)

    def _compiled_for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled(self.statement, dialect)
        return compiled


class Result:
    """The rows a statement returned, read at once (the cursor is closed)."""

    __slots__ = ("rowcount", "rows")

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self.rows = rows
        self.rowcount = rowcount  # rows changed, for an UPDATE or DELETE without RETURNING

    def all(self) -> list[Any]:
        return self.rows

    def first(self) -> Any:
        return self.rows[0] if self.rows else None

    def one_or_none(self) -> Any:
        if len(self.rows) > 1:
            raise ValueError("the statement returned more than one row")
        return self.rows[0] if self.rows else None

    def one(self) -> Any:
        row = self.one_or_none()
        if row is None:
            raise ValueError("the statement returned no row")
        return row

    def scalar(self) -> Any:
        return self.rows[0][0] if self.rows else None

    def scalar_one(self) -> Any:
        return self.one()[0]


# --- transactions of the engine's own ---------------------------------------------------


class Transaction:
    """The statements of one phase of a call (reserve, settle, release), on a pooled
    connection of their own, outside the ORM session; see `transaction()`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.ended = False
        self._pooled = engine.raw_connection()  # the pool's checkout events run (pings)
        dbapi_connection = self._pooled.dbapi_connection
        assert dbapi_connection is not None
        self.dbapi_connection: Any = dbapi_connection

    def commit(self) -> None:
        if not self.ended:
            self.ended = True
            self.dbapi_connection.commit()

    def rollback(self) -> None:
        if not self.ended:
            self.ended = True
            self.dbapi_connection.rollback()

    def dispatch(self) -> Any:
        return self.engine.dispatch

    def invalidate(self, exc: BaseException) -> None:
        self._pooled.invalidate(exc)

    def close(self) -> None:
        self._pooled.close()  # back to the pool (which rolls back anything left open)


class _OnSession:
    """A statement run in the session's transaction: the session commits it."""

    def __init__(self, connection: Connection, dbapi_connection: Any) -> None:
        self.connection = connection
        self.dbapi_connection = dbapi_connection

    def dispatch(self) -> Any:
        return self.connection.dispatch

    def invalidate(self, exc: BaseException) -> None:
        self.connection.invalidate(exc)


class _SessionTransaction:
    """`transaction()` when the session has work open: its statements join the
    session's transaction, which commits or rolls back as before."""

    ended = False

    def commit(self) -> None:
        if not self.ended:
            self.ended = True
            db.session.commit()

    def rollback(self) -> None:
        if not self.ended:
            self.ended = True
            db.session.rollback()


_current: ContextVar[Transaction | None] = ContextVar("wattfare_transaction", default=None)


@contextmanager
def transaction() -> Iterator[Transaction | _SessionTransaction]:
    """One transaction of the accounting, committed when the block ends (or earlier with
    `.commit()`), rolled back if it raises (or earlier with `.rollback()`).

    Why not the session's: a metered call commits twice, and through the ORM session
    each commit, with the connection it takes from the pool and gives back, cost about
    130 µs above the driver's own COMMIT on SQLite (docs/benchmarks.md). Here a phase
    takes a pooled connection, runs its `Statement`s on it and commits it with the
    driver's own call. (psycopg's pipeline mode, which would send BEGIN with the first
    statement and the last statements with the COMMIT, was measured and left out: on a
    local server it made a reservation slower, 255 against 168 µs, bench/.)

    The session's transaction is used instead (the block's statements join it, and it
    commits or rolls back as before) when the session has one open, so that nothing the
    caller wrote but has not committed is invisible to the block or, on SQLite, holds
    the write lock the block would wait for; and when SQL logging is on, so that every
    statement is logged.
    """
    if _current.get() is not None:
        raise RuntimeError("driver.transaction() blocks do not nest")
    engine = db.session.get_bind()
    assert isinstance(engine, Engine)
    if db.session().in_transaction() or engine.logger.isEnabledFor(logging.INFO):
        joined = _SessionTransaction()
        try:
            yield joined
        except BaseException:
            joined.rollback()
            raise
        joined.commit()
        return
    # SQLite: the block waits its turn among the writers of the file first, queued
    # rather than sleeping in SQLite's busy handler (sqlite_writers.py).
    sqlite = engine.dialect.name == "sqlite"
    with sqlite_writers.turn(engine.url.database) if sqlite else nullcontext():
        own = Transaction(engine)
        token = _current.set(own)
        try:
            try:
                yield own
            except BaseException:
                own.rollback()
                raise
            own.commit()
        finally:
            _current.reset(token)
            if not own.ended:  # the COMMIT itself failed: make sure nothing stays open
                own.rollback()
            own.close()


@contextmanager
def read() -> Iterator[None]:
    """Reads that need no transaction (the retry lookup, an app by its key): on a pooled
    connection of their own, each statement on its own; on PostgreSQL in autocommit,
    one round trip each with no BEGIN or COMMIT around it. Writes belong in
    `transaction()`, or `alone()` for one statement that is a transaction by itself."""
    if _current.get() is not None or db.session().in_transaction():
        yield  # join what is open
        return
    engine = db.session.get_bind()
    assert isinstance(engine, Engine)
    if engine.logger.isEnabledFor(logging.INFO):
        yield  # the session's, which logs
        return
    with _own_connection(engine):
        yield


@contextmanager
def alone() -> Iterator[None]:
    """ONE writing statement that is a transaction by itself (a settlement): on
    PostgreSQL sent in autocommit, where the server commits it, as durably as a COMMIT,
    before it answers; one round trip instead of three (BEGIN, the statement, COMMIT).
    A statement is atomic on its own, so nothing else is needed. A block with a second
    statement belongs in `transaction()`: each would commit on its own here.

    Elsewhere (SQLite, with the session's work open, with SQL logging on) it is a
    `transaction()`, and like one it does not nest in another block."""
    if _current.get() is not None:
        raise RuntimeError("driver.alone() does not nest in another block")
    engine = db.session.get_bind()
    assert isinstance(engine, Engine)
    if (
        engine.dialect.name != "postgresql"
        or engine.logger.isEnabledFor(logging.INFO)
        or db.session().in_transaction()
    ):
        with transaction():
            yield
        return
    with _own_connection(engine):
        yield


@contextmanager
def _own_connection(engine: Engine) -> Iterator[None]:
    """The block's statements on a pooled connection of their own, each committed by
    itself (PostgreSQL: autocommit; SQLite: only reads come here, and a SELECT opens
    nothing to commit)."""
    own = Transaction(engine)
    postgresql = engine.dialect.name == "postgresql"
    if postgresql:
        own.dbapi_connection.autocommit = True
    token = _current.set(own)
    try:
        yield
    finally:
        _current.reset(token)
        if postgresql:
            own.dbapi_connection.autocommit = False
        else:
            own.rollback()  # SQLite opened nothing for a SELECT; this costs nothing
        own.ended = True
        own.close()


class _Compiled:
    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch or "POSTCOMPILE" in compiled.string:
            raise ValueError(f"{statement} needs SQLAlchemy at run time: not a driver statement")
        self.dialect = dialect
        self.sql = compiled.string
        # The values the statement carries itself (`status='pending'`…), then the call's.
        self.defaults = dict(compiled.params)
        self.required = frozenset(name for name, bind in compiled.binds.items() if bind.required)
        # Drivers with positional parameters (SQLite's qmark) take a tuple in this order;
        # named ones (psycopg's pyformat) the dict.
        self.order = compiled.positiontup
        self.row_type: type | None = None  # from the first cursor's description

    def parameters(self, params: dict[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        if not self.required <= params.keys():
            missing = ", ".join(sorted(self.required - params.keys()))
            raise TypeError(f"missing statement parameters: {missing}")
        values = {**self.defaults, **params}
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)

    def execute(self, on: Transaction | _OnSession, params: dict[str, Any]) -> Result:
        values = self.parameters(params)
        dbapi_connection = on.dbapi_connection
        cursor = dbapi_connection.cursor()
        dispatch = on.dispatch()
        try:
            if dispatch.before_cursor_execute:
                dispatch.before_cursor_execute(None, cursor, self.sql, values, None, False)
            cursor.execute(self.sql, values)
            result = self._result(cursor)
            if dispatch.after_cursor_execute:
                dispatch.after_cursor_execute(None, cursor, self.sql, values, None, False)
            return result
        except self.dialect.loaded_dbapi.Error as exc:
            # As Core would raise it: wrapped in SQLAlchemy's exception of the same kind,
            # and a connection the server closed is thrown away, not pooled again.
            gone = self.dialect.is_disconnect(exc, dbapi_connection, cursor)
            if gone:
                on.invalidate(exc)
            raise DBAPIError.instance(
                self.sql,
                values,
                exc,
                self.dialect.loaded_dbapi.Error,
                connection_invalidated=gone,
                dialect=self.dialect,
            ) from exc
        finally:
            cursor.close()

    def _result(self, cursor: Any) -> Result:
        description = cursor.description
        if description is None:  # no rows: an UPDATE or DELETE without RETURNING
            return Result([], cursor.rowcount)
        rows = cursor.fetchall()
        if self.row_type is None:
            self.row_type = namedtuple("Row", [column[0] for column in description])  # type: ignore[misc]
        make = self.row_type._make  # type: ignore[attr-defined]
        return Result([make(row) for row in rows], cursor.rowcount)


__all__ = ["Result", "Statement", "Transaction", "alone", "read", "transaction"]
