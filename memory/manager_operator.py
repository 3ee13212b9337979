"""Counting and the operator's view: what the memory holds, for /status, /stats,
the HTTP API and the command line. Part of ``SessionManager`` (memory.manager): a
mixin, so that the one door stays one class in modules of one concern each.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from memory.admin_types import (
    ImportAttachment,
    InterfaceUsage,
    Restored,
    SessionFilter,
    SessionImport,
    SessionTotals,
)
from memory.attachments import KINDS
from memory.cache import SessionCache
from memory.checks import check_metadata, check_text, check_unicode
from memory.coherence import CoherentCache
from memory.errors import InvalidMessage
from memory.observers import Change, Observers
from memory.settings import MemorySettings
from memory.store import Store, utcnow
from memory.summarizing import Summarizing
from memory.types import GlobalStats, SessionInfo, SessionStats, Usage


class OperatorView:
    # What SessionManager provides.
    store: Store
    settings: MemorySettings
    cache: SessionCache
    observers: Observers
    _coherent: CoherentCache
    _summarizing: Summarizing
    lock: Callable[[int], asyncio.Lock]

    # -- stats ----------------------------------------------------------------------

    async def session_stats(
        self,
        session_id: int,
        *,
        token_limit: int | None = None,
        system_prompt: str = "",
        model: str | None = None,
    ) -> SessionStats:
        """The session's counters, and its context counted as the summary trigger
        counts it (system prompt included, calibrated for ``model``)."""
        info = await self.store.sessions.get(session_id)
        entry = await self._coherent.entry(session_id)
        limit = token_limit or self.settings.token_limit
        estimate = self._summarizing.estimate(entry, system_prompt, model)
        return SessionStats(
            session_id=info.id,
            status=info.status,
            message_count=info.message_count,
            summaries=len(entry.summary_ids),
            summarized_through=info.summarized_through,
            context_tokens=estimate,
            token_limit=limit,
            budget_used=estimate / limit,
            tool_calls=info.tool_calls,
            errors=info.errors,
            usage=info.usage,
        )

    async def global_stats(self) -> GlobalStats:
        raw = await self.store.usage.global_counts()
        sessions = raw["sessions_total"]
        return GlobalStats(
            sessions_total=sessions,
            sessions_active=raw["sessions_active"],
            messages=raw["messages"],
            input_tokens=raw["input_tokens"],
            output_tokens=raw["output_tokens"],
            cache_read_tokens=raw["cache_read_tokens"],
            cache_write_tokens=raw["cache_write_tokens"],
            cost_usd=raw["cost_usd"],
            by_interface=raw["by_interface"],
            average_session_messages=raw["messages"] / sessions if sessions else 0.0,
            cache_hits=self.cache.hits,
            cache_misses=self.cache.misses,
        )

    # -- the operator's view (the HTTP API and the command line) --------------------

    async def sessions_page(
        self, where: SessionFilter, *, before_id: int | None = None, limit: int = 50
    ) -> list[SessionInfo]:
        """Sessions matching ``where``, newest first, ids below ``before_id``."""
        return await self.store.admin.page(where, before_id=before_id, limit=limit)

    async def sessions_totals(self, where: SessionFilter) -> SessionTotals:
        return await self.store.admin.totals(where)

    async def summary_counts(self, session_ids: Sequence[int]) -> dict[int, int]:
        return await self.store.admin.summary_counts(session_ids)

    async def sessions_by_status(self) -> dict[str, int]:
        return await self.store.admin.by_status()

    async def usage_by_interface(self) -> list[InterfaceUsage]:
        return await self.store.admin.by_interface()

    async def usage_by_day(self, since: datetime | None = None) -> dict[str, Usage]:
        """Reported tokens and cost per UTC day ("YYYY-MM-DD")."""
        return await self.store.usage.totals("day", since=since)

    def cache_counts(self) -> tuple[int, int]:
        """(hits, misses) of this process's session cache since start."""
        return self.cache.hits, self.cache.misses

    async def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers."""
        await self.store.admin.ping()

    async def end_session(self, session_id: int) -> SessionInfo:
        """End a session that is still going (as /reset does for its chat)."""
        async with self.lock(session_id):
            info = await self.store.admin.end(session_id)
        self._coherent.drop(session_id)
        self.observers.changed([session_id], Change.ENDED, utcnow(), info.chat_ref)
        return info

    async def delete_session(self, session_id: int) -> SessionInfo:
        """Delete a session with its messages, summaries and events, now."""
        async with self.lock(session_id):
            info = await self.store.admin.delete(session_id)
        self._coherent.drop(session_id)
        self._coherent.hints.pop(session_id, None)
        self.observers.changed([session_id], Change.DELETED, utcnow(), info.chat_ref)
        return info

    async def import_session(self, item: SessionImport) -> Restored:
        """Restore an exported session, all of it or nothing (``created`` False: this
        export is here already)."""
        for text in (item.carried_summary, item.closing_summary):
            if text is not None:
                check_text(text, self.settings.max_message_chars)
        for message in item.messages:
            check_text(message.text, self.settings.max_message_chars)
            check_metadata(message.metadata)
        carried = [a for m in item.messages for a in m.attachments if a.data is not None]
        if carried:  # hashing is CPU-bound: off the loop
            await asyncio.to_thread(_check_blobs, carried)
        try:
            restored = await self.store.admin.restore(item)
        except IntegrityError:  # a concurrent import of the same export, or of its id
            restored = await self.store.admin.restore(item)
        if restored.created:
            info = restored.session
            self.observers.changed([info.id], Change.IMPORTED, utcnow(), info.chat_ref)
        return restored


def _check_blobs(files: Sequence[ImportAttachment]) -> None:
    """A blob is kept under its content hash: bytes that are not what the hash says
    would be sent to the model as another file (the core checked them; memory keeps
    its own rule)."""
    for a in files:
        if a.kind not in KINDS or not a.data:
            raise InvalidMessage(f"{a.name!r} is not a file memory can keep")
        check_unicode(a.name, "the file name")
        if hashlib.sha256(a.data).hexdigest() != a.sha256:
            raise InvalidMessage(f"the bytes of {a.name!r} do not match its sha256")
