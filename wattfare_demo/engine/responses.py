"""POST /api/v1/responses: the OpenAI Responses API, on the same metered lifecycle.

`@ai-sdk/openai`'s default `openai(id)` model and `client.responses.create` of the openai
package call this API. The engine translates it to a chat-completions request (which every
upstream and the local model speak), meters that call like any other, and renders the
answer back as a Response object, or as the Responses API's typed stream events.

Supported: `input` as text or items (messages with text and image parts, function calls
and their outputs), `instructions`, `max_output_tokens`, `temperature`, `top_p`, function
`tools` and `tool_choice`, `parallel_tool_calls`, `text.format` (text, json_object,
json_schema), `top_logprobs`, `reasoning.effort`, `user`, `stream`.

Refused with a 400 that names the field: anything that needs the engine to keep the
conversation (`store: true`, `previous_response_id`, `conversation`, `item_reference`
items, `background`), built-in tools (web search, file search, …, billed apart from
tokens), and fields this API does not know. Dropped: `metadata`, `include`,
`truncation`, prompt-cache settings, `safety_identifier`, `max_tool_calls`,
`text.verbosity`, `stream_options`; `service_tier` as in chat completions.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ApiError, invalid_request
from .metering import Failed, Finished, StreamItem, balance_summary, sse
from .providers.base import Completion, Delta
from .validation import ChatCall, parse_chat_request

# Responses fields that go to the chat request as they are.
_SAME = ("temperature", "top_p", "parallel_tool_calls", "user", "top_logprobs")
# Accepted and not sent on: they tune what the engine does not do (store, cache, …).
_DROPPED = frozenset(
    {
        "metadata",
        "include",
        "truncation",
        "prompt_cache_key",
        "prompt_cache_retention",
        "prompt_cache_options",
        "safety_identifier",
        "max_tool_calls",
        "stream_options",
    }
)
_HANDLED = frozenset(
    {
        "model",
        "input",
        "instructions",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "stream",
        "store",
        "service_tier",
        *_SAME,
    }
)
_NOT_KEPT = (
    "the engine keeps no conversation, so nothing can be referred to later: send the "
    "whole conversation in input (with the AI SDK, providerOptions.openai.store = false)"
)


def _unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, "unsupported_parameter", message, param=param)


# --- the request ------------------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, dict) and isinstance(part.get("refusal"), str):
                texts.append(part["refusal"])
            else:
                raise invalid_request(f"{where}[{i}]", f"{where}[{i}] must be a text part.")
        return "".join(texts)
    raise invalid_request(where, f"{where} must be a string or a non-empty list of text parts.")


def _parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """Responses content parts as chat content parts."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise invalid_request(where, f"{where} must be a string or a non-empty list of parts.")
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            image = {"url": part["image_url"]}
            if isinstance(part.get("detail"), str):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise invalid_request(
                f"{where}[{i}]",
                f"{where}[{i}] must be an input_text, output_text or input_image part "
                "(with image_url).",
            )
    return parts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid_request("instructions", "instructions must be a string.")
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise invalid_request("input", "input must be a string or a non-empty list of items.")
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise invalid_request(where, f"{where} must be an object.")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise invalid_request(
                    f"{where}.role", f"{where}.role must be user, system, developer or assistant."
                )
            if role == "assistant":
                content: Any = _text_of(item.get("content"), f"{where}.content")
            else:
                content = _parts(item.get("content"), f"{where}.content")
            messages.append({"role": role, "content": content})
        elif kind == "function_call":
            call = {
                "id": item.get("call_id"),
                "type": "function",
                "function": {"name": item.get("name"), "arguments": item.get("arguments")},
            }
            if not all(isinstance(v, str) for v in (call["id"], item.get("name"))) or not (
                isinstance(item.get("arguments"), str)
            ):
                raise invalid_request(
                    where, f"{where} needs call_id, name and arguments (strings)."
                )
            last = messages[-1] if messages else None
            if last and last["role"] == "assistant" and last.get("tool_calls"):
                last["tool_calls"].append(call)  # parallel calls: one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise invalid_request(f"{where}.call_id", f"{where}.call_id must be a string.")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": _text_of(item.get("output"), f"{where}.output"),
                }
            )
        elif kind == "reasoning":
            continue  # the model's own notes from an earlier turn: not sent back
        elif kind == "item_reference":
            raise _unsupported(f"{where}.type", f"item_reference is not supported: {_NOT_KEPT}.")
        else:
            raise _unsupported(
                f"{where}.type",
                f"{where}.type {kind!r} is not supported: send messages, function_call and "
                "function_call_output items.",
            )
    return messages


def _tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise invalid_request("tools", "tools must be a list.")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise _unsupported(
                f"tools[{i}].type",
                f"Tool type {kind!r} is not supported: only function tools (built-in tools "
                "such as web search are billed apart from tokens).",
            )
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise invalid_request(f"tools[{i}].name", f"tools[{i}].name must be a string.")
        function = {
            key: tool[key]
            for key in ("name", "description", "parameters", "strict")
            if tool.get(key) is not None
        }
        out.append({"type": "function", "function": function})
    return out


def _tool_choice(value: Any) -> Any:
    if value is None or value in ("auto", "none", "required"):
        return value
    if isinstance(value, dict) and value.get("type") == "function" and value.get("name"):
        return {"type": "function", "function": {"name": value["name"]}}
    raise invalid_request(
        "tool_choice", 'tool_choice must be "auto", "none", "required" or a function by name.'
    )


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise invalid_request("text", "text must be an object.")
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        schema = {
            key: fmt[key]
            for key in ("name", "description", "schema", "strict")
            if fmt.get(key) is not None
        }
        schema.setdefault("name", "response")
        return {"type": "json_schema", "json_schema": schema}
    raise invalid_request(
        "text.format", "text.format.type must be text, json_object or json_schema."
    )


def parse(body: dict[str, Any]) -> tuple[ChatCall, ResponsesRenderer]:
    """A Responses request as the chat call the engine meters, and its renderer."""
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise _unsupported(name, f"{name} is not supported: {_NOT_KEPT}.")
    if body.get("store") is True:
        raise _unsupported("store", f"store: true is not supported: {_NOT_KEPT}.")
    if body.get("background"):
        raise _unsupported("background", "background responses are not supported.")
    unknown = sorted(set(body) - _HANDLED - _DROPPED - {"background"})
    if unknown:
        raise _unsupported(unknown[0], f"Unknown field {unknown[0]!r} for /responses.")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid_request("model", 'model is required, e.g. "local/markdown".')
    chat: dict[str, Any] = {"model": model, "messages": _messages(body)}
    for name in _SAME:
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("top_logprobs") is not None:
        chat["logprobs"] = True
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    if (tools := _tools(body)) is not None:
        chat["tools"] = tools
    if (choice := _tool_choice(body.get("tool_choice"))) is not None:
        chat["tool_choice"] = choice
    if (response_format := _response_format(body.get("text"))) is not None:
        chat["response_format"] = response_format
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    for name in ("stream", "service_tier"):
        if name in body:
            chat[name] = body[name]
    try:
        call = parse_chat_request(chat)
    except ApiError as exc:
        if exc.param == "max_tokens":  # say it in this API's words
            exc.param = "max_output_tokens"
            exc.message = exc.message.replace("max_tokens", "max_output_tokens")
        raise
    # The caller named no chat limit: the upstream gets the field it expects.
    call = replace(call, limit_fields=())
    return call, ResponsesRenderer(model.strip(), body)


# --- the answer -------------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


def _logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    """Chat logprobs ({"content": [...]}) as the Responses API's per-token list."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(content, list):
        return None
    out = []
    for token in content:
        if not isinstance(token, dict):
            continue
        out.append(
            {
                "token": token.get("token", ""),
                "logprob": token.get("logprob", 0.0),
                "bytes": token.get("bytes"),
                "top_logprobs": [
                    {"token": t.get("token", ""), "logprob": t.get("logprob", 0.0)}
                    for t in token.get("top_logprobs") or []
                    if isinstance(t, dict)
                ],
            }
        )
    return out


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _incomplete(finish_reason: str) -> dict[str, str] | None:
    if finish_reason == "length":
        return {"reason": "max_output_tokens"}
    if finish_reason == "content_filter":
        return {"reason": "content_filter"}
    return None


@dataclass
class _Item:
    """One output item of a streamed response, as it is built."""

    index: int
    item: dict[str, Any]
    text: list[str] = field(default_factory=list)
    logprobs: list[dict[str, Any]] = field(default_factory=list)


class ResponsesRenderer:
    def __init__(self, model: str, body: dict[str, Any]) -> None:
        self.model = model
        self.request = body  # echoed in the Response object, as OpenAI does
        self.id = _id("resp")
        self.created_at = int(time.time())

    def _response(self, status: str, output: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        body = self.request
        given = body.get("text")
        text: dict[str, Any] = given if isinstance(given, dict) else {}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "model": self.model,
            "output": output,
            "parallel_tool_calls": body.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None},
            "store": False,
            "temperature": body.get("temperature"),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice", "auto"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p"),
            "truncation": "disabled",
            "usage": None,
            "metadata": {},
            **extra,
        }

    def body(self, completion: Completion) -> dict[str, Any]:
        message = completion.message or {"role": "assistant", "content": completion.text}
        output: list[dict[str, Any]] = []
        content: list[dict[str, Any]] = []
        if completion.text:
            content.append(
                {
                    "type": "output_text",
                    "text": completion.text,
                    "annotations": [],
                    "logprobs": _logprobs(completion.logprobs) or [],
                }
            )
        if isinstance(message.get("refusal"), str) and message["refusal"]:
            content.append({"type": "refusal", "refusal": message["refusal"]})
        if content:
            output.append(
                {
                    "type": "message",
                    "id": _id("msg"),
                    "status": "completed",
                    "role": "assistant",
                    "content": content,
                }
            )
        for call in message.get("tool_calls") or []:
            function = call.get("function") or {}
            output.append(
                {
                    "type": "function_call",
                    "id": _id("fc"),
                    "call_id": call.get("id") or _id("call"),
                    "name": function.get("name", ""),
                    "arguments": function.get("arguments", ""),
                    "status": "completed",
                }
            )
        incomplete = _incomplete(completion.finish_reason)
        return self._response(
            "incomplete" if incomplete else "completed",
            output,
            incomplete_details=incomplete,
            usage=_usage(completion.prompt_tokens, completion.completion_tokens),
        )

    def events(self, items: Iterator[StreamItem]) -> Iterator[str]:
        sequence = 0

        def event(kind: str, **data: Any) -> str:
            nonlocal sequence
            sequence += 1
            return sse({"type": kind, "sequence_number": sequence - 1, **data}, event=kind)

        outputs: list[_Item] = []
        message: _Item | None = None
        calls: dict[int, _Item] = {}
        yield event("response.created", response=self._response("in_progress", []))
        yield event("response.in_progress", response=self._response("in_progress", []))
        for item in items:
            if isinstance(item, Delta):
                delta = item.delta if item.delta is not None else {"content": item.text}
                text = delta.get("content")
                if isinstance(text, str) and text:
                    if message is None:
                        message = _Item(
                            len(outputs),
                            {
                                "type": "message",
                                "id": _id("msg"),
                                "status": "in_progress",
                                "role": "assistant",
                                "content": [],
                            },
                        )
                        outputs.append(message)
                        yield event(
                            "response.output_item.added",
                            output_index=message.index,
                            item=message.item,
                        )
                        yield event(
                            "response.content_part.added",
                            item_id=message.item["id"],
                            output_index=message.index,
                            content_index=0,
                            part={"type": "output_text", "text": "", "annotations": []},
                        )
                    logprobs = _logprobs(item.logprobs) or []
                    message.text.append(text)
                    message.logprobs.extend(logprobs)
                    yield event(
                        "response.output_text.delta",
                        item_id=message.item["id"],
                        output_index=message.index,
                        content_index=0,
                        delta=text,
                        logprobs=logprobs,
                    )
                for call in delta.get("tool_calls") or []:
                    if not isinstance(call, dict):
                        continue
                    index = call.get("index", 0)
                    function = call.get("function") or {}
                    if index not in calls:
                        calls[index] = _Item(
                            len(outputs),
                            {
                                "type": "function_call",
                                "id": _id("fc"),
                                "call_id": call.get("id") or _id("call"),
                                "name": function.get("name") or "",
                                "arguments": "",
                                "status": "in_progress",
                            },
                        )
                        outputs.append(calls[index])
                        yield event(
                            "response.output_item.added",
                            output_index=calls[index].index,
                            item=calls[index].item,
                        )
                    arguments = function.get("arguments")
                    if isinstance(arguments, str) and arguments:
                        calls[index].text.append(arguments)
                        yield event(
                            "response.function_call_arguments.delta",
                            item_id=calls[index].item["id"],
                            output_index=calls[index].index,
                            delta=arguments,
                        )
            elif isinstance(item, Finished):
                done = []
                for built in outputs:
                    yield from self._close(built, event)
                    done.append(built.item)
                incomplete = _incomplete(item.finish_reason)
                kind = "response.incomplete" if incomplete else "response.completed"
                yield event(
                    kind,
                    response=self._response(
                        "incomplete" if incomplete else "completed",
                        done,
                        incomplete_details=incomplete,
                        usage=_usage(item.prompt_tokens, item.completion_tokens),
                    ),
                    wattfare=balance_summary(item.balance),
                )
                if item.cut_error is not None:
                    yield self._error(item.cut_error, event)
            elif isinstance(item, Failed):
                yield self._error(item.error, event)

    @staticmethod
    def _close(built: _Item, event: Any) -> Iterator[str]:
        item = built.item
        text = "".join(built.text)
        if item["type"] == "message":
            part = {
                "type": "output_text",
                "text": text,
                "annotations": [],
                "logprobs": built.logprobs,
            }
            yield event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=built.index,
                content_index=0,
                text=text,
                logprobs=built.logprobs,
            )
            yield event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=built.index,
                content_index=0,
                part=part,
            )
            item.update(status="completed", content=[part])
        else:
            yield event(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=built.index,
                name=item["name"],
                arguments=text,
            )
            item.update(status="completed", arguments=text)
        yield event("response.output_item.done", output_index=built.index, item=item)

    @staticmethod
    def _error(error: ApiError, event: Any) -> str:
        body = error.body()["error"]
        rendered: str = event(
            "error",
            code=body["code"],
            message=body["message"],
            param=body.get("param"),
            error=body,
        )
        return rendered


__all__ = ["ResponsesRenderer", "parse"]
