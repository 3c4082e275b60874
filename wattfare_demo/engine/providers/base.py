"""What every model provider gives the engine: one completion, or a stream of deltas.

Providers know nothing about grants or money. The engine reserves before calling
them and settles afterwards from the usage they report, so a provider only has to be
honest about `prompt_tokens` and `completion_tokens`.

The engine is a faithful proxy: whatever of the upstream's answer it does not need to
change (tool calls, refusals, logprobs, the finish reason as the model said it) rides
along in the optional fields below (`message`, `delta`, `logprobs`, `extra`), and the
engine renders it back to the caller untouched. A provider that only makes text (the
offline `local/markdown`) leaves them at their defaults.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

# What a request may ask of a model beyond plain text. A provider class says which it
# honours in `capabilities`; the engine refuses (400, before any charge) a request that
# needs one its model lacks, instead of ignoring the field and charging for an answer
# the caller cannot use. A provider without the attribute honours all of them.
CAPABILITIES = frozenset({"tools", "response_format", "logprobs"})


@dataclass(frozen=True)
class ChatRequest:
    """An OpenAI chat-completions request, already validated by the engine."""

    model: str  # the model id as the provider knows it
    messages: list[dict[str, Any]]
    max_tokens: int  # already clamped by the engine to what the grant can pay for
    # Everything else the caller sent (temperature, tools, response_format, …), passed
    # through.
    options: dict[str, Any] = field(default_factory=dict)
    # Which output limit(s) go upstream, each set to `max_tokens`: the ones the caller
    # sent ("max_tokens", "max_completion_tokens" or both), or, when it sent none, the
    # one the upstream expects. Empty: the provider's own choice.
    limit_fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # as the model said it: "stop", "length", "tool_calls", …
    prompt_tokens: int
    completion_tokens: int
    # The assistant message as the upstream sent it (content, tool_calls, refusal,
    # annotations, …); None: {"role": "assistant", "content": text}.
    message: dict[str, Any] | None = None
    logprobs: Any = None
    # Top-level fields of the upstream answer worth passing on (system_fingerprint, …).
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Delta:
    """A piece of a streamed answer. `completion_tokens` counts all tokens so far."""

    text: str
    completion_tokens: int
    # The upstream's whole delta (tool_calls with their index, refusal, …); None: a
    # plain {"content": text}.
    delta: dict[str, Any] | None = None
    logprobs: Any = None


@dataclass(frozen=True)
class Opened:
    """The upstream accepted the request (a 2xx status): what follows is the answer.

    Optional. The engine reads a stream up to its first event before it answers the
    caller, so an upstream that refuses (429, 400) is answered with that status; a
    provider that yields this as soon as the upstream's headers arrive lets the engine
    answer without waiting for the first token.
    """


@dataclass(frozen=True)
class StreamEnd:
    """The last event of every stream: why it stopped and the real usage."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


StreamEvent = Opened | Delta | StreamEnd
# A provider's stream is a generator, not any iterator: the metering closes it to stop
# the upstream when a caller leaves or the cap is reached.
EventStream = Generator[StreamEvent, None, None]


class ProviderError(Exception):
    """The provider failed: nothing is charged. `kind` is a stable, loggable code."""

    def __init__(
        self,
        kind: str,
        message: str,
        status: int | None = None,
        *,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind  # "timeout" | "connection" | "upstream_status" | "bad_response" | …
        self.message = message
        self.status = status
        self.retry_after = retry_after  # the upstream's Retry-After, when it sent one


class Provider(Protocol):
    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        """At least as many prompt tokens as the provider will bill, for the hold."""

    def complete(self, request: ChatRequest) -> Completion: ...

    def stream(self, request: ChatRequest) -> EventStream: ...


def capabilities_of(provider: object) -> frozenset[str]:
    return getattr(type(provider), "capabilities", CAPABILITIES)
