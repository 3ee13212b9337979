"""Events and state: tool calls, errors and lifecycle changes of a session, counted on
its row; and its free-form JSON state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select

from memory.database import translate_errors
from memory.store.base import Repository
from memory.store.rows import SessionDelta, events, utcnow
from memory.types import Usage

_TOKENS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens")


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

    async def record(
        self,
        session_id: int,
        kind: str,
        name: str,
        detail: dict[str, Any] | None = None,
        *,
        usage: Usage | None = None,
        billed_to: str | None = None,
    ) -> SessionDelta:
        """Record a tool call, an error or a lifecycle event, and count it; ``usage``
        (a failed call's cost) is added to the session's totals and charged to
        ``billed_to``."""
        charge: dict[str, Any] = {}
        if usage is not None:
            charge = {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "cost_usd": usage.cost_usd,
                "billed_to": billed_to,
            }
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self.session_row(conn, session_id, lock=True)
            await conn.execute(
                insert(events).values(
                    session_id=session_id,
                    kind=kind,
                    name=name,
                    detail=detail,
                    created_at=utcnow(),
                    **charge,
                )
            )
            counters: dict[str, Any] = {}
            if kind == "tool_call":
                counters["tool_calls"] = row["tool_calls"] + 1
            elif kind == "error":
                counters["errors"] = row["errors"] + 1
            if usage is not None:
                for column in ("input_tokens", "output_tokens", "cache_read_tokens"):
                    counters[column] = row[column] + charge[column]
                counters["cache_write_tokens"] = (
                    row["cache_write_tokens"] + usage.cache_write_tokens
                )
                counters["cost_usd"] = row["cost_usd"] + usage.cost_usd
            return await self.bump(conn, row, **counters)

    async def of(self, session_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(events).where(events.c.session_id == session_id).order_by(events.c.id)
        if kind:
            query = query.where(events.c.kind == kind)
        async with translate_errors(), self.db.reader.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]
