"""Sessions: which session a chat is in, opening a new one, and the lifecycle states.

A chat's current session is found in one read (its binding, joined with its active
project and the session either points at); opening or resetting runs in one write
transaction that locks the binding, so two processes resolving one chat at once
agree on a single session.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, bindparam, case, delete, insert, or_, select, update

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


def lifecycle_event(session_id: int, name: str, detail: dict[str, Any] | None = None) -> Any:
    """The events row that records a session's change of state."""
    return insert(events).values(
        session_id=session_id, kind="lifecycle", name=name, detail=detail, created_at=utcnow()
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

    async def finalize(
        self, session_id: int, *, expected_version: int, closing_summary: str | None
    ) -> SessionDelta | None:
        """Idle -> finalized with its closing summary, unless the session changed since
        ``expected_version`` (a message arrived while the summary was written)."""
        now = utcnow()
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
            await conn.execute(lifecycle_event(session_id, "finalized"))
            return SessionDelta(session_id, expected_version, expected_version + 1)

    async def set_closing_summary(self, session_id: int, text: str) -> None:
        """Give a session that ended without one its closing summary (first one wins)."""
        async with translate_errors(), self.db.writer.begin() as conn:
            await conn.execute(
                update(sessions)
                .where(sessions.c.id == session_id, sessions.c.closing_summary.is_(None))
                .values(closing_summary=text, version=sessions.c.version + 1)
            )

    async def mark_idle(self, inactive_since: datetime) -> list[int]:
        """Active sessions with no activity since ``inactive_since`` become idle."""
        async with translate_errors(), self.db.writer.begin() as conn:
            ids = (
                (
                    await conn.execute(
                        update(sessions)
                        .where(
                            sessions.c.status == SessionStatus.ACTIVE,
                            sessions.c.last_activity_at < inactive_since,
                        )
                        .values(status=SessionStatus.IDLE, version=sessions.c.version + 1)
                        .returning(sessions.c.id)
                    )
                )
                .scalars()
                .all()
            )
            return list(ids)

    async def expire(self, inactive_since: datetime) -> list[int]:
        """Sessions with no activity since ``inactive_since`` become expired."""
        now = utcnow()
        async with translate_errors(), self.db.writer.begin() as conn:
            ids = (
                (
                    await conn.execute(
                        update(sessions)
                        .where(
                            sessions.c.status.in_([s.value for s in CONTINUABLE]),
                            sessions.c.last_activity_at < inactive_since,
                        )
                        .values(
                            status=SessionStatus.EXPIRED,
                            ended_at=now,
                            version=sessions.c.version + 1,
                        )
                        .returning(sessions.c.id)
                    )
                )
                .scalars()
                .all()
            )
            return list(ids)

    async def delete_ended(self, ended_before: datetime) -> int:
        """Delete expired and ended sessions (with their messages) past retention."""
        async with translate_errors(), self.db.writer.begin() as conn:
            doomed = select(sessions.c.id).where(
                sessions.c.status.in_([SessionStatus.EXPIRED, SessionStatus.ENDED]),
                or_(sessions.c.ended_at < ended_before, sessions.c.ended_at.is_(None)),
                sessions.c.last_activity_at < ended_before,
            )
            ids = list((await conn.execute(doomed)).scalars().all())
            if not ids:
                return 0
            # Explicit child deletes: SQLite only cascades with foreign keys on. The
            # files' blobs go with the orphan sweep (Attachments.delete_orphans).
            for table in (links, messages, summaries, events):
                await conn.execute(delete(table).where(table.c.session_id.in_(ids)))
            await conn.execute(
                update(bindings)
                .where(bindings.c.current_session_id.in_(ids))
                .values(current_session_id=None)
            )
            await conn.execute(
                update(projects)
                .where(projects.c.current_session_id.in_(ids))
                .values(current_session_id=None)
            )
            await conn.execute(delete(sessions).where(sessions.c.id.in_(ids)))
            return len(ids)
