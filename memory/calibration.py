"""Calibration of token estimates: tiktoken's count against the count the API reports.

tiktoken's ``cl100k_base`` is not Claude's tokenizer; the ratio of what the API
reported to what was estimated, per model, scales every estimate so that budgets
hold for the model's own count. Samples come every turn, so they are added in
memory and reach the database in the background at most every ``flush_s`` seconds,
and on close.
"""

from __future__ import annotations

import asyncio
import logging

from memory.errors import PalaverError
from memory.store import Store
from memory.tokens import TokenCounter

log = logging.getLogger(__name__)


class Calibration:
    def __init__(self, store: Store, tokens: TokenCounter, flush_s: float = 30.0) -> None:
        self._store = store
        self._tokens = tokens
        self._flush_s = flush_s
        # Totals per model (stored + pending), and what is not stored yet.
        self._totals: dict[str, tuple[int, int]] = {}
        self._pending: dict[str, tuple[int, int]] = {}
        self._flush: asyncio.Task[None] | None = None

    async def load(self) -> None:
        for model, (estimated, reported) in (await self._store.usage.load_calibration()).items():
            self._totals[model] = (estimated, reported)
            if estimated:
                self._tokens.set_factor(model, reported / estimated)

    def note(self, model: str, estimated: int, reported: int) -> float:
        """Feed one (estimated, API-reported) input token pair; returns the new factor."""
        if estimated <= 0 or reported <= 0:
            return self._tokens.factor(model)
        est, rep = self._totals.get(model, (0, 0))
        self._totals[model] = (est + estimated, rep + reported)
        pest, prep = self._pending.get(model, (0, 0))
        self._pending[model] = (pest + estimated, prep + reported)
        self._tokens.set_factor(model, (rep + reported) / (est + estimated))
        if self._flush is None:
            self._flush = asyncio.create_task(self._flush_soon())
        return self._tokens.factor(model)

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(self._flush_s)
            await self.flush()
        except PalaverError as error:
            log.warning("could not store the token calibration: %s", error)
        finally:
            self._flush = None

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for model, (estimated, reported) in pending.items():
            await self._store.usage.add_calibration(model, estimated, reported)

    async def close(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            await asyncio.gather(self._flush, return_exceptions=True)
        await self.flush()
