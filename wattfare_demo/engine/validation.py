"""Strict parsing of /api/v1 request bodies: every refusal names the field.

Bodies are parsed with `parse_float=Decimal` so money never passes through a float,
and with NaN/Infinity refused, which Python's json module would otherwise accept.

A chat request is passed upstream as it came, except for what the engine decides (the
model, the output limit the grant pays for, streaming with usage, one choice) and the
fields in SAFETY below, which would change who pays or where the conversation is kept:
those are refused with a 400 that names them, or dropped, and README ("What a call
costs") lists them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask import request

from .errors import ApiError, invalid_request
from .pricing import usd_to_pusd

MAX_GRANT_REQUESTS = 100
MAX_MESSAGES = 256
MAX_OUTPUT_TOKENS = 1_000_000
ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
# Chat fields the engine decides itself; everything else is passed to the provider.
ENGINE_FIELDS = {"model", "messages", *LIMIT_FIELDS, "stream", "stream_options", "n"}


@dataclass(frozen=True)
class Safety:
    """What the engine does with a field that changes who pays or where data is kept."""

    field: str
    allowed: tuple[Any, ...]  # values accepted (and then not sent upstream)
    why: str


# Accepted only with a harmless value, and never sent upstream; any other value is a 400.
SAFETY = (
    Safety(
        "store",
        (False, None),
        "the engine never asks a provider to keep a conversation (store: true would "
        "keep the visitor's document on the provider's servers)",
    ),
    Safety(
        "service_tier",
        ("auto", "default", None),
        "a service tier changes the provider's price, while the grant is charged from "
        "the engine's price table",
    ),
    Safety(
        "metadata",
        (),  # any value: dropped (it labels stored completions, and none are stored)
        "",
    ),
    Safety(
        "models",
        (None,),
        "fallback models would run (and bill) another model than the one metered",
    ),
    Safety("route", (None,), "fallback routing would run another model than the one metered"),
    Safety("plugins", (None,), "plugins (web search, …) are billed apart from tokens"),
    Safety("web_search_options", (None,), "web search is billed apart from tokens"),
    Safety(
        "provider", (None,), "provider preferences can allow data collection or change the price"
    ),
    Safety("audio", (None,), "audio output is priced apart from text tokens"),
    Safety("prediction", (None,), "predicted outputs are billed beyond the output limit"),
)
_SAFETY = {rule.field: rule for rule in SAFETY}


def _apply_safety(body: dict[str, Any]) -> set[str]:
    """Refuse the unsafe values of SAFETY fields (400); return the fields to drop."""
    dropped = set()
    for name in body.keys() & _SAFETY.keys():
        rule = _SAFETY[name]
        value = body[name]
        if rule.allowed and not any(
            value is allowed or (isinstance(value, str) and value == allowed)
            for allowed in rule.allowed
        ):
            raise ApiError(
                400,
                "unsupported_parameter",
                f"{name}={json.dumps(_plain(value))[:60]} is not supported: {rule.why}. "
                f"Leave {name} out.",
                param=name,
            )
        dropped.add(name)
    modalities = body.get("modalities")
    if modalities is not None and modalities != ["text"]:
        raise ApiError(
            400,
            "unsupported_parameter",
            'Only modalities: ["text"] is supported: audio output is priced apart from '
            "text tokens.",
            param="modalities",
        )
    return dropped


def needed_capabilities(body: dict[str, Any]) -> frozenset[str]:
    """What of providers.base.CAPABILITIES a chat request needs of its model."""
    needs = set()
    tools = body.get("tools") or body.get("functions")
    choice = body.get("tool_choice") or body.get("function_call")
    if tools or (choice not in (None, "none", "auto")):
        needs.add("tools")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        needs.add("response_format")
    if body.get("logprobs") or body.get("top_logprobs"):
        needs.add("logprobs")
    return frozenset(needs)


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


# --- the grant request: the question a visitor approves -------------------------------


@dataclass(frozen=True)
class GrantField:
    """One field of the grant request. This table is its one definition: POST
    /api/v1/grants accepts these fields and no other (parse_grant_request), the consent
    page reads them from its query string and posts them back (consent.py), wattfare.js
    passes them through, and a test holds the OpenAPI document's GrantRequest, the
    consent page and the SDK to it (tests/engine/test_grant_request_fields.py). A new
    field is a row here, its parsing below, and its line on the consent page."""

    name: str  # as it is spelled in JSON, in the popup's query string and in wattfare.js
    required: bool
    meaning: str


GRANT_REQUEST_FIELDS = (
    GrantField("requests", True, "how many AI calls to allow (a hard limit)"),
    GrantField("maxUsd", False, "an optional dollar cap on what the calls may cost together"),
    GrantField(
        "model",
        False,
        "the one model the calls may use; the app's session decides it, and the page must "
        "name the same one",
    ),
)
_GRANT_FIELD_NAMES = tuple(f.name for f in GRANT_REQUEST_FIELDS)


@dataclass(frozen=True)
class GrantRequest:
    requests: int
    max_pusd: int | None
    model: str | None = None  # None: any priced model (unless the session names one)


def parse_grant_request(body: dict[str, Any], ceiling_usd: Decimal) -> GrantRequest:
    unknown = set(body) - set(_GRANT_FIELD_NAMES)
    if unknown:
        field = sorted(unknown)[0]
        raise invalid_request(
            field, f"Unknown field {field!r}: send only {', '.join(_GRANT_FIELD_NAMES)}."
        )
    for wanted in GRANT_REQUEST_FIELDS:
        if wanted.required and wanted.name not in body:
            raise invalid_request(wanted.name, f"{wanted.name} is required: {wanted.meaning}.")
    requests = _whole_number(body, "requests", 1, MAX_GRANT_REQUESTS)
    model = _grant_model(body.get("model"))
    max_usd = body.get("maxUsd")
    if max_usd is None:
        return GrantRequest(requests, None, model)
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
    return GrantRequest(requests, pusd, model)


MAX_MODEL_LENGTH = 120  # Grant.model and Usage.model hold this much


def _grant_model(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_LENGTH:
        raise invalid_request(
            "model",
            f"model must be a model id of 1 to {MAX_MODEL_LENGTH} characters, e.g. "
            '"openai/gpt-4o-mini", or omitted.',
        )
    return value.strip()


@dataclass(frozen=True)
class ChatCall:
    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None  # the largest output limit the caller sent; None: none sent
    stream: bool
    options: dict[str, Any]  # passed upstream as they are
    limit_fields: tuple[str, ...] = ()  # which of LIMIT_FIELDS the caller sent
    needs: frozenset[str] = frozenset()  # capabilities the model must have


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
    # Both limits may come (old clients send max_tokens, new ones max_completion_tokens):
    # each goes upstream as sent (clamped to what the grant pays for), and the hold is
    # priced from the larger, since an upstream may honour either.
    limits = {
        field: _whole_number(body, field, 1, MAX_OUTPUT_TOKENS)
        for field in LIMIT_FIELDS
        if body.get(field) is not None
    }
    max_tokens = max(limits.values()) if limits else None
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise invalid_request("stream", "stream must be true or false.")
    if not isinstance(body.get("stream_options", {}), dict | None):
        # Dropped (the engine always asks for usage) but still checked: OpenAI refuses it too.
        raise invalid_request("stream_options", "stream_options must be an object.")
    if body.get("n") not in (None, 1):
        raise invalid_request("n", "Only n = 1 is supported: each choice would be a request.")
    _check_passed_through(body)
    dropped = _apply_safety(body)
    options = {k: _plain(v) for k, v in body.items() if k not in ENGINE_FIELDS and k not in dropped}
    return ChatCall(
        model.strip(),
        _plain(messages),
        max_tokens,
        stream,
        options,
        limit_fields=tuple(limits),
        needs=needed_capabilities(body),
    )


def _check_passed_through(body: dict[str, Any]) -> None:
    """The shape of the passed-through fields the engine reads itself (to price the hold
    and to check the model can honour them): a wrong one is the caller's 400, not a
    500 here nor a charge for an upstream refusal."""
    tools = body.get("tools")
    if tools is not None and not (
        isinstance(tools, list) and all(isinstance(t, dict) for t in tools)
    ):
        raise invalid_request("tools", "tools must be a list of tool objects.")
    choice = body.get("tool_choice")
    if choice is not None and not isinstance(choice, str | dict):
        raise invalid_request(
            "tool_choice",
            'tool_choice must be "auto", "none", "required" or an object naming a function.',
        )
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and isinstance(response_format.get("type"), str)
    ):
        raise invalid_request("response_format", 'response_format must be an object with a "type".')
    if body.get("logprobs") is not None and not isinstance(body["logprobs"], bool):
        raise invalid_request("logprobs", "logprobs must be true or false.")
    if body.get("top_logprobs") is not None:
        _whole_number(body, "top_logprobs", 0, 20)
