"""The batch append, as plain SQL for the driver: add_message's hot path.

SQLAlchemy's per-row parameter processing for an executemany costs more than
SQLite's own work, so a batch's statements are rendered once and go to the driver
as plain SQL with positional rows (``?`` for sqlite3, ``$n`` for asyncpg). Values
still pass through the dialect's own bind processors, so what is stored is exactly
what Core stores. Sequence numbers are allocated inside the transaction that locks
the session rows, which is what keeps them gapless across processes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from memory.errors import SessionNotFound
from memory.store.rows import AppendOutcome, Mark, NewMessage, SessionDelta, messages, sessions
from memory.types import SessionStatus, StoredMessage, Usage

_MESSAGE_COLUMNS = (
    "session_id",
    "seq",
    "role",
    "text",
    "token_count",
    "author_id",
    "author_name",
    "chat_ref",
    "platform_message_id",
    "created_at",
    "meta",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "cost_usd",
    "billed_to",
    "delivery",
)
_LINK_COLUMNS = (
    "session_id",
    "seq",
    "position",
    "sha256",
    "name",
    "kind",
    "media_type",
    "size",
    "width",
    "height",
    "pages",
    "tokens",
)


def _identity(value: Any) -> Any:
    return value


class StaleHint(Exception):
    """A session row moved since this process last wrote it: read it, then retry."""


class Tally:
    """A session's running numbers while a batch is assembled."""

    __slots__ = ("count", "last_seq", "tokens", "usage", "version")

    def __init__(self, last_seq: int, version: int) -> None:
        self.last_seq = last_seq
        self.version = version
        self.count = 0
        self.tokens = 0
        self.usage = Usage()


class BulkAppend:
    """The statements of a batch append for one dialect, rendered once."""

    def __init__(self, dialect: Any) -> None:
        self._dollar = dialect.paramstyle == "numeric_dollar"
        self._for_update = "" if dialect.name == "sqlite" else " FOR UPDATE"
        self._locks: dict[int, str] = {}
        self.insert = (
            f"INSERT INTO messages ({', '.join(_MESSAGE_COLUMNS)}) "
            f"VALUES ({', '.join(self._marks(len(_MESSAGE_COLUMNS)))})"
        )
        m = self._marks(12)
        self.update = (
            "UPDATE sessions SET "
            f"message_count = message_count + {m[0]}, "
            f"message_tokens = message_tokens + {m[1]}, "
            f"unsummarized_tokens = unsummarized_tokens + {m[2]}, "
            f"input_tokens = input_tokens + {m[3]}, "
            f"output_tokens = output_tokens + {m[4]}, "
            f"cache_read_tokens = cache_read_tokens + {m[5]}, "
            f"cache_write_tokens = cache_write_tokens + {m[6]}, "
            f"cost_usd = cost_usd + {m[7]}, "
            f"last_seq = {m[8]}, last_activity_at = {m[9]}, status = {m[10]}, "
            f"version = version + 1 WHERE id = {m[11]}"
        )
        self.update_if_version = self.update + f" AND version = {self._marks(13)[12]}"
        self.insert_links = (
            f"INSERT INTO message_attachments ({', '.join(_LINK_COLUMNS)}) "
            f"VALUES ({', '.join(self._marks(len(_LINK_COLUMNS)))})"
        )
        m = self._marks(4)
        self.mark = (
            f"UPDATE messages SET delivery = {m[0]}, delivered_parts = {m[1]} "
            f"WHERE session_id = {m[2]} AND seq = {m[3]}"
        )

        def processor(column: Any) -> Any:
            impl = column.type.dialect_impl(dialect)
            return impl.bind_processor(dialect) or _identity

        self.time = processor(sessions.c.last_activity_at)
        self._json = processor(messages.c.meta)

    def _marks(self, count: int) -> list[str]:
        return [f"${i}" if self._dollar else "?" for i in range(1, count + 1)]

    def lock(self, count: int) -> str:
        """SELECT id, last_seq, version of ``count`` sessions, locking their rows."""
        sql = self._locks.get(count)
        if sql is None:
            sql = (
                "SELECT id, last_seq, version FROM sessions "
                f"WHERE id IN ({', '.join(self._marks(count))}) ORDER BY id{self._for_update}"
            )
            if len(self._locks) < 1024:
                self._locks[count] = sql
        return sql

    def update_row(self, sid: int, t: Tally, stamp: Any) -> tuple[Any, ...]:
        u = t.usage
        return (
            t.count,
            t.tokens,
            t.tokens,
            u.input_tokens,
            u.output_tokens,
            u.cache_read_tokens,
            u.cache_write_tokens,
            u.cost_usd,
            t.last_seq,
            stamp,
            SessionStatus.ACTIVE.value,
            sid,
        )

    def plan(
        self,
        items: Sequence[NewMessage],
        locked: dict[int, Tally],
        now: datetime,
        *,
        check_version: bool,
    ) -> tuple[AppendOutcome, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """Seqs, stored messages and the rows of both statements for one batch.

        ``locked`` holds each session's last seq and version as the transaction
        sees them; an item whose session is missing fails alone.
        """
        stamp = self.time(now)
        results: list[StoredMessage | BaseException] = []
        outcome = AppendOutcome(results)
        inserts: list[tuple[Any, ...]] = []
        for item in items:
            state = locked.get(item.session_id)
            if state is None:
                results.append(SessionNotFound(f"session {item.session_id} does not exist"))
                continue
            state.last_seq += 1
            state.count += 1
            state.tokens += item.token_count
            u = item.usage
            if u is not None:
                state.usage = state.usage + u
            inserts.append(self.insert_row(item, state.last_seq, stamp))
            results.append(
                StoredMessage(
                    item.session_id,
                    state.last_seq,
                    item.role,
                    item.text,
                    item.token_count,
                    item.author_id,
                    item.author_name,
                    item.platform_message_id,
                    now,
                    item.metadata or {},
                    u,
                    chat_ref=item.chat_ref,
                    delivery=item.delivery,
                )
            )
        updates: list[tuple[Any, ...]] = []
        for sid, t in locked.items():
            if t.count:
                row = self.update_row(sid, t, stamp)
                updates.append((*row, t.version) if check_version else row)
                outcome.deltas[sid] = SessionDelta(sid, t.version, t.version + 1)
        return outcome, updates, inserts

    def insert_row(self, item: NewMessage, seq: int, stamp: Any) -> tuple[Any, ...]:
        u = item.usage
        return (
            item.session_id,
            seq,
            item.role.value,
            item.text,
            item.token_count,
            item.author_id,
            item.author_name,
            item.chat_ref,
            item.platform_message_id,
            stamp,
            None if item.metadata is None else self._json(item.metadata),
            None if u is None else u.input_tokens,
            None if u is None else u.output_tokens,
            None if u is None else u.cache_read_tokens,
            None if u is None else u.cache_write_tokens,
            None if u is None else u.cost_usd,
            item.billed_to,
            None if item.delivery is None else item.delivery.value,
        )

    @staticmethod
    def link_rows(
        items: Sequence[NewMessage], results: Sequence[StoredMessage | BaseException]
    ) -> list[tuple[Any, ...]]:
        """The message_attachments rows of a planned batch: its messages' files, each
        linked to the seq its message was given."""
        rows: list[tuple[Any, ...]] = []
        for item, result in zip(items, results, strict=True):
            if not item.attachments or not isinstance(result, StoredMessage):
                continue
            for position, a in enumerate(item.attachments):
                rows.append(
                    (
                        item.session_id,
                        result.seq,
                        position,
                        a.sha256,
                        a.name[:255],
                        a.kind,
                        a.media_type,
                        len(a.data),
                        a.width,
                        a.height,
                        a.pages,
                        a.tokens,
                    )
                )
        return rows

    def run_sqlite(
        self,
        conn: sqlite3.Connection,
        items: Sequence[NewMessage],
        session_ids: list[int],
        hints: Mapping[int, tuple[int, int]] | None,
        now: datetime,
        marks: Sequence[Mark],
    ) -> AppendOutcome:
        """The SQLite append, run on the driver's thread as one transaction, with the
        batch's changes of delivery state.

        With ``hints`` it skips reading the session rows and updates them only where
        the version still matches; if a row moved (another process wrote), it rolls
        back and runs again behind a read of the rows, still on this thread.
        """
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if not items:
                    conn.executemany(self.mark, marks)
                    conn.commit()
                    return AppendOutcome([])
                if hints is not None:
                    locked = {sid: Tally(*hints[sid]) for sid in session_ids}
                else:
                    rows = conn.execute(self.lock(len(session_ids)), session_ids).fetchall()
                    locked = {sid: Tally(last_seq, version) for sid, last_seq, version in rows}
                outcome, updates, inserts = self.plan(
                    items, locked, now, check_version=hints is not None
                )
                if inserts:
                    update = self.update_if_version if hints is not None else self.update
                    if conn.executemany(update, updates).rowcount != len(updates):
                        raise StaleHint
                    conn.executemany(self.insert, inserts)
                    if any(item.attachments for item in items):
                        conn.executemany(self.insert_links, self.link_rows(items, outcome.results))
                if marks:
                    conn.executemany(self.mark, marks)
            except StaleHint:
                conn.rollback()
                hints = None
                continue
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return outcome
