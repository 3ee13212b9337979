"""Cost of a call from the usage the API reports and the price table in config."""

from __future__ import annotations

from agents.settings import ClaudeSettings
from memory.types import Usage


class Pricing:
    def __init__(self, settings: ClaudeSettings) -> None:
        self._prices = settings.prices
        self._write = settings.cache_write_multiplier
        self._read = settings.cache_read_multiplier

    def cost(self, model: str, usage: Usage) -> float:
        """USD for one call: input, output, cache writes and cache reads."""
        input_price, output_price = self._prices.get(model, self._prices["default"])
        return (
            usage.input_tokens * input_price
            + usage.cache_write_tokens * input_price * self._write
            + usage.cache_read_tokens * input_price * self._read
            + usage.output_tokens * output_price
        ) / 1_000_000

    def priced(self, model: str, usage: Usage) -> Usage:
        return Usage(
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_tokens,
            usage.cache_write_tokens,
            self.cost(model, usage),
        )
