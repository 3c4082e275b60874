"""The engine at scale: 1,000,000 grants and 5,000,000 ledger rows beside an empty database.

    .venv/bin/python bench/scale.py                        # both backends (seeding: minutes)
    .venv/bin/python bench/scale.py --grants 20000 --ledger 100000 --rounds 2   # a try-out

For each backend, in one run:

1. A seeded database (bench/seed.py: bulk SQL run by the database, on the schema
   `flask db upgrade` makes), kept between runs and re-used while it holds at least
   the asked-for rows (`--reseed` to start again), and an empty one, freshly migrated.
2. The plans. In this process, on the seeded database, the real code runs one of each
   hot path (a metered call, with and without an Idempotency-Key, its replay, the status
   call, a call refused by a stale hold and then let through, an exhausted grant's 402,
   and `flask wattfare sweep`) while SQLAlchemy's `before_cursor_execute` event records
   every statement sent (bench/statements.py). Each is then EXPLAINed with its own
   parameters and marked: on an index, or reading a whole table.
3. The sweep, bounded or not: `--stale` stale holds (what crashed workers leave: a
   pending ledger row past its expiry and the grant's counters) are planted in both
   databases and `flask wattfare sweep` is timed on each, three times.
4. The engine's cost on both at once, each database behind its own Procfile gunicorn:
   rounds of wrk at 1 connection (bare endpoint, metered completion, status call) that
   alternate which database goes first; engine cost = p50(metered) - p50(bare) on the
   same server, and its ratio seeded / empty (issue 15: within 10 %), with the CPU the
   workers (and PostgreSQL) spent per call beside it.
5. The same cost in this process, where the two can be compared call by call: metered
   calls and bare calls (one WSGI call each, as bench/profile_call.py makes them)
   alternate between the empty and the seeded database, so both see the same machine
   at the same moment. On a shared machine this is the sharpest of the comparisons.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import seed
from bench.baselines import bare
from bench.harness import (
    METERED_BODY,
    Checks,
    Engine,
    GrantPool,
    Load,
    Server,
    Target,
    commit_latency,
    ensure_wrk,
    load,
    machine,
    make_target,
    measured,
    median,
    postgres_exists,
    postgres_version,
    recreate_postgres,
    served,
    with_database_name,
    wrk,
)
from bench.statements import Plan, Statement, capture, explain

PG_SCALE_DEFAULT = "postgresql://postgres@127.0.0.1:5432/wattfare_scale"
SQLITE_SCALE_DEFAULT = str(Path(tempfile.gettempdir()) / "wattfare_scale.db")
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
COST_TOLERANCE = 1.10  # issue 15: the engine cost within 10 % of an empty database's


@dataclass
class InProcess:
    calls: int
    metered_us: dict[str, float]
    bare_us: dict[str, float]

    def cost(self, kind: str) -> float:
        return self.metered_us[kind] - self.bare_us[kind]

    @property
    def ratio(self) -> float:
        return self.cost("seeded") / self.cost("empty")


@dataclass
class Db:
    """One database of a backend (empty or seeded), its app and its server."""

    kind: str  # "empty" | "seeded"
    target: Target
    engine: Engine
    server: Server | None = None
    pool: GrantPool | None = None
    status_grant: str = ""
    rounds: list[dict[str, Any]] = field(default_factory=list)
    sweeps: list[float] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)


# --- the databases --------------------------------------------------------------------------


def counts(engine: Engine) -> dict[str, int]:
    return {
        "apps": engine.scalar("SELECT count(*) FROM apps"),
        "grants": engine.scalar("SELECT count(*) FROM grants"),
        "ledger": engine.scalar("SELECT count(*) FROM usage"),
    }


def seeded_url(backend: str, args: argparse.Namespace) -> str:
    """The seeded database's URL, seeding it first unless it already holds enough rows."""
    if backend == "postgresql":
        url = args.pg_url
        exists = postgres_exists(url)
    else:
        url = f"sqlite:///{args.sqlite_path}"
        exists = Path(args.sqlite_path).exists()
    if exists and not args.reseed:
        have = _rows_in(backend, url)
        if have["grants"] >= args.grants and have["ledger"] >= args.ledger:
            print(f"[{backend}] re-using the seeded database ({have})", flush=True)
            return url
    print(f"[{backend}] seeding {args.grants:,} grants, {args.ledger:,} ledger rows…", flush=True)
    if backend == "postgresql":
        recreate_postgres(url)
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(args.sqlite_path + suffix).unlink(missing_ok=True)
    make_target(f"{backend}-seed", backend, url)  # migrates it (flask db upgrade)
    sizes = {"apps": args.apps, "grants": args.grants, "ledger": args.ledger}
    if backend == "postgresql":
        seconds = seed.seed_postgres(url, **sizes)
    else:
        seconds = seed.seed_sqlite(args.sqlite_path, **sizes)
    print(f"[{backend}] seeded in {seconds:.0f} s", flush=True)
    return url


def _rows_in(backend: str, url: str) -> dict[str, int]:
    if backend == "postgresql":
        import psycopg

        with psycopg.connect(url) as conn:
            grants = conn.execute("SELECT count(*) FROM grants").fetchone()[0]
            ledger = conn.execute("SELECT count(*) FROM usage").fetchone()[0]
    else:
        conn = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            grants = conn.execute("SELECT count(*) FROM grants").fetchone()[0]
            ledger = conn.execute("SELECT count(*) FROM usage").fetchone()[0]
        finally:
            conn.close()
    return {"grants": grants, "ledger": ledger}


def plant_stale_holds(engine: Engine, grant_ids: list[int], hold_pusd: int = 400_000_000) -> None:
    """What a worker that died mid-call leaves: a hold on the grant, a pending ledger row
    whose hold expired a while ago. Written in SQL, as no API call can leave one."""
    from sqlalchemy import text

    from wattfare_demo.extensions import db

    with engine.flask.app_context():
        now = db.session.execute(text("SELECT max(started_at) FROM usage")).scalar() or 0
        now = max(now, int(time.time()))
        for grant_id in grant_ids:
            db.session.execute(
                text(
                    "UPDATE grants SET reserved = reserved + 1, held_pusd = held_pusd + :h "
                    "WHERE id = :g"
                ),
                {"h": hold_pusd, "g": grant_id},
            )
            db.session.execute(
                text(
                    "INSERT INTO usage (grant_id, app_id, model, status, stream, prompt_tokens, "
                    "completion_tokens, hold_pusd, cost_pusd, started_at, hold_expires_at) "
                    "SELECT id, app_id, 'local/markdown', 'pending', :f, 0, 0, :h, 0, :t0, :t1 "
                    "FROM grants WHERE id = :g"
                ),
                {"f": False, "h": hold_pusd, "t0": now - 2000, "t1": now - 1000, "g": grant_id},
            )
        db.session.commit()
        db.session.remove()


def stale_candidates(engine: Engine, count: int) -> list[int]:
    """The newest grants with room for one more call in flight."""
    from sqlalchemy import text

    from wattfare_demo.extensions import db

    with engine.flask.app_context():
        ids = (
            db.session.execute(
                text(
                    "SELECT id FROM grants WHERE reserved = 0 AND revoked_at IS NULL "
                    "AND used + 1 < requests ORDER BY id DESC LIMIT :n"
                ),
                {"n": count},
            )
            .scalars()
            .all()
        )
        db.session.remove()
    return list(ids)


def grant_id(engine: Engine, token: str) -> int:
    return int(engine.grant_row(token)["id"])


# --- the plans ------------------------------------------------------------------------------


def hot_paths(db_: Db) -> list[Statement]:
    """Run each hot path once in this process, recording every statement it sends."""
    engine, flask_app = db_.engine, db_.engine.flask
    metered, keyed, status, swept, budgeted = engine.create_grants(5, 100)
    (one,) = engine.create_grants(1, 1)
    # Two stale holds: one the refused call releases, one left for the sweep.
    plant_stale_holds(engine, [grant_id(engine, one), grant_id(engine, swept)])
    client = flask_app.test_client()
    sk = db_.target.secret_key
    statements: list[Statement] = []

    def call(grant: str, **headers: str) -> int:
        response = client.post(
            "/api/v1/chat/completions",
            json=METERED_BODY,
            headers={"Authorization": f"Bearer {sk}", "x-wattfare-grant": grant, **headers},
        )
        return response.status_code

    steps: list[tuple[str, Any, int]] = [
        ("metered call", lambda: call(metered), 200),
        ("metered call, Idempotency-Key", lambda: call(keyed, **{"Idempotency-Key": "k-1"}), 200),
        ("the same call again (replay)", lambda: call(keyed, **{"Idempotency-Key": "k-1"}), 200),
        (
            "status call",
            lambda: (
                client.get(
                    "/api/v1/grant",
                    headers={"Authorization": f"Bearer {sk}", "x-wattfare-grant": status},
                ).status_code
            ),
            200,
        ),
        ("metered call, app with a daily budget", lambda: call(budgeted), 200),
        ("refused by a stale hold, released, let through", lambda: call(one), 200),
        ("exhausted grant (402)", lambda: call(one), 402),
        ("sweep (flask wattfare sweep)", lambda: _sweep(flask_app), 0),
    ]
    with contextlib.redirect_stdout(io.StringIO()):  # the request log lines
        for step, run, expected in steps:
            # A budget is set for its step only, and not among the statements recorded.
            budget = _daily_budget(flask_app, sk) if "daily budget" in step else None
            with budget or contextlib.nullcontext(), capture(flask_app, step, statements):
                got = run()
            if got != expected:
                raise RuntimeError(f"{step}: expected {expected}, got {got}")
    return statements


@contextlib.contextmanager
def _daily_budget(flask_app: Any, secret_key: str) -> Iterator[None]:
    """The app has a daily budget meanwhile (its reservations then take a budget hold)."""
    from wattfare_demo.engine.apps import app_for_secret_key, set_daily_budget

    def budget(pusd: int | None) -> None:
        with flask_app.app_context():
            app = app_for_secret_key(secret_key)
            assert app is not None
            set_daily_budget(app, pusd)

    budget(10**15)  # $1,000 a day
    try:
        yield
    finally:
        budget(None)


def _sweep(flask_app: Any) -> int:
    result = flask_app.test_cli_runner().invoke(args=["wattfare", "sweep"])
    return result.exit_code


def timed_sweep(db_: Db, stale: int) -> tuple[float, int]:
    """Plant `stale` stale holds, then time `flask wattfare sweep`: (seconds, released)."""
    ids = stale_candidates(db_.engine, stale)
    plant_stale_holds(db_.engine, ids)
    runner = db_.engine.flask.test_cli_runner()
    started = time.perf_counter()
    result = runner.invoke(args=["wattfare", "sweep"])
    seconds = time.perf_counter() - started
    released = re.search(r"Released (\d+) stale", result.output)
    return seconds, int(released.group(1)) if released else -1


# --- the cost -------------------------------------------------------------------------------


def in_process(dbs: list[Db], calls: int) -> InProcess:
    """Metered and bare calls alternating between the databases, call by call."""
    from bench.profile_call import Caller

    callers = {}
    for d in dbs:
        tokens = d.engine.create_grants(calls // 50 + 4, 100)
        callers[d.kind] = Caller(d.engine.flask, d.target.secret_key, tokens)
    times: dict[str, dict[str, list[float]]] = {d.kind: {"metered": [], "bare": []} for d in dbs}
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for i in range(calls + 100):
            order = dbs if i % 2 == 0 else dbs[::-1]
            for d in order:
                caller = callers[d.kind]
                for kind, environ in (
                    ("metered", caller.metered_environ()),
                    ("bare", caller.bare_environ()),
                ):
                    started = time.perf_counter_ns()
                    caller.run(environ)
                    if i >= 100:  # the first 100: warm-up
                        times[d.kind][kind].append((time.perf_counter_ns() - started) / 1000)
    return InProcess(
        calls,
        {k: median(v["metered"]) for k, v in times.items()},
        {k: median(v["bare"]) for k, v in times.items()},
    )


def measure_round(db_: Db, wrk_path: str, seconds: float, round_no: int) -> dict[str, Load]:
    """Bare endpoint, metered call, status call: wrk at 1 connection, with CPU per call."""
    assert db_.server and db_.pool
    server, base, target = db_.server, db_.server.base, db_.target
    grants = db_.pool.for_calls(2500 * seconds, 1)
    runs: dict[str, dict[str, Any]] = {
        "bare": {"url": f"{base}/bench/bare", "body": METERED_BODY},
        "metered": {
            "url": f"{base}/api/v1/chat/completions",
            "body": METERED_BODY,
            "auth": target.secret_key,
            "grant_lines": grants,
        },
        "status": {
            "url": f"{base}/api/v1/grant",
            "method": "GET",
            "auth": target.secret_key,
            "grant_lines": [db_.status_grant],
            "uses": 10**9,
        },
    }
    out: dict[str, Load] = {}
    for name, options in runs.items():
        url = options.pop("url")
        out[name] = measured(
            server,
            target.database_url,
            lambda url=url, options=options: wrk(
                wrk_path, url, target.workdir, connections=1, seconds=seconds, **options
            ),
        )
    db_.rounds.append(
        {
            "round": round_no + 1,
            **{k: asdict(v) for k, v in out.items()},
            "cost_p50_ms": round(out["metered"].p50_ms - out["bare"].p50_ms, 3),
            "cpu_cost_us": round(_cpu(out["metered"]) - _cpu(out["bare"]), 1),
        }
    )
    return out


def _cpu(result: Load) -> float:
    """CPU per call, µs: the workers' and (PostgreSQL) the database server's."""
    return (result.worker_cpu_us_per_call or 0) + (result.database_cpu_us_per_call or 0)


# --- report ---------------------------------------------------------------------------------


def plan_lines(backend: str, plans: list[Plan]) -> list[str]:
    lines = [
        f"### {NAMES[backend]}: every statement of the hot paths, on the seeded database",
        "",
        "| statement | sent by | plan | on an index |",
        "|---|---|---|---|",
    ]
    for plan in plans:
        text = "<br>".join(line.replace("|", "\\|") for line in plan.lines)
        mark = "✓" if plan.indexed else "✗ **reads a whole table or index**"
        steps = "; ".join(plan.steps)
        lines.append(f"| `{plan.statement.summary}` | {steps} | {text} | {mark} |")
    return lines


def cost_lines(backend: str, empty: Db, seeded: Db, local: InProcess, checks: Checks) -> list[str]:
    def m(db_: Db, key: str, field_: str = "p50_ms") -> float:
        return median([r[key][field_] for r in db_.rounds])

    ratios = [
        s["cost_p50_ms"] / e["cost_p50_ms"]
        for e, s in zip(empty.rounds, seeded.rounds, strict=True)
        if e["cost_p50_ms"] > 0
    ]
    ratio = median(ratios)
    checks.add(
        f"{NAMES[backend]}: engine cost seeded/empty within 10 % (in-process, call by call)",
        local.ratio <= COST_TOLERANCE,
    )
    status_ratio = m(seeded, "status") / m(empty, "status")
    cpu_e = [r["cpu_cost_us"] for r in empty.rounds]
    cpu_s = [r["cpu_cost_us"] for r in seeded.rounds]
    cpu_ratios = [s / e for e, s in zip(cpu_e, cpu_s, strict=True) if e > 0]
    cpu_ratio = median(cpu_ratios)
    sweep_e, sweep_s = median(empty.sweeps), median(seeded.sweeps)
    return [
        f"### {NAMES[backend]}: empty vs {seeded.rows['grants']:,} grants and "
        f"{seeded.rows['ledger']:,} ledger rows (medians of {len(seeded.rounds)} rounds)",
        "",
        "| 1 connection | empty | seeded | seeded / empty |",
        "|---|---:|---:|---:|",
        f"| bare endpoint p50 | {m(empty, 'bare'):.2f} ms | {m(seeded, 'bare'):.2f} ms | |",
        f"| metered call p50 | {m(empty, 'metered'):.2f} ms | {m(seeded, 'metered'):.2f} ms | |",
        f"| **engine cost** p50(metered) - p50(bare) | "
        f"+{median([r['cost_p50_ms'] for r in empty.rounds]):.2f} ms | "
        f"+{median([r['cost_p50_ms'] for r in seeded.rounds]):.2f} ms | "
        f"**{ratio:.2f}** ({min(ratios):.2f} to {max(ratios):.2f}) |",
        "| **CPU per metered call above the bare endpoint's** (workers"
        + (" + PostgreSQL" if backend == "postgresql" else "")
        + f") | {median(cpu_e):,.0f} µs | {median(cpu_s):,.0f} µs | **{cpu_ratio:.2f}** "
        f"({min(cpu_ratios):.2f} to {max(cpu_ratios):.2f}) |",
        f"| metered call p99 | {m(empty, 'metered', 'p99_ms'):.2f} ms | "
        f"{m(seeded, 'metered', 'p99_ms'):.2f} ms | |",
        f"| status call (GET /api/v1/grant) p50 | {m(empty, 'status'):.2f} ms | "
        f"{m(seeded, 'status'):.2f} ms | {status_ratio:.2f} |",
        f"| **in this process, call by call** ({local.calls:,} each): engine cost "
        f"median(metered) - median(bare) | +{local.cost('empty'):,.0f} µs | "
        f"+{local.cost('seeded'):,.0f} µs | **{local.ratio:.2f}** "
        f"{'✓' if local.ratio <= COST_TOLERANCE else '✗'} ≤ 1.10 |",
        f"| `flask wattfare sweep`, {seeded.rows.get('stale', 0):,} stale holds | "
        f"{sweep_e * 1000:,.0f} ms | {sweep_s * 1000:,.0f} ms | "
        f"{sweep_s / sweep_e:.1f} |",
    ]


# --- main -----------------------------------------------------------------------------------


def run_backend(backend: str, args: argparse.Namespace, wrk_path: str) -> dict[str, Any]:
    checks = Checks()
    url = seeded_url(backend, args)
    if backend == "postgresql":
        empty_url = recreate_postgres(with_database_name(args.pg_url, "_empty"))
    else:
        empty_url = None  # a new SQLite file
    dbs = {}
    for kind, database_url in (("empty", empty_url), ("seeded", url)):
        target = make_target(f"{backend}-{kind}", backend, database_url)
        dbs[kind] = Db(kind, target, Engine(target))
        dbs[kind].engine.flask.register_blueprint(bare)  # for the in-process comparison
    empty, seeded = dbs["empty"], dbs["seeded"]
    with ExitStack() as stack:
        for db_ in dbs.values():
            stack.callback(db_.engine.dispose)
        seeded.rows = counts(seeded.engine)
        empty.rows = counts(empty.engine)
        print(f"[{backend}] capturing and explaining the hot statements…", flush=True)
        statements = hot_paths(seeded)
        plans = explain(seeded.engine.flask, statements)
        hot = [p for p in plans if any(not step.startswith("sweep") for step in p.steps)]
        checks.add(
            f"{NAMES[backend]}: every hot statement on an index", all(p.indexed for p in hot)
        )
        sweep_plans = [p for p in plans if any(step.startswith("sweep") for step in p.steps)]
        checks.add(
            f"{NAMES[backend]}: the sweep's statements on an index",
            all(p.indexed for p in sweep_plans),
        )
        # The sweep, timed on both with the same number of stale holds. The empty one
        # gets grants to hold first.
        empty.engine.create_grants(args.stale, 100)
        for _ in range(3):
            for db_ in (empty, seeded):
                seconds, released = timed_sweep(db_, args.stale)
                db_.sweeps.append(seconds)
                checks.add(
                    f"{NAMES[backend]} {db_.kind}: the sweep released the {args.stale} holds",
                    released == args.stale,
                )
        seeded.rows["stale"] = args.stale
        print(
            f"[{backend}] sweep: empty {median(empty.sweeps) * 1000:.0f} ms, "
            f"seeded {median(seeded.sweeps) * 1000:.0f} ms",
            flush=True,
        )
        for db_ in dbs.values():
            db_.server = stack.enter_context(served(db_.target))
            db_.pool = GrantPool(db_.engine)
            (db_.status_grant,) = db_.engine.create_grants(1, 100)
            measure_round(db_, wrk_path, 2, -1)  # warm-up: imports, pools, caches
            db_.rounds.clear()
        print(f"[{backend}] in this process, call by call…", flush=True)
        local = in_process([empty, seeded], args.calls)
        commits = commit_latency(url) if backend == "postgresql" else None
        for round_no in range(args.rounds):
            order = [empty, seeded] if round_no % 2 == 0 else [seeded, empty]
            for db_ in order:
                out = measure_round(db_, wrk_path, args.duration, round_no)
                checks.add(
                    f"{NAMES[backend]} {db_.kind} round {round_no + 1}: every call 200",
                    out["metered"].clean and out["status"].clean and out["bare"].clean,
                )
            print(
                f"[{backend}] round {round_no + 1}/{args.rounds}, load {load()}: cost empty "
                f"+{empty.rounds[-1]['cost_p50_ms']:.2f} ms, seeded "
                f"+{seeded.rounds[-1]['cost_p50_ms']:.2f} ms",
                flush=True,
            )
        for db_ in dbs.values():
            checks.add(
                f"{NAMES[backend]} {db_.kind}: no hold left pending", db_.engine.drain() == 0
            )
    lines = [
        *plan_lines(backend, plans),
        "",
        *cost_lines(backend, empty, seeded, local, checks),
        "",
    ]
    if commits:
        lines.append(
            f"- one-row INSERT + COMMIT on this PostgreSQL before the rounds, ms: {commits}"
        )
    lines += [line.replace("- ", f"- {NAMES[backend]} ", 1) for line in checks.lines()]
    return {
        "lines": lines,
        "checks": checks,
        "plans": [
            {
                "steps": p.steps,
                "sql": p.statement.sql,
                "plan": p.lines,
                "indexed": p.indexed,
            }
            for p in plans
        ],
        "in_process": asdict(local),
        "empty": {"rows": empty.rows, "rounds": empty.rounds, "sweeps": empty.sweeps},
        "seeded": {"rows": seeded.rows, "rounds": seeded.rounds, "sweeps": seeded.sweeps},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--grants", type=int, default=1_000_000)
    parser.add_argument("--ledger", type=int, default=5_000_000)
    parser.add_argument("--apps", type=int, default=1000, help="seeded apps the grants spread over")
    parser.add_argument("--stale", type=int, default=1000, help="stale holds for the sweep")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000, help="in-process calls per database")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--reseed", action="store_true", help="seed again even if big enough")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("BENCH_SCALE_DATABASE_URL", PG_SCALE_DEFAULT),
        help="the seeded database (BENCH_SCALE_DATABASE_URL); the empty one is <name>_empty. "
        "Both may be DROPped and re-created.",
    )
    parser.add_argument(
        "--sqlite-path",
        default=os.environ.get("BENCH_SCALE_SQLITE", SQLITE_SCALE_DEFAULT),
        help="the seeded SQLite file (BENCH_SCALE_SQLITE)",
    )
    parser.add_argument("--out", default=None, help="write every number here (JSON)")
    args = parser.parse_args()
    started = time.monotonic()
    wrk_path = ensure_wrk()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    info = machine()
    if "postgresql" in backends:
        info["postgresql"] = postgres_version(args.pg_url)
    print(json.dumps(info, indent=2), flush=True)
    results = {backend: run_backend(backend, args, wrk_path) for backend in backends}
    print()
    for result in results.values():
        print("\n".join(result["lines"]))
        print()
    print(f"({time.monotonic() - started:.0f} s, load {load()} at the end)")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "machine": info,
                    "args": vars(args),
                    "results": {
                        b: {k: v for k, v in r.items() if k not in ("lines", "checks")}
                        | {"checks": r["checks"].results}
                        for b, r in results.items()
                    },
                },
                indent=2,
                default=str,
            )
        )
    # 1 if any check failed: a call that was not 200, a hold left pending, the sweep's
    # count, the seeded/empty cost ratio, or a statement off its index.
    sys.exit(1 if any(r["checks"].failed for r in results.values()) else 0)


if __name__ == "__main__":
    main()
