"""How the SDK reaches the engine: over the network, or in-process over WSGI; with retries.

Which engine, in order:
1. `base_url=` or WATTFARE_API_URL: an engine over the network (httpx).
2. `wsgi_app=`: that WSGI app in this process (`httpx.WSGITransport`), e.g. the demo's
   own Flask app, which embeds the engine.
3. Neither: the embedded engine, built on first use with `wattfare_demo.create_app()`.

Retries, as openai-python does them: every call the SDK makes is safe to repeat (chat
calls carry an Idempotency-Key that stays the same across attempts, so the engine
replays instead of charging twice), so a connection error, a timeout, and the answers
408, 409 `idempotency_key_in_use` / `call_in_progress` (the same call is still running),
429 and 5xx are retried, up to `max_retries` times. The wait is the answer's
`Retry-After` (or `retry-after-ms`) when it gives one of at most MAX_RETRY_AFTER seconds,
else exponential backoff with jitter. Any other 4xx is never retried: the request itself
is wrong, and would be again.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import httpx

from .errors import connection_error, error_from_response, retry_after_seconds

API_PATH = "/api/v1"
# Any host does for WSGITransport, which never resolves it; this one says what it is.
IN_PROCESS_ROOT = "http://wattfare.in-process"
# Reads wait for a whole non-streamed completion, which can take a minute or two.
DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
DEFAULT_MAX_RETRIES = 2
BACKOFF_BASE = 0.5  # seconds before the first retry; doubles each time
BACKOFF_MAX = 8.0
# A longer Retry-After is not waited for in a request: backoff instead (openai-python's cap).
MAX_RETRY_AFTER = 60.0
RETRIED_STATUSES = frozenset({408, 409, 429})
# 409s that mean "the same call is still running": retrying gets its answer. Others
# (idempotency_key_used) would be the same again.
RETRIED_CONFLICTS = frozenset({"idempotency_key_in_use", "call_in_progress"})

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def api_url(root: str) -> str:
    """`{root}/api/v1`; a root that already ends in /api/v1 is taken as it is."""
    root = root.rstrip("/")
    return root if root.endswith(API_PATH) else root + API_PATH


def _embedded_engine() -> WSGIApp:
    # The SDK's one import from the rest of this project, done here and only when needed:
    # with no engine URL and no app given, the "hosted" Wattfare is the engine embedded
    # in this project, built the way `flask run` builds it. Kept out of module level so
    # the SDK stays what a customer's backend imports: httpx and joserfc, no Flask.
    from wattfare_demo import create_app

    return create_app()


def backoff(attempt: int) -> float:
    """Seconds before retry number `attempt` (0-based): exponential, with equal jitter."""
    delay = min(BACKOFF_MAX, BACKOFF_BASE * 2**attempt)
    # Jitter spreads the retries of many clients that failed together; not a secret.
    return float(delay / 2 + random.uniform(0, delay / 2))  # noqa: S311


def retry_delay(attempt: int, response: httpx.Response | None) -> float:
    """The answer's Retry-After when it is a sensible wait, else `backoff(attempt)`."""
    if response is not None:
        asked = retry_after_seconds(response.headers)
        if asked is not None and 0 <= asked <= MAX_RETRY_AFTER:
            return asked
    return backoff(attempt)


def should_retry(response: httpx.Response) -> bool:
    """408, 429, 5xx, and a 409 that says the same call is still running."""
    status = response.status_code
    if status >= 500 or status in (408, 429):
        return True
    if status != 409:
        return False
    response.read()
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return code in RETRIED_CONFLICTS


class Connection:
    """The HTTP client, the API's URL and the retry policy, shared by grants and models."""

    def __init__(
        self,
        *,
        secret_key: str,
        root: str | None,
        http_client: httpx.Client | None,
        wsgi_app: WSGIApp | None,
        timeout: float | httpx.Timeout,
        max_retries: int,
    ) -> None:
        if http_client is not None and root is None:
            raise ValueError(
                "http_client needs base_url (or WATTFARE_API_URL): the engine it talks to."
            )
        if http_client is not None and wsgi_app is not None:
            raise ValueError("Pass http_client or wsgi_app, not both.")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError("max_retries must be a whole number, 0 or more.")
        self.secret_key = secret_key
        self.url = api_url(root or IN_PROCESS_ROOT)
        self.in_process = root is None
        self.max_retries = max_retries
        self._timeout = timeout
        self._wsgi_app = wsgi_app
        self._client = http_client
        self._owns_client = http_client is None
        self._lock = threading.Lock()

    # --- the client -----------------------------------------------------------------

    def wsgi_app(self) -> WSGIApp:
        """The in-process engine (built on first use when none was given)."""
        with self._lock:
            if self._wsgi_app is None:
                self._wsgi_app = _embedded_engine()
            return self._wsgi_app

    @property
    def client(self) -> httpx.Client:
        if self._client is None:
            transport = httpx.WSGITransport(app=self.wsgi_app()) if self.in_process else None
            with self._lock:
                if self._client is None:
                    self._client = httpx.Client(transport=transport, timeout=self._timeout)
        return self._client

    def close(self) -> None:
        if self._client is not None and self._owns_client:
            self._client.close()

    # --- requests -------------------------------------------------------------------

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.secret_key}",
            "User-Agent": "wattfare-demo-python-sdk",
            **(extra or {}),
        }

    def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        stream: bool = False,
    ) -> httpx.Response:
        """A 2xx response (opened but unread when `stream`), or the WattfareError raised.

        The same request (same headers, so the same Idempotency-Key) is sent again after
        a connection error, a timeout or a retryable answer (module docstring), up to
        `max_retries` times.
        """
        request = self.client.build_request(
            method, self.url + path, headers=self.headers(headers), json=json
        )
        attempt = 0
        while True:
            retry = attempt < self.max_retries
            failed: httpx.Response | None = None
            try:
                response = self.client.send(request, stream=stream)
            except httpx.TransportError as exc:  # timeouts included
                if not retry:
                    raise connection_error(exc) from exc
            else:
                if response.is_success:
                    return response
                if not retry or not should_retry(response):
                    response.read()
                    response.close()
                    raise error_from_response(response)
                response.close()
                failed = response
            time.sleep(retry_delay(attempt, failed))
            attempt += 1
