"""Extraction in a cage: a separate process with CPU-time, memory and wall-clock limits.

Parsers meet a stranger's bytes, and a 30 KB file can ask for minutes of CPU or
gigabytes of memory (zip, XML and PDF bombs). So `extract_in_cage()` runs
`extract.extract()` in a child process that

- is forked from a *forkserver*: a small single-threaded Python started once per web
  process (multiprocessing's "forkserver" context, with the parsers preloaded), never
  by fork() of the web worker itself, whose threads (gunicorn gthread) may hold locks
  a plain fork would copy locked;
- gets the document over a pipe, never through a file, and may not write one:
  RLIMIT_FSIZE is 0, so a parser that tries gets an error (EFBIG);
- runs under RLIMIT_CPU (SIGXCPU ends it), RLIMIT_AS (MemoryError, reported as "too
  large") and a wall-clock deadline after which the parent kills it; at nice 10, so
  the web threads stay ahead of it for the CPU;
- is one of at most `concurrency` at a time per web process: a burst of uploads waits
  (up to the deadline) instead of starting a process each.

A child that hangs or dies never blocks a web thread past the deadline: the parent
only ever waits with a timeout, then kills and reaps the child.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import resource
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from typing import Any

from .extract import ExtractedDocument, ExtractionError, extract

__all__ = ["CageBusy", "CageLimits", "extract_in_cage", "warm_up"]

log = logging.getLogger(__name__)

_CONTEXT = multiprocessing.get_context("forkserver")
# The forkserver imports the parsers once; each child then starts in milliseconds.
_CONTEXT.set_forkserver_preload(["wattfare_demo.converter.extract"])

_warming = threading.Event()
_slots_lock = threading.Lock()
_slots: dict[int, threading.BoundedSemaphore] = {}


@dataclass(frozen=True)
class CageLimits:
    cpu_seconds: int = 20  # CPU time of the child
    memory_mb: int = 1024  # its address space: the parsers' own code takes ~300 MB
    wall_seconds: float = 25.0  # from the call to the answer, waiting for a slot included
    concurrency: int = 2  # children at once per web process


class CageBusy(Exception):
    """Every slot stayed busy until the deadline: the server is overloaded."""


def extract_in_cage(
    filename: str, data: bytes, content_type: str | None, limits: CageLimits
) -> ExtractedDocument:
    """extract.extract() in a limited child process; ExtractionError as it would raise."""
    deadline = time.monotonic() + limits.wall_seconds
    slots = _slots_for(limits.concurrency)
    if not slots.acquire(timeout=limits.wall_seconds):
        raise CageBusy()
    try:
        return _run(filename, data, content_type, limits, deadline)
    finally:
        slots.release()


def warm_up() -> None:
    """Start this process's forkserver in the background, once: loading the parsers takes
    a second or more, better spent while the visitor is still choosing a file."""
    if not _warming.is_set():
        _warming.set()
        threading.Thread(target=forkserver.ensure_running, name="cage-warm-up", daemon=True).start()


def _slots_for(concurrency: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        slots = _slots.get(concurrency)
        if slots is None:
            slots = _slots[concurrency] = threading.BoundedSemaphore(concurrency)
        return slots


def _run(
    filename: str, data: bytes, content_type: str | None, limits: CageLimits, deadline: float
) -> ExtractedDocument:
    ours, theirs = _CONTEXT.Pipe(duplex=True)
    child = _CONTEXT.Process(
        target=_child_main,
        args=(theirs, limits.cpu_seconds, limits.memory_mb),
        name="wattfare-extract",
        daemon=True,
    )
    child.start()
    began = time.monotonic()
    theirs.close()
    try:
        sender = threading.Thread(target=_send, args=(ours, filename, content_type, data))
        sender.daemon = True
        sender.start()
        remaining = max(0.0, deadline - time.monotonic())
        if not ours.poll(remaining) and child.is_alive():
            raise _too_complex(filename, limits)
        try:
            outcome = ours.recv()
        except (EOFError, OSError):
            outcome = None
        if outcome is None:
            child.join(1)
            raise _died(filename, child.exitcode, limits, time.monotonic() - began)
        status, payload = outcome
        if status == "ok":
            return payload
        raise payload
    finally:
        if child.is_alive():
            child.kill()
        child.join(2)
        ours.close()


def _send(connection: Connection, filename: str, content_type: str | None, data: bytes) -> None:
    try:
        connection.send((filename, content_type))
        connection.send_bytes(data)
    except (BrokenPipeError, OSError, ValueError):
        pass  # the child died or was killed; the waiting side reports why


def _child_main(connection: Connection, cpu_seconds: int, memory_mb: int) -> None:
    _limit_myself(cpu_seconds, memory_mb)
    try:
        filename, content_type = connection.recv()
    except (EOFError, OSError):
        return
    try:
        # Receiving a large upload is the first allocation the memory limit can stop.
        data = connection.recv_bytes()
        document = extract(filename, data, content_type)
        outcome: tuple[str, Any] = ("ok", document)
    except ExtractionError as error:
        outcome = ("error", error)
    except MemoryError:
        outcome = ("error", _too_much_memory(filename))
    except RecursionError:
        message = f"{filename} is nested too deeply to read. Save it in a simpler form."
        outcome = ("error", ExtractionError("too_complex", message))
    except (EOFError, OSError):
        return
    data = b""  # let the upload go before the answer is pickled
    try:
        connection.send(outcome)
    except MemoryError:
        connection.send(("error", _too_much_memory(filename)))


def _limit_myself(cpu_seconds: int, memory_mb: int) -> None:
    os.nice(10)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    memory = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    # No files: not the document, not a parser's scratch copy. Writes fail with EFBIG
    # instead of ending the process with SIGXFSZ.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # nor a core dump holding it


def _too_complex(filename: str, limits: CageLimits) -> ExtractionError:
    return ExtractionError(
        "too_complex",
        f"{filename} took longer than {_seconds(limits.wall_seconds)} to read, the most the "
        "converter gives one file. Save it in a simpler form (or split it) and try again.",
    )


def _too_much_memory(filename: str) -> ExtractionError:
    return ExtractionError(
        "file_too_large",
        f"{filename} needs more memory to read than the converter allows one file. "
        "Split it into smaller files, or save it in a simpler form.",
    )


# What multiprocessing reports when the forkserver could not say how a child ended.
_EXIT_UNKNOWN = 255


def _died(
    filename: str, exitcode: int | None, limits: CageLimits, ran_for: float
) -> ExtractionError:
    out_of_time = exitcode in (-signal.SIGXCPU, -signal.SIGKILL)
    # An exit status the forkserver could not pass on, after the child had run as long as
    # its CPU allowance: most likely that allowance ended it, not a damaged file.
    if exitcode in (_EXIT_UNKNOWN, None) and ran_for >= limits.cpu_seconds:
        out_of_time = True
    if out_of_time:
        log.info("extraction of an upload ran out of CPU time (exit %s)", exitcode)
        return ExtractionError(
            "too_complex",
            f"{filename} needs more than {_seconds(limits.cpu_seconds)} of work to read, the "
            "most the converter gives one file. Save it in a simpler form (or split it).",
        )
    log.warning("extraction process died (exit %s)", exitcode)
    return ExtractionError(
        "unreadable_file",
        f"{filename} could not be read: the reader stopped on it. It may be damaged; save "
        "it again and upload the new file.",
    )


def _seconds(value: float) -> str:
    return "1 second" if value == 1 else f"{value:g} seconds"
