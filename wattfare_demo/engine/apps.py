"""Apps and their keys: create, look up by key, and keep the demo's own app in place."""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

from flask import current_app
from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from ..origins import normalise_origin
from . import driver
from .driver import Statement
from .models import App, AppOrigin
from .pricing import pusd_to_usd, usd_to_pusd
from .tokens import (
    new_app_id,
    new_secret_key,
    parse_publishable_key,
    parse_secret_key,
    seal,
    session_signing_key,
    sha256_hex,
    unseal,
)


class KeyConfigError(Exception):
    """The configured keys cannot be used; the message says what to fix."""


# A day's ceiling above a million dollars is no ceiling; it also keeps every sum of the
# budget's hourly rows far inside a 64-bit integer.
MAX_DAILY_BUDGET_USD = Decimal(1_000_000)
NO_BUDGET = ("off", "none")


def parse_daily_budget(text: str) -> int | None:
    """A daily budget in dollars ("5", "12.50", "0") as pico-dollars; "off": None.

    ValueError with a message a person can act on for anything else.
    """
    value = text.strip().lower()
    if value in NO_BUDGET:
        return None
    try:
        amount = Decimal(value.removeprefix("$"))
    except ArithmeticError:
        amount = None
    if amount is None or not amount.is_finite() or not 0 <= amount <= MAX_DAILY_BUDGET_USD:
        raise ValueError(
            f"{text!r} is not a daily budget: give dollars from 0 to "
            f"{MAX_DAILY_BUDGET_USD:,} (e.g. 5 or 12.50), or off for no ceiling."
        )
    return usd_to_pusd(amount)


def budget_text(pusd: int | None) -> str:
    return "no daily budget" if pusd is None else f"${format(pusd_to_usd(pusd), ',f')} a day"


def set_daily_budget(app: App, pusd: int | None) -> None:
    """Set (or with None remove) the app's daily budget; it applies from the next call.

    Only spending reserved while a budget is set is counted: turning one on starts the
    day's count at what was reserved since.
    """
    app.daily_budget_pusd = pusd
    db.session.commit()


class KeepSetting:
    """The type of KEEP: "leave this setting of the app as it is stored"."""


KEEP = KeepSetting()


@dataclass(frozen=True)
class CreatedApp:
    app: App
    secret_key: str  # shown once


def origin_allowed(app: App, origin: str) -> bool:
    """Whether `origin` (normalised) is one of the app's allowed origins.

    The stored origins are compared in their normal form too: rows written before the
    normaliser was shared (or by hand) may be spelled another way.
    """
    return origin in {normalise_origin(o) for o in app.origin_list}


def create_app_record(
    name: str,
    mode: str,
    origins: list[str],
    flask_secret: str,
    *,
    secret_key: str | None = None,
    auto_approve: bool = False,
    daily_budget_pusd: int | None = None,
) -> CreatedApp:
    """Create an app; with `secret_key`, adopt that key (and the app id it names)."""
    if secret_key is None:
        secret_key = new_secret_key(mode, new_app_id())
    parsed = parse_secret_key(secret_key)
    if parsed is None or parsed.mode != mode:
        raise KeyConfigError("The secret key is not a valid sk_{mode}_{appId}_{secret} key.")
    app = App(
        id=parsed.app_id,
        name=name,
        mode=mode,
        secret_hash=sha256_hex(secret_key),
        session_key_box=seal(session_signing_key(secret_key), flask_secret),
        auto_approve=auto_approve and mode == "test",
        daily_budget_pusd=daily_budget_pusd,
        origins=[AppOrigin(origin=o) for o in dict.fromkeys(origins)],
    )
    db.session.add(app)
    db.session.commit()
    return CreatedApp(app, secret_key)


# The statements are built once, so SQLAlchemy derives their cache keys once.
_APP_BY_SECRET_HASH = select(App).where(App.secret_hash == bindparam("p_secret_hash"))
_KEY_OF_APP = Statement(
    select(App.id, App.mode).where(App.secret_hash == bindparam("p_secret_hash"))
)


def app_for_secret_key(secret_key: str) -> App | None:
    if parse_secret_key(secret_key) is None:
        return None
    return db.session.scalar(_APP_BY_SECRET_HASH, {"p_secret_hash": sha256_hex(secret_key)})


@dataclass(frozen=True)
class CallingApp:
    """What a call authenticated by a secret key needs of its app: who it is. Its
    settings (the daily budget) are read with the reservation, never from here."""

    id: str
    mode: str


# Every API call with a secret key looks its app up. The answer is kept per key hash for
# KEY_CACHE_SECONDS: the lookup through the ORM cost more than the rest of the
# reservation (0.3 ms on SQLite, 0.7 ms on PostgreSQL, docs/benchmarks.md). What is kept
# is the key's SHA-256 (as the database keeps it) and the app's id and mode, never a key.
# The invalidation rule: an app's key hash, id and mode never change once written (no
# code path here rotates a key or deletes an app), so an entry can only go stale through
# a change made outside the engine, e.g. an app removed by hand; that takes effect in
# every worker within KEY_CACHE_SECONDS, and at once in a process that calls
# `forget_cached_keys()`. Unknown keys are not kept: a flood of made-up keys costs each
# of them a lookup, and no memory.
KEY_CACHE_SECONDS = 30.0
KEY_CACHE_SIZE = 1024  # keys; past it the cache starts over, so it never grows unbounded
_KEY_CACHE = "wattfare_key_cache"


def calling_app(secret_key: str) -> CallingApp | None:
    """The app a secret key belongs to, from the cache when it was seen in the last
    KEY_CACHE_SECONDS; None for anything that is not a current key."""
    if parse_secret_key(secret_key) is None:
        return None
    key_hash = sha256_hex(secret_key)
    # One cache per Flask app (and so per database): the tests run many apps in a process.
    cache: dict[str, tuple[float, CallingApp]] = current_app.extensions.setdefault(_KEY_CACHE, {})
    now = time.monotonic()
    hit = cache.get(key_hash)
    if hit is not None and hit[0] > now:
        return hit[1]
    with driver.read():  # no transaction left open for the call's own phases to join
        row = _KEY_OF_APP.run(p_secret_hash=key_hash).one_or_none()
    if row is None:
        cache.pop(key_hash, None)
        return None
    if len(cache) >= KEY_CACHE_SIZE:
        cache.clear()
    found = CallingApp(row.id, row.mode)
    cache[key_hash] = (now + KEY_CACHE_SECONDS, found)
    return found


def forget_cached_keys() -> None:
    """Drop this process's cached keys: call after changing an app's key or removing it."""
    current_app.extensions.pop(_KEY_CACHE, None)


def app_for_publishable_key(publishable_key: str) -> App | None:
    parsed = parse_publishable_key(publishable_key)
    if parsed is None:
        return None
    app = db.session.get(App, parsed[1])
    return app if app is not None and app.mode == parsed[0] else None


def add_origin(app: App, origin: str) -> bool:
    if origin_allowed(app, origin):
        return False
    app.origins.append(AppOrigin(origin=origin))
    db.session.commit()
    return True


def remove_origin(app: App, origin: str) -> bool:
    for row in app.origins:
        if row.origin == origin:
            app.origins.remove(row)
            db.session.commit()
            return True
    return False


def ensure_app(
    publishable_key: str,
    secret_key: str,
    *,
    name: str,
    origins: list[str],
    flask_secret: str,
    auto_approve: bool,
    daily_budget_pusd: int | KeepSetting | None = KEEP,
    rename: bool = False,
) -> App:
    """Make sure the app these keys name exists, with exactly these keys.

    `daily_budget_pusd`, unless KEEP, is set on it (None: no budget); with `rename` its
    name becomes `name` (else `name` is only used to create it).
    Safe to run from several workers at once: a lost insert race re-reads the winner.
    """
    pk = parse_publishable_key(publishable_key)
    sk = parse_secret_key(secret_key)
    if pk is None:
        raise KeyConfigError(
            "WATTFARE_PUBLISHABLE_KEY is not a pk_{test|live}_{appId} key. "
            "Create keys with `flask wattfare create-app` and set both variables."
        )
    if sk is None:
        raise KeyConfigError(
            "WATTFARE_SECRET_KEY is not a sk_{test|live}_{appId}_{secret} key. "
            "Create keys with `flask wattfare create-app` and set both variables."
        )
    if (pk[0], pk[1]) != (sk.mode, sk.app_id):
        raise KeyConfigError(
            f"WATTFARE_PUBLISHABLE_KEY is for app {pk[1]} ({pk[0]}) but WATTFARE_SECRET_KEY "
            f"is for app {sk.app_id} ({sk.mode}): set a matching pair."
        )
    app = db.session.get(App, sk.app_id)
    if app is None:
        try:
            return create_app_record(
                name,
                sk.mode,
                origins,
                flask_secret,
                secret_key=secret_key,
                auto_approve=auto_approve,
                daily_budget_pusd=(
                    None if isinstance(daily_budget_pusd, KeepSetting) else daily_budget_pusd
                ),
            ).app
        except IntegrityError:
            db.session.rollback()
            app = db.session.get(App, sk.app_id)
            if app is None:
                raise KeyConfigError(
                    "WATTFARE_SECRET_KEY is already used by another app."
                ) from None
    if app.secret_hash != sha256_hex(secret_key):
        raise KeyConfigError(
            f"WATTFARE_SECRET_KEY does not match the key stored for app {app.id}. "
            "Set the secret key that was printed when the app was created."
        )
    changed = False
    box = session_signing_key(secret_key)
    if unseal(app.session_key_box, flask_secret) != box:
        # SECRET_KEY changed: re-seal the session key under the new one.
        app.session_key_box = seal(box, flask_secret)
        changed = True
    for origin in origins:
        if not origin_allowed(app, origin):
            app.origins.append(AppOrigin(origin=origin))
            changed = True
    if rename and app.name != name:
        app.name = name
        changed = True
    if (
        not isinstance(daily_budget_pusd, KeepSetting)
        and app.daily_budget_pusd != daily_budget_pusd
    ):
        app.daily_budget_pusd = daily_budget_pusd
        changed = True
    if app.auto_approve != (auto_approve and app.mode == "test"):
        app.auto_approve = auto_approve and app.mode == "test"
        changed = True
    if changed:
        try:
            db.session.commit()
        except IntegrityError:  # another worker added the same origin first
            db.session.rollback()
    return app
