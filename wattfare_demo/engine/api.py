"""/api/v1: grants, the metered endpoints (chat completions, responses), grant status.

Routes stay thin: parse (validation.py, responses.py) → `metering.run(call)` → the answer.
The accounting is in grants.py, one call's lifecycle in metering.py, the calls in
providers/, and how a retry is recognised in idempotency.py.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from flask import Blueprint, Response, current_app, jsonify, request, url_for
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..extensions import db
from ..request_log import note
from . import grants, idempotency, metering, responses, revocation
from .apps import CallingApp, calling_app, origin_allowed
from .chat_completions import ChatCompletionsRenderer
from .errors import ApiError, error_response, http_error_response, invalid_request
from .metering import MeteredCall, registry
from .models import Grant
from .pricing import pusd_to_usd
from .sessions import check_within_session, exceeds_session, verify_session
from .validation import json_body, parse_chat_request, parse_grant_request

log = logging.getLogger(__name__)
bp = Blueprint("wattfare_api", __name__, url_prefix="/api/v1")


@bp.errorhandler(ApiError)
def _api_error(error: ApiError) -> Response:
    return error_response(error)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    return http_error_response(exc)


# The largest body /api/v1 reads: its bodies are JSON text (the converter's largest call
# is about 1 MB). The app-wide MAX_CONTENT_LENGTH is higher, for the converter's uploads.
MAX_BODY_BYTES = 2 * 1024 * 1024


def limit_body() -> None:
    """Before every request under /api/v1 (init_engine): 413 for a body over the limit."""
    too_large = RequestEntityTooLarge(f"The body is larger than {MAX_BODY_BYTES // 2**20} MB.")
    # Werkzeug cuts a chunked body (no Content-Length) at max_content_length without an
    # error, so a long body would be read as its first megabytes: allow one byte more,
    # read it now, and refuse it if that byte came.
    request.max_content_length = MAX_BODY_BYTES + 1
    if request.content_length is not None:
        if request.content_length > MAX_BODY_BYTES:
            raise too_large
    elif len(request.get_data(cache=True)) > MAX_BODY_BYTES:
        raise too_large


# --- authentication ------------------------------------------------------------------


def _bearer() -> str:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise ApiError(
            401,
            "missing_credentials",
            "Send Authorization: Bearer <key or token>.",
            type="authentication_error",
        )
    return value.strip()


def authenticate_app() -> CallingApp:
    """The app whose secret key is in the Authorization header, or 401."""
    app = calling_app(_bearer())
    if app is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "The secret key is not valid. Use the sk_… key printed when the app was created.",
            type="authentication_error",
        )
    note(app=app.id)  # for the request log line
    return app


def grant_token_header() -> str:
    token = request.headers.get("x-wattfare-grant", "").strip()
    if not token:
        raise invalid_request("x-wattfare-grant", "Send the grant token in x-wattfare-grant.")
    return token


def _outcome(value: str) -> None:
    note(outcome=value)  # for the request log line; never a token


# --- grants --------------------------------------------------------------------------


@bp.post("/grants")
def create_grant() -> tuple[Response, int]:
    session = verify_session(_bearer(), current_app.config["SECRET_KEY"])
    note(app=session.app.id)
    if not origin_allowed(session.app, session.origin):
        raise ApiError(
            403,
            "origin_not_allowed",
            f"{session.origin} is not an allowed origin of app {session.app.name!r}. "
            "Add it with `flask wattfare add-origin`.",
            type="permission_error",
        )
    ask = parse_grant_request(json_body(), Decimal(current_app.config["WATTFARE_MAX_USD"]))
    # The session is the app server's answer to what this page may ask for: no more
    # requests, no higher cap, only its model, and one grant (create_grant records it).
    check_within_session(session, requests=ask.requests, max_pusd=ask.max_pusd)
    model = _granted_model(session.model, ask.model)
    if model is not None:
        _check_session_model(model)
    new = grants.create_grant(
        session.app,
        origin=session.origin,
        subject=session.subject,
        requests=ask.requests,
        max_pusd=ask.max_pusd,
        ttl=current_app.config["WATTFARE_GRANT_TTL"],
        model=model,
        session=(session.jti, session.expires_at),
    )
    _outcome("grant_created")
    response = jsonify(
        grantToken=new.token,
        expiresAt=new.expires_at,
        requests=new.requests,
        # The visitor's page for this grant, on the engine's origin: what it spends, and
        # a Revoke button. Its capability views and revokes; it never spends.
        receiptUrl=url_for("wattfare_receipts.receipt", capability=new.receipt, _external=True),
    )
    response.headers["Cache-Control"] = "no-store"  # it carries a token
    return response, 200


def _granted_model(allowed: str | None, asked: str | None) -> str | None:
    """The model the grant is bound to: the one the session names, which the popup
    showed. A grant that names none gets the session's (narrower can only protect the
    visitor); one that names another is refused, like any ask beyond its session."""
    if allowed is None or asked is None or asked == allowed:
        return asked or allowed
    raise exceeds_session(
        "model",
        f"This session allows a grant for {allowed!r} only; the grant asks for {asked!r}. "
        "The page must ask for the model the app's server named (requestGrant({model})).",
    )


def _check_session_model(model: str) -> None:
    """A grant for a model this engine cannot meter could never be spent: refuse it now."""
    try:
        registry().route(model)
    except ApiError as exc:
        raise ApiError(
            400,
            exc.code,
            f"The session names a model this engine cannot serve. {exc.message}",
            param="model",
        ) from None


@bp.get("/grant")
def grant_status() -> Response:
    app = authenticate_app()
    grant = grants.find_grant(app.id, grant_token_header())
    return _grant_json(grant)


@bp.delete("/grant")
def revoke_grant() -> Response:
    """The app ends a grant at once (its visitor asked it to, say): new calls get 402
    `revoked`, and a stream running on it stops within a second. Revoking a revoked
    grant changes nothing and answers the same."""
    app = authenticate_app()
    grant = grants.find_grant(app.id, grant_token_header())
    revocation.revoke_grant(grant.id)
    db.session.refresh(grant)
    _outcome("grant_revoked")
    return _grant_json(grant)


def _grant_json(grant: Grant) -> Response:
    return jsonify(
        requests=grant.requests,
        remaining=max(grant.requests - grant.used - grant.reserved, 0),
        maxUsd=None if grant.max_pusd is None else float(pusd_to_usd(grant.max_pusd)),
        spentUsd=float(pusd_to_usd(grant.spent_pusd)),
        expiresAt=grant.expires_at,
        status=grants.grant_status(grant),
    )


@bp.get("/models")
def list_models() -> Response:
    authenticate_app()
    data = [
        {"id": m, "object": "model", "owned_by": m.split("/")[0]} for m in registry().model_ids()
    ]
    return jsonify(object="list", data=data)


# --- the metered endpoints ------------------------------------------------------------------


@bp.post("/chat/completions")
def chat_completions() -> Response:
    app = authenticate_app()
    token = grant_token_header()
    payload = json_body()
    chat = parse_chat_request(payload)
    retry = idempotency.from_request(app.id, token, payload, endpoint="chat", stream=chat.stream)
    return metering.run(MeteredCall(app, token, chat, retry, ChatCompletionsRenderer(chat.model)))


@bp.post("/responses", endpoint="responses")
def create_response() -> Response:
    app = authenticate_app()
    token = grant_token_header()
    payload = json_body()
    chat, renderer = responses.parse(payload)
    retry = idempotency.from_request(
        app.id, token, payload, endpoint="responses", stream=chat.stream
    )
    return metering.run(MeteredCall(app, token, chat, retry, renderer))
