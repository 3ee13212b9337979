"""Attachments: file bytes kept once by content hash, and the messages that link to them.

A message's links are written with the message itself, in the batch append
(memory.store.bulk), so a message and its files are stored together or not at all.
Their blobs are written just before, in a transaction of their own: a blob no message
links to (the append failed, or its messages were deleted by retention) is swept by
``delete_orphans`` once it has not been used for a while.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, exists, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from memory.attachments import NewAttachment, StoredAttachment
from memory.context import MediaRef
from memory.database import translate_errors
from memory.store.base import Repository
from memory.store.rows import blobs, links, messages, utcnow


def stored_attachment(row: Any) -> StoredAttachment:
    return StoredAttachment(
        seq=row.seq,
        position=row.position,
        name=row.name,
        kind=row.kind,
        media_type=row.media_type,
        sha256=row.sha256,
        size=row.size,
        tokens=row.tokens,
        width=row.width,
        height=row.height,
        pages=row.pages,
    )


async def media_in(
    conn: AsyncConnection, session_id: int, after: int, through: int
) -> dict[int, tuple[MediaRef, ...]]:
    """The files of a session's messages after seq ``after`` through ``through``, as
    the cache's MediaRef tuples by seq: what a snapshot's tail needs of them."""
    c = links.c
    rows = await conn.execute(
        select(c.seq, c.sha256, c.media_type, c.tokens, c.size, c.pages)
        .where(c.session_id == session_id, c.seq > after, c.seq <= through)
        .order_by(c.seq, c.position)
    )
    found: dict[int, list[MediaRef]] = {}
    for seq, sha256, media_type, tokens, size, pages in rows:
        found.setdefault(seq, []).append((sha256, media_type, tokens, size, pages or 0))
    return {seq: tuple(refs) for seq, refs in found.items()}


class Attachments(Repository):
    """The attachment_blobs and message_attachments tables."""

    async def put_blobs(self, items: Sequence[NewAttachment]) -> None:
        """Keep each file's bytes, once per content; a blob kept already is only marked
        as used now (so that the sweep of unlinked blobs leaves it alone)."""
        now = utcnow()
        rows = {
            a.sha256: {
                "sha256": a.sha256,
                "media_type": a.media_type,
                "size": len(a.data),
                "data": a.data,
                "created_at": now,
                "last_used_at": now,
            }
            for a in items
        }
        if not rows:
            return
        dialect = sqlite if self.db.is_sqlite else postgresql
        statement = dialect.insert(blobs).values(list(rows.values()))
        statement = statement.on_conflict_do_update(
            index_elements=["sha256"], set_={"last_used_at": statement.excluded.last_used_at}
        )

        def transaction(conn: Connection) -> None:
            conn.execute(statement)

        async with translate_errors():
            await self.db.run_write(transaction)

    async def usage(self, session_id: int) -> tuple[int, frozenset[str]]:
        """The bytes of the distinct files a session keeps, and their hashes."""
        kept = select(links.c.sha256).where(links.c.session_id == session_id)
        query = select(blobs.c.sha256, blobs.c.size).where(blobs.c.sha256.in_(kept))
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return sum(size for _, size in rows), frozenset(sha for sha, _ in rows)

    async def of_session(
        self, session_id: int, *, after: int = 0, through: int | None = None
    ) -> dict[int, list[StoredAttachment]]:
        """The files of a session's messages after seq ``after`` (through ``through``),
        by seq, in the order they were sent."""
        query = (
            select(links)
            .where(links.c.session_id == session_id, links.c.seq > after)
            .order_by(links.c.seq, links.c.position)
        )
        if through is not None:
            query = query.where(links.c.seq <= through)
        found: dict[int, list[StoredAttachment]] = {}
        async with translate_errors(), self.db.reader.connect() as conn:
            for row in await conn.execute(query):
                found.setdefault(row.seq, []).append(stored_attachment(row))
        return found

    async def data(self, hashes: Iterable[str]) -> dict[str, bytes]:
        """The bytes of the files with these content hashes (those still kept)."""
        wanted = sorted(set(hashes))
        if not wanted:
            return {}
        query = select(blobs.c.sha256, blobs.c.data).where(blobs.c.sha256.in_(wanted))
        async with translate_errors(), self.db.reader.connect() as conn:
            return {sha: bytes(data) for sha, data in await conn.execute(query)}

    async def delete_orphans(self, unused_before: datetime, limit: int = 500) -> int:
        """Delete up to ``limit`` blobs that no message links to and that have not been
        used since ``unused_before``; returns how many. Links whose message is gone
        (where the database did not cascade) go first."""
        link, m, b = links.c, messages.c, blobs.c
        orphaned = (
            select(b.sha256)
            .where(b.last_used_at < unused_before, ~exists().where(link.sha256 == b.sha256))
            .limit(limit)
        )
        async with translate_errors(), self.db.writer.begin() as conn:
            await conn.execute(
                delete(links).where(
                    ~exists().where(m.session_id == link.session_id, m.seq == link.seq)
                )
            )
            doomed = list((await conn.execute(orphaned)).scalars())
            if doomed:
                await conn.execute(delete(blobs).where(b.sha256.in_(doomed)))
        return len(doomed)

    async def count_blobs(self) -> tuple[int, int]:
        """How many blobs are kept, and their bytes (for stats and tests)."""
        query = select(func.count(), func.coalesce(func.sum(blobs.c.size), 0))
        async with translate_errors(), self.db.reader.connect() as conn:
            count, size = (await conn.execute(query)).one()
        return int(count), int(size)
