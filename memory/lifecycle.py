"""The session lifecycle: active -> idle -> finalized -> expired -> deleted.

A session is active while messages come; quiet for ``idle_after_s`` it is idle and
then finalized, with a closing summary written; a message before ``expire_after_s``
still continues it. Past that it is expired, and the next message starts a new
session that carries the closing summary. Expired and ended (/reset) sessions are
deleted after ``retain_for_s``, with everything that hangs off them.

The scheduled jobs (conversation.jobs) call these. Each works in batches of a few
hundred rows, one short transaction each, and hands every batch's counts to
``progress`` before it goes on: that is where the caller yields to the event loop
(the default just yields), keeps a tally that survives a cancellation, and renews
its lease. So deleting 100,000 messages never holds the loop, or SQLite's single
writer, for longer than one batch. Times are the caller's ``now``, so that a test
can move the clock instead of the rows.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime, timedelta

from memory.coherence import CoherentCache
from memory.errors import PalaverError, StoreUnavailable
from memory.observers import Change, Observers
from memory.settings import MemorySettings
from memory.store import Store, utcnow
from memory.store.rows import CONTINUABLE
from memory.store.sessions import SESSION_CHILDREN
from memory.summarizing import Summarizing
from memory.types import SessionInfo, SessionStatus

log = logging.getLogger(__name__)

# Called with each batch's counts before the next batch starts.
Progress = Callable[[Mapping[str, int]], Awaitable[None]]

# Sessions past retention taken together: their rows go in batches, then the group.
_SESSIONS_PER_GROUP = 100


async def _pause(_counts: Mapping[str, int]) -> None:
    await asyncio.sleep(0)


def state_at(session: SessionInfo, settings: MemorySettings, now: datetime) -> SessionStatus:
    """The state the lifecycle has brought ``session`` to at ``now``.

    The jobs store a state some time after it is reached (finalize runs every minute,
    expire every few, and not at all with the jobs off), so what a user is shown, and
    whether the next message continues the session, is decided here from the times,
    not read from the stored status alone: an active session quiet for
    ``idle_after_s`` is idle; an open one quiet for ``expire_after_s`` is expired.
    """
    quiet = now - session.last_activity_at
    if session.status in CONTINUABLE and quiet >= timedelta(seconds=settings.expire_after_s):
        return SessionStatus.EXPIRED
    if session.status is SessionStatus.ACTIVE and quiet >= timedelta(seconds=settings.idle_after_s):
        return SessionStatus.IDLE
    return session.status


class LifecycleIncomplete(PalaverError):
    """Some sessions could not be handled this time (the rest were): the job records
    this as a failure, and the next run tries them again."""

    def __init__(self, what: str, failed: int, first_error: BaseException) -> None:
        super().__init__(
            f"{failed} session{'s' if failed != 1 else ''} could not be {what}; "
            f"the first error: {type(first_error).__name__}: {first_error}"
        )
        self.failed = failed


class _Failures:
    """Per-session failures: logged, counted, and raised once the batch work is done.
    A database that is down is not one session's problem: that is raised at once."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self.first: BaseException | None = None

    def note(self, session_id: int, error: Exception) -> None:
        if isinstance(error, StoreUnavailable):
            raise error
        log.warning("session %s could not be %s: %r", session_id, self.what, error)
        self.count += 1
        self.first = self.first or error

    def check(self) -> None:
        if self.first is not None:
            raise LifecycleIncomplete(self.what, self.count, self.first)


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

    async def finalize_idle(
        self,
        *,
        now: datetime | None = None,
        batch: int = 100,
        progress: Progress | None = None,
    ) -> dict[str, int]:
        """Active sessions quiet for ``idle_after`` become idle; idle ones get a
        closing summary and become finalized. Counts: idle (newly marked),
        finalized, continued (a message came while the summary was written: left
        active, since the summary would miss it).
        """
        now = now or utcnow()
        step = progress or _pause
        totals: Counter[str] = Counter()
        quiet_since = now - timedelta(seconds=self._settings.idle_after_s)
        while marked := await self._store.sessions.mark_idle(quiet_since, limit=batch):
            self._observers.changed(marked, Change.IDLE, now)
            totals["idle"] += len(marked)
            await step({"idle": len(marked)})
        failures = _Failures("finalized")
        after = 0
        while sessions := await self._store.sessions.idle(after_id=after, limit=batch):
            done: Counter[str] = Counter()
            for session in sessions:
                after = session.id
                try:
                    closing = await self._summarizing.closing_summary(session.id)
                    delta = await self._store.sessions.finalize(
                        session.id,
                        expected_version=session.version,
                        closing_summary=closing,
                        now=now,
                    )
                except Exception as error:
                    failures.note(session.id, error)
                    continue
                if delta is None:
                    done["continued"] += 1
                    self._cache.drop(session.id)
                else:
                    done["finalized"] += 1
                    self._cache.apply(delta, None)
                    self._observers.changed([session.id], Change.FINALIZED, now, session.chat_ref)
            totals.update(done)
            await step(done)
        failures.check()
        return {"idle": 0, "finalized": 0, **totals}

    async def write_closing_summary(self, session_id: int) -> None:
        closing = await self._summarizing.closing_summary(session_id)
        if closing:
            await self._store.sessions.set_closing_summary(session_id, closing)
        self._cache.drop(session_id)

    async def expire(
        self,
        *,
        now: datetime | None = None,
        batch: int = 100,
        progress: Progress | None = None,
    ) -> dict[str, int]:
        """Sessions with no activity for ``expire_after`` are expired; those that
        never got a closing summary (the finalize job did not reach them) get one now,
        for the next session to carry. Counts: expired, summarized."""
        now = now or utcnow()
        step = progress or _pause
        totals: Counter[str] = Counter()
        failures = _Failures("summarized on expiry")
        quiet_since = now - timedelta(seconds=self._settings.expire_after_s)
        while ids := await self._store.sessions.expire(quiet_since, now=now, limit=batch):
            self._observers.changed(ids, Change.EXPIRED, now)
            done: Counter[str] = Counter(expired=len(ids))
            for sid in ids:
                self._cache.drop(sid)
                if not self._settings.carry_closing_summary:
                    continue
                try:
                    info = await self._store.sessions.get(sid)
                    if info.closing_summary is None and info.message_count:
                        await self.write_closing_summary(sid)
                        done["summarized"] += 1
                except Exception as error:
                    failures.note(sid, error)
            totals.update(done)
            await step(done)
        failures.check()
        return {"expired": 0, "summarized": 0, **totals}

    async def delete_expired(
        self,
        *,
        now: datetime | None = None,
        batch: int = 500,
        progress: Progress | None = None,
    ) -> dict[str, int]:
        """Expired and ended sessions with nothing since ``retain_for`` are deleted,
        with their rows in every table of ``SESSION_CHILDREN``: at most ``batch`` rows
        a transaction, each transaction re-checking that its sessions are still past
        retention (a session that took a message meanwhile is left alone). Counts:
        sessions, and the rows deleted per table."""
        now = now or utcnow()
        step = progress or _pause
        before = now - timedelta(seconds=self._settings.retain_for_s)
        totals: Counter[str] = Counter()
        while doomed := await self._store.sessions.past_retention(
            before, limit=_SESSIONS_PER_GROUP
        ):
            ids = [sid for sid, _ in doomed]
            for table in SESSION_CHILDREN:
                while True:
                    rows = await self._store.sessions.delete_children(
                        table, ids, before, limit=batch
                    )
                    if rows:
                        totals[table.name] += rows
                        await step({table.name: rows})
                    if rows < batch:
                        break
            gone = await self._store.sessions.delete_sessions(doomed, before)
            for sid in ids:
                self._cache.drop(sid)
            self._observers.changed(gone, Change.DELETED, now)
            deleted = len(gone)
            totals["sessions"] += deleted
            await step({"sessions": deleted})
            if not deleted:
                break  # every one came back to life since it was listed
        return {"sessions": 0, **{t.name: 0 for t in SESSION_CHILDREN}, **totals}

    async def upgrade_fallbacks(
        self, *, batch: int = 20, progress: Progress | None = None
    ) -> dict[str, int]:
        """Rewrite the summaries the extractive fallback wrote, across sessions, while
        the model summarizer answers. Counts: sessions (looked at), upgraded
        (summaries rewritten), unavailable (1 when there is no model summarizer, or
        it is resting after failures: nothing was tried)."""
        step = progress or _pause
        if not self._summarizing.can_upgrade:
            return {"sessions": 0, "upgraded": 0, "unavailable": 1}
        totals: Counter[str] = Counter()
        after = 0
        while self._summarizing.can_upgrade and (
            ids := await self._store.sessions.with_fallback_summaries(after_id=after, limit=batch)
        ):
            done: Counter[str] = Counter()
            for sid in ids:
                after = sid
                done["sessions"] += 1
                done["upgraded"] += await self._summarizing.upgrade_fallbacks(sid)
                if not self._summarizing.can_upgrade:
                    break
            totals.update(done)
            await step(done)
        unavailable = 0 if self._summarizing.can_upgrade else 1
        return {"sessions": 0, "upgraded": 0, **totals, "unavailable": unavailable}
