"""The accounting: create a grant, then reserve → settle | release each call.

A call is handled like a card authorisation. `reserve` takes one request and a
worst-case cost hold in ONE conditional UPDATE whose WHERE clause is the whole rule
(not revoked, not expired by the database clock, a request left, the hold fits under
the cap, the model is the one granted), so concurrent calls (threads, workers, hosts)
can never take more than the user approved. `settle` turns the hold into the real cost;
`release` gives it back. Both first claim the ledger row (`status = 'pending'` → final)
so a call is settled or released exactly once, even if the stale-hold sweeper gets there
first.

The app's daily budget (the operator's backstop, `App.daily_budget_pusd`) is held the
same way, in the same transaction: see `_hold_budget`. The grant's rules come first, so
a call the budget refuses has been refused nothing by the grant, and reserves nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    String,
    bindparam,
    delete,
    func,
    literal_column,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from .clock import db_now
from .errors import ApiError, grant_invalid
from .models import App, AppSpend, Grant, SessionUse, Usage
from .pricing import Price
from .tokens import (
    grant_token_is_well_formed,
    new_grant_token,
    new_receipt_capability,
    sha256_hex,
)

log = logging.getLogger(__name__)

# How often `reserve` re-sizes a hold that lost a race for the remaining dollars.
_RESERVE_ATTEMPTS = 3
# The daily budget's window: the current hour of the database clock and the 24 before it.
BUDGET_WINDOW_HOURS = 24
# How long a used session id is remembered after its token's `exp` (the engine accepts a
# token up to 5 seconds late; the margin covers skew between its clock and the database's).
SESSION_USE_MARGIN = 60


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
    budget_hour: int | None = None  # the AppSpend row holding it; None: no app budget


@dataclass(frozen=True)
class NewGrant:
    token: str  # shown once: only its hash is stored
    expires_at: int
    requests: int
    receipt: str  # the receipt capability (view and revoke): shown once, stored hashed


def session_used() -> ApiError:
    return ApiError(
        409,
        "session_used",
        "This session token has already created its grant: a session creates one grant. "
        "Ask the app's server for a new session (wattfare.js does, for each requestGrant()).",
    )


def create_grant(
    app: App,
    *,
    origin: str,
    subject: str | None,
    requests: int,
    max_pusd: int | None,
    ttl: int,
    model: str | None = None,
    session: tuple[str, int] | None = None,
) -> NewGrant:
    """Create a grant; with `session` = (jti, expires_at), that session's one grant.

    The session id is recorded in the same transaction as the grant, by an INSERT the
    primary key decides: of two requests racing with one session (two workers, two
    hosts), one creates its grant and the other gets 409 `session_used`.
    """
    token = new_grant_token()
    receipt = new_receipt_capability()
    if session is not None:
        jti, expires_at = session
        try:
            db.session.execute(
                SessionUse.__table__.insert().values(app_id=app.id, jti=jti, expires_at=expires_at)
            )
        except IntegrityError:
            db.session.rollback()
            raise session_used() from None
    row = db.session.execute(
        Grant.__table__.insert()
        .values(
            app_id=app.id,
            token_hash=sha256_hex(token),
            receipt_hash=sha256_hex(receipt),
            origin=origin,
            subject=subject,
            model=model,
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
    return NewGrant(token=token, expires_at=row.expires_at, requests=requests, receipt=receipt)


def forget_used_sessions() -> int:
    """Forget the ids of session tokens that have expired (they are refused anyway)."""
    result = db.session.execute(
        delete(SessionUse).where(SessionUse.expires_at < db_now() - SESSION_USE_MARGIN)
    )
    db.session.commit()
    return result.rowcount or 0


_grants = Grant.__table__
_usage = Usage.__table__
_apps = App.__table__
_spend = AppSpend.__table__

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
# The app's budget rides along (a primary-key lookup, no lock): most apps have none, and
# then reserving costs no statement more than it did before budgets existed.
_APP_BUDGET = (
    select(_apps.c.daily_budget_pusd).where(_apps.c.id == _grants.c.app_id).scalar_subquery()
)
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
        or_(_grants.c.model.is_(None), _grants.c.model == bindparam("p_model")),
    )
    .values(reserved=_grants.c.reserved + 1, held_pusd=_grants.c.held_pusd + _hold)
    .returning(*_BALANCE, _APP_BUDGET.label("daily_budget_pusd"))
)
# Serialises one budgeted app's reservations: a row lock on its apps row, held until the
# reservation commits. NO KEY UPDATE, so inserting grants (whose foreign key takes a KEY
# SHARE lock on the same row) is not blocked by it. SQLite has no row locks and needs
# none: the grant UPDATE before it has taken the database's one write lock. The hour is
# read here, once, so the window and the hold agree on it.
_LOCK_BUDGET = (
    select(_apps.c.daily_budget_pusd, (db_now() // 3600).label("hour"))
    .where(_apps.c.id == bindparam("p_app_id"), _apps.c.daily_budget_pusd.is_not(None))
    .with_for_update(key_share=True)
)
_budget_hour = bindparam("p_hour", type_=BigInteger)
_SPEND_TO_BUDGET = (
    _spend.update()
    .where(_spend.c.app_id == bindparam("p_app_id"), _spend.c.hour == _budget_hour)
    .values(
        spent_pusd=_spend.c.spent_pusd + bindparam("p_cost", type_=BigInteger),
        held_pusd=_spend.c.held_pusd - _hold,
    )
)


# The conditional statement that takes a hold on the app's budget, or takes nothing:
# INSERT … SELECT … WHERE <the window's spending and holds + this hold fit the budget>
# ON CONFLICT (app_id, hour) DO UPDATE. One statement creates or grows the current hour's
# row, or (RETURNING no row) refuses. The sum reads at most 25 rows on the primary key.
# It runs under _LOCK_BUDGET, after the lock was granted, so on PostgreSQL its snapshot
# sees every reservation of this app that committed before it; settles and releases
# running beside it only ever lower the sum. Written as SQL text, the same for SQLite and
# PostgreSQL: SQLAlchemy's dialect upsert constructs cannot be cached, and compiling one
# on every call cost more than the statement (bench/profile_call.py --daily-budget).
_HOLD_IN_BUDGET = text(
    """
    INSERT INTO app_spend (app_id, hour, spent_pusd, held_pusd)
    SELECT :p_app_id, :p_hour, 0, :p_hold
    WHERE (
        SELECT COALESCE(SUM(spent_pusd + held_pusd), 0) FROM app_spend
        WHERE app_id = :p_app_id AND hour >= :p_hour - :p_window
    ) + :p_hold <= :p_budget
    ON CONFLICT (app_id, hour) DO UPDATE SET held_pusd = app_spend.held_pusd + excluded.held_pusd
    RETURNING hour
    """
).bindparams(
    # Typed, so PostgreSQL reads the same parameter as the same type in both places.
    bindparam("p_app_id", type_=String(32)),
    bindparam("p_hour", type_=BigInteger),
    bindparam("p_hold", type_=BigInteger),
    bindparam("p_budget", type_=BigInteger),
    bindparam("p_window", value=BUDGET_WINDOW_HOURS, type_=BigInteger),
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
        budget_hour=bindparam("p_budget_hour", type_=BigInteger),
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
    .returning(_usage.c.id, _usage.c.app_id, _usage.c.budget_hour)
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
    swept_for_budget = False
    attempts = 0
    while attempts < _RESERVE_ATTEMPTS:
        attempts += 1
        hold = price.cost_pusd(prompt_tokens, tokens)
        row = _execute(
            _RESERVE, p_token_hash=token_hash, p_app_id=app_id, p_hold=hold, p_model=model
        ).one_or_none()
        if row is not None:
            budget_hour = None
            if row.daily_budget_pusd is not None:
                fits, budget_hour = _hold_budget(app_id, hold)
                if not fits:
                    db.session.rollback()  # the grant's reservation goes with it
                    # Holds of calls that died mid-call count against the budget until
                    # they are released: release them now rather than refuse for them.
                    # All stale holds, not this app's: that sweep reads only the few
                    # pending rows (ix_usage_pending_hold), whatever the ledger's size.
                    if not swept_for_budget and release_stale():
                        swept_for_budget = True
                        attempts -= 1  # the same hold again, on a lighter budget
                        continue
                    raise grant_invalid("app_budget")
            usage_id = _execute(
                _OPEN_USAGE,
                p_grant_id=row.id,
                p_app_id=app_id,
                p_model=model,
                p_stream=stream,
                p_hold=hold,
                p_hold_ttl=hold_ttl,
                p_budget_hour=budget_hour,
            ).scalar_one()
            if on_reserved is not None:
                on_reserved(usage_id)
            db.session.commit()
            return Reservation(usage_id, row.id, hold, tokens, _balance(row), budget_hour)
        db.session.rollback()
        # Refused: find out why, and whether a smaller hold would fit.
        grant = _why_refused(app_id, token_hash, model)
        if grant.max_pusd is None:
            continue  # lost a race with a settle or release: try again as it was
        affordable = price.affordable_completion_tokens(
            grant.max_pusd - grant.spent_pusd - grant.held_pusd, prompt_tokens
        )
        if affordable < 1:
            raise grant_invalid("over_cap")
        tokens = min(tokens, affordable)
    raise grant_invalid("over_cap")


def _hold_budget(app_id: str, hold: int) -> tuple[bool, int | None]:
    """Hold `hold` on the app's daily budget: (True, the hour it went to), or (False, None)
    when the day's spending and holds leave no room for it.

    Inside reserve's transaction: the lock, then one conditional statement. No sum is read
    into Python and written back, so two workers can never both fit in what is left.
    """
    lock = _execute(_LOCK_BUDGET, p_app_id=app_id).one_or_none()
    if lock is None:
        return True, None  # the budget was turned off a moment ago: nothing to hold
    held = _execute(
        _HOLD_IN_BUDGET,
        p_app_id=app_id,
        p_hour=lock.hour,
        p_hold=hold,
        p_budget=lock.daily_budget_pusd,
    ).one_or_none()
    return (False, None) if held is None else (True, held.hour)


def _why_refused(app_id: str, token_hash: str, model: str) -> Grant:
    """Raise the 402 that explains a refused reservation, unless only the size was wrong.

    Returns the grant when its dollar cap is the only obstacle, so the caller can
    retry with a hold clamped to what is left.
    """
    grant = _grant_by_hash(app_id, token_hash)
    if grant.revoked_at is not None:
        raise grant_invalid("revoked")
    if grant.model is not None and grant.model != model:
        error = grant_invalid("model_not_granted")
        error.message = (
            f"This grant was approved for {grant.model!r} only, not {model!r}. Call that "
            "model, or ask the user to approve a grant for this one."
        )
        raise error
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
    if claimed.budget_hour is not None:
        _execute(
            _SPEND_TO_BUDGET,
            p_app_id=claimed.app_id,
            p_hour=claimed.budget_hour,
            p_hold=reservation.hold_pusd,
            p_cost=cost,
        )
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
        .returning(Usage.app_id, Usage.budget_hour),
        execution_options={"synchronize_session": False},
    ).one_or_none()
    if claimed is not None:
        db.session.execute(
            update(Grant)
            .where(Grant.id == reservation.grant_id)
            .values(reserved=Grant.reserved - 1, held_pusd=Grant.held_pusd - reservation.hold_pusd),
            execution_options={"synchronize_session": False},
        )
        if claimed.budget_hour is not None:
            _execute(
                _SPEND_TO_BUDGET,
                p_app_id=claimed.app_id,
                p_hour=claimed.budget_hour,
                p_hold=reservation.hold_pusd,
                p_cost=0,
            )
    db.session.commit()


def release_stale(grant_id: int | None = None) -> int:
    """Release holds nobody settled before they expired (a worker crashed mid-call).

    Runs when a reservation is refused on a grant with calls in flight (that grant's), or
    by its app's daily budget, and from `flask wattfare sweep` (all of them). Returns how
    many holds were released.
    """
    # 'pending' as a literal, not a bound parameter: SQLite uses the partial index
    # ix_usage_pending_hold only for a WHERE that names its exact term.
    where = [Usage.status == literal_column("'pending'"), Usage.hold_expires_at < db_now()]
    if grant_id is not None:
        where.append(Usage.grant_id == grant_id)
    rows = db.session.execute(
        update(Usage)
        .where(*where)
        .values(status="expired", error="hold_expired", finished_at=db_now())
        .returning(Usage.grant_id, Usage.hold_pusd, Usage.app_id, Usage.budget_hour),
        execution_options={"synchronize_session": False},
    ).all()
    # Grants first, then the budget rows: the order every other transaction takes them in.
    for row in rows:
        db.session.execute(
            update(Grant)
            .where(Grant.id == row.grant_id)
            .values(reserved=Grant.reserved - 1, held_pusd=Grant.held_pusd - row.hold_pusd),
            execution_options={"synchronize_session": False},
        )
    for row in rows:
        if row.budget_hour is not None:
            _execute(
                _SPEND_TO_BUDGET,
                p_app_id=row.app_id,
                p_hour=row.budget_hour,
                p_hold=row.hold_pusd,
                p_cost=0,
            )
    db.session.commit()
    if rows:
        log.warning("released %d stale hold(s)", len(rows))
    return len(rows)


def forget_old_spending() -> int:
    """Drop AppSpend rows that have left every budget window and hold nothing."""
    result = db.session.execute(
        delete(AppSpend).where(
            AppSpend.hour < db_now() // 3600 - BUDGET_WINDOW_HOURS, AppSpend.held_pusd == 0
        )
    )
    db.session.commit()
    return result.rowcount or 0


def budget_window_spend(app_id: str) -> tuple[int, int]:
    """(spent, held) in pico-dollars over the app's current budget window."""
    hour = db_now() // 3600
    row = db.session.execute(
        select(
            func.coalesce(func.sum(AppSpend.spent_pusd), 0),
            func.coalesce(func.sum(AppSpend.held_pusd), 0),
        ).where(AppSpend.app_id == app_id, AppSpend.hour >= hour - BUDGET_WINDOW_HOURS)
    ).one()
    return int(row[0]), int(row[1])


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
    "BUDGET_WINDOW_HOURS",
    "GrantBalance",
    "NewGrant",
    "Reservation",
    "budget_window_spend",
    "create_grant",
    "current_balance",
    "find_grant",
    "forget_old_spending",
    "forget_used_sessions",
    "grant_status",
    "release",
    "release_stale",
    "reserve",
    "revoke",
    "session_used",
    "settle",
]
