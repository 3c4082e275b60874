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
    # clock_timestamp(), not now(): now() is frozen at the start of the transaction.
    return "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp())) AS BIGINT)"


@compiles(db_now, "sqlite")
def _db_now_sqlite(element: db_now, compiler: Any, **kw: Any) -> str:
    return "CAST(strftime('%s', 'now') AS INTEGER)"
