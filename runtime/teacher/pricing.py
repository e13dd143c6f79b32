"""Dollar prices per million tokens (input, output), overridable per model in the config.

Dated snapshots (`gpt-4o-mini-2024-07-18`) resolve to the longest listed prefix.
Prices as published by the providers in 2025; override them when yours differ.
"""
from __future__ import annotations

from collections.abc import Mapping

from persd.runtime.errors import UsageError

# model -> (USD per 1M input tokens, USD per 1M output tokens)
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    # the PERsD paper's teacher (2023): $0.002 per 1K tokens, input and output alike (retired since)
    "gpt-3.5-turbo-0301": (2.00, 2.00),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
    "o1-mini": (1.10, 4.40),
    "o1": (15.00, 60.00),
    "gpt-5-nano": (0.05, 0.40),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5": (1.25, 10.00),
}

# model -> context window in tokens (prompt + answer), as published; where a request must fit
DEFAULT_CONTEXT: dict[str, int] = {
    "gpt-4o-mini": 128_000, "gpt-4o": 128_000, "gpt-4.1-nano": 1_047_576, "gpt-4.1-mini": 1_047_576,
    "gpt-4.1": 1_047_576, "gpt-4-turbo": 128_000, "gpt-4": 8_192, "gpt-3.5-turbo": 16_385,
    "gpt-3.5-turbo-0301": 4_096, "o4-mini": 200_000, "o3-mini": 200_000, "o3": 200_000, "o1-mini": 128_000,
    "o1": 200_000, "gpt-5-nano": 400_000, "gpt-5-mini": 400_000, "gpt-5": 400_000,
}


def _longest_prefix(table: Mapping, model: str):
    if model in table:
        return table[model]
    best = max((name for name in table if model.startswith(name)), key=len, default=None)
    return table[best] if best else None


def context_tokens(model: str) -> int | None:
    """The model's context window from the table (exact name, then longest prefix), or None."""
    return _longest_prefix(DEFAULT_CONTEXT, model)


class PriceTable:
    """Looks up a model's price: overrides first, then the defaults; exact name, then longest prefix."""

    def __init__(self, overrides: Mapping[str, tuple[float, float] | Mapping[str, float]] | None = None):
        self.prices = dict(DEFAULT_PRICES)
        for model, price in (overrides or {}).items():
            self.prices[model] = _as_pair(model, price)

    def lookup(self, model: str) -> tuple[float, float] | None:
        return _longest_prefix(self.prices, model)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.lookup(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


def _as_pair(model: str, price) -> tuple[float, float]:
    """Accept (in, out) or {"input": .., "output": ..} per 1M tokens."""
    try:
        if isinstance(price, Mapping):
            pair = (float(price["input"]), float(price["output"]))
        else:
            pair = (float(price[0]), float(price[1]))
    except (KeyError, IndexError, TypeError, ValueError):
        raise UsageError(f"price for model '{model}' must be [input, output] dollars per 1M tokens, "
                         f"got {price!r}") from None
    if pair[0] < 0 or pair[1] < 0:
        raise UsageError(f"price for model '{model}' must not be negative, got {price!r}")
    return pair
