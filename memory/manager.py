"""SessionManager: the one API every interface and agent uses for memory.

Reads come from an LRU cache of hot sessions; writes go to the database first and
are applied to the cache only when the row version shows no other process wrote in
between. Turns of one session are serialized by a per-session lock; there is no
global lock. Summarization runs in background tasks, off the reply path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from memory.cache import CachedSession, SessionCache, carried_block
from memory.context import TOKENS, Block, TailMessage, build_context
from memory.errors import InvalidMessage, PalaverError
from memory.settings import MemorySettings
from memory.store import AppendOutcome, NewMessage, SessionDelta, Snapshot, Store, utcnow
from memory.summarizer import ExtractiveSummarizer, Summarizer, SummaryInput, SummaryText
from memory.tokens import MESSAGE_OVERHEAD, TokenCounter
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
from memory.writer import MessageWriter

log = logging.getLogger(__name__)

# Above this size, token counting moves off the event loop.
_COUNT_IN_THREAD_CHARS = 20_000
# Pending calibration samples are stored at most this often.
_CALIBRATION_FLUSH_S = 30.0
# Sessions whose (last_seq, version) this process remembers for fast appends.
_MAX_HINTS = 100_000
# A user's spend today is re-read from the database at most this often.
_SPEND_REFRESH_S = 30.0


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
        self.extractive = ExtractiveSummarizer(tokens)
        self.summarizer: Summarizer = summarizer or self.extractive
        self.cache = SessionCache(settings.cache_size)
        self._locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()
        # (last_seq, version) of sessions as this process last committed them: lets a
        # batch skip reading session rows (see Store.append_messages).
        self._hints: dict[int, tuple[int, int]] = {}
        self._writer = MessageWriter(
            store, self._apply_appended, settings.write_batch_size, self._hints
        )
        self._summarizing: dict[int, asyncio.Task[None]] = {}
        # Sessions being loaded into the cache -> newest version seen meanwhile.
        self._loading: dict[int, int] = {}
        # Calibration: totals per model (stored + pending) and what is not stored yet.
        self._calibration: dict[str, tuple[int, int]] = {}
        self._calibration_pending: dict[str, tuple[int, int]] = {}
        self._calibration_flush: asyncio.Task[None] | None = None
        # Spend per user today: (UTC day, USD, monotonic time read from the database).
        self._spend: dict[str, tuple[datetime, float, float]] = {}

    async def start(self) -> None:
        """Load the per-model token calibration."""
        for model, (estimated, reported) in (await self.store.load_calibration()).items():
            self._calibration[model] = (estimated, reported)
            if estimated:
                self.tokens.set_factor(model, reported / estimated)

    async def close(self) -> None:
        """Finish pending writes and background summaries."""
        await self._writer.drain()
        await self.wait_for_summaries()
        if self._calibration_flush is not None:
            self._calibration_flush.cancel()
            await asyncio.gather(self._calibration_flush, return_exceptions=True)
        await self.flush_calibration()

    # -- sessions -------------------------------------------------------------------

    def lock(self, session_id: int) -> asyncio.Lock:
        """The lock that serializes turns of one session (in this process)."""
        lock = self._locks.get(session_id)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[session_id] = lock
        return lock

    async def open(self, key: ChatKey) -> SessionInfo:
        """The chat's session (its active project's, or its own), created if needed.

        A session continues while it is active, idle or finalized and younger than
        ``expire_after``; after that the next message starts a new session that
        carries the old one's closing summary.
        """
        session, _project = await self.store.current_session(key)
        expire_after = timedelta(seconds=self.settings.expire_after_s)
        if (
            session is not None
            and session.status
            in (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.FINALIZED)
            and session.last_activity_at + expire_after > utcnow()
        ):
            return session
        if (
            session is not None
            and self.settings.carry_closing_summary
            and session.closing_summary is None
            and session.status is not SessionStatus.ENDED
        ):
            # Stale but never finalized (the job did not run in time): its memory is
            # carried all the same.
            await self._write_closing_summary(session.id)
        return self._fresh(
            await self.store.open_session(
                key,
                expire_after=expire_after,
                carry_summary=self.settings.carry_closing_summary,
                force_new=False,
            )
        )

    async def reset(self, key: ChatKey) -> SessionInfo:
        """End the chat's current session now and start a fresh one; the old is kept."""
        current, _ = await self.store.current_session(key)
        session = await self.store.open_session(
            key,
            expire_after=timedelta(seconds=self.settings.expire_after_s),
            carry_summary=False,
            force_new=True,
        )
        if current is not None:
            self.cache.drop(current.id)
        return self._fresh(session)

    def _fresh(self, session: SessionInfo) -> SessionInfo:
        """Cache a session this process just read or created while it is still empty.

        Its snapshot is all in ``session`` (no messages, no summaries), so the first
        turn of a new chat needs no snapshot read, and its first append can take the
        version-checked path. If another process wrote to it meanwhile, the version
        check catches that as for any cached session.
        """
        if session.message_count == 0 and session.last_seq == 0:
            if session.id not in self._hints:
                self._hints[session.id] = (session.last_seq, session.version)
            if self.cache.peek(session.id) is None:
                self.cache.put(self._cache_entry(Snapshot.empty(session)))
        return session

    def _cache_entry(self, snapshot: Snapshot) -> CachedSession:
        carried = snapshot.session.carried_summary
        tokens = self.tokens.count_cached(carried_block(carried)) if carried else 0
        return CachedSession(snapshot, tokens)

    async def get(self, session_id: int) -> SessionInfo:
        return await self.store.get_session(session_id)

    async def find_by_chat(self, key: ChatKey) -> SessionInfo | None:
        session, _ = await self.store.current_session(key)
        return session

    async def list_sessions(self, **filters: Any) -> list[SessionInfo]:
        return await self.store.list_sessions(**filters)

    # -- projects -------------------------------------------------------------------

    async def create_project(self, name: str, **settings: Any) -> Project:
        return await self.store.create_project(name, **settings)

    async def select_project(self, key: ChatKey, name: str | None) -> Project | None:
        """Make ``name`` the chat's active project (None: back to its private session)."""
        project = await self.store.get_project(name=name) if name else None
        await self.store.set_active_project(key, project.id if project else None)
        return project

    async def active_project(self, key: ChatKey) -> Project | None:
        _session, project_id = await self.store.current_session(key)
        return await self.store.get_project(id=project_id) if project_id else None

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
        role = self._role(role)
        self._check_text(text)
        if platform_message_id is not None and chat is None:
            raise InvalidMessage("a platform message id needs the chat it belongs to")
        if platform_message_id is not None and len(str(platform_message_id)) > 100:
            raise InvalidMessage("platform message id is longer than 100 characters")
        if metadata is not None:
            try:
                json.dumps(metadata)
            except (TypeError, ValueError) as error:
                raise InvalidMessage(f"message metadata is not JSON: {error}") from None
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
            platform_message_id=None if platform_message_id is None else str(platform_message_id),
            metadata=metadata,
            usage=usage,
            billed_to=billed_to,
        )
        stored = await self._writer.submit(item)
        if billed_to is not None and usage is not None and not stored.duplicate:
            cached = self._spend.get(billed_to)
            if cached is not None:
                self._spend[billed_to] = (cached[0], cached[1] + usage.cost_usd, cached[2])
        return stored

    async def spent_today(self, billed_to: str) -> float:
        """USD charged to ``billed_to`` since midnight UTC.

        Read from the database at most every ``_SPEND_REFRESH_S`` seconds per user
        (so spend by other processes shows within that time), plus this process's own
        spend as it happens.
        """
        day = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
        cached = self._spend.get(billed_to)
        now = time.monotonic()
        if cached is not None and cached[0] == day and now - cached[2] < _SPEND_REFRESH_S:
            return cached[1]
        spent = await self.store.spend(billed_to=billed_to, since=day)
        if len(self._spend) > 10_000:
            self._spend.clear()
        self._spend[billed_to] = (day, spent, now)
        return spent

    @staticmethod
    def _role(role: Role | str) -> Role:
        try:
            return Role(role)
        except ValueError:
            allowed = ", ".join(r.value for r in Role)
            raise InvalidMessage(f"unknown role {role!r}; expected one of {allowed}") from None

    def _check_text(self, text: object) -> None:
        if not isinstance(text, str):
            raise InvalidMessage(f"message is not text ({type(text).__name__})")
        if not text.strip():
            raise InvalidMessage("message is empty")
        limit = self.settings.max_message_chars
        if len(text) > limit:
            raise InvalidMessage(
                f"message is too long: {len(text):,} characters; the limit is {limit:,}"
            )
        if "\x00" in text:
            raise InvalidMessage("message contains NUL bytes, which cannot be stored as text")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidMessage(
                    "message is not valid Unicode text (it has a lone surrogate)"
                ) from None

    def _apply_appended(self, items: list[NewMessage], outcome: AppendOutcome) -> None:
        """Runs right after a batch commits: extend cached tails whose version follows."""
        appended: dict[int, list[TailMessage]] = {}
        last_seqs: dict[int, int] = {}
        cached = self.cache.peek
        for item, result in zip(items, outcome.results, strict=True):
            if isinstance(result, StoredMessage) and not result.duplicate:
                sid = item.session_id
                last_seqs[sid] = result.seq
                if cached(sid) is not None:
                    appended.setdefault(sid, []).append(
                        (item.role.value, item.token_count, item.text, item.author_name)
                    )
        if len(self._hints) > _MAX_HINTS:
            self._hints.clear()
        for sid, delta in outcome.deltas.items():
            news = appended.get(sid, [])
            if sid in last_seqs:
                self._hints[sid] = (last_seqs[sid], delta.version_after)

            def extend(entry: CachedSession, news: list[TailMessage] = news) -> None:
                entry.tail.extend(news)
                entry.last_seq += len(news)
                entry.message_count += len(news)
                entry.unsummarized_tokens += sum(m[TOKENS] for m in news)

            self._apply(delta, extend)

    def _apply(self, delta: SessionDelta, mutate: Any) -> None:
        hint = self._hints.get(delta.session_id)
        if hint is not None and hint[1] == delta.version_before:
            self._hints[delta.session_id] = (hint[0], delta.version_after)
        if delta.session_id in self._loading:
            self._loading[delta.session_id] = max(
                self._loading[delta.session_id], delta.version_after
            )
        entry = self.cache.peek(delta.session_id)
        if entry is None:
            return
        if entry.version != delta.version_before or mutate is None:
            self.cache.drop(delta.session_id)
            return
        mutate(entry)
        entry.version = delta.version_after
        entry.verified_at = time.monotonic()

    async def _entry(self, session_id: int) -> CachedSession:
        """The cached session, verified against the row version when it is not fresh."""
        entry = self.cache.get(session_id)
        if entry is not None:
            if time.monotonic() - entry.verified_at < self.settings.cache_verify_after_s:
                self.cache.hits += 1
                return entry
            if await self.store.session_version(session_id) == entry.version:
                entry.verified_at = time.monotonic()
                self.cache.hits += 1
                return entry
            self.cache.drop(session_id)
        self.cache.misses += 1
        entry = None
        for _attempt in range(5):
            self._loading[session_id] = -1
            try:
                snapshot = await self.store.snapshot(session_id)
                seen = self._loading[session_id]
            finally:
                self._loading.pop(session_id, None)
            entry = self._cache_entry(snapshot)
            if seen <= entry.version:
                self.cache.put(entry)
                return entry
        assert entry is not None
        return entry  # under constant writes: correct as of its read, not cached

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
        entry = await self._entry(session_id)
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
        return await self.store.messages(session_id, after=after)

    async def summaries(
        self, session_id: int, *, include_superseded: bool = False
    ) -> list[SummaryRecord]:
        return await self.store.summaries(session_id, include_superseded=include_superseded)

    async def clear_messages(self, session_id: int) -> None:
        """Start the context afresh but keep summaries; messages stay exportable."""
        delta = await self.store.clear_context(session_id)
        self._apply(delta, None)

    async def update_state(self, session_id: int, patch: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(patch)
        except (TypeError, ValueError) as error:
            raise InvalidMessage(f"session state must be JSON: {error}") from None
        state, delta = await self.store.update_state(session_id, patch)
        self._apply(delta, lambda entry: None)
        return state

    async def record_tool_call(
        self, session_id: int, name: str, detail: dict[str, Any] | None = None
    ) -> None:
        delta = await self.store.record_event(session_id, "tool_call", name, detail)
        self._apply(delta, lambda entry: None)

    async def record_error(
        self, session_id: int, name: str, detail: dict[str, Any] | None = None
    ) -> None:
        delta = await self.store.record_event(session_id, "error", name, detail)
        self._apply(delta, lambda entry: None)

    def note_calibration(self, model: str, estimated: int, reported: int) -> float:
        """Feed one (estimated, API-reported) input token pair; returns the new factor.

        Called every turn, so it only adds in memory; the totals reach the database
        in the background at most every ``_CALIBRATION_FLUSH_S`` seconds and on close.
        """
        if estimated <= 0 or reported <= 0:
            return self.tokens.factor(model)
        est, rep = self._calibration.get(model, (0, 0))
        self._calibration[model] = (est + estimated, rep + reported)
        pest, prep = self._calibration_pending.get(model, (0, 0))
        self._calibration_pending[model] = (pest + estimated, prep + reported)
        self.tokens.set_factor(model, (rep + reported) / (est + estimated))
        if self._calibration_flush is None:
            self._calibration_flush = asyncio.create_task(self._flush_soon())
        return self.tokens.factor(model)

    async def record_calibration(self, model: str, estimated: int, reported: int) -> float:
        """Like note_calibration, but stored before it returns."""
        factor = self.note_calibration(model, estimated, reported)
        await self.flush_calibration()
        return factor

    async def _flush_soon(self) -> None:
        try:
            await asyncio.sleep(_CALIBRATION_FLUSH_S)
            await self.flush_calibration()
        except PalaverError as error:
            log.warning("could not store the token calibration: %s", error)
        finally:
            self._calibration_flush = None

    async def flush_calibration(self) -> None:
        pending, self._calibration_pending = self._calibration_pending, {}
        for model, (estimated, reported) in pending.items():
            await self.store.add_calibration(model, estimated, reported)

    # -- stats ----------------------------------------------------------------------

    async def session_stats(
        self, session_id: int, *, token_limit: int | None = None
    ) -> SessionStats:
        info = await self.store.get_session(session_id)
        entry = await self._entry(session_id)
        limit = token_limit or self.settings.token_limit
        context_tokens = self._context_tokens(entry, 0)
        return SessionStats(
            session_id=info.id,
            status=info.status,
            message_count=info.message_count,
            summaries=len(entry.summary_ids),
            summarized_through=info.summarized_through,
            context_tokens=context_tokens,
            token_limit=limit,
            budget_used=context_tokens / limit,
            tool_calls=info.tool_calls,
            errors=info.errors,
            usage=info.usage,
        )

    async def global_stats(self) -> GlobalStats:
        raw = await self.store.global_stats()
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

    # -- summarization --------------------------------------------------------------

    def _context_tokens(self, entry: CachedSession, system_tokens: int) -> int:
        """O(1): the running totals, not a walk over messages."""
        prefix = sum(block.tokens for block in entry.summaries)
        return (
            system_tokens
            + prefix
            + entry.unsummarized_tokens
            + MESSAGE_OVERHEAD * entry.unsummarized_count
        )

    def _needs_summary(
        self, entry: CachedSession, system_tokens: int, limit: int, model: str | None
    ) -> bool:
        estimate = self._context_tokens(entry, system_tokens) * self.tokens.factor(model)
        return (
            estimate >= self.settings.summarize_threshold * limit
            and entry.unsummarized_count >= self.settings.min_messages_to_summarize
        )

    async def maybe_summarize(
        self,
        session_id: int,
        *,
        system_prompt: str = "",
        token_limit: int | None = None,
        model: str | None = None,
    ) -> bool:
        """Start a background summarization if the context is at the threshold.

        Returns True if one was started (or is already running for the session).
        """
        if session_id in self._summarizing:
            return True
        entry = await self._entry(session_id)
        limit = token_limit or self.settings.token_limit
        system_tokens = self.tokens.count_cached(system_prompt)
        if not self._needs_summary(entry, system_tokens, limit, model):
            return False
        task = asyncio.create_task(
            self._summarize_loop(session_id, system_tokens, limit, model),
            name=f"palaver-summarize-{session_id}",
        )
        self._summarizing[session_id] = task
        task.add_done_callback(lambda _t: self._summarizing.pop(session_id, None))
        return True

    async def wait_for_summaries(self) -> None:
        while self._summarizing:
            await asyncio.gather(*list(self._summarizing.values()), return_exceptions=True)

    async def _summarize_loop(
        self, session_id: int, system_tokens: int, limit: int, model: str | None
    ) -> None:
        try:
            for _round in range(20):
                entry = await self._entry(session_id)
                if not self._needs_summary(entry, system_tokens, limit, model):
                    break
                if await self.fold(session_id) is None:
                    break
            await self.merge_if_needed(session_id, token_limit=limit)
            await self.upgrade_fallbacks(session_id)
        except PalaverError as error:
            log.warning("summarization of session %s failed: %s", session_id, error)
        except Exception:
            log.exception("summarization of session %s failed", session_id)

    async def _run_summarizer(
        self, messages: Sequence[SummaryInput] | None, summaries: Sequence[str] | None
    ) -> SummaryText:
        limit = self.settings.summary_max_tokens
        try:
            if messages is not None:
                result = await self.summarizer.summarize(messages, limit)
            else:
                result = await self.summarizer.merge(summaries or [], limit)
            if not result.text.strip():
                raise ValueError("the summarizer returned nothing")
        except Exception as error:
            if self.summarizer is self.extractive:
                raise
            log.warning(
                "summarizer %s failed (%r); using the extractive one", self.summarizer.name, error
            )
            if messages is not None:
                result = await self.extractive.summarize(messages, limit)
            else:
                result = await self.extractive.merge(summaries or [], limit)
            return SummaryText(result.text, result.summarizer, fallback=True)
        return result

    def _bounded(self, text: str) -> tuple[str, int]:
        tokens = self.tokens.count(text)
        if tokens > self.settings.summary_max_tokens:
            text = self.extractive.fit(text, self.settings.summary_max_tokens)
            tokens = self.tokens.count(text)
        return text, tokens

    async def fold(self, session_id: int) -> SummaryRecord | None:
        """Fold the oldest ~70% of the unsummarized messages into one summary now.

        Messages that arrive meanwhile are past the folded range and stay as they
        are. Returns None if there was too little to fold or another writer moved
        the summarized range first.
        """
        entry = await self._entry(session_id)
        count = entry.unsummarized_count
        if count < 2:
            return None
        fold = max(1, int(count * self.settings.summarize_fraction))
        base = entry.base
        first = entry.tail_first_seq
        inputs = [
            SummaryInput(first + i, Role(role), text, author)
            for i, (role, _tokens, text, author) in enumerate(entry.tail[:fold])
        ]
        result = await self._run_summarizer(inputs, None)
        text, tokens = self._bounded(result.text)
        written = await self.store.add_summary(
            session_id,
            expected_through=entry.summarized_through,
            first_seq=base + 1,
            last_seq=base + fold,
            text=text,
            token_count=tokens,
            summarizer=result.summarizer,
            fallback=result.fallback,
        )
        if written is None:
            self.cache.drop(session_id)
            return None
        record, delta = written
        removed = sum(m[TOKENS] for m in entry.tail[:fold])

        def folded(e: CachedSession) -> None:
            e.summarized_through = record.last_seq
            e.tail_first_seq = e.base + 1
            del e.tail[:fold]
            e.unsummarized_tokens = max(0, e.unsummarized_tokens - removed)
            e.summary_tokens += record.token_count
            e.summaries = (*e.summaries, Block(record.text, record.token_count))
            e.summary_ids = (*e.summary_ids, record.id)

        self._apply(delta, folded)
        return record

    async def merge_if_needed(
        self, session_id: int, *, token_limit: int | None = None, force: bool = False
    ) -> SummaryRecord | None:
        """Merge the stacked summaries into one of a higher level when they outgrow
        their share of the budget (``summary_share`` x token limit)."""
        entry = await self._entry(session_id)
        limit = token_limit or self.settings.token_limit
        ids = entry.summary_ids
        if len(ids) < 2:
            return None
        if not force and entry.summary_tokens <= self.settings.summary_share * limit:
            return None
        offset = len(entry.summaries) - len(ids)  # a carried summary comes first
        texts = [block.text for block in entry.summaries[offset:]]
        result = await self._run_summarizer(None, texts)
        text, tokens = self._bounded(result.text)
        written = await self.store.merge_summaries(
            session_id,
            merged_ids=ids,
            text=text,
            token_count=tokens,
            summarizer=result.summarizer,
            fallback=result.fallback,
        )
        self.cache.drop(session_id)
        return None if written is None else written[0]

    async def upgrade_fallbacks(self, session_id: int) -> int:
        """Rewrite summaries the extractive fallback wrote, now that the model summarizer
        answers again. Returns how many were rewritten."""
        if self.summarizer is self.extractive or not getattr(self.summarizer, "available", True):
            return 0
        upgraded = 0
        for record in await self.store.summaries(session_id):
            if not record.fallback:
                continue
            originals = await self.store.messages(
                session_id, after=record.first_seq - 1, through=record.last_seq
            )
            inputs = [SummaryInput(m.seq, m.role, m.text, m.author_name) for m in originals]
            if not inputs:
                continue
            try:
                result = await self.summarizer.summarize(inputs, self.settings.summary_max_tokens)
            except Exception as error:
                log.info("summary %s stays extractive for now: %r", record.id, error)
                break
            text, tokens = self._bounded(result.text)
            delta = await self.store.replace_summary(
                record.id, text=text, token_count=tokens, summarizer=result.summarizer
            )
            if delta is not None:
                self._apply(delta, None)
                upgraded += 1
        return upgraded

    # -- lifecycle ------------------------------------------------------------------

    async def finalize_idle(self) -> int:
        """Active sessions quiet for ``idle_after`` become idle; idle ones get a
        closing summary and become finalized. Returns how many were finalized.

        A session that receives a message while its closing summary is written is
        left active: the summary would miss that message.
        """
        now = utcnow()
        await self.store.mark_idle(now - timedelta(seconds=self.settings.idle_after_s))
        done = 0
        for session in await self.store.list_sessions(status=SessionStatus.IDLE, limit=500):
            closing = await self.closing_summary(session.id)
            delta = await self.store.finalize(
                session.id, expected_version=session.version, closing_summary=closing
            )
            if delta is not None:
                self._apply(delta, None)
                done += 1
        return done

    async def _write_closing_summary(self, session_id: int) -> None:
        closing = await self.closing_summary(session_id)
        if closing:
            await self.store.set_closing_summary(session_id, closing)
            self.cache.drop(session_id)

    async def closing_summary(self, session_id: int) -> str | None:
        entry = await self._entry(session_id)
        offset = len(entry.summaries) - len(entry.summary_ids)
        parts = [block.text for block in entry.summaries[offset:]]
        if entry.tail:
            first = entry.tail_first_seq
            inputs = [
                SummaryInput(first + i, Role(role), text, author)
                for i, (role, _tokens, text, author) in enumerate(entry.tail)
            ]
            parts.append((await self._run_summarizer(inputs, None)).text)
        if not parts:
            return None
        if len(parts) == 1:
            return self._bounded(parts[0])[0]
        return self._bounded((await self._run_summarizer(None, parts)).text)[0]

    async def expire_sessions(self) -> int:
        """Sessions with no activity for ``expire_after`` are expired."""
        ids = await self.store.expire(utcnow() - timedelta(seconds=self.settings.expire_after_s))
        for sid in ids:
            self.cache.drop(sid)
            if self.settings.carry_closing_summary:
                info = await self.store.get_session(sid)
                if info.closing_summary is None and info.message_count:
                    await self._write_closing_summary(sid)
        return len(ids)

    async def delete_expired(self) -> int:
        """Expired and ended sessions older than ``retain_for`` are deleted."""
        return await self.store.delete_ended(
            utcnow() - timedelta(seconds=self.settings.retain_for_s)
        )
