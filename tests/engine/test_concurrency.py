"""Racing a grant, and an app's daily budget: counts and dollars stay exact under
concurrency.

Threads wait on a barrier and fire at once over real HTTP, first at one threaded server,
then at four gunicorn worker processes sharing the database (SQLite file or PostgreSQL),
whose access log (asked for with GUNICORN_CMD_ARGS, as a deploy may) shows that more
than one of them served the race.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from tests.helpers import chat_body, race, race_each
from tests.procfile import WebProcess, procfile_env
from wattfare_demo.engine import grants
from wattfare_demo.engine.apps import app_for_secret_key, set_daily_budget
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.extensions import db

LONG_DOC = "<p>" + "word " * 300 + "</p>"


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


# gunicorn's own access log, which the Procfile's config leaves off: the pid of the
# worker that served each request, its status and path.
ACCESS_LOG = "--access-logfile - --access-logformat 'served-by=%(p)s %(s)s %(U)s'"
# A gthread worker accepts every connection it is woken for, so a worker that wins the
# first wake-up can take a whole 50-call race while the other three sleep (it did, once,
# in CI). Capped at 10 connections each, no worker can hold more than a fifth of a race
# at once: the rest wait in the listen backlog, where the idle workers take them.
SPREAD = "--worker-connections 10"


@pytest.fixture
def gunicorn_workers(app, app_config, tmp_path) -> Iterator[WebProcess]:
    """Four gunicorn worker processes serving the test database, started exactly as the
    Procfile's `web` line says (so with its production default and gthread workers)."""
    env = procfile_env(
        {
            "DATABASE_URL": app_config["SQLALCHEMY_DATABASE_URI"],
            "SECRET_KEY": app_config["SECRET_KEY"],
            "WATTFARE_PUBLISHABLE_KEY": app_config["WATTFARE_PUBLISHABLE_KEY"],
            "WATTFARE_SECRET_KEY": app_config["WATTFARE_SECRET_KEY"],
            "WATTFARE_ALLOWED_ORIGINS": ",".join(app_config["WATTFARE_ALLOWED_ORIGINS"]),
            "GUNICORN_CMD_ARGS": f"{ACCESS_LOG} {SPREAD}",
        }
    )
    with WebProcess(env, tmp_path, workers=4) as web:
        yield web


def workers_that_served(web: WebProcess, path: str = "/api/v1/chat/completions") -> set[str]:
    stdout, _ = web.output()
    return set(re.findall(rf"served-by=<(\d+)> \d+ {re.escape(path)}", stdout))


def test_four_worker_processes_race_a_five_request_grant(
    app, gunicorn_workers, make_grant, api_headers
):
    grant = make_grant(5)
    statuses = race(gunicorn_workers.url, api_headers(grant), chat_body(), 50)
    assert statuses == Counter({200: 5, 402: 45})
    assert ledger(app)[:4] == (5, 5, 5, 0)
    # A race between processes, not threads of one: more than one worker served it.
    assert len(workers_that_served(gunicorn_workers)) > 1


def test_four_worker_processes_race_the_apps_daily_budget(
    app, client, gunicorn_workers, make_grant, api_headers
):
    """50 calls at once, each on a grant of its own (so no grant's row lock orders them):
    only the app's budget stands between them and the operator's upstream key."""
    body = chat_body(LONG_DOC, max_tokens=10)  # cut at 10 tokens: costs exactly its hold
    cost = hold_for(client, api_headers, make_grant)
    secret_key = app.config["WATTFARE_SECRET_KEY"]
    with app.app_context():
        set_daily_budget(app_for_secret_key(secret_key), 5 * cost)
        db.session.remove()
    each = [api_headers(make_grant(1)) for _ in range(50)]
    answers = race_each(gunicorn_workers.url, each, body)
    assert Counter(status for status, _ in answers) == Counter({200: 5, 402: 45})
    assert {a["error"]["reason"] for status, a in answers if status == 402} == {"app_budget"}
    with app.app_context():
        spent, held = grants.budget_window_spend(secret_key.split("_")[2])
        settled = db.session.scalars(select(Usage.cost_pusd).where(Usage.status == "ok")).all()
        db.session.remove()
    assert (spent, held) == (5 * cost, 0)  # the ceiling exactly, never past it
    assert len(settled) == 1 + 5 and sum(settled) == 6 * cost  # the probe, and the five
    assert len(workers_that_served(gunicorn_workers)) > 1
