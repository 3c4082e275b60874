"""`to_wattfare_error` on each family: ours, httpx's, the `openai` package's, and others.

The errors come from real calls (the live engine, a closed port) wherever one can
produce them; the status table is checked on httpx responses built in the test.
"""

from __future__ import annotations

import socket

import httpx
import openai
import pytest

from wattfare_demo.sdk import (
    Wattfare,
    WattfareAuthError,
    WattfareConflictError,
    WattfareConnectionError,
    WattfareError,
    WattfareGrantError,
    WattfareInvalidRequestError,
    WattfareRateLimitError,
    WattfareTimeoutError,
    WattfareUpstreamError,
    to_wattfare_error,
)

MODEL = "local/markdown"
MESSAGES = [{"role": "user", "content": "Convert this document to markdown: <h1>Hi</h1>"}]
LONG = [{"role": "user", "content": "Convert: <p>" + "word " * 200 + "</p>"}]


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def chat_url(live_server) -> str:
    return f"{live_server.url}/api/v1/chat/completions"


def test_ours_are_returned_as_they_are():
    error = WattfareGrantError("used up", reason="exhausted", status=402)
    assert to_wattfare_error(error) is error


@pytest.mark.parametrize("exc", [ValueError("x"), KeyError("k"), KeyboardInterrupt()])
def test_anything_else_is_none(exc):
    assert to_wattfare_error(exc) is None


def test_httpx_status_error(chat_url, api_headers, make_grant):
    grant = make_grant(1)
    headers = api_headers(grant)
    assert httpx.post(chat_url, headers=headers, json={"model": MODEL, "messages": MESSAGES})
    response = httpx.post(chat_url, headers=headers, json={"model": MODEL, "messages": MESSAGES})
    with pytest.raises(httpx.HTTPStatusError) as caught:
        response.raise_for_status()
    error = to_wattfare_error(caught.value)
    assert isinstance(error, WattfareGrantError)
    assert (error.status, error.code, error.reason) == (402, "grant_invalid", "exhausted")
    assert error.message.startswith("The grant's requests are used up")


def test_httpx_errors_from_elsewhere_are_none(live_server, closed_port):
    response = httpx.get(f"{live_server.url}/api/v1/nowhere")
    with pytest.raises(httpx.HTTPStatusError) as caught:
        response.raise_for_status()
    assert to_wattfare_error(caught.value) is None  # not a Wattfare call: no key, no grant
    with pytest.raises(httpx.ConnectError) as refused:
        httpx.get(f"http://127.0.0.1:{closed_port}/")
    assert to_wattfare_error(refused.value) is None


def test_httpx_connection_error(closed_port, api_headers, make_grant):
    with pytest.raises(httpx.ConnectError) as caught:
        httpx.post(
            f"http://127.0.0.1:{closed_port}/api/v1/chat/completions",
            headers=api_headers(make_grant(1)),
            json={},
        )
    error = to_wattfare_error(caught.value)
    assert isinstance(error, WattfareConnectionError)
    assert (error.code, error.status) == ("connection_error", None)


def test_openai_status_errors(live_server, secret_key, make_grant):
    wf = Wattfare(secret_key, base_url=live_server.url)
    with wf.grant(make_grant(1)).openai_client() as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=0)
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.APIStatusError) as used:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = to_wattfare_error(bad.value)
    assert isinstance(error, WattfareInvalidRequestError)
    assert (error.status, error.param) == (400, "max_tokens")
    assert isinstance(to_wattfare_error(used.value), WattfareGrantError)

    wrong_key = Wattfare("sk_test_0123456789abcdef_" + "0" * 48, base_url=live_server.url)
    client = wrong_key.grant(make_grant(1)).openai_client()
    with client, pytest.raises(openai.AuthenticationError) as auth:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = to_wattfare_error(auth.value)
    assert isinstance(error, WattfareAuthError)
    assert (error.status, error.code) == (401, "invalid_api_key")


def test_openai_stream_error_event(live_server, secret_key, make_grant):
    """The engine's over_cap event ends the stream; openai raises a bare APIError."""
    wf = Wattfare(secret_key, base_url=live_server.url)
    with wf.grant(make_grant(1)).openai_client() as client:
        probe = client.chat.completions.create(model=MODEL, messages=LONG, max_tokens=1)
    cap_usd = (probe.usage.prompt_tokens + 2 * 9) / 1_000_000
    with wf.grant(make_grant(2, max_usd=cap_usd)).openai_client() as client:
        stream = client.chat.completions.create(model=MODEL, messages=LONG, stream=True)
        with pytest.raises(openai.APIError) as caught:
            list(stream)
    error = to_wattfare_error(caught.value)
    assert isinstance(error, WattfareGrantError)
    assert (error.reason, error.status) == ("over_cap", None)


def test_openai_connection_error(closed_port, secret_key, make_grant):
    wf = Wattfare(secret_key, base_url=f"http://127.0.0.1:{closed_port}")
    client = wf.grant(make_grant(1)).openai_client()
    with client, pytest.raises(openai.APIConnectionError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert isinstance(to_wattfare_error(caught.value), WattfareConnectionError)


def test_openai_errors_from_another_api_are_none(closed_port):
    client = openai.OpenAI(
        api_key="sk-not-wattfare", base_url=f"http://127.0.0.1:{closed_port}/v1", max_retries=0
    )
    with pytest.raises(openai.APIConnectionError) as caught:
        client.models.list()
    assert to_wattfare_error(caught.value) is None


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, WattfareInvalidRequestError),
        (401, WattfareAuthError),
        (402, WattfareGrantError),
        (403, WattfareAuthError),
        (404, WattfareInvalidRequestError),
        (408, WattfareTimeoutError),
        (409, WattfareConflictError),
        (422, WattfareInvalidRequestError),
        (429, WattfareRateLimitError),
        (500, WattfareUpstreamError),
        (502, WattfareUpstreamError),
        (504, WattfareUpstreamError),
    ],
)
def test_each_status_has_its_class(status, cls):
    request = httpx.Request(
        "POST", "https://engine.example/api/v1/chat/completions", headers={"x-wattfare-grant": "g"}
    )
    response = httpx.Response(
        status,
        json={"error": {"code": f"code_{status}", "type": "t", "message": "m", "param": "p"}},
        headers={"Retry-After": "5", "x-request-id": "req-1"},
        request=request,
    )
    error = to_wattfare_error(httpx.HTTPStatusError("x", request=request, response=response))
    assert type(error) is cls
    assert (error.status, error.code, error.message, error.request_id) == (
        status,
        f"code_{status}",
        "m",
        "req-1",
    )
    assert error.param == "p"
    if cls is WattfareRateLimitError:
        assert error.retry_after == 5.0


def test_an_error_page_that_is_not_json():
    request = httpx.Request(
        "GET", "https://engine.example/api/v1/grant", headers={"x-wattfare-grant": "g"}
    )
    response = httpx.Response(503, text="<html>Service Unavailable</html>", request=request)
    error = to_wattfare_error(httpx.HTTPStatusError("x", request=request, response=response))
    assert isinstance(error, WattfareUpstreamError) and isinstance(error, WattfareError)
    assert (error.code, error.status) == ("http_503", 503)
    assert "503" in error.message
