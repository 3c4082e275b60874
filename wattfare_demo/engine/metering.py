"""One call lifecycle for every metered endpoint: reserve → provider → settle | release.

A route parses its request into a `MeteredCall` (the request in chat-completions terms,
and a `Renderer` for its own wire format) and returns `run(call)`:

    retry of an earlier call?  ── yes ──► its answer, replayed (nothing charged)
        │ no
    route the model, check it can do what is asked (tools, JSON, logprobs)   400
    reserve one request + the worst-case hold (grants.reserve)                402
    provider ── fails ──► release: nothing charged, the key is freed           4xx/5xx
        │ answers
    settle the real usage (grants.settle), keep the sealed answer for a retry
    render: JSON, or server-sent events settled when the stream ends

The policy (README, "What a call costs"): a failed upstream call charges nothing, before
or during a stream; a streamed answer is read up to the upstream's first event before the
caller gets any header, so an upstream refusal (429, 400) is answered with its status
and Retry-After like a plain call; a caller that leaves mid-stream is charged for what was
generated before it left (the provider bills it), one that left before the first byte is
charged nothing; a stream that reaches the dollar cap is cut with a typed error event
after its usage.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from dataclasses import dataclass, replace
from typing import Any, Protocol

from flask import Response, current_app, stream_with_context

from ..request_log import note
from . import grants
from .apps import CallingApp
from .caller import caller_gone
from .errors import ApiError, grant_invalid
from .idempotency import Retry
from .pricing import pusd_to_usd, usd_str
from .providers import DEFAULT_MAX_TOKENS, ModelRoute, ProviderRegistry
from .providers.base import (
    ChatRequest,
    Completion,
    Delta,
    EventStream,
    ProviderError,
    StreamEnd,
    StreamEvent,
    capabilities_of,
)
from .revocation import grant_is_revoked
from .validation import ChatCall

log = logging.getLogger(__name__)

# How often a running stream looks whether its grant was revoked: a stream stops within
# this (plus one delta) of a revocation, at one primary-key read per interval.
REVOKE_CHECK_SECONDS = 0.5

# --- what a route hands over ----------------------------------------------------------


@dataclass(frozen=True)
class Finished:
    """The end of a stream that was charged: totals and the grant's balance after it."""

    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    balance: grants.GrantBalance
    cut_at_cap: bool  # the dollar cap, not the caller's limit, ended it: say so after
    revoked: bool = False  # the grant was revoked while it ran: stopped, say so after

    @property
    def cut_error(self) -> ApiError | None:
        """The typed error event a stream ended early sends after its usage, if any."""
        if self.revoked:
            return revoked_error()
        return cap_error() if self.cut_at_cap else None


@dataclass(frozen=True)
class Failed:
    """The provider failed mid-stream: nothing was charged."""

    error: ApiError


StreamItem = Delta | Finished | Failed


class Renderer(Protocol):
    """An endpoint's wire format: how a completion and a stream look to its callers."""

    def body(self, completion: Completion) -> dict[str, Any]:
        """The JSON answer of a plain call."""

    def events(self, items: Iterator[StreamItem]) -> Iterator[str]:
        """The server-sent events of a streamed call, from the metered stream items."""


@dataclass(frozen=True)
class MeteredCall:
    app: CallingApp
    grant_token: str
    chat: ChatCall  # the request, in chat-completions terms
    retry: Retry
    renderer: Renderer


# --- headers and errors ---------------------------------------------------------------------


def balance_headers(balance: grants.GrantBalance) -> dict[str, str]:
    headers = {"x-wattfare-grant-remaining": str(max(balance.remaining, 0))}
    if balance.remaining_pusd is not None:
        headers["x-wattfare-grant-remaining-usd"] = usd_str(max(balance.remaining_pusd, 0))
    return headers


def balance_summary(balance: grants.GrantBalance) -> dict[str, Any]:
    """The balance as a stream's last event carries it (`wattfare` on the usage chunk)."""
    return {
        "remaining": max(balance.remaining, 0),
        "remainingUsd": (
            None
            if balance.remaining_pusd is None
            else float(pusd_to_usd(max(balance.remaining_pusd, 0)))
        ),
    }


def upstream_error(exc: ProviderError) -> ApiError:
    if exc.kind == "upstream_rejected":
        return ApiError(
            400, "upstream_rejected", f"The model provider refused the request: {exc.message}"
        )
    if exc.kind == "upstream_rate_limited":
        return ApiError(
            429,
            "upstream_rate_limited",
            "The model provider is rate limiting; retry shortly. Nothing was charged.",
            type="rate_limit_error",
            headers={"Retry-After": _retry_after(exc.retry_after)},
        )
    if exc.kind == "timeout":
        return ApiError(
            504,
            "upstream_timeout",
            "The model provider did not answer in time. Nothing was charged.",
            type="api_error",
        )
    return ApiError(
        502,
        "upstream_error",
        f"The model provider failed ({exc.kind}). Nothing was charged.",
        type="api_error",
    )


def _retry_after(value: str | None) -> str:
    """The upstream's Retry-After in whole seconds (0 to 60), or 5 without a usable one."""
    try:
        seconds = float(value) if value is not None else 5.0
    except ValueError:
        seconds = 5.0  # an HTTP date: rare from model providers; a short wait will do
    return str(min(max(math.ceil(seconds), 0), 60))


def cap_error() -> ApiError:
    error = grant_invalid("over_cap")
    error.message = "The stream reached the grant's dollar cap and was cut."
    return error


def revoked_error() -> ApiError:
    error = grant_invalid("revoked")
    error.message = (
        "The grant was revoked while this stream ran, and the stream was stopped. What it "
        "generated until then is charged."
    )
    return error


def _outcome(value: str) -> None:
    note(outcome=value)  # for the request log line; never a token


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def registry() -> ProviderRegistry:
    providers: ProviderRegistry = current_app.extensions["wattfare_providers"]
    return providers


# --- the lifecycle ---------------------------------------------------------------------------


def run(call: MeteredCall) -> Response:
    """Answer one metered call: replayed, refused, or reserved, run and settled."""
    started = time.perf_counter()
    route = registry().route(call.chat.model)
    _check_capabilities(route, call.chat)
    if (replay := call.retry.earlier_answer()) is not None:
        _outcome("replayed")
        return replay
    chat = ChatRequest(
        model=route.model,
        messages=call.chat.messages,
        max_tokens=call.chat.max_tokens or DEFAULT_MAX_TOKENS,
        options=call.chat.options,
        limit_fields=call.chat.limit_fields,
    )
    try:
        prompt_tokens = route.provider.prompt_tokens_upper_bound(chat)
        reservation = grants.reserve(
            call.app.id,
            call.grant_token,
            model=route.model,
            price=route.price,
            prompt_tokens=prompt_tokens,
            max_tokens=chat.max_tokens,
            hold_ttl=current_app.config["WATTFARE_HOLD_TTL"],
            stream=call.chat.stream,
            on_reserved=call.retry.on_reserved,
        )
    except BaseException:
        call.retry.forget()  # refused (402): the key, if any, is free for a new try
        raise
    lifecycle = _Lifecycle(call, route, reservation, prompt_tokens, started)
    chat = replace(chat, max_tokens=reservation.max_tokens)
    try:
        if call.chat.stream:
            return lifecycle.stream(chat)
        return lifecycle.complete(chat)
    except BaseException:
        if not lifecycle.ended:  # a bug of ours: never leave the hold behind
            lifecycle.release("internal")
        raise


def _check_capabilities(route: ModelRoute, chat: ChatCall) -> None:
    # A capability is named after the request field that asks for it (base.CAPABILITIES).
    missing = sorted(chat.needs - capabilities_of(route.provider))
    if missing:
        raise ApiError(
            400,
            "unsupported_parameter",
            f"Model {route.model!r} cannot honour {missing[0]}: it only writes text. Leave "
            f"{missing[0]} out, or use a model of an upstream provider. Nothing was charged.",
            param=missing[0],
        )


class _Lifecycle:
    """One reserved call: it ends settled or released, exactly once."""

    def __init__(
        self,
        call: MeteredCall,
        route: ModelRoute,
        reservation: grants.Reservation,
        prompt_tokens: int,
        started: float,
    ) -> None:
        self.call = call
        self.route = route
        self.reservation = reservation
        self.prompt_tokens = prompt_tokens
        self.started = started
        self.ended = False  # settled or released: exactly once
        self.completion_tokens = 0  # streamed so far
        self.revoked = False  # seen revoked mid-stream (_may_go_on)
        self._revoke_checked_at = time.monotonic()  # reserve() just found it unrevoked

    def release(self, error: str) -> None:
        self.ended = True
        grants.release(self.reservation, error=error, duration_ms=_elapsed_ms(self.started))
        self.call.retry.forget()

    def settle(
        self, prompt_tokens: int, completion_tokens: int, *, error: str | None = None, **kw: Any
    ) -> grants.GrantBalance:
        self.ended = True
        return grants.settle(
            self.reservation,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            price=self.route.price,
            duration_ms=_elapsed_ms(self.started),
            error=error,
            **kw,
        )

    # --- plain ------------------------------------------------------------------------

    def complete(self, chat: ChatRequest) -> Response:
        try:
            completion = self.route.provider.complete(chat)
        except ProviderError as exc:
            self.release(exc.kind)
            _outcome(f"released:{exc.kind}")
            raise upstream_error(exc) from None
        body = json.dumps(
            self.call.renderer.body(completion), separators=(",", ":"), ensure_ascii=False
        ).encode()
        # A caller that already hung up (a client timeout) cannot get this answer: it is
        # kept as undelivered, for its retry (idempotency.py, rule 3).
        delivered = not caller_gone()
        wanted = self.call.retry.wants_answer(
            delivered=delivered, seconds=time.perf_counter() - self.started
        )

        def keep(balance: grants.GrantBalance) -> None:
            self.call.retry.keep(
                status=200,
                headers=balance_headers(balance),
                body=body,
                mimetype="application/json",
                delivered=delivered,
            )

        cut = completion.finish_reason == "length" and self._cap_limited()
        balance = self.settle(
            completion.prompt_tokens,
            completion.completion_tokens,
            error="client_gone" if not delivered else ("cut_at_cap" if cut else None),
            # Only an answer worth keeping joins the charge's transaction: without it the
            # settlement is one statement, sent alone on PostgreSQL (grants.settle).
            on_settled=keep if wanted else None,
        )
        _outcome("settled")
        # The balance after the charge, as kept with the answer (or, settled after the
        # sweeper had released the hold, the grant's balance: nothing was charged).
        return Response(body, mimetype="application/json", headers=balance_headers(balance))

    # --- streamed ---------------------------------------------------------------------

    def stream(self, chat: ChatRequest) -> Response:
        upstream = self.route.provider.stream(chat)
        try:
            # Up to the upstream's first event before any header goes out: a refusal
            # (429, 400) becomes this call's own status, with its Retry-After.
            first: StreamEvent | None = next(upstream, None)
        except ProviderError as exc:
            self.release(exc.kind)
            _outcome(f"released:{exc.kind}")
            raise upstream_error(exc) from None
        if caller_gone():
            # The caller timed out before the first byte: nothing of the answer can
            # reach it. Stop the upstream and charge nothing; its retry runs afresh.
            upstream.close()
            self.release("client_gone")
            _outcome("released:client_gone")
            raise ApiError(499, "client_gone", "The caller left before the answer began.")
        items = self._metered(first, upstream)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        headers.update(balance_headers(self.reservation.balance))
        _outcome("streaming")  # replaced by the final outcome when the stream ends
        body = self._events(items, upstream)
        return Response(stream_with_context(body), mimetype="text/event-stream", headers=headers)

    def _events(
        self, items: Generator[StreamItem, None, None], upstream: EventStream
    ) -> Iterator[str]:
        try:
            yield from self.call.renderer.events(items)
        finally:
            # Closing the items when the caller goes away is what settles a stream cut
            # short: do it at once, not whenever the generator is collected. Items never
            # started (the caller left after the first event) are settled here too.
            items.close()
            if not self.ended:
                upstream.close()
                self.caller_left()

    def caller_left(self) -> None:
        """The caller went away mid-stream: charge what was generated (the prompt and
        the tokens so far), which the provider bills too."""
        self.settle(self.prompt_tokens, self.completion_tokens, error="client_disconnected")
        _outcome("settled:client_disconnected")
        log.info("client left mid-stream: usage %s", self.reservation.usage_id)

    def _metered(
        self, first: StreamEvent | None, upstream: EventStream
    ) -> Generator[StreamItem, None, None]:
        """The provider's events, accounted for: deltas, then Finished or Failed.

        Every way out settles or releases exactly once. Checks that may end a running
        stream early belong in `_may_go_on`, called for every delta.
        """
        reservation = self.reservation
        cap_limited = self._cap_limited()
        # Upstream providers report an estimate while streaming (exact only at the end),
        # so allow the estimate some slack; the charge is clamped to the hold anyway.
        overrun_limit = reservation.max_tokens + reservation.max_tokens // 2 + 16
        try:
            with closing(upstream):
                end: StreamEnd | None = None
                events = upstream if first is None else _prepend(first, upstream)
                for event in events:
                    if isinstance(event, Delta):
                        if event.completion_tokens > overrun_limit or not self._may_go_on():
                            break  # the provider ignored max_tokens: cut what is unpaid
                        self.completion_tokens = event.completion_tokens
                        yield event
                    elif isinstance(event, StreamEnd):
                        end = event
                    # Opened: the upstream accepted the call; nothing to relay.
            finish = end.finish_reason if end else "length"
            used_prompt = end.prompt_tokens if end else self.prompt_tokens
            used_completion = end.completion_tokens if end else self.completion_tokens
            cut_at_cap = finish == "length" and cap_limited and not self.revoked
            # The ledger row says why a stream ended early: the receipt page shows it.
            why = "revoked" if self.revoked else ("cut_at_cap" if cut_at_cap else None)
            balance = self.settle(used_prompt, used_completion, error=why)
            _outcome("settled:revoked" if self.revoked else "settled:stream")
            yield Finished(finish, used_prompt, used_completion, balance, cut_at_cap, self.revoked)
        except ProviderError as exc:
            self.release(exc.kind)
            _outcome(f"released:{exc.kind}")
            yield Failed(upstream_error(exc))
        except GeneratorExit:
            if not self.ended:
                self.caller_left()
            raise
        except BaseException:
            if not self.ended:
                self.release("internal")
            raise

    def _cap_limited(self) -> bool:
        """Whether the dollar cap, not the caller, set this call's output limit."""
        reservation = self.reservation
        capped = self.call.chat.max_tokens is None or (
            reservation.max_tokens < self.call.chat.max_tokens
        )
        return reservation.balance.remaining_pusd is not None and capped

    def _may_go_on(self) -> bool:
        """Whether the stream may carry on. The one place for checks that end a running
        stream: a grant revoked since the call was reserved (by the visitor on its
        receipt page, or by the app's DELETE /api/v1/grant, in any process) stops it.

        The grant's row is read at most every REVOKE_CHECK_SECONDS, on a connection of
        its own: a primary-key read that ends no transaction of the stream's, and on
        SQLite holds no read snapshot that would hide the revocation."""
        if self.revoked:
            return False
        now = time.monotonic()
        if now - self._revoke_checked_at < REVOKE_CHECK_SECONDS:
            return True
        self._revoke_checked_at = now
        if grant_is_revoked(self.reservation.grant_id):
            self.revoked = True
            log.info("grant revoked mid-stream: usage %s stopped", self.reservation.usage_id)
            return False
        return True


def _prepend(first: StreamEvent, rest: EventStream) -> EventStream:
    yield first
    yield from rest


def sse(payload: dict[str, Any] | str, event: str | None = None) -> str:
    """One server-sent event: `data:` JSON (or a literal such as [DONE])."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    prefix = f"event: {event}\n" if event else ""
    return f"{prefix}data: {data}\n\n"


__all__ = [
    "Failed",
    "Finished",
    "MeteredCall",
    "Renderer",
    "StreamItem",
    "balance_headers",
    "balance_summary",
    "cap_error",
    "revoked_error",
    "run",
    "sse",
    "upstream_error",
]
