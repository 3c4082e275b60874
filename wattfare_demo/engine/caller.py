"""Is the caller of this request still there? From the WSGI server's socket.

A client that timed out has closed its connection: the engine can tell before it answers,
and so knows an answer it finished could not be delivered (idempotency.py keeps it for the
retry). werkzeug's server and gunicorn put the client socket in the WSGI environ; in
process (httpx.WSGITransport) there is none, and the caller counts as present.

Behind a proxy the socket is the proxy's; whether the proxy drops its side when the
client goes is up to it, so this is a hint that makes the engine more helpful, never a
rule that could charge twice: a retry that says so (`x-stainless-retry-count`) or sends
an Idempotency-Key is recognised without it.
"""

from __future__ import annotations

import socket

from flask import request

_SOCKET_KEYS = ("gunicorn.socket", "werkzeug.socket")


def _socket() -> socket.socket | None:
    for key in _SOCKET_KEYS:
        sock = request.environ.get(key)
        if isinstance(sock, socket.socket):
            return sock
    return None


def caller_gone() -> bool:
    """True when the client has closed (or reset) its connection."""
    sock = _socket()
    if sock is None:
        return False
    try:
        # A closed peer reads as b"" (EOF) at once; an open idle one has nothing to read.
        # MSG_PEEK leaves any pipelined bytes for the server.
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset by peer, or already closed
        return True
    except ValueError:  # a TLS socket (gunicorn --certfile) takes no recv flags
        return False


__all__ = ["caller_gone"]
