"""The openai package and LangChain's ChatOpenAI, as a developer points them at /api/v1.

Each client with its default settings (retries included): a plain call, a stream, tools
(plain and streamed), the 402 when the grant is used up, and a call that times out on the
client and is retried, which must use one request. The model is tests/fake_upstream.py's
`Model` behind the real engine on a real port.
"""

from __future__ import annotations

import json

import openai
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.compat.conftest import MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def openai_for(api_url, secret_key):
    def make(grant: str, **options) -> openai.OpenAI:
        return openai.OpenAI(
            api_key=secret_key,
            base_url=api_url,
            default_headers={"x-wattfare-grant": grant},
            **options,
        )

    return make


# --- openai: chat completions --------------------------------------------------------------


def test_openai_plain_stream_and_402(openai_for, make_grant, upstream):
    client = openai_for(make_grant(2))
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}]
    )
    assert raw.headers["x-wattfare-grant-remaining"] == "1"
    completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from the fake model"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.system_fingerprint == "fp_fake"  # passed through
    assert completion.usage.completion_tokens == 5
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from the fake model"
    )
    assert chunks[-1].usage.total_tokens == 17
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert refused.value.status_code == 402
    assert refused.value.body["reason"] == "exhausted"
    assert len(upstream.requests) == 2


def test_openai_tools_round_trip(openai_for, make_grant, remaining):
    grant = make_grant(3)
    client = openai_for(grant)
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 C"},
    ]
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "Tool said: Sunny, 21 C"
    assert remaining(grant) == 1


def test_openai_streamed_tool_calls_arrive_as_deltas(openai_for, make_grant):
    client = openai_for(make_grant(1))
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Weather?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    name, arguments, finish = "", "", None
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                assert call.index == 0
                name += call.function.name or ""
                arguments += call.function.arguments or ""
            finish = choice.finish_reason or finish
    assert (name, json.loads(arguments), finish) == ("get_weather", {"city": "Paris"}, "tool_calls")


def test_openai_logprobs_json_and_max_completion_tokens(openai_for, make_grant, upstream):
    client = openai_for(make_grant(3))
    with_logprobs = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        logprobs=True,
        top_logprobs=1,
        max_completion_tokens=50,
    )
    tokens = with_logprobs.choices[0].logprobs.content
    assert [t.token for t in tokens] == ["Hello", "from", "the", "fake", "model"]
    assert upstream.last.json["max_completion_tokens"] == 50  # as sent, not rewritten
    assert "max_tokens" not in upstream.last.json

    class City(BaseModel):
        name: str
        population: int

    parsed = client.chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "A city"}], response_format=City
    )
    assert parsed.choices[0].message.parsed == City(name="Paris", population=3)
    assert upstream.last.json["response_format"]["type"] == "json_schema"


def test_openai_timeout_and_retry_uses_one_request(openai_for, make_grant, upstream, remaining):
    grant = make_grant(3)
    client = openai_for(grant, timeout=0.5)  # default max_retries: 2
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Think hard [slow 0.9]"}]
    )
    assert completion.choices[0].message.content == "Hello from the fake model"
    assert len(upstream.requests) == 1  # the retries were answered with the first call
    assert remaining(grant) == 2


# --- openai: the Responses API ----------------------------------------------------------


def test_openai_responses_plain_stream_tools_and_402(openai_for, make_grant, upstream):
    client = openai_for(make_grant(3))
    response = client.responses.create(model=MODEL, input="Hi", instructions="Be brief.")
    assert response.output_text == "Hello from the fake model"
    assert response.status == "completed"
    assert response.usage.output_tokens == 5
    assert upstream.last.json["messages"][0] == {"role": "system", "content": "Be brief."}

    events = list(client.responses.create(model=MODEL, input="Hi", stream=True))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "Hello from the fake model"
    assert events[-1].type == "response.completed"

    tools = [{"type": "function", **WEATHER["function"]}]
    called = client.responses.create(model=MODEL, input="Weather in Paris?", tools=tools)
    [call] = [item for item in called.output if item.type == "function_call"]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})

    with pytest.raises(openai.APIStatusError) as refused:
        client.responses.create(model=MODEL, input="Hi")
    assert refused.value.status_code == 402


def test_openai_responses_tool_result_and_refusals(openai_for, make_grant):
    client = openai_for(make_grant(2))
    tools = [{"type": "function", **WEATHER["function"]}]
    answered = client.responses.create(
        model=MODEL,
        tools=tools,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Paris"}',
            },
            {"type": "function_call_output", "call_id": "call_1", "output": "Rain"},
        ],
    )
    assert answered.output_text == "Tool said: Rain"
    for refused in ({"store": True}, {"previous_response_id": "resp_123"}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model=MODEL, input="Hi", **refused)
        assert caught.value.body["param"] == next(iter(refused))


# --- what the engine refuses ------------------------------------------------------------


def test_the_local_model_refuses_tools_it_cannot_call(openai_for, make_grant, remaining):
    grant = make_grant(1)
    client = openai_for(grant)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="local/markdown", messages=[{"role": "user", "content": "Hi"}], tools=[WEATHER]
        )
    assert (caught.value.body["code"], caught.value.body["param"]) == (
        "unsupported_parameter",
        "tools",
    )
    assert remaining(grant) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [("store", True), ("service_tier", "priority"), ("models", ["a/b"]), ("modalities", ["audio"])],
)
def test_fields_that_change_who_pays_or_what_is_kept_are_refused(
    openai_for, make_grant, field, value
):
    client = openai_for(make_grant(1))
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], extra_body={field: value}
        )
    assert caught.value.body["param"] == field


def test_safe_values_are_accepted_and_not_sent_on(openai_for, make_grant, upstream):
    client = openai_for(make_grant(1))
    client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        store=False,
        service_tier="auto",
        metadata={"team": "docs"},
    )
    sent = upstream.last.json
    assert not {"store", "service_tier", "metadata"} & set(sent)


# --- LangChain --------------------------------------------------------------------------


@pytest.fixture
def chat_model(api_url, secret_key):
    def make(grant: str, **options) -> ChatOpenAI:
        return ChatOpenAI(
            model=MODEL,
            base_url=api_url,
            api_key=secret_key,
            default_headers={"x-wattfare-grant": grant},
            **options,
        )

    return make


def test_langchain_invoke_stream_and_402(chat_model, make_grant):
    llm = chat_model(make_grant(2))
    assert llm.invoke("Hi").content == "Hello from the fake model"
    assert "".join(chunk.content for chunk in llm.stream("Hi")) == "Hello from the fake model"
    with pytest.raises(openai.APIStatusError) as refused:
        llm.invoke("Hi")
    assert refused.value.status_code == 402


def test_langchain_tools_and_structured_output(chat_model, make_grant, remaining):
    grant = make_grant(3)

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return "Sunny"

    llm = chat_model(grant).bind_tools([get_weather])
    asked = llm.invoke([HumanMessage("Weather in Paris?")])
    [call] = asked.tool_calls
    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    answer = llm.invoke(
        [
            HumanMessage("Weather in Paris?"),
            asked,
            ToolMessage("Sunny", tool_call_id=call["id"]),
        ]
    )
    assert answer.content == "Tool said: Sunny"

    class City(BaseModel):
        name: str
        population: int

    city = chat_model(grant).with_structured_output(City).invoke("A city")
    assert city == City(name="Paris", population=3)
    assert remaining(grant) == 0


def test_langchain_timeout_and_retry_uses_one_request(chat_model, make_grant, upstream, remaining):
    grant = make_grant(3)
    llm = chat_model(grant, timeout=0.5)  # LangChain's default retries (openai's)
    assert llm.invoke("Think hard [slow 0.9]").content == "Hello from the fake model"
    assert len(upstream.requests) == 1
    assert remaining(grant) == 2
