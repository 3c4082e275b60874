"""The SQL the engine really runs, captured while it runs, and each statement's plan.

`capture(flask_app, step)` listens to SQLAlchemy's `before_cursor_execute` on the app's
engine for the duration of a block, so the statements (and their parameters) are the
ones the code of the day sends: nothing is copied by hand, and the plans stay true when
the code changes. `explain()` asks the database for the plan of each one with the same
parameters (EXPLAIN QUERY PLAN on SQLite, EXPLAIN (FORMAT JSON) on PostgreSQL; neither
runs the statement) and says whether every table it reads is reached through an index.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy import event

# Statements that are not queries: transaction control and connection setup.
_NOT_A_QUERY = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|PRAGMA|SET|SHOW)\b", re.I)


@dataclass
class Statement:
    step: str  # what was running: "metered call", "status call", …
    sql: str
    parameters: Any
    seconds: float = 0.0  # the DBAPI execute's wall time, this once

    @property
    def summary(self) -> str:
        """`UPDATE grants`, `SELECT … FROM apps`, `INSERT INTO usage`: what it is, in short."""
        flat = " ".join(self.sql.split())
        verb = flat.split(" ", 1)[0].upper()
        if verb == "SELECT":
            # The first FROM that names a table, not a function: FROM clock_timestamp()
            # inside a select list is PostgreSQL's EXTRACT(EPOCH FROM …).
            found = re.search(r"\bFROM\s+([A-Za-z_][\w.]*)\b(?!\s*\()", flat, re.I)
            if found:
                return f"SELECT … FROM {found.group(1)}"  # noqa: S608 - a label, not SQL
            called = re.match(r"SELECT\s+([A-Za-z_]\w*)\(", flat, re.I)
            return f"SELECT {called.group(1)}(…)" if called else flat[:50]
        found = re.match(r"(INSERT INTO|UPDATE|DELETE FROM)\s+([\w.]+)", flat, re.I)
        return f"{found.group(1).upper()} {found.group(2)}" if found else flat[:50]


@dataclass
class Plan:
    statement: Statement
    lines: list[str]
    unbounded: list[str] = field(default_factory=list)  # tables or indexes read in full
    steps: list[str] = field(default_factory=list)  # every step that sent this SQL

    @property
    def indexed(self) -> bool:
        return not self.unbounded


@contextmanager
def capture(flask_app: Flask, step: str, into: list[Statement]) -> Iterator[None]:
    """Record every query the app sends while the block runs."""
    import time

    from wattfare_demo.extensions import db

    with flask_app.app_context():
        engine = db.engine
    started: dict[int, float] = {}

    def before(_conn, cursor, sql, parameters, _context, executemany) -> None:
        if not _NOT_A_QUERY.match(sql):
            into.append(Statement(step, sql, parameters))
            started[id(cursor)] = time.perf_counter()

    def after(_conn, cursor, sql, _parameters, _context, _executemany) -> None:
        if id(cursor) in started and into and into[-1].sql == sql:
            into[-1].seconds = time.perf_counter() - started.pop(id(cursor))

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def explain(flask_app: Flask, statements: list[Statement]) -> list[Plan]:
    """The plan of each distinct SQL text (with its first parameters), in order."""
    from wattfare_demo.extensions import db

    first: dict[str, Statement] = {}
    steps: dict[str, list[str]] = {}
    for s in statements:
        first.setdefault(s.sql, s)
        if s.step not in steps.setdefault(s.sql, []):
            steps[s.sql].append(s.step)
    with flask_app.app_context():
        engine = db.engine
        dialect = engine.dialect.name
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if dialect == "sqlite":
                plans = [_sqlite_plan(cursor, s) for s in first.values()]
            else:
                leading = _leading_columns(cursor)
                plans = [_postgres_plan(cursor, s, leading) for s in first.values()]
            raw.rollback()
        finally:
            raw.close()
    for plan in plans:
        plan.steps = steps[plan.statement.sql]
    return plans


_LONG_LITERAL = re.compile(r"'[0-9a-f]{16,}'")


def _short(text: str) -> str:
    return _LONG_LITERAL.sub("'…'", text)


def _sqlite_plan(cursor: Any, statement: Statement) -> Plan:
    cursor.execute(f"EXPLAIN QUERY PLAN {statement.sql}", statement.parameters)
    rows = cursor.fetchall()
    lines = [_short(str(row[3])) for row in rows]
    # "SEARCH t USING INDEX …(col=?)" reaches rows through an index; "SCAN t" (with or
    # without "USING INDEX") reads the whole table or index, and "ANY(col)" is a skip
    # scan over every value of an index's leading column. An INSERT has no plan rows.
    unbounded = [
        line
        for line in lines
        if (line.startswith("SCAN ") and not line.startswith("SCAN CONSTANT ROW")) or "ANY(" in line
    ]
    return Plan(statement, lines or ["(no table read)"], unbounded)


def _leading_columns(cursor: Any) -> dict[str, str]:
    """Each index's first column: a condition on a later one alone walks the whole index."""
    cursor.execute(
        "SELECT i.relname, a.attname FROM pg_index x "
        "JOIN pg_class i ON i.oid = x.indexrelid "
        "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = x.indkey[0] "
        "JOIN pg_namespace n ON n.oid = i.relnamespace WHERE n.nspname = current_schema()"
    )
    return dict(cursor.fetchall())


def _postgres_plan(cursor: Any, statement: Statement, leading: dict[str, str]) -> Plan:
    cursor.execute(f"EXPLAIN (FORMAT JSON) {statement.sql}", statement.parameters)
    (document,) = cursor.fetchone()
    root = (json.loads(document) if isinstance(document, str) else document)[0]["Plan"]
    lines: list[str] = []
    unbounded: list[str] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        kind = node["Node Type"]
        relation = node.get("Relation Name")
        index = node.get("Index Name")
        cond = node.get("Index Cond") or node.get("Recheck Cond")
        text = kind + (f" on {relation}" if relation else "")
        text += f" using {index}" if index else ""
        text += f" ({cond})" if cond else ""
        if node.get("Filter"):
            text += f" filter {node['Filter']}"
        text = _short(text) + f"  rows≈{node.get('Plan Rows')}"
        lines.append("  " * depth + text)
        column = leading.get(index or "")
        if kind == "Seq Scan" or (
            index and (not cond or (column and not re.search(rf"\b{column}\b", cond)))
        ):
            unbounded.append(text)
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(root, 0)
    return Plan(statement, lines, unbounded)
