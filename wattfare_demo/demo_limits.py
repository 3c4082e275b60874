"""Per-visitor rate limits on the demo's own routes, counted by the engine's limiter.

    endpoint                   setting                        default     counted per
    converter.wattfare_token   CONVERTER_RATE_LIMIT_TOKEN     10/minute   visitor
    converter.convert          CONVERTER_RATE_LIMIT_CONVERT   30/minute   visitor
    converter.plan             CONVERTER_RATE_LIMIT_PLAN      60/minute   visitor

A customer's app would put its own limiter on its own routes. Here the demo and the
embedded engine are one Flask app, so the app factory hands these to the engine's limiter
(`init_engine(app, extra_limits=LIMITS)`): one storage, one on/off switch, one notion of
who a visitor is (the client address through WATTFARE_PROXY_HOPS proxies). The engine
knows them only as endpoint names, and a limit on a route the app does not have is
skipped. Every request counts against its own visitor, whatever its outcome: a flood of
made-up grant tokens from one address exhausts that address's allowance, nobody else's
(and the engine's per-app ceiling counts none of them: they reserved nothing).

Over a limit the demo answers in its own shapes: the `_error.html` fragment for htmx
(the converter page shows it where the result would go), its JSON error otherwise, both
with `Retry-After`.
"""

from __future__ import annotations

from flask import Response, jsonify, render_template, request

from .engine.ratelimit import RouteLimit, visitor


def rate_limited(wait: int, message: str) -> Response:
    headers = {"Retry-After": str(wait), "Cache-Control": "no-store"}
    if request.headers.get("HX-Request") == "true":
        html = render_template("_error.html", code="rate_limited", message=message)
        response = Response(html, status=429, headers=headers, mimetype="text/html")
    else:
        response = jsonify(error="rate_limited", message=message)
        response.status_code = 429
        response.headers.update(headers)
    response.vary.add("HX-Request")
    return response


LIMITS = (
    RouteLimit(
        "converter.wattfare_token", "CONVERTER_RATE_LIMIT_TOKEN", visitor, respond=rate_limited
    ),
    RouteLimit("converter.convert", "CONVERTER_RATE_LIMIT_CONVERT", visitor, respond=rate_limited),
    RouteLimit("converter.plan", "CONVERTER_RATE_LIMIT_PLAN", visitor, respond=rate_limited),
)
