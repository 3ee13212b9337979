"""SessionManager: the one door to memory for the conversation core and the agents.

Behind it: the store (memory.store), the session cache kept coherent across processes
(memory.coherence), the group-committing writer (memory.writer), input checks
(memory.checks), spend (memory.spend), token calibration (memory.calibration),
rolling summaries (memory.summarizing) and the lifecycle (memory.lifecycle). Turns of
one session are serialized by a per-session lock; there is no global lock.

Two concerns are written in modules of their own and mixed in: counting and the
operator's view (memory.manager_operator), and what the scheduled jobs do
(memory.manager_jobs).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from memory.attachments import KINDS, EncodedMedia, NewAttachment, StoredAttachment, encode
from memory.cache import SessionCache
from memory.calibration import Calibration
from memory.checks import check_metadata, check_origin, check_text, check_unicode, role_of
from memory.code_sessions import CodeSession, CodeSessions
from memory.coherence import CoherentCache
from memory.context import Block, build_context
from memory.errors import InvalidMessage
from memory.lifecycle import Lifecycle, state_at
from memory.manager_jobs import JobsView
from memory.manager_operator import OperatorView
from memory.observers import Change, MessageStored, Observer, Observers
from memory.settings import MemorySettings
from memory.spend import SpendTracker
from memory.store import AppendOutcome, NewMessage, Store, utcnow
from memory.store.rows import CONTINUABLE
from memory.summarizer import Summarizer
from memory.summarizing import Summarizing
from memory.tokens import TokenCounter
from memory.transcripts import TranscriptStore
from memory.types import (
    ChatKey,
    Context,
    Delivery,
    Project,
    Role,
    SessionInfo,
    SessionStatus,
    StoredMessage,
    SummaryRecord,
    Usage,
)
from memory.writer import MessageWriter

# Above this size, token counting moves off the event loop.
_COUNT_IN_THREAD_CHARS = 20_000
# Files in the context are sent with every turn: their base64 is kept up to this size.
_ENCODED_MEDIA_BYTES = 64 * 1024 * 1024


class SessionManager(OperatorView, JobsView):
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

    async def close(self, grace: float | None = None) -> None:
        """Finish pending writes; let background summaries finish for ``grace``
        seconds (None: however long they take), then cancel them (their messages
        stay, to be summarized later): a summary never holds up a shutdown."""
        await self._writer.drain()
        await self._summarizing.wait(grace)
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
        if session is not None and self.state_of(session) in CONTINUABLE:
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

    def state_of(self, session: SessionInfo, now: datetime | None = None) -> SessionStatus:
        """The state ``session`` has reached by ``now``, stored yet or not (see
        memory.lifecycle.state_at)."""
        return state_at(session, self.settings, now or utcnow())

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
        """The project's current Claude Code session (None: the next turn starts fresh)."""
        return await self._code.current(project_id)

    async def code_session_belongs(self, project_id: int, session_id: str) -> bool:
        """Whether ``session_id`` is the project's own Claude Code session, fit to be
        resumed by it (see ``CodeSessions.belongs``)."""
        return await self._code.belongs(project_id, session_id)

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
        await self._writer.mark((None, None, message.session_id, message.seq))

    async def undeliverable(self, message: StoredMessage, parts: int = 0) -> None:
        """The chat could not take this reply (all but its first ``parts`` platform
        messages); it is kept, marked, for when it can."""
        mark = (Delivery.FAILED.value, parts or None, message.session_id, message.seq)
        await self._writer.mark(mark)

    async def partly_delivered(self, message: StoredMessage, parts: int) -> None:
        """The chat has the first ``parts`` platform messages of this reply, which is
        still owed as it was: delivery resumes after them, after a restart too."""
        delivery = message.delivery.value if message.delivery else None
        await self._writer.mark((delivery, parts or None, message.session_id, message.seq))

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
