"""The Python server SDK: the twin of `wattfare/server` in the one-time grants docs.

    from wattfare_demo.sdk import Wattfare, to_wattfare_error

    wf = Wattfare()
    result = wf.grant(grant_token).model("local/markdown").generate_text(prompt)

It talks to the engine only over HTTP (httpx; in-process over WSGI when no engine URL is
set) and imports nothing from the engine or Flask: it is what a customer's backend
imports. Reference: docs/sdk.md.
"""

from .client import Wattfare
from .errors import (
    WattfareAuthError,
    WattfareConflictError,
    WattfareConnectionError,
    WattfareError,
    WattfareGrantError,
    WattfareInvalidRequestError,
    WattfareRateLimitError,
    WattfareTimeoutError,
    WattfareUpstreamError,
    to_wattfare_error,
)
from .grant import GenerateTextResult, GrantStatus, TextStream, Usage, WattfareGrant, WattfareModel
from .sessions import WattfareSession

__all__ = [
    "GenerateTextResult",
    "GrantStatus",
    "TextStream",
    "Usage",
    "Wattfare",
    "WattfareAuthError",
    "WattfareConflictError",
    "WattfareConnectionError",
    "WattfareError",
    "WattfareGrant",
    "WattfareGrantError",
    "WattfareInvalidRequestError",
    "WattfareModel",
    "WattfareRateLimitError",
    "WattfareSession",
    "WattfareTimeoutError",
    "WattfareUpstreamError",
    "to_wattfare_error",
]
