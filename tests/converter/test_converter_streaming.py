"""streaming.pump: the first byte at once, keep-alives while the work is silent, merged
deltas, and a stop signal when the client goes away."""

from __future__ import annotations

import threading

from wattfare_demo.converter import streaming


def test_events_are_in_the_text_event_stream_format() -> None:
    assert streaming.event("part", "<p>a</p>\n<p>b</p>") == (
        "event: part\ndata: <p>a</p>\ndata: <p>b</p>\n\n"
    )
    assert streaming.event("delta", " x\r\n") == "event: delta\ndata:  x\ndata: \n\n"


def test_a_silent_worker_gets_keep_alives_until_it_speaks() -> None:
    gate = threading.Event()

    def work(emit, stop) -> None:
        gate.wait(10)
        emit(streaming.event("done", "ok"))

    stream = streaming.pump(work, heartbeat=0.01, on_crash=lambda: "crash")
    assert next(stream) == ": conversion started\n\n"  # before the work has said anything
    assert next(stream) == ": keep-alive\n\n"
    gate.set()
    rest = list(stream)
    assert rest[-1] == "event: done\ndata: ok\n\n"
    assert set(rest[:-1]) <= {": keep-alive\n\n"}


def test_deltas_that_pile_up_are_sent_as_one_event() -> None:
    queued = threading.Event()

    def work(emit, stop) -> None:
        for piece in ("a", "b", "c"):
            emit(streaming.Piece("delta", piece))
        emit(streaming.event("part", "1"))
        emit(streaming.Piece("delta", "d"))
        queued.set()

    stream = streaming.pump(work, heartbeat=5, on_crash=lambda: "crash")
    next(stream)
    assert queued.wait(5)
    assert list(stream) == [
        "event: delta\ndata: abc\n\n",
        "event: part\ndata: 1\n\n",
        "event: delta\ndata: d\n\n",
    ]


def test_closing_the_response_tells_the_worker_to_stop() -> None:
    stopped = threading.Event()

    def work(emit, stop) -> None:
        emit(streaming.event("start", "x"))
        if stop.wait(10):
            stopped.set()

    stream = streaming.pump(work, heartbeat=5, on_crash=lambda: "crash")
    assert next(stream) == ": conversion started\n\n"
    assert next(stream) == "event: start\ndata: x\n\n"
    stream.close()  # what the WSGI server does when the client hangs up
    assert stopped.wait(5)


def test_a_worker_that_crashes_ends_the_stream_with_its_last_words() -> None:
    def work(emit, stop) -> None:
        raise RuntimeError("a bug")

    stream = streaming.pump(work, heartbeat=5, on_crash=lambda: "event: done\ndata: sorry\n\n")
    assert list(stream)[-1] == "event: done\ndata: sorry\n\n"
