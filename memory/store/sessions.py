"""Sessions: which session a chat is in, opening a new one, and the lifecycle states.

A chat's current session is found in one read (its binding, joined with its active
project and the session either points at); opening or resetting runs in one write
transaction that locks the binding, so two processes resolving one chat at once
agree on a single session.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    Table,
    and_,
    bindparam,
    case,
    delete,
    insert,
    or_,
    select,
    tuple_,
    update,
)

from memory.database import translate_errors
from memory.store.base import Repository, bump_statement
from memory.store.projects import bind_chat
from memory.store.rows import (
    CONTINUABLE,
    SessionDelta,
    as_utc,
    bindings,
    events,
    links,
    messages,
    project_of,
    projects,
    session_info,
    sessions,
    summaries,
    utcnow,
)
from memory.types import ChatKey, Project, SessionInfo, SessionStatus

CURRENT_SESSION: Select[Any] = (
    select(
        sessions,
        *(column.label(f"bound_{column.key}") for column in projects.c),
    )
    .select_from(
        bindings.outerjoin(projects, projects.c.id == bindings.c.active_project_id).outerjoin(
            sessions,
            sessions.c.id
            == case(
                (bindings.c.active_project_id.is_not(None), projects.c.current_session_id),
                else_=bindings.c.current_session_id,
            ),
        )
    )
    .where(bindings.c.chat_ref == bindparam("ref"))
)
SESSION_VERSION: Select[Any] = select(sessions.c.version).where(sessions.c.id == bindparam("id"))


# What is deleted with a session past retention, in this order, in batches: every
# table here has a ``session_id`` column. Tables that later hang off a session (the
# Claude Code transcripts, claude_code_*) are added here, and cleanup deletes them too.
# What is deleted with a session (the files' links before their messages; the blobs
# themselves go with the orphan sweep, Attachments.delete_orphans).
SESSION_CHILDREN: tuple[Table, ...] = (links, messages, summaries, events)


def lifecycle_event(
    session_id: int,
    name: str,
    detail: dict[str, Any] | None = None,
    *,
    at: datetime | None = None,
) -> Any:
    """The events row that records a session's change of state."""
    return insert(events).values(
        session_id=session_id,
        kind="lifecycle",
        name=name,
        detail=detail,
        created_at=at or utcnow(),
    )


class Sessions(Repository):
    """The sessions table, and the chat bindings and projects that point into it."""

    async def get(self, session_id: int) -> SessionInfo:
        async with translate_errors(), self.db.reader.connect() as conn:
            return session_info(await self.session_row(conn, session_id))

    async def current(self, key: ChatKey) -> tuple[SessionInfo | None, Project | None]:
        """The chat's current session (its project's, or its own) and its active project.

        One round trip: this runs at the start of every turn, which is also why a
        project's settings are read here: an edit is seen by the next turn in every
        process.
        """
        rows = await self.read_hot(CURRENT_SESSION, {"ref": key.ref})
        row = rows[0] if rows else None
        if row is None:
            return None, None
        project = None
        if row["bound_id"] is not None:
            project = project_of({k[6:]: v for k, v in row.items() if k.startswith("bound_")})
        return (session_info(row) if row["id"] is not None else None), project

    async def open(
        self, key: ChatKey, *, expire_after: timedelta, carry_summary: bool, force_new: bool
    ) -> SessionInfo:
        """The chat's usable session, or a new one; with ``force_new``, always a new one.

        Runs in one write transaction, so two processes resolving the same chat at
        once agree on a single session.
        """
        now = utcnow()

        def transaction(conn: Connection) -> SessionInfo:
            binding = bind_chat(conn, key, now)
            project_id = binding["active_project_id"]
            project = None
            if project_id is not None:
                project = (
                    conn.execute(self.locked(select(projects).where(projects.c.id == project_id)))
                    .mappings()
                    .one()
                )
                current_id = project["current_session_id"]
            else:
                current_id = binding["current_session_id"]
            carried: str | None = None
            if current_id is not None:
                row = (
                    conn.execute(self.locked(select(sessions).where(sessions.c.id == current_id)))
                    .mappings()
                    .first()
                )
                if row is not None:
                    usable = (
                        row["status"] in CONTINUABLE
                        and as_utc(row["last_activity_at"]) + expire_after > now
                    )
                    if usable and not force_new:
                        return session_info(row)
                    if row["status"] in CONTINUABLE:
                        status = SessionStatus.ENDED if force_new else SessionStatus.EXPIRED
                        conn.execute(bump_statement(row, status=status, ended_at=now))
                    if carry_summary and not force_new:
                        carried = row["closing_summary"]
            new_id = conn.execute(
                insert(sessions)
                .values(
                    scope="project" if project_id else "chat",
                    chat_ref=None if project_id else key.ref,
                    project_id=project_id,
                    interface=key.interface,
                    status=SessionStatus.ACTIVE,
                    created_at=now,
                    last_activity_at=now,
                    state={},
                    carried_summary=carried,
                )
                .returning(sessions.c.id)
            ).scalar_one()
            if project is not None:
                conn.execute(
                    update(projects)
                    .where(projects.c.id == project_id)
                    .values(current_session_id=new_id)
                )
            else:
                conn.execute(
                    update(bindings)
                    .where(bindings.c.id == binding["id"])
                    .values(current_session_id=new_id, updated_at=now)
                )
            conn.execute(
                insert(events).values(
                    session_id=new_id,
                    kind="lifecycle",
                    name="reset" if force_new else "created",
                    detail={"chat": key.ref},
                    created_at=now,
                )
            )
            created = conn.execute(select(sessions).where(sessions.c.id == new_id))
            return session_info(created.mappings().one())

        async with translate_errors():
            return await self.db.run_write(transaction)

    async def find(
        self,
        *,
        status: SessionStatus | None = None,
        interface: str | None = None,
        chat_ref: str | None = None,
        project_id: int | None = None,
        active_since: datetime | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[SessionInfo]:
        query = select(sessions).order_by(sessions.c.last_activity_at.desc(), sessions.c.id.desc())
        if status is not None:
            query = query.where(sessions.c.status == status)
        if interface is not None:
            query = query.where(sessions.c.interface == interface)
        if chat_ref is not None:
            query = query.where(sessions.c.chat_ref == chat_ref)
        if project_id is not None:
            query = query.where(sessions.c.project_id == project_id)
        if active_since is not None:
            query = query.where(sessions.c.last_activity_at >= active_since)
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = (await conn.execute(query.limit(limit).offset(offset))).mappings()
            return [session_info(r) for r in rows]

    async def version(self, session_id: int) -> int | None:
        rows = await self.read_hot(SESSION_VERSION, {"id": session_id})
        return int(rows[0]["version"]) if rows else None

    async def set_status(
        self, session_id: int, status: SessionStatus, *, closing_summary: str | None = None
    ) -> SessionDelta:
        now = utcnow()
        values: dict[str, Any] = {"status": status}
        if status is SessionStatus.FINALIZED:
            values["finalized_at"] = now
            values["closing_summary"] = closing_summary
        if status in (SessionStatus.EXPIRED, SessionStatus.ENDED):
            values["ended_at"] = now
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self.session_row(conn, session_id, lock=True)
            await conn.execute(lifecycle_event(session_id, status.value))
            return await self.bump(conn, row, **values)

    # -- lifecycle: idle, finalized, expired, deleted (run by the jobs) ---------------

    async def finalize(
        self,
        session_id: int,
        *,
        expected_version: int,
        closing_summary: str | None,
        now: datetime | None = None,
    ) -> SessionDelta | None:
        """Idle -> finalized with its closing summary, unless the session changed since
        ``expected_version`` (a message arrived while the summary was written)."""
        now = now or utcnow()
        async with translate_errors(), self.db.writer.begin() as conn:
            done = (
                await conn.execute(
                    update(sessions)
                    .where(
                        sessions.c.id == session_id,
                        sessions.c.version == expected_version,
                        sessions.c.status == SessionStatus.IDLE,
                    )
                    .values(
                        status=SessionStatus.FINALIZED,
                        finalized_at=now,
                        closing_summary=closing_summary,
                        version=sessions.c.version + 1,
                    )
                    .returning(sessions.c.id)
                )
            ).first()
            if done is None:
                return None
            await conn.execute(lifecycle_event(session_id, "finalized", at=now))
            return SessionDelta(session_id, expected_version, expected_version + 1)

    async def set_closing_summary(self, session_id: int, text: str) -> None:
        """Give a session that ended without one its closing summary (first one wins)."""
        async with translate_errors(), self.db.writer.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.closing_summary.is_(None))
                .values(closing_summary=text, version=sessions.c.version + 1)
            )

    async def _move(
        self,
        statuses: Sequence[SessionStatus],
        inactive_since: datetime,
        limit: int | None,
        values: dict[str, Any],
    ) -> list[int]:
        """Sessions in ``statuses`` with no activity since ``inactive_since`` (the
        quietest ``limit`` of them) get ``values`` and a new version, in one statement."""
        quiet = [
            sessions.c.status.in_([s.value for s in statuses]),
            sessions.c.last_activity_at < inactive_since,
        ]
        statement = update(sessions).where(*quiet)
        if limit is not None:
            pick = (
                select(sessions.c.id)
                .where(*quiet)
                .order_by(sessions.c.last_activity_at, sessions.c.id)
                .limit(limit)
            )
            statement = statement.where(sessions.c.id.in_(pick.scalar_subquery()))
        statement = statement.values(version=sessions.c.version + 1, **values)

        def transaction(conn: Connection) -> list[int]:
            return list(conn.execute(statement.returning(sessions.c.id)).scalars().all())

        async with translate_errors():
            return await self.db.run_write(transaction)

    async def mark_idle(self, inactive_since: datetime, *, limit: int | None = None) -> list[int]:
        """Active sessions with no activity since ``inactive_since`` become idle (at
        most ``limit``, the quietest first)."""
        return await self._move(
            (SessionStatus.ACTIVE,), inactive_since, limit, {"status": SessionStatus.IDLE}
        )

    async def idle(self, *, after_id: int = 0, limit: int = 100) -> list[SessionInfo]:
        """Idle sessions by id, from ``after_id`` on: the finalize job's worklist."""
        query = (
            select(sessions)
            .where(sessions.c.status == SessionStatus.IDLE, sessions.c.id > after_id)
            .order_by(sessions.c.id)
            .limit(limit)
        )
        async with translate_errors(), self.db.reader.connect() as conn:
            return [session_info(r) for r in (await conn.execute(query)).mappings()]

    async def expire(
        self, inactive_since: datetime, *, now: datetime | None = None, limit: int | None = None
    ) -> list[int]:
        """Sessions with no activity since ``inactive_since`` become expired (at most
        ``limit``, the quietest first)."""
        return await self._move(
            CONTINUABLE,
            inactive_since,
            limit,
            {"status": SessionStatus.EXPIRED, "ended_at": now or utcnow()},
        )

    async def with_fallback_summaries(self, *, after_id: int = 0, limit: int = 100) -> list[int]:
        """Ids of sessions, from ``after_id`` on, that have an active summary the
        extractive fallback wrote: the upgrade job's worklist."""
        query = (
            select(summaries.c.session_id)
            .where(
                summaries.c.fallback.is_(True),
                summaries.c.superseded_by.is_(None),
                summaries.c.session_id > after_id,
            )
            .distinct()
            .order_by(summaries.c.session_id)
            .limit(limit)
        )
        async with translate_errors(), self.db.reader.connect() as conn:
            return list((await conn.execute(query)).scalars())

    async def past_retention(self, before: datetime, *, limit: int) -> list[tuple[int, str | None]]:
        """(id, chat_ref) of expired and ended sessions with nothing since ``before``."""
        query = (
            select(sessions.c.id, sessions.c.chat_ref)
            .where(_past_retention(before))
            .order_by(sessions.c.last_activity_at, sessions.c.id)
            .limit(limit)
        )
        async with translate_errors(), self.db.reader.connect() as conn:
            return [(r.id, r.chat_ref) for r in await conn.execute(query)]

    async def delete_children(
        self, table: Table, session_ids: Sequence[int], before: datetime, *, limit: int
    ) -> int:
        """Delete up to ``limit`` rows of ``table`` that belong to those of
        ``session_ids`` still past retention; returns how many. One short transaction,
        and the check is in it: a session that took a message meanwhile is left alone.
        """
        key = list(table.primary_key.columns)
        doomed = select(sessions.c.id).where(
            sessions.c.id.in_(list(session_ids)), _past_retention(before)
        )
        # In session order: along an index on session_id, past the rows earlier
        # batches deleted (PostgreSQL would otherwise scan the table from its start,
        # over their dead tuples, every batch: quadratic).
        rows = (
            select(*key)
            .where(table.c.session_id.in_(doomed.scalar_subquery()))
            .order_by(table.c.session_id)
            .limit(limit)
        )
        statement = delete(table).where(
            key[0].in_(rows.scalar_subquery()) if len(key) == 1 else tuple_(*key).in_(rows)
        )

        def transaction(conn: Connection) -> int:
            return int(conn.execute(statement).rowcount)

        async with translate_errors():
            return await self.db.run_write(transaction)

    async def delete_sessions(
        self, doomed: Sequence[tuple[int, str | None]], before: datetime
    ) -> list[int]:
        """Delete those of the sessions still past retention, with what is left of their
        rows in ``SESSION_CHILDREN`` (little, after ``delete_children``); the chats and
        projects that still point at them are unbound. Returns the ids deleted."""
        ids = [sid for sid, _ in doomed]
        refs = sorted({ref for _, ref in doomed if ref is not None})

        def transaction(conn: Connection) -> list[int]:
            still = list(
                conn.execute(
                    self.locked(
                        select(sessions.c.id).where(sessions.c.id.in_(ids), _past_retention(before))
                    )
                ).scalars()
            )
            if not still:
                return []
            # Explicit child deletes: a table added to SESSION_CHILDREN may have no
            # cascading foreign key.
            for table in SESSION_CHILDREN:
                conn.execute(delete(table).where(table.c.session_id.in_(still)))
            if refs:
                # By chat_ref, along its unique index: current_session_id has none.
                conn.execute(
                    update(bindings)
                    .where(bindings.c.chat_ref.in_(refs), bindings.c.current_session_id.in_(still))
                    .values(current_session_id=None)
                )
            conn.execute(
                update(projects)
                .where(projects.c.current_session_id.in_(still))
                .values(current_session_id=None)
            )
            conn.execute(delete(sessions).where(sessions.c.id.in_(still)))
            return still

        async with translate_errors():
            return await self.db.run_write(transaction)

    async def delete_ended(self, ended_before: datetime, *, batch: int = 1000) -> int:
        """Delete every expired and ended session past retention, with all its rows,
        in transactions of at most ``batch`` rows; returns how many sessions.
        (memory.lifecycle does the same step by step, yielding between batches.)"""
        deleted = 0
        while doomed := await self.past_retention(ended_before, limit=100):
            ids = [sid for sid, _ in doomed]
            for table in SESSION_CHILDREN:
                while await self.delete_children(table, ids, ended_before, limit=batch) == batch:
                    pass
            deleted += len(await self.delete_sessions(doomed, ended_before))
        return deleted


def _past_retention(before: datetime) -> Any:
    """Expired or ended, and nothing happened to it since ``before``."""
    return and_(
        sessions.c.status.in_([SessionStatus.EXPIRED.value, SessionStatus.ENDED.value]),
        or_(sessions.c.ended_at < before, sessions.c.ended_at.is_(None)),
        sessions.c.last_activity_at < before,
    )
