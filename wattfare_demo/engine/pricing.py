"""Model prices and the exact cost of a call.

Prices are integer micro-dollars per million tokens, so the cost of `n` tokens is
`n * price` pico-dollars (1 USD = 10**12 pUSD): exact integers, no rounding. The API
speaks dollars as JSON numbers; `usd_to_pusd` / `pusd_to_usd` convert at the edge.

`local/markdown` has a nominal price ($1 per million input tokens, $2 per million
output tokens) so that dollar caps behave offline exactly as they would on a paid
model. The others are OpenRouter's list prices when this file was written; override
or add any with WATTFARE_PRICES='{"vendor/model": {"input": 0.15, "output": 0.6}}'
(USD per million tokens).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

PUSD_PER_USD = 10**12
_MICRO = Decimal(10**6)


@dataclass(frozen=True)
class Price:
    input_micro_per_m: int  # micro-USD per 1M prompt tokens
    output_micro_per_m: int  # micro-USD per 1M completion tokens

    def cost_pusd(self, prompt_tokens: int, completion_tokens: int) -> int:
        return prompt_tokens * self.input_micro_per_m + completion_tokens * self.output_micro_per_m

    def affordable_completion_tokens(self, budget_pusd: int, prompt_tokens: int) -> int:
        """How many completion tokens `budget_pusd` pays for after the prompt."""
        left = budget_pusd - prompt_tokens * self.input_micro_per_m
        if left <= 0:
            return 0
        if self.output_micro_per_m == 0:
            return 2**31 - 1
        return left // self.output_micro_per_m


DEFAULT_PRICES: dict[str, Price] = {
    "local/markdown": Price(1_000_000, 2_000_000),
    "openai/gpt-4o-mini": Price(150_000, 600_000),
    "openai/gpt-4.1-mini": Price(400_000, 1_600_000),
    "openai/gpt-4o": Price(2_500_000, 10_000_000),
    "anthropic/claude-sonnet-4": Price(3_000_000, 15_000_000),
    "anthropic/claude-3.5-haiku": Price(800_000, 4_000_000),
    "google/gemini-2.5-flash": Price(300_000, 2_500_000),
    "meta-llama/llama-3.1-8b-instruct": Price(20_000, 30_000),
}


def _micro(value: Any, where: str) -> int:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"WATTFARE_PRICES: {where} is not a number") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"WATTFARE_PRICES: {where} must be a number >= 0")
    return int(amount * _MICRO)


def price_table(overrides: Mapping[str, Any]) -> dict[str, Price]:
    """The defaults with WATTFARE_PRICES applied; raises ValueError on a bad entry."""
    table = dict(DEFAULT_PRICES)
    for model, entry in overrides.items():
        if not isinstance(entry, Mapping) or {"input", "output"} - set(entry):
            raise ValueError(f'WATTFARE_PRICES: {model} needs {{"input": …, "output": …}}')
        table[model] = Price(
            _micro(entry["input"], f"{model}.input"), _micro(entry["output"], f"{model}.output")
        )
    return table


def usd_to_pusd(amount: Decimal) -> int:
    """Dollars (exact decimal) to pico-dollars, rounding sub-pico fractions down."""
    return int(amount * PUSD_PER_USD)


def pusd_to_usd(amount: int) -> Decimal:
    return (Decimal(amount) / PUSD_PER_USD).normalize()


def usd_str(amount: int) -> str:
    """Exact decimal string for a header, e.g. 1_500_000_000 pUSD -> '0.0015'."""
    text = format(pusd_to_usd(amount), "f")
    return text
