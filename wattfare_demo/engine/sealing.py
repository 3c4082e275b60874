"""Sealing what is kept for a replay: readable only with what the caller sends again.

    box = seal(secret, plaintext)        # str, safe for a Text column
    plaintext = unseal(secret, box)      # None if the secret is not the one it was sealed with

`secret` is what a retry of the call sends again (its grant token, body and
Idempotency-Key, see idempotency.py); the engine never stores it. The key is derived from
it with HKDF-SHA256 and the box is AES-256-GCM (the `cryptography` package), with a
random 96-bit nonce, so a row in the database, the WAL or a backup says nothing about the
answer it holds.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"wattfare-replay-answer-v1"
_NONCE_BYTES = 12


def _key(secret: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret)


def seal(secret: bytes, plaintext: bytes) -> str:
    nonce = os.urandom(_NONCE_BYTES)
    sealed = AESGCM(_key(secret)).encrypt(nonce, plaintext, None)
    return base64.urlsafe_b64encode(nonce + sealed).decode("ascii")


def unseal(secret: bytes, box: str) -> bytes | None:
    try:
        raw = base64.urlsafe_b64decode(box.encode("ascii"))
        return AESGCM(_key(secret)).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], None)
    except (InvalidTag, ValueError):
        return None


__all__ = ["seal", "unseal"]
