"""The app started exactly as the Procfile says, on PostgreSQL, as a platform would:

the `release` line on an empty database (its own PostgreSQL schema), then the
`web` line with WEB_CONCURRENCY=4, DATABASE_URL in Heroku's `postgres://` form and no
WATTFARE_ENV (so the Procfile's production default applies). Then the API flow through
it, and 100 requests racing a 10-request grant across the four worker processes.
"""

from __future__ import annotations

import re
import secrets
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from tests.conftest import PG_URL
from tests.helpers import ORIGIN, chat_body, mint_session, race
from tests.procfile import WebProcess, private_schema, procfile_env, run_release
from wattfare_demo.config import database_url
from wattfare_demo.engine.models import Grant, Usage
from wattfare_demo.engine.tokens import sha256_hex

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not PG_URL, reason="set TEST_DATABASE_URL to a PostgreSQL database"),
]


@pytest.fixture
def pg_url() -> Iterator[str]:
    with private_schema(database_url(PG_URL, "")) as url:
        yield url


def grant_ledger(url: str, token: str) -> tuple[int, int, int, int]:
    engine = create_engine(url)
    try:
        with Session(engine) as session:
            grant = session.scalar(select(Grant).where(Grant.token_hash == sha256_hex(token)))
            rows = session.scalar(
                select(func.count()).select_from(Usage).where(Usage.grant_id == grant.id)
            )
            ok = session.scalar(
                select(func.count())
                .select_from(Usage)
                .where(Usage.grant_id == grant.id, Usage.status == "ok")
            )
            return rows, ok, grant.used, grant.reserved
    finally:
        engine.dispose()


def test_procfile_release_then_four_workers_race_a_ten_request_grant(pg_url, keys, tmp_path):
    settings = {
        # Heroku hands out postgres://; the app must accept it as is.
        "DATABASE_URL": "postgres://" + pg_url.split("://", 1)[1],
        "SECRET_KEY": secrets.token_hex(32),
        "WATTFARE_ALLOWED_ORIGINS": ORIGIN,
        **keys,
    }
    env = procfile_env(settings)
    release = run_release(env)  # twice is tested in test_migrations.py
    assert release.returncode == 0, release.stderr

    secret_key = keys["WATTFARE_SECRET_KEY"]
    sessions = []
    tokens = []
    with WebProcess(env, tmp_path, workers=4) as web, httpx.Client(base_url=web.url) as http:
        assert http.get("/healthz").json() == {"status": "ok"}

        def new_grant(requests: int) -> str:
            sessions.append(mint_session(secret_key, requests=requests))  # one grant each
            response = http.post(
                "/api/v1/grants",
                json={"requests": requests},
                headers={"Authorization": f"Bearer {sessions[-1]}"},
            )
            assert response.status_code == 200, response.text
            tokens.append(response.json()["grantToken"])
            return tokens[-1]

        def headers(grant: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {secret_key}", "x-wattfare-grant": grant}

        one = new_grant(1)
        first = http.post("/api/v1/chat/completions", headers=headers(one), json=chat_body())
        assert first.status_code == 200, first.text
        assert first.json()["choices"][0]["message"]["content"]
        assert first.json()["usage"]["completion_tokens"] > 0
        assert first.headers["x-wattfare-grant-remaining"] == "0"
        again = http.post("/api/v1/chat/completions", headers=headers(one), json=chat_body())
        assert again.status_code == 402
        assert again.json()["error"]["reason"] == "exhausted"

        # Behind Heroku's router (the Procfile trusts one proxy): the page's https origin,
        # as the router reports it, is the converter's own, and gets a session token.
        public = "https://my-converter.example"
        behind_router = {
            "Origin": public,
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Host": "my-converter.example",
            "X-Forwarded-For": "203.0.113.9",
        }
        minted = http.post("/api/wattfare-token", json={"requests": 1}, headers=behind_router)
        assert minted.status_code == 200, minted.text
        assert minted.headers["Strict-Transport-Security"] == "max-age=31536000"
        sessions.append(minted.json()["token"])

        ten = new_grant(10)
        statuses = race(web.url, headers(ten), chat_body(), 100)

    assert statuses == Counter({200: 10, 402: 90})
    assert grant_ledger(pg_url, ten) == (10, 10, 10, 0)  # rows, ok rows, used, reserved

    # The access log: one line per request on stdout, with the outcome, no secrets.
    stdout, stderr = web.output()
    chat_lines = [line for line in stdout.splitlines() if "path=/api/v1/chat/completions" in line]
    outcomes = Counter(re.search(r"status=(\d+) .*outcome=(\S+)", x).groups() for x in chat_lines)
    assert outcomes == Counter({("200", "settled"): 11, ("402", "refused:exhausted"): 91})
    assert "path=/api/v1/chat/completions" not in stderr
    for secret in (secret_key, *sessions, settings["SECRET_KEY"], *tokens):
        assert secret not in stdout and secret not in stderr
