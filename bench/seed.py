"""Fill a migrated bench database with a large history, in bulk SQL run by the database.

A year of a busy engine, in the engine's real tables (the schema comes from
`flask db upgrade`, so the columns, constraints and indexes are the migrations'):

- `apps` seeded apps, the grants spread over them;
- `grants` grants created evenly over the last `SPAN_DAYS` days, each living 10 minutes
  (so all but the newest are expired), half with a dollar cap, 2 % revoked;
- `ledger` rows, `ledger // grants` per grant: 98 % settled, 1 % failed (released), 1 %
  expired holds; a tenth streamed. The settled calls of the last 30 minutes keep their
  retry record in `replays` (Idempotency-Key hash, request hash, sealed answer), as the
  SDK's calls leave them (it sends a key with every call); older ones the sweep forgot;
- every tenth app has a daily budget: its ledger rows name their budget hour, and
  `app_spend` holds what they cost in the hours still in the budget window;
- `session_uses`: the session tokens that made their grant in the last ten minutes.

Each grant's counters agree with its ledger rows (used = its settled rows, spent = their
cost), so the CHECK constraints hold and the accounting still adds up.

PostgreSQL: `generate_series`, one INSERT … SELECT per table, with the foreign-key
triggers off for the session while it loads (`session_replication_role = replica`: the
rows are consistent by construction), then ANALYZE, as autovacuum would soon do.
SQLite: a recursive CTE per table, with the journal off while it loads; no ANALYZE,
since nothing runs it on a deployed SQLite file.
"""

from __future__ import annotations

import sqlite3
import time

SPAN_DAYS = 30
COST_PUSD = 123_000_000  # $0.000123 a settled call
HOLD_PUSD = 400_000_000
CAP_PUSD = 10**12  # $1 on the capped half
REQUESTS = 10  # each seeded grant allowed this many calls
REPLAY_SECONDS = 1800  # idempotency.REPLAY_TTL: what the sweep keeps for retries
BUDGETED_EVERY = 10  # every tenth app has a daily budget
BUDGET_PUSD = 10**15  # $1,000 a day
BUDGET_WINDOW_HOURS = 24  # grants.BUDGET_WINDOW_HOURS
SESSIONS = 10_000  # session tokens used in the last ten minutes


def _app_expr(dialect: str, grant: str, apps: int) -> str:
    number = f"(({grant}) % {apps}) + 1"
    if dialect == "postgresql":
        return f"'seed' || lpad(({number})::text, 12, '0')"
    return f"'seed' || substr('000000000000' || ({number}), -12, 12)"


def _statements(dialect: str, *, apps: int, grants: int, ledger: int, now: int) -> list[str]:
    """The INSERT … SELECTs, for `dialect`; `now` is the database clock, unix seconds."""
    per_grant = max(ledger // grants, 1)
    span = SPAN_DAYS * 86400
    pg = dialect == "postgresql"
    random_hex = (
        (lambda n: f"encode(sha256(int8send({n})), 'hex')")
        if pg
        else (lambda _n: "lower(hex(randomblob(32)))")
    )
    key_hex = (lambda n: f"md5(({n})::text)") if pg else (lambda _n: "lower(hex(randomblob(16)))")

    def series(name: str, first: int, last: int, body: str) -> str:
        if pg:
            return body.replace(
                "FROM_SERIES", f"FROM generate_series({first}::bigint, {last}) {name}"
            )
        head = f"WITH RECURSIVE s({name}) AS (SELECT {first} UNION ALL "
        head += f"SELECT {name} + 1 FROM s WHERE {name} < {last}) "  # noqa: S608 - constants
        return head + body.replace("FROM_SERIES", "FROM s")

    # A grant g was created at created(g); its ledger rows start then.
    created = f"({now} - {span} + ((g * {span}) / {grants}))"
    # How many of its ledger rows did not settle: its rows are n = s .. e (s = (g-1)*per,
    # e = g*per - 1), and those with n % 100 = 0 (failed) or 1 (expired) did not. The count
    # of n = r (mod 100) in [s, e] is (e - r + 100) / 100 - (s - 1 - r + 100) / 100 in
    # integer division (the + 100 keeps both operands positive).
    first, last = f"((g - 1) * {per_grant})", f"(g * {per_grant} - 1)"
    failed_in = " + ".join(
        f"(({last} - {r} + 100) / 100 - ({first} - 1 - {r} + 100) / 100)" for r in (0, 1)
    )
    used = f"({per_grant} - ({failed_in}))"
    apps_sql = series(
        "a",
        1,
        apps,
        "INSERT INTO apps (id, name, mode, secret_hash, session_key_box, auto_approve, "
        "created_at, daily_budget_pusd) SELECT "
        + _app_expr(dialect, "a - 1", apps)
        + f", 'Seeded app ' || a, 'test', {random_hex('a + 1000000000')}, 'seeded', "
        + ("false" if pg else "0")
        + f", {now - span - 86400}, CASE WHEN a % {BUDGETED_EVERY} = 0 THEN {BUDGET_PUSD} END"
        " FROM_SERIES",
    )
    grants_sql = series(
        "g",
        1,
        grants,
        "INSERT INTO grants (id, app_id, token_hash, origin, subject, requests, used, reserved, "
        "max_pusd, spent_pusd, held_pusd, created_at, expires_at, revoked_at) SELECT g, "
        + _app_expr(dialect, "g", apps)
        + f", {random_hex('g')}, 'https://seeded.example', NULL, {REQUESTS}, {used}, 0, "
        f"CASE WHEN g % 2 = 0 THEN {CAP_PUSD} END, {used} * {COST_PUSD}, 0, {created}, "
        f"{created} + 600, CASE WHEN g % 50 = 0 THEN {created} + 60 END FROM_SERIES",
    )
    g_of_n = f"((n / {per_grant}) + 1)"
    started = f"({now} - {span} + (({g_of_n} * {span}) / {grants}))"
    ledger_sql = series(
        "n",
        0,
        ledger - 1,
        "INSERT INTO usage (id, grant_id, app_id, model, status, stream, prompt_tokens, "
        "completion_tokens, hold_pusd, cost_pusd, error, started_at, hold_expires_at, "
        "finished_at, duration_ms, budget_hour) "
        f"SELECT n + 1, {g_of_n}, "
        + _app_expr(dialect, g_of_n, apps)
        + ", 'local/markdown', CASE n % 100 WHEN 0 THEN 'failed' WHEN 1 THEN 'expired' "
        "ELSE 'ok' END, " + ("n % 10 = 0" if pg else "(n % 10 = 0)") + ", 120, 80, "
        f"{HOLD_PUSD}, CASE WHEN n % 100 IN (0, 1) THEN 0 ELSE {COST_PUSD} END, "
        "CASE n % 100 WHEN 0 THEN 'upstream_status' WHEN 1 THEN 'hold_expired' END, "
        f"{started}, {started} + 900, {started} + 1, 40, "
        f"CASE WHEN ({g_of_n} % {apps} + 1) % {BUDGETED_EVERY} = 0 THEN {started} / 3600 END "
        "FROM_SERIES",
    )
    # The budgeted apps' hours still in the window (and the one hour the sweep is due to
    # forget), each holding what its settled calls cost.
    spend_sql = (
        "INSERT INTO app_spend (app_id, hour, spent_pusd, held_pusd) "  # noqa: S608 - constants
        "SELECT app_id, budget_hour, SUM(cost_pusd), 0 FROM usage "
        f"WHERE budget_hour >= {now // 3600 - BUDGET_WINDOW_HOURS - 1} "
        "GROUP BY app_id, budget_hour"
    )
    # The session tokens that made their grant in the last ten minutes: kept until their
    # `exp` (at most 10 minutes on), those past it (and its margin) due to be forgotten.
    sessions_sql = series(
        "t",
        1,
        SESSIONS,
        "INSERT INTO session_uses (app_id, jti, expires_at) SELECT "
        + _app_expr(dialect, "t", apps)
        + f", 'seeded-session-' || t, {now - 600} + (t * 1200) / {SESSIONS} FROM_SERIES",
    )
    # The retry records the sweep has not forgotten yet: the settled calls of the last
    # REPLAY_SECONDS, each with its Idempotency-Key hash, request hash and sealed answer.
    answer = "'sealed-answer-of-a-seeded-call'"
    replays_sql = (
        "INSERT INTO replays (app_id, usage_id, key_hash, request_hash, stream, answer, "  # noqa: S608 - constants
        f"delivered, created_at) SELECT app_id, id, {key_hex('id')}, "
        f"{random_hex('id + 2000000000')}, stream, {answer}, "
        + ("true" if pg else "1")
        + f", started_at FROM usage WHERE status = 'ok' AND started_at > {now - REPLAY_SECONDS}"
    )
    return [apps_sql, grants_sql, ledger_sql, replays_sql, spend_sql, sessions_sql]


def seed_postgres(url: str, *, apps: int, grants: int, ledger: int) -> float:
    """Seed a migrated, empty PostgreSQL database; returns the seconds it took."""
    import psycopg

    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        now = conn.execute("SELECT floor(extract(epoch FROM clock_timestamp()))::bigint")
        now_s = now.fetchone()[0]
        conn.execute("SET session_replication_role = replica")
        conn.execute("SET maintenance_work_mem = '256MB'")
        with conn.transaction():
            for sql in _statements(
                "postgresql", apps=apps, grants=grants, ledger=ledger, now=now_s
            ):
                conn.execute(sql)
            for table in ("grants", "usage"):
                sequence = f"pg_get_serial_sequence('{table}', 'id')"
                conn.execute(f"SELECT setval({sequence}, (SELECT max(id) FROM {table}))")  # noqa: S608
        conn.execute("SET session_replication_role = origin")
        conn.execute("ANALYZE")
    return time.monotonic() - started


def seed_sqlite(path: str, *, apps: int, grants: int, ledger: int) -> float:
    started = time.monotonic()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MB while loading
        now = conn.execute("SELECT CAST(strftime('%s', 'now') AS INTEGER)").fetchone()[0]
        conn.execute("BEGIN")
        for sql in _statements("sqlite", apps=apps, grants=grants, ledger=ledger, now=now):
            conn.execute(sql)
        conn.execute("COMMIT")
        conn.execute("PRAGMA journal_mode=WAL")  # what the app sets on every connection
    finally:
        conn.close()
    return time.monotonic() - started
