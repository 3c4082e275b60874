"""Check a real /api/v1 response against the OpenAPI 3.1 document: status, body, headers.

    from tests.openapi_check import check_response

    response = client.post("/api/v1/grants", json={...}, headers={...})
    body = check_response("POST", "/api/v1/grants", response)   # AssertionError if off-contract

What is checked, from wattfare_demo/engine/openapi.json:

- the status is one the operation lists (no `default` to hide behind); an unknown path
  must be the documented 404 and an undocumented method the documented 405;
- the body's media type is one the status lists, and a JSON body validates against its
  schema (JSON Schema 2020-12, the OpenAPI 3.1 dialect, via `jsonschema`, with
  `contentSchema` asserted for JSON held in strings); a `text/event-stream` body is split
  into events, each validated against the media type's schema (which describes one
  event, as OpenAPI 3.2's `itemSchema` does), and where the media type says
  `x-last-data` (chat completions: `[DONE]`), the last event's data must be that;
- every documented header: present when required, and its value valid (integers
  coerced from the header string first, as OpenAPI's `simple` style says).

Works with Flask test-client responses and httpx responses. Returns the parsed body (JSON
value, or the list of stream events) for the caller's own assertions.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any
from urllib.parse import urlsplit

from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from wattfare_demo.engine.openapi import document

DOC_URI = "urn:wattfare:openapi"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


class ContractError(AssertionError):
    """A response the document does not describe."""


@cache
def spec() -> dict[str, Any]:
    return document()


@cache
def _registry() -> Registry:
    return Registry().with_resource(DOC_URI, Resource(spec(), specification=DRAFT202012))


def _content_schema(
    validator: Any, content_schema: Any, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    """`contentSchema` as an assertion for JSON inside a string (Draft 2020-12 only
    annotates it): how the document describes the JSON `data` of each stream event."""
    if schema.get("contentMediaType") != "application/json" or not isinstance(instance, str):
        return
    try:
        decoded = json.loads(instance)
    except ValueError as exc:
        yield ValidationError(f"{instance[:80]!r} is not JSON: {exc}")
        return
    yield from validator.descend(decoded, content_schema)


# JSON Schema 2020-12 (the OpenAPI 3.1 dialect), with `contentSchema` checked.
Validator = validators.extend(Draft202012Validator, {"contentSchema": _content_schema})


@cache
def validator(pointer: str) -> Any:
    """A validator for the schema at `pointer` ("#/components/schemas/Error") in the document."""
    return Validator(
        {"$ref": DOC_URI + pointer},
        registry=_registry(),
        format_checker=Draft202012Validator.FORMAT_CHECKER,
    )


def _escape(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def _resolve(node: dict[str, Any], pointer: str) -> tuple[dict[str, Any], str]:
    """Follow a local `$ref` (components/responses, headers, …): (object, its pointer)."""
    while "$ref" in node:
        pointer = node["$ref"]
        if not pointer.startswith("#/"):
            raise ValueError(f"only local references are supported: {pointer}")
        node = spec()
        for token in pointer[2:].split("/"):
            node = node[token.replace("~1", "/").replace("~0", "~")]
    return node, pointer


def _errors(pointer: str, instance: Any) -> list[str]:
    found = sorted(validator(pointer).iter_errors(instance), key=lambda e: list(e.path))
    return [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in found]


# --- responses from either client ---------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """What the check needs of a response, whichever client produced it."""

    status: int
    headers: Mapping[str, str]  # case-insensitive mapping
    media_type: str | None
    body: bytes


def _seen(response: Any) -> Seen:
    status = response.status_code
    headers = response.headers
    content_type = headers.get("Content-Type")
    media_type = content_type.split(";")[0].strip().lower() if content_type else None
    body = response.get_data() if hasattr(response, "get_data") else response.content
    return Seen(status, headers, media_type, body)


# --- the check ----------------------------------------------------------------------------


def operation_for(method: str, url: str) -> tuple[str, str | None, str]:
    """(document path, method or None when undocumented, path-item pointer); raises for a
    URL outside the API's server prefix. The path is None when no path item matches."""
    prefix = spec()["servers"][0]["url"].rstrip("/")
    path = urlsplit(url).path
    if not path.startswith(prefix + "/"):
        raise ValueError(f"{url} is not under the API's server URL {prefix}")
    path = path[len(prefix) :]
    for template, item in spec()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, path):
            verb = method.lower()
            return template, verb if verb in item else None, f"#/paths/{_escape(template)}"
    return path, None, ""


def check_response(method: str, url: str, response: Any) -> Any:
    """Raise ContractError unless `response` is what the document promises for the call."""
    seen = _seen(response)
    template, verb, item_pointer = operation_for(method, url)
    where = f"{method.upper()} {url}"
    if not item_pointer:
        definition, pointer = _resolve({"$ref": "#/components/responses/NotFound"}, "")
        if seen.status != 404:
            raise ContractError(f"{where}: no such path in the document, yet {seen.status}")
    elif verb is None:
        definition, pointer = _resolve({"$ref": "#/components/responses/MethodNotAllowed"}, "")
        if seen.status != 405:
            raise ContractError(f"{where}: method not in the document, yet {seen.status}")
    else:
        responses = spec()["paths"][template][verb]["responses"]
        key = next(
            (k for k in (str(seen.status), f"{seen.status // 100}XX") if k in responses), None
        )
        if key is None:
            raise ContractError(
                f"{where}: status {seen.status} is not documented for this operation "
                f"(documented: {', '.join(sorted(responses))}); body: {seen.body[:300]!r}"
            )
        definition, pointer = _resolve(
            responses[key], f"{item_pointer}/{verb}/responses/{_escape(key)}"
        )
    problems = _check_headers(definition, pointer, seen)
    body, body_problems = _check_body(definition, pointer, seen, head=method.upper() == "HEAD")
    problems += body_problems
    if problems:
        raise ContractError(
            f"{where} -> {seen.status} is off-contract ({pointer}):\n  "
            + "\n  ".join(problems)
            + f"\nbody: {seen.body[:500]!r}"
        )
    return body


def _coerce(value: str, schema: Mapping[str, Any]) -> Any:
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if "integer" in types and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    if "number" in types:
        try:
            return float(value)
        except ValueError:
            return value
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    return value


def _check_headers(definition: dict[str, Any], pointer: str, seen: Seen) -> list[str]:
    problems = []
    for name, header in definition.get("headers", {}).items():
        header, header_pointer = _resolve(header, f"{pointer}/headers/{_escape(name)}")
        value = seen.headers.get(name)
        if value is None:
            if header.get("required"):
                problems.append(f"header {name} is required but missing")
            continue
        schema_pointer = f"{header_pointer}/schema"
        schema, schema_pointer = _resolve(header["schema"], schema_pointer)
        for error in _errors(schema_pointer, _coerce(value, schema)):
            problems.append(f"header {name}={value!r}: {error}")
    return problems


def _check_body(
    definition: dict[str, Any], pointer: str, seen: Seen, *, head: bool
) -> tuple[Any, list[str]]:
    content = definition.get("content")
    if head:
        return None, []
    if not content:
        return None, [] if not seen.body else ["the document says no body, yet there is one"]
    if seen.media_type not in content:
        return None, [f"media type {seen.media_type!r} is not one of {sorted(content)}"]
    media = content[seen.media_type]
    media_pointer = f"{pointer}/content/{_escape(seen.media_type)}"
    if seen.media_type == "application/json" or seen.media_type.endswith("+json"):
        try:
            body = json.loads(seen.body)
        except ValueError as exc:
            return None, [f"the body is not JSON: {exc}"]
        return body, _errors(f"{media_pointer}/schema", body) if "schema" in media else []
    if seen.media_type == "text/event-stream":
        return _check_events(media, media_pointer, seen.body)
    return seen.body, []


def sse_events(raw: bytes) -> list[dict[str, str]]:
    """The server-sent events of a body, in order, as {field: value} (comments dropped)."""
    events = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        event: dict[str, str] = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            event[field] = f"{event[field]}\n{value}" if field in event else value
        if event:
            events.append(event)
    return events


def _check_events(
    media: dict[str, Any], media_pointer: str, raw: bytes
) -> tuple[list[Any], list[str]]:
    """Each event against the media type's schema (it describes one event); the stream
    must end with the media type's `x-last-data`, if it has one. Returns the decoded
    JSON `data` of the other events."""
    events = sse_events(raw)
    problems: list[str] = []
    last = media.get("x-last-data")
    if not events or (last is not None and events[-1].get("data") != last):
        problems.append(f"the stream does not end with data: {last}")
    decoded: list[Any] = []
    for i, event in enumerate(events):
        if "schema" in media:
            problems += [f"event {i}: {e}" for e in _errors(f"{media_pointer}/schema", event)]
        if event.get("data") == "[DONE]":
            if i != len(events) - 1:
                problems.append(f"event {i}: [DONE] before the end of the stream")
            continue
        try:
            decoded.append(json.loads(event.get("data", "")))
        except ValueError:
            decoded.append(event.get("data"))
    return decoded, problems


# --- what the document promises, for coverage checks ------------------------------------------


def documented_statuses() -> Iterable[tuple[str, str, int]]:
    """(METHOD, path, status) for every response the document lists."""
    for path, item in spec()["paths"].items():
        for verb in METHODS:
            if verb in item:
                for status in item[verb]["responses"]:
                    yield verb.upper(), path, int(status)
