"""Profile the metered call in-process (no HTTP server): where do its microseconds go?

    .venv/bin/python bench/profile_call.py --budget    # the per-call budget (docs/benchmarks.md)
    .venv/bin/python bench/profile_call.py --time      # median µs, metered vs bare, no probes
    .venv/bin/python bench/profile_call.py --time --daily-budget   # the app has a daily budget
    .venv/bin/python bench/profile_call.py             # cProfile, top functions
    … --database-url postgresql://…/wattfare_bench     # PostgreSQL (its tables are re-created)

Builds the real app on a fresh SQLite file (or the given database, whose tables it
drops and re-creates, unless `--existing`: then it adds its app to a migrated database,
e.g. the seeded one of bench/scale.py), makes grants with the engine's own service
function, and runs `--calls` metered `local/markdown` completions, each one WSGI call of
the app (what gunicorn makes of a request: the environ is built before the clock starts
and the answer is read to its end), after a warm-up. The request log goes to /dev/null,
written as it would be to gunicorn's stdout.

- `--budget`: probes around each step, hook, statement and commit (bench/budget.py),
  printed as a tree with the median and mean µs per call, beside the same calls without
  probes and the bare endpoint (bench/baselines.py) for the engine's own cost.
- `--time`: the uninstrumented medians only.
- default: cProfile, sorted by `--sort`.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import logging
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from werkzeug.test import EnvironBuilder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.baselines import bare
from bench.budget import aggregate, budget_lines, flat_totals, instrument
from bench.harness import METERED_BODY, ORIGIN
from wattfare_demo import create_app
from wattfare_demo.config import database_url, engine_options
from wattfare_demo.engine import ensure_configured_app, grants
from wattfare_demo.engine.apps import app_for_secret_key, set_daily_budget
from wattfare_demo.engine.tokens import new_app_id, new_secret_key
from wattfare_demo.extensions import db

WARM_UP = 300


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_app(url: str, *, existing: bool, rate_limits: bool) -> tuple[Any, str]:
    app_id = new_app_id()
    secret_key = new_secret_key("test", app_id)
    # At start the app checks its configured keys' app; on a database without tables
    # it says to run `flask db upgrade`. The tables are made just below: no hint needed.
    with _quiet("wattfare_demo.engine"):
        app = create_app(
            {
                "SECRET_KEY": "profile-secret-key-0123456789abcdef0123456789",
                "SQLALCHEMY_DATABASE_URI": url,
                "SQLALCHEMY_ENGINE_OPTIONS": engine_options(url, 5),
                "WATTFARE_ALLOWED_ORIGINS": [ORIGIN],
                "WATTFARE_PUBLISHABLE_KEY": f"pk_test_{app_id}",
                "WATTFARE_SECRET_KEY": secret_key,
                "WATTFARE_UPSTREAM_URL": None,
                "WATTFARE_UPSTREAM_API_KEY": None,
                "RATELIMIT_ENABLED": rate_limits,
                "WATTFARE_APP_RATE_LIMIT_CHAT": "1000000/minute",
            }
        )
    if not existing:
        with app.app_context():
            db.drop_all()
            db.create_all()
    ensure_configured_app(app)
    app.register_blueprint(bare)
    return app, secret_key


def make_grants(app: Any, secret_key: str, calls: int, *, daily_budget: bool = False) -> list[str]:
    with app.app_context():
        record = app_for_secret_key(secret_key)
        if daily_budget:  # one no call reaches: the budgeted path, never refused
            set_daily_budget(record, 10**6 * 10**12)  # a million dollars a day
        tokens = [
            grants.create_grant(
                record, origin=ORIGIN, subject=None, requests=100, max_pusd=None, ttl=3600
            ).token
            for _ in range(calls // 100 + 1)
        ]
        db.session.remove()
    return tokens


class Caller:
    """One WSGI call of the app per request, as gunicorn makes it."""

    def __init__(self, app: Any, secret_key: str, tokens: list[str]) -> None:
        self.app = app
        self.secret_key = secret_key
        self.tokens = tokens
        self.n = 0

    def metered_environ(self) -> dict[str, Any]:
        token = self.tokens[self.n // 100]
        self.n += 1
        return EnvironBuilder(
            path="/api/v1/chat/completions",
            method="POST",
            json=METERED_BODY,
            headers={"Authorization": f"Bearer {self.secret_key}", "x-wattfare-grant": token},
        ).get_environ()

    @staticmethod
    def bare_environ() -> dict[str, Any]:
        return EnvironBuilder(path="/bench/bare", method="POST", json=METERED_BODY).get_environ()

    def run(self, environ: dict[str, Any]) -> int:
        status: list[str] = []

        def start_response(value: str, _headers: Any, _exc: Any = None) -> Callable[..., Any]:
            status.append(value)
            return lambda _data: None

        body = self.app(environ, start_response)
        try:
            for _ in body:
                pass
        finally:
            close = getattr(body, "close", None)
            if close:
                close()
        code = int(status[0].split()[0])
        if code != 200:
            raise RuntimeError(f"{environ['PATH_INFO']} answered {status[0]}")
        return code


def timed(caller: Caller, calls: int) -> tuple[list[float], list[float]]:
    """Wall µs of metered and bare calls, alternated, no probes."""
    metered, bare_times = [], []
    for _ in range(calls):
        environ = caller.metered_environ()
        started = time.perf_counter_ns()
        caller.run(environ)
        metered.append((time.perf_counter_ns() - started) / 1000)
        environ = caller.bare_environ()
        started = time.perf_counter_ns()
        caller.run(environ)
        bare_times.append((time.perf_counter_ns() - started) / 1000)
    return metered, bare_times


def budget(caller: Caller, calls: int, label: str, blocks: int = 10) -> list[str]:
    """The report's lines; run it with stdout on /dev/null (the request log writes there).

    Calls without probes and with them alternate in `blocks` blocks, so both see the
    same machine: on a shared one, the load moves within a minute.
    """
    metered: list[float] = []
    bare_times: list[float] = []
    roots = []
    missing: list[str] = []
    per_block = max(calls // blocks, 1)
    for _ in range(blocks):
        m_block, b_block = timed(caller, per_block)
        metered += m_block
        bare_times += b_block
        probes = instrument(caller.app)
        missing = probes.missing
        try:
            for _ in range(per_block):
                environ = caller.metered_environ()
                with probes.recorder.call() as root:
                    caller.run(environ)
                roots.append(root)
        finally:
            probes.remove()
    result = aggregate(roots)
    instrumented = statistics.median(result.inclusive[("WSGI call",)]) / 1000
    m, b = statistics.median(metered), statistics.median(bare_times)
    lines = [
        f"## Per-call budget: {label}, {len(roots)} calls with probes and as many without, "
        f"load {os.getloadavg()[0]:.2f}",
        "",
        f"- metered call, no probes: median **{m:,.0f} µs** "
        f"(mean {statistics.fmean(metered):,.0f})",
        f"- bare endpoint, no probes: median **{b:,.0f} µs**",
        f"- engine's own cost in-process: **{m - b:,.0f} µs**",
        f"- metered call with the probes: median {instrumented:,.0f} µs",
    ]
    if any(result.round_trips):
        trips = statistics.median(result.round_trips)
        sent = "statements, BEGIN, COMMIT, ROLLBACK sent"
        lines.append(f"- round trips to PostgreSQL per call ({sent}): {trips:g}")
    for kind, us in flat_totals(result).items():
        lines.append(f"- {kind}, all of them: {us:,.0f} µs a call (mean)")
    if missing:
        lines.append(f"- probes whose target is gone (time in the parent's own): {missing}")
    return [*lines, "", *budget_lines(result)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument(
        "--existing", action="store_true", help="use the database's tables as they are"
    )
    parser.add_argument("--rate-limits", action="store_true", help="as in production")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--callees", help="also print what the functions matching this call")
    parser.add_argument("--time", action="store_true", help="time, don't profile")
    parser.add_argument("--budget", action="store_true", help="the per-call budget")
    parser.add_argument(
        "--daily-budget", action="store_true", help="give the app a daily budget it never reaches"
    )
    args = parser.parse_args()
    url = database_url(args.database_url, "") if args.database_url else None
    url = url or f"sqlite:///{tempfile.mkdtemp()}/profile.db"
    app, secret_key = build_app(url, existing=args.existing, rate_limits=args.rate_limits)
    label = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    tokens = make_grants(
        app, secret_key, 3 * args.calls + WARM_UP + 200, daily_budget=args.daily_budget
    )
    caller = Caller(app, secret_key, tokens)
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        for _ in range(WARM_UP):
            caller.run(caller.metered_environ())
            caller.run(caller.bare_environ())
    if args.time:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            metered, bare_times = timed(caller, args.calls)
        m, b = statistics.median(metered), statistics.median(bare_times)
        print(f"median µs: metered {m:,.0f}, bare {b:,.0f}, engine's own cost {m - b:,.0f}")
        return
    if args.budget:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            lines = budget(caller, args.calls, label)
        print("\n".join(lines))
        return
    profiler = cProfile.Profile()
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        started = time.perf_counter()
        profiler.enable()
        for _ in range(args.calls):
            caller.run(caller.metered_environ())
        profiler.disable()
        elapsed = time.perf_counter() - started
    print(f"{args.calls} calls, {elapsed / args.calls * 1000:.3f} ms per call under cProfile")
    stats = pstats.Stats(profiler).sort_stats(args.sort)
    stats.print_stats(args.top)
    if args.callees:
        stats.print_callees(args.callees)


if __name__ == "__main__":
    main()
