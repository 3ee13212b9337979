"""Rolling summaries: when a session's context reaches the threshold, fold older
history into summaries, in the background, off the reply path.

Trigger: the estimated context (system prompt, summaries and the unsummarized tail,
calibrated for the model) is at ``summarize_threshold`` x the token limit or more,
with at least ``min_messages_to_summarize`` unsummarized messages. A fold turns the
oldest ``summarize_fraction`` of the unsummarized messages into one summary;
summaries stack, and are merged into one of a higher level when they outgrow
``summary_share`` of the limit. Nothing here deletes a message: a summary records
the exact range it covers. When the model summarizer fails, the extractive one
writes the summary, flagged, and ``upgrade_fallbacks`` rewrites it later.

Files: a summary of messages that carried images or PDFs hands the summarizer those
files (read from the store for that request only, see ``_with_files``), so that the
summary can say what each one was. Once folded, a message and its files leave the
tail: no later turn sends them, and a merge works from summary text alone, so a
model sees a file for a summary once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Sequence

from memory.attachments import StoredAttachment, encode
from memory.cache import CachedSession
from memory.coherence import CoherentCache
from memory.context import (
    AUTHOR,
    MAX_PDF_PAGES,
    ROLE,
    TEXT,
    TOKENS,
    Block,
    TailMessage,
    has_media,
)
from memory.errors import PalaverError
from memory.observers import Observers, SummaryWritten
from memory.settings import MemorySettings
from memory.store import Store
from memory.summarizer import (
    ExtractiveSummarizer,
    Summarizer,
    SummaryFile,
    SummaryInput,
    SummaryText,
)
from memory.tokens import MESSAGE_OVERHEAD, TokenCounter
from memory.types import Role, SummaryRecord

log = logging.getLogger(__name__)

# What one summary request may carry of the files its messages had; files beyond
# these (in message order) are named by their message's text alone, as before files
# were shown. 20 files: past 20 images the Messages API limits each to 2000 px, and
# a summary of at most ``summary_max_tokens`` cannot say much about more. 8 MB of
# file bytes: ~11 MB as base64, well under the API's 32 MB request limit and within
# what the summarizer's timeout can upload. 60,000 tokens of files (an image is at
# most ~1,600, a PDF page ~1,500-3,000): room in a small model's 200k window for the
# transcript, and a bound on what one fold costs. PDF pages: the API's 100 a request
# (memory.context.MAX_PDF_PAGES), which the token bound alone need not keep.
MAX_SUMMARY_FILES = 20
MAX_SUMMARY_FILE_BYTES = 8_000_000
MAX_SUMMARY_FILE_TOKENS = 60_000
_ENCODE_IN_THREAD_BYTES = 256_000


def _inputs(first: int, tail: Sequence[TailMessage]) -> list[SummaryInput]:
    """What the summarizer reads of cached messages: their text, which names each file
    a message carried; the files themselves are added by ``Summarizing._with_files``."""
    return [SummaryInput(first + i, Role(m[ROLE]), m[TEXT], m[AUTHOR]) for i, m in enumerate(tail)]


def files_to_show(found: dict[int, list[StoredAttachment]]) -> list[StoredAttachment]:
    """The files one summary request carries: in message order, each that still fits
    the limits above (a file kept twice in the range goes once)."""
    chosen: list[StoredAttachment] = []
    seen: set[str] = set()
    size = tokens = pages = 0
    for seq in sorted(found):
        for file in found[seq]:
            if file.sha256 in seen:
                continue
            if (
                len(seen) + 1 > MAX_SUMMARY_FILES
                or size + file.size > MAX_SUMMARY_FILE_BYTES
                or tokens + file.tokens > MAX_SUMMARY_FILE_TOKENS
                or pages + (file.pages or 0) > MAX_PDF_PAGES
            ):
                continue
            seen.add(file.sha256)
            size += file.size
            tokens += file.tokens
            pages += file.pages or 0
            chosen.append(file)
    return chosen


def context_tokens(entry: CachedSession, system_tokens: int) -> int:
    """The context's size before calibration, O(1): the running totals, not a walk."""
    prefix = sum(block.tokens for block in entry.summaries)
    return (
        system_tokens
        + prefix
        + entry.unsummarized_tokens
        + MESSAGE_OVERHEAD * entry.unsummarized_count
    )


class Summarizing:
    def __init__(
        self,
        store: Store,
        cache: CoherentCache,
        tokens: TokenCounter,
        settings: MemorySettings,
        summarizer: Summarizer | None,
        observers: Observers | None = None,
    ) -> None:
        self._observers = observers if observers is not None else Observers()
        self._store = store
        self._cache = cache
        self._tokens = tokens
        self._settings = settings
        self.extractive = ExtractiveSummarizer(tokens)
        self.summarizer: Summarizer = summarizer or self.extractive
        self._running: dict[int, asyncio.Task[None]] = {}

    async def _with_files(
        self, session_id: int, inputs: list[SummaryInput], *, has_files: bool = True
    ) -> list[SummaryInput]:
        """``inputs`` with the files their messages carried (see ``files_to_show``), read from
        the store for this one request; a file no longer kept is named only."""
        if not inputs or not has_files or not self.summarizer.reads_files:
            return inputs  # a summarizer that reads no files is not handed any
        first, last = inputs[0].seq, inputs[-1].seq
        found = await self._store.attachments.of_session(session_id, after=first - 1, through=last)
        chosen = files_to_show(found)
        if not chosen:
            return inputs
        data = await self._store.attachments.data(f.sha256 for f in chosen)
        encoded: dict[str, str] = {}
        for sha256, raw in data.items():
            small = len(raw) < _ENCODE_IN_THREAD_BYTES
            encoded[sha256] = encode(raw) if small else await asyncio.to_thread(encode, raw)
        by_seq: dict[int, list[SummaryFile]] = {}
        for file in chosen:
            if file.sha256 in encoded:
                summary_file = SummaryFile(file.name, file.media_type, encoded[file.sha256])
                by_seq.setdefault(file.seq, []).append(summary_file)
        return [
            dataclasses.replace(m, files=tuple(by_seq[m.seq])) if m.seq in by_seq else m
            for m in inputs
        ]

    def estimate(self, entry: CachedSession, system_prompt: str, model: str | None) -> int:
        """The context's tokens as the trigger counts them: what /status shows too."""
        system_tokens = self._tokens.count_cached(system_prompt)
        return round(context_tokens(entry, system_tokens) * self._tokens.factor(model))

    def _due(self, entry: CachedSession, estimate: int, limit: int) -> bool:
        return (
            estimate >= self._settings.summarize_threshold * limit
            and entry.unsummarized_count >= self._settings.min_messages_to_summarize
        )

    async def maybe_start(
        self, session_id: int, *, system_prompt: str, token_limit: int, model: str | None
    ) -> bool:
        """Start a background summarization if the context is at the threshold.

        Returns True if one was started (or is already running for the session).
        """
        if session_id in self._running:
            return True
        entry = await self._cache.entry(session_id)
        if not self._due(entry, self.estimate(entry, system_prompt, model), token_limit):
            return False
        task = asyncio.create_task(
            self._loop(session_id, system_prompt, token_limit, model),
            name=f"palaver-summarize-{session_id}",
        )
        self._running[session_id] = task
        task.add_done_callback(lambda _t: self._running.pop(session_id, None))
        return True

    async def wait(self, grace: float | None = None) -> bool:
        """Wait for the summaries in flight; with ``grace``, at most that long, then
        cancel the rest (shutdown: a Messages API that never answers must not hold
        the process). A cancelled summary wrote nothing: its messages stay whole and
        the next turn's trigger folds them again. False if any was cancelled."""
        loop = asyncio.get_running_loop()
        deadline = None if grace is None else loop.time() + grace
        while self._running:
            running = list(self._running.values())
            left = None if deadline is None else max(0.0, deadline - loop.time())
            _done, pending = await asyncio.wait(running, timeout=left)
            if pending:
                log.warning(
                    "%d summar%s still running after %g s: cancelled (the messages stay "
                    "and are summarized later)",
                    len(pending),
                    "y" if len(pending) == 1 else "ies",
                    grace,
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                return False
        return True

    async def _loop(
        self, session_id: int, system_prompt: str, limit: int, model: str | None
    ) -> None:
        try:
            for _round in range(20):
                entry = await self._cache.entry(session_id)
                if not self._due(entry, self.estimate(entry, system_prompt, model), limit):
                    break
                if await self.fold(session_id) is None:
                    break
            await self.merge_if_needed(session_id, token_limit=limit)
            await self.upgrade_fallbacks(session_id)
        except PalaverError as error:
            log.warning("summarization of session %s failed: %s", session_id, error)
        except Exception:
            log.exception("summarization of session %s failed", session_id)

    async def _run(
        self, messages: Sequence[SummaryInput] | None, summaries: Sequence[str] | None
    ) -> SummaryText:
        limit = self._settings.summary_max_tokens
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
        limit = self._settings.summary_max_tokens
        tokens = self._tokens.count(text)
        if tokens > limit:
            text = self.extractive.fit(text, limit)
            tokens = self._tokens.count(text)
        return text, tokens

    async def fold(self, session_id: int) -> SummaryRecord | None:
        """Fold the oldest ~70% of the unsummarized messages into one summary now.

        Messages that arrive meanwhile are past the folded range and stay as they
        are. Returns None if there was too little to fold or another writer moved
        the summarized range first.
        """
        entry = await self._cache.entry(session_id)
        count = entry.unsummarized_count
        if count < 2:
            return None
        fold = max(1, int(count * self._settings.summarize_fraction))
        base = entry.base
        first = entry.tail_first_seq
        folded_media = entry.media > 0 and any(has_media(m) for m in entry.tail[:fold])
        inputs = await self._with_files(
            session_id, _inputs(first, entry.tail[:fold]), has_files=folded_media
        )
        result = await self._run(inputs, None)
        text, tokens = self._bounded(result.text)
        written = await self._store.summaries.add(
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
            self._cache.drop(session_id)
            return None
        record, delta = written
        removed = sum(m[TOKENS] for m in entry.tail[:fold])

        def folded(e: CachedSession) -> None:
            e.summarized_through = record.last_seq
            e.tail_first_seq = e.base + 1
            del e.tail[:fold]
            if e.media:  # folded files are not sent again; the summary names them
                e.media = sum(1 for m in e.tail if has_media(m))
            e.unsummarized_tokens = max(0, e.unsummarized_tokens - removed)
            e.summary_tokens += record.token_count
            e.summaries = (*e.summaries, Block(record.text, record.token_count))
            e.summary_ids = (*e.summary_ids, record.id)

        self._cache.apply(delta, folded)
        if self._observers:
            self._observers.emit(SummaryWritten(record))
        return record

    async def merge_if_needed(
        self, session_id: int, *, token_limit: int | None = None, force: bool = False
    ) -> SummaryRecord | None:
        """Merge the stacked summaries into one of a higher level when they outgrow
        their share of the budget (``summary_share`` x token limit)."""
        entry = await self._cache.entry(session_id)
        limit = token_limit or self._settings.token_limit
        ids = entry.summary_ids
        if len(ids) < 2:
            return None
        if not force and entry.summary_tokens <= self._settings.summary_share * limit:
            return None
        offset = len(entry.summaries) - len(ids)  # a carried summary comes first
        texts = [block.text for block in entry.summaries[offset:]]
        result = await self._run(None, texts)
        text, tokens = self._bounded(result.text)
        written = await self._store.summaries.merge(
            session_id,
            merged_ids=ids,
            text=text,
            token_count=tokens,
            summarizer=result.summarizer,
            fallback=result.fallback,
        )
        self._cache.drop(session_id)
        if written is not None and self._observers:
            self._observers.emit(SummaryWritten(written[0], merged=True))
        return None if written is None else written[0]

    @property
    def can_upgrade(self) -> bool:
        """Whether a model summarizer is configured and not resting after failures."""
        return self.summarizer is not self.extractive and getattr(
            self.summarizer, "available", True
        )

    async def upgrade_fallbacks(self, session_id: int) -> int:
        """Rewrite summaries the extractive fallback wrote, now that the model summarizer
        answers again. Returns how many were rewritten."""
        if not self.can_upgrade:
            return 0
        upgraded = 0
        for record in await self._store.summaries.of(session_id):
            if not record.fallback:
                continue
            originals = await self._store.messages.read(
                session_id, after=record.first_seq - 1, through=record.last_seq
            )
            inputs = [SummaryInput(m.seq, m.role, m.text, m.author_name) for m in originals]
            if not inputs:
                continue
            inputs = await self._with_files(session_id, inputs)
            try:
                result = await self.summarizer.summarize(inputs, self._settings.summary_max_tokens)
            except Exception as error:
                log.info("summary %s stays extractive for now: %r", record.id, error)
                break
            text, tokens = self._bounded(result.text)
            delta = await self._store.summaries.replace(
                record.id, text=text, token_count=tokens, summarizer=result.summarizer
            )
            if delta is not None:
                self._cache.apply(delta, None)
                upgraded += 1
                if self._observers:
                    new = dataclasses.replace(
                        record,
                        text=text,
                        token_count=tokens,
                        summarizer=result.summarizer,
                        fallback=False,
                    )
                    self._observers.emit(SummaryWritten(new, upgraded=True))
        return upgraded

    async def closing_summary(self, session_id: int) -> str | None:
        """One summary of the whole session: its summaries and unsummarized tail."""
        entry = await self._cache.entry(session_id)
        offset = len(entry.summaries) - len(entry.summary_ids)
        parts = [block.text for block in entry.summaries[offset:]]
        if entry.tail:
            inputs = await self._with_files(
                session_id, _inputs(entry.tail_first_seq, entry.tail), has_files=entry.media > 0
            )
            parts.append((await self._run(inputs, None)).text)
        if not parts:
            return None
        if len(parts) == 1:
            return self._bounded(parts[0])[0]
        return self._bounded((await self._run(None, parts)).text)[0]
