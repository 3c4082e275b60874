"""One error tree for everything that can go wrong talking to Wattfare.

    WattfareError                      code, status, message, request_id, type, param
    ├── WattfareInvalidRequestError    400 and other 4xx: the request is wrong (`param`)
    │   └── WattfareConflictError      409: the same call is still running (or its key was used)
    ├── WattfareAuthError              401/403, a missing secret key, an empty grant token
    ├── WattfareGrantError             402 grant_invalid: `reason` says why
    ├── WattfareRateLimitError         429: `retry_after` seconds, when the engine says
    ├── WattfareUpstreamError          5xx: the engine or the model provider failed
    └── WattfareConnectionError        the engine could not be reached, or hung up
        └── WattfareTimeoutError       no answer in time (a client timeout, or a 408)

`to_wattfare_error(exc)` turns our errors, httpx errors and `openai` package errors that
came from a Wattfare API into one of these, and anything else into None, like
`toWattfareError` in `wattfare/server`.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from typing import Any

import httpx

GRANT_HEADER = "x-wattfare-grant"


class WattfareError(Exception):
    """Base of all Wattfare errors. `status` is None when no HTTP status applies."""

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        type: str | None = None,
        param: str | None = None,
        request_id: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.type = type
        self.param = param
        self.request_id = request_id
        self.body = body  # the API's `error` object, as sent

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r})"


class WattfareInvalidRequestError(WattfareError):
    pass


class WattfareConflictError(WattfareInvalidRequestError):
    """409: `idempotency_key_in_use` or `call_in_progress` (the same call is still
    running: retried by the SDK), or `idempotency_key_used` (a stream ran under the key)."""


class WattfareAuthError(WattfareError):
    pass


class WattfareGrantError(WattfareError):
    """The grant is unknown, expired, used up, over its dollar cap, or revoked."""

    def __init__(self, message: str, *, reason: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("code", "grant_invalid")
        super().__init__(message, **kwargs)
        self.reason = reason  # unknown | expired | exhausted | over_cap | revoked


class WattfareRateLimitError(WattfareError):
    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class WattfareUpstreamError(WattfareError):
    pass


class WattfareConnectionError(WattfareError):
    pass


class WattfareTimeoutError(WattfareConnectionError):
    """No answer in time. The call may still be running (and be charged once): a retry
    with the same Idempotency-Key gets its answer."""


# Error `type`s of the JSON error shape, for errors that arrive without an HTTP status
# (an error event that ends a stream).
_BY_TYPE: dict[str, type[WattfareError]] = {
    "invalid_request_error": WattfareInvalidRequestError,
    "authentication_error": WattfareAuthError,
    "permission_error": WattfareAuthError,
    "grant_error": WattfareGrantError,
    "rate_limit_error": WattfareRateLimitError,
    "api_error": WattfareUpstreamError,
}


def _class_for(status: int | None, code: str, error_type: str | None) -> type[WattfareError]:
    if code == "grant_invalid" or status == 402:
        return WattfareGrantError
    if status is None:
        return _BY_TYPE.get(error_type or "", WattfareError)
    if status in (401, 403):
        return WattfareAuthError
    if status == 408:
        return WattfareTimeoutError
    if status == 409:
        return WattfareConflictError
    if status == 429:
        return WattfareRateLimitError
    if status >= 500:
        return WattfareUpstreamError
    return WattfareInvalidRequestError


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    try:
        return float(headers["retry-after-ms"]) / 1000
    except (KeyError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_body(
    error: Any,
    *,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    fallback_message: str = "Wattfare returned an error.",
) -> WattfareError:
    """The WattfareError for the API's `error` object (any shape) and HTTP status."""
    error = error if isinstance(error, Mapping) else {}
    headers = headers or {}
    code = error.get("code")
    code = code if isinstance(code, str) and code else f"http_{status or 'error'}"
    message = error.get("message")
    message = message if isinstance(message, str) and message else fallback_message
    error_type = error.get("type") if isinstance(error.get("type"), str) else None
    param = error.get("param") if isinstance(error.get("param"), str) else None
    cls = _class_for(status, code, error_type)
    common: dict[str, Any] = {
        "code": code,
        "status": status,
        "type": error_type,
        "param": param,
        "request_id": headers.get("x-request-id"),
        "body": error or None,
    }
    if cls is WattfareGrantError:
        reason = error.get("reason")
        return WattfareGrantError(
            message, reason=reason if isinstance(reason, str) else None, **common
        )
    if cls is WattfareRateLimitError:
        return WattfareRateLimitError(message, retry_after=retry_after_seconds(headers), **common)
    return cls(message, **common)


def error_from_response(response: Any) -> WattfareError:
    """The WattfareError for an error response (httpx's, or the `openai` package's)."""
    try:
        payload = response.json()
    except ValueError:  # an HTML error page from a proxy, an empty body, …
        payload = None
    error = payload.get("error") if isinstance(payload, dict) else None
    return error_from_body(
        error,
        status=response.status_code,
        headers=response.headers,
        fallback_message=f"Wattfare answered HTTP {response.status_code} "
        f"{response.reason_phrase}".rstrip(),
    )


def connection_error(exc: Exception) -> WattfareConnectionError:
    if isinstance(exc, httpx.TimeoutException) or "Timeout" in type(exc).__name__:
        return WattfareTimeoutError(
            f"Wattfare did not answer in time: {exc or type(exc).__name__}", code="timeout"
        )
    return WattfareConnectionError(
        f"The connection to Wattfare failed: {exc or type(exc).__name__}",
        code="connection_error",
    )


def _sent_to_wattfare(exc: Exception) -> bool:
    """Whether the failed request was a Wattfare API call (it carried a grant or an sk_ key).

    OpenAI and OpenRouter use the same error shape, so the shape alone cannot tell.
    """
    try:
        headers = exc.request.headers  # type: ignore[attr-defined]
    except (AttributeError, RuntimeError):  # httpx raises RuntimeError when it has none
        return False
    auth = headers.get("authorization", "")
    return GRANT_HEADER in headers or auth.startswith(("Bearer sk_test_", "Bearer sk_live_"))


def _from_openai(exc: Exception) -> WattfareError | None:
    try:
        import openai  # optional: only its errors need it
    except ImportError:
        return None
    if not isinstance(exc, openai.APIError) or not _sent_to_wattfare(exc):
        return None
    if isinstance(exc, openai.APIConnectionError):
        return connection_error(exc)
    if isinstance(exc, openai.APIStatusError):
        return error_from_response(exc.response)
    # An error event that ended a stream: the error object, no HTTP status.
    return error_from_body(exc.body, fallback_message=exc.message)


def to_wattfare_error(exc: BaseException) -> WattfareError | None:
    """`exc` as a WattfareError if it is one or came from a Wattfare API call, else None."""
    if isinstance(exc, WattfareError):
        return exc
    if not isinstance(exc, Exception):
        return None
    if isinstance(exc, httpx.HTTPStatusError) and _sent_to_wattfare(exc):
        return error_from_response(exc.response)
    if isinstance(exc, httpx.TransportError) and _sent_to_wattfare(exc):
        return connection_error(exc)
    return _from_openai(exc)


__all__ = [
    "WattfareAuthError",
    "WattfareConflictError",
    "WattfareConnectionError",
    "WattfareError",
    "WattfareGrantError",
    "WattfareInvalidRequestError",
    "WattfareRateLimitError",
    "WattfareTimeoutError",
    "WattfareUpstreamError",
    "retry_after_seconds",
    "to_wattfare_error",
]
