"""`Idempotency-Key` on POST /api/v1/chat/completions: a retried call never runs twice.

Per app and key, for KEY_TTL (24 hours) from the first call:

- A new key runs the call. Its ledger row (`usage`) keeps the key, a fingerprint of the
  request and, settled in the same UPDATE as the charge, the response.
- The same key and the same request replays the stored response (status, body and the
  `x-wattfare-*` headers, plus `Idempotent-Replayed: true`); the grant is not used again.
- The same key with another request (body or grant) is 422 `idempotency_key_reused`.
- The same key while the first call still runs is 409 `idempotency_key_in_use`. Two
  calls racing with a new key are decided by the unique (app_id, idempotency_key)
  constraint, not by a read-then-write: the loser's ledger insert fails, its reservation
  is rolled back with it, and it gets the 409.
- A call that charged nothing (released after a provider failure, or a hold that expired)
  frees its key, so a retry after a 5xx runs again. Keys older than 24 hours are freed.
- Streams are not stored, so a key on a stream only guards against running it twice: while
  it runs the same key is 409 `idempotency_key_in_use`, afterwards 409
  `idempotency_key_used` (unless it charged nothing, which frees the key as above).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask import Response, request
from sqlalchemy import Row, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from . import grants
from .clock import db_now
from .errors import ApiError, invalid_request
from .models import Usage

HEADER = "Idempotency-Key"
KEY_TTL = 24 * 3600
REPLAYED_HEADER = "Idempotent-Replayed"
# Printable ASCII without spaces, and what the column holds: UUIDs, ULIDs, hashes, …
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def _conflict(code: str, message: str) -> ApiError:
    return ApiError(409, code, message)


def key_in_use() -> ApiError:
    return _conflict(
        "idempotency_key_in_use",
        "A call with this Idempotency-Key is still running. Retry after it finishes to get "
        "its response.",
    )


def key_reused() -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was used for a different request (body or grant). Send a new "
        "key for a new request.",
        param=HEADER,
    )


def stream_key_used() -> ApiError:
    return _conflict(
        "idempotency_key_used",
        "The streamed call with this Idempotency-Key already ran. Streams are not stored, so "
        "it cannot be replayed; send a new key to make a new call.",
    )


def _number(value: Decimal) -> int | float:
    # Bodies are parsed with Decimal floats: 1 and 1.0 are the same request.
    return int(value) if value == value.to_integral_value() else float(value)


def fingerprint(grant_token: str, body: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the grant and the request body."""
    canonical = json.dumps(
        {"body": body, "grant": grant_token},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
        default=_number,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Idempotency:
    """The Idempotency-Key of one chat call; `key` is None when the caller sent none."""

    app_id: str
    key: str | None
    fingerprint: str | None

    def replay(self) -> Response | None:
        """The stored response for this key, or None to run the call; 409/422 raised."""
        if self.key is None:
            return None
        row = self._locked_row()
        if row is not None and row.status == "pending" and row.hold_expired:
            # The first call died mid-call (its hold outlived WATTFARE_HOLD_TTL): release
            # it now rather than answer 409 until a sweep happens to run.
            grants.release_stale(row.grant_id)
            row = self._locked_row()
        if row is not None and (row.stale or row.status in ("failed", "expired")):
            self._free(row.id)
            row = self._locked_row()
        if row is None:
            return None  # run the call; the lock is held until its reservation commits
        if row.request_fingerprint != self.fingerprint:
            raise key_reused()
        if row.status == "pending":
            raise key_in_use()
        if row.stream:
            raise stream_key_used()
        stored = json.loads(row.response_body)
        # headers is null only between settle and `remember` (or if the worker died
        # there): the body is what matters, so replay it without the balance headers.
        headers = {**(stored["headers"] or {}), REPLAYED_HEADER: "true"}
        return Response(
            stored["body"], status=stored["status"], mimetype="application/json", headers=headers
        )

    @contextmanager
    def claim(self) -> Iterator[None]:
        """Around `grants.reserve`: a key taken by a racing call becomes 409 (or 422)."""
        try:
            yield
        except IntegrityError:
            db.session.rollback()  # the reservation goes with the failed insert
            row = self._row() if self.key is not None else None
            if row is None:
                raise  # not our constraint: a real bug
            if row.request_fingerprint != self.fingerprint:
                raise key_reused() from None
            raise key_in_use() from None

    def stored(self, response: Response) -> str | None:
        """What `grants.settle` keeps with the charge: the answer, so it can be replayed."""
        if self.key is None:
            return None
        return _envelope(response, headers=None)

    def remember(self, usage_id: int, response: Response) -> None:
        """Add the balance headers, known only after settling, to the stored response."""
        if self.key is None:
            return
        wattfare_headers = {
            name: value
            for name, value in response.headers.items()
            if name.lower().startswith("x-wattfare-")
        }
        db.session.execute(
            update(Usage)
            .where(Usage.id == usage_id)
            .values(response_body=_envelope(response, headers=wattfare_headers)),
            execution_options={"synchronize_session": False},
        )
        db.session.commit()

    def _locked_row(self) -> Row[Any] | None:
        """The key's row, read under a lock on the key that lasts until the next commit.

        On PostgreSQL, calls racing with one new key queue on a transaction-scoped
        advisory lock here, and the reservation (`grants.reserve`, which commits) is made
        before the lock is released, so the next in line sees it and answers 409 without
        touching the grant. Without the lock, a loser would insert the key while holding
        the grant's row lock and wait on the winner's ledger row, just as the winner's
        settle (ledger row, then grant) waits on the grant: a deadlock. SQLite runs one
        writer at a time, so no lock is needed there; the unique constraint (`claim`)
        remains the guarantee on both.
        """
        if db.session.get_bind().dialect.name == "postgresql":
            digest = hashlib.sha256(f"{self.app_id}\0{self.key}".encode()).digest()
            lock_id = int.from_bytes(digest[:8], "big", signed=True)
            db.session.execute(select(func.pg_advisory_xact_lock(lock_id)))
        return self._row()

    def _row(self) -> Row[Any] | None:
        return db.session.execute(
            select(
                Usage.id,
                Usage.grant_id,
                Usage.status,
                Usage.stream,
                Usage.request_fingerprint,
                Usage.response_body,
                (Usage.started_at <= db_now() - KEY_TTL).label("stale"),
                (Usage.hold_expires_at < db_now()).label("hold_expired"),
            ).where(Usage.app_id == self.app_id, Usage.idempotency_key == self.key)
        ).one_or_none()

    def _free(self, usage_id: int) -> None:
        # Conditional, so a call that settles meanwhile keeps its key; the ledger row
        # itself stays (it is the record of what was charged).
        db.session.execute(
            update(Usage)
            .where(
                Usage.id == usage_id,
                or_(
                    Usage.status.in_(("failed", "expired")),
                    Usage.started_at <= db_now() - KEY_TTL,
                ),
            )
            .values(idempotency_key=None, response_body=None),
            execution_options={"synchronize_session": False},
        )
        db.session.commit()


def forget_expired_keys() -> int:
    """Drop keys older than KEY_TTL and the answers stored for them.

    Past 24 hours a key may be used again and its answer is never replayed, so keeping
    the model's output would only keep visitors' documents around. The ledger rows stay.
    Run by `flask wattfare sweep`; returns how many keys were forgotten.
    """
    rows = db.session.execute(
        update(Usage)
        .where(Usage.idempotency_key.is_not(None), Usage.started_at <= db_now() - KEY_TTL)
        .values(idempotency_key=None, response_body=None)
        .returning(Usage.id),
        execution_options={"synchronize_session": False},
    ).all()
    db.session.commit()
    return len(rows)


def _envelope(response: Response, *, headers: dict[str, str] | None) -> str:
    return json.dumps(
        {
            "status": response.status_code,
            "headers": headers,
            "body": response.get_data(as_text=True),
        }
    )


def from_request(app_id: str, grant_token: str, body: dict[str, Any]) -> Idempotency:
    """The call's Idempotency-Key header, checked; 400 when it is malformed."""
    key = request.headers.get(HEADER)
    if key is None:
        return Idempotency(app_id, None, None)
    if not _KEY.fullmatch(key):
        raise invalid_request(
            HEADER, f"{HEADER} must be 1 to 255 printable ASCII characters, e.g. a UUID."
        )
    return Idempotency(app_id, key, fingerprint(grant_token, body))


__all__ = [
    "HEADER",
    "KEY_TTL",
    "REPLAYED_HEADER",
    "Idempotency",
    "fingerprint",
    "forget_expired_keys",
    "from_request",
]
