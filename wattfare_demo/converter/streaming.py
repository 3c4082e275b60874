"""Server-sent events for a conversion: the wire format and a pump that keeps bytes flowing.

The upload POST's own response is the event stream (docs/converter.md says why): the
work runs in a thread that puts finished events on a queue, and the response yields
them, or a `: keep-alive` comment whenever nothing came for `heartbeat` seconds. A
platform router that drops a silent request (Heroku: 30 s before the first byte, 55 s
between bytes) never sees one, however long the model thinks.

When the client goes away the WSGI server closes the response; the pump then tells the
worker to stop, which closes the model's stream: the engine charges what was generated.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

__all__ = ["Emit", "Piece", "event", "pump"]

log = logging.getLogger(__name__)

_END = object()


@dataclass(frozen=True)
class Piece:
    """Data for an event that may be merged with the pieces queued right behind it.

    The model's deltas come a few characters at a time: sent as they come when the page
    keeps up, merged into fewer, larger events when they pile up.
    """

    name: str
    data: str


Emit = Callable[["str | Piece"], None]


def event(name: str, data: str) -> str:
    """One server-sent event. Every line of `data` becomes a `data:` line."""
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return f"event: {name}\n" + "".join(f"data: {line}\n" for line in lines) + "\n"


def pump(
    work: Callable[[Emit, threading.Event], None],
    *,
    heartbeat: float,
    on_crash: Callable[[], str],
) -> Iterator[str]:
    """Run `work(emit, stop)` in a thread and yield what it emits, with heartbeats.

    `work` should return soon after `stop` is set. If it raises, `on_crash()` gives the
    last event to send (the error is logged).
    """
    events: queue.Queue[object] = queue.Queue()
    stop = threading.Event()

    def run() -> None:
        try:
            work(events.put, stop)
        except Exception:
            log.exception("conversion stream failed")
            events.put(on_crash())
        finally:
            events.put(_END)

    thread = threading.Thread(target=run, name="conversion-stream", daemon=True)
    thread.start()
    try:
        yield ": conversion started\n\n"  # the first byte goes out at once
        while True:
            try:
                item = events.get(timeout=heartbeat)
            except queue.Empty:
                yield ": keep-alive\n\n"
                continue
            if item is _END:
                return
            if isinstance(item, Piece):
                item, after = _merge(item, events)
                yield event(item.name, item.data)
                if after is _END:
                    return
                if after is not None:
                    yield after if isinstance(after, str) else event(after.name, after.data)
                continue
            yield str(item)
    finally:
        stop.set()


def _merge(first: Piece, events: queue.Queue[object]) -> tuple[Piece, object | None]:
    """`first` and the pieces of the same name queued right behind it, as one piece;
    and the item that ended the run, if one was taken off the queue."""
    parts = [first.data]
    while True:
        try:
            item = events.get_nowait()
        except queue.Empty:
            return Piece(first.name, "".join(parts)), None
        if isinstance(item, Piece) and item.name == first.name:
            parts.append(item.data)
            continue
        return Piece(first.name, "".join(parts)), item
