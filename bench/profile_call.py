"""Profile the metered call in-process (no HTTP server): where do its milliseconds go?

    .venv/bin/python bench/profile_call.py [--calls 2000] [--database-url URL] [--top 40]
    .venv/bin/python bench/profile_call.py --time     # no profiler: median ms, metered vs bare
    .venv/bin/python bench/profile_call.py --time --daily-budget  # the app has a daily budget

Builds the real app on a fresh SQLite file (or the given database, whose tables it
drops and re-creates), makes grants with the engine's own service function, then runs
`--calls` metered `local/markdown` completions through Flask's test client under
cProfile, after a warm-up. Prints the mean time per call and the top functions by
cumulative time. The same code path gunicorn runs, minus the HTTP parsing.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bare_app import bare  # noqa: E402
from bench.run import METERED_BODY, ORIGIN  # noqa: E402
from wattfare_demo import create_app  # noqa: E402
from wattfare_demo.config import engine_options  # noqa: E402
from wattfare_demo.engine import ensure_configured_app, grants  # noqa: E402
from wattfare_demo.engine.apps import app_for_secret_key, set_daily_budget  # noqa: E402
from wattfare_demo.engine.tokens import new_app_id, new_secret_key  # noqa: E402
from wattfare_demo.extensions import db  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--sort", default="cumulative")
    parser.add_argument("--time", action="store_true", help="time, don't profile")
    parser.add_argument(
        "--daily-budget",
        action="store_true",
        help="give the app a daily budget (one no call reaches): the budgeted path",
    )
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/profile.db"
    app_id = new_app_id()
    secret_key = new_secret_key("test", app_id)
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
            "RATELIMIT_ENABLED": False,
        }
    )
    with app.app_context():
        db.drop_all()
        db.create_all()
    ensure_configured_app(app)
    app.register_blueprint(bare)
    warm = 200
    with app.app_context():
        record = app_for_secret_key(secret_key)
        if args.daily_budget:
            set_daily_budget(record, 10**6 * 10**12)  # a million dollars a day
        tokens = [
            grants.create_grant(
                record, origin=ORIGIN, subject=None, requests=100, max_pusd=None, ttl=3600
            ).token
            for _ in range((args.calls + warm) // 100 + 1)
        ]
        db.session.remove()
    client = app.test_client()

    def call(i: int) -> None:
        response = client.post(
            "/api/v1/chat/completions",
            json=METERED_BODY,
            headers={
                "Authorization": f"Bearer {secret_key}",
                "x-wattfare-grant": tokens[i // 100],
            },
        )
        assert response.status_code == 200, response.get_data(as_text=True)

    for i in range(warm):
        call(i)
    if args.time:
        time_calls(client, call, warm, args.calls)
        return
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for i in range(warm, warm + args.calls):
        call(i)
    profiler.disable()
    elapsed = time.perf_counter() - started
    print(f"{args.calls} calls, {elapsed / args.calls * 1000:.3f} ms per call under cProfile")
    pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.top)


def time_calls(client: FlaskClient, call: Callable[[int], None], first: int, calls: int) -> None:
    """Median wall time of a metered call and of the bare route, in this process."""
    metered, bare_times = [], []
    for i in range(first, first + calls):
        started = time.perf_counter()
        call(i)
        metered.append(time.perf_counter() - started)
        started = time.perf_counter()
        client.post("/bench/bare", json=METERED_BODY)
        bare_times.append(time.perf_counter() - started)
    m, b = statistics.median(metered) * 1000, statistics.median(bare_times) * 1000
    print(f"median ms: metered {m:.3f}, bare {b:.3f}, engine's own cost {m - b:.3f}")


if __name__ == "__main__":
    main()
