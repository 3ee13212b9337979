"""Messages: the batch append (gapless seqs, idempotent on platform ids) and reads.

The append is add_message's hot path. Its SQL lives in ``bulk``; on SQLite the whole
transaction is one call on the writer's thread (``memory.sqlite_fast``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from memory.context import TailMessage
from memory.database import Database, translate_errors
from memory.store.attachments import media_in
from memory.store.base import Repository
from memory.store.bulk import BulkAppend, StaleHint, Tally
from memory.store.rows import (
    AppendOutcome,
    Mark,
    NewMessage,
    SessionDelta,
    Snapshot,
    messages,
    session_info,
    stored_message,
    summaries,
    summary_record,
    tail_after,
    utcnow,
)
from memory.types import Role, StoredMessage


class Messages(Repository):
    """The messages table: appends in batches, reads for export and for the cache."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self._bulk = BulkAppend(db.writer.dialect)

    async def append(
        self,
        items: Sequence[NewMessage],
        hints: Mapping[int, tuple[int, int]] | None = None,
        marks: Sequence[Mark] = (),
    ) -> AppendOutcome:
        """Store a batch in one transaction: gapless seqs, idempotent on platform ids;
        ``marks`` (changes of what stored messages are owed) ride the same transaction.

        ``hints`` maps a session id to the (last_seq, version) this process last saw
        committed. On SQLite, when every session of the batch has one, the batch skips
        reading the session rows and updates them only where the version still
        matches; if any row moved (another process wrote), it rolls back and runs
        again the ordinary way. It saves two round trips to the database thread.

        The fast path inserts the whole batch and lets the unique index on
        (chat, platform id) object. If it does (a repeated delivery, or another
        process that stored the same id first), the transaction rolls back, gaps
        and all, and each item is stored on its own behind an explicit check: a
        platform id already stored yields the stored message marked ``duplicate``.
        """
        async with translate_errors():
            try:
                try:
                    return await self._append_batch(items, hints, marks)
                except StaleHint:
                    return await self._append_batch(items, None, marks)
            except (IntegrityError, sqlite3.IntegrityError):
                pass
            if marks:
                await self._append_batch([], None, marks)
            outcome = AppendOutcome([])
            for item in items:
                try:
                    one = await self._append_checked(item)
                except Exception as error:  # isolate one item's failure from the batch
                    outcome.results.append(error)
                    continue
                outcome.results.extend(one.results)
                for sid, delta in one.deltas.items():
                    first = outcome.deltas.get(sid)
                    outcome.deltas[sid] = (
                        delta
                        if first is None
                        else SessionDelta(sid, first.version_before, delta.version_after)
                    )
            return outcome

    async def _append_checked(self, item: NewMessage) -> AppendOutcome:
        if item.platform_message_id is not None:
            found = await self._find_platform(item)
            if found is not None:
                return AppendOutcome([found])
        try:
            return await self._append_batch([item], None, ())
        except (IntegrityError, sqlite3.IntegrityError):
            found = await self._find_platform(item)  # lost a race with another process
            if found is None:
                raise
            return AppendOutcome([found])

    async def _find_platform(self, item: NewMessage) -> StoredMessage | None:
        async with self.db.writer.connect() as conn:
            row = (
                (
                    await conn.execute(
                        select(messages).where(
                            messages.c.chat_ref == item.chat_ref,
                            messages.c.platform_message_id == item.platform_message_id,
                        )
                    )
                )
                .mappings()
                .first()
            )
        return stored_message(row, duplicate=True) if row else None

    async def _append_batch(
        self,
        items: Sequence[NewMessage],
        hints: Mapping[int, tuple[int, int]] | None,
        marks: Sequence[Mark],
    ) -> AppendOutcome:
        now = utcnow()
        session_ids = sorted({i.session_id for i in items})
        if self.db.fast is not None:
            optimistic = hints is not None and all(s in hints for s in session_ids)
            # The whole transaction is one call on the writer's thread: a batch costs
            # one hand-off instead of one per statement.
            return await self.db.fast.on_writer(
                self._bulk.run_sqlite,
                items,
                session_ids,
                hints if optimistic else None,
                now,
                marks,
            )
        bulk = self._bulk
        outcome = AppendOutcome([])
        async with self.db.writer.begin() as conn:
            if items:
                locking = bulk.lock(len(session_ids))
                result = await conn.exec_driver_sql(locking, tuple(session_ids))
                rows: list[tuple[int, int, int]] = [tuple(r) for r in result]
                locked = {sid: Tally(last_seq, version) for sid, last_seq, version in rows}
                outcome, updates, inserts = bulk.plan(items, locked, now, check_version=False)
                if inserts:
                    await conn.exec_driver_sql(bulk.update, updates)
                    await conn.exec_driver_sql(bulk.insert, inserts)
                    if any(item.attachments for item in items):
                        rows = bulk.link_rows(items, outcome.results)
                        await conn.exec_driver_sql(bulk.insert_links, rows)
            if marks:
                await conn.exec_driver_sql(bulk.mark, list(marks))
        return outcome

    async def owed(
        self, since: datetime, chat_ref: str | None = None, limit: int = 1000
    ) -> list[StoredMessage]:
        """Messages still owed something (see memory.types.Delivery), newer than
        ``since``, oldest first: what a restart must still answer or deliver."""
        query = (
            select(messages)
            .where(messages.c.delivery.is_not(None), messages.c.created_at >= since)
            .order_by(messages.c.session_id, messages.c.seq)
            .limit(limit)
        )
        if chat_ref is not None:
            query = query.where(messages.c.chat_ref == chat_ref)
        async with translate_errors(), self.db.reader.connect() as conn:
            return [stored_message(r) for r in (await conn.execute(query)).mappings()]

    async def read(
        self,
        session_id: int,
        *,
        after: int = 0,
        through: int | None = None,
        limit: int | None = None,
    ) -> list[StoredMessage]:
        query = (
            select(messages)
            .where(messages.c.session_id == session_id, messages.c.seq > after)
            .order_by(messages.c.seq)
        )
        if through is not None:
            query = query.where(messages.c.seq <= through)
        if limit is not None:
            query = query.limit(limit)
        async with translate_errors(), self.db.reader.connect() as conn:
            return [stored_message(r) for r in (await conn.execute(query)).mappings()]

    async def snapshot(self, session_id: int) -> Snapshot:
        """The session, its active summaries and the messages not yet summarized."""
        async with translate_errors(), self.db.reader.begin() as conn:
            info = session_info(await self.session_row(conn, session_id))
            active = await conn.execute(
                select(summaries)
                .where(summaries.c.session_id == session_id, summaries.c.superseded_by.is_(None))
                .order_by(summaries.c.first_seq)
            )
            start = tail_after(info.summarized_through, info.context_start)
            # Only what a context needs, and only up to the row's last_seq, so the
            # tail matches the counters read above.
            m = messages.c
            tail = await conn.execute(
                select(m.role, m.token_count, m.text, m.author_name)
                .where(m.session_id == session_id, m.seq > start, m.seq <= info.last_seq)
                .order_by(m.seq)
            )
            roles = {role.value: role.value for role in Role}  # one str object per role
            cached: list[TailMessage] = [(roles[r[0]], r[1], r[2], r[3]) for r in tail.all()]
            # Messages that carried files get their MediaRefs as a fifth element.
            for seq, refs in (await media_in(conn, session_id, start, info.last_seq)).items():
                cached[seq - start - 1] = (*cached[seq - start - 1][:4], refs)
            return Snapshot(info, [summary_record(r) for r in active.mappings()], cached, start + 1)
