"""OpenAICompatibleProvider against a real HTTP server (tests/fake_upstream.py): no mocks."""

from __future__ import annotations

import json
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.fake_upstream import (
    ErrorReply,
    FakeUpstream,
    RawReply,
    Reply,
    Reset,
    StreamReply,
)
from wattfare_demo.engine.providers.base import (
    ChatRequest,
    Completion,
    Delta,
    Opened,
    ProviderError,
    StreamEnd,
    StreamEvent,
)
from wattfare_demo.engine.providers.openai_compatible import (
    NON_TEXT_PART_TOKENS,
    PER_MESSAGE_OVERHEAD,
    PER_REQUEST_OVERHEAD,
    OpenAICompatibleProvider,
)

KEY = "sk-or-v1-secret-test-key"
FAST = 0.5  # read timeout for tests: faults must show up quickly


def chat(content: str = "Hello there", max_tokens: int = 64, **options: object) -> ChatRequest:
    return ChatRequest(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        options=dict(options),
    )


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def provider(upstream: FakeUpstream) -> Iterator[OpenAICompatibleProvider]:
    p = OpenAICompatibleProvider(
        upstream.url, KEY, timeout=FAST, extra_headers={"X-Title": "Wattfare grants demo"}
    )
    yield p
    p.close()


def text(content: str, tokens: int) -> Delta:
    """A text delta as the provider passes it on: the upstream's delta rides along."""
    return Delta(content, tokens, delta={"content": content})


def opened(events: Iterator[StreamEvent]) -> Iterator[StreamEvent]:
    """The stream after its first event, which must say the upstream accepted the call."""
    assert next(events) == Opened()
    return events


def drain(events: Iterator[StreamEvent]) -> tuple[list[Delta], list[StreamEnd]]:
    deltas: list[Delta] = []
    ends: list[StreamEnd] = []
    events = opened(events)
    for event in events:
        assert not ends, "nothing may follow the StreamEnd"
        if isinstance(event, Delta):
            deltas.append(event)
        else:
            ends.append(event)
    return deltas, ends


def _prepend_opened(events: Iterator[StreamEvent]) -> Iterator[StreamEvent]:
    yield Opened()
    yield from events


def provider_error(run: Callable[[], object]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        run()
    return info.value


# --- complete -------------------------------------------------------------------------


def test_complete_sends_the_request_and_reads_text_finish_and_usage(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(Reply(text="Hi!", usage=(21, 3)))
    result = provider.complete(chat("Hello there", max_tokens=16, temperature=0.2, stop=["\n"]))

    assert result == Completion(
        text="Hi!",
        finish_reason="stop",
        prompt_tokens=21,
        completion_tokens=3,
        message={"role": "assistant", "content": "Hi!"},
    )
    sent = upstream.last
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["x-title"] == "Wattfare grants demo"
    assert sent.headers["content-type"] == "application/json"
    assert sent.json == {
        "model": "openai/gpt-4o-mini",
        "messages": [{"role": "user", "content": "Hello there"}],
        "max_tokens": 16,
        "temperature": 0.2,
        "stop": ["\n"],
        "stream": False,
    }


def test_no_authorization_header_without_a_key_and_trailing_slash_is_fine(
    upstream: FakeUpstream,
) -> None:
    p = OpenAICompatibleProvider(upstream.url + "/", None, timeout=FAST)
    try:
        assert p.complete(chat("ping")).text == "echo: ping"
    finally:
        p.close()
    assert upstream.last.path == "/v1/chat/completions"
    assert "authorization" not in upstream.last.headers


def test_options_cannot_override_what_the_engine_decides(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    request = ChatRequest(
        model="openai/gpt-4o-mini",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=16,
        options={
            "top_p": 0.9,
            "max_tokens": 9999,
            "max_completion_tokens": 9999,
            "n": 3,
            "stream": True,
            "model": "other/model",
        },
    )
    provider.complete(request)
    sent = upstream.last.json
    assert sent["max_tokens"] == 16 and sent["model"] == "openai/gpt-4o-mini"
    assert sent["stream"] is False and sent["top_p"] == 0.9
    assert "max_completion_tokens" not in sent and "n" not in sent


@pytest.mark.parametrize(
    ("upstream_reason", "ours"),
    [
        ("length", "length"),
        ("stop", "stop"),
        ("content_filter", "content_filter"),
        (None, "stop"),
        ("tool_calls", "tool_calls"),
    ],
)
def test_finish_reason_is_passed_on_as_the_model_said_it(
    upstream: FakeUpstream,
    provider: OpenAICompatibleProvider,
    upstream_reason: str | None,
    ours: str,
) -> None:
    upstream.respond(Reply(text="x", finish_reason=upstream_reason))
    assert provider.complete(chat()).finish_reason == ours


def test_missing_usage_falls_back_to_an_upper_bound(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    request = chat("Hello there", max_tokens=64)
    upstream.respond(
        Reply(text="héllo", usage=None),  # 6 bytes
        Reply(text="", usage=None),
        Reply(text="truncated", usage=None, finish_reason="length"),
    )
    bound = provider.prompt_tokens_upper_bound(request)

    first = provider.complete(request)
    assert (first.prompt_tokens, first.completion_tokens) == (bound, 6 + 1)
    assert provider.complete(request).completion_tokens == 1  # never 0
    assert provider.complete(request).completion_tokens == 64  # it ran to max_tokens


def test_the_connection_is_pooled(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    provider.complete(chat())
    provider.complete(chat())
    assert upstream.requests[0].client_port == upstream.requests[1].client_port


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("behaviour", "kind", "status", "message"),
    [
        (
            ErrorReply(status=400, message="foo/bar is not a valid model ID"),
            "upstream_rejected",
            400,
            "foo/bar is not a valid model ID",
        ),
        (
            ErrorReply(status=422, message="temperature: must be <= 2"),
            "upstream_rejected",
            422,
            "temperature: must be <= 2",
        ),
        (
            ErrorReply(status=404, message="The model `x` does not exist", code="model_not_found"),
            "upstream_rejected",
            404,
            "The model `x` does not exist",
        ),
        (
            RawReply(status=404, body=b"404 page not found"),
            "upstream_status",
            404,
            "HTTP 404 Not Found: 404 page not found",
        ),
        (
            ErrorReply(status=401, message="No auth credentials found", type="auth"),
            "upstream_auth",
            401,
            "No auth credentials found",
        ),
        (ErrorReply(status=403, message="Key disabled"), "upstream_auth", 403, "Key disabled"),
        (
            ErrorReply(status=429, message="Rate limit exceeded"),
            "upstream_rate_limited",
            429,
            "Rate limit exceeded",
        ),
        (
            ErrorReply(status=500, message="Internal error"),
            "upstream_status",
            500,
            "Internal error",
        ),
        (
            RawReply(
                status=502, body=b"<html><h1>Bad gateway</h1></html>", content_type="text/html"
            ),
            "upstream_status",
            502,
            "HTTP 502 Bad Gateway",
        ),
        (
            RawReply(status=200, body=b"{not json", content_type="application/json"),
            "bad_response",
            None,
            "The upstream answer is not valid JSON.",
        ),
        (
            RawReply(
                status=200, body=b'{"id": "x", "choices": []}', content_type="application/json"
            ),
            "bad_response",
            None,
            "The upstream answer has no choices.",
        ),
        (
            RawReply(
                status=200,
                body=b'{"error": {"message": "Upstream overloaded", "code": 503}}',
                content_type="application/json",
            ),
            "upstream_status",
            503,
            "Upstream overloaded",
        ),
    ],
)
def test_http_failures_map_to_stable_kinds(
    upstream: FakeUpstream,
    provider: OpenAICompatibleProvider,
    behaviour: ErrorReply | RawReply,
    kind: str,
    status: int | None,
    message: str,
) -> None:
    # The same mapping applies before a stream starts.
    upstream.respond(behaviour, behaviour)
    for run in (lambda: provider.complete(chat()), lambda: list(provider.stream(chat()))):
        error = provider_error(run)
        assert (error.kind, error.status, error.message) == (kind, status, message)


def test_error_messages_never_contain_our_key(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(ErrorReply(status=401, message=f"Incorrect API key provided: {KEY}."))
    error = provider_error(lambda: provider.complete(chat()))
    assert KEY not in str(error) and KEY not in error.message
    assert error.message == "Incorrect API key provided: [redacted]."
    assert KEY not in repr(provider)


def test_a_hanging_upstream_times_out_after_the_configured_read_timeout(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(Reply(delay=3))
    started = time.monotonic()
    error = provider_error(lambda: provider.complete(chat()))
    assert error.kind == "timeout"
    assert FAST <= time.monotonic() - started < FAST + 2


def test_connection_refused_and_reset_are_connection_errors(upstream: FakeUpstream) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    refused = OpenAICompatibleProvider(f"http://127.0.0.1:{closed_port}/v1", KEY, timeout=FAST)
    assert provider_error(lambda: refused.complete(chat())).kind == "connection"
    refused.close()

    p = OpenAICompatibleProvider(upstream.url, KEY, timeout=FAST)
    upstream.respond(Reset())
    error = provider_error(lambda: p.complete(chat()))
    assert error.kind == "connection" and error.status is None
    p.close()


# --- stream ---------------------------------------------------------------------------


def test_stream_sends_include_usage_and_ends_with_the_real_usage(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(StreamReply(chunks=["Hello", ", wörld"], usage=(17, 4)))
    deltas, ends = drain(provider.stream(chat("Hi", max_tokens=32, temperature=0)))

    assert [d.text for d in deltas] == ["Hello", ", wörld"]
    # The running count is the documented estimate: ceil(UTF-8 bytes so far / 3).
    assert [d.completion_tokens for d in deltas] == [math.ceil(5 / 3), math.ceil(13 / 3)]
    assert ends == [StreamEnd(finish_reason="stop", prompt_tokens=17, completion_tokens=4)]
    sent = upstream.last.json
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["max_tokens"] == 32 and sent["temperature"] == 0
    assert upstream.last.headers["authorization"] == f"Bearer {KEY}"
    assert upstream.last.headers["accept"] == "text/event-stream"


def test_stream_yields_each_delta_as_it_arrives(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    # The fake holds the second chunk until the test has the first Delta: a provider
    # that buffered the body would never get it (and the fake resets the connection).
    gate = threading.Event()
    upstream.respond(StreamReply(chunks=["first", " second"], gates={1: gate}))
    slow = OpenAICompatibleProvider(upstream.url, KEY, timeout=3)
    events = opened(slow.stream(chat()))
    first = next(events)
    assert first == text("first", 2)
    gate.set()
    deltas, ends = drain(_prepend_opened(events))
    assert [d.text for d in deltas] == [" second"]
    assert len(ends) == 1
    slow.close()


def test_stream_usage_on_the_finish_chunk_and_length(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(
        StreamReply(
            chunks=["a", "b"],
            usage=(9, 8),
            finish_reason="length",
            usage_in_finish_chunk=True,
            comments=False,
        )
    )
    _, ends = drain(provider.stream(chat()))
    assert ends == [StreamEnd("length", 9, 8)]


def test_stream_without_usage_ends_with_the_estimate(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    request = chat(max_tokens=100)
    upstream.respond(StreamReply(chunks=["abc", "defg"], usage=None))
    deltas, ends = drain(provider.stream(request))
    assert [d.completion_tokens for d in deltas] == [1, 3]
    assert ends == [StreamEnd("stop", provider.prompt_tokens_upper_bound(request), 7 + 1)]


def test_stream_error_chunk_mid_stream(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(StreamReply(chunks=["one", "two", "three"], error_after=2))
    events = opened(provider.stream(chat()))
    assert [next(events), next(events)] == [text("one", 1), text("two", 2)]
    error = provider_error(lambda: next(events))
    assert (error.kind, error.status) == ("upstream_status", 502)
    assert error.message == "Provider disconnected unexpectedly"


def test_stream_connection_reset_mid_stream(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    gate = threading.Event()  # reset only once the test has the first delta
    upstream.respond(StreamReply(chunks=["one", "two"], gates={1: gate}, reset_after=1))
    events = opened(provider.stream(chat()))
    assert next(events) == text("one", 1)
    gate.set()
    assert provider_error(lambda: next(events)).kind == "connection"


def test_stream_that_ends_unfinished_is_a_connection_error(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(StreamReply(chunks=["one"], finish_reason=None, usage=None, done=False))
    assert provider_error(lambda: drain(provider.stream(chat()))).kind == "connection"


def test_a_slow_stream_is_fine_while_each_chunk_is_within_the_timeout(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    # 5 chunks 0.15 s apart: longer in total than the 0.5 s read timeout.
    upstream.respond(StreamReply(chunks=list("abcde"), interval=0.15))
    deltas, ends = drain(provider.stream(chat()))
    assert "".join(d.text for d in deltas) == "abcde" and len(ends) == 1

    upstream.respond(StreamReply(chunks=["a", "b"], interval=FAST + 0.5))
    events = opened(provider.stream(chat()))
    assert next(events) == text("a", 1)
    assert provider_error(lambda: next(events)).kind == "timeout"


def test_stream_bad_chunk_is_bad_response(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(RawReply(body=b"data: {oops\n\n", content_type="text/event-stream"))
    assert provider_error(lambda: drain(provider.stream(chat()))).kind == "bad_response"


def test_stream_answered_as_plain_json_still_streams(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(Reply(text="all at once", usage=(5, 3)))  # ignored stream=true
    deltas, ends = drain(provider.stream(chat()))
    assert deltas == [text("all at once", 3)]
    assert ends == [StreamEnd("stop", 5, 3)]


def test_closing_the_stream_drops_the_upstream_connection(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(StreamReply(chunks=["x"] * 100, interval=0.02))
    events = opened(provider.stream(chat()))
    next(events)
    events.close()  # what the engine's contextlib.closing does when its client leaves
    assert upstream.last.aborted.wait(3)


# --- prompt_tokens_upper_bound --------------------------------------------------------


def test_prompt_upper_bound_counts_bytes_per_message_and_options() -> None:
    p = OpenAICompatibleProvider("http://127.0.0.1:9/v1", None)
    try:
        text = "naïve 日本語"  # 6 + 1 + 9 bytes
        one = ChatRequest("m", [{"role": "user", "content": text}], 10)
        assert p.prompt_tokens_upper_bound(one) == (
            PER_REQUEST_OVERHEAD + PER_MESSAGE_OVERHEAD + len(b"user") + len(text.encode())
        )
        parts = ChatRequest(
            "m",
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": text},
                        {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                    ],
                }
            ],
            10,
        )
        assert p.prompt_tokens_upper_bound(parts) >= (
            p.prompt_tokens_upper_bound(one) + NON_TEXT_PART_TOKENS
        )
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
        with_tools = ChatRequest("m", one.messages, 10, {"tools": tools})
        assert (
            p.prompt_tokens_upper_bound(with_tools)
            > p.prompt_tokens_upper_bound(one) + len(json.dumps(tools)) // 2
        )
    finally:
        p.close()


def test_prompt_upper_bound_is_at_least_the_real_count(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    # Whatever a byte-level BPE makes of it, N bytes is at most N tokens.
    request = chat("x" * 1000)
    assert provider.prompt_tokens_upper_bound(request) >= 1000


# --- client ownership -----------------------------------------------------------------


def test_a_given_client_is_used_and_not_closed(upstream: FakeUpstream) -> None:
    seen: list[str] = []
    client = httpx.Client(event_hooks={"request": [lambda r: seen.append(str(r.url))]})
    p = OpenAICompatibleProvider(upstream.url, KEY, timeout=FAST, client=client)
    p.complete(chat())
    p.close()
    assert seen == [f"{upstream.url}/chat/completions"]
    assert not client.is_closed
    assert upstream.last.headers["authorization"] == f"Bearer {KEY}"
    client.close()


def test_close_closes_the_owned_client(upstream: FakeUpstream) -> None:
    p = OpenAICompatibleProvider(upstream.url, KEY)
    p.complete(chat())
    p.close()
    with pytest.raises(RuntimeError):  # httpx refuses requests on a closed client
        p.complete(chat())


# --- a faithful proxy -------------------------------------------------------------------

CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}


def test_tool_calls_logprobs_and_refusals_come_back_as_the_upstream_sent_them(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    logprobs = {"content": [{"token": "x", "logprob": -0.1, "top_logprobs": []}]}
    upstream.respond(
        Reply(text=None, usage=(9, 7), finish_reason="tool_calls", tool_calls=[CALL]),
        Reply(text="x", logprobs=logprobs, refusal="I cannot", extra={"system_fingerprint": "fp"}),
    )
    called = provider.complete(chat(tools=[{"type": "function"}]))
    assert called.finish_reason == "tool_calls"
    assert called.message["tool_calls"] == [CALL]
    assert upstream.last.json["tools"] == [{"type": "function"}]
    other = provider.complete(chat())
    assert other.logprobs == logprobs
    assert other.message["refusal"] == "I cannot"
    assert other.extra == {"system_fingerprint": "fp"}


def test_streamed_tool_call_deltas_are_passed_on_with_their_index(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(StreamReply(chunks=[], tool_calls=[CALL], finish_reason="tool_calls"))
    deltas, ends = drain(provider.stream(chat()))
    calls = [call for d in deltas for call in d.delta["tool_calls"]]
    assert calls[0] == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Paris"}'
    assert ends[0].finish_reason == "tool_calls"
    # The arguments are output the model wrote: they count for the running estimate.
    assert deltas[-1].completion_tokens == math.ceil((len("get_weather") + 17) / 3)


def test_the_output_limit_goes_out_in_the_field_the_caller_or_the_upstream_uses(
    upstream: FakeUpstream,
) -> None:
    sent = ChatRequest(
        model="m",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=20,
        limit_fields=("max_completion_tokens",),
    )
    none_sent = ChatRequest(model="m", messages=[{"role": "user", "content": "Hi"}], max_tokens=20)
    for base, request, expected in [
        (upstream.url, sent, {"max_completion_tokens": 20}),
        (upstream.url, none_sent, {"max_tokens": 20}),
    ]:
        p = OpenAICompatibleProvider(base, KEY, timeout=FAST)
        p.complete(request)
        p.close()
        limits = {k: v for k, v in upstream.last.json.items() if k.startswith("max_")}
        assert limits == expected
    # OpenAI's own API refuses max_tokens for its reasoning models.
    assert OpenAICompatibleProvider("https://api.openai.com/v1", KEY).limit_field == (
        "max_completion_tokens"
    )
    assert OpenAICompatibleProvider("https://openrouter.ai/api/v1", KEY).limit_field == (
        "max_tokens"
    )


def test_a_rate_limit_keeps_the_upstreams_retry_after(
    upstream: FakeUpstream, provider: OpenAICompatibleProvider
) -> None:
    upstream.respond(ErrorReply(status=429, headers={"Retry-After": "12"}))
    error = provider_error(lambda: provider.complete(chat()))
    assert (error.kind, error.retry_after) == ("upstream_rate_limited", "12")
