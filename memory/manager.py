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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import IntegrityError

from memory.admin_types import (
    InterfaceUsage,
    Restored,
    SessionFilter,
    SessionImport,
    SessionTotals,
)
from memory.attachments import KINDS, EncodedMedia, NewAttachment, StoredAttachment, encode
from memory.cache import SessionCache
from memory.calibration import Calibration
from memory.checks import check_metadata, check_origin, check_text, check_unicode, role_of
from memory.code_sessions import CodeSession, CodeSessions
from memory.coherence import CoherentCache
from memory.context import Block, build_context
from memory.errors import InvalidMessage
from memory.lifecycle import Lifecycle, Progress
from memory.observers import Change, MessageStored, Observer, Observers
from memory.settings import MemorySettings
from memory.spend import SpendTracker
from memory.store import AppendOutcome, NewMessage, Store, utcnow
from memory.store.jobs import JobLease, JobRun
from memory.store.rows import CONTINUABLE
from memory.summarizer import Summarizer
from memory.summarizing import Summarizing
from memory.tokens import TokenCounter
from memory.transcripts import TranscriptStore
from memory.types import (
    ChatKey,
    Context,
    Delivery,
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
# Files in the context are sent with every turn: their base64 is kept up to this size.
_ENCODED_MEDIA_BYTES = 64 * 1024 * 1024
# A blob no message links to is deleted once unused for this long (an append that is
# about to link to it has had ample time).
_ORPHAN_GRACE = timedelta(hours=1)


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
        self.observers = Observers()  # see observe()
        self._writer = MessageWriter(
            store, self._committed, settings.write_batch_size, self._coherent.hints
        )
        self._spend = SpendTracker(store)
        self._calibration = Calibration(store, tokens)
        self._summarizing = Summarizing(
            store, self._coherent, tokens, settings, summarizer, self.observers
        )
        self._lifecycle = Lifecycle(
            store, self._coherent, self._summarizing, settings, self.observers
        )
        self._encoded = EncodedMedia(_ENCODED_MEDIA_BYTES)
        self._code = CodeSessions(store.db)
        # The SDK's session store, on this database: the Claude Code agent resumes
        # projects' sessions from it (wired in bots/app.py).
        self.transcripts = TranscriptStore(store.db)

    async def start(self) -> None:
        """Load the per-model token calibration."""
        await self._calibration.load()

    def observe(self, callback: Observer) -> Callable[[], None]:
        """Be told of every message stored, summary written and change of a session's
        state in this process (memory.observers); returns the function that stops it."""
        return self.observers.add(callback)

    def _committed(self, items: list[NewMessage], outcome: AppendOutcome) -> None:
        """Right after a batch commits: the cache first, then whoever watches."""
        self._coherent.appended(items, outcome)
        if self.observers:
            for result in outcome.results:
                if isinstance(result, StoredMessage) and not result.duplicate:
                    self.observers.emit(MessageStored(result))

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

    @property
    def expire_after_s(self) -> int:
        return self.settings.expire_after_s

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
        if self.observers and (session is None or session.id != opened.id):
            if session is not None and session.status in CONTINUABLE:
                self.observers.changed([session.id], Change.EXPIRED, utcnow(), session.chat_ref)
            self.observers.changed([opened.id], Change.CREATED, opened.created_at, key.ref)
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
        if self.observers:
            if current is not None and current.status in CONTINUABLE:
                self.observers.changed([current.id], Change.ENDED, session.created_at, key.ref)
            self.observers.changed([session.id], Change.RESET, session.created_at, key.ref)
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

    async def update_project(self, project_id: int, **values: Any) -> Project:
        """Change a project's settings; every process sees them from its next turn."""
        return await self.store.projects.update(project_id, **values)

    # -- Claude Code sessions of projects -------------------------------------------

    async def code_session(self, project_id: int) -> CodeSession | None:
        """The Claude Code session the project's next turn resumes (None: fresh)."""
        return await self._code.current(project_id)

    async def record_code_turn(
        self,
        project_id: int,
        session_id: str,
        *,
        chat: ChatKey,
        usage: Usage,
        num_turns: int,
        context_tokens: int,
        lost: str | None,
    ) -> CodeSession:
        return await self._code.record_turn(
            project_id,
            session_id,
            chat_ref=chat.ref,
            usage=usage,
            num_turns=num_turns,
            context_tokens=context_tokens,
            lost=lost,
        )

    async def reset_code_session(self, project_id: int) -> CodeSession | None:
        """The next turn starts a fresh Claude Code session; the old one is kept."""
        return await self._code.reset(project_id)

    async def code_history(self, project_id: int, *, limit: int = 20) -> list[CodeSession]:
        return await self._code.history(project_id, limit=limit)

    async def code_transcript(self, project_id: int) -> dict[str, list[dict[str, Any]]]:
        """Every Claude Code transcript entry of the project, by session id (export)."""
        history = await self._code.history(project_id, limit=1000)
        return {s.session_id: await self.transcripts.entries(s.session_id) for s in history}

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
        delivery: Delivery | None = None,
        settles: int | None = None,
        attachments: Sequence[NewAttachment] = (),
    ) -> StoredMessage:
        """Store one message, durably, before returning it.

        Idempotent on (chat, platform_message_id): a repeat returns the message
        stored the first time, marked ``duplicate``, and writes nothing.

        ``attachments`` (images, PDFs) are stored with it: their bytes once per
        content, linked to the message in the same transaction as the message; what
        they cost in tokens is counted in its token count (the text alone is held
        to ``max_message_tokens``).
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
        if attachments:
            token_count += await self._keep_files(attachments)
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
            delivery=delivery,
            settles=settles,
            attachments=tuple(attachments),
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
        context: Context | None,
        model: str,
        usage: Usage | None,
        billed_to: str | None,
        prompt_tokens: int | None = None,
        question: StoredMessage | None = None,
        chat: ChatKey | None = None,
    ) -> StoredMessage:
        """Store a model's reply with what it cost, charged to ``billed_to``; the usage
        the API reported calibrates the token estimate of ``context``.

        ``prompt_tokens`` is the prompt as the API counted it for the answering call
        (``usage`` may include failed attempts before it).

        A reply to ``question`` for ``chat`` is stored "pending" (owed to that chat
        until ``settle``d), and settles the question in the same transaction.
        """
        if prompt_tokens is not None and context is not None:
            self._calibration.note(model, context.raw_tokens, prompt_tokens)
        reply_to = question.platform_message_id if question is not None else None
        return await self.add_message(
            session_id,
            Role.ASSISTANT,
            text,
            usage=usage,
            billed_to=billed_to if usage is not None else None,
            chat=chat,
            metadata={"reply_to": reply_to} if reply_to else None,
            delivery=Delivery.PENDING if chat is not None else None,
            settles=question.seq if question is not None else None,
        )

    # -- what is owed to chats ------------------------------------------------------

    async def settle(self, message: StoredMessage) -> None:
        """Nothing more is owed for ``message``: a reply was delivered, or a question
        was answered otherwise (an error, a refusal the user was told)."""
        await self._writer.mark((None, message.session_id, message.seq))

    async def undeliverable(self, message: StoredMessage) -> None:
        """The chat could not take this reply; it is kept, marked, for when it can."""
        await self._writer.mark((Delivery.FAILED.value, message.session_id, message.seq))

    async def owed(self, since: datetime, *, chat: ChatKey | None = None) -> list[StoredMessage]:
        """Questions not answered and replies not delivered, newer than ``since``,
        oldest first (those of one ``chat``): what a restart must still do."""
        return await self.store.messages.owed(since, chat.ref if chat else None)

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
            media=entry.media > 0,
        )

    async def messages(
        self, session_id: int, *, after: int = 0, limit: int | None = None
    ) -> list[StoredMessage]:
        """The session's stored messages after seq ``after``, oldest first (at most
        ``limit``: exports read a long session page by page)."""
        return await self.store.messages.read(session_id, after=after, limit=limit)

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
        self,
        session_id: int,
        name: str,
        detail: dict[str, Any] | None = None,
        *,
        usage: Usage | None = None,
        billed_to: str | None = None,
    ) -> None:
        """Record an error; ``usage`` is what the failed call cost all the same, charged
        to ``billed_to`` (so that the spend caps count it)."""
        delta = await self.store.events.record(
            session_id, "error", name, detail, usage=usage, billed_to=billed_to
        )
        self._coherent.touch(delta)
        if usage is not None and billed_to is not None:
            self._spend.charged(billed_to, usage)

    # -- attachments (images and PDFs kept with their message) ---------------------

    async def _keep_files(self, attachments: Sequence[NewAttachment]) -> int:
        """Check and store the blobs of a message's files; what they cost in tokens."""
        for a in attachments:
            if a.kind not in KINDS or not a.data or a.tokens < 0:
                raise InvalidMessage(f"{a.name!r} is not a file memory can keep")
            check_unicode(a.name, "the file name")
        await self.store.attachments.put_blobs(attachments)
        return sum(a.tokens for a in attachments)

    async def attachment_usage(self, key: ChatKey) -> tuple[int, frozenset[str]]:
        """The bytes of the files the chat's current session keeps, and their content
        hashes (a file kept already costs nothing more)."""
        check_origin(key, None)
        session, _ = await self.store.sessions.current(key)
        if session is None:
            return 0, frozenset()
        return await self.store.attachments.usage(session.id)

    async def attachments(
        self, session_id: int, *, after: int = 0, through: int | None = None
    ) -> dict[int, list[StoredAttachment]]:
        """The files of a session's messages after seq ``after``, by seq (exports)."""
        return await self.store.attachments.of_session(session_id, after=after, through=through)

    async def attachment_data(self, sha256: str) -> bytes | None:
        """The bytes of a kept file, by content hash."""
        return (await self.store.attachments.data([sha256])).get(sha256)

    async def media_for(self, context: Context) -> dict[str, str]:
        """The base64 data of the files ``context`` sends, by content hash; a file no
        longer kept is missing (an agent then sends its message's text alone)."""
        refs = context.media
        if not refs:
            return {}
        found: dict[str, str] = {}
        missing: list[str] = []
        for ref in refs:
            encoded = self._encoded.get(ref[0])
            if encoded is None:
                missing.append(ref[0])
            else:
                found[ref[0]] = encoded
        if missing:
            loaded = await self.store.attachments.data(missing)
            for sha256, data in loaded.items():
                encoded = (
                    encode(data) if len(data) < 256_000 else await asyncio.to_thread(encode, data)
                )
                self._encoded.put(sha256, encoded)
                found[sha256] = encoded
        return found

    async def delete_orphaned_attachments(self) -> int:
        """Delete the blobs no message links to any more (their messages were deleted
        by retention), unused for an hour; returns how many. For the cleanup job,
        after ``delete_expired``."""
        deleted = 0
        while True:
            batch = await self.store.attachments.delete_orphans(utcnow() - _ORPHAN_GRACE)
            deleted += batch
            if batch < 500:
                return deleted

    async def delete_unused_code_sessions(
        self, *, now: datetime | None = None, batch: int = 500, progress: Progress | None = None
    ) -> dict[str, int]:
        """Claude Code sessions a project no longer resumes (reset, replaced or lost)
        and unused for ``retain_for_s`` are deleted with their transcripts: the
        transcripts first, so that a failure half-way leaves the row to try again.
        For the cleanup job. Counts: code_sessions, transcript_lines."""
        before = (now or utcnow()) - timedelta(seconds=self.settings.retain_for_s)
        totals: Counter[str] = Counter()
        while unused := await self._code.unused_since(before, limit=batch):
            ids = [session.session_id for session in unused]
            lines = await self.transcripts.delete_sessions(ids)
            done = Counter(
                code_sessions=await self._code.delete_sessions(ids), transcript_lines=lines
            )
            totals.update(done)
            if progress is not None:
                await progress(done)
            if len(unused) < batch:
                break
        return {"code_sessions": 0, "transcript_lines": 0, **totals}

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
        try:
            restored = await self.store.admin.restore(item)
        except IntegrityError:  # a concurrent import of the same export, or of its id
            restored = await self.store.admin.restore(item)
        if restored.created:
            info = restored.session
            self.observers.changed([info.id], Change.IMPORTED, utcnow(), info.chat_ref)
        return restored

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
