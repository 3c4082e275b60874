"""/api/v1: grants, the metered chat-completions proxy, grant status. Routes stay thin:
validation is in validation.py, the accounting in grants.py, the calls in providers/.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import replace
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request, stream_with_context
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from ..request_log import note
from . import grants, idempotency
from .apps import app_for_secret_key, origin_allowed
from .errors import ApiError, error_response, grant_invalid, http_error_response, invalid_request
from .models import App
from .pricing import pusd_to_usd, usd_str
from .providers import DEFAULT_MAX_TOKENS, ModelRoute, ProviderRegistry
from .providers.base import ChatRequest, Completion, Delta, ProviderError
from .sessions import check_within_session, verify_session
from .validation import ChatCall, json_body, parse_chat_request, parse_grant_request

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


def registry() -> ProviderRegistry:
    return current_app.extensions["wattfare_providers"]


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


def authenticate_app() -> App:
    """The app whose secret key is in the Authorization header, or 401."""
    app = app_for_secret_key(_bearer())
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


def balance_headers(balance: grants.GrantBalance) -> dict[str, str]:
    headers = {"x-wattfare-grant-remaining": str(max(balance.remaining, 0))}
    if balance.remaining_pusd is not None:
        headers["x-wattfare-grant-remaining-usd"] = usd_str(max(balance.remaining_pusd, 0))
    return headers


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
    if session.model is not None:
        _check_session_model(session.model)
    new = grants.create_grant(
        session.app,
        origin=session.origin,
        subject=session.subject,
        requests=ask.requests,
        max_pusd=ask.max_pusd,
        ttl=current_app.config["WATTFARE_GRANT_TTL"],
        model=session.model,
        session=(session.jti, session.expires_at),
    )
    _outcome("grant_created")
    response = jsonify(grantToken=new.token, expiresAt=new.expires_at, requests=new.requests)
    response.headers["Cache-Control"] = "no-store"  # it carries a token
    return response, 200


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


# --- chat completions -------------------------------------------------------------------


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def upstream_error(exc: ProviderError) -> ApiError:
    if exc.kind == "upstream_rejected":
        return ApiError(
            400, "upstream_rejected", f"The model provider refused the request: {exc.message}"
        )
    if exc.kind == "upstream_rate_limited":
        return ApiError(
            429,
            "upstream_rate_limited",
            "The model provider is rate limiting; retry shortly. Nothing was charged.",
            type="rate_limit_error",
            headers={"Retry-After": "5"},
        )
    if exc.kind == "timeout":
        return ApiError(
            504,
            "upstream_timeout",
            "The model provider did not answer in time. Nothing was charged.",
            type="api_error",
        )
    return ApiError(
        502,
        "upstream_error",
        f"The model provider failed ({exc.kind}). Nothing was charged.",
        type="api_error",
    )


@bp.post("/chat/completions")
def chat_completions() -> Response:
    started = time.perf_counter()
    app = authenticate_app()
    token = grant_token_header()
    payload = json_body()
    call = parse_chat_request(payload)
    idem = idempotency.from_request(app.id, token, payload)
    if (replay := idem.replay()) is not None:
        _outcome("replayed")
        return replay
    route = registry().route(call.model)
    chat = ChatRequest(
        model=route.model,
        messages=call.messages,
        max_tokens=call.max_tokens or DEFAULT_MAX_TOKENS,
        options=call.options,
    )
    prompt_tokens = route.provider.prompt_tokens_upper_bound(chat)
    with idem.claim():
        reservation = grants.reserve(
            app.id,
            token,
            model=route.model,
            price=route.price,
            prompt_tokens=prompt_tokens,
            max_tokens=chat.max_tokens,
            hold_ttl=current_app.config["WATTFARE_HOLD_TTL"],
            stream=call.stream,
            idempotency_key=idem.key,
            request_fingerprint=idem.fingerprint,
        )
    chat = replace(chat, max_tokens=reservation.max_tokens)
    if call.stream:
        return _stream(call, route, chat, reservation, prompt_tokens, started)
    try:
        completion = route.provider.complete(chat)
    except ProviderError as exc:
        grants.release(reservation, error=exc.kind, duration_ms=_elapsed_ms(started))
        _outcome(f"released:{exc.kind}")
        raise upstream_error(exc) from None
    except BaseException:
        grants.release(reservation, error="internal", duration_ms=_elapsed_ms(started))
        raise
    response = jsonify(_completion_body(call, completion))
    balance = grants.settle(
        reservation,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        price=route.price,
        duration_ms=_elapsed_ms(started),
        response_body=idem.stored(response),
    )
    _outcome("settled")
    response.headers.update(balance_headers(balance))
    idem.remember(reservation.usage_id, response)
    return response


def _completion_body(call: ChatCall, completion: Completion) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{secrets.token_hex(12)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": call.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        },
    }


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


def _stream(
    call: ChatCall,
    route: ModelRoute,
    chat: ChatRequest,
    reservation: grants.Reservation,
    prompt_tokens: int,
    started: float,
) -> Response:
    """Server-sent events in OpenAI's chunk format, settled when the stream ends.

    Policy (README, "What a call costs"): a provider failure mid-stream charges
    nothing; a client that goes away is charged for the tokens generated before it
    left (the provider bills them); a stream that reaches the dollar cap ends with a
    `grant_invalid` / `over_cap` error event after its usage chunk.
    """
    chunk_id = f"chatcmpl-{secrets.token_hex(12)}"
    created = int(time.time())
    capped = call.max_tokens is None or reservation.max_tokens < call.max_tokens
    cap_limited = reservation.balance.remaining_pusd is not None and capped
    # Upstream providers report an estimate while streaming (exact only at the end), so
    # allow the estimate some slack; the charge is clamped to the hold in any case.
    overrun_limit = reservation.max_tokens + reservation.max_tokens // 2 + 16

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        return _sse(
            {
                "id": chunk_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": call.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
            }
        )

    def events() -> Iterator[str]:
        completion_tokens = 0
        settled = False
        called = False  # has the provider been asked (and so may bill)?
        try:
            yield chunk({"role": "assistant", "content": ""})
            called = True
            with closing(route.provider.stream(chat)) as upstream:
                end = None
                for event in upstream:
                    if isinstance(event, Delta):
                        if event.completion_tokens > overrun_limit:
                            break  # the provider ignored max_tokens: cut what is unpaid
                        completion_tokens = event.completion_tokens
                        yield chunk({"content": event.text})
                    else:
                        end = event
            finish = end.finish_reason if end else "length"
            used_prompt = end.prompt_tokens if end else prompt_tokens
            used_completion = end.completion_tokens if end else completion_tokens
            balance = grants.settle(
                reservation,
                prompt_tokens=used_prompt,
                completion_tokens=used_completion,
                price=route.price,
                duration_ms=_elapsed_ms(started),
            )
            settled = True
            _outcome("settled:stream")
            yield chunk({}, finish)
            usage = {
                "prompt_tokens": used_prompt,
                "completion_tokens": used_completion,
                "total_tokens": used_prompt + used_completion,
            }
            yield _sse(
                {
                    "id": chunk_id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": call.model,
                    "choices": [],
                    "usage": usage,
                    "wattfare": {
                        "remaining": max(balance.remaining, 0),
                        "remainingUsd": (
                            None
                            if balance.remaining_pusd is None
                            else float(pusd_to_usd(max(balance.remaining_pusd, 0)))
                        ),
                    },
                }
            )
            if finish == "length" and cap_limited:
                yield _sse(grants_cap_error())
            yield _sse("[DONE]")
        except ProviderError as exc:
            grants.release(reservation, error=exc.kind, duration_ms=_elapsed_ms(started))
            settled = True
            _outcome(f"released:{exc.kind}")
            yield _sse(upstream_error(exc).body())
            yield _sse("[DONE]")
        except GeneratorExit:
            if not settled and not called:
                # Gone before the provider was called: nothing was generated.
                grants.release(
                    reservation, error="client_disconnected", duration_ms=_elapsed_ms(started)
                )
                _outcome("released:client_disconnected")
            elif not settled:
                # The client went away: charge what was generated, which the
                # provider bills too.
                grants.settle(
                    reservation,
                    prompt_tokens=prompt_tokens,
                    completion_tokens=completion_tokens,
                    price=route.price,
                    duration_ms=_elapsed_ms(started),
                    error="client_disconnected",
                )
                _outcome("settled:client_disconnected")
                log.info("client left mid-stream: usage %s", reservation.usage_id)
            raise
        except BaseException:
            if not settled:
                grants.release(reservation, error="internal", duration_ms=_elapsed_ms(started))
            raise

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    headers.update(balance_headers(reservation.balance))
    _outcome("streaming")  # replaced by the final outcome when the stream ends
    return Response(stream_with_context(events()), mimetype="text/event-stream", headers=headers)


def grants_cap_error() -> dict[str, Any]:
    error = grant_invalid("over_cap")
    error.message = "The stream reached the grant's dollar cap and was cut."
    return error.body()
