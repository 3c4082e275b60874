"""Any OpenAI-compatible `/chat/completions` upstream: OpenRouter, OpenAI, Ollama, vLLM, ….

One long-lived `httpx.Client` per provider, so calls reuse pooled connections. Every
failure becomes a `ProviderError` with a stable `kind`:

- "timeout": no byte from the upstream within `timeout` seconds (per read, so a slow
  stream that keeps sending is fine), or no connection within 10 s.
- "connection": refused, reset, or closed before the answer was complete.
- "upstream_rejected": 400/413/422, or a 404 about the model: the caller's request
  (e.g. an unknown model id) is at fault, so the engine can answer 400.
- "upstream_auth": 401/403: our upstream key is wrong or lacks access.
- "upstream_rate_limited": 429 (its Retry-After is kept).
- "upstream_status": any other non-2xx (5xx, 402 …), or an error the upstream reports
  inside a 200 (an `error` chunk mid-stream, `finish_reason: "error"`).
- "bad_response": a 2xx whose body is not the JSON / SSE we expect.

Messages carry the upstream's own error text where there is one, never our API key.

The answer is passed through, not rebuilt: the assistant message as the upstream sent it
(tool_calls, refusal, annotations, reasoning), the choice's logprobs, the finish reason as
the model said it, and, streamed, every delta (tool-call deltas with their index).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx

from .base import (
    ChatRequest,
    Completion,
    Delta,
    EventStream,
    Opened,
    ProviderError,
    StreamEnd,
)

CONNECT_TIMEOUT = 10.0

# prompt_tokens_upper_bound: template tokens around each message (role markers, end of
# turn, a name) and around the request (BOS, the assistant reply header, and default
# system prompts some chat templates inject). Generous on purpose: it is only a hold.
PER_MESSAGE_OVERHEAD = 8
PER_REQUEST_OVERHEAD = 64
# A non-text content part (image, audio, file) is billed by size, not by its bytes in
# the JSON: a heuristic allowance, not a guarantee (see prompt_tokens_upper_bound).
NON_TEXT_PART_TOKENS = 4096

# Running estimate while streaming: English runs ~4 bytes per token and CJK ~3, so
# bytes / 3 rarely undercounts, and the final usage chunk replaces it anyway.
STREAM_BYTES_PER_TOKEN = 3

# Fields the engine decides. Caller options never override them: the output limits are
# what the grant pays for, and n > 1 would bill several completions.
LIMIT_FIELDS = ("max_tokens", "max_completion_tokens")
ENGINE_FIELDS = frozenset({"model", "messages", *LIMIT_FIELDS, "stream", "stream_options", "n"})
# Top-level fields of an upstream answer that are passed on to the caller.
PASSED_ON = ("system_fingerprint",)
# OpenAI's own API refuses max_tokens for its reasoning models: there the engine's limit
# goes out as max_completion_tokens. Elsewhere (OpenRouter, Ollama, vLLM …) max_tokens
# is the field every server knows.
OPENAI_HOSTS = frozenset({"api.openai.com"})

MAX_ERROR_BODY = 64 * 1024  # an error body is read only this far
MAX_MESSAGE = 300  # characters of upstream error text kept in a ProviderError


class OpenAICompatibleProvider:
    """Implements `base.Provider` against `{base_url}/chat/completions`.

    `timeout` is httpx's read timeout: the longest wait for the next bytes, not a
    deadline for the whole answer. A `client` passed in is used as is (for its pool,
    transport or proxy settings) and not closed by `close()`; headers and timeouts are
    set per request, so they apply either way.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 60.0,
        client: httpx.Client | None = None,
        extra_headers: dict[str, str] | None = None,
        limit_field: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        if limit_field is None:
            host = urlsplit(self.base_url).hostname or ""
            limit_field = "max_completion_tokens" if host in OPENAI_HOSTS else "max_tokens"
        if limit_field not in LIMIT_FIELDS:
            raise ValueError(f"limit_field must be one of {LIMIT_FIELDS}, not {limit_field!r}")
        # The output limit sent when the caller sent none.
        self.limit_field = limit_field
        self._url = f"{self.base_url}/chat/completions"
        self._api_key = api_key or None
        self._timeout = httpx.Timeout(timeout, connect=CONNECT_TIMEOUT)
        self._headers = dict(extra_headers or {})
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"
        self._owns_client = client is None
        self._client = client if client is not None else httpx.Client(timeout=self._timeout)

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleProvider({self.base_url!r})"

    # --- Provider -------------------------------------------------------------------

    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        """An upper bound on billed prompt tokens, without the model's tokenizer.

        Byte-level BPE (GPT, Llama 3, Qwen …) encodes text as bytes and every token
        stands for at least one byte, so a text of N UTF-8 bytes is at most N tokens
        (SentencePiece with byte fallback, plus its one prefix token). We add every
        string in each message (role, content, name, tool call arguments), a
        per-message and a per-request allowance for the chat template, and the JSON
        of the pass-through options, since `tools` and `response_format` are billed
        as prompt. Non-text parts (images, audio) get NON_TEXT_PART_TOKENS
        each: their cost depends on pixels or seconds, which no byte count bounds.
        """
        total = PER_REQUEST_OVERHEAD
        for message in request.messages:
            total += PER_MESSAGE_OVERHEAD + _message_bytes(message)
        if request.options:
            options = json.dumps(request.options, ensure_ascii=False, default=str)
            total += len(options.encode())
        return total

    def complete(self, request: ChatRequest) -> Completion:
        try:
            response = self._client.post(
                self._url,
                json=self._payload(request, stream=False),
                headers=self._request_headers("application/json"),
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if not response.is_success:
            raise self._status_error(response, response.content[:MAX_ERROR_BODY])
        return self._completion(_parse_json(response.content), request)

    def stream(self, request: ChatRequest) -> EventStream:
        """Deltas as the upstream's chunks arrive, then exactly one StreamEnd.

        Close the iterator (the engine uses `contextlib.closing`) to drop the upstream
        connection early.
        """
        try:
            with self._client.stream(
                "POST",
                self._url,
                json=self._payload(request, stream=True),
                headers=self._request_headers("text/event-stream"),
                timeout=self._timeout,
            ) as response:
                if not response.is_success:
                    raise self._status_error(response, _read_capped(response))
                yield Opened()
                if response.headers.get("content-type", "").startswith("application/json"):
                    # The upstream ignored stream=true and answered in one piece.
                    completion = self._completion(_parse_json(response.read()), request)
                    delta = _message_as_delta(completion.message or {})
                    if delta:
                        yield Delta(
                            completion.text,
                            completion.completion_tokens,
                            delta=delta,
                            logprobs=completion.logprobs,
                        )
                    yield StreamEnd(
                        completion.finish_reason,
                        completion.prompt_tokens,
                        completion.completion_tokens,
                    )
                    return
                yield from self._events(response.iter_lines(), request)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # --- requests -------------------------------------------------------------------

    def _payload(self, request: ChatRequest, *, stream: bool) -> dict[str, Any]:
        options = {k: v for k, v in request.options.items() if k not in ENGINE_FIELDS}
        payload: dict[str, Any] = {"model": request.model, "messages": request.messages}
        for limit in request.limit_fields or (self.limit_field,):
            payload[limit] = request.max_tokens
        payload.update(options)
        payload["stream"] = stream
        if stream:
            # Without it OpenAI-style servers send no usage at all when streaming.
            payload["stream_options"] = {"include_usage": True}
        return payload

    def _request_headers(self, accept: str) -> dict[str, str]:
        return {"Accept": accept, **self._headers}

    # --- responses ------------------------------------------------------------------

    def _completion(self, body: Any, request: ChatRequest) -> Completion:
        if not isinstance(body, dict):
            raise ProviderError("bad_response", "The upstream answer is not a JSON object.")
        choices = body.get("choices")
        if body.get("error") is not None and not choices:
            raise self._embedded_error(body["error"])
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise ProviderError("bad_response", "The upstream answer has no choices.")
        choice = choices[0]
        message = choice.get("message")
        if not isinstance(message, dict):
            raise ProviderError("bad_response", "The upstream answer has no message.")
        text = _content_text(message.get("content"))
        if text is None:
            raise ProviderError("bad_response", "The upstream message content is not text.")
        if choice.get("finish_reason") == "error":
            raise self._embedded_error(body.get("error"))
        finish_reason = _finish_reason(choice.get("finish_reason"))
        generated = _generated_bytes(message)
        prompt_tokens, completion_tokens = _usage(body.get("usage"))
        billed_prompt, billed_completion = self._billed(
            request, (prompt_tokens, completion_tokens), generated, finish_reason
        )
        return Completion(
            text=text,
            finish_reason=finish_reason,
            prompt_tokens=billed_prompt,
            completion_tokens=billed_completion,
            message={**message, "role": "assistant"},
            logprobs=choice.get("logprobs"),
            extra={key: body[key] for key in PASSED_ON if body.get(key) is not None},
        )

    def _events(self, lines: Iterable[str], request: ChatRequest) -> EventStream:
        generated = 0  # UTF-8 bytes of text (and visible reasoning) so far
        finish: str | None = None
        prompt_tokens: int | None = None
        completion_tokens: int | None = None
        done = False
        for data in _sse_data(lines):
            if data.strip() == "[DONE]":
                done = True
                break  # stop reading: a server may keep the socket open after [DONE]
            chunk = _parse_json(data)
            if not isinstance(chunk, dict):
                raise ProviderError("bad_response", "A stream chunk is not a JSON object.")
            if chunk.get("error") is not None:
                raise self._embedded_error(chunk["error"])
            usage = _usage(chunk.get("usage"))
            if usage != (None, None):
                prompt_tokens, completion_tokens = usage
            choices = chunk.get("choices")
            if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
                continue  # e.g. the usage chunk, whose choices are []
            choice = choices[0]
            delta = choice.get("delta")
            logprobs = choice.get("logprobs")
            if isinstance(delta, dict):
                # Reasoning and tool-call arguments are billed as completion tokens, so
                # they count for the estimate.
                generated += _generated_bytes(delta)
                passed = {k: v for k, v in delta.items() if k != "role" and v not in (None, "")}
                if passed or logprobs:
                    yield Delta(
                        _content_text(delta.get("content")) or "",
                        math.ceil(generated / STREAM_BYTES_PER_TOKEN),
                        delta=passed,
                        logprobs=logprobs,
                    )
            if choice.get("finish_reason") == "error":
                raise self._embedded_error(None)
            if choice.get("finish_reason"):
                finish = choice["finish_reason"]
        if not done and finish is None:
            raise ProviderError("connection", "The upstream stream ended before it finished.")
        finish_reason = _finish_reason(finish)
        billed_prompt, billed_completion = self._billed(
            request, (prompt_tokens, completion_tokens), generated, finish_reason
        )
        yield StreamEnd(
            finish_reason=finish_reason,
            prompt_tokens=billed_prompt,
            completion_tokens=billed_completion,
        )

    def _billed(
        self,
        request: ChatRequest,
        reported: tuple[int | None, int | None],
        generated_bytes: int,
        finish_reason: str,
    ) -> tuple[int, int]:
        """The upstream's reported usage, or upper bounds where it reported none."""
        prompt_tokens, completion_tokens = reported
        if prompt_tokens is None:
            prompt_tokens = self.prompt_tokens_upper_bound(request)
        if completion_tokens is None:
            completion_tokens = _completion_upper_bound(
                generated_bytes, finish_reason, request.max_tokens
            )
        return prompt_tokens, completion_tokens

    # --- errors ---------------------------------------------------------------------

    def _clean(self, text: str) -> str:
        """Upstream text fit for logs and callers: one line, short, without our key."""
        if self._api_key:
            text = text.replace(self._api_key, "[redacted]")
        text = " ".join(text.split())
        return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"

    def _transport_error(self, exc: httpx.HTTPError) -> ProviderError:
        if isinstance(exc, httpx.TimeoutException):
            kind = "timeout"
        elif isinstance(exc, httpx.DecodingError):
            kind = "bad_response"  # e.g. a broken gzip body
        else:
            # ConnectError, ReadError (a reset), RemoteProtocolError (closed mid-body) …
            kind = "connection"
        detail = str(exc) or "no detail"
        return ProviderError(kind, self._clean(f"{type(exc).__name__}: {detail}"))

    def _status_error(self, response: httpx.Response, body: bytes) -> ProviderError:
        status = response.status_code
        message, code = _error_message(body)
        retry_after = response.headers.get("retry-after")
        if status in (401, 403):
            kind = "upstream_auth"
        elif status == 429:
            kind = "upstream_rate_limited"
        elif status in (400, 413, 422) or (
            # A 404 about the model is the caller's; any other 404 is our base URL.
            status == 404
            and message is not None
            and (code == "model_not_found" or "model" in message.lower())
        ):
            kind = "upstream_rejected"
        else:
            kind = "upstream_status"
        if message is None:
            message = f"HTTP {status} {response.reason_phrase}".rstrip()
            if response.headers.get("content-type", "").startswith("text/plain") and body:
                message += f": {body.decode(errors='replace')}"
        return ProviderError(kind, self._clean(message), status, retry_after=retry_after)

    def _embedded_error(self, error: Any) -> ProviderError:
        """An error the upstream reports inside a 2xx body or stream."""
        message, code = _error_fields(error)
        status = code if isinstance(code, int) and not isinstance(code, bool) else None
        return ProviderError(
            "upstream_status", self._clean(message or "The upstream reported an error."), status
        )


# --- helpers ------------------------------------------------------------------------


def _sse_data(lines: Iterable[str]) -> Iterator[str]:
    """The `data` of each server-sent event, as soon as its blank line arrives.

    Comment lines (": OPENROUTER PROCESSING" keep-alives) and other fields are skipped;
    multi-line data is joined with newlines, as the SSE spec says.
    """
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            if name == "data":
                data.append(value.removeprefix(" "))
    if data:  # the body ended without the final blank line
        yield "\n".join(data)


def _parse_json(raw: bytes | str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise ProviderError("bad_response", "The upstream answer is not valid JSON.") from None


def _read_capped(response: httpx.Response) -> bytes:
    body = b""
    for part in response.iter_bytes():
        body += part
        if len(body) >= MAX_ERROR_BODY:
            break
    return body[:MAX_ERROR_BODY]


def _error_fields(error: Any) -> tuple[str | None, Any]:
    """(message, code) from `{"message", "code"}` or a bare string."""
    if isinstance(error, str):
        return error, None
    if isinstance(error, dict):
        message = error.get("message")
        return (message if isinstance(message, str) else None), error.get("code")
    return None, None


def _error_message(body: bytes) -> tuple[str | None, Any]:
    """(message, code) from an error body: OpenAI's `{"error": {...}}`, or the shapes
    other servers use (`{"error": "..."}`, vLLM's `{"message"}`, FastAPI's `{"detail"}`)."""
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return None, None
    if not isinstance(parsed, dict):
        return None, None
    message, code = _error_fields(parsed.get("error"))
    if message is None:
        message, code = _error_fields(parsed)
    if message is None and isinstance(parsed.get("detail"), str):
        message = parsed["detail"]
    return message, code


def _content_text(content: Any) -> str | None:
    """Message content as text: a string, null (no text), or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # e.g. Mistral's reasoning models
        return "".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") == "text"
            and isinstance(part.get("text"), str)
        )
    return None


def _reasoning(message: dict[str, Any]) -> str:
    # OpenRouter says "reasoning", vLLM / DeepSeek "reasoning_content".
    for key in ("reasoning", "reasoning_content"):
        value = message.get(key)
        if isinstance(value, str):
            return value
    return ""


def _finish_reason(value: Any) -> str:
    # As the model said it ("stop", "length", "tool_calls", "content_filter", …); a
    # missing one is a plain stop.
    return value if isinstance(value, str) and value else "stop"


def _generated_bytes(message: dict[str, Any]) -> int:
    """UTF-8 bytes of what the model wrote in a message or delta: text, visible
    reasoning, a refusal and tool-call names and arguments, all billed as output."""
    total = _utf8_len(_content_text(message.get("content")) or "")
    total += _utf8_len(_reasoning(message))
    if isinstance(message.get("refusal"), str):
        total += _utf8_len(message["refusal"])
    calls = message.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict):
                total += _string_bytes(function.get("name")) + _string_bytes(
                    function.get("arguments")
                )
    return total


def _message_as_delta(message: dict[str, Any]) -> dict[str, Any]:
    """A whole message as one stream delta: tool calls get the `index` deltas carry."""
    delta = {k: v for k, v in message.items() if k != "role" and v not in (None, "", [])}
    if isinstance(delta.get("tool_calls"), list):
        delta["tool_calls"] = [
            {"index": i, **call} if isinstance(call, dict) else call
            for i, call in enumerate(delta["tool_calls"])
        ]
    return delta


def _usage(usage: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens); None for a count that is missing or not a
    whole number, so the caller falls back to an estimate for it."""
    if not isinstance(usage, dict):
        return None, None

    def count(key: str) -> int | None:
        value = usage.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        return None

    return count("prompt_tokens"), count("completion_tokens")


def _completion_upper_bound(generated_bytes: int, finish_reason: str, max_tokens: int) -> int:
    """Completion tokens when the upstream reports no usage, never 0.

    Stopped by the length limit: the model produced max_tokens. Otherwise each token
    is at least one byte of what we received, plus one for the end-of-sequence token,
    and never more than max_tokens. Hidden reasoning the upstream did not return is
    not seen, but the providers that bill it (OpenAI, OpenRouter) always send usage.
    """
    cap = max(1, max_tokens)
    if finish_reason == "length":
        return cap
    return max(1, min(cap, generated_bytes + 1))


def _utf8_len(text: str) -> int:
    return len(text.encode())


def _message_bytes(message: dict[str, Any]) -> int:
    """UTF-8 bytes of every string in a message, plus NON_TEXT_PART_TOKENS for each
    content part that is not text."""
    total = 0
    for key, value in message.items():
        if key == "content" and isinstance(value, list):
            total += NON_TEXT_PART_TOKENS * sum(
                1 for part in value if not (isinstance(part, dict) and part.get("type") == "text")
            )
        total += _string_bytes(value)
    return total


def _string_bytes(value: Any) -> int:
    if isinstance(value, str):
        return _utf8_len(value)
    if isinstance(value, list):
        return sum(_string_bytes(item) for item in value)
    if isinstance(value, dict):
        return sum(_string_bytes(item) for item in value.values())
    return 0
