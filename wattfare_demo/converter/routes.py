"""The demo's pages and its two API routes. Thin: the work is in service.py.

    GET  /                    the converter page
    POST /api/wattfare-token  a session token for the consent popup   (same-origin only)
    POST /api/convert         {grantToken, file} -> {result}            JSON
                              multipart file + grantToken -> fragment  htmx (HX-Request)

/api/convert answers htmx with HTML fragments (templates/_result.html, _error.html) and
everyone else with JSON, so it sends `Vary: HX-Request`. Every error is a 4xx with a
message a person can act on (a 5xx only when the AI service fails), never a traceback.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, render_template, request
from werkzeug.exceptions import InternalServerError, RequestEntityTooLarge

from . import render, service
from .extract import MAX_UPLOAD_BYTES, SUPPORTED, ExtractionError
from .service import ConverterError, Upload

bp = Blueprint("converter", __name__)


# --- headers ---------------------------------------------------------------------------


@bp.after_request
def security_headers(response: Response) -> Response:
    # Scripts, styles and images from this origin only: nothing inline, nothing from an
    # uploaded file. The popup is another window, so a separate engine needs no entry here.
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; object-src 'none'",
    )
    # The consent popup must be able to post its answer back to this window.
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin-allow-popups"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    return response


@bp.app_template_filter("filesize")
def filesize(size: int) -> str:
    return render.human_size(size)


@bp.app_template_filter("usd")
def usd(amount: Decimal) -> str:
    return render.format_usd(amount)


# --- the page --------------------------------------------------------------------------


@bp.get("/")
def index() -> str:
    return render_template(
        "index.html",
        publishable_key=current_app.config["WATTFARE_PUBLISHABLE_KEY"],
        # The engine's origin for the popup; unset, wattfare.js uses this page's origin.
        engine_url=current_app.config.get("WATTFARE_API_URL"),
        accept=",".join(SUPPORTED),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_requests=current_app.config["CONVERTER_MAX_REQUESTS"],
        max_usd=current_app.config["WATTFARE_MAX_USD"],
    )


# --- /api/wattfare-token ---------------------------------------------------------------


@bp.post("/api/wattfare-token")
def wattfare_token() -> tuple[Response, int] | Response:
    """The seed's `session: "/api/wattfare-token"`: a session token for this page's origin,
    bound to what the page will ask for.

    Only a page on this very origin may ask (the token lets the popup create grants in this
    app's name), so a missing or foreign Origin header is refused: that is the CSRF check.
    The body is wattfare.js's requestGrant() options, `{"requests": n, "maxUsd": x|null}`;
    this server allows at most CONVERTER_MAX_REQUESTS requests and a cap of at most
    WATTFARE_MAX_USD, on WATTFARE_MODEL only, and the engine holds the grant to that.
    """
    origin = request.headers.get("Origin")
    if not origin or origin == "null" or origin != _own_origin():
        return _json_error(
            403,
            "origin_not_allowed",
            "Session tokens are only issued to pages on this site: the request must come "
            f"from {_own_origin()} (its Origin header).",
        )
    try:
        ask = service.session_question(
            request.get_data(cache=True),
            max_requests=current_app.config["CONVERTER_MAX_REQUESTS"],
            max_usd=Decimal(current_app.config["WATTFARE_MAX_USD"]),
        )
    except service.QuestionError as error:
        return _json_error(error.status, error.code, error.message, param=error.param)
    try:
        session = service.mint_session(origin, ask)
    except ValueError:  # an Origin (and Host) no browser sends, e.g. with a path in it
        return _json_error(400, "invalid_origin", "The Origin header is not a web origin.")
    response = jsonify(token=session.token, expiresAt=session.expires_at)
    response.headers["Cache-Control"] = "no-store"
    return response


# --- /api/convert ----------------------------------------------------------------------


@bp.post("/api/convert")
def convert() -> tuple[Response | str, int] | Response | str:
    htmx = request.headers.get("HX-Request") == "true"
    try:
        _refuse_foreign_origin()
        upload, token = _read_convert_request()
        conversion = service.convert(upload, token)
    except (ExtractionError, ConverterError) as error:
        return _convert_error(error, htmx)
    if not htmx:
        response = jsonify(
            result=conversion.markdown,
            filename=conversion.document.filename,
            finishReason=conversion.finish_reason,
            remaining=conversion.remaining,
            remainingUsd=_usd(conversion.remaining_usd),
        )
    else:
        response = Response(
            render_template(
                "_result.html",
                conversion=conversion,
                preview=render.render_preview(conversion.markdown),
                download_name=render.download_name(conversion.document.filename),
                download_url=render.download_url(conversion.markdown),
            )
        )
        _trigger_grant_balance(response, conversion.remaining, _usd(conversion.remaining_usd))
    response.vary.add("HX-Request")
    return response


@bp.errorhandler(InternalServerError)
def internal_error(error: InternalServerError) -> tuple[Response | str, int]:
    """A bug of ours: a calm page, fragment or JSON body; the traceback goes to the log."""
    message = "Something went wrong on our side. Nothing was charged; please try again."
    if request.path.startswith("/api/"):
        if request.headers.get("HX-Request") == "true":
            return render_template("_error.html", code="internal_error", message=message), 500
        return _json_error(500, "internal_error", message)
    return render_template("errors/500.html", message=message), 500


def _read_convert_request() -> tuple[Upload, str | None]:
    try:
        if request.is_json:
            return service.upload_from_json(request.get_json(silent=True))
        if request.mimetype == "multipart/form-data":
            storage = request.files.get("file")
            if storage is None or not storage.filename:
                raise ConverterError(400, "file_required", "Choose a file to convert.")
            # One byte past the limit is enough for extract_text() to say "too large".
            data = storage.stream.read(MAX_UPLOAD_BYTES + 1)
            upload = Upload(storage.filename, data, storage.mimetype)
            return upload, request.form.get("grantToken")
    except RequestEntityTooLarge:
        # The whole request passed MAX_CONTENT_LENGTH, far beyond any upload we accept.
        raise ExtractionError(
            "file_too_large",
            f"The file is larger than the {MAX_UPLOAD_BYTES // (1024 * 1024)} MB upload "
            "limit. Upload a smaller file or split it into parts.",
        ) from None
    raise ConverterError(
        415,
        "unsupported_content_type",
        "Send JSON ({grantToken, file}) or a multipart form with a file and grantToken.",
    )


def _refuse_foreign_origin() -> None:
    """Browsers always say where a POST comes from; refuse other sites' pages (CSRF)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != _own_origin():
        raise ConverterError(
            403, "origin_not_allowed", "Conversions are only accepted from this site's pages."
        )


def _own_origin() -> str:
    return f"{request.scheme}://{request.host}"


def _convert_error(error: ExtractionError | ConverterError, htmx: bool) -> Any:
    reason = getattr(error, "reason", None)
    if htmx:
        response = Response(
            render_template("_error.html", code=error.code, message=error.message),
            status=error.status,
        )
        if error.code == "grant_used":
            _trigger_grant_balance(response, 0, None)
    else:
        extra = {"reason": reason} if reason else {}
        response = _json_error(error.status, error.code, error.message, **extra)
    response.vary.add("HX-Request")
    return response


def _json_error(status: int, code: str, message: str, **extra: Any) -> Response:
    """The demo's error body, the seed's shape plus a message: {"error": code, "message"}."""
    response = jsonify(error=code, message=message, **extra)
    response.status_code = status
    return response


def _usd(amount: Decimal | None) -> float | None:
    """Dollars are JSON numbers at the edge (the engine's rule); exact inside."""
    return None if amount is None else float(amount)


def _trigger_grant_balance(response: Response, remaining: int | None, usd: float | None) -> None:
    """Tell the page's htmx extension what the grant has left (an `HX-Trigger` event).

    static/app.js forgets the grant token when `remaining` reaches 0.
    """
    response.headers["HX-Trigger"] = json.dumps(
        {"wattfare:grant": {"remaining": remaining, "remainingUsd": usd}}
    )
