"""The accounting: create a grant, then reserve → settle | release each call.

A call is handled like a card authorisation. `reserve` takes one request and a
worst-case cost hold in ONE conditional UPDATE whose WHERE clause is the whole rule
(not revoked, not expired by the database clock, a request left, the hold fits under
the cap), so concurrent calls (threads, workers, hosts) can never take more than the
user approved. `settle` turns the hold into the real cost; `release` gives it back.
Both first claim the ledger row (`status = 'pending'` → final) so a call is settled or
released exactly once, even if the stale-hold sweeper gets there first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import BigInteger, bindparam, or_, select, update

from ..extensions import db
from .clock import db_now
from .errors import grant_invalid
from .models import App, Grant, Usage
from .pricing import Price
from .tokens import grant_token_is_well_formed, new_grant_token, sha256_hex

log = logging.getLogger(__name__)

# How often `reserve` re-sizes a hold that lost a race for the remaining dollars.
_RESERVE_ATTEMPTS = 3


@dataclass(frozen=True)
class GrantBalance:
    """What is left of a grant, counting calls in flight as spent."""

    remaining: int
    remaining_pusd: int | None  # None: no dollar cap

    @classmethod
    def of(cls, requests: int, used: int, reserved: int, cap: int | None, spent: int, held: int):
        return cls(requests - used - reserved, None if cap is None else cap - spent - held)


@dataclass(frozen=True)
class Reservation:
    usage_id: int
    grant_id: int
    hold_pusd: int
    max_tokens: int  # what the provider may generate: the request's, clamped to the cap
    balance: GrantBalance  # as it will be if this call succeeds and spends its whole hold


@dataclass(frozen=True)
class NewGrant:
    token: str  # shown once: only its hash is stored
    expires_at: int
    requests: int


def create_grant(
    app: App, *, origin: str, subject: str | None, requests: int, max_pusd: int | None, ttl: int
) -> NewGrant:
    token = new_grant_token()
    row = db.session.execute(
        Grant.__table__.insert()
        .values(
            app_id=app.id,
            token_hash=sha256_hex(token),
            origin=origin,
            subject=subject,
            requests=requests,
            used=0,
            reserved=0,
            max_pusd=max_pusd,
            spent_pusd=0,
            held_pusd=0,
            expires_at=db_now() + ttl,
        )
        .returning(Grant.__table__.c.expires_at)
    ).one()
    db.session.commit()
    return NewGrant(token=token, expires_at=row.expires_at, requests=requests)


_grants = Grant.__table__
_usage = Usage.__table__

# The hot path's statements are built once, here, with bind parameters. Building a
# statement per call and letting SQLAlchemy derive its cache key each time cost more
# than running it (about 0.3 ms a statement on SQLite); a module-level statement
# derives its key once. They are Core statements on the tables, executed with
# `_execute`, which skips the ORM's bulk-UPDATE machinery (no objects are loaded, so
# there is nothing in the session to synchronise). The SQL is exactly what the ORM
# built before: one conditional UPDATE … RETURNING reserves.
_BALANCE = (
    _grants.c.id,
    _grants.c.requests,
    _grants.c.used,
    _grants.c.reserved,
    _grants.c.max_pusd,
    _grants.c.spent_pusd,
    _grants.c.held_pusd,
)
_hold = bindparam("p_hold", type_=BigInteger)
_RESERVE = (
    _grants.update()
    .where(
        _grants.c.token_hash == bindparam("p_token_hash"),
        _grants.c.app_id == bindparam("p_app_id"),
        _grants.c.revoked_at.is_(None),
        _grants.c.expires_at > db_now(),
        _grants.c.used + _grants.c.reserved < _grants.c.requests,
        or_(
            _grants.c.max_pusd.is_(None),
            _grants.c.spent_pusd + _grants.c.held_pusd + _hold <= _grants.c.max_pusd,
        ),
    )
    .values(reserved=_grants.c.reserved + 1, held_pusd=_grants.c.held_pusd + _hold)
    .returning(*_BALANCE)
)
_OPEN_USAGE = (
    _usage.insert()
    .values(
        grant_id=bindparam("p_grant_id"),
        app_id=bindparam("p_app_id"),
        model=bindparam("p_model"),
        status="pending",
        stream=bindparam("p_stream"),
        prompt_tokens=0,
        completion_tokens=0,
        hold_pusd=_hold,
        cost_pusd=0,
        hold_expires_at=db_now() + bindparam("p_hold_ttl", type_=BigInteger),
    )
    .returning(_usage.c.id)
)
_CLAIM_SETTLE = (
    _usage.update()
    .where(_usage.c.id == bindparam("p_usage_id"), _usage.c.status == "pending")
    .values(
        status="ok",
        prompt_tokens=bindparam("p_prompt_tokens"),
        completion_tokens=bindparam("p_completion_tokens"),
        cost_pusd=bindparam("p_cost", type_=BigInteger),
        error=bindparam("p_error"),
        finished_at=db_now(),
        duration_ms=bindparam("p_duration_ms"),
    )
    .returning(_usage.c.id)
)
_CHARGE = (
    _grants.update()
    .where(_grants.c.id == bindparam("p_grant_id"))
    .values(
        reserved=_grants.c.reserved - 1,
        used=_grants.c.used + 1,
        held_pusd=_grants.c.held_pusd - _hold,
        spent_pusd=_grants.c.spent_pusd + bindparam("p_cost", type_=BigInteger),
    )
    .returning(*_BALANCE)
)


def _execute(statement, **params):
    """Run a prebuilt Core statement in the session's transaction."""
    return db.session.execute(statement, params)


def _returning_balance():
    return (
        Grant.id,
        Grant.requests,
        Grant.used,
        Grant.reserved,
        Grant.max_pusd,
        Grant.spent_pusd,
        Grant.held_pusd,
    )


def _balance(row) -> GrantBalance:
    return GrantBalance.of(
        row.requests, row.used, row.reserved, row.max_pusd, row.spent_pusd, row.held_pusd
    )


def reserve(
    app_id: str,
    token: str,
    *,
    model: str,
    price: Price,
    prompt_tokens: int,
    max_tokens: int,
    hold_ttl: int,
    stream: bool = False,
    on_reserved: Callable[[int], None] | None = None,
) -> Reservation:
    """Reserve one request and the worst-case cost of the call, or raise 402.

    `on_reserved(usage_id)` runs in the reservation's transaction, before it commits:
    the metering records there what it needs to recognise a retry of this call
    (idempotency.py), so the record and the reservation exist together or not at all.
    """
    if not grant_token_is_well_formed(token):
        raise grant_invalid("unknown")
    token_hash = sha256_hex(token)
    tokens = max_tokens
    for _ in range(_RESERVE_ATTEMPTS):
        hold = price.cost_pusd(prompt_tokens, tokens)
        row = _execute(
            _RESERVE, p_token_hash=token_hash, p_app_id=app_id, p_hold=hold
        ).one_or_none()
        if row is not None:
            usage_id = _execute(
                _OPEN_USAGE,
                p_grant_id=row.id,
                p_app_id=app_id,
                p_model=model,
                p_stream=stream,
                p_hold=hold,
                p_hold_ttl=hold_ttl,
            ).scalar_one()
            if on_reserved is not None:
                on_reserved(usage_id)
            db.session.commit()
            return Reservation(usage_id, row.id, hold, tokens, _balance(row))
        db.session.rollback()
        # Refused: find out why, and whether a smaller hold would fit.
        grant = _why_refused(app_id, token_hash)
        if grant.max_pusd is None:
            continue  # lost a race with a settle or release: try again as it was
        affordable = price.affordable_completion_tokens(
            grant.max_pusd - grant.spent_pusd - grant.held_pusd, prompt_tokens
        )
        if affordable < 1:
            raise grant_invalid("over_cap")
        tokens = min(tokens, affordable)
    raise grant_invalid("over_cap")


def _why_refused(app_id: str, token_hash: str) -> Grant:
    """Raise the 402 that explains a refused reservation, unless only the size was wrong.

    Returns the grant when its dollar cap is the only obstacle, so the caller can
    retry with a hold clamped to what is left.
    """
    grant = _grant_by_hash(app_id, token_hash)
    if grant.revoked_at is not None:
        raise grant_invalid("revoked")
    if grant.reserved and release_stale(grant.id):
        db.session.refresh(grant)
    now = db.session.scalar(select(db_now()))
    if grant.expires_at <= now:
        raise grant_invalid("expired")
    if grant.used + grant.reserved >= grant.requests:
        raise grant_invalid("exhausted")
    return grant


def settle(
    reservation: Reservation,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    price: Price,
    duration_ms: int,
    error: str | None = None,
    on_settled: Callable[[GrantBalance], None] | None = None,
) -> GrantBalance:
    """Charge a successful call: one request and its real cost, never above its hold.

    `on_settled(balance)` runs in the charge's transaction, before it commits (the
    metering keeps the sealed answer for a retry there); not when nothing was charged.
    """
    cost = min(price.cost_pusd(prompt_tokens, completion_tokens), reservation.hold_pusd)
    claimed = _execute(
        _CLAIM_SETTLE,
        p_usage_id=reservation.usage_id,
        p_prompt_tokens=prompt_tokens,
        p_completion_tokens=completion_tokens,
        p_cost=cost,
        p_error=error,
        p_duration_ms=duration_ms,
    ).one_or_none()
    if claimed is None:
        # The sweeper released this hold (the call outlived WATTFARE_HOLD_TTL): the
        # request and the money went back to the grant, so nothing is charged now.
        db.session.rollback()
        log.warning("usage %s settled after its hold expired; not charged", reservation.usage_id)
        return current_balance(reservation.grant_id)
    row = _execute(
        _CHARGE, p_grant_id=reservation.grant_id, p_hold=reservation.hold_pusd, p_cost=cost
    ).one()
    balance = _balance(row)
    if on_settled is not None:
        on_settled(balance)
    db.session.commit()
    return balance


def release(reservation: Reservation, *, error: str, duration_ms: int) -> None:
    """Give back the request and the hold of a call that failed: it costs nothing."""
    claimed = db.session.execute(
        update(Usage)
        .where(Usage.id == reservation.usage_id, Usage.status == "pending")
        .values(status="failed", error=error[:40], finished_at=db_now(), duration_ms=duration_ms)
        .returning(Usage.id),
        execution_options={"synchronize_session": False},
    ).one_or_none()
    if claimed is not None:
        db.session.execute(
            update(Grant)
            .where(Grant.id == reservation.grant_id)
            .values(reserved=Grant.reserved - 1, held_pusd=Grant.held_pusd - reservation.hold_pusd),
            execution_options={"synchronize_session": False},
        )
    db.session.commit()


def release_stale(grant_id: int | None = None) -> int:
    """Release holds nobody settled before they expired (a worker crashed mid-call).

    Runs when a reservation is refused on a grant with calls in flight, and from
    `flask wattfare sweep`. Returns how many holds were released.
    """
    where = [Usage.status == "pending", Usage.hold_expires_at < db_now()]
    if grant_id is not None:
        where.append(Usage.grant_id == grant_id)
    rows = db.session.execute(
        update(Usage)
        .where(*where)
        .values(status="expired", error="hold_expired", finished_at=db_now())
        .returning(Usage.grant_id, Usage.hold_pusd),
        execution_options={"synchronize_session": False},
    ).all()
    for row in rows:
        db.session.execute(
            update(Grant)
            .where(Grant.id == row.grant_id)
            .values(reserved=Grant.reserved - 1, held_pusd=Grant.held_pusd - row.hold_pusd),
            execution_options={"synchronize_session": False},
        )
    db.session.commit()
    if rows:
        log.warning("released %d stale hold(s)", len(rows))
    return len(rows)


def current_balance(grant_id: int) -> GrantBalance:
    row = db.session.execute(select(*_returning_balance()).where(Grant.id == grant_id)).one()
    return _balance(row)


def find_grant(app_id: str, token: str) -> Grant:
    """The grant a token names for this app, or 402 unknown."""
    if not grant_token_is_well_formed(token):
        raise grant_invalid("unknown")
    return _grant_by_hash(app_id, sha256_hex(token))


def _grant_by_hash(app_id: str, token_hash: str) -> Grant:
    grant = db.session.scalar(select(Grant).where(Grant.token_hash == token_hash))
    if grant is None or grant.app_id != app_id:
        raise grant_invalid("unknown")  # another app's grant is as good as unknown
    return grant


def grant_status(grant: Grant) -> str:
    """active | exhausted | over_cap | expired | revoked, by the database clock."""
    if grant.revoked_at is not None:
        return "revoked"
    if grant.expires_at <= db.session.scalar(select(db_now())):
        return "expired"
    if grant.used >= grant.requests:
        return "exhausted"
    if grant.max_pusd is not None and grant.spent_pusd >= grant.max_pusd:
        return "over_cap"
    return "active"


def revoke(grant: Grant) -> None:
    db.session.execute(
        update(Grant)
        .where(Grant.id == grant.id, Grant.revoked_at.is_(None))
        .values(revoked_at=db_now()),
        execution_options={"synchronize_session": False},
    )
    db.session.commit()


__all__ = [
    "GrantBalance",
    "NewGrant",
    "Reservation",
    "create_grant",
    "current_balance",
    "find_grant",
    "grant_status",
    "release",
    "release_stale",
    "reserve",
    "revoke",
    "settle",
]
