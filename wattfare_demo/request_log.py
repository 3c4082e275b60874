"""One log line per request, on stdout, in logfmt:

    wattfare.request method=POST path=/api/v1/chat/completions status=200 duration_ms=41
        app=3f2c9a1e0b7d4c65 outcome=settled

This is the app's access log (gunicorn's own access log is off, see gunicorn.conf.py), so
it must never carry a secret: the query string is dropped, no header is read, anything
in the path that looks like a key, a grant token or a JWT is masked, and values are
quoted so a crafted path cannot forge extra lines. `app` and `outcome` come from
`note()`, with which the engine's API records the calling app's id and what happened to the grant
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

from flask import Flask, Response, request, request_started

LOGGER_NAME = "wattfare.request"
log = logging.getLogger(LOGGER_NAME)

# sk_… secret keys, wfg_… grant tokens, wfr_… receipt capabilities (a receipt URL holds
# one in its path) and JWTs (session tokens): never in a log line,
# even if a client puts one in a URL by mistake.
_SECRETS = re.compile(
    r"\b(?:sk|wfg|wfr)_[0-9A-Za-z_]+|\beyJ[0-9A-Za-z_-]*\.[0-9A-Za-z_-]*(?:\.[0-9A-Za-z_-]*)?"
)
_PLAIN = re.compile(r"[\w./:@%+,~!*()'\[\]-]+", re.ASCII)
_MAX_PATH = 200


class _StdoutHandler(logging.StreamHandler[Any]):
    """Writes to whatever `sys.stdout` is when a record is emitted.

    A handler that kept the `sys.stdout` of the moment it was made would write to a stale
    stream once something replaced it (pytest's capture does, per test).
    """

    def __init__(self) -> None:
        super().__init__()

    @property
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


_FACTS = "wattfare.request_log"


def note(**facts: str | None) -> None:
    """Record facts for this request's log line: `app` (the calling app's id) and
    `outcome` (what happened to the grant). Never a token or a key.

    Kept in the WSGI environ, not in `g`: the converter calls the engine in-process
    (the SDK over WSGITransport) and Flask lets that inner request share the outer
    one's app context, hence its `g`. The environ is each request's own.
    """
    request.environ.setdefault(_FACTS, {}).update(facts)


def _facts() -> dict[str, Any]:
    facts: dict[str, Any] = request.environ.setdefault(_FACTS, {})
    return facts


def _start(_sender: Flask, **_extra: Any) -> None:
    _facts()["started"] = time.perf_counter()


def _log_response(response: Response) -> Response:
    if not log.isEnabledFor(logging.INFO):
        return response  # the line is turned off (e.g. logging.disable): build nothing
    fields = {
        "method": request.method,
        "path": _safe_path(request.path),
        "status": response.status_code,
    }
    facts = _facts()
    if response.status_code >= 400 and facts.get("app") and not facts.get("outcome"):
        # A metered call the engine refused (402 grant_invalid, 400 invalid_request…):
        # the outcome is in the JSON error body, the one shape all API errors share.
        facts["outcome"] = _refusal(response)
    if response.is_streamed:
        # Read the facts when the stream ends: the engine records the final outcome then.
        response.call_on_close(lambda: _emit(fields, facts))
    else:
        _emit(fields, facts)
    return response


def _emit(fields: dict[str, Any], facts: dict[str, Any]) -> None:
    # Every API call writes this line: it is built as one f-string (no intermediate dict),
    # and only the text fields pass through the quoting check, not the two numbers.
    started = facts.get("started", time.perf_counter())
    duration_ms = int((time.perf_counter() - started) * 1000)
    log.info(
        f"method={_value(fields['method'])} path={_value(fields['path'])} "
        f"status={fields['status']} duration_ms={duration_ms} "
        f"app={_value(facts.get('app') or '-')} outcome={_value(facts.get('outcome') or '-')}"
    )


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
