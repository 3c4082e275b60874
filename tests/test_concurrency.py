"""Racing a grant: counts and dollars stay exact under concurrency.

Threads wait on a barrier and fire at once over real HTTP, first at one threaded server,
then at four gunicorn worker processes sharing the database (SQLite file or PostgreSQL).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from tests.helpers import chat_body
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.extensions import db

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LONG_DOC = "<p>" + "word " * 300 + "</p>"


def race(url: str, headers: dict[str, str], body: dict, n: int) -> Counter:
    barrier = threading.Barrier(n)

    def one(_: int) -> int:
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            return client.post(
                f"{url}/api/v1/chat/completions", headers=headers, json=body
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gunicorn_workers(app, app_config) -> Iterator[str]:
    """Four gunicorn worker processes serving the test database."""
    port = _free_port()
    env = {
        **os.environ,
        "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
        "SECRET_KEY": app_config["SECRET_KEY"],
        "WATTFARE_PUBLISHABLE_KEY": app_config["WATTFARE_PUBLISHABLE_KEY"],
        "WATTFARE_SECRET_KEY": app_config["WATTFARE_SECRET_KEY"],
        "WATTFARE_ALLOWED_ORIGINS": ",".join(app_config["WATTFARE_ALLOWED_ORIGINS"]),
        "WATTFARE_ENV": "production",
    }
    env.pop("OPENROUTER_API_KEY", None)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--workers",
            "4",
            "--threads",
            "8",
            "--bind",
            f"127.0.0.1:{port}",
            "app:app",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/api/v1/openapi.json", timeout=1)
            break
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(proc.stderr.read().decode()) from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_four_worker_processes_race_a_five_request_grant(
    app, gunicorn_workers, make_grant, api_headers
):
    grant = make_grant(5)
    statuses = race(gunicorn_workers, api_headers(grant), chat_body(), 50)
    assert statuses == Counter({200: 5, 402: 45})
    assert ledger(app)[:4] == (5, 5, 5, 0)
