"""Strict parsing of /api/v1 request bodies: every refusal names the field.

Bodies are parsed with `parse_float=Decimal` so money never passes through a float,
and with NaN/Infinity refused, which Python's json module would otherwise accept.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask import request

from .errors import invalid_request
from .pricing import usd_to_pusd

MAX_GRANT_REQUESTS = 100
MAX_MESSAGES = 256
MAX_OUTPUT_TOKENS = 1_000_000
ROLES = {"system", "developer", "user", "assistant", "tool"}
# Chat fields the engine decides itself; everything else is passed to the provider.
ENGINE_FIELDS = {
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "stream",
    "stream_options",
    "n",
}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def json_body() -> dict[str, Any]:
    if request.mimetype != "application/json":
        raise invalid_request("body", "Send a JSON body with Content-Type: application/json.")
    try:
        body = json.loads(
            request.get_data(cache=True), parse_float=Decimal, parse_constant=_refuse_constant
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid_request("body", f"The body is not valid JSON: {exc}.") from None
    if not isinstance(body, dict):
        raise invalid_request("body", "The body must be a JSON object.")
    if _SURROGATE_ESCAPE.search(request.get_data(cache=True)) and _has_lone_surrogate(body):
        # json.loads turns "\ud800" into a string no UTF-8 encoder accepts: the
        # provider's request (or any later .encode()) would fail with a 500.
        raise invalid_request(
            "body", "The body has a lone UTF-16 surrogate (\\ud800-\\udfff): not valid text."
        )
    return body


# An escaped UTF-16 surrogate. Pairs (an emoji as "\ud83d\ude00") decode to one
# character; only a lone one survives json.loads as a surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")


def _has_lone_surrogate(body: Any) -> bool:
    """Whether any key or string in the body is not encodable. A loop, not recursion:
    json.loads accepts nesting deeper than a recursive walk would reach."""
    todo = [body]
    while todo:
        value = todo.pop()
        if isinstance(value, str):
            try:
                value.encode()
            except UnicodeEncodeError:
                return True
        elif isinstance(value, dict):
            todo.extend(value.keys())
            todo.extend(value.values())
        elif isinstance(value, list):
            todo.extend(value)
    return False


def _whole_number(body: dict[str, Any], field: str, low: int, high: int) -> int:
    value = body[field]
    # bool is an int in Python, and 3.0 arrives as Decimal: both are refused.
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid_request(field, f"{field} must be a whole number from {low} to {high}.")
    if not low <= value <= high:
        raise invalid_request(field, f"{field} must be from {low} to {high}; got {value}.")
    return value


@dataclass(frozen=True)
class GrantRequest:
    requests: int
    max_pusd: int | None


def parse_grant_request(body: dict[str, Any], ceiling_usd: Decimal) -> GrantRequest:
    unknown = set(body) - {"requests", "maxUsd"}
    if unknown:
        field = sorted(unknown)[0]
        raise invalid_request(field, f"Unknown field {field!r}: send requests and maxUsd only.")
    if "requests" not in body:
        raise invalid_request("requests", "requests is required: how many AI calls to allow.")
    requests = _whole_number(body, "requests", 1, MAX_GRANT_REQUESTS)
    max_usd = body.get("maxUsd")
    if max_usd is None:
        return GrantRequest(requests, None)
    if isinstance(max_usd, bool) or not isinstance(max_usd, int | Decimal):
        raise invalid_request("maxUsd", "maxUsd must be a number of dollars, or omitted.")
    amount = Decimal(max_usd)
    if not amount.is_finite() or amount <= 0:
        raise invalid_request("maxUsd", "maxUsd must be more than 0.")
    if amount > ceiling_usd:
        raise invalid_request("maxUsd", f"maxUsd can be at most {ceiling_usd}.")
    pusd = usd_to_pusd(amount)
    if pusd <= 0:
        raise invalid_request("maxUsd", "maxUsd is too small to pay for anything.")
    return GrantRequest(requests, pusd)


@dataclass(frozen=True)
class ChatCall:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None
    stream: bool
    options: dict[str, Any]


def _content_part(part: Any) -> bool:
    """An OpenAI content part: a `type`, and a string `text` on text parts (if any)."""
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        return False
    if part["type"] == "text" and "text" not in part:
        return False
    return "text" not in part or isinstance(part["text"], str)


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise invalid_request("messages", "messages must be a non-empty list.")
    if len(value) > MAX_MESSAGES:
        raise invalid_request("messages", f"messages can hold at most {MAX_MESSAGES} entries.")
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid_request(where, f"{where} must be an object with role and content.")
        # Checked as a string first: a list or object role is unhashable (a 500 once).
        if not isinstance(message.get("role"), str) or message["role"] not in ROLES:
            raise invalid_request(f"{where}.role", f"{where}.role must be one of {sorted(ROLES)}.")
        content = message.get("content")
        if content is None and message.get("role") == "assistant":
            continue
        if isinstance(content, str):
            continue
        if isinstance(content, list) and all(_content_part(p) for p in content):
            continue
        raise invalid_request(
            f"{where}.content", f"{where}.content must be a string or a list of content parts."
        )
    return value


def _plain(value: Any) -> Any:
    """Decimals back to JSON-ready numbers for the upstream request."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def parse_chat_request(body: dict[str, Any]) -> ChatCall:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid_request("model", 'model is required, e.g. "local/markdown".')
    messages = _messages(body.get("messages"))
    max_tokens = None
    for field in ("max_completion_tokens", "max_tokens"):
        if body.get(field) is not None:
            max_tokens = _whole_number(body, field, 1, MAX_OUTPUT_TOKENS)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid_request("stream", "stream must be true or false.")
    if not isinstance(body.get("stream_options", {}), dict | None):
        # Dropped (the engine always asks for usage) but still checked: OpenAI refuses it too.
        raise invalid_request("stream_options", "stream_options must be an object.")
    if body.get("n") not in (None, 1):
        raise invalid_request("n", "Only n = 1 is supported: each choice would be a request.")
    options = {k: _plain(v) for k, v in body.items() if k not in ENGINE_FIELDS}
    return ChatCall(model.strip(), _plain(messages), max_tokens, stream, options)
