"""The plans of the statements that must stay on an index as the tables grow.

bench/scale.py checks every hot statement on 5,000,000 ledger rows; these are the ones
it found off their index, checked here on a small history (settled calls and their
retry records, ANALYZEd as autovacuum would), EXPLAINed as the real code sends them:

- settle's claim of its ledger row goes by the primary key. PostgreSQL preferred the
  partial index of pending holds, which looks empty to its planner, and read every
  entry the calls settled since the last vacuum left in it (models.PENDING_HOLD); on
  PostgreSQL the same statement moves a budgeted app's hold, on an index of app_spend;
- the stale-hold sweep goes through that partial index, bounded by the expiry (the
  database clock must be stable within a statement for that: clock.py);
- the sweep deletes old retry records by ix_replays_created_at;
- a key-less call's retry lookup reads the newest record of its request, not every
  key-less record of its app (which replay_key, when it held them, let it do).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from sqlalchemy import event, select, text

from tests.helpers import chat_body, plant_stale_hold
from wattfare_demo.engine import sweep
from wattfare_demo.engine.apps import app_for_secret_key, set_daily_budget
from wattfare_demo.engine.clock import db_now
from wattfare_demo.extensions import db

HISTORY = 5000  # settled calls already in the ledger


@contextmanager
def _sent(app: Flask) -> Iterator[list[tuple[str, Any]]]:
    """Every statement sent to the database meanwhile, with its parameters."""
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        sent.append((statement, parameters))

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", record)


def _plan(app: Flask, statement: str, parameters: Any) -> str:
    with app.app_context():
        connection = db.engine.raw_connection()
        try:
            cursor = connection.cursor()
            if db.engine.dialect.name == "postgresql":
                cursor.execute(f"EXPLAIN {statement}", parameters)
                lines = [row[0] for row in cursor.fetchall()]
            else:
                cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
                lines = [row[3] for row in cursor.fetchall()]
            connection.rollback()
        finally:
            connection.close()
    return "\n".join(lines)


def _one(sent: list[tuple[str, Any]], matches: Callable[[str], bool]) -> tuple[str, Any]:
    found = [(sql, params) for sql, params in sent if matches(" ".join(sql.split()))]
    assert found, "\n".join(sql for sql, _ in sent)
    return found[0]


def _with_history(app: Flask, token: str) -> None:
    """HISTORY settled calls on the grant's app, their retry records and hours of
    spending, then ANALYZE."""
    with app.app_context():
        grant_id, app_id = db.session.execute(
            text("SELECT id, app_id FROM grants ORDER BY id DESC LIMIT 1")
        ).one()
        now = int(db.session.scalar(select(db_now())))  # the database's clock
        numbers = [{"n": n} for n in range(HISTORY)]
        db.session.execute(
            text(
                "INSERT INTO usage (grant_id, app_id, model, status, stream, prompt_tokens, "
                "completion_tokens, hold_pusd, cost_pusd, started_at, hold_expires_at, "
                "finished_at) VALUES (:g, :a, 'local/markdown', 'ok', false, 1, 1, 0, 0, "
                ":now, :now + 300, :now)"
            ).bindparams(g=grant_id, a=app_id, now=now),
            numbers,
        )
        db.session.execute(
            text(
                "INSERT INTO replays (app_id, request_hash, stream, delivered, created_at) "
                "VALUES (:a, 'r' || :n, false, true, :now)"
            ).bindparams(a=app_id, now=now),
            numbers,
        )
        db.session.execute(  # hours of spending, long past, as a budgeted app leaves
            text(
                "INSERT INTO app_spend (app_id, hour, spent_pusd, held_pusd) "
                "VALUES (:a, :hour - 100000 + :n, 1, 0)"
            ).bindparams(a=app_id, hour=now // 3600),
            numbers,
        )
        db.session.commit()
        db.session.execute(text("ANALYZE"))
        db.session.commit()
        db.session.remove()


def test_settle_claims_by_primary_key_and_the_sweep_by_its_indexes(
    app, client, make_grant, api_headers, secret_key
):
    token = make_grant(5)
    _with_history(app, token)
    with app.app_context():  # a budget no call reaches: the budget's statements run too
        set_daily_budget(app_for_secret_key(secret_key), 10**6 * 10**12)
        db.session.remove()
    with _sent(app) as sent:
        answer = client.post(
            "/api/v1/chat/completions", headers=api_headers(token), json=chat_body()
        )
        assert answer.status_code == 200, answer.get_json()
        keyed = {**api_headers(token), "Idempotency-Key": "plans-1"}
        for _ in range(2):  # the second is a retry, found by its key and replayed
            answer = client.post("/api/v1/chat/completions", headers=keyed, json=chat_body())
            assert answer.status_code == 200, answer.get_json()
        with app.app_context():
            plant_stale_hold(secret_key, token)
            done = dict((step.name, count) for step, count in sweep.sweep() or [])
            db.session.remove()
    assert done["holds"] == 1

    # Settle's claim: the ledger row by id, pending → ok (on PostgreSQL inside the one
    # statement that also charges the grant).
    claim = _plan(app, *_one(sent, lambda sql: "usage.id =" in sql and "prompt_tokens=" in sql))
    assert "pending_hold" not in claim, claim
    assert "pk_usage" in claim or "INTEGER PRIMARY KEY" in claim, claim
    with app.app_context():
        postgresql = db.engine.dialect.name == "postgresql"
    if postgresql:  # the same statement moves the budget's hold, on an index (the key,
        # or the hour's when that is as selective, as here)
        assert re.search(r"Index Scan using \w+ on app_spend", claim), claim

    stale = _plan(app, *_one(sent, lambda sql: "SET status" in sql and "IS NOT NULL" in sql))
    assert "ix_usage_pending_hold" in stale, stale
    # Bounded by the expiry, not walking the index with it as a filter.
    assert "(hold_expires_at<?)" in stale or "Index Cond: (hold_expires_at <" in stale, stale
    assert "SCAN usage" not in stale and "Seq Scan" not in stale, stale

    replays = _plan(app, *_one(sent, lambda sql: sql.startswith("DELETE FROM replays")))
    assert "ix_replays_created_at" in replays, replays

    # A retry's lookup: a key-less call by its request (the newest record of it), a call
    # with a key by the key; neither walks the other kind's records.
    latest = _plan(app, *_one(sent, lambda sql: "FROM replays" in sql and "IS NULL" in sql))
    assert "ix_replays_request" in latest, latest
    by_key = _plan(app, *_one(sent, lambda sql: "FROM replays" in sql and "key_hash =" in sql))
    assert "replay_key" in by_key, by_key
