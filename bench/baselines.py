"""The baselines the engine's own cost is measured against: a blueprint of bench-only
routes, mounted by bench/bare_app.py (under gunicorn) and bench/profile_call.py
(in-process), on the same server as the metered calls, in the same run:

- `POST /bench/bare`: a bare Flask endpoint that parses the same JSON body a metered
  call sends and answers a small JSON object, with no authentication, no database and
  no model. Engine cost per call = p50(metered) - p50(bare).
- `POST /bench/bare-model`: the same, plus the `local/markdown` model converting the
  document, answered as a chat completion: what a metered call does minus the metering
  (keys, grants, ledger, idempotency, the log line's facts). Metering cost per call =
  p50(metered) - p50(bare-model). It is the one baseline that uses an engine class, the
  offline model (`LocalMarkdownProvider`), because the model is what it adds.
- `POST /bench/bare-stream`: parses the same body and streams the last message's text
  back as server-sent events in OpenAI's chunk format, `BARE_STREAM_TOKENS` tokens a
  chunk (the same tokens and chunk size `local/markdown` streams), then `[DONE]`. It is
  what the thinnest streaming endpoint does per chunk: cut a piece, `json.dumps` a chunk,
  write it. Engine cost per chunk = the metered stream's per-chunk cost minus this.

The routes live here, in a bench-only module, so the product code has no benchmark
switch in it at all. Apart from the model in /bench/bare-model they use Flask alone,
nothing of the engine, so they stay the same baseline however the engine changes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from flask import Blueprint, Response, jsonify, request

from wattfare_demo.engine.providers.base import ChatRequest
from wattfare_demo.engine.providers.local import LocalMarkdownProvider

bare = Blueprint("bench_bare", __name__, url_prefix="/bench")

# local/markdown's token rule (one per run of word characters, one per other
# non-space character) and its chunk size, restated so the baseline does not import
# the engine.
_TOKEN = re.compile(r"\w+|[^\w\s]")
BARE_STREAM_TOKENS = 8
_MODEL = LocalMarkdownProvider()


@bare.post("/bare")
def bare_endpoint() -> Response:
    # The same work a thin JSON route does before its own logic: read and parse the
    # body, build a JSON response. Nothing else.
    body = json.loads(request.get_data())
    return jsonify(object="bench.bare", model=body.get("model"), messages=len(body["messages"]))


@bare.post("/bare-model")
def bare_model() -> Response:
    body = json.loads(request.get_data())
    completion = _MODEL.complete(
        ChatRequest(model=body["model"], messages=body["messages"], max_tokens=4096)
    )
    return jsonify(
        object="chat.completion",
        model=body.get("model"),
        choices=[
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
            }
        ],
        usage={
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
        },
    )


@bare.post("/bare-stream")
def bare_stream() -> Response:
    body = json.loads(request.get_data())
    text = body["messages"][-1]["content"]
    model = body.get("model")

    def events() -> Iterator[str]:
        start = 0
        for count, match in enumerate(_TOKEN.finditer(text), start=1):
            if count % BARE_STREAM_TOKENS == 0:
                yield _chunk(model, text[start : match.end()])
                start = match.end()
        if start < len(text):
            yield _chunk(model, text[start:])
        yield "data: [DONE]\n\n"

    return Response(events(), mimetype="text/event-stream")


def _chunk(model: str | None, piece: str) -> str:
    payload = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
    }
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"
