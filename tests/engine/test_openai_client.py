"""The official `openai` package, pointed at the running engine, works on a grant."""

from __future__ import annotations

import openai
import pytest


@pytest.fixture
def openai_client(live_server, secret_key, make_grant):
    def make(grant: str) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=secret_key,
            base_url=f"{live_server.url}/api/v1",
            default_headers={"x-wattfare-grant": grant},
        )

    return make


def test_two_calls_on_a_two_request_grant_then_402(openai_client, make_grant):
    client = openai_client(make_grant(2))
    messages = [{"role": "user", "content": "Convert this document to markdown: <h1>Report</h1>"}]

    first = client.chat.completions.with_raw_response.create(
        model="local/markdown", messages=messages
    )
    assert first.headers["x-wattfare-grant-remaining"] == "1"
    completion = first.parse()
    assert completion.choices[0].message.content.startswith("# Report")
    assert completion.usage.completion_tokens > 0

    stream = client.chat.completions.create(
        model="local/markdown",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.startswith("# Report")
    assert chunks[-1].usage.total_tokens > 0

    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="local/markdown", messages=messages)
    assert caught.value.status_code == 402
    assert caught.value.body["code"] == "grant_invalid"
    assert caught.value.body["reason"] == "exhausted"


def test_a_bad_key_is_an_authentication_error(live_server, make_grant):
    client = openai.OpenAI(
        api_key="sk_test_0123456789abcdef_" + "0" * 48,
        base_url=f"{live_server.url}/api/v1",
        default_headers={"x-wattfare-grant": make_grant(1)},
        max_retries=0,
    )
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(
            model="local/markdown", messages=[{"role": "user", "content": "hi"}]
        )
