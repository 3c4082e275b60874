"""SQLite's one writer at a time, queued instead of polled.

SQLite lets one connection write at a time, and a connection that finds the write lock
taken does not wait in a queue: its busy handler (the driver's `timeout`) sleeps 1, 2, 5,
10 … ms and tries again. Under concurrent calls a metered call slept about 1.4 times
(docs/benchmarks.md, "What stands in the way": perf counted the sleeps), each sleep
far longer than the fraction of a millisecond a reservation or a settlement holds the
lock, while the cores sat idle.

So the accounting's write transactions (driver.transaction) take turns before they
begin: the threads of a process on a lock, the processes (gunicorn's workers) on an
flock(2) of a file beside the database, `<database>-writers`, like SQLite's own `-wal`
and `-shm`. Both are queues the kernel wakes as a turn is given back. Nothing else
changes: SQLite's lock still decides, and every other writer (the ORM session's commits,
the CLI, another program) still goes through it and its busy handler; a turn can wait for
such a writer at most that writer's own busy timeout. A process that dies holding a turn
gives it back with its file. Reads never take a turn (WAL lets them run beside a writer).

The file is never read or written, only locked, and is separate from the database
because a process must not open and close the database file itself: closing any
descriptor of it drops every POSIX lock SQLite holds on it in that process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # Windows: processes then meet at SQLite's own lock only
    fcntl = None  # type: ignore[assignment]


class _Turns:
    """The queue of one database file's writers, in this process."""

    def __init__(self, database: str) -> None:
        self.threads = threading.Lock()
        self.path = f"{database}-writers"
        self.fd: int | None = None

    def file(self) -> int:
        if self.fd is None:  # opened once per process, kept open: the lock lives on it
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        return self.fd


_queues: dict[str, _Turns] = {}
_queues_guard = threading.Lock()


def _forget_after_fork() -> None:
    # A forked worker must open its own file: a descriptor inherited from the parent is
    # the same open file, and flock(2) would let parent and child in together. The
    # inherited copies are closed (the parent's lock stays with the parent's), and the
    # locks are new: one held at the fork would never be released in the child.
    global _queues_guard
    for queue in _queues.values():
        if queue.fd is not None:
            os.close(queue.fd)
    _queues.clear()
    _queues_guard = threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def _no_path(database: str | None) -> bool:
    # In memory (one process, nothing to share), or a `file:` URI, whose path is not
    # plainly the name: those writers meet at SQLite's lock only, as before.
    return not database or database == ":memory:" or database.startswith("file:")


@contextmanager
def turn(database: str | None) -> Iterator[None]:
    """Wait for this process's and then the other processes' writers of the SQLite file
    `database`, and hold the turn for the block. A database without a plain path (in
    memory, a `file:` URI) takes none."""
    if _no_path(database):
        yield
        return
    assert database is not None
    with _queues_guard:
        queue = _queues.get(database)
        if queue is None:
            queue = _queues[database] = _Turns(database)
    with queue.threads:
        if fcntl is None:
            yield
            return
        fd = queue.file()
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks without the GIL until the turn is free
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)


__all__ = ["turn"]
