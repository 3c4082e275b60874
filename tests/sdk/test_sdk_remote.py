"""The SDK over the network (a live server on an ephemeral port), and `openai_client()`:
the official `openai` package on a grant, over the network and in-process.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.helpers import ORIGIN
from wattfare_demo.sdk import Wattfare, WattfareGrantError, to_wattfare_error

MODEL = "local/markdown"
PROMPT = "Convert this document to markdown: <h1>Report</h1><p>All good.</p>"
MESSAGES = [{"role": "user", "content": PROMPT}]


@pytest.fixture(autouse=True)
def no_engine_url(monkeypatch):
    monkeypatch.delenv("WATTFARE_API_URL", raising=False)


def test_remote_mode_by_base_url(live_server, secret_key, make_grant):
    with Wattfare(secret_key, base_url=live_server.url) as wf:
        assert wf.base_url == f"{live_server.url}/api/v1"
        grant = wf.grant(make_grant(3))
        assert grant.model(MODEL).generate_text(PROMPT).text.startswith("# Report")
        stream = grant.model(MODEL).stream_text(PROMPT)
        assert "".join(stream).startswith("# Report") and stream.remaining == 1
        assert grant.status().remaining == 1
        # A session minted by the SDK creates a grant over HTTP too.
        session = wf.create_session(origin=ORIGIN, requests=1)

    response = httpx.post(
        f"{live_server.url}/api/v1/grants",
        json={"requests": 1},
        headers={"Authorization": f"Bearer {session.token}"},
    )
    assert response.status_code == 200


def test_remote_mode_by_environment(live_server, secret_key, make_grant, monkeypatch):
    monkeypatch.setenv("WATTFARE_API_URL", live_server.url + "/")
    monkeypatch.setenv("WATTFARE_SECRET_KEY", secret_key)
    with Wattfare() as wf:
        assert wf.base_url == f"{live_server.url}/api/v1"
        assert wf.grant(make_grant(1)).model(MODEL).generate_text(PROMPT).remaining == 0


def test_openai_client_on_a_grant(live_server, secret_key, make_grant):
    wf = Wattfare(secret_key, base_url=live_server.url)
    with wf.grant(make_grant(2)).openai_client() as client:
        completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content.startswith("# Report")
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text.startswith("# Report")
        with pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    error = to_wattfare_error(caught.value)
    assert isinstance(error, WattfareGrantError)
    assert (error.code, error.reason, error.status) == ("grant_invalid", "exhausted", 402)


def test_openai_client_in_process(app, secret_key, make_grant):
    wf = Wattfare(secret_key, wsgi_app=app)
    with wf.grant(make_grant(1)).openai_client() as client:
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
        assert raw.headers["x-wattfare-grant-remaining"] == "0"
        assert raw.parse().choices[0].message.content.startswith("# Report")
        models = client.models.list()
        assert [m.id for m in models.data] == [MODEL]


def test_openai_client_options_pass_through(live_server, secret_key, make_grant):
    wf = Wattfare(secret_key, base_url=live_server.url)
    client = wf.grant(make_grant(1)).openai_client(
        max_retries=1, default_headers={"X-Title": "tests"}
    )
    assert client.max_retries == 1
    assert client.default_headers["X-Title"] == "tests"
    assert client.default_headers["x-wattfare-grant"].startswith("wfg_")
    client.close()
