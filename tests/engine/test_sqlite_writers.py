"""SQLite's writers take turns (engine/sqlite_writers.py): one at a time across the
threads of a process and across processes, a forked worker included, and a turn given
back lets the next one in."""

from __future__ import annotations

import multiprocessing
import threading
import time
from multiprocessing.synchronize import Event
from pathlib import Path

from wattfare_demo.engine import sqlite_writers


def test_threads_take_turns(tmp_path: Path) -> None:
    database = str(tmp_path / "turns.db")
    inside = 0
    most = 0
    count = threading.Lock()
    start = threading.Barrier(8)

    def writer() -> None:
        nonlocal inside, most
        start.wait()
        for _ in range(50):
            with sqlite_writers.turn(database):
                with count:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0002)  # a transaction's worth
                with count:
                    inside -= 1

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most == 1
    assert Path(f"{database}-writers").exists()


def _take_turn(database: str, waiting: Event, got: Event) -> None:
    waiting.set()
    with sqlite_writers.turn(database):
        got.set()


def test_a_forked_worker_waits_for_the_parents_turn(tmp_path: Path) -> None:
    # gunicorn forks its workers: each must queue on a file description of its own.
    database = str(tmp_path / "turns.db")
    fork = multiprocessing.get_context("fork")
    waiting, got = fork.Event(), fork.Event()
    with sqlite_writers.turn(database):  # the parent opens the file before the fork
        child = fork.Process(target=_take_turn, args=(database, waiting, got))
        child.start()
        assert waiting.wait(30)
        assert not got.wait(0.5)  # the child is queued behind the parent's turn
    assert got.wait(30)  # given back: the child's turn came
    child.join(30)
    assert child.exitcode == 0


def test_an_in_memory_database_takes_no_turn() -> None:
    with sqlite_writers.turn(":memory:"), sqlite_writers.turn(None):
        pass  # nothing to share between processes, nothing to wait for
