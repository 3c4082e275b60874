"""`GET /healthz`: is this process able to serve? It is, if the database answers.

For load balancers and deploy checks (Dokku, Render, Fly, uptime monitors): 200
`{"status": "ok"}`, or 503 `{"status": "unavailable"}` with the reason in the server log
only, never in the response (an error text can name hosts and users).
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from .extensions import db

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    try:
        db.session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure to reach the database means "not ready"
        db.session.rollback()
        log.warning("health check: database unavailable (%s)", summary(exc))
        response = jsonify(status="unavailable")
        response.status_code = 503
    else:
        response = jsonify(status="ok")
    response.headers["Cache-Control"] = "no-store"
    return response


def summary(exc: Exception) -> str:
    # The driver's first line ("connection refused", "timeout expired") without the SQL
    # or SQLAlchemy's background link; DBAPI messages do not include the password.
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).strip().splitlines()[:1]
    return f"{type(cause).__name__}: {first[0]}" if first else type(cause).__name__
