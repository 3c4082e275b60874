"""The database's clock, in unix seconds.

Expiry is decided by the database, not by each worker's wall clock, so several
processes (or hosts with skewed clocks) agree on when a grant or a hold has expired.
"""

from typing import Any

from sqlalchemy import BigInteger
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement


class db_now(FunctionElement[int]):
    type = BigInteger()
    inherit_cache = True


@compiles(db_now)
def _db_now_default(element: db_now, compiler: Any, **kw: Any) -> str:  # pragma: no cover
    return "CAST(EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) AS BIGINT)"


@compiles(db_now, "postgresql")
def _db_now_postgresql(element: db_now, compiler: Any, **kw: Any) -> str:
    # statement_timestamp(), not now(): now() is frozen at the start of the transaction.
    # Nor clock_timestamp(): it is volatile, so PostgreSQL evaluates it row by row and
    # cannot bound an index scan with it (`hold_expires_at < db_now()` walked the whole
    # index); statement_timestamp() is stable, one value for the statement.
    return "CAST(FLOOR(EXTRACT(EPOCH FROM statement_timestamp())) AS BIGINT)"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    return "CAST(strftime('%s', 'now') AS INTEGER)"
