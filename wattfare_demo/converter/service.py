"""The converter's server side: what a Wattfare customer's backend does.

Routes (routes.py) turn requests into calls here and results into responses. This module
talks to Wattfare only through the SDK (`wattfare_demo.sdk`), exactly as an app using the
hosted service would; it never imports the engine.

    grant token ─► wf.grant(token).status()          refused in milliseconds if unusable
    upload ─────► extract in the cage (cage.py)      415/413/422/400: nothing charged
            ────► chunks on structure (chunking.py)  one request each
            ────► wf.grant(token).model(WATTFARE_MODEL) once per chunk, in order
                  (streamed part by part to the page; one JSON answer otherwise)

A conversion cut short (the dollar cap, a used-up grant, a failing model) keeps the
parts that arrived: they were paid for, and the visitor gets them.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from flask import current_app

from ..sdk import GrantStatus, Wattfare, to_wattfare_error
from . import chunking, filetypes
from .cage import CageBusy, CageLimits, extract_in_cage
from .extract import ExtractedDocument
from .prompts import MAX_OUTPUT_TOKENS, SYSTEM_PROMPT, part_prompt

__all__ = [
    "Conversion",
    "ConverterError",
    "Delta",
    "Finished",
    "PartFinished",
    "PartStarted",
    "Plan",
    "QuestionError",
    "SessionQuestion",
    "SessionToken",
    "Upload",
    "check_grant",
    "convert",
    "mint_session",
    "plan",
    "upload_from_json",
    "wattfare",
]

log = logging.getLogger(__name__)

# Grant tokens are printable ASCII (wfg_…); anything else can't be one, and must not reach
# an HTTP header.
_TOKEN_SHAPE = re.compile(r"[\x21-\x7e]{1,256}")
_ASK_AGAIN = " Approve a new grant to convert this file."
# What to tell the visitor for each reason the engine gives for refusing a grant. A new
# reason is one line here; one we don't know yet still gets a sensible message.
_GRANT_REFUSALS: dict[str, str] = {
    "unknown": "That approval isn't valid." + _ASK_AGAIN,
    "expired": "The approval has expired (grants last a few minutes)." + _ASK_AGAIN,
    "exhausted": "All the AI requests you approved have been used." + _ASK_AGAIN,
    "over_cap": "The approval's dollar cap has been reached." + _ASK_AGAIN,
    "revoked": "The approval was revoked (on its receipt, or with Stop using my grant)."
    + _ASK_AGAIN,
    "model_not_granted": "The approval is for another AI model than this converter uses."
    + _ASK_AGAIN,
    "app_budget": "The demo is resting for today: it has used its daily AI budget. "
    "Please come back tomorrow.",
}
_GRANT_REFUSED = "This approval can't be used any more." + _ASK_AGAIN
_NOTHING_CHARGED = " Nothing was charged for this attempt."


class ConverterError(Exception):
    """A request we answer with a 4xx/5xx and a message a person can act on.

    Same attributes as extract.ExtractionError, so routes handle both alike.
    """

    def __init__(
        self, status: int, code: str, message: str, reason: str | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason
        self.extra = extra  # more fields for the JSON body, e.g. {"requests": 12}


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes = field(repr=False)
    content_type: str | None = None


@dataclass(frozen=True)
class Plan:
    """A document and the chunks it will be sent in: one request each."""

    document: ExtractedDocument
    chunks: list[str] = field(repr=False)

    @property
    def requests(self) -> int:
        return len(self.chunks)


@dataclass(frozen=True)
class Conversion:
    """What came back: every part that arrived, and why it stopped if it stopped early."""

    document: ExtractedDocument
    parts: list[str]
    total_parts: int
    finish_reason: str | None  # "length" if any part was cut at its length limit
    remaining: int | None  # requests left on the grant
    remaining_usd: Decimal | None  # dollars left under the cap, None without a cap
    error: ConverterError | None = None  # set when parts are missing

    @property
    def markdown(self) -> str:
        return "\n\n".join(part for part in self.parts if part)

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def complete(self) -> bool:
        return self.error is None and len(self.parts) == self.total_parts


# Events of a streamed conversion, in order: PartStarted, Delta…, PartFinished (per
# part), then one Finished.
@dataclass(frozen=True)
class PartStarted:
    index: int  # 1-based
    total: int


@dataclass(frozen=True)
class Delta:
    index: int
    text: str


@dataclass(frozen=True)
class PartFinished:
    index: int
    total: int
    markdown: str
    finish_reason: str | None


@dataclass(frozen=True)
class Finished:
    conversion: Conversion


Event = PartStarted | Delta | PartFinished | Finished


@dataclass(frozen=True)
class SessionToken:
    token: str
    expires_at: int


def wattfare() -> Wattfare:
    """The app's SDK client: WATTFARE_API_URL when set, else the engine in this process."""
    extensions = current_app.extensions
    client = extensions.get("converter.wattfare")
    if client is None:
        base_url = current_app.config.get("WATTFARE_API_URL")
        client = Wattfare(
            current_app.config["WATTFARE_SECRET_KEY"],
            base_url=base_url,
            wsgi_app=None if base_url else current_app._get_current_object(),  # type: ignore[attr-defined]
        )
        client = extensions.setdefault("converter.wattfare", client)
    return client


class QuestionError(ConverterError):
    """A session request the server does not allow; `param` names the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(400, "invalid_request", message)
        self.param = param


@dataclass(frozen=True)
class SessionQuestion:
    """What the page will ask the visitor to approve, as this server allows it."""

    requests: int
    max_usd: Decimal | None


_MAX_QUESTION_BYTES = 1024  # {"requests": 5, "maxUsd": 0.5} is 30 bytes


def session_question(body: bytes, *, max_requests: int, max_usd: Decimal) -> SessionQuestion:
    """Read `{"requests": n, "maxUsd": x | null, "model"?: id}`, within what this app
    allows (the model, when the page names it, must be WATTFARE_MODEL)."""
    if len(body) > _MAX_QUESTION_BYTES:
        raise QuestionError("body", "The body is too large for {requests, maxUsd}.")
    try:
        data = json.loads(body or b"null", parse_float=Decimal)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise QuestionError(
            "body", 'Send JSON: {"requests": <how many AI requests>, "maxUsd": <dollars> | null}.'
        )
    requests = data.get("requests")
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise QuestionError(
            "requests", f"requests must be a whole number from 1 to {max_requests}."
        )
    if requests > max_requests:
        raise QuestionError(
            "requests", f"This converter approves at most {max_requests} AI requests at once."
        )
    model = data.get("model")
    if model is not None and model != current_app.config["WATTFARE_MODEL"]:
        raise QuestionError(
            "model", f"This converter uses {current_app.config['WATTFARE_MODEL']} only."
        )
    cap = data.get("maxUsd")
    if cap is None:
        return SessionQuestion(requests, None)
    if isinstance(cap, bool) or not isinstance(cap, int | Decimal):
        raise QuestionError("maxUsd", "maxUsd must be a number of dollars, or null.")
    amount = Decimal(cap)
    if not amount.is_finite() or not 0 < amount <= max_usd:
        raise QuestionError("maxUsd", f"maxUsd must be more than $0 and at most ${max_usd}.")
    return SessionQuestion(requests, amount)


def mint_session(origin: str, ask: SessionQuestion) -> SessionToken:
    """A session token for the consent popup, bound to the page's origin and question,
    and to the model the converter uses."""
    session = wattfare().create_session(
        origin=origin,
        requests=ask.requests,
        max_usd=ask.max_usd,
        model=current_app.config["WATTFARE_MODEL"],
    )
    return SessionToken(token=session.token, expires_at=session.expires_at)


def upload_from_json(body: Any) -> tuple[Upload, str | None]:
    """The seed's JSON: `{"grantToken": "wfg_…", "file": …}`.

    `file` is either the document's text (a string, read as a .txt file) or an object
    `{"name": "report.html", "content": "<h1>…"}`; binary files (.docx, .pdf) send
    `"encoding": "base64"` with base64 content.
    """
    if not isinstance(body, dict):
        raise ConverterError(
            400,
            "invalid_json",
            'Send a JSON object: {"grantToken": "wfg_…", "file": {"name": …, "content": …}}.',
        )
    token = body.get("grantToken")
    if token is not None and not isinstance(token, str):
        raise ConverterError(400, "invalid_json", "grantToken must be a string.")
    file = body.get("file")
    if isinstance(file, str):
        return Upload("document.txt", _utf8(file), "text/plain"), token
    if not isinstance(file, dict):
        raise ConverterError(
            400,
            "file_required",
            'Send the document as "file": its text, or {"name": …, "content": …}.',
        )
    name = file.get("name", "document.txt")
    content = file.get("content")
    encoding = file.get("encoding", "utf-8")
    if not isinstance(name, str) or not isinstance(content, str):
        raise ConverterError(400, "invalid_json", "file.name and file.content must be strings.")
    if encoding == "base64":
        try:
            data = base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ConverterError(400, "invalid_json", "file.content is not valid base64.") from None
    elif encoding in ("utf-8", "utf8", "text"):
        file_type = filetypes.kind_of(name, None)
        if file_type is not None and not file_type.text:
            raise ConverterError(
                400,
                "invalid_json",
                f"{name} is a {file_type.label}, not text: send its bytes as base64 with "
                '"encoding": "base64".',
            )
        data = _utf8(content)
    else:
        raise ConverterError(400, "invalid_json", 'file.encoding must be "utf-8" or "base64".')
    return Upload(name, data, None), token


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # JSON can carry lone surrogates (\ud800); text cannot
        raise ConverterError(
            400, "invalid_json", "The file's content is not valid Unicode text."
        ) from None


# --- the steps ------------------------------------------------------------------------


def max_requests() -> int:
    return int(current_app.config["CONVERTER_MAX_REQUESTS"])


def cage_limits() -> CageLimits:
    config = current_app.config
    return CageLimits(
        cpu_seconds=int(config["CONVERTER_EXTRACT_CPU_SECONDS"]),
        memory_mb=int(config["CONVERTER_EXTRACT_MEMORY_MB"]),
        wall_seconds=float(config["CONVERTER_EXTRACT_TIMEOUT"]),
        concurrency=int(config["CONVERTER_EXTRACT_CONCURRENCY"]),
    )


def plan(upload: Upload) -> Plan:
    """Extract (in the cage) and chunk: how many requests the file needs.

    Raises ExtractionError for a file we can't read, and ConverterError 413
    `too_many_requests` for one that needs more requests than CONVERTER_MAX_REQUESTS.
    """
    try:
        document = extract_in_cage(upload.filename, upload.data, upload.content_type, cage_limits())
    except CageBusy:
        raise ConverterError(
            503,
            "busy",
            "The converter is reading other files right now. Try again in a moment; "
            "nothing was charged.",
        ) from None
    chunks = chunking.split(document.sections, int(current_app.config["CONVERTER_CHUNK_CHARS"]))
    result = Plan(document=document, chunks=chunks)
    limit = max_requests()
    if result.requests > limit:
        raise ConverterError(
            413,
            "too_many_requests",
            f"{document.filename} needs {result.requests} AI requests, more than the "
            f"{limit} this converter allows for one file. Split it into smaller files.",
            requests=result.requests,
            maxRequests=limit,
        )
    return result


def check_grant(grant_token: str | None) -> GrantStatus:
    """The grant, asked for before the file is read: 400 without one, 402 if it can't pay.

    One GET /api/v1/grant (the SDK's status call); no request of the grant is used.
    """
    token = (grant_token or "").strip()
    if not token:
        raise ConverterError(
            400,
            "grant_required",
            "No grant token was sent. Press Convert with AI to approve a grant first.",
        )
    if not _TOKEN_SHAPE.fullmatch(token):
        raise _grant_refused("unknown")
    try:
        status = wattfare().grant(token).status()
    except Exception as exc:
        error = _converter_error(exc)
        if error is None:
            raise
        raise error from exc
    if status.status != "active" or status.remaining < 1:
        raise _grant_refused(status.status)
    return status


def revoke_grant(grant_token: str | None) -> GrantStatus:
    """ "Stop using my grant": the SDK's grant.revoke() (DELETE /api/v1/grant). The engine
    refuses every later call, and stops a conversion streaming on it within a second."""
    token = (grant_token or "").strip()
    if not token:
        raise ConverterError(400, "grant_required", "No grant token was sent: nothing to stop.")
    if not _TOKEN_SHAPE.fullmatch(token):
        raise _grant_refused("unknown")
    try:
        return wattfare().grant(token).revoke()
    except Exception as exc:
        error = _converter_error(exc)
        if error is None:
            raise
        raise error from exc


def convert(upload: Upload, grant_token: str | None) -> Conversion:
    """The whole conversion in one answer (JSON callers). Grant first, then the file."""
    status = check_grant(grant_token)
    prepared = plan(upload)
    conversion: Conversion | None = None
    for event in run(prepared, (grant_token or "").strip(), status, stream=False):
        if isinstance(event, Finished):
            conversion = event.conversion
    assert conversion is not None
    return conversion


def run(prepared: Plan, token: str, status: GrantStatus, *, stream: bool) -> Iterator[Event]:
    """The model calls of a planned conversion, as events; always ends with Finished.

    The grant must have a request for every chunk (`status` from check_grant): a file
    that needs 5 on a grant with 3 left is refused before the first call.
    """
    total = prepared.requests
    if status.remaining < total:
        raise ConverterError(
            402,
            "grant_too_small",
            f"{prepared.document.filename} needs {total} AI requests, and your approval has "
            f"{status.remaining} left. Approve a new grant for this file." + _NOTHING_CHARGED,
            reason="too_few_requests",
            requests=total,
            remaining=status.remaining,
        )
    model = wattfare().grant(token).model(current_app.config["WATTFARE_MODEL"])
    parts: list[str] = []
    finish: str | None = None
    remaining: int | None = status.remaining
    remaining_usd: Decimal | None = (
        None if status.max_usd is None else (status.max_usd - status.spent_usd)
    )
    error: ConverterError | None = None
    for index, chunk in enumerate(prepared.chunks, start=1):
        yield PartStarted(index, total)
        prompt = part_prompt(chunk, index, total, prepared.document.filename)
        text: list[str] = []
        try:
            if stream:
                with model.stream_text(
                    prompt, system=SYSTEM_PROMPT, max_tokens=MAX_OUTPUT_TOKENS
                ) as deltas:
                    try:
                        for delta in deltas:
                            text.append(delta)
                            yield Delta(index, delta)
                    finally:
                        part_finish = deltas.finish_reason
                        if deltas.remaining is not None:
                            remaining, remaining_usd = deltas.remaining, deltas.remaining_usd
            else:
                result = model.generate_text(
                    prompt, system=SYSTEM_PROMPT, max_tokens=MAX_OUTPUT_TOKENS
                )
                text.append(result.text)
                part_finish = result.finish_reason
                remaining, remaining_usd = result.remaining, result.remaining_usd
        except Exception as exc:
            error = _converter_error(exc)
            if error is None:
                raise  # not a Wattfare error: a bug of ours, which should surface as a 500
            if text:  # a stream cut mid-part (the cap): keep what arrived, it was paid for
                parts.append("".join(text))
                yield PartFinished(index, total, parts[-1], "cut")
            error = _partial(error, len(parts), total)
            break
        parts.append("".join(text))
        finish = "length" if part_finish == "length" or finish == "length" else part_finish
        yield PartFinished(index, total, parts[-1], part_finish)
    yield Finished(
        Conversion(
            document=prepared.document,
            parts=parts,
            total_parts=total,
            finish_reason=finish,
            remaining=remaining,
            remaining_usd=remaining_usd,
            error=error,
        )
    )


def _partial(error: ConverterError, arrived: int, total: int) -> ConverterError:
    """The error of a part, saying what the visitor keeps."""
    if arrived == 0:
        return error
    kept = f"part 1 of {total}" if arrived == 1 else f"parts 1 to {arrived} of {total}"
    message = error.message.replace(_NOTHING_CHARGED, "").replace(" Nothing was charged.", "")
    message += f" You keep {kept}, shown below; only those were charged."
    return ConverterError(
        error.status,
        error.code,
        message,
        reason=error.reason,
        **error.extra,
        partsConverted=arrived,
        parts=total,
    )


def _grant_refused(reason: str | None) -> ConverterError:
    message = _GRANT_REFUSALS.get(reason or "", _GRANT_REFUSED)
    return ConverterError(402, "grant_used", message + _NOTHING_CHARGED, reason=reason)


def _converter_error(exc: Exception) -> ConverterError | None:
    error = to_wattfare_error(exc)
    if error is None:
        return None
    if error.code == "grant_invalid":
        return _grant_refused(getattr(error, "reason", None))
    status = getattr(error, "status", None)
    if status == 429:
        return ConverterError(
            429,
            "rate_limited",
            "Too many conversions at once. Wait a moment and try again." + _NOTHING_CHARGED,
        )
    if status is not None and 400 <= status < 500:
        # Our secret key, model or request is wrong: the server's fault, not the visitor's.
        log.error("Wattfare refused the conversion: %s (%s)", error.code, error)
        return ConverterError(
            502,
            "converter_misconfigured",
            "The converter couldn't reach its AI model (a setup problem on our side)."
            + _NOTHING_CHARGED,
        )
    log.warning("Wattfare upstream failure: %s (%s)", error.code, error)
    return ConverterError(
        502,
        "upstream_error",
        "The AI model didn't answer. Try again in a moment." + _NOTHING_CHARGED,
    )
