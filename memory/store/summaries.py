"""Summaries: each covers an exact, contiguous range of message seqs; merged ones are
kept, pointing at the summary that replaced them. Nothing here deletes a message."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, insert, select, update

from memory.database import translate_errors
from memory.store.base import Repository
from memory.store.rows import (
    SessionDelta,
    messages,
    summaries,
    summary_record,
    tail_after,
    utcnow,
)
from memory.types import SummaryRecord


class Summaries(Repository):
    """The summaries table."""

    async def add(
        self,
        session_id: int,
        *,
        expected_through: int,
        first_seq: int,
        last_seq: int,
        text: str,
        token_count: int,
        summarizer: str,
        fallback: bool,
    ) -> tuple[SummaryRecord, SessionDelta] | None:
        """Record a level-1 summary of [first_seq, last_seq].

        Returns None, writing nothing, if the session's summarized range moved since
        the summary was planned (another process or a /clear got there first).
        """
        now = utcnow()
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self.session_row(conn, session_id, lock=True)
            start = tail_after(row["summarized_through"], row["context_start"]) + 1
            stale = row["summarized_through"] != expected_through or first_seq != start
            if stale or last_seq > row["last_seq"]:
                return None
            covered = (
                await conn.execute(
                    select(func.coalesce(func.sum(messages.c.token_count), 0)).where(
                        messages.c.session_id == session_id,
                        messages.c.seq >= first_seq,
                        messages.c.seq <= last_seq,
                    )
                )
            ).scalar_one()
            summary_id = (
                await conn.execute(
                    insert(summaries)
                    .values(
                        session_id=session_id,
                        first_seq=first_seq,
                        last_seq=last_seq,
                        level=1,
                        text=text,
                        token_count=token_count,
                        summarizer=summarizer,
                        fallback=fallback,
                        created_at=now,
                    )
                    .returning(summaries.c.id)
                )
            ).scalar_one()
            delta = await self.bump(
                conn,
                row,
                summarized_through=last_seq,
                unsummarized_tokens=max(0, row["unsummarized_tokens"] - int(covered)),
                summary_tokens=row["summary_tokens"] + token_count,
            )
            record = SummaryRecord(
                summary_id,
                session_id,
                first_seq,
                last_seq,
                1,
                text,
                token_count,
                summarizer,
                fallback,
                now,
            )
            return record, delta

    async def merge(
        self,
        session_id: int,
        *,
        merged_ids: Sequence[int],
        text: str,
        token_count: int,
        summarizer: str,
        fallback: bool,
    ) -> tuple[SummaryRecord, SessionDelta] | None:
        """Replace active summaries by one of a higher level covering their union.

        The replaced summaries are kept, marked ``superseded_by``. Returns None if the
        set of active summaries changed since the merge was planned.
        """
        now = utcnow()
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self.session_row(conn, session_id, lock=True)
            rows = (
                (
                    await conn.execute(
                        select(summaries).where(
                            summaries.c.session_id == session_id,
                            summaries.c.id.in_(list(merged_ids)),
                            summaries.c.superseded_by.is_(None),
                        )
                    )
                )
                .mappings()
                .all()
            )
            if len(rows) != len(merged_ids):
                return None
            first = min(r["first_seq"] for r in rows)
            last = max(r["last_seq"] for r in rows)
            level = max(r["level"] for r in rows) + 1
            old_tokens = sum(r["token_count"] for r in rows)
            new_id = (
                await conn.execute(
                    insert(summaries)
                    .values(
                        session_id=session_id,
                        first_seq=first,
                        last_seq=last,
                        level=level,
                        text=text,
                        token_count=token_count,
                        summarizer=summarizer,
                        fallback=fallback,
                        created_at=now,
                    )
                    .returning(summaries.c.id)
                )
            ).scalar_one()
            await conn.execute(
                update(summaries)
                .where(summaries.c.id.in_(list(merged_ids)))
                .values(superseded_by=new_id)
            )
            delta = await self.bump(
                conn,
                row,
                summary_tokens=max(0, row["summary_tokens"] - old_tokens) + token_count,
            )
            record = SummaryRecord(
                new_id, session_id, first, last, level, text, token_count, summarizer, fallback, now
            )
            return record, delta

    async def replace(
        self, summary_id: int, *, text: str, token_count: int, summarizer: str
    ) -> SessionDelta | None:
        """Rewrite a fallback summary's text (same range); None if it is gone."""
        async with translate_errors(), self.db.writer.begin() as conn:
            old = (
                (await conn.execute(select(summaries).where(summaries.c.id == summary_id)))
                .mappings()
                .first()
            )
            if old is None or old["superseded_by"] is not None:
                return None
            row = await self.session_row(conn, old["session_id"], lock=True)
            await conn.execute(
                update(summaries)
                .where(summaries.c.id == summary_id)
                .values(text=text, token_count=token_count, summarizer=summarizer, fallback=False)
            )
            return await self.bump(
                conn,
                row,
                summary_tokens=max(0, row["summary_tokens"] - old["token_count"]) + token_count,
            )

    async def of(self, session_id: int, *, include_superseded: bool = False) -> list[SummaryRecord]:
        query = select(summaries).where(summaries.c.session_id == session_id)
        if not include_superseded:
            query = query.where(summaries.c.superseded_by.is_(None))
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = await conn.execute(query.order_by(summaries.c.level, summaries.c.first_seq))
            return [summary_record(r) for r in rows.mappings()]
