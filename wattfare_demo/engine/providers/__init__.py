"""Which provider serves a model id, at which price."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import ApiError
from ..pricing import Price, price_table
from .base import Provider
from .local import MODEL_ID as LOCAL_MODEL_ID
from .local import LocalMarkdownProvider
from .openai_compatible import OpenAICompatibleProvider

# What the engine lets a call generate when the caller sends no max_tokens (the
# dollar cap may clamp it further).
DEFAULT_MAX_TOKENS = 4096


@dataclass(frozen=True)
class ModelRoute:
    model: str
    provider: Provider
    price: Price


class ProviderRegistry:
    """Built once per Flask app from its config; shared by every request."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.prices = price_table(config["WATTFARE_PRICES"])
        self.local = LocalMarkdownProvider()
        self.upstream: OpenAICompatibleProvider | None = None
        if config["WATTFARE_UPSTREAM_URL"]:
            self.upstream = OpenAICompatibleProvider(
                config["WATTFARE_UPSTREAM_URL"],
                config["WATTFARE_UPSTREAM_API_KEY"],
                timeout=config["WATTFARE_UPSTREAM_TIMEOUT"],
                extra_headers={"X-Title": "Wattfare grants demo"},
            )

    def route(self, model: str) -> ModelRoute:
        price = self.prices.get(model)
        if model == LOCAL_MODEL_ID:
            return ModelRoute(model, self.local, price or self.prices[LOCAL_MODEL_ID])
        if self.upstream is None:
            raise ApiError(
                400,
                "model_not_found",
                f"Model {model!r} is not available: this engine has no upstream provider. "
                f"Use {LOCAL_MODEL_ID!r}, or set WATTFARE_UPSTREAM_URL / OPENROUTER_API_KEY.",
                param="model",
            )
        if price is None:
            raise ApiError(
                400,
                "model_not_found",
                f"Model {model!r} has no price, so it cannot be metered. "
                "Add it to WATTFARE_PRICES (USD per million tokens).",
                param="model",
            )
        return ModelRoute(model, self.upstream, price)

    def model_ids(self) -> list[str]:
        if self.upstream is None:
            return [LOCAL_MODEL_ID]
        return sorted(self.prices)

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
