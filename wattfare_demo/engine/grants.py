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
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Integer,
    String,
    and_,
    bindparam,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from . import driver
from .clock import db_now
from .driver import Statement
from .errors import ApiError, grant_invalid
from .models import App, AppSpend, Grant, SessionUse, Usage, table
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
    def of(
        cls, requests: int, used: int, reserved: int, cap: int | None, spent: int, held: int
    ) -> GrantBalance:
        return cls(requests - used - reserved, None if cap is None else cap - spent - held)


@dataclass(frozen=True)
class Reservation:
    usage_id: int
    grant_id: int
    app_id: str
    hold_pusd: int
    max_tokens: int  # what the provider may generate: the request's, clamped to the cap
    balance: GrantBalance  # as it will be if this call succeeds and spends its whole hold
    # The AppSpend row (app_id, budget_hour) holding it; None: no app budget. Settle and
    # release move the hold by these, on both backends.
    budget_hour: int | None = None


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
                table(SessionUse).insert().values(app_id=app.id, jti=jti, expires_at=expires_at)
            )
        except IntegrityError:
            db.session.rollback()
            raise session_used() from None
    row = db.session.execute(
        _grants.insert()
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
        .returning(_grants.c.expires_at)
    ).one()
    db.session.commit()
    return NewGrant(token=token, expires_at=row.expires_at, requests=requests, receipt=receipt)


def forget_used_sessions() -> int:
    """Forget the ids of session tokens that have expired (they are refused anyway)."""
    result = _FORGET_SESSIONS.run()
    db.session.commit()
    return result.rowcount or 0


_grants = table(Grant)
_usage = table(Usage)
_apps = table(App)
_spend = table(AppSpend)
_session_uses = table(SessionUse)

# The accounting's statements are built once, here, as Core statements on the tables
# with bind parameters, and run as `driver.Statement`s: compiled once per dialect, then
# executed on the session's connection with no per-call SQLAlchemy work (driver.py says
# what that saves). The parts they are built from have a leading underscore and a
# lower-case name; the functions below run only the `Statement`s. The rule stays in one
# statement: one conditional UPDATE … RETURNING reserves (on PostgreSQL the same UPDATE,
# as a CTE, also opens the ledger row, in one round trip).
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
_app_id = bindparam("p_app_id", type_=String(32))
_model = bindparam("p_model", type_=String(200))
_stream = bindparam("p_stream", type_=Boolean)
_hold_ttl = bindparam("p_hold_ttl", type_=BigInteger)
_budget_hour = bindparam("p_budget_hour", type_=BigInteger)
_cost = bindparam("p_cost", type_=BigInteger)
# The app's budget rides along (a primary-key lookup, no lock): most apps have none, and
# then reserving costs no statement more than it did before budgets existed. By the bound
# app id (the WHERE below makes it the grant's): correlated with grants.app_id in a
# RETURNING clause, SQLite's plan scans apps.
_app_budget = select(_apps.c.daily_budget_pusd).where(_apps.c.id == _app_id).scalar_subquery()
_reserve = (
    _grants.update()
    .where(
        _grants.c.token_hash == bindparam("p_token_hash"),
        _grants.c.app_id == _app_id,
        _grants.c.revoked_at.is_(None),
        _grants.c.expires_at > db_now(),
        _grants.c.used + _grants.c.reserved < _grants.c.requests,
        or_(
            _grants.c.max_pusd.is_(None),
            _grants.c.spent_pusd + _grants.c.held_pusd + _hold <= _grants.c.max_pusd,
        ),
        or_(_grants.c.model.is_(None), _grants.c.model == _model),
    )
    .values(reserved=_grants.c.reserved + 1, held_pusd=_grants.c.held_pusd + _hold)
    .returning(*_BALANCE, _app_budget.label("daily_budget_pusd"))
)
_RESERVE = Statement(_reserve)
# The ledger row of a reservation: what settle or release will claim.
_usage_values = {
    "grant_id": bindparam("p_grant_id", type_=Integer),
    "app_id": _app_id,
    "model": _model,
    "status": literal("pending", String(10)),
    "stream": _stream,
    "prompt_tokens": literal(0, Integer),
    "completion_tokens": literal(0, Integer),
    "hold_pusd": _hold,
    "cost_pusd": literal(0, BigInteger),
    "hold_expires_at": db_now() + _hold_ttl,
    "budget_hour": _budget_hour,
}
_OPEN_USAGE = Statement(_usage.insert().values(_usage_values).returning(_usage.c.id))
# PostgreSQL: the reservation and its ledger row in ONE statement, one round trip. The
# UPDATE is the same conditional statement as _RESERVE, the single source of truth; the
# INSERT reads its RETURNING, so it adds a row only when the grant allowed the call, and
# only for an app without a daily budget (a budgeted app's hold must first fit the
# budget: reserve() then opens the row with _OPEN_USAGE, as on SQLite, whose DML cannot
# be a CTE). No row back: refused, nothing written.
_reserved = _reserve.cte("reserved")
_opened = (
    _usage.insert()
    .from_select(
        list(_usage_values),
        select(
            _reserved.c.id,
            *[value for name, value in _usage_values.items() if name != "grant_id"],
        ).where(_reserved.c.daily_budget_pusd.is_(None)),
    )
    .returning(_usage.c.id)
    .cte("opened")
)
_RESERVE_AND_OPEN = Statement(
    select(*_reserved.c, _opened.c.id.label("usage_id")).select_from(
        _reserved.outerjoin(_opened, true())
    )
)
# Serialises one budgeted app's reservations: a row lock on its apps row, held until the
# reservation commits. NO KEY UPDATE, so inserting grants (whose foreign key takes a KEY
# SHARE lock on the same row) is not blocked by it. SQLite has no row locks and needs
# none: the grant UPDATE before it has taken the database's one write lock. The hour is
# read here, once, so the window and the hold agree on it.
_LOCK_BUDGET = Statement(
    select(_apps.c.daily_budget_pusd, (db_now() // 3600).label("hour"))
    .where(_apps.c.id == _app_id, _apps.c.daily_budget_pusd.is_not(None))
    .with_for_update(key_share=True)
)
_SPEND_TO_BUDGET = Statement(
    _spend.update()
    .where(_spend.c.app_id == _app_id, _spend.c.hour == _budget_hour)
    .values(spent_pusd=_spend.c.spent_pusd + _cost, held_pusd=_spend.c.held_pusd - _hold)
)


# The conditional statement that takes a hold on the app's budget, or takes nothing:
# INSERT … SELECT … WHERE <the window's spending and holds + this hold fit the budget>
# ON CONFLICT (app_id, hour) DO UPDATE. One statement creates or grows the current hour's
# row, or (RETURNING no row) refuses. The sum reads at most 25 rows on the primary key.
# It runs under _LOCK_BUDGET, after the lock was granted, so on PostgreSQL its snapshot
# sees every reservation of this app that committed before it; settles and releases
# running beside it only ever lower the sum. Written as SQL text, the same for SQLite and
# PostgreSQL (SQLAlchemy's dialect upsert constructs have no cache key).
_HOLD_IN_BUDGET = Statement(
    text(
        """
    INSERT INTO app_spend (app_id, hour, spent_pusd, held_pusd)
    SELECT :p_app_id, :p_budget_hour, 0, :p_hold
    WHERE (
        SELECT COALESCE(SUM(spent_pusd + held_pusd), 0) FROM app_spend
        WHERE app_id = :p_app_id AND hour >= :p_budget_hour - :p_window
    ) + :p_hold <= :p_budget
    ON CONFLICT (app_id, hour) DO UPDATE SET held_pusd = app_spend.held_pusd + excluded.held_pusd
    RETURNING hour
    """
    ).bindparams(
        # Typed, so PostgreSQL reads the same parameter as the same type in both places.
        _app_id,
        _budget_hour,
        _hold,
        bindparam("p_budget", type_=BigInteger),
        bindparam("p_window", value=BUDGET_WINDOW_HOURS, type_=BigInteger),
    )
)
_claim_settle = (
    _usage.update()
    .where(_usage.c.id == bindparam("p_usage_id"), _usage.c.status == "pending")
    .values(
        status="ok",
        prompt_tokens=bindparam("p_prompt_tokens"),
        completion_tokens=bindparam("p_completion_tokens"),
        cost_pusd=_cost,
        error=bindparam("p_error"),
        finished_at=db_now(),
        duration_ms=bindparam("p_duration_ms"),
    )
    .returning(_usage.c.id)
)
_CLAIM_SETTLE = Statement(_claim_settle)
_charge = (
    _grants.update()
    .where(_grants.c.id == bindparam("p_grant_id", type_=Integer))
    .values(
        reserved=_grants.c.reserved - 1,
        used=_grants.c.used + 1,
        held_pusd=_grants.c.held_pusd - _hold,
        spent_pusd=_grants.c.spent_pusd + _cost,
    )
    .returning(*_BALANCE)
)
_CHARGE = Statement(_charge)
# PostgreSQL: the settlement in ONE statement. The ledger row is claimed first (pending →
# ok), and the grant is charged only if that claim returned its row (EXISTS on the
# claim's RETURNING): a hold the sweeper released meanwhile charges nothing. The hold
# moves to the day's spending of a budgeted app in the same statement, by app_spend's
# key (the reservation's app and hour; an app without a budget has no hour: no row).
# PostgreSQL runs every data-modifying CTE to completion, read or not, in an order of its
# choosing: the budget's UPDATE waits for the charge's RETURNING (EXISTS), so the rows are
# locked in the order every transaction takes them (the ledger row, the grant, the
# budget hour) and two calls cannot deadlock. Being one statement, it is atomic by
# itself: settle() sends it alone, in autocommit, when nothing else joins the charge
# (driver.alone). No row back: not claimed.
_claimed = _claim_settle.cte("claimed")
_charged = _charge.where(exists(select(_claimed.c.id))).cte("charged")
_spent = (
    _spend.update()
    .where(_spend.c.app_id == _app_id, _spend.c.hour == _budget_hour, exists(select(_charged.c.id)))
    .values(spent_pusd=_spend.c.spent_pusd + _cost, held_pusd=_spend.c.held_pusd - _hold)
    .cte("spent")
)
_SETTLE_AND_CHARGE = Statement(
    select(*_charged.c).select_from(_claimed.join(_charged, true())).add_cte(_spent)
)
_RELEASE_CLAIM = Statement(
    _usage.update()
    .where(_usage.c.id == bindparam("p_usage_id"), _usage.c.status == "pending")
    .values(
        status="failed",
        error=bindparam("p_error"),
        finished_at=db_now(),
        duration_ms=bindparam("p_duration_ms"),
    )
    .returning(_usage.c.id)
)
_GIVE_BACK = Statement(
    _grants.update()
    .where(_grants.c.id == bindparam("p_grant_id", type_=Integer))
    .values(reserved=_grants.c.reserved - 1, held_pusd=_grants.c.held_pusd - _hold)
)
_GIVE_BACK_ALL = Statement(
    _grants.update()
    .where(_grants.c.id == bindparam("p_grant_id", type_=Integer))
    .values(
        reserved=_grants.c.reserved - bindparam("p_count", type_=Integer),
        held_pusd=_grants.c.held_pusd - _hold,
    )
)
# The sweeps' WHERE names both terms of ix_usage_pending_hold's predicate
# (models.PENDING_HOLD), 'pending' as a literal, not a bound parameter: SQLite uses a
# partial index only for a WHERE that names its terms (it does not infer `IS NOT NULL` of
# a NOT NULL column from the comparison, as PostgreSQL does).
_pending_expired = and_(
    _usage.c.status == literal_column("'pending'"),
    _usage.c.hold_expires_at.is_not(None),
    _usage.c.hold_expires_at < db_now(),
)
_stale = (
    _usage.update()
    .where(_pending_expired)
    .values(status="expired", error="hold_expired", finished_at=db_now())
    .returning(_usage.c.grant_id, _usage.c.hold_pusd, _usage.c.app_id, _usage.c.budget_hour)
)
# The sweep takes the oldest STALE_BATCH stale holds at a time, through the partial index
# (a few rows however long the ledger), and repeats the condition outside the subquery: a
# hold another sweep or a late settle ended meanwhile is not released again.
STALE_BATCH = 500
_RELEASE_STALE = Statement(
    _stale.where(
        _usage.c.id.in_(
            select(_usage.c.id)
            .where(_pending_expired)
            .order_by(_usage.c.hold_expires_at)
            .limit(bindparam("p_batch", type_=Integer))
        )
    )
)
_RELEASE_STALE_OF_GRANT = Statement(
    _stale.where(_usage.c.grant_id == bindparam("p_grant_id", type_=Integer))
)
_FORGET_SESSIONS = Statement(
    _session_uses.delete().where(_session_uses.c.expires_at < db_now() - SESSION_USE_MARGIN)
)
_FORGET_SPENDING = Statement(
    _spend.delete().where(
        _spend.c.hour < db_now() // 3600 - BUDGET_WINDOW_HOURS, _spend.c.held_pusd == 0
    )
)
_WINDOW_SPEND = Statement(
    select(
        func.coalesce(func.sum(_spend.c.spent_pusd), 0).label("spent"),
        func.coalesce(func.sum(_spend.c.held_pusd), 0).label("held"),
    ).where(_spend.c.app_id == _app_id, _spend.c.hour >= db_now() // 3600 - BUDGET_WINDOW_HOURS)
)
_NOW = Statement(select(db_now().label("now")))
_BALANCE_BY_ID = Statement(
    select(*_BALANCE).where(_grants.c.id == bindparam("p_grant_id", type_=Integer))
)


def _on_postgresql() -> bool:
    """Whether the session's database is PostgreSQL (its one-statement phases)."""
    return db.session.get_bind().dialect.name == "postgresql"


def _db_clock() -> int:
    """The database clock, now (unix seconds)."""
    return int(_NOW.run().scalar_one())


def _balance(row: Any) -> GrantBalance:
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
        opening = {
            "p_app_id": app_id,
            "p_model": model,
            "p_stream": stream,
            "p_hold": hold,
            "p_hold_ttl": hold_ttl,
            "p_budget_hour": None,
        }
        over_budget = False
        with driver.transaction() as phase:
            if _on_postgresql():
                row = _RESERVE_AND_OPEN.run(p_token_hash=token_hash, **opening).one_or_none()
            else:
                row = _RESERVE.run(p_token_hash=token_hash, **opening).one_or_none()
            if row is None:
                phase.rollback()
            else:
                budget_hour = None
                usage_id = getattr(row, "usage_id", None)  # opened with it (PostgreSQL, no budget)
                if row.daily_budget_pusd is not None:
                    fits, budget_hour = _hold_budget(app_id, hold)
                    over_budget = not fits
                if over_budget:
                    phase.rollback()  # the grant's reservation goes with it
                else:
                    if usage_id is None:
                        opening["p_budget_hour"] = budget_hour
                        usage_id = _OPEN_USAGE.run(p_grant_id=row.id, **opening).scalar_one()
                    if on_reserved is not None:
                        on_reserved(usage_id)
                    phase.commit()
                    return Reservation(
                        usage_id=usage_id,
                        grant_id=row.id,
                        app_id=app_id,
                        hold_pusd=hold,
                        max_tokens=tokens,
                        balance=_balance(row),
                        budget_hour=budget_hour,
                    )
        if over_budget:
            # Holds of calls that died mid-call count against the budget until they are
            # released: release them now rather than refuse for them. All stale holds,
            # not this app's: that sweep reads only the few pending rows
            # (ix_usage_pending_hold), whatever the ledger's size.
            if not swept_for_budget and release_stale():
                swept_for_budget = True
                attempts -= 1  # the same hold again, on a lighter budget
                continue
            raise grant_invalid("app_budget")
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
    lock = _LOCK_BUDGET.run(p_app_id=app_id).one_or_none()
    if lock is None:
        return True, None  # the budget was turned off a moment ago: nothing to hold
    held = _HOLD_IN_BUDGET.run(
        p_app_id=app_id, p_budget_hour=lock.hour, p_hold=hold, p_budget=lock.daily_budget_pusd
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
    if grant.expires_at <= _db_clock():
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
    settling = {
        "p_usage_id": reservation.usage_id,
        "p_prompt_tokens": prompt_tokens,
        "p_completion_tokens": completion_tokens,
        "p_cost": cost,
        "p_error": error,
        "p_duration_ms": duration_ms,
    }
    charging = {"p_grant_id": reservation.grant_id, "p_hold": reservation.hold_pusd}
    if _on_postgresql():
        # One statement claims, charges and moves the budget. With nothing else in the
        # charge's transaction it is sent alone, in autocommit: one round trip.
        with driver.alone() if on_settled is None else driver.transaction():
            row = _SETTLE_AND_CHARGE.run(
                p_app_id=reservation.app_id,
                p_budget_hour=reservation.budget_hour,
                **settling,
                **charging,
            ).one_or_none()
            if row is not None:
                balance = _balance(row)
                if on_settled is not None:
                    on_settled(balance)
                return balance
    else:
        with driver.transaction() as phase:
            claimed = _CLAIM_SETTLE.run(**settling).one_or_none()
            if claimed is not None:
                row = _CHARGE.run(p_cost=cost, **charging).one()
                if reservation.budget_hour is not None:
                    _SPEND_TO_BUDGET.run(
                        p_app_id=reservation.app_id,
                        p_budget_hour=reservation.budget_hour,
                        p_hold=reservation.hold_pusd,
                        p_cost=cost,
                    )
                balance = _balance(row)
                if on_settled is not None:
                    on_settled(balance)
                return balance
            phase.rollback()
    # The sweeper released this hold (the call outlived WATTFARE_HOLD_TTL): the request
    # and the money went back to the grant, so nothing is charged now.
    log.warning("usage %s settled after its hold expired; not charged", reservation.usage_id)
    return current_balance(reservation.grant_id)


def release(reservation: Reservation, *, error: str, duration_ms: int) -> None:
    """Give back the request and the hold of a call that failed: it costs nothing."""
    with driver.transaction():
        claimed = _RELEASE_CLAIM.run(
            p_usage_id=reservation.usage_id, p_error=error[:40], p_duration_ms=duration_ms
        ).one_or_none()
        if claimed is not None:
            _GIVE_BACK.run(p_grant_id=reservation.grant_id, p_hold=reservation.hold_pusd)
            if reservation.budget_hour is not None:
                _SPEND_TO_BUDGET.run(
                    p_app_id=reservation.app_id,
                    p_budget_hour=reservation.budget_hour,
                    p_hold=reservation.hold_pusd,
                    p_cost=0,
                )


def release_stale(grant_id: int | None = None) -> int:
    """Release holds nobody settled before they expired (a worker crashed mid-call).

    Runs when a reservation is refused on a grant with calls in flight (that grant's), or
    by its app's daily budget, and from `flask wattfare sweep` (all of them, STALE_BATCH
    to a transaction, so a sweep after a long outage never holds the write lock for
    long). Returns how many holds were released.
    """
    if grant_id is not None:
        with driver.transaction():
            released = _give_back(_RELEASE_STALE_OF_GRANT.run(p_grant_id=grant_id).all())
    else:
        released = 0
        while True:
            with driver.transaction():
                batch = _give_back(_RELEASE_STALE.run(p_batch=STALE_BATCH).all())
            released += batch
            if batch < STALE_BATCH:
                break
    if released:
        log.warning("released %d stale hold(s)", released)
    return released


def _give_back(rows: list[Any]) -> int:
    """Return released holds to their grants and budget hours: one UPDATE per grant and
    per hour, not per hold. Grants first, then the budget rows, each in id order: the
    order every other transaction takes them in, so two sweeps cannot deadlock."""
    per_grant: dict[int, list[int]] = {}
    per_hour: dict[tuple[str, int], int] = {}
    for row in rows:
        count_and_hold = per_grant.setdefault(row.grant_id, [0, 0])
        count_and_hold[0] += 1
        count_and_hold[1] += row.hold_pusd
        if row.budget_hour is not None:
            key = (row.app_id, row.budget_hour)
            per_hour[key] = per_hour.get(key, 0) + row.hold_pusd
    for grant, (count, hold) in sorted(per_grant.items()):
        _GIVE_BACK_ALL.run(p_grant_id=grant, p_count=count, p_hold=hold)
    for (app_id, hour), hold in sorted(per_hour.items()):
        _SPEND_TO_BUDGET.run(p_app_id=app_id, p_budget_hour=hour, p_hold=hold, p_cost=0)
    return len(rows)


def forget_old_spending() -> int:
    """Drop AppSpend rows that have left every budget window and hold nothing."""
    result = _FORGET_SPENDING.run()
    db.session.commit()
    return result.rowcount or 0


def budget_window_spend(app_id: str) -> tuple[int, int]:
    """(spent, held) in pico-dollars over the app's current budget window."""
    row = _WINDOW_SPEND.run(p_app_id=app_id).one()
    return int(row.spent), int(row.held)


def current_balance(grant_id: int) -> GrantBalance:
    row = _BALANCE_BY_ID.run(p_grant_id=grant_id).one()
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


def grant_status(grant: Grant, now: int | None = None) -> str:
    """active | exhausted | over_cap | expired | revoked, by the database clock (`now`,
    when the caller has just read it)."""
    if grant.revoked_at is not None:
        return "revoked"
    if grant.expires_at <= (_db_clock() if now is None else now):
        return "expired"
    if grant.used >= grant.requests:
        return "exhausted"
    if grant.max_pusd is not None and grant.spent_pusd >= grant.max_pusd:
        return "over_cap"
    return "active"


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
    "session_used",
    "settle",
]
