"""What every model provider gives the engine: one completion, or a stream of deltas.

Providers know nothing about grants or money. The engine reserves before calling
them and settles afterwards from the usage they report, so a provider only has to be
honest about `prompt_tokens` and `completion_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ChatRequest:
    """An OpenAI chat-completions request, already validated by the engine."""

    model: str  # the model id as the provider knows it
    messages: list[dict[str, Any]]
    max_tokens: int  # already clamped by the engine to what the grant can pay for
    # Everything else the caller sent (temperature, top_p, stop, …), passed through.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text. `completion_tokens` counts all tokens so far."""

    text: str
    completion_tokens: int


@dataclass(frozen=True)
class StreamEnd:
    """The last event of every stream: why it stopped and the real usage."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


StreamEvent = Delta | StreamEnd


class ProviderError(Exception):
    """The provider failed: nothing is charged. `kind` is a stable, loggable code."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind  # "timeout" | "connection" | "upstream_status" | "bad_response"
        self.message = message
        self.status = status


class Provider(Protocol):
    def prompt_tokens_upper_bound(self, request: ChatRequest) -> int:
        """At least as many prompt tokens as the provider will bill, for the hold."""

    def complete(self, request: ChatRequest) -> Completion: ...

    def stream(self, request: ChatRequest) -> Iterator[StreamEvent]: ...
