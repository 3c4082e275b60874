"""Small helpers the tests share: session tokens and grants made the way clients make them."""

from __future__ import annotations

import time
import uuid
from typing import Any

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
