"""The sweep: what the engine releases or forgets on a timer, without a hand.

Every step is in STEPS, in the order they run. To add one, write a function that does
its work in the current app context, commits, and returns how many things it handled,
and append a `Step` (tests/engine/test_sweep.py runs every step of the list):

    STEPS.append(Step("drafts", "forgot {} old draft(s)", drafts.forget_old))

Who runs it:

- every gunicorn worker, on a background thread started by gunicorn.conf.py's
  `post_worker_init` (`start_background`), every WATTFARE_SWEEP_INTERVAL seconds
  (default 300; 0 turns it off), so a deploy of the Procfile needs nothing more;
- `flask wattfare sweep` once, by hand or from a scheduler; `--every SECONDS` loops.

Safe with several workers and hosts: every step is a conditional UPDATE or DELETE that
a row meets once, so two sweeps at the same moment cannot do a thing twice, and on
PostgreSQL a sweep that finds another one running (a transaction-scoped advisory lock)
skips its turn instead of queueing behind it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import func, select

from ..extensions import db
from . import grants, idempotency

log = logging.getLogger(__name__)

# pg_try_advisory_xact_lock key: "wattfare sweep", any constant that no other lock uses.
_LOCK_ID = 0x5741_5454_5357_4550 & 0x7FFF_FFFF_FFFF_FFFF


@dataclass(frozen=True)
class Step:
    name: str
    says: str  # what it did, with {} for the count
    run: Callable[[], int]


STEPS: list[Step] = [
    Step(
        "holds",
        "released {} stale hold(s)",
        lambda: grants.release_stale(),
    ),
    Step(
        "replays",
        f"forgot {{}} call(s) older than {idempotency.REPLAY_TTL // 60} minutes kept for replay",
        idempotency.forget_expired,
    ),
    Step(
        "sessions",
        "forgot {} used session id(s) past their expiry",
        grants.forget_used_sessions,
    ),
    Step(
        "spending",
        "dropped {} hourly budget row(s) older than a day",
        grants.forget_old_spending,
    ),
]


def _take_turn() -> bool:
    """On PostgreSQL, whether no other sweep is running (the lock lasts until the first
    step commits: long enough to keep two sweeps from starting together)."""
    if db.session.get_bind().dialect.name != "postgresql":
        return True
    return bool(db.session.scalar(select(func.pg_try_advisory_xact_lock(_LOCK_ID))))


def sweep() -> list[tuple[Step, int]] | None:
    """Run every step once, in the app context; None if another sweep has the turn.

    A step that fails is logged and rolled back; the others still run.
    """
    if not _take_turn():
        db.session.rollback()
        return None
    done: list[tuple[Step, int]] = []
    for step in STEPS:
        try:
            count = step.run()
        except Exception:
            db.session.rollback()
            log.exception("sweep step %s failed", step.name)
            continue
        done.append((step, count))
        if count:
            log.info("sweep: %s", step.says.format(count))
    return done


def start_background(app: Flask, interval: float | None = None) -> threading.Thread | None:
    """Sweep every `interval` seconds (WATTFARE_SWEEP_INTERVAL) on a daemon thread.

    The first sweep comes after a random part of the interval, so the workers of a
    deploy, which all start at once, spread out. Returns None when the interval is 0.
    """
    every = float(app.config.get("WATTFARE_SWEEP_INTERVAL", 300) if interval is None else interval)
    if every <= 0:
        return None
    stop = threading.Event()

    def loop() -> None:
        delay = random.uniform(0.1, 1.0) * every  # noqa: S311 - spreading, not secrecy
        while not stop.wait(delay):
            try:
                with app.app_context():
                    try:
                        sweep()
                    finally:
                        db.session.remove()
            except Exception:  # the database is down: try again next time
                log.exception("sweep failed")
            delay = every * random.uniform(0.9, 1.1)  # noqa: S311

    thread = threading.Thread(target=loop, name="wattfare-sweep", daemon=True)
    thread.stop = stop  # type: ignore[attr-defined]
    thread.start()
    return thread


__all__ = ["STEPS", "Step", "start_background", "sweep"]
