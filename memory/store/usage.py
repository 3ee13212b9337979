"""Usage and stats: spend per user and day, totals, global counts, and the per-model
calibration of token estimates against what the API reported."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Select, String, bindparam, func, insert, select, union_all, update

from memory.database import translate_errors
from memory.store.base import Repository
from memory.store.rows import (
    calibration,
    events,
    messages,
    session_sums,
    sessions,
    summed_usage,
    utcnow,
)
from memory.types import SessionStatus, Usage


def _charged(table: Any) -> Select[Any]:
    return select(table.c.cost_usd.label("cost")).where(
        table.c.billed_to == bindparam("billed_to"),
        table.c.created_at >= bindparam("since"),
    )


# Replies (messages) and failed calls that still cost something (error events).
_CHARGES = union_all(_charged(messages), _charged(events)).subquery()
SPEND: Select[Any] = select(func.coalesce(func.sum(_CHARGES.c.cost), 0.0).label("spent"))


class UsageLedger(Repository):
    """Reported usage, as stored with each model reply."""

    async def spent(self, *, billed_to: str, since: datetime) -> float:
        """USD charged to ``billed_to`` since ``since`` (indexed: billed_to, created_at)."""
        rows = await self.read_hot(SPEND, {"billed_to": billed_to, "since": since})
        return float(rows[0]["spent"])

    async def totals(self, by: str, *, since: datetime | None = None) -> dict[str, Usage]:
        """Reported usage and cost grouped by "user", "session", "project" or "day"."""
        m = messages.c
        keys: dict[str, Any] = {
            "user": m.billed_to,
            "session": m.session_id,
            "project": sessions.c.project_id,
            "day": func.substr(func.cast(m.created_at, String), 1, 10),
        }
        if by not in keys:
            raise ValueError(f"usage totals by {by!r}; expected one of {', '.join(keys)}")
        key = keys[by]
        query = (
            select(
                key,
                func.coalesce(func.sum(m.input_tokens), 0),
                func.coalesce(func.sum(m.output_tokens), 0),
                func.coalesce(func.sum(m.cache_read_tokens), 0),
                func.coalesce(func.sum(m.cache_write_tokens), 0),
                func.coalesce(func.sum(m.cost_usd), 0.0),
            )
            .select_from(messages.join(sessions, sessions.c.id == m.session_id))
            .where(m.output_tokens.is_not(None))
            .group_by(key)
        )
        if since is not None:
            query = query.where(m.created_at >= since)
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {
            str(row[0]): Usage(int(row[1]), int(row[2]), int(row[3]), int(row[4]), float(row[5]))
            for row in rows
        }

    async def global_counts(self) -> dict[str, Any]:
        c = sessions.c
        async with translate_errors(), self.db.reader.connect() as conn:
            totals = (await conn.execute(select(*session_sums()))).one()
            active = (
                await conn.execute(
                    select(func.count(c.id)).where(
                        c.status.in_([SessionStatus.ACTIVE, SessionStatus.IDLE])
                    )
                )
            ).scalar_one()
            by_interface = {
                row[0]: row[1]
                for row in await conn.execute(
                    select(c.interface, func.count(c.id)).group_by(c.interface)
                )
            }
        count, messages_, usage = summed_usage(totals)
        return {
            "sessions_total": count,
            "messages": messages_,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "cost_usd": usage.cost_usd,
            "sessions_active": int(active),
            "by_interface": by_interface,
        }

    async def load_calibration(self) -> dict[str, tuple[int, int]]:
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = await conn.execute(select(calibration))
            return {
                r["model"]: (r["estimated_tokens"], r["reported_tokens"]) for r in rows.mappings()
            }

    async def add_calibration(self, model: str, estimated: int, reported: int) -> tuple[int, int]:
        async with translate_errors(), self.db.writer.begin() as conn:
            row = (
                (
                    await conn.execute(
                        self.locked(select(calibration).where(calibration.c.model == model))
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                await conn.execute(
                    insert(calibration).values(
                        model=model,
                        estimated_tokens=estimated,
                        reported_tokens=reported,
                        samples=1,
                        updated_at=utcnow(),
                    )
                )
                return estimated, reported
            total = (row["estimated_tokens"] + estimated, row["reported_tokens"] + reported)
            await conn.execute(
                update(calibration)
                .where(calibration.c.model == model)
                .values(
                    estimated_tokens=total[0],
                    reported_tokens=total[1],
                    samples=row["samples"] + 1,
                    updated_at=utcnow(),
                )
            )
            return total
