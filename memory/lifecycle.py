"""The session lifecycle: active -> idle -> finalized -> expired -> deleted.

A session is active while messages come; quiet for ``idle_after_s`` it is idle and
then finalized, with a closing summary written; a message before ``expire_after_s``
still continues it. Past that it is expired, and the next message starts a new
session that carries the closing summary. Expired and ended (/reset) sessions are
deleted after ``retain_for_s``. The scheduled jobs call these; so may a test.
"""

from __future__ import annotations

from datetime import timedelta

from memory.coherence import CoherentCache
from memory.observers import Change, Observers
from memory.settings import MemorySettings
from memory.store import Store, utcnow
from memory.summarizing import Summarizing
from memory.types import SessionStatus


class Lifecycle:
    def __init__(
        self,
        store: Store,
        cache: CoherentCache,
        summarizing: Summarizing,
        settings: MemorySettings,
        observers: Observers | None = None,
    ) -> None:
        self._observers = observers if observers is not None else Observers()
        self._store = store
        self._cache = cache
        self._summarizing = summarizing
        self._settings = settings

    async def finalize_idle(self, limit: int = 500) -> int:
        """Active sessions quiet for ``idle_after`` become idle; idle ones get a
        closing summary and become finalized. Returns how many were finalized.

        A session that receives a message while its closing summary is written is
        left active: the summary would miss that message.
        """
        now = utcnow()
        idle = await self._store.sessions.mark_idle(
            now - timedelta(seconds=self._settings.idle_after_s)
        )
        self._observers.changed(idle, Change.IDLE, now)
        done = 0
        for session in await self._store.sessions.find(status=SessionStatus.IDLE, limit=limit):
            closing = await self._summarizing.closing_summary(session.id)
            delta = await self._store.sessions.finalize(
                session.id, expected_version=session.version, closing_summary=closing
            )
            if delta is not None:
                self._cache.apply(delta, None)
                done += 1
                self._observers.changed([session.id], Change.FINALIZED, utcnow(), session.chat_ref)
        return done

    async def write_closing_summary(self, session_id: int) -> None:
        closing = await self._summarizing.closing_summary(session_id)
        if closing:
            await self._store.sessions.set_closing_summary(session_id, closing)
            self._cache.drop(session_id)

    async def expire(self) -> int:
        """Sessions with no activity for ``expire_after`` are expired."""
        ids = await self._store.sessions.expire(
            utcnow() - timedelta(seconds=self._settings.expire_after_s)
        )
        self._observers.changed(ids, Change.EXPIRED, utcnow())
        for sid in ids:
            self._cache.drop(sid)
            if self._settings.carry_closing_summary:
                info = await self._store.sessions.get(sid)
                if info.closing_summary is None and info.message_count:
                    await self.write_closing_summary(sid)
        return len(ids)

    async def delete_expired(self) -> int:
        """Expired and ended sessions older than ``retain_for`` are deleted."""
        return await self._store.sessions.delete_ended(
            utcnow() - timedelta(seconds=self._settings.retain_for_s)
        )
