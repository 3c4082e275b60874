"""The accounting's statements on the driver's own cursor (engine/driver.py): what a
`Statement` returns, the errors it raises, and the transactions of the engine's own:
committed, rolled back, joined to the session's when it has work open, one statement
sent alone, and seen by SQLAlchemy's cursor events."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from sqlalchemy import Integer, String, bindparam, column, event, func, select, table, text
from sqlalchemy.exc import IntegrityError

from wattfare_demo.engine import driver
from wattfare_demo.engine.driver import Statement
from wattfare_demo.extensions import db

_notes = table("driver_notes", column("id", Integer), column("body", String))
_ADD = Statement(
    _notes.insert()
    .values(id=bindparam("p_id", type_=Integer), body=bindparam("p_body", type_=String))
    .returning(_notes.c.id, _notes.c.body)
)
_ALL = Statement(select(_notes.c.id, _notes.c.body).order_by(_notes.c.id))
_TOUCH = Statement(_notes.update().values(body=bindparam("p_body", type_=String)))
# PostgreSQL: whether the statement began its own transaction (no BEGIN sent before it).
_ALONE = Statement(select((func.now() == func.statement_timestamp()).label("alone")))


@pytest.fixture
def notes(app: Flask) -> Iterator[None]:
    with app.app_context():
        db.session.execute(text("CREATE TABLE driver_notes (id INTEGER PRIMARY KEY, body TEXT)"))
        db.session.commit()
        yield
        db.session.rollback()
        db.session.execute(text("DROP TABLE driver_notes"))
        db.session.commit()
        db.session.remove()


def _stored() -> list[tuple[int, str]]:
    db.session.rollback()
    return [tuple(row) for row in db.session.execute(text("SELECT id, body FROM driver_notes"))]


def test_rows_come_back_as_named_tuples(notes: None) -> None:
    with driver.transaction():
        row = _ADD.run(p_id=1, p_body="one").one()
        assert (row.id, row.body) == (1, "one")
        _ADD.run(p_id=2, p_body="two")
        result = _ALL.run()
        assert [r.body for r in result.all()] == ["one", "two"]
        assert result.scalar() == 1
        with pytest.raises(ValueError, match="more than one row"):
            result.one_or_none()
        assert _TOUCH.run(p_body="x").rowcount == 2
    assert _stored() == [(1, "x"), (2, "x")]


def test_a_missing_parameter_is_a_type_error(notes: None) -> None:
    with pytest.raises(TypeError, match="p_body"), driver.transaction():
        _ADD.run(p_id=1)


def test_a_block_that_raises_commits_nothing(notes: None) -> None:
    with pytest.raises(RuntimeError), driver.transaction():
        _ADD.run(p_id=1, p_body="one")
        raise RuntimeError("the call failed")
    assert _stored() == []


def test_rollback_inside_the_block_ends_it(notes: None) -> None:
    with driver.transaction() as phase:
        _ADD.run(p_id=1, p_body="one")
        phase.rollback()
    with driver.transaction():
        _ADD.run(p_id=2, p_body="two")
    assert _stored() == [(2, "two")]


def test_driver_errors_are_sqlalchemys_and_roll_back(notes: None) -> None:
    with driver.transaction():
        _ADD.run(p_id=1, p_body="one")
    with pytest.raises(IntegrityError), driver.transaction():
        _ADD.run(p_id=2, p_body="two")
        _ADD.run(p_id=1, p_body="again")  # the primary key is taken
    assert _stored() == [(1, "one")]


def test_blocks_do_not_nest(notes: None) -> None:
    with (
        pytest.raises(RuntimeError, match="do not nest"),
        driver.transaction(),
        driver.transaction(),
    ):
        pass


def test_one_statement_alone_is_committed_by_itself(notes: None) -> None:
    with driver.alone():
        _ADD.run(p_id=1, p_body="one")
    assert _stored() == [(1, "one")]
    with pytest.raises(IntegrityError), driver.alone():
        _ADD.run(p_id=1, p_body="again")  # the primary key is taken: nothing changes
    assert _stored() == [(1, "one")]
    db.session.rollback()  # nothing of the session's open: the blocks are the driver's
    with pytest.raises(RuntimeError, match="does not nest"), driver.transaction(), driver.alone():
        pass


def test_on_postgresql_a_statement_alone_is_one_round_trip(app: Flask, notes: None) -> None:
    # The statement's own transaction began with it, so no BEGIN went before it (nor a
    # COMMIT after: the server committed it before answering, as the test above reads).
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has no round trips: alone() is a transaction()")
    with driver.alone():
        assert _ALONE.run().scalar() is True
    with driver.transaction():
        assert _ALONE.run().scalar() is False  # psycopg sent BEGIN first


def test_with_session_work_open_the_block_joins_the_session(notes: None) -> None:
    # Something written through the session and not committed: the block sees it, and
    # (on SQLite) does not wait for the write lock the session holds.
    db.session.execute(text("INSERT INTO driver_notes (id, body) VALUES (1, 'session')"))
    with driver.transaction():
        assert [r.body for r in _ALL.run().all()] == ["session"]
        _ADD.run(p_id=2, p_body="block")
    assert _stored() == [(1, "session"), (2, "block")]


def test_cursor_events_see_every_statement(notes: None, app: Flask) -> None:
    seen: list[str] = []

    def before(_conn, _cursor, sql, _params, _context, _many) -> None:
        seen.append(sql.split()[0])

    engine = db.engine
    event.listen(engine, "before_cursor_execute", before)
    try:
        with driver.transaction():
            _ADD.run(p_id=1, p_body="one")
        with driver.read():
            _ALL.run()
    finally:
        event.remove(engine, "before_cursor_execute", before)
    assert seen == ["INSERT", "SELECT"]
