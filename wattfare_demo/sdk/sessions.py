"""Session tokens: the short-lived JWT an app's server hands to the consent popup.

Minted locally, with no network call: HS256 with a key derived from the app's secret
key, HMAC-SHA256(secret_key, "wattfare-session-v1"), so the engine can verify it while
storing only the derived key, never the secret key itself. Claims: `iss` (the app id),
`aud`, `iat`, `exp`, `jti`, `origin` (the page that will ask for a grant), when the app
knows its user `sub`, and the question the app's server allows: `requests` (the most
requests the grant may have), `maxUsd` (the highest dollar cap it may have; absent: it may
have none) and `model` (the one model it may be spent on; absent: any). The engine refuses
a grant that asks for more, and a second grant from the same session.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from joserfc import jwt
from joserfc.jwk import OctKey

from ..origins import normalise_origin
from .errors import WattfareAuthError

AUDIENCE = "wattfare:grants"
MAX_TTL = 600  # the engine refuses sessions that live longer than 10 minutes
MAX_MODEL_LENGTH = 120  # the engine's limit on a model id
_KEY_INFO = b"wattfare-session-v1"


@dataclass(frozen=True)
class WattfareSession:
    token: str
    expires_at: int  # unix seconds


def app_id(secret_key: str) -> str:
    """The app id inside `sk_{mode}_{appId}_{secret}`; WattfareAuthError for anything else."""
    parts = secret_key.split("_")
    if len(parts) != 4 or parts[0] != "sk" or parts[1] not in ("test", "live") or not parts[2]:
        hint = " (that is the publishable key)" if secret_key.startswith("pk_") else ""
        raise WattfareAuthError(
            f"That is not a Wattfare secret key{hint}: it looks like sk_test_… or sk_live_….",
            code="invalid_secret_key",
        )
    return parts[2]


def signing_key(secret_key: str) -> bytes:
    return hmac.new(secret_key.encode(), _KEY_INFO, hashlib.sha256).digest()


def _origin(value: str) -> str:
    # The engine normalises with the same function, so any spelling of an allowed origin
    # (https://App.example.com, https://app.example.com:443) is that origin on both sides.
    origin = normalise_origin(value)
    if origin is None:
        raise ValueError(
            f"origin must be the page's origin, scheme://host[:port] "
            f"(e.g. https://app.example.com), not {value!r}."
        )
    return origin


def _requests(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"requests must be a whole number from 1 (the most requests the page may ask "
            f"for), not {value!r}."
        )
    return value


def _max_usd(value: Any) -> int | float | None:
    """A JSON number for the claim. Decimals become the float that prints the same digits
    (Decimal("0.5") -> 0.5), which the engine reads back as that decimal."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError(f"max_usd must be a number of dollars, or None, not {value!r}.")
    number = float(value) if isinstance(value, Decimal) else value
    if not math.isfinite(number) or number <= 0:
        raise ValueError(f"max_usd must be more than 0 dollars, not {value!r}.")
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return number


def _model(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_LENGTH:
        raise ValueError(
            f"model must be a model id of 1 to {MAX_MODEL_LENGTH} characters "
            f'(e.g. "openai/gpt-4o-mini"), or None for any model, not {value!r}.'
        )
    return value.strip()


def mint_session(
    secret_key: str,
    *,
    origin: str,
    requests: int,
    max_usd: int | float | Decimal | None = None,
    model: str | None = None,
    user_id: str | None = None,
    ttl: int = MAX_TTL,
) -> WattfareSession:
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be whole seconds from 1 to {MAX_TTL}.")
    if user_id is not None and (not isinstance(user_id, str) or not user_id):
        raise ValueError("user_id must be a non-empty string, or None for an anonymous visitor.")
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": app_id(secret_key),
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + ttl,
        "jti": uuid.uuid4().hex,
        "origin": _origin(origin),
        "requests": _requests(requests),
    }
    if (cap := _max_usd(max_usd)) is not None:
        claims["maxUsd"] = cap
    if (only := _model(model)) is not None:
        claims["model"] = only
    if user_id is not None:
        claims["sub"] = user_id
    token = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(signing_key(secret_key)))
    return WattfareSession(token=token, expires_at=claims["exp"])
