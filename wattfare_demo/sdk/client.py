"""`Wattfare`: the server SDK's entry point, the Python twin of `new Wattfare(…)` in
`wattfare/server`.

    wf = Wattfare()                      # WATTFARE_SECRET_KEY; WATTFARE_API_URL or in-process
    session = wf.create_session(origin="https://app.example.com", requests=3)  # for the popup
    result = wf.grant(grant_token).model("local/markdown").generate_text("…")
"""

from __future__ import annotations

import os
from decimal import Decimal
from types import TracebackType
from typing import Any

import httpx

from .errors import WattfareAuthError
from .grant import WattfareGrant
from .sessions import MAX_TTL, WattfareSession, app_id, mint_session
from .transport import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, Connection, WSGIApp


class Wattfare:
    """A Wattfare app, by its secret key.

    The engine: `base_url` (or WATTFARE_API_URL) over the network; else `wsgi_app` in this
    process; else the embedded engine, built on first use. `http_client` replaces the
    httpx client for a network engine (proxies, certificates, …); the SDK leaves it open.
    """

    def __init__(
        self,
        secret_key: str | None = None,
        *,
        base_url: str | None = None,
        http_client: httpx.Client | None = None,
        wsgi_app: WSGIApp | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        key = secret_key if secret_key is not None else os.environ.get("WATTFARE_SECRET_KEY")
        if not key:
            raise WattfareAuthError(
                "No Wattfare secret key: pass Wattfare(secret_key=…) or set "
                "WATTFARE_SECRET_KEY (the sk_… key printed by `flask wattfare create-app`).",
                code="missing_secret_key",
            )
        if not isinstance(key, str):
            raise WattfareAuthError("The secret key must be a string.", code="invalid_secret_key")
        app_id(key)  # a publishable key or a typo fails here, not at the first call
        self._connection = Connection(
            secret_key=key,
            root=base_url or os.environ.get("WATTFARE_API_URL") or None,
            http_client=http_client,
            wsgi_app=wsgi_app,
            timeout=timeout,
            max_retries=max_retries,
        )

    @property
    def base_url(self) -> str:
        """The API's base URL, `{root}/api/v1`."""
        return self._connection.url

    def __repr__(self) -> str:
        return f"Wattfare(base_url={self.base_url!r})"  # never the key

    def grant(self, grant_token: Any) -> WattfareGrant:
        """Redeem a grant token from the browser; WattfareAuthError if it is empty."""
        if not isinstance(grant_token, str) or not grant_token.strip():
            raise WattfareAuthError(
                "The grant token is missing: forward the grantToken that requestGrant() "
                "returned in the browser.",
                code="grant_token_missing",
            )
        return WattfareGrant(self._connection, grant_token.strip())

    def create_session(
        self,
        user_id: str | None = None,
        *,
        origin: str,
        requests: int,
        max_usd: int | float | Decimal | None = None,
        model: str | None = None,
        ttl: int = MAX_TTL,
    ) -> WattfareSession:
        """A session token for the consent popup opened from `origin` (no network call).

        The token carries the question this server allows, and the engine holds the grant
        to it: at most `requests` requests; a dollar cap of at most `max_usd` (with it the
        grant must have a cap; None: it may have none); only `model` (None: any priced
        model). It creates one grant. `requests` is required: a session that bounded
        nothing would let anyone who can reach this server's token endpoint ask for the
        engine's maximum on this app's account.

        `origin` is the page's origin, which must be one of the app's allowed origins (any
        spelling: it is normalised); `user_id` is the app's id for a signed-in user, None
        for an anonymous visitor.
        """
        return mint_session(
            self._connection.secret_key,
            origin=origin,
            requests=requests,
            max_usd=max_usd,
            model=model,
            user_id=user_id,
            ttl=ttl,
        )

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> Wattfare:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
