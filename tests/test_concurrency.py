"""Racing a grant: counts and dollars stay exact under concurrency.

Threads wait on a barrier and fire at once over real HTTP, first at one threaded server,
then at four gunicorn worker processes sharing the database (SQLite file or PostgreSQL).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from tests.helpers import chat_body
from tests.procfile import WebProcess, procfile_env
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.extensions import db

LONG_DOC = "<p>" + "word " * 300 + "</p>"


def race(url: str, headers: dict[str, str], body: dict, n: int) -> Counter:
    barrier = threading.Barrier(n)

    def one(i: int) -> int:
        # n distinct calls (an identical call still running would count as its retry and
        # wait for it): `user` is passed through, and costs no token on local/markdown.
        distinct = {**body, "user": f"racer-{i}"}
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(
                f"{url}/api/v1/chat/completions", headers=headers, json=distinct
            ).status_code

    with ThreadPoolExecutor(n) as pool:
        return Counter(pool.map(one, range(n)))


def ledger(app) -> tuple[int, int, int, int, int]:
    with app.app_context():
        ok = db.session.scalar(select(func.count()).select_from(Usage).where(Usage.status == "ok"))
        rows = db.session.scalar(select(func.count()).select_from(Usage))
        grant = db.session.scalar(select(Grant))
        db.session.remove()
        return ok, rows, grant.used, grant.reserved, grant.spent_pusd


def hold_for(client, api_headers, make_grant) -> int:
    """The exact cost of one call of the race body (completion cut at 10 tokens)."""
    probe = client.post(
        "/api/v1/chat/completions",
        headers=api_headers(make_grant(1)),
        json=chat_body(LONG_DOC, max_tokens=10),
    ).get_json()["usage"]
    return probe["prompt_tokens"] * 10**6 + probe["completion_tokens"] * 2 * 10**6


def test_fifty_threads_race_a_five_request_grant(app, live_server, make_grant, api_headers):
    grant = make_grant(5)
    statuses = race(live_server.url, api_headers(grant), chat_body(), 50)
    assert statuses == Counter({200: 5, 402: 45})
    assert ledger(app)[:4] == (5, 5, 5, 0)


def test_fifty_threads_race_a_dollar_cap(app, client, live_server, make_grant, api_headers):
    cost = hold_for(client, api_headers, make_grant)
    with app.app_context():
        db.session.execute(db.delete(Usage))
        db.session.execute(db.delete(Grant))
        db.session.commit()
    grant = make_grant(100, max_usd=5 * cost / 10**12)
    statuses = race(live_server.url, api_headers(grant), chat_body(LONG_DOC, max_tokens=10), 50)
    assert statuses == Counter({200: 5, 402: 45})
    ok, rows, used, reserved, spent = ledger(app)
    assert (ok, rows, used, reserved) == (5, 5, 5, 0)
    assert spent == 5 * cost  # exactly the cap, never above it


@pytest.fixture
def gunicorn_workers(app, app_config, tmp_path) -> Iterator[str]:
    """Four gunicorn worker processes serving the test database, started exactly as the
    Procfile's `web` line says (so with its production default and gthread workers)."""
    env = procfile_env(
        {
            "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
            "SECRET_KEY": app_config["SECRET_KEY"],
            "WATTFARE_PUBLISHABLE_KEY": app_config["WATTFARE_PUBLISHABLE_KEY"],
            "WATTFARE_SECRET_KEY": app_config["WATTFARE_SECRET_KEY"],
            "WATTFARE_ALLOWED_ORIGINS": ",".join(app_config["WATTFARE_ALLOWED_ORIGINS"]),
        }
    )
    with WebProcess(env, tmp_path, workers=4) as web:
        yield web.url


def test_four_worker_processes_race_a_five_request_grant(
    app, gunicorn_workers, make_grant, api_headers
):
    grant = make_grant(5)
    statuses = race(gunicorn_workers, api_headers(grant), chat_body(), 50)
    assert statuses == Counter({200: 5, 402: 45})
    assert ledger(app)[:4] == (5, 5, 5, 0)
