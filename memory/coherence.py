"""The session cache kept coherent with the database, across processes.

Reads come from an LRU cache of hot sessions (memory.cache). Writes go to the
database first; a write is applied to a cached entry only when the row version it
moved from is the entry's version, so a change made by another process in between
drops the entry instead of being patched over. An entry not verified for
``verify_after`` seconds is checked against the row's version before it is used.

Also kept here: the (last_seq, version) this process last committed per session,
which lets a batch append skip reading the session rows (see Messages.append).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from memory.cache import CachedSession, SessionCache, carried_block
from memory.context import TOKENS, TailMessage, has_media
from memory.store import AppendOutcome, NewMessage, SessionDelta, Snapshot, Store
from memory.tokens import TokenCounter
from memory.types import SessionInfo, StoredMessage

# Sessions whose (last_seq, version) this process remembers for fast appends.
_MAX_HINTS = 100_000

Mutation = Callable[[CachedSession], None]


class CoherentCache:
    def __init__(
        self, store: Store, tokens: TokenCounter, capacity: int, verify_after: float
    ) -> None:
        self._store = store
        self._tokens = tokens
        self._verify_after = verify_after
        self.cache = SessionCache(capacity)
        self.hints: dict[int, tuple[int, int]] = {}
        # Sessions being loaded into the cache -> newest version seen meanwhile.
        self._loading: dict[int, int] = {}

    def fresh(self, session: SessionInfo) -> SessionInfo:
        """Cache a session this process just read or created while it is still empty.

        Its snapshot is all in ``session`` (no messages, no summaries), so the first
        turn of a new chat needs no snapshot read, and its first append can take the
        version-checked path. If another process wrote to it meanwhile, the version
        check catches that as for any cached session.
        """
        if session.message_count == 0 and session.last_seq == 0:
            if session.id not in self.hints:
                self.hints[session.id] = (session.last_seq, session.version)
            if self.cache.peek(session.id) is None:
                self.cache.put(self._entry_of(Snapshot.empty(session)))
        return session

    def _entry_of(self, snapshot: Snapshot) -> CachedSession:
        carried = snapshot.session.carried_summary
        tokens = self._tokens.count_cached(carried_block(carried)) if carried else 0
        return CachedSession(snapshot, tokens)

    def drop(self, session_id: int) -> None:
        self.cache.drop(session_id)

    async def entry(self, session_id: int) -> CachedSession:
        """The cached session, verified against the row version when it is not fresh."""
        cache = self.cache
        entry = cache.get(session_id)
        if entry is not None:
            if time.monotonic() - entry.verified_at < self._verify_after:
                cache.hits += 1
                return entry
            if await self._store.sessions.version(session_id) == entry.version:
                entry.verified_at = time.monotonic()
                cache.hits += 1
                return entry
            cache.drop(session_id)
        cache.misses += 1
        entry = None
        for _attempt in range(5):
            self._loading[session_id] = -1
            try:
                snapshot = await self._store.messages.snapshot(session_id)
                seen = self._loading[session_id]
            finally:
                self._loading.pop(session_id, None)
            entry = self._entry_of(snapshot)
            if seen <= entry.version:
                cache.put(entry)
                return entry
        assert entry is not None
        return entry  # under constant writes: correct as of its read, not cached

    def apply(self, delta: SessionDelta, mutate: Mutation | None) -> None:
        """A committed write moved a session from one version to the next: patch the
        cached entry with ``mutate`` if it was at that version, else drop it."""
        hint = self.hints.get(delta.session_id)
        if hint is not None and hint[1] == delta.version_before:
            self.hints[delta.session_id] = (hint[0], delta.version_after)
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

    def touch(self, delta: SessionDelta) -> None:
        """A write that changed nothing the cache holds (a counter, the state)."""
        self.apply(delta, _unchanged)

    def appended(self, items: list[NewMessage], outcome: AppendOutcome) -> None:
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
                        if not item.attachments
                        else (
                            item.role.value,
                            item.token_count,
                            item.text,
                            item.author_name,
                            tuple(a.ref for a in item.attachments),
                        )
                    )
        if len(self.hints) > _MAX_HINTS:
            self.hints.clear()
        for sid, delta in outcome.deltas.items():
            news = appended.get(sid, [])
            if sid in last_seqs:
                self.hints[sid] = (last_seqs[sid], delta.version_after)

            def extend(entry: CachedSession, news: list[TailMessage] = news) -> None:
                entry.tail.extend(news)
                entry.last_seq += len(news)
                entry.message_count += len(news)
                entry.unsummarized_tokens += sum(m[TOKENS] for m in news)
                entry.media += sum(1 for m in news if has_media(m))

            self.apply(delta, extend)


def _unchanged(entry: CachedSession) -> None:
    """Nothing the cache holds moved; only the version did."""
