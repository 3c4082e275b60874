"""A retry is not a new call: Idempotency-Key, and the retries of clients that send none.

The rule (README, "What a call costs", says it to people). A call is the *same call
again* when it comes for the same app, grant, endpoint and body (JSON compared by value)
within REPLAY_TTL (30 minutes) of the first, and

1. it carries the first call's `Idempotency-Key`; or, with no key,
2. the first is still running, and began at least PARALLEL_SECONDS (10 s) before
   (identical calls made within moments are parallel calls, not retries) or this one
   says it is a retry (see 4):
   the retry waits for it (up to WATTFARE_RETRY_WAIT seconds) and then is decided by 3
   and 4; or
3. the first finished, but its caller had already hung up (a client timeout), so its
   answer could not be delivered: the answer waits for the retry; or
4. the call says it is a retry (`x-stainless-retry-count` >= 1, which the OpenAI SDKs
   send, and so LangChain, LiteLLM, pydantic-ai …) and the first is the latest call
   with that grant and body, and its answer was kept: every answer of a call with a
   key, and of a key-less call whose caller left, that ran SLOW_CALL_SECONDS or more, or
   that was a retry itself. (A fast answer delivered and then lost on the way, a
   connection reset, is not kept: only an Idempotency-Key, which the Python SDK always
   sends, covers that.)

The same call again gets the first call's answer (status, body, `x-wattfare-*` headers,
plus `Idempotent-Replayed: true`) and the grant is not used again. Anything else is a
new call: two identical calls made one after another, each answered, are two calls. A
call that charged nothing (a provider failure) is never replayed; its retry runs.

With a key, as before: the same key with another body or grant is 422
`idempotency_key_reused`; while the first still runs it is 409 `idempotency_key_in_use`
with `Retry-After` (the SDKs retry it). Streams are never replayed (their answer went out
as it was made): a keyed retry of a finished stream is 409 `idempotency_key_used`, and a
key-less identical stream waits for a running one to end and then runs.

What is kept, in `replays` (models.Replay), for REPLAY_TTL and then deleted by the sweep:
hashes of the key and of the request, and the answer sealed (sealing.py) under a key
derived from the grant token, the body and the Idempotency-Key, none of which the engine
stores. Racing calls with one new key are decided by the unique (app_id, key_hash)
constraint on a claim made *before* the reservation, in its own short transaction: a
loser never holds the grant's row lock while it waits, so no lock cycle can form.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from flask import Response, current_app, request
from sqlalchemy import BigInteger, bindparam, select
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from . import driver, grants
from .caller import caller_gone
from .clock import db_now
from .driver import Statement
from .errors import ApiError, invalid_request
from .models import Replay, Usage, table
from .sealing import seal, unseal

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Sent by the OpenAI SDKs (Python and Node) on each retry: 1, 2, …
RETRY_MARKER = "x-stainless-retry-count"
# How long a call is remembered, to recognise its retries. The sweep deletes older rows.
REPLAY_TTL = 30 * 60
# A key claimed this long ago with no reservation belongs to a worker that died.
CLAIM_TTL = 60
# An unmarked identical call counts as a retry of a running one only once that one has
# run this many seconds (by the database clock): a retry follows a client timeout,
# which no client sets shorter; parallel identical calls (a batch, a load test, a queue
# under load) come within moments of each other and run side by side.
PARALLEL_SECONDS = 10
# A key-less call's answer is kept only if a retry may come for it: its caller left, it
# ran this long (no client times out sooner), or it was itself a retry. A fast answer
# that was delivered is not kept: storing it would cost every call a write.
SLOW_CALL_SECONDS = 1.0
# Printable ASCII without spaces, e.g. UUIDs, ULIDs, hashes.
_KEY = re.compile(r"[\x21-\x7e]{1,255}")


def key_in_use() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_use",
        "A call with this Idempotency-Key is still running. Retry after it finishes to get "
        "its response.",
        headers={"Retry-After": "1"},
    )


def call_in_progress() -> ApiError:
    return ApiError(
        409,
        "call_in_progress",
        "An identical call on this grant is still running; this one counts as its retry. "
        "Retry in a moment to get its answer. Nothing more was charged.",
        headers={"Retry-After": "2"},
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
    return ApiError(
        409,
        "idempotency_key_used",
        "The streamed call with this Idempotency-Key already ran. Streams are not stored, so "
        "it cannot be replayed; send a new key to make a new call.",
    )


def _number(value: Decimal) -> int | float:
    # Bodies are parsed with Decimal floats: 1 and 1.0 are the same request.
    return int(value) if value == value.to_integral_value() else float(value)


def _canonical(**parts: Any) -> bytes:
    return json.dumps(
        parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_number
    ).encode()


def _sha256(*parts: bytes) -> str:
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def fingerprint(grant_token: str, body: dict[str, Any], endpoint: str = "chat") -> str:
    """The stored hash that recognises a request: its endpoint, grant and body."""
    return _sha256(b"request", _canonical(body=body, endpoint=endpoint, grant=grant_token))


# Every call runs these, so they are built once with bind parameters (as grants.py's
# are): building a statement per call costs more than running it.
_replays = table(Replay)
_usage = table(Usage)
_row = (
    select(
        _replays.c.id,
        _replays.c.usage_id,
        _replays.c.request_hash,
        _replays.c.stream,
        _replays.c.answer,
        _replays.c.delivered,
        _usage.c.status,
        _usage.c.grant_id,
        (_usage.c.hold_expires_at < db_now()).label("hold_expired"),
        (_replays.c.created_at <= db_now() - CLAIM_TTL).label("claim_stale"),
        (_replays.c.created_at <= db_now() - REPLAY_TTL).label("stale"),
        (_replays.c.created_at <= db_now() - PARALLEL_SECONDS).label("aged"),
    )
    .select_from(_replays.outerjoin(_usage, _usage.c.id == _replays.c.usage_id))
    .where(_replays.c.app_id == bindparam("p_app_id"))
)
_BY_KEY = Statement(_row.where(_replays.c.key_hash == bindparam("p_key_hash")))
_BY_ID = Statement(_row.where(_replays.c.id == bindparam("p_id")))
_LATEST = Statement(
    _row.where(
        _replays.c.key_hash.is_(None),
        _replays.c.request_hash == bindparam("p_request_hash"),
        _replays.c.created_at > db_now() - REPLAY_TTL,
    )
    .order_by(_replays.c.id.desc())
    .limit(1)
)
_record = _replays.insert().values(
    app_id=bindparam("p_app_id"),
    key_hash=bindparam("p_key_hash"),
    request_hash=bindparam("p_request_hash"),
    stream=bindparam("p_stream"),
    usage_id=bindparam("p_usage_id"),
    delivered=False,
    created_at=db_now(),
)
_CLAIM = Statement(_record.returning(_replays.c.id))
_LINK = Statement(
    _replays.update()
    .where(_replays.c.id == bindparam("p_id"))
    .values(usage_id=bindparam("p_usage_id"))
)
# By the record's primary key, which on_reserved keeps: one index probe fewer than by
# usage_id, on every call with an Idempotency-Key (the SDK sends one each time).
_KEEP = Statement(
    _replays.update()
    .where(_replays.c.id == bindparam("p_id"))
    .values(answer=bindparam("p_answer"), delivered=bindparam("p_delivered"))
)
_DELIVERED = Statement(
    _replays.update().where(_replays.c.id == bindparam("p_id")).values(delivered=True)
)
_FORGET_ROW = Statement(_replays.delete().where(_replays.c.id == bindparam("p_id")))
_EXPIRED = _replays.delete().where(
    _replays.c.created_at <= db_now() - bindparam("p_ttl", type_=BigInteger)
)


@dataclass
class Retry:
    """What recognises one call's retries; see the module docstring for the rule."""

    app_id: str
    key_hash: str | None  # None: the caller sent no Idempotency-Key
    request_hash: str
    secret: bytes  # seals the answer; never stored
    marked: bool  # the caller says this is a retry
    stream: bool
    wait: float  # seconds a retry waits for an identical call that is still running
    claim_id: int | None = None

    # --- before the reservation -----------------------------------------------------

    def earlier_answer(self) -> Response | None:
        """The answer to replay, or None to run the call (409/422 raised)."""
        if self.key_hash is not None:
            return self._keyed()
        return self._keyless()

    def _keyed(self) -> Response | None:
        for _ in range(3):
            try:
                self.claim_id = _CLAIM.run(
                    **self._values(p_key_hash=self.key_hash, p_usage_id=None)
                ).scalar_one()
                db.session.commit()
                return None  # ours: run the call
            except IntegrityError:
                db.session.rollback()
            row = _BY_KEY.run(p_app_id=self.app_id, p_key_hash=self.key_hash).first()
            if row is None or self._forget_if_done(row):
                continue  # the key is free again: claim it
            if row.request_hash != self.request_hash:
                raise key_reused()
            if row.status != "ok":
                raise key_in_use()  # claimed, or reserved and running
            if row.stream or row.answer is None:
                raise stream_key_used()
            return self._replay(row)
        raise key_in_use()

    def _keyless(self) -> Response | None:
        with driver.read():  # most calls are no retry: one read, and no transaction
            row = _LATEST.run(p_app_id=self.app_id, p_request_hash=self.request_hash).first()
        if row is None or self._forget_if_done(row):
            return None
        if row.status == "pending":
            if not (self.marked or row.aged):
                return None  # a parallel identical call, made at the same moment
            row = self._wait_for(row.id)
            if row is None:
                return None  # it ended charging nothing: run this one
        if row.status != "ok" or row.stream or row.answer is None:
            return None  # failed (charged nothing) or a stream: run it
        if not row.delivered or self.marked:
            return self._replay(row)
        return None  # answered already: a new call

    def _values(self, **more: Any) -> dict[str, Any]:
        return {
            "p_app_id": self.app_id,
            "p_key_hash": None,
            "p_request_hash": self.request_hash,
            "p_stream": self.stream,
            **more,
        }

    def _forget_if_done(self, row: Any) -> bool:
        """Delete a row that no longer stands for a call: it is older than REPLAY_TTL,
        its call charged nothing, its worker died holding it, or its claim never got a
        reservation. True if deleted."""
        status = row.status
        if status == "pending" and row.hold_expired:
            grants.release_stale(row.grant_id)  # the first call's worker died mid-call
            status = "expired"
        done = (
            row.stale
            or status in ("failed", "expired")
            or (row.usage_id is None and row.claim_stale)
        )
        if done:
            _FORGET_ROW.run(p_id=row.id)
            db.session.commit()
        return done

    def _wait_for(self, replay_id: int) -> Any:
        """The row once its call has ended, None if it ended charging nothing; 409
        `call_in_progress` if it still runs after `wait` seconds (or our own caller left
        meanwhile: nobody would read the answer)."""
        deadline = time.monotonic() + self.wait
        pause = 0.02
        while time.monotonic() < deadline and not caller_gone():
            # Another thread or worker is running the call: poll its ledger row. (A
            # notification would need a channel every backend has; this wait is rare and
            # bounded.)
            db.session.rollback()  # hold no connection (nor snapshot) while asleep
            time.sleep(pause)
            pause = min(pause * 2, 0.25)
            row = _BY_ID.run(p_app_id=self.app_id, p_id=replay_id).first()
            if row is None or self._forget_if_done(row):
                return None
            if row.status != "pending":
                return row
        raise call_in_progress()

    def _replay(self, row: Any) -> Response:
        plain = unseal(self.secret, row.answer)
        if plain is None:  # cannot happen with a matching request hash; never run twice
            raise stream_key_used()
        stored = json.loads(plain)
        if not row.delivered and not caller_gone():
            _DELIVERED.run(p_id=row.id)
            db.session.commit()
        headers = {**stored["headers"], REPLAYED_HEADER: "true"}
        return Response(
            stored["body"], status=stored["status"], mimetype=stored["mimetype"], headers=headers
        )

    # --- with the accounting ---------------------------------------------------------

    def on_reserved(self, usage_id: int) -> None:
        """In the reservation's transaction: tie the record to the call (and keep its id,
        by which keep() and forget() find it)."""
        if self.claim_id is not None:
            _LINK.run(p_id=self.claim_id, p_usage_id=usage_id)
        else:
            self.claim_id = _CLAIM.run(**self._values(p_usage_id=usage_id)).scalar_one()

    def wants_answer(self, *, delivered: bool, seconds: float) -> bool:
        """Whether a retry may come for this call's answer, so it is worth keeping."""
        return (
            self.key_hash is not None
            or not delivered
            or self.marked
            or seconds >= SLOW_CALL_SECONDS
        )

    def keep(
        self,
        *,
        status: int,
        headers: dict[str, str],
        body: bytes,
        mimetype: str,
        delivered: bool,
    ) -> None:
        """In the charge's transaction: the sealed answer, for a retry to replay."""
        envelope = json.dumps(
            {
                "status": status,
                "headers": headers,
                "body": body.decode(),
                "mimetype": mimetype,
            }
        ).encode()
        assert self.claim_id is not None, "keep() after on_reserved() only"
        _KEEP.run(p_id=self.claim_id, p_answer=seal(self.secret, envelope), p_delivered=delivered)

    def forget(self) -> None:
        """The call charged nothing (refused, or released): nothing to replay, and its
        key is free for the retry."""
        if self.claim_id is None:
            return  # refused before a record was claimed or made
        _FORGET_ROW.run(p_id=self.claim_id)
        db.session.commit()


def forget_expired() -> int:
    """Delete what was kept for replays older than REPLAY_TTL (a sweep step)."""
    rows = db.session.execute(_EXPIRED.returning(_replays.c.id), {"p_ttl": REPLAY_TTL}).all()
    db.session.commit()
    return len(rows)


def _marked() -> bool:
    value = request.headers.get(RETRY_MARKER, "")
    return value.isdigit() and int(value) >= 1


def from_request(
    app_id: str, grant_token: str, body: dict[str, Any], *, endpoint: str, stream: bool
) -> Retry:
    """The call's retry record; 400 when its Idempotency-Key is malformed."""
    key = request.headers.get(HEADER)
    if key is not None and not _KEY.fullmatch(key):
        raise invalid_request(
            HEADER, f"{HEADER} must be 1 to 255 printable ASCII characters, e.g. a UUID."
        )
    return Retry(
        app_id=app_id,
        key_hash=None if key is None else _sha256(b"key", app_id.encode(), key.encode()),
        request_hash=fingerprint(grant_token, body, endpoint),
        secret=_canonical(body=body, endpoint=endpoint, grant=grant_token, key=key),
        marked=_marked(),
        stream=stream,
        wait=float(current_app.config.get("WATTFARE_RETRY_WAIT", 30)),
    )


__all__ = [
    "HEADER",
    "REPLAYED_HEADER",
    "REPLAY_TTL",
    "RETRY_MARKER",
    "Retry",
    "fingerprint",
    "forget_expired",
    "from_request",
]
