"""The engine on a real port, in front of a fake model that follows requests
(tests/fake_upstream.py's `Model`: tool calls, JSON, logprobs, slow replies), for the
compatibility tests with real client packages."""

from __future__ import annotations

from typing import Any

import pytest

from tests.fake_upstream import FAKE_MODEL, Model

# The engine waits this long for the fake model between bytes; the "slow" cases of the
# tests stay under it (a client timeout) or go over it (the engine's own 504).
UPSTREAM_TIMEOUT = 2.0


@pytest.fixture
def app_config(app_config: dict[str, Any], upstream_config: dict[str, Any]) -> dict[str, Any]:
    return {**app_config, **upstream_config, "WATTFARE_UPSTREAM_TIMEOUT": UPSTREAM_TIMEOUT}


@pytest.fixture
def model(upstream):
    """The fake model behind the engine, answering every call."""
    upstream.default = Model()
    return upstream.default


@pytest.fixture
def api_url(live_server, model) -> str:
    return f"{live_server.url}/api/v1"


@pytest.fixture
def remaining(client, api_headers):
    """remaining(grant) -> the grant's requests left, from GET /api/v1/grant."""

    def read(grant: str) -> int:
        return client.get("/api/v1/grant", headers=api_headers(grant)).get_json()["remaining"]

    return read


MODEL = FAKE_MODEL
