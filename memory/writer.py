"""Group commit for add_message.

Every add_message must be durable before it returns, and SQLite has one writer. So
concurrent calls queue here and one task commits them together: the first caller
starts a transaction, everyone who arrives while it runs rides the next one. There
is no timer: a lone caller commits at once; under load, batches grow by themselves.
A caller that is cancelled after submitting still gets its message stored.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

from memory.errors import PalaverError, StoreUnavailable
from memory.store import AppendOutcome, NewMessage, Store
from memory.store.rows import Mark
from memory.types import StoredMessage

log = logging.getLogger(__name__)


class MessageWriter:
    def __init__(
        self,
        store: Store,
        on_commit: Callable[[list[NewMessage], AppendOutcome], None],
        max_batch: int = 256,
        hints: Mapping[int, tuple[int, int]] | None = None,
    ) -> None:
        self._store = store
        self._hints = hints
        self._on_commit = on_commit
        self._max_batch = max_batch
        self._pending: list[tuple[NewMessage, asyncio.Future[StoredMessage]]] = []
        self._marks: list[tuple[Mark, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: NewMessage) -> StoredMessage:
        future: asyncio.Future[StoredMessage] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._start()
        # A caller cancelled now cancels only its future: the item stays queued and
        # is stored all the same.
        return await future

    async def mark(self, mark: Mark) -> None:
        """Change what a stored message is owed, committed with the next batch."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._marks.append((mark, future))
        self._start()
        await future

    def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(), name="palaver-message-writer")

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed."""
        while self._task is not None:
            await asyncio.shield(self._task)

    async def _drain(self) -> None:
        try:
            while self._pending or self._marks:
                # Let callers woken by the last commit submit again: they ride this batch.
                await asyncio.sleep(0)
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                marking, self._marks = self._marks, []
                items = [item for item, _ in batch]
                marks = [mark for mark, _ in marking]
                # A reply settles the question it answers, in the same transaction.
                marks += [(None, None, i.session_id, i.settles) for i in items if i.settles]
                waiting: list[asyncio.Future[Any]] = [f for _, f in batch]
                waiting += (f for _, f in marking)
                try:
                    outcome = await self._store.messages.append(items, self._hints, marks)
                except PalaverError as error:
                    for future in waiting:
                        if not future.done():
                            future.set_exception(error)
                    continue
                except Exception as error:  # a bug or driver fault: fail loudly, per caller
                    log.exception("message batch failed")
                    for future in waiting:
                        if not future.done():
                            future.set_exception(StoreUnavailable(f"storing failed: {error!r}"))
                    continue
                for _, done in marking:
                    if not done.done():
                        done.set_result(None)
                self._on_commit(items, outcome)
                for (_, future), result in zip(batch, outcome.results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._task = None
