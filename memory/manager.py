"""SessionManager: the one door to memory for the conversation core and the agents.

Behind it: the store (memory.store), the session cache kept coherent across processes
(memory.coherence), the group-committing writer (memory.writer), input checks
(memory.checks), spend (memory.spend), token calibration (memory.calibration),
rolling summaries (memory.summarizing) and the lifecycle (memory.lifecycle). Turns of
one session are serialized by a per-session lock; there is no global lock.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from memory.cache import SessionCache
from memory.calibration import Calibration
from memory.checks import check_metadata, check_origin, check_text, role_of
from memory.coherence import CoherentCache
from memory.context import Block, build_context
from memory.errors import InvalidMessage
from memory.lifecycle import Lifecycle, Progress
from memory.settings import MemorySettings
from memory.spend import SpendTracker
from memory.store import NewMessage, Store, utcnow
from memory.store.jobs import JobLease, JobRun
from memory.summarizer import Summarizer
from memory.summarizing import Summarizing
from memory.tokens import TokenCounter
from memory.types import (
    ChatKey,
    Context,
    GlobalStats,
    Project,
    Role,
    SessionInfo,
    SessionStats,
    SessionStatus,
    StoredMessage,
    SummaryRecord,
    Usage,
)
from memory.upkeep import upkeep
from memory.writer import MessageWriter

# Above this size, token counting moves off the event loop.
_COUNT_IN_THREAD_CHARS = 20_000


class SessionManager:
    def __init__(
        self,
        store: Store,
        tokens: TokenCounter,
        settings: MemorySettings,
        summarizer: Summarizer | None = None,
    ) -> None:
        self.store = store
        self.tokens = tokens
        self.settings = settings
        self._coherent = CoherentCache(
            store, tokens, settings.cache_size, settings.cache_verify_after_s
        )
        self.cache: SessionCache = self._coherent.cache
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        self._writer = MessageWriter(
            store, self._coherent.appended, settings.write_batch_size, self._coherent.hints
        )
        self._spend = SpendTracker(store)
        self._calibration = Calibration(store, tokens)
        self._summarizing = Summarizing(store, self._coherent, tokens, settings, summarizer)
        self._lifecycle = Lifecycle(store, self._coherent, self._summarizing, settings)

    async def start(self) -> None:
        """Load the per-model token calibration."""
        await self._calibration.load()

    async def close(self) -> None:
        """Finish pending writes and background summaries."""
        await self._writer.drain()
        await self._summarizing.wait()
        await self._calibration.close()

    # -- what the core may know of the memory settings ----------------------------

    @property
    def default_token_limit(self) -> int:
        return self.settings.token_limit

    @property
    def summarize_threshold(self) -> float:
        return self.settings.summarize_threshold

    # -- sessions -------------------------------------------------------------------

    def lock(self, session_id: int) -> asyncio.Lock:
        """The lock that serializes turns of one session (in this process)."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_id] = lock
        return lock

    async def open(self, key: ChatKey) -> SessionInfo:
        """The chat's session (its active project's, or its own), created if needed."""
        session, _project = await self.resolve(key)
        return session

    async def resolve(self, key: ChatKey) -> tuple[SessionInfo, Project | None]:
        """The chat's session and its active project, read fresh (one round trip when
        the session continues), the session created if needed.

        A session continues while it is active, idle or finalized and younger than
        ``expire_after``; after that the next message starts a new session that
        carries the old one's closing summary.
        """
        check_origin(key, None)
        session, project = await self.store.sessions.current(key)
        expire_after = timedelta(seconds=self.settings.expire_after_s)
        if (
            session is not None
            and session.status
            in (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.FINALIZED)
            and session.last_activity_at + expire_after > utcnow()
        ):
            return session, project
        if (
            session is not None
            and self.settings.carry_closing_summary
            and session.closing_summary is None
            and session.status is not SessionStatus.ENDED
        ):
            # Stale but never finalized (the job did not run in time): its memory is
            # carried all the same.
            await self._lifecycle.write_closing_summary(session.id)
        opened = await self.store.sessions.open(
            key,
            expire_after=expire_after,
            carry_summary=self.settings.carry_closing_summary,
            force_new=False,
        )
        if opened.project_id is not None and (project is None or project.id != opened.project_id):
            project = await self.store.projects.get(id=opened.project_id)
        return self._coherent.fresh(opened), project

    async def reset(self, key: ChatKey) -> SessionInfo:
        """End the chat's current session now and start a fresh one; the old is kept."""
        check_origin(key, None)
        current, _ = await self.store.sessions.current(key)
        session = await self.store.sessions.open(
            key,
            expire_after=timedelta(seconds=self.settings.expire_after_s),
            carry_summary=False,
            force_new=True,
        )
        if current is not None:
            self._coherent.drop(current.id)
        return self._coherent.fresh(session)

    async def get(self, session_id: int) -> SessionInfo:
        return await self.store.sessions.get(session_id)

    async def find_by_chat(self, key: ChatKey) -> SessionInfo | None:
        check_origin(key, None)
        session, _ = await self.store.sessions.current(key)
        return session

    async def list_sessions(self, **filters: Any) -> list[SessionInfo]:
        return await self.store.sessions.find(**filters)

    # -- projects -------------------------------------------------------------------

    async def create_project(self, name: str, **settings: Any) -> Project:
        return await self.store.projects.create(name, **settings)

    async def project(self, *, name: str | None = None, id: int | None = None) -> Project:
        return await self.store.projects.get(name=name, id=id)

    async def projects(self) -> list[Project]:
        return await self.store.projects.all()

    async def select_project(self, key: ChatKey, name: str | None) -> Project | None:
        """Make ``name`` the chat's active project (None: back to its private session)."""
        project = await self.store.projects.get(name=name) if name else None
        await self.store.projects.set_active(key, project.id if project else None)
        return project

    async def active_project(self, key: ChatKey) -> Project | None:
        _session, project = await self.store.sessions.current(key)
        return project

    # -- messages -------------------------------------------------------------------

    async def add_message(
        self,
        session_id: int,
        role: Role | str,
        text: str,
        *,
        author_id: str | None = None,
        author_name: str | None = None,
        chat: ChatKey | None = None,
        platform_message_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        usage: Usage | None = None,
        billed_to: str | None = None,
    ) -> StoredMessage:
        """Store one message, durably, before returning it.

        Idempotent on (chat, platform_message_id): a repeat returns the message
        stored the first time, marked ``duplicate``, and writes nothing.
        """
        role = role_of(role)
        check_text(text, self.settings.max_message_chars)
        platform_id = None if platform_message_id is None else str(platform_message_id)
        check_origin(chat, platform_id)
        check_metadata(metadata)
        if len(text) > _COUNT_IN_THREAD_CHARS:
            token_count = await asyncio.to_thread(self.tokens.count, text)
        else:
            token_count = self.tokens.count(text)
        if token_count > self.settings.max_message_tokens:
            raise InvalidMessage(
                f"message is too long: {token_count:,} tokens; "
                f"the limit is {self.settings.max_message_tokens:,}"
            )
        item = NewMessage(
            session_id=session_id,
            role=role,
            text=text,
            token_count=token_count,
            author_id=author_id,
            author_name=author_name[:200] if author_name else author_name,
            chat_ref=chat.ref if chat else None,
            platform_message_id=platform_id,
            metadata=metadata,
            usage=usage,
            billed_to=billed_to,
        )
        stored = await self._writer.submit(item)
        if billed_to is not None and usage is not None and not stored.duplicate:
            self._spend.charged(billed_to, usage)
        return stored

    async def add_reply(
        self,
        session_id: int,
        text: str,
        *,
        context: Context,
        model: str,
        usage: Usage | None,
        billed_to: str | None,
    ) -> StoredMessage:
        """Store a model's reply with what it cost, charged to ``billed_to``; the usage
        the API reported calibrates the token estimate of ``context``."""
        if usage is not None:
            reported = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
            self._calibration.note(model, context.raw_tokens, reported)
        return await self.add_message(
            session_id,
            Role.ASSISTANT,
            text,
            usage=usage,
            billed_to=billed_to if usage is not None else None,
        )

    def note_prompt_too_long(self, context: Context, model: str, reported: int) -> None:
        """The model counted ``reported`` tokens for ``context``: calibrate by it."""
        self._calibration.note(model, context.raw_tokens, reported)

    def note_calibration(self, model: str, estimated: int, reported: int) -> float:
        """Feed one (estimated, API-reported) input token pair; returns the new factor."""
        return self._calibration.note(model, estimated, reported)

    async def flush_calibration(self) -> None:
        await self._calibration.flush()

    async def spent_today(self, billed_to: str) -> float:
        """USD charged to ``billed_to`` since midnight UTC (cached; see memory.spend)."""
        return await self._spend.today(billed_to)

    async def build_context(
        self,
        session_id: int,
        *,
        system_prompt: str = "",
        budget: int | None = None,
        model: str | None = None,
        label_authors: bool = False,
    ) -> Context:
        """System prompt + summaries + the newest messages, within ``budget`` tokens."""
        entry = await self._coherent.entry(session_id)
        return build_context(
            session_id,
            system=Block(system_prompt, self.tokens.count_cached(system_prompt)),
            summaries=entry.summaries,
            tail=entry.tail,
            budget=budget or self.settings.token_limit,
            factor=self.tokens.factor(model),
            label_authors=label_authors,
        )

    async def messages(self, session_id: int, *, after: int = 0) -> list[StoredMessage]:
        """Every stored message of the session (for export), oldest first."""
        return await self.store.messages.read(session_id, after=after)

    async def summaries(
        self, session_id: int, *, include_superseded: bool = False
    ) -> list[SummaryRecord]:
        return await self.store.summaries.of(session_id, include_superseded=include_superseded)

    async def update_state(self, session_id: int, patch: dict[str, Any]) -> dict[str, Any]:
        check_metadata(patch)
        state, delta = await self.store.events.update_state(session_id, patch)
        self._coherent.touch(delta)
        return state

    async def record_tool_call(
        self, session_id: int, name: str, detail: dict[str, Any] | None = None
    ) -> None:
        self._coherent.touch(await self.store.events.record(session_id, "tool_call", name, detail))

    async def record_error(
        self, session_id: int, name: str, detail: dict[str, Any] | None = None
    ) -> None:
        self._coherent.touch(await self.store.events.record(session_id, "error", name, detail))

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

    # -- summaries ------------------------------------------------------------------

    async def maybe_summarize(
        self,
        session_id: int,
        *,
        system_prompt: str = "",
        token_limit: int | None = None,
        model: str | None = None,
    ) -> bool:
        """Start a background summarization if the context is at the threshold."""
        return await self._summarizing.maybe_start(
            session_id,
            system_prompt=system_prompt,
            token_limit=token_limit or self.settings.token_limit,
            model=model,
        )

    async def wait_for_summaries(self) -> None:
        await self._summarizing.wait()

    async def fold(self, session_id: int) -> SummaryRecord | None:
        """Fold the oldest ~70% of the unsummarized messages into one summary now."""
        return await self._summarizing.fold(session_id)

    async def merge_if_needed(
        self, session_id: int, *, token_limit: int | None = None, force: bool = False
    ) -> SummaryRecord | None:
        return await self._summarizing.merge_if_needed(
            session_id, token_limit=token_limit, force=force
        )

    async def upgrade_fallbacks(self, session_id: int) -> int:
        return await self._summarizing.upgrade_fallbacks(session_id)

    async def closing_summary(self, session_id: int) -> str | None:
        return await self._summarizing.closing_summary(session_id)

    # -- lifecycle (the scheduled jobs; see memory.lifecycle) --------------------------

    async def finalize_idle(
        self, *, now: datetime | None = None, batch: int = 100, progress: Progress | None = None
    ) -> dict[str, int]:
        return await self._lifecycle.finalize_idle(now=now, batch=batch, progress=progress)

    async def expire_sessions(
        self, *, now: datetime | None = None, batch: int = 100, progress: Progress | None = None
    ) -> dict[str, int]:
        return await self._lifecycle.expire(now=now, batch=batch, progress=progress)

    async def delete_expired(
        self, *, now: datetime | None = None, batch: int = 500, progress: Progress | None = None
    ) -> dict[str, int]:
        return await self._lifecycle.delete_expired(now=now, batch=batch, progress=progress)

    async def upgrade_fallback_summaries(
        self, *, batch: int = 20, progress: Progress | None = None
    ) -> dict[str, int]:
        return await self._lifecycle.upgrade_fallbacks(batch=batch, progress=progress)

    def prune(self) -> int:
        """Forget the per-user spend figures cached in this process (re-read on use)."""
        return self._spend.prune()

    async def upkeep(self, *, journal_size_limit: int) -> dict[str, int]:
        """Database upkeep (memory.upkeep): statistics, and the SQLite WAL bounded."""
        return await upkeep(self.store.db, journal_size_limit=journal_size_limit)

    # -- job runs and leases (memory.store.jobs) ------------------------------------

    async def start_job_run(self, job: str, instance: str, *, now: datetime) -> int:
        return await self.store.jobs.start(job, instance, now=now)

    async def finish_job_run(
        self,
        run_id: int,
        outcome: str,
        counts: Mapping[str, int],
        error: str | None,
        *,
        now: datetime,
    ) -> None:
        await self.store.jobs.finish(run_id, outcome, counts, error, now=now)

    async def record_job_run(
        self, job: str, instance: str, outcome: str, *, now: datetime, error: str | None
    ) -> int:
        return await self.store.jobs.record(job, instance, outcome, now=now, error=error)

    async def job_run(self, run_id: int) -> JobRun | None:
        return await self.store.jobs.get(run_id)

    async def last_job_runs(self, jobs: Sequence[str]) -> dict[str, JobRun]:
        return await self.store.jobs.latest(jobs)

    async def job_history(self, job: str, *, limit: int = 20) -> list[JobRun]:
        return await self.store.jobs.history(job, limit=limit)

    async def delete_job_runs(self, job: str, *, before: datetime, limit: int) -> int:
        return await self.store.jobs.delete_before(job, before, limit=limit)

    async def take_job_lease(
        self,
        job: str,
        holder: str,
        *,
        now: datetime,
        until: datetime,
        not_started_since: datetime | None = None,
    ) -> bool:
        return await self.store.jobs.take_lease(
            job, holder, now=now, until=until, not_started_since=not_started_since
        )

    async def renew_job_lease(self, job: str, holder: str, *, until: datetime) -> bool:
        return await self.store.jobs.renew_lease(job, holder, until=until)

    async def release_job_lease(self, job: str, holder: str, *, now: datetime) -> None:
        await self.store.jobs.release_lease(job, holder, now=now)

    async def job_leases(self) -> dict[str, JobLease]:
        return await self.store.jobs.leases()
