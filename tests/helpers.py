"""Small helpers the tests share: session tokens and grants made the way clients make them."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from joserfc import jwt
from joserfc.jwk import OctKey

from wattfare_demo.engine.sessions import AUDIENCE
from wattfare_demo.engine.tokens import parse_secret_key, session_signing_key

ORIGIN = "http://localhost:5000"


def mint_session(
    secret_key: str, origin: str = ORIGIN, ttl: int = 300, requests: int | None = 100, **claims: Any
) -> str:
    """A session JWT as an app's server mints it (the SDK's create_session does the same).

    It allows any grant the engine allows (`requests` 100, no `maxUsd`, no `model`) unless
    told otherwise; a claim given as None is left out. Each call is a new session (`jti`):
    a session creates one grant.
    """
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": parse_secret_key(secret_key).app_id,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "origin": origin,
        "requests": requests,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode({"alg": "HS256"}, payload, OctKey.import_key(session_signing_key(secret_key)))


def chat_body(text: str = "<h1>Hi</h1><p>there</p>", **extra: Any) -> dict[str, Any]:
    return {
        "model": "local/markdown",
        "messages": [{"role": "user", "content": f"Convert this document to markdown: {text}"}],
        **extra,
    }


def race(url: str, headers: dict[str, str], body: dict, n: int) -> Counter:
    return Counter(status for status, _ in race_each(url, [headers] * n, body))


def race_each(url: str, each: list[dict[str, str]], body: dict) -> list[tuple[int, dict]]:
    """One thread per headers in `each`, all calling at once; (status, JSON body) each.

    Each call is distinct (an identical call still running would count as its retry and
    wait for it): `user` is passed through, and costs no token on local/markdown."""
    barrier = threading.Barrier(len(each))

    def one(numbered: tuple[int, dict[str, str]]) -> tuple[int, dict]:
        i, headers = numbered
        distinct = {**body, "user": f"racer-{i}"}
        with httpx.Client(timeout=60) as client:
            barrier.wait()
            response = client.post(f"{url}/api/v1/chat/completions", headers=headers, json=distinct)
            return response.status_code, response.json()

    with ThreadPoolExecutor(len(each)) as pool:
        return list(pool.map(one, enumerate(each)))


def plant_stale_hold(secret_key: str, token: str, max_tokens: int = 10) -> None:
    """A worker that reserved a call on `token` and died: its hold is stale at once.
    Runs in the caller's app context."""
    from wattfare_demo.engine import grants
    from wattfare_demo.engine.pricing import DEFAULT_PRICES

    grants.reserve(
        secret_key.split("_")[2],
        token,
        model="local/markdown",
        price=DEFAULT_PRICES["local/markdown"],
        prompt_tokens=10,
        max_tokens=max_tokens,
        hold_ttl=-1,
    )
