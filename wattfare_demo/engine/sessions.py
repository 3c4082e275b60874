"""Session tokens: short-lived JWTs an app's server mints for the consent popup.

Claims: `iss` (app id), `aud` (AUDIENCE), `exp` (at most 10 minutes after `iat`),
`iat`, `jti`, `origin` (the page that will ask for a grant) and optional `sub` (the
app's user id; absent for anonymous visitors). HS256 with the app's session key.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from joserfc.jwt import JWTClaimsRegistry

from ..extensions import db
from .errors import ApiError
from .models import App
from .tokens import unseal

AUDIENCE = "wattfare:grants"
MAX_TTL = 600


@dataclass(frozen=True)
class Session:
    app: App
    origin: str
    subject: str | None


def _invalid(message: str) -> ApiError:
    return ApiError(401, "session_invalid", message, type="authentication_error")


def verify_session(token: str, secret_key: str) -> Session:
    """Check a session JWT; raise 401 session_invalid with the reason otherwise."""
    try:
        unverified = json.loads(jws.extract_compact(token.encode()).payload)
        app_id = unverified.get("iss") if isinstance(unverified, dict) else None
    except (JoseError, ValueError, UnicodeError):
        raise _invalid("The session token is not a well-formed JWT.") from None
    app = db.session.get(App, app_id) if isinstance(app_id, str) else None
    if app is None:
        raise _invalid("The session token names an unknown app.")
    key = unseal(app.session_key_box, secret_key)
    if key is None:
        # SECRET_KEY changed since the app was created: its session key is unreadable.
        raise _invalid("The app's session key cannot be read; re-create the app's keys.")
    try:
        claims = jwt.decode(token, OctKey.import_key(key), algorithms=["HS256"]).claims
        JWTClaimsRegistry(
            leeway=5,
            iss={"essential": True, "value": app.id},
            aud={"essential": True, "value": AUDIENCE},
            exp={"essential": True},
            iat={"essential": True},
            jti={"essential": True},
            origin={"essential": True},
        ).validate(claims)
    except JoseError as exc:
        raise _invalid(f"The session token was rejected: {exc.description or exc.error}.") from None
    if claims["exp"] - claims["iat"] > MAX_TTL or claims["iat"] > time.time() + 30:
        raise _invalid("The session token lives longer than 10 minutes.")
    subject = claims.get("sub")
    return Session(app=app, origin=str(claims["origin"]), subject=str(subject) if subject else None)
