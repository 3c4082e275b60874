"""The sweep (engine/sweep.py): every step runs, and the Procfile's web process sweeps by
itself, with several workers, without anyone running a command."""

from __future__ import annotations

import secrets
import sqlite3
import time

import httpx
from sqlalchemy import func, select

from tests.helpers import ORIGIN, chat_body, mint_session, plant_stale_hold
from tests.procfile import WebProcess, procfile_env, run_release
from wattfare_demo.engine import grants, sweep
from wattfare_demo.engine.idempotency import REPLAY_TTL
from wattfare_demo.engine.models import Grant, Replay, Usage
from wattfare_demo.extensions import db


def test_every_step_runs_and_says_what_it_did(app, client, make_grant, api_headers, secret_key):
    token = make_grant(2)
    keyed = {**api_headers(token), "Idempotency-Key": "k1"}
    assert (
        client.post("/api/v1/chat/completions", headers=keyed, json=chat_body()).status_code == 200
    )
    with app.app_context():
        plant_stale_hold(secret_key, token)
        db.session.execute(db.update(Replay).values(created_at=Replay.created_at - REPLAY_TTL))
        db.session.commit()
        done = sweep.sweep()
        assert [(step.name, count) for step, count in done] == [
            ("holds", 1),
            ("replays", 1),
            ("sessions", 0),  # the grant's session has not expired yet
            ("spending", 0),  # the demo app has no daily budget
        ]
        assert [step.name for step, _ in done] == [step.name for step in sweep.STEPS]
        assert db.session.scalar(select(Grant.reserved)) == 0
        assert db.session.scalar(select(func.count()).select_from(Replay)) == 0
        assert db.session.scalar(select(func.count()).select_from(Usage)) == 2  # the ledger stays
        db.session.remove()
    result = app.test_cli_runner().invoke(args=["wattfare", "sweep"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "Released 0 stale hold(s).",
        "Forgot 0 call(s) older than 30 minutes kept for replay.",
        "Forgot 0 used session id(s) past their expiry.",
        "Dropped 0 hourly budget row(s) older than a day.",
    ]


def test_a_background_sweeper_sweeps_on_its_own(app, client, make_grant, api_headers):
    keyed = {**api_headers(make_grant(1)), "Idempotency-Key": "k1"}
    assert (
        client.post("/api/v1/chat/completions", headers=keyed, json=chat_body()).status_code == 200
    )
    with app.app_context():
        db.session.execute(db.update(Replay).values(created_at=Replay.created_at - REPLAY_TTL))
        db.session.commit()
        db.session.remove()
    thread = sweep.start_background(app, interval=0.05)
    assert thread is not None
    try:
        deadline = time.monotonic() + 10
        while True:
            with app.app_context():
                left = db.session.scalar(select(func.count()).select_from(Replay))
                db.session.remove()
            if left == 0:
                break
            assert time.monotonic() < deadline, "the background sweeper never swept"
            time.sleep(0.02)
    finally:
        thread.stop.set()
        thread.join(5)
    assert sweep.start_background(app, interval=0) is None  # 0 turns it off


def test_the_procfile_web_process_sweeps_by_itself(tmp_path, keys):
    """Two gunicorn workers started by the Procfile's line delete a replay record once it
    is older than REPLAY_TTL: nobody runs `flask wattfare sweep`."""
    db_file = tmp_path / "web.db"
    env = procfile_env(
        {
            "DATABASE_URL": f"sqlite:///{db_file}",
            "SECRET_KEY": secrets.token_hex(32),
            "WATTFARE_ALLOWED_ORIGINS": ORIGIN,
            "WATTFARE_SWEEP_INTERVAL": "0.2",
            **keys,
        }
    )
    assert run_release(env).returncode == 0
    secret_key = keys["WATTFARE_SECRET_KEY"]
    with WebProcess(env, tmp_path, workers=2) as web, httpx.Client(base_url=web.url) as http:
        grant = http.post(
            "/api/v1/grants",
            json={"requests": 1},
            headers={"Authorization": f"Bearer {mint_session(secret_key)}"},
        ).json()["grantToken"]
        headers = {
            "Authorization": f"Bearer {secret_key}",
            "x-wattfare-grant": grant,
            "Idempotency-Key": "swept",
        }
        assert http.post("/api/v1/chat/completions", headers=headers, json=chat_body()).is_success
        with sqlite3.connect(db_file) as conn:
            assert conn.execute("SELECT count(*) FROM replays").fetchone() == (1,)
            conn.execute("UPDATE replays SET created_at = created_at - ?", (REPLAY_TTL,))
        deadline = time.monotonic() + 15
        while True:
            with sqlite3.connect(db_file) as conn:
                left = conn.execute("SELECT count(*) FROM replays").fetchone()[0]
            if left == 0:
                break
            assert time.monotonic() < deadline, web.output()[1][-2000:]
            time.sleep(0.05)


def test_the_sweep_releases_many_holds_in_batches_each_once(
    app, make_grant, secret_key, monkeypatch
):
    # More stale holds than a batch, several of them on one grant: every hold is released
    # once, each grant gets back exactly its own, and a second sweep finds nothing.
    monkeypatch.setattr(grants, "STALE_BATCH", 3)
    tokens = [make_grant(5), make_grant(5), make_grant(5)]
    holds_per_grant = [5, 2, 1]
    with app.app_context():
        for token, holds in zip(tokens, holds_per_grant, strict=True):
            for _ in range(holds):
                plant_stale_hold(secret_key, token)
        assert grants.release_stale() == sum(holds_per_grant)
        assert db.session.execute(select(Grant.reserved, Grant.held_pusd)).all() == [(0, 0)] * 3
        statuses = db.session.scalars(select(Usage.status)).all()
        assert statuses == ["expired"] * sum(holds_per_grant)
        assert grants.release_stale() == 0
        db.session.remove()
