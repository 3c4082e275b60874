"""One log line per request, on stdout, in logfmt:

    wattfare.request method=POST path=/api/v1/chat/completions status=200 duration_ms=41
        app=3f2c9a1e0b7d4c65 outcome=settled

This is the app's access log (gunicorn's own access log is off, see gunicorn.conf.py), so
it must never carry a secret: the query string is dropped, no header is read, anything
in the path that looks like a key, a grant token or a JWT is masked, and values are
quoted so a crafted path cannot forge extra lines. `app` and `outcome` come from `g`,
where the engine's API records the calling app's id and what happened to the grant
(`grant_created`, `settled`, `stream`, `released:<why>`), or, for a call it refused, the
error's reason or code (`refused:exhausted`, `refused:invalid_request`).

Streamed responses are logged when the server closes them, so their duration covers the
whole stream; everything else is logged as soon as the response is ready.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from flask import Flask, Response, g, request, request_started

LOGGER_NAME = "wattfare.request"
log = logging.getLogger(LOGGER_NAME)

# sk_… secret keys, wfg_… grant tokens, and JWTs (session tokens): never in a log line,
# even if a client puts one in a URL by mistake.
_SECRETS = re.compile(
    r"\b(?:sk|wfg)_[0-9A-Za-z_]+|\beyJ[0-9A-Za-z_-]*\.[0-9A-Za-z_-]*(?:\.[0-9A-Za-z_-]*)?"
)
_PLAIN = re.compile(r"[\w./:@%+,~!*()'\[\]-]+", re.ASCII)
_MAX_PATH = 200


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever `sys.stdout` is when a record is emitted.

    A handler that kept the `sys.stdout` of the moment it was made would write to a stale
    stream once something replaced it (pytest's capture does, per test).
    """

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def init_app(app: Flask) -> None:
    _configure_logger()
    # request_started fires before any before_request function, so the time includes
    # them (and a before_request that answers early still gets its line).
    request_started.connect(_start, app, weak=False)
    app.after_request(_log_response)


def _configure_logger() -> None:
    if any(isinstance(h, _StdoutHandler) for h in log.handlers):
        return  # create_app ran before in this process (the tests make many apps)
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    # Our handler is the one place these lines go: not also through the root logger,
    # which a library or `logging.basicConfig` may have pointed at stderr.
    log.propagate = False


def _start(_sender: Flask, **_extra: Any) -> None:
    g.wattfare_request_started = time.perf_counter()


def _log_response(response: Response) -> Response:
    fields = {
        "method": request.method,
        "path": _safe_path(request.path),
        "status": response.status_code,
    }
    started = g.get("wattfare_request_started", time.perf_counter())
    state = g._get_current_object()
    if response.status_code >= 400 and g.get("wattfare_app_id") and not g.get("wattfare_outcome"):
        # A metered call the engine refused (402 grant_invalid, 400 invalid_request…):
        # the outcome is in the JSON error body, the one shape all API errors share.
        g.wattfare_outcome = _refusal(response)
    if response.is_streamed:
        # Read `g` when the stream ends: the engine may record the final outcome then.
        response.call_on_close(lambda: _emit(fields, started, state))
    else:
        _emit(fields, started, state)
    return response


def _emit(fields: dict[str, Any], started: float, state: Any) -> None:
    line = {
        **fields,
        "duration_ms": int((time.perf_counter() - started) * 1000),
        "app": getattr(state, "wattfare_app_id", None) or "-",
        "outcome": getattr(state, "wattfare_outcome", None) or "-",
    }
    log.info(" ".join(f"{key}={_value(value)}" for key, value in line.items()))


def _refusal(response: Response) -> str | None:
    if response.is_streamed or not response.is_json:
        return None  # reading a stream here would consume it
    body = response.get_json(silent=True)
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None
    detail = error.get("reason") or error.get("code")
    return f"refused:{detail}" if isinstance(detail, str) else None


def _safe_path(path: str) -> str:
    masked = _SECRETS.sub("[redacted]", path)
    return masked if len(masked) <= _MAX_PATH else masked[:_MAX_PATH] + "…"


def _value(value: object) -> str:
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    # Quoted and escaped: spaces, quotes, newlines and non-ASCII cannot break the line.
    return json.dumps(text)
