"""Events and state: tool calls, errors and lifecycle changes of a session, counted on
its row; and its free-form JSON state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from memory.database import translate_errors
from memory.store.base import Repository
from memory.store.rows import SessionDelta, events, utcnow


class Events(Repository):
    """The events table, and the counters and state on the session row."""

    async def update_state(
        self, session_id: int, patch: Mapping[Any, Any]
    ) -> tuple[dict[str, Any], SessionDelta]:
        """Merge ``patch`` into the session's state; a None value removes a key."""
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self.session_row(conn, session_id, lock=True)
            state = dict(row["state"] or {})
            for k, v in patch.items():
                if v is None:
                    state.pop(k, None)
                else:
                    state[k] = v
            delta = await self.bump(conn, row, state=state)
            return state, delta

    async def _event(
        self,
        conn: AsyncConnection,
        session_id: int | None,
        kind: str,
        name: str,
        detail: dict[str, Any] | None,
    ) -> None:
        await conn.execute(
            insert(events).values(
                session_id=session_id, kind=kind, name=name, detail=detail, created_at=utcnow()
            )
        )

    async def record(
        self, session_id: int, kind: str, name: str, detail: dict[str, Any] | None = None
    ) -> SessionDelta:
        """Record a tool call, an error or a lifecycle event, and count it."""
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self.session_row(conn, session_id, lock=True)
            await self._event(conn, session_id, kind, name, detail)
            counters: dict[str, Any] = {}
            if kind == "tool_call":
                counters["tool_calls"] = row["tool_calls"] + 1
            elif kind == "error":
                counters["errors"] = row["errors"] + 1
            return await self.bump(conn, row, **counters)

    async def of(self, session_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(events).where(events.c.session_id == session_id).order_by(events.c.id)
        if kind:
            query = query.where(events.c.kind == kind)
        async with translate_errors(), self.db.reader.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]
