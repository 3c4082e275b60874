"""A redeemed grant and its models: `wf.grant(token).model(id).generate_text(prompt)`.

Each successful call uses one of the grant's requests. Calls are OpenAI-compatible chat
completions on the engine, sent with the grant in `x-wattfare-grant` and a fresh
Idempotency-Key, so the SDK's retries never charge twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from types import TracebackType
from typing import TYPE_CHECKING, Any

import httpx

from .errors import GRANT_HEADER, connection_error, error_from_body
from .transport import Connection

if TYPE_CHECKING:
    import openai

# Body fields the model methods set themselves.
_RESERVED_OPTIONS = frozenset({"model", "messages", "stream"})


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, data: Any) -> Usage | None:
        if not isinstance(data, Mapping):
            return None
        prompt, completion = (
            int(data.get("prompt_tokens", 0)),
            int(data.get("completion_tokens", 0)),
        )
        return cls(prompt, completion, int(data.get("total_tokens", prompt + completion)))


@dataclass(frozen=True)
class GenerateTextResult:
    text: str
    finish_reason: str | None  # "stop", or "length" when max_tokens (or the cap) cut it
    usage: Usage | None
    remaining: int | None  # the grant's requests left after this call
    remaining_usd: Decimal | None  # its dollars left; None when it has no dollar cap
    raw: dict[str, Any] = field(repr=False)  # the chat.completion as the API sent it


@dataclass(frozen=True)
class GrantStatus:
    requests: int
    remaining: int
    max_usd: Decimal | None
    spent_usd: Decimal
    expires_at: int  # unix seconds
    status: str  # active | exhausted | over_cap | expired | revoked


def _grant_status(response: httpx.Response) -> GrantStatus:
    data = json.loads(response.content, parse_float=Decimal)
    return GrantStatus(
        requests=data["requests"],
        remaining=data["remaining"],
        max_usd=None if data["maxUsd"] is None else Decimal(data["maxUsd"]),
        spent_usd=Decimal(data["spentUsd"]),
        expires_at=data["expiresAt"],
        status=data["status"],
    )


class TextStream(Iterator[str]):
    """The text deltas of a streamed call. Once exhausted, `usage`, `remaining`,
    `remaining_usd` and `finish_reason` hold the call's totals.

    A stream the engine ends with an error event (e.g. `grant_invalid`/`over_cap` when
    it reached the dollar cap, after its usage) raises that error from the iteration.
    Close it (or use `with`) to stop early; the tokens generated so far are charged.
    """

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._deltas = self._read()
        self.usage: Usage | None = None
        self.remaining: int | None = None
        self.remaining_usd: Decimal | None = None
        self.finish_reason: str | None = None

    def __next__(self) -> str:
        return next(self._deltas)

    def __enter__(self) -> TextStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._deltas.close()
        self._response.close()

    def _events(self) -> Iterator[str]:
        """The `data` of each server-sent event."""
        data: list[str] = []
        for line in self._response.iter_lines():
            if line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
            elif not line and data:
                yield "\n".join(data)
                data = []
        if data:
            yield "\n".join(data)

    def _read(self) -> Generator[str, None, None]:
        try:
            for data in self._events():
                if data == "[DONE]":
                    return
                # Decimal floats: remainingUsd exactly as the engine wrote it.
                chunk = json.loads(data, parse_float=Decimal)
                if "error" in chunk:
                    raise error_from_body(chunk["error"])
                self._take_totals(chunk)
                for choice in chunk.get("choices") or []:
                    self.finish_reason = choice.get("finish_reason") or self.finish_reason
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
        except httpx.TransportError as exc:
            raise connection_error(exc) from exc
        finally:
            self._response.close()

    def _take_totals(self, chunk: Mapping[str, Any]) -> None:
        if chunk.get("usage"):
            self.usage = Usage.of(chunk["usage"])
        wattfare = chunk.get("wattfare")
        if isinstance(wattfare, Mapping):
            usd = wattfare.get("remainingUsd")
            self.remaining = wattfare.get("remaining")
            self.remaining_usd = None if usd is None else Decimal(usd)


def _remaining(headers: httpx.Headers) -> tuple[int | None, Decimal | None]:
    count = headers.get("x-wattfare-grant-remaining")
    usd = headers.get("x-wattfare-grant-remaining-usd")
    return (int(count) if count else None, Decimal(usd) if usd else None)


class WattfareModel:
    """A model on a grant. `options` are passed through as chat-completion fields
    (temperature, top_p, stop, …)."""

    def __init__(self, grant: WattfareGrant, model_id: str) -> None:
        self._grant = grant
        self.model_id = model_id

    def __repr__(self) -> str:
        return f"WattfareModel({self.model_id!r})"

    def generate_text(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        **options: Any,
    ) -> GenerateTextResult:
        body = self._body(prompt, messages, system, max_tokens, options)
        response = self._grant._call(body, stream=False)
        raw = response.json()
        choice = (raw.get("choices") or [{}])[0]
        remaining, remaining_usd = _remaining(response.headers)
        return GenerateTextResult(
            text=(choice.get("message") or {}).get("content") or "",
            finish_reason=choice.get("finish_reason"),
            usage=Usage.of(raw.get("usage")),
            remaining=remaining,
            remaining_usd=remaining_usd,
            raw=raw,
        )

    def stream_text(
        self,
        prompt: str | None = None,
        *,
        messages: Sequence[Mapping[str, Any]] | None = None,
        system: str | None = None,
        max_tokens: int | None = None,
        **options: Any,
    ) -> TextStream:
        """Starts the call at once (so a used-up grant raises here), then streams."""
        body = self._body(prompt, messages, system, max_tokens, options)
        body["stream"] = True
        return TextStream(self._grant._call(body, stream=True))

    def _body(
        self,
        prompt: str | None,
        messages: Sequence[Mapping[str, Any]] | None,
        system: str | None,
        max_tokens: int | None,
        options: dict[str, Any],
    ) -> dict[str, Any]:
        if (prompt is None) == (messages is None):
            raise TypeError("Pass a prompt or messages (one of the two).")
        reserved = sorted(_RESERVED_OPTIONS & options.keys())
        if reserved:
            raise TypeError(f"{reserved[0]} is set by the SDK; it cannot be an option.")
        chat: list[Mapping[str, Any]] = []
        if system is not None:
            chat.append({"role": "system", "content": system})
        chat.extend(messages if messages is not None else [{"role": "user", "content": prompt}])
        body: dict[str, Any] = {"model": self.model_id, "messages": chat, **options}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return body


class WattfareGrant:
    """A grant token, redeemed: no network call happens until it is used."""

    def __init__(self, connection: Connection, token: str) -> None:
        self._connection = connection
        self._token = token

    def __repr__(self) -> str:
        return f"WattfareGrant({self._token[:8]}…)"  # never the whole token

    def model(self, model_id: str) -> WattfareModel:
        if not isinstance(model_id, str) or not model_id.strip():
            raise ValueError('model_id must be a model id, e.g. "local/markdown".')
        return WattfareModel(self, model_id.strip())

    def status(self) -> GrantStatus:
        """requests, remaining, max_usd, spent_usd, expires_at and status, from the engine."""
        response = self._connection.send("GET", "/grant", headers={GRANT_HEADER: self._token})
        return _grant_status(response)

    def revoke(self) -> GrantStatus:
        """End the grant now (DELETE /api/v1/grant): later calls raise WattfareGrantError
        (reason "revoked"), and a stream running on it stops within a second, charged what
        it generated. Revoking twice is harmless. Returns the grant's state after it."""
        response = self._connection.send("DELETE", "/grant", headers={GRANT_HEADER: self._token})
        return _grant_status(response)

    def openai_client(self, **options: Any) -> openai.OpenAI:
        """The official `openai.OpenAI`, set up for this grant: base URL, key, grant header.

        Code built on it (LangChain's ChatOpenAI, pydantic-ai, …) then runs on the grant
        unchanged; each completion uses one request. The client keeps its own retries
        (openai's default, 2): the engine recognises them (`x-stainless-retry-count`, and
        what it is still running), so a retry after a timeout is answered with the first
        call's answer, not charged again. `options` go to `openai.OpenAI`.
        """
        try:
            import openai
        except ImportError as exc:
            raise ImportError(
                "openai_client() needs the openai package: pip install openai"
            ) from exc
        connection = self._connection
        settings: dict[str, Any] = {
            "api_key": connection.secret_key,
            "base_url": connection.url,
            **options,
            "default_headers": {**options.get("default_headers", {}), GRANT_HEADER: self._token},
        }
        if connection.in_process and "http_client" not in options:
            # openai's own HTTP client cannot reach an app in this process: give it one
            # that can (openai closes it with itself).
            settings["http_client"] = httpx.Client(
                transport=httpx.WSGITransport(app=connection.wsgi_app())
            )
        return openai.OpenAI(**settings)

    def _call(self, body: dict[str, Any], *, stream: bool) -> httpx.Response:
        headers = {GRANT_HEADER: self._token, "Idempotency-Key": str(uuid.uuid4())}
        return self._connection.send(
            "POST", "/chat/completions", headers=headers, json=body, stream=stream
        )
