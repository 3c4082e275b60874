"""Apps and their keys: create, look up by key, and keep the demo's own app in place."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from ..extensions import db
from .models import App, AppOrigin
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


@dataclass(frozen=True)
class CreatedApp:
    app: App
    secret_key: str  # shown once


def normalise_origin(value: str) -> str | None:
    """`scheme://host[:port]` with no path, lower-cased, or None if it isn't one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username:
        return None
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def create_app_record(
    name: str,
    mode: str,
    origins: list[str],
    flask_secret: str,
    *,
    secret_key: str | None = None,
    auto_approve: bool = False,
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
        origins=[AppOrigin(origin=o) for o in dict.fromkeys(origins)],
    )
    db.session.add(app)
    db.session.commit()
    return CreatedApp(app, secret_key)


# Every metered call looks its app up by key hash: the statement is built once, so
# SQLAlchemy derives its cache key once instead of on every call.
_APP_BY_SECRET_HASH = select(App).where(App.secret_hash == bindparam("p_secret_hash"))


def app_for_secret_key(secret_key: str) -> App | None:
    if parse_secret_key(secret_key) is None:
        return None
    return db.session.scalar(_APP_BY_SECRET_HASH, {"p_secret_hash": sha256_hex(secret_key)})


def app_for_publishable_key(publishable_key: str) -> App | None:
    parsed = parse_publishable_key(publishable_key)
    if parsed is None:
        return None
    app = db.session.get(App, parsed[1])
    return app if app is not None and app.mode == parsed[0] else None


def add_origin(app: App, origin: str) -> bool:
    if origin in app.origin_list:
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
) -> App:
    """Make sure the app these keys name exists, with exactly these keys.

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
        if origin not in app.origin_list:
            app.origins.append(AppOrigin(origin=origin))
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
