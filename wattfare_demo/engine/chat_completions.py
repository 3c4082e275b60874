"""The chat-completions wire format: how a metered call looks on /api/v1/chat/completions.

A faithful proxy: the upstream's message (content, tool_calls, refusal, …), its
finish_reason and logprobs, and every streamed delta (tool-call deltas with their index)
are passed on as they came. The engine sets only what it owns: the id, the model id as
the caller named it, the usage it charged, and the `wattfare` balance on the usage chunk.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

from .metering import Failed, Finished, StreamItem, balance_summary, sse
from .providers.base import Completion, Delta


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChatCompletionsRenderer:
    def __init__(self, model: str) -> None:
        self.model = model  # as the caller named it
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())

    def body(self, completion: Completion) -> dict[str, Any]:
        message = completion.message or {"role": "assistant", "content": completion.text}
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": completion.finish_reason,
                    "logprobs": completion.logprobs,
                }
            ],
            "usage": _usage(completion.prompt_tokens, completion.completion_tokens),
            **completion.extra,
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        choice.update(extra)
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
            }
        )

    def events(self, items: Iterator[StreamItem]) -> Iterator[str]:
        yield self._chunk({"role": "assistant", "content": ""})
        for item in items:
            if isinstance(item, Delta):
                delta = item.delta if item.delta is not None else {"content": item.text}
                extra = {"logprobs": item.logprobs} if item.logprobs is not None else {}
                yield self._chunk(delta, **extra)
            elif isinstance(item, Finished):
                yield self._chunk({}, item.finish_reason)
                balance = item.balance
                yield sse(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": _usage(item.prompt_tokens, item.completion_tokens),
                        "wattfare": balance_summary(balance),
                    }
                )
                if item.cut_error is not None:
                    yield sse(item.cut_error.body())
                yield sse("[DONE]")
            elif isinstance(item, Failed):
                yield sse(item.error.body())
                yield sse("[DONE]")


__all__ = ["ChatCompletionsRenderer"]
