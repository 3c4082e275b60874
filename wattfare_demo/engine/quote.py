"""The quote the consent popup shows before Approve: the most a grant can cost.

It follows from the engine's own rules, so it is a bound, not an estimate:

- a call's hold (grants.reserve) is priced from its prompt and its output limit, and the
  real charge never exceeds the hold;
- the largest prompt the engine accepts is bounded by its body limit (api.MAX_BODY_BYTES):
  a provider bills at most one token per byte of text (openai_compatible.py explains
  why), plus its per-message and per-request allowances;
- the largest output limit a call can ask for is validation.MAX_OUTPUT_TOKENS.

So one call costs at most `price.cost_pusd(MAX_PROMPT_TOKENS, MAX_OUTPUT_TOKENS)`, the
grant at most `requests` times that, or its dollar cap when that is lower. Everything is
integer pico-dollars (pricing.py), rounded up to the cent only for display: a bound
shown rounded down would not be a bound.

Without a model (a grant for "any priced model"), the bound is the price table's most
expensive model, which an operator can change at will (WATTFARE_PRICES): without a cap,
that is no upper bound worth showing, and the popup says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from .api import MAX_BODY_BYTES
from .pricing import Price
from .providers.openai_compatible import PER_MESSAGE_OVERHEAD, PER_REQUEST_OVERHEAD
from .validation import MAX_MESSAGES, MAX_OUTPUT_TOKENS

MAX_PROMPT_TOKENS = MAX_BODY_BYTES + MAX_MESSAGES * PER_MESSAGE_OVERHEAD + PER_REQUEST_OVERHEAD
CENT_PUSD = 10**10


@dataclass(frozen=True)
class Quote:
    requests: int
    model: str | None  # None: any priced model
    most_pusd: int | None  # the most the grant can cost; None: no bound worth showing
    capped: bool  # the dollar cap is the bound (it is lower than the calls' worst case)


def worst_call_pusd(price: Price) -> int:
    """The most one call on a model of this price can be charged: its largest hold."""
    return price.cost_pusd(MAX_PROMPT_TOKENS, MAX_OUTPUT_TOKENS)


def quote(requests: int, max_pusd: int | None, model: str | None, price: Price | None) -> Quote:
    """The bound for `requests` calls on `model` (priced `price`; None for any model)
    under an optional cap."""
    worst = None if price is None else requests * worst_call_pusd(price)
    if max_pusd is not None and (worst is None or max_pusd < worst):
        return Quote(requests, model, max_pusd, capped=True)
    return Quote(requests, model, worst, capped=False)


def round_up_to_cent(pusd: int) -> int:
    return -(-pusd // CENT_PUSD) * CENT_PUSD


__all__ = ["MAX_PROMPT_TOKENS", "Quote", "quote", "round_up_to_cent", "worst_call_pusd"]
