"""Session tokens: the short-lived JWT an app's server hands to the consent popup.

Minted locally, with no network call: HS256 with a key derived from the app's secret
key, HMAC-SHA256(secret_key, "wattfare-session-v1"), so the engine can verify it while
storing only the derived key, never the secret key itself. Claims: `iss` (the app id),
`aud`, `iat`, `exp`, `jti`, `origin` (the page that will ask for a grant) and, when the
app knows its user, `sub`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from joserfc import jwt
from joserfc.jwk import OctKey

from .errors import WattfareAuthError

AUDIENCE = "wattfare:grants"
MAX_TTL = 600  # the engine refuses sessions that live longer than 10 minutes
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
    parts = urlsplit(value) if isinstance(value, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.netloc
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        raise ValueError(
            f"origin must be the page's origin, scheme://host[:port] "
            f"(e.g. https://app.example.com), not {value!r}."
        )
    return f"{parts.scheme}://{parts.netloc}"


def mint_session(
    secret_key: str, *, origin: str, user_id: str | None = None, ttl: int = MAX_TTL
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
    }
    if user_id is not None:
        claims["sub"] = user_id
    token = jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(signing_key(secret_key)))
    return WattfareSession(token=token, expires_at=claims["exp"])
