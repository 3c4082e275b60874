"""Session tokens: short-lived JWTs an app's server mints for the consent popup.

Claims: `iss` (app id), `aud` (AUDIENCE), `exp` (at most 10 minutes after `iat`),
`iat`, `jti`, `origin` (the page that will ask for a grant), optional `sub` (the app's
user id; absent for anonymous visitors), and the question the app's server allows:
`requests` (the most requests the grant may have; required), `maxUsd` (the highest dollar
cap it may have; absent: the grant may have no cap) and `model` (the one model the grant
may be spent on; absent: any priced model). HS256 with the app's session key.

A session creates one grant (`POST /api/v1/grants` records its `jti`, grants.py).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from decimal import Decimal

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from joserfc.jwt import JWTClaimsRegistry

from ..extensions import db
from ..origins import normalise_origin
from .errors import ApiError
from .models import App
from .pricing import pusd_to_usd, usd_to_pusd
from .tokens import unseal
from .validation import MAX_MODEL_LENGTH

AUDIENCE = "wattfare:grants"
MAX_TTL = 600
_JTI = re.compile(r"[\x21-\x7e]{1,128}")  # what SessionUse.jti holds


@dataclass(frozen=True)
class Session:
    """A verified session token: who asks, from where, and the question it allows."""

    app: App
    origin: str  # normalised (wattfare_demo.origins)
    subject: str | None
    requests: int  # the most requests a grant from this session may have
    max_pusd: int | None  # the highest dollar cap it may have; None: no cap required
    model: str | None  # the one model its grant may be spent on; None: any priced model
    jti: str
    expires_at: int  # unix seconds: its `exp`


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
    exp, iat = claims["exp"], claims["iat"]
    if not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in (exp, iat)
    ):
        raise _invalid("The session token's iat and exp must be unix seconds.")
    if exp - iat > MAX_TTL or iat > time.time() + 30:
        raise _invalid("The session token lives longer than 10 minutes.")
    origin = normalise_origin(claims["origin"])
    if origin is None:
        raise _invalid("The session token's origin is not a web origin (scheme://host[:port]).")
    jti = claims["jti"]
    if not isinstance(jti, str) or not _JTI.fullmatch(jti):
        raise _invalid("The session token's jti must be 1 to 128 printable ASCII characters.")
    subject = claims.get("sub")
    return Session(
        app=app,
        origin=origin,
        subject=str(subject) if subject else None,
        requests=_requests_claim(claims.get("requests")),
        max_pusd=_max_usd_claim(claims.get("maxUsd")),
        model=_model_claim(claims.get("model")),
        jti=jti,
        expires_at=math.ceil(exp),
    )


def _requests_claim(value: object) -> int:
    if value is None:
        raise _invalid(
            "The session token has no requests claim: the app's server must say how many "
            "requests the grant may have (create_session(requests=…))."
        )
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _invalid("The session token's requests claim must be a whole number from 1.")
    return value


def _max_usd_claim(value: object) -> int | None:
    """The claim in pico-dollars. A float claim is read as the shortest decimal that
    prints it (0.1 is 0.1, not 0.1000000000000000055…), as the JSON that carried it said."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid("The session token's maxUsd claim must be a number of dollars.")
    if isinstance(value, float) and not math.isfinite(value):
        raise _invalid("The session token's maxUsd claim must be a finite number.")
    pusd = usd_to_pusd(Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
    if pusd <= 0:
        raise _invalid("The session token's maxUsd claim must be more than 0.")
    return pusd


def _model_claim(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_MODEL_LENGTH:
        raise _invalid(
            f"The session token's model claim must be a model id of 1 to {MAX_MODEL_LENGTH} "
            'characters, e.g. "openai/gpt-4o-mini".'
        )
    return value.strip()


def exceeds_session(param: str, message: str) -> ApiError:
    return ApiError(403, "exceeds_session", message, type="permission_error", param=param)


def check_within_session(session: Session, *, requests: int, max_pusd: int | None) -> None:
    """403 `exceeds_session` for a grant that asks more than the session allows.

    The app's server decided, when it minted the session, what the page may ask for; the
    popup shows what the page asked. A page (or a script) asking for more than its server
    allowed gets nothing.
    """
    if requests > session.requests:
        raise exceeds_session(
            "requests",
            f"This session allows at most {session.requests} request"
            f"{'' if session.requests == 1 else 's'}; the grant asks for {requests}. The app's "
            "server sets this when it mints the session (create_session(requests=…)).",
        )
    if session.max_pusd is None:
        return
    allowed = f"${format(pusd_to_usd(session.max_pusd), 'f')}"
    if max_pusd is None:
        raise exceeds_session(
            "maxUsd",
            f"This session allows only grants with a dollar cap of at most {allowed}; the "
            "grant asks for none. Send maxUsd.",
        )
    if max_pusd > session.max_pusd:
        raise exceeds_session(
            "maxUsd",
            f"This session allows a dollar cap of at most {allowed}; the grant asks for "
            f"${format(pusd_to_usd(max_pusd), 'f')}.",
        )
