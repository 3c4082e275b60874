"""The one JSON error shape of /api/v1, OpenAI-compatible:

    {"error": {"code": "grant_invalid", "type": "…", "message": "…", "reason": "…"}}

`reason` is set for grant errors, `param` names the offending field of a bad request.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Response, jsonify
from werkzeug.exceptions import HTTPException

GRANT_MESSAGES = {
    "unknown": "The grant token is unknown. Ask the user to approve a new grant.",
    "expired": "The grant has expired. Ask the user to approve a new grant.",
    "exhausted": "The grant's requests are used up. Ask the user to approve a new grant.",
    "over_cap": "The grant's dollar cap is reached. Ask the user to approve a new grant.",
    "revoked": "The grant was revoked by the user.",
    "model_not_granted": "The grant was approved for another model. Call the model it was "
    "approved for, or ask the user to approve a grant for this one.",
    "app_budget": "This app has spent its daily budget: calls resume as the day's spending "
    "ages out. Nothing was charged.",
}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        type: str = "invalid_request_error",
        reason: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.type = type
        self.reason = reason
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "type": self.type, "message": self.message}
        if self.reason:
            error["reason"] = self.reason
        if self.param is not None:  # "" is a field name too: {"": 1} is an unknown field ""
            error["param"] = self.param
        return {"error": error}


def invalid_request(param: str, message: str) -> ApiError:
    return ApiError(400, "invalid_request", message, param=param)


def grant_invalid(reason: str) -> ApiError:
    return ApiError(402, "grant_invalid", GRANT_MESSAGES[reason], type="grant_error", reason=reason)


def error_response(error: ApiError) -> Response:
    response = jsonify(error.body())
    response.status_code = error.status
    response.headers.update(error.headers)
    return response


def http_error_response(exc: HTTPException) -> Response:
    """Werkzeug's HTTP errors (404, 405, 413, …) in the same JSON shape."""
    if exc.response is not None:
        # The exception carries its finished answer (the rate limiter's 429, already in
        # this shape with Retry-After): send it as it is.
        return cast(Response, exc.response)
    code = (exc.name or "error").lower().replace(" ", "_")
    error = ApiError(exc.code or 500, code, exc.description or exc.name or "Error")
    response = error_response(error)
    if exc.code == 405 and exc.valid_methods:  # type: ignore[attr-defined]
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response
