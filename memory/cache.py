"""The LRU cache of hot sessions.

It holds exactly what building a context needs: counters, active summaries and the
unsummarized tail, kept compact (slots, tuples, no per-message seq: the tail is
contiguous). Entries carry the session's row version; any write whose version did
not follow on from the cached one drops the entry instead of patching it.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from memory.context import Block, TailMessage, has_media
from memory.store import Snapshot, tail_after
from memory.types import SessionInfo


def carried_block(summary: str) -> str:
    return "Summary of an earlier session:\n" + summary


class CachedSession:
    __slots__ = (
        "context_start",
        "id",
        "last_seq",
        "media",
        "message_count",
        "project_id",
        "summaries",
        "summarized_through",
        "summary_ids",
        "summary_tokens",
        "tail",
        "tail_first_seq",
        "unsummarized_tokens",
        "verified_at",
        "version",
    )

    def __init__(self, snapshot: Snapshot, carried_tokens: int = 0) -> None:
        info: SessionInfo = snapshot.session
        self.id = info.id
        self.version = info.version
        self.project_id = info.project_id
        self.last_seq = info.last_seq
        self.message_count = info.message_count
        self.summarized_through = info.summarized_through
        self.context_start = info.context_start
        self.unsummarized_tokens = info.unsummarized_tokens
        self.summary_tokens = info.summary_tokens
        prefix: list[Block] = []
        if info.carried_summary:
            prefix.append(Block(carried_block(info.carried_summary), carried_tokens))
        self.summaries: tuple[Block, ...] = tuple(prefix) + tuple(
            Block(s.text, s.token_count) for s in snapshot.summaries
        )
        self.summary_ids: tuple[int, ...] = tuple(s.id for s in snapshot.summaries)
        self.tail: list[TailMessage] = snapshot.tail
        self.tail_first_seq = snapshot.tail_first_seq
        # How many tail messages carried files: none, and contexts take the text path.
        self.media = sum(1 for m in self.tail if has_media(m))
        self.verified_at = time.monotonic()

    @property
    def base(self) -> int:
        """The last seq that is summarized or cleared: the tail starts after it."""
        return tail_after(self.summarized_through, self.context_start)

    @property
    def unsummarized_count(self) -> int:
        return self.last_seq - self.base


class SessionCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, CachedSession] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, session_id: int) -> CachedSession | None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._entries.move_to_end(session_id)
        return entry

    def peek(self, session_id: int) -> CachedSession | None:
        return self._entries.get(session_id)

    def put(self, entry: CachedSession) -> None:
        if self.capacity <= 0:
            return
        self._entries[entry.id] = entry
        self._entries.move_to_end(entry.id)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    def drop(self, session_id: int) -> None:
        self._entries.pop(session_id, None)

    def clear(self) -> None:
        self._entries.clear()
