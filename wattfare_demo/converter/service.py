"""The converter's server side: what a Wattfare customer's backend does.

Routes (routes.py) turn requests into calls here and results into responses. This module
talks to Wattfare only through the SDK (`wattfare_demo.sdk`), exactly as an app using the
hosted service would; it never imports the engine.

    upload ─► extract_text() ─► wf.grant(token).model(WATTFARE_MODEL).generate_text(prompt)
              (415/413/422/400: nothing charged)        (402 grant_used when it's spent)
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask import current_app

from ..sdk import Wattfare, to_wattfare_error
from .extract import ExtractedDocument, extract_text
from .prompts import MAX_OUTPUT_TOKENS, SYSTEM_PROMPT, conversion_prompt

__all__ = [
    "Conversion",
    "ConverterError",
    "QuestionError",
    "SessionQuestion",
    "SessionToken",
    "Upload",
    "convert",
    "mint_session",
    "upload_from_json",
    "wattfare",
]

log = logging.getLogger(__name__)

# Grant tokens are printable ASCII (wfg_…); anything else can't be one, and must not reach
# an HTTP header.
_TOKEN_SHAPE = re.compile(r"[\x21-\x7e]{1,256}")
_GRANT_USED_MESSAGES = {
    "expired": "The approval has expired (grants last a few minutes).",
    "exhausted": "All the conversions you approved have been used.",
    "over_cap": "The approval's dollar cap has been reached.",
    "revoked": "The approval was withdrawn.",
    "app_budget": "The demo is resting for today: it has spent its AI budget for the day.",
}
_ASK_AGAIN = " Approve a new grant to convert this file. Nothing was charged for this attempt."


class ConverterError(Exception):
    """A request we answer with a 4xx/5xx and a message a person can act on.

    Same attributes as extract.ExtractionError, so routes handle both alike.
    """

    def __init__(self, status: int, code: str, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    content_type: str | None = None


@dataclass(frozen=True)
class Conversion:
    document: ExtractedDocument
    markdown: str
    finish_reason: str | None
    remaining: int | None  # requests left on the grant
    remaining_usd: Decimal | None  # dollars left under the cap, None without a cap

    @property
    def truncated(self) -> bool:
        """The model stopped at its length limit (or at what the dollar cap could pay for)."""
        return self.finish_reason == "length"


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
    """Read `{"requests": n, "maxUsd": x | null}`, within what this app allows."""
    if len(body) > _MAX_QUESTION_BYTES:
        raise QuestionError("body", "The body is too large for {requests, maxUsd}.")
    try:
        data = json.loads(body or b"null", parse_float=Decimal)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        raise QuestionError(
            "body", 'Send JSON: {"requests": <how many conversions>, "maxUsd": <dollars> | null}.'
        )
    requests = data.get("requests")
    if isinstance(requests, bool) or not isinstance(requests, int) or requests < 1:
        raise QuestionError(
            "requests", f"requests must be a whole number from 1 to {max_requests}."
        )
    if requests > max_requests:
        raise QuestionError(
            "requests", f"This converter approves at most {max_requests} conversions at once."
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


def convert(upload: Upload, grant_token: str | None) -> Conversion:
    """Extract the upload's text and have the model turn it into Markdown on the grant.

    Everything about the file is checked before the grant is touched, so a bad file
    costs the visitor nothing (ExtractionError). Grant problems raise ConverterError:
    402 `grant_used` when the grant is spent, expired or unknown.
    """
    document = extract_text(upload.filename, upload.data, upload.content_type)
    token = (grant_token or "").strip()
    if not token:
        raise ConverterError(
            400,
            "grant_required",
            "No grant token was sent. Press Convert with AI to approve a grant first.",
        )
    if not _TOKEN_SHAPE.fullmatch(token):
        raise ConverterError(
            402, "grant_used", "That grant token isn't valid." + _ASK_AGAIN, reason="unknown"
        )

    model = wattfare().grant(token).model(current_app.config["WATTFARE_MODEL"])
    try:
        result = model.generate_text(
            conversion_prompt(document.text),
            system=SYSTEM_PROMPT,
            max_tokens=MAX_OUTPUT_TOKENS,
        )
    except Exception as exc:
        error = _converter_error(exc)
        if error is None:
            raise  # not a Wattfare error: a bug of ours, which should surface as a 500
        raise error from exc
    return Conversion(
        document=document,
        markdown=result.text,
        finish_reason=result.finish_reason,
        remaining=result.remaining,
        remaining_usd=result.remaining_usd,
    )


def _converter_error(exc: Exception) -> ConverterError | None:
    error = to_wattfare_error(exc)
    if error is None:
        return None
    if error.code == "grant_invalid":
        reason = getattr(error, "reason", None)
        lead = _GRANT_USED_MESSAGES.get(reason or "", "This approval can't be used any more.")
        again = " Please come back tomorrow." if reason == "app_budget" else _ASK_AGAIN
        return ConverterError(402, "grant_used", lead + again, reason=reason)
    status = getattr(error, "status", None)
    if status == 429:
        return ConverterError(
            429,
            "rate_limited",
            "Too many conversions at once. Wait a moment and try again; nothing was charged.",
        )
    if status in (401, 403) or (status is not None and 400 <= status < 500):
        # Our secret key, model or request is wrong: the server's fault, not the visitor's.
        log.error("Wattfare refused the conversion: %s (%s)", error.code, error)
        return ConverterError(
            502,
            "converter_misconfigured",
            "The converter couldn't reach its AI model (a setup problem on our side). "
            "Nothing was charged.",
        )
    log.warning("Wattfare upstream failure: %s (%s)", error.code, error)
    return ConverterError(
        502,
        "upstream_error",
        "The AI model didn't answer. Try again in a moment; nothing was charged.",
    )
