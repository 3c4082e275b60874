"""Revoking a grant, and how a running call learns of it.

A revocation is one UPDATE that sets `revoked_at` by the database clock, once: the
grant's first revocation is the one that counts, a second one changes nothing. From
then on `grants.reserve` refuses the grant (402 `revoked`: its WHERE clause has
`revoked_at IS NULL`), and a stream already running on it stops at its next check
(`metering._Lifecycle._may_go_on`, which calls `grant_is_revoked`), in whichever
process it runs: the check reads the database, not this process's memory.

Both sides can revoke: the visitor with the receipt capability (receipts.py), the app
with its secret key and the grant token (DELETE /api/v1/grant).
"""

from __future__ import annotations

from sqlalchemy import bindparam, select

from ..extensions import db
from .clock import db_now
from .driver import Statement
from .models import Grant, table
from .tokens import receipt_capability_is_well_formed, sha256_hex

_grants = table(Grant)

# Built once, with bind parameters, like the hot path's statements in grants.py (the
# revocation check runs every half second of every running stream). The check runs on a
# connection of its own (see grant_is_revoked); the others are driver.Statements in the
# request's session, as in grants.py.
_REVOKED_AT = select(_grants.c.revoked_at).where(_grants.c.id == bindparam("p_grant_id"))
_REVOKE_BY_ID = Statement(
    _grants.update()
    .where(_grants.c.id == bindparam("p_grant_id"), _grants.c.revoked_at.is_(None))
    .values(revoked_at=db_now())
)
_REVOKE_BY_RECEIPT = Statement(
    _grants.update()
    .where(_grants.c.receipt_hash == bindparam("p_receipt_hash"), _grants.c.revoked_at.is_(None))
    .values(revoked_at=db_now())
)
_GRANT_OF_RECEIPT = Statement(
    select(_grants.c.id).where(_grants.c.receipt_hash == bindparam("p_receipt_hash"))
)


def grant_is_revoked(grant_id: int) -> bool:
    """Whether the grant has been revoked, read now from the database.

    On a connection of its own, not the request's session: a stream holds no
    transaction open between its reservation and its settlement, and must not start one
    here (on SQLite an open read transaction would keep its snapshot, and never see the
    revocation)."""
    with db.engine.connect() as connection:
        revoked_at = connection.execute(_REVOKED_AT, {"p_grant_id": grant_id}).scalar()
    return revoked_at is not None


def revoke_grant(grant_id: int) -> None:
    """Revoke a grant the caller has already found (DELETE /api/v1/grant)."""
    _REVOKE_BY_ID.run(p_grant_id=grant_id)
    db.session.commit()


def receipt_hash(capability: str) -> str | None:
    """The stored hash of a well-formed receipt capability; None for anything else (a
    grant token included: it never opens a receipt)."""
    if not receipt_capability_is_well_formed(capability):
        return None
    return sha256_hex(capability)


def revoke_by_receipt(capability: str) -> bool:
    """Revoke the grant a receipt capability names. False when it names no grant;
    True when it does, whether this call or an earlier one revoked it."""
    hashed = receipt_hash(capability)
    if hashed is None:
        return False
    _REVOKE_BY_RECEIPT.run(p_receipt_hash=hashed)
    found = _GRANT_OF_RECEIPT.run(p_receipt_hash=hashed).scalar()
    db.session.commit()
    return found is not None


__all__ = ["grant_is_revoked", "receipt_hash", "revoke_by_receipt", "revoke_grant"]
