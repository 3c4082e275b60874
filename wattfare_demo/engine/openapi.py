"""GET /api/v1/openapi.json: the OpenAPI 3.1 document of /api/v1.

The document is the checked-in, hand-written `openapi.json` beside this module: it is the
contract, so it is read by people and reviewed like code. tests/engine/test_openapi.py checks
our real responses against it and tests/engine/test_schemathesis.py fuzzes the API with it.
It is served byte for byte, read once per process.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from flask import Blueprint, Response

PATH = Path(__file__).with_name("openapi.json")

# Its own blueprint under the API's prefix: the document is public (no key) and is
# never rate limited. Errors under /api/v1 (405 here) are JSON via init_engine.
bp = Blueprint("wattfare_openapi", __name__, url_prefix="/api/v1")


@cache
def document_bytes() -> bytes:
    raw = PATH.read_bytes()
    json.loads(raw)  # a broken document fails loudly at the first request, not in a client
    return raw


def document() -> dict[str, Any]:
    """The parsed document (a fresh copy: callers may change it)."""
    parsed: dict[str, Any] = json.loads(document_bytes())
    return parsed


@bp.get("/openapi.json")
def openapi_json() -> Response:
    response = Response(document_bytes(), mimetype="application/json")
    response.headers["Cache-Control"] = "public, max-age=300"
    return response
