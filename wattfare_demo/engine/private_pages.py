"""The headers every page the engine shows a visitor carries (the consent popup, the
receipt): each is about one person's grant, so it is never cached, indexed, framed or
named in a Referer, and its content type is never sniffed. Each page adds its own
Content-Security-Policy."""

from __future__ import annotations

from flask import Response


def private_page(response: Response, csp: str) -> Response:
    response.headers["Content-Security-Policy"] = csp
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Robots-Tag"] = "noindex, nofollow"
    return response


__all__ = ["private_page"]
