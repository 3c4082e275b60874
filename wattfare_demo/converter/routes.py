"""The demo's pages and its API routes. Thin: the work is in service.py.

    GET  /                     the converter page
    POST /api/wattfare-token   a session token for the consent popup     (same-origin only)
    POST /api/grant/revoke     {grantToken} -> the SDK's grant.revoke()  (same-origin only)
    POST /api/convert/plan     the file -> {"requests": N, "kind", …}    no grant (converter.plan)
    POST /api/convert          {grantToken, file}:
                                 htmx (HX-Request) or Accept: text/event-stream
                                   -> a stream of server-sent events, part by part
                                 anyone else -> one JSON answer with the whole Markdown

Everything /api/convert refuses before the first model call (no or a used-up grant, a
file we can't read, one that needs more requests than the grant has) is an ordinary
4xx: a fragment for htmx, JSON otherwise. Once the stream runs, a part that fails ends
it with a `done` event that says which parts arrived. Answers that carry a document
are `Cache-Control: no-store`, and a URL that serves fragment or JSON sends
`Vary: HX-Request`.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from typing import Any

from flask import (
    Blueprint,
    Request,
    Response,
    copy_current_request_context,
    current_app,
    jsonify,
    render_template,
    request,
)
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import InternalServerError, RequestEntityTooLarge

from . import cage, filetypes, render, service, streaming
from .extract import MAX_UPLOAD_BYTES, ExtractionError
from .service import (
    Conversion,
    ConverterError,
    Delta,
    Finished,
    PartFinished,
    PartStarted,
    Plan,
    Upload,
)
from .uploads import InMemoryUploadsRequest

bp = Blueprint("converter", __name__)


@bp.record_once
def _keep_uploads_in_memory(state: BlueprintSetupState) -> None:
    """No spilling of uploads to temporary files (uploads.py), unless the app already
    has a request class of its own."""
    if state.app.request_class is Request:
        state.app.request_class = InMemoryUploadsRequest


# How often the page's preview of the part being written is re-rendered (the Markdown
# source gets every delta; streaming.pump merges those that pile up).
PREVIEW_EVERY_SECONDS = 0.5
KEEPALIVE_SECONDS = 10.0
# The extra requests the page offers for the visitor's next files.
EXTRA_REQUEST_CHOICES = (0, 1, 2, 3, 5, 10)

# The images the preview may show: this origin and data: URLs (render.py). The CSP
# says the same to the browser.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)


# --- headers ---------------------------------------------------------------------------


@bp.after_request
def security_headers(response: Response) -> Response:
    # Scripts, styles and images from this origin only: nothing inline, nothing from an
    # uploaded file. The popup is another window, so a separate engine needs no entry here.
    response.headers.setdefault("Content-Security-Policy", _CSP)
    # The consent popup must be able to post its answer back to this window.
    response.headers["Cross-Origin-Opener-Policy"] = "same-origin-allow-popups"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "strict-origin-when-cross-origin"
    response.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if request.path.startswith("/api/convert"):
        # Every answer here carries (part of) a visitor's document or refers to one.
        response.headers["Cache-Control"] = "no-store"
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
    cage.warm_up()  # the extraction cage starts while the visitor picks a file
    max_requests = service.max_requests()
    return render_template(
        "index.html",
        publishable_key=current_app.config["WATTFARE_PUBLISHABLE_KEY"],
        # The engine's origin for the popup; unset, wattfare.js uses this page's origin.
        engine_url=current_app.config.get("WATTFARE_API_URL"),
        accept=filetypes.accept_list(),
        hint=filetypes.hint(),
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_requests=max_requests,
        extra_choices=[n for n in EXTRA_REQUEST_CHOICES if n < max_requests],
        max_usd=current_app.config["WATTFARE_MAX_USD"],
        # The popup shows it and quotes for it; the session binds the grant to it.
        model=current_app.config["WATTFARE_MODEL"],
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


# --- /api/grant/revoke -----------------------------------------------------------------


@bp.post("/api/grant/revoke")
def revoke_grant() -> tuple[Response, int] | Response:
    """ "Stop using my grant": `{"grantToken": "wfg_…"}` → the SDK's grant.revoke().

    The demo's own route, so the page never holds the secret key: the seam holds. Only a
    page on this origin may ask (Origin, as for /api/wattfare-token)."""
    origin = request.headers.get("Origin")
    if not origin or origin != _own_origin():
        return _json_error(
            403, "origin_not_allowed", "Grants can only be stopped from this site's pages."
        )
    try:
        body = _json_body() if request.mimetype == "application/json" else request.form
        token = body.get("grantToken") if hasattr(body, "get") else None
        status = service.revoke_grant(token if isinstance(token, str) else None)
    except ConverterError as error:
        return _error_json(error)
    response = jsonify(status=status.status, remaining=status.remaining)
    response.headers["Cache-Control"] = "no-store"
    return response


# --- /api/convert/plan -----------------------------------------------------------------


@bp.post("/api/convert/plan")
def plan() -> Any:
    """How many AI requests a file needs, before anyone is asked to approve them."""
    htmx = _is_htmx()
    try:
        _refuse_foreign_origin()
        upload, _token = _read_convert_request()
        prepared = service.plan(upload)
    except (ExtractionError, ConverterError) as error:
        if htmx:
            return _fragment("_plan.html", error.status, error=error)
        return _error_json(error)
    if htmx:
        response = _fragment("_plan.html", 200, plan=prepared, max_requests=service.max_requests())
    else:
        response = jsonify(_plan_json(prepared))
    response.vary.add("HX-Request")
    return response


def _plan_json(prepared: Plan) -> dict[str, Any]:
    document = prepared.document
    return {
        "requests": prepared.requests,
        "kind": document.kind,
        "label": document.label,
        "filename": document.filename,
        "size": document.size,
        "chars": document.chars,
        "sections": len(document.sections),
        "maxRequests": service.max_requests(),
    }


# --- /api/convert ----------------------------------------------------------------------


@bp.post("/api/convert")
def convert() -> Any:
    htmx = _is_htmx()
    wants_stream = htmx or "text/event-stream" in request.headers.get("Accept", "")
    try:
        _refuse_foreign_origin()
        upload, token = _read_convert_request()
        if not wants_stream:
            return _conversion_json(service.convert(upload, token))
        status = service.check_grant(token)  # the grant first: a bad one costs no parsing
        prepared = service.plan(upload)
        events = service.run(prepared, (token or "").strip(), status, stream=True)
        first = next(events)  # refuses here (402 grant_too_small) before the stream opens
    except (ExtractionError, ConverterError) as error:
        if htmx:
            response = _fragment(
                "_error.html",
                error.status,
                code=error.code,
                message=error.message,
                reason=getattr(error, "reason", None),
                remaining=_remaining_after(error),
            )
        else:
            response = _error_json(error)
        response.vary.add("HX-Request")
        return response

    @copy_current_request_context
    def work(emit: streaming.Emit, stop: threading.Event) -> None:
        _stream_events(prepared, first, events, emit, stop)

    crash = _crash_event()  # rendered now, in the request: the pump's thread has no context
    stream = streaming.pump(work, heartbeat=KEEPALIVE_SECONDS, on_crash=lambda: crash)
    response = Response(stream, mimetype="text/event-stream")
    response.headers["X-Accel-Buffering"] = "no"  # nginx-style proxies: don't hold it back
    response.vary.add("HX-Request")
    return response


def _stream_events(
    prepared: Plan, first: Any, events: Any, emit: streaming.Emit, stop: threading.Event
) -> None:
    """Render each conversion event as the server-sent event the page swaps in."""
    name = render.download_name(prepared.document.filename)
    emit(
        streaming.event(
            "start", render_template("_stream_start.html", plan=prepared, download_name=name)
        )
    )
    current: list[str] = []  # the part being written, for its live preview
    previewed_at = time.monotonic()
    try:
        for item in _chain(first, events):
            if stop.is_set():
                return  # the visitor left: closing `events` closes the model's stream
            if isinstance(item, PartStarted):
                current = []
                label = f"Part {item.index} of {item.total}" if item.total > 1 else "Converting"
                emit(streaming.event("status", f"{label}: the AI model is writing…"))
            elif isinstance(item, Delta):
                emit(streaming.Piece("delta", _escape(item.text)))
                current.append(item.text)
                now = time.monotonic()
                if now - previewed_at >= PREVIEW_EVERY_SECONDS:
                    emit(streaming.event("preview", render.render_preview("".join(current))))
                    previewed_at = now
            elif isinstance(item, PartFinished):
                if item.index < item.total:
                    emit(streaming.Piece("delta", "\n\n"))
                emit(
                    streaming.event(
                        "part",
                        render_template(
                            "_stream_part.html",
                            part=item,
                            preview=render.render_preview(item.markdown),
                        ),
                    )
                )
                emit(streaming.event("preview", ""))
            elif isinstance(item, Finished):
                emit(streaming.event("status", _end_status(item.conversion)))
                emit(streaming.event("done", _done_fragment(item.conversion)))
    finally:
        events.close()


def _end_status(conversion: Conversion) -> str:
    got, total = len(conversion.parts), conversion.total_parts
    if conversion.error is not None:
        return f"Stopped after {got} of {total} parts." if total > 1 else "Stopped."
    return f"Done: {total} parts, one AI request each." if total > 1 else "Done."


def _chain(first: Any, rest: Any) -> Any:
    yield first
    yield from rest


def _done_fragment(conversion: Conversion) -> str:
    markdown = conversion.markdown
    spent = conversion.error is not None and conversion.error.code == "grant_used"
    return render_template(
        "_stream_done.html",
        conversion=conversion,
        error=conversion.error,
        download_name=render.download_name(conversion.document.filename),
        download_url=render.download_url(markdown),
        # A grant the engine refused can't be used again, whatever its count says (a
        # spent cap, a revocation): the page forgets it, and asks for a new one.
        remaining=None if spent else conversion.remaining,
        remaining_usd=None if spent else conversion.remaining_usd,
        grant_remaining=0 if spent else conversion.remaining,
    )


def _crash_event() -> str:
    message = (
        "Something went wrong on our side while converting. Parts shown above were "
        "converted; please try again for the rest."
    )
    return streaming.event(
        "done", render_template("_stream_done.html", conversion=None, error=None, crash=message)
    )


def _escape(text: str) -> str:
    """Text for an HTML swap: the Markdown source pane shows it verbatim."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _conversion_json(conversion: Conversion) -> Response:
    body: dict[str, Any] = {
        "result": conversion.markdown,
        "filename": conversion.document.filename,
        "finishReason": conversion.finish_reason,
        "remaining": conversion.remaining,
        "remainingUsd": _usd(conversion.remaining_usd),
        "parts": conversion.total_parts,
    }
    if conversion.error is not None:
        error = conversion.error
        body = {"error": error.code, "message": error.message, **error.extra, **body}
        if error.reason:
            body["reason"] = error.reason
        response = jsonify(body)
        response.status_code = error.status
    else:
        response = jsonify(body)
    response.vary.add("HX-Request")
    return response


@bp.errorhandler(InternalServerError)
def internal_error(error: InternalServerError) -> tuple[Response | str, int]:
    """A bug of ours: a calm page, fragment or JSON body; the traceback goes to the log."""
    message = "Something went wrong on our side. Nothing was charged; please try again."
    if request.path.startswith("/api/"):
        if _is_htmx():
            page = render_template(
                "_error.html", code="internal_error", message=message, reason=None, remaining=None
            )
            return page, 500
        return _json_error(500, "internal_error", message)
    return render_template("errors/500.html", message=message), 500


# --- reading requests ------------------------------------------------------------------


def _is_htmx() -> bool:
    return request.headers.get("HX-Request") == "true"


def _read_convert_request() -> tuple[Upload, str | None]:
    try:
        if request.mimetype == "application/json":
            return service.upload_from_json(_json_body())
        if request.mimetype == "multipart/form-data":
            storage = request.files.get("file")
            if storage is None or not storage.filename:
                raise ConverterError(400, "file_required", "Choose a file to convert.")
            # One byte past the limit is enough for extract() to say "too large".
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


def _json_body() -> Any:
    """The JSON body, or a 400: also for nesting too deep to parse (RecursionError)."""
    try:
        return json.loads(request.get_data())
    except (ValueError, RecursionError):
        raise ConverterError(
            400, "invalid_json", "The body is not JSON we can read (or it is nested too deeply)."
        ) from None


def _refuse_foreign_origin() -> None:
    """Browsers always say where a POST comes from; refuse other sites' pages (CSRF)."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != _own_origin():
        raise ConverterError(
            403, "origin_not_allowed", "Conversions are only accepted from this site's pages."
        )


def _own_origin() -> str:
    return f"{request.scheme}://{request.host}"


# --- answers ---------------------------------------------------------------------------


def _fragment(template: str, status: int, **context: Any) -> Response:
    response = Response(render_template(template, **context), status=status)
    response.vary.add("HX-Request")
    return response


def _remaining_after(error: ExtractionError | ConverterError) -> int | None:
    """What the page should believe its grant has left after this refusal."""
    if getattr(error, "code", None) == "grant_used":
        return 0
    return None


def _error_json(error: ExtractionError | ConverterError) -> Response:
    extra = dict(getattr(error, "extra", {}) or {})
    reason = getattr(error, "reason", None)
    if reason:
        extra["reason"] = reason
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
