"""The accounting's statements, compiled once and run with no per-call SQLAlchemy work.

A metered call runs four to six statements. Through `db.session.execute`, each one cost
35-50 µs above the driver's own time (docs/benchmarks.md, the per-call budget): the
session's ORM execute path, then Core deriving the statement's cache key and looking up
its compiled form, on every call. A `Statement` here is compiled the first time it runs
on a dialect; after that a call is `exec_driver_sql` on the session's connection, with
the SQL text and the parameters as the driver takes them. The statement still runs in
the session's transaction (what the reservation writes, the metering's retry record
beside it, commit together or not at all), and SQLAlchemy's cursor events still see it
(bench/statements.py captures the hot statements that way for their query plans).

Only statements whose every value is a bound parameter or SQL qualify: a statement with
a Python-side column default or an expanding IN list is refused when compiled, since
`exec_driver_sql` would not fill it in.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import CursorResult, Dialect
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from ..extensions import db


class Statement:
    """One prebuilt Core statement, compiled once per dialect."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._compiled: dict[str, _Compiled] = {}

    def run(self, **params: Any) -> CursorResult[Any]:
        """Execute in the session's transaction (it begins one if none is open)."""
        connection = db.session.connection()
        dialect = connection.dialect
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = _Compiled(self.statement, dialect)
        return connection.exec_driver_sql(compiled.sql, compiled.parameters(params))


class _Compiled:
    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        if compiled.insert_prefetch or compiled.update_prefetch or "POSTCOMPILE" in compiled.string:
            raise ValueError(f"{statement} needs SQLAlchemy at run time: not a driver statement")
        self.sql = compiled.string
        # The values the statement carries itself (`status='pending'`…), then the call's.
        self.defaults = dict(compiled.params)
        self.required = frozenset(name for name, bind in compiled.binds.items() if bind.required)
        # Drivers with positional parameters (SQLite's qmark) take a tuple in this order;
        # named ones (psycopg's pyformat) the dict.
        self.order = compiled.positiontup

    def parameters(self, params: dict[str, Any]) -> dict[str, Any] | tuple[Any, ...]:
        if not self.required <= params.keys():
            missing = ", ".join(sorted(self.required - params.keys()))
            raise TypeError(f"missing statement parameters: {missing}")
        values = {**self.defaults, **params}
        if self.order is None:
            return values
        return tuple(values[name] for name in self.order)


__all__ = ["Statement"]
