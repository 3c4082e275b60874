"""The engine's tables: apps and their origins, grants, the usage ledger, the session
tokens already used, and each budgeted app's spending per hour.

Money columns hold integer pico-dollars (1 USD = 10**12 pUSD): prices are integer
micro-dollars per million tokens, so `tokens * price` is an exact pUSD amount with no
rounding anywhere (see pricing.py). Times are unix seconds from the database clock.
"""

from __future__ import annotations

from typing import cast

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import Model
from .clock import db_now


class App(Model):
    """A Wattfare customer app: keys, mode and the origins allowed to ask for grants."""

    __tablename__ = "apps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    mode: Mapped[str] = mapped_column(String(4))  # "test" | "live"
    # SHA-256 of the secret key, hex: the key itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The key that verifies the app's session JWTs, derived from the secret key and
    # stored encrypted under SECRET_KEY (see keys.py).
    session_key_box: Mapped[str] = mapped_column(String(200))
    auto_approve: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[int] = mapped_column(BigInteger, default=db_now())
    # The most the app's calls may cost over a rolling day (see AppSpend); None: no ceiling.
    daily_budget_pusd: Mapped[int | None] = mapped_column(BigInteger)

    origins: Mapped[list[AppOrigin]] = relationship(
        back_populates="app", cascade="all, delete-orphan", order_by="AppOrigin.origin"
    )

    __table_args__ = (CheckConstraint("mode IN ('test', 'live')", name="mode"),)

    @property
    def publishable_key(self) -> str:
        return f"pk_{self.mode}_{self.id}"

    @property
    def origin_list(self) -> list[str]:
        return [o.origin for o in self.origins]


class AppOrigin(Model):
    __tablename__ = "app_origins"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    origin: Mapped[str] = mapped_column(String(255))

    app: Mapped[App] = relationship(back_populates="origins")

    __table_args__ = (UniqueConstraint("app_id", "origin", name="app_origin"),)


class Grant(Model):
    """N approved requests (and an optional dollar cap) for one app.

    `used` counts settled successes; `reserved` and `held_pusd` are calls in flight.
    The CHECKs restate the accounting rules, so even a bug cannot overspend.
    """

    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # SHA-256 of the receipt capability (tokens.py): the visitor's view-and-revoke link.
    # None for grants made before receipts existed.
    receipt_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    origin: Mapped[str] = mapped_column(String(255))
    subject: Mapped[str | None] = mapped_column(String(255))
    # The one model the grant may be spent on, as the app's session named it; None: any.
    model: Mapped[str | None] = mapped_column(String(120))
    requests: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    max_pusd: Mapped[int | None] = mapped_column(BigInteger)
    spent_pusd: Mapped[int] = mapped_column(BigInteger, default=0)
    held_pusd: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[int] = mapped_column(BigInteger, default=db_now())
    expires_at: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        CheckConstraint(
            "used >= 0 AND reserved >= 0 AND used + reserved <= requests", name="count"
        ),
        CheckConstraint("spent_pusd >= 0 AND held_pusd >= 0", name="money_positive"),
        CheckConstraint("max_pusd IS NULL OR spent_pusd + held_pusd <= max_pusd", name="cap"),
    )


# The predicate of ix_usage_pending_hold. `hold_expires_at IS NOT NULL` is always true
# (the column is NOT NULL): it is there so that only a WHERE that names it (the sweeps',
# grants._pending_expired) may use the index. Settle's and release's claim, `id = ? AND
# status = 'pending'`, implied the bare `status = 'pending'`, and to PostgreSQL's planner
# a partial index that looks empty beat the primary key: the claim then read every entry
# the calls settled since the last vacuum left in it (353 pages, 1.7 ms after 20,000).
PENDING_HOLD = "status = 'pending' AND hold_expires_at IS NOT NULL"


class Usage(Model):
    """The ledger: one row per call that got past the reservation.

    status: "pending" (hold in place), "ok" (settled), "failed" (released after a
    provider error), "expired" (a hold nobody settled, released by the sweeper).
    """

    __tablename__ = "usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id", ondelete="CASCADE"))
    app_id: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(10), default="pending")
    stream: Mapped[bool] = mapped_column(default=False)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    hold_pusd: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_pusd: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[str | None] = mapped_column(String(40))
    started_at: Mapped[int] = mapped_column(BigInteger, default=db_now())
    hold_expires_at: Mapped[int] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(BigInteger)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    # The AppSpend hour this call's hold was taken in; None when its app had no budget.
    budget_hour: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_usage_grant_status", "grant_id", "status"),
        # The calls in flight, by when their hold expires: what the stale-hold sweeps read
        # (all of them, or one app's when its daily budget refuses a call). Only pending
        # rows are in it, so it stays a few rows long however big the ledger grows.
        Index(
            "ix_usage_pending_hold",
            "hold_expires_at",
            postgresql_where=text(PENDING_HOLD),
            sqlite_where=text(PENDING_HOLD),
        ),
        CheckConstraint("status IN ('pending', 'ok', 'failed', 'expired')", name="status"),
    )


class SessionUse(Model):
    """A session token that has created its grant: one grant per session (`jti`).

    Kept until the token has expired (`expires_at`, its `exp` claim): after that the token
    is refused anyway, and `flask wattfare sweep` forgets the row.
    """

    __tablename__ = "session_uses"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class AppSpend(Model):
    """What a budgeted app's calls cost, per hour of the database clock (`hour` = unix
    seconds // 3600): `spent_pusd` settled, `held_pusd` still held by calls in flight.

    A call's hold is taken in the hour it is reserved and settled or released in that same
    row (Usage.budget_hour). The daily budget compares the sum of the current hour's row and
    the 24 before it: at most 25 rows on the primary key, however many calls a day has.
    """

    __tablename__ = "app_spend"

    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), primary_key=True)
    hour: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    spent_pusd: Mapped[int] = mapped_column(BigInteger, default=0)
    held_pusd: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        CheckConstraint("spent_pusd >= 0 AND held_pusd >= 0", name="money_positive"),
        # The sweep forgets hours that have left every window (grants.forget_old_spending)
        # by this index, not by reading every app's every hour.
        Index("ix_app_spend_hour", "hour"),
    )


class Replay(Model):
    """What the engine keeps, for a while, to know a retried call and answer it again.

    One row per metered call (idempotency.py): the Idempotency-Key and the request are
    kept only as SHA-256 hashes, and the answer is sealed (AES-GCM) under a key derived
    from what the caller sends again (grant token, body, key), which is never stored.
    The sweep deletes rows older than idempotency.REPLAY_TTL (sweep.py). The ledger row
    (`usage`) stays: it is the record of what was charged, and holds nothing of the
    document.
    """

    __tablename__ = "replays"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    app_id: Mapped[str] = mapped_column(String(32))
    # The call, once reserved: NULL only between an Idempotency-Key's claim and its
    # reservation.
    usage_id: Mapped[int | None] = mapped_column(
        ForeignKey("usage.id", ondelete="CASCADE"), unique=True
    )
    key_hash: Mapped[str | None] = mapped_column(String(64))  # None: no Idempotency-Key
    request_hash: Mapped[str] = mapped_column(String(64))
    stream: Mapped[bool] = mapped_column(default=False)
    answer: Mapped[str | None] = mapped_column(Text)  # sealed; None for streams
    # Whether the answer reached a client still connected when it was sent.
    delivered: Mapped[bool] = mapped_column(default=False)
    # Indexed for the sweep, which deletes what is older than REPLAY_TTL: without it the
    # DELETE read every row of the last 30 minutes, a busy engine's hundreds of
    # thousands, holding SQLite's write lock while it did.
    created_at: Mapped[int] = mapped_column(BigInteger, default=db_now(), index=True)

    __table_args__ = (
        # Decides a race between calls with one new key: the second claim fails. Only the
        # records with a key are in it (NULLs never conflict anyway): a key-less call's
        # lookup could otherwise walk this index's (app, NULL) entries, every key-less
        # call of the app in the last 30 minutes (PostgreSQL did, at 1 ms a call).
        Index(
            "replay_key",
            "app_id",
            "key_hash",
            unique=True,
            postgresql_where=text("key_hash IS NOT NULL"),
            sqlite_where=text("key_hash IS NOT NULL"),
        ),
        # A key-less call's lookup (idempotency._LATEST): the newest record of the same
        # request, one index entry read however often the request was made.
        Index(
            "ix_replays_request",
            "app_id",
            "request_hash",
            "id",
            postgresql_where=text("key_hash IS NULL"),
            sqlite_where=text("key_hash IS NULL"),
        ),
    )


def table(model: type[Model]) -> Table:
    """A model's Table, for the prebuilt Core statements of the hot path (grants.py,
    idempotency.py). Declarative types `__table__` as any FromClause; every model here is
    mapped to one Table."""
    return cast(Table, model.__table__)
