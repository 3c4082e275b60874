"""The real app plus one benchmark-only route, for `bench/run.py` (never deployed).

`gunicorn bench.bare_app:app` serves exactly what `gunicorn app:app` serves. With
WATTFARE_BENCH_BARE=1 it also mounts `POST /bench/bare`: a bare Flask endpoint that
parses the same JSON body a metered call sends and answers a small JSON object, with
no authentication, no database and no model. Measured on the same server, in the same
run, it is the baseline that the engine's own cost per metered call is measured
against: p50(metered) - p50(bare).

The route lives here, in a bench-only module, so the product code has no benchmark
switch in it at all.
"""

from __future__ import annotations

import json
import os

from flask import Blueprint, Response, jsonify, request

from wattfare_demo import create_app

bare = Blueprint("bench_bare", __name__, url_prefix="/bench")


@bare.post("/bare")
def bare_endpoint() -> Response:
    # The same work a thin JSON route does before its own logic: read and parse the
    # body, build a JSON response. Nothing else.
    body = json.loads(request.get_data())
    return jsonify(object="bench.bare", model=body.get("model"), messages=len(body["messages"]))


app = create_app()
if os.environ.get("WATTFARE_BENCH_BARE") == "1":
    app.register_blueprint(bare)
