"""Key and token formats, and how they are hashed and checked.

- publishable key  `pk_{mode}_{appId}`                 (public, lives in the browser)
- secret key       `sk_{mode}_{appId}_{secret}`        (server only; stored as SHA-256)
- grant token      `wfg_{30 base62 chars}{6 base62 checksum}` (178 random bits; stored
  as SHA-256). The CRC32 checksum lets us reject a mistyped or truncated token without
  a database lookup and lets secret scanners recognise a real one.
- receipt capability `wfr_{30 base62 chars}{6 base62 checksum}` (178 random bits;
  stored as SHA-256): the visitor's link to a grant's receipt page. It can view and
  revoke the grant, never spend it. Its own prefix and its own column keep the two
  apart: a grant token is no receipt capability, and a receipt capability is refused
  wherever a grant token is asked for.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MODES = ("test", "live")
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_APP_ID = re.compile(r"^[a-z0-9]{16}$")
_GRANT = re.compile(r"^wfg_([0-9A-Za-z]{30})([0-9A-Za-z]{6})$")
_RECEIPT = re.compile(r"^wfr_([0-9A-Za-z]{30})([0-9A-Za-z]{6})$")
SESSION_KEY_INFO = b"wattfare-session-v1"


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), 6)


# --- apps and keys -----------------------------------------------------------------


@dataclass(frozen=True)
class SecretKey:
    mode: str
    app_id: str
    raw: str


def new_app_id() -> str:
    return secrets.token_hex(8)


def new_secret_key(mode: str, app_id: str) -> str:
    # token_hex, not token_urlsafe: the secret must not contain "_", the separator.
    return f"sk_{mode}_{app_id}_{secrets.token_hex(24)}"


def parse_publishable_key(value: str) -> tuple[str, str] | None:
    """(mode, app id) of a well-formed publishable key, else None."""
    parts = value.split("_") if isinstance(value, str) else []
    if len(parts) == 3 and parts[0] == "pk" and parts[1] in MODES and _APP_ID.match(parts[2]):
        return parts[1], parts[2]
    return None


def parse_secret_key(value: str) -> SecretKey | None:
    parts = value.split("_") if isinstance(value, str) else []
    if (
        len(parts) == 4
        and parts[0] == "sk"
        and parts[1] in MODES
        and _APP_ID.match(parts[2])
        and len(parts[3]) >= 32
    ):
        return SecretKey(mode=parts[1], app_id=parts[2], raw=value)
    return None


def session_signing_key(secret_key: str) -> bytes:
    """The HMAC key for an app's session JWTs, derived from its secret key.

    The SDK derives the same key to mint sessions; deriving it (instead of signing with
    the secret key itself) means the engine never needs to keep the secret key.
    """
    return hmac.new(secret_key.encode(), SESSION_KEY_INFO, hashlib.sha256).digest()


def _box_key(app_secret: str) -> bytes:
    return hashlib.sha256(b"wattfare-key-box:" + app_secret.encode()).digest()


def seal(value: bytes, app_secret: str) -> str:
    """Encrypt `value` under the Flask SECRET_KEY (AES-256-GCM), for storage."""
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_box_key(app_secret)).encrypt(nonce, value, None)
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(box: str, app_secret: str) -> bytes | None:
    """The value sealed by `seal`, or None if SECRET_KEY changed or the box is damaged."""
    try:
        raw = base64.urlsafe_b64decode(box.encode())
        return AESGCM(_box_key(app_secret)).decrypt(raw[:12], raw[12:], None)
    except Exception:  # InvalidTag, bad base64: both mean "cannot open"
        return None


# --- grant tokens --------------------------------------------------------------------


def new_grant_token() -> str:
    body = _base62(secrets.randbits(178), 30)
    return f"wfg_{body}{_checksum(body)}"


def grant_token_is_well_formed(value: str) -> bool:
    match = _GRANT.match(value) if isinstance(value, str) else None
    return match is not None and hmac.compare_digest(_checksum(match.group(1)), match.group(2))


# --- receipt capabilities ----------------------------------------------------------------


def new_receipt_capability() -> str:
    body = _base62(secrets.randbits(178), 30)
    return f"wfr_{body}{_checksum(body)}"


def receipt_capability_is_well_formed(value: str) -> bool:
    match = _RECEIPT.match(value) if isinstance(value, str) else None
    return match is not None and hmac.compare_digest(_checksum(match.group(1)), match.group(2))
