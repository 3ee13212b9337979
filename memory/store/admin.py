"""The operator's statements: sessions listed by filters a page at a time, one session
ended or deleted on request, a session restored from an export in one transaction,
and the counts that stats and metrics read.

Listings page by id, newest first, with the last id seen as the cursor: sessions
gain activity while someone pages through them, and an order by activity would
show one twice or skip it; ids never move.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Select,
    Table,
    delete,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from memory.admin_types import (
    InterfaceUsage,
    Restored,
    SessionFilter,
    SessionImport,
    SessionTotals,
    fingerprint,
)
from memory.database import translate_errors
from memory.errors import SessionNotFound, SessionNotOpen
from memory.models import SessionImportRow
from memory.store.base import Repository, bump_statement
from memory.store.rows import (
    CONTINUABLE,
    bindings,
    blobs,
    events,
    links,
    messages,
    projects,
    session_info,
    session_sums,
    sessions,
    summaries,
    summed_usage,
    utcnow,
)
from memory.store.sessions import lifecycle_event
from memory.types import SessionInfo, SessionStatus

session_imports: Table = SessionImportRow.__table__  # type: ignore[assignment]

# Rows inserted per statement when a session is restored.
_IMPORT_CHUNK = 1000


def _filtered(query: Select[Any], where: SessionFilter) -> Select[Any]:
    c = sessions.c
    if where.interface is not None:
        query = query.where(c.interface == where.interface)
    if where.chat_ref is not None:
        query = query.where(c.chat_ref == where.chat_ref)
    if where.statuses:
        query = query.where(c.status.in_([s.value for s in where.statuses]))
    if where.project_id is not None:
        query = query.where(c.project_id == where.project_id)
    if where.active_since is not None:
        query = query.where(c.last_activity_at >= where.active_since)
    if where.user is not None:
        interface, colon, user_id = where.user.rpartition(":")
        m = messages.c
        wrote = [m.session_id == c.id, m.author_id == (user_id if colon else where.user)]
        if colon:
            wrote.append(m.chat_ref.like(f"{interface}:%"))
        query = query.where(exists().where(*wrote))
    return query


class Admin(Repository):
    """Sessions as the operator sees them (see the module docstring)."""

    async def page(
        self, where: SessionFilter, *, before_id: int | None, limit: int
    ) -> list[SessionInfo]:
        """At most ``limit`` sessions matching ``where``, newest first, all with ids
        below ``before_id`` (the last id of the previous page)."""
        query = _filtered(select(sessions), where).order_by(sessions.c.id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(sessions.c.id < before_id)
        async with translate_errors(), self.db.reader.connect() as conn:
            return [session_info(r) for r in (await conn.execute(query)).mappings()]

    async def totals(self, where: SessionFilter) -> SessionTotals:
        query = _filtered(select(*session_sums()), where)
        async with translate_errors(), self.db.reader.connect() as conn:
            row = (await conn.execute(query)).one()
        return SessionTotals(*summed_usage(row))

    async def summary_counts(self, session_ids: Sequence[int]) -> dict[int, int]:
        """How many active summaries each of ``session_ids`` has."""
        if not session_ids:
            return {}
        s = summaries.c
        query = (
            select(s.session_id, func.count(s.id))
            .where(s.session_id.in_(list(session_ids)), s.superseded_by.is_(None))
            .group_by(s.session_id)
        )
        async with translate_errors(), self.db.reader.connect() as conn:
            return {int(sid): int(n) for sid, n in (await conn.execute(query)).all()}

    async def by_status(self) -> dict[str, int]:
        c = sessions.c
        query = select(c.status, func.count(c.id)).group_by(c.status)
        async with translate_errors(), self.db.reader.connect() as conn:
            return {str(status): int(n) for status, n in (await conn.execute(query)).all()}

    async def by_interface(self) -> list[InterfaceUsage]:
        c = sessions.c
        query = select(c.interface, *session_sums()).group_by(c.interface).order_by(c.interface)
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [InterfaceUsage(str(r[0]), *summed_usage(r, 1)) for r in rows]

    async def ping(self) -> None:
        """One round trip to the database (readiness)."""
        async with translate_errors(), self.db.reader.connect() as conn:
            await conn.execute(select(1))

    # -- writes ---------------------------------------------------------------------

    async def end(self, session_id: int) -> SessionInfo:
        """Close a session that is still going, as /reset closes one: the chat's next
        message starts a new session; this one stays readable until cleanup."""
        now = utcnow()

        def transaction(conn: Connection) -> SessionInfo:
            row = self._locked_row(conn, session_id)
            if row["status"] not in CONTINUABLE:
                raise SessionNotOpen(
                    f"session {session_id} is {row['status']} already; only active, idle "
                    "or finalized sessions can be ended"
                )
            conn.execute(bump_statement(row, status=SessionStatus.ENDED, ended_at=now))
            conn.execute(lifecycle_event(session_id, "ended", {"by": "operator"}))
            ended = conn.execute(select(sessions).where(sessions.c.id == session_id))
            return session_info(ended.mappings().one())

        async with translate_errors():
            return await self.db.run_write(transaction)

    async def delete(self, session_id: int) -> SessionInfo:
        """Delete one session with its messages, summaries and events, in one
        transaction; chats and projects that pointed at it start afresh."""

        def transaction(conn: Connection) -> SessionInfo:
            info = session_info(self._locked_row(conn, session_id))
            for table in (messages, summaries, events, session_imports):
                conn.execute(delete(table).where(table.c.session_id == session_id))
            conn.execute(
                update(bindings)
                .where(bindings.c.current_session_id == session_id)
                .values(current_session_id=None)
            )
            conn.execute(
                update(projects)
                .where(projects.c.current_session_id == session_id)
                .values(current_session_id=None)
            )
            conn.execute(delete(sessions).where(sessions.c.id == session_id))
            return info

        async with translate_errors():
            return await self.db.run_write(transaction)

    def _locked_row(self, conn: Connection, session_id: int) -> Any:
        row = (
            conn.execute(self.locked(select(sessions).where(sessions.c.id == session_id)))
            .mappings()
            .first()
        )
        if row is None:
            raise SessionNotFound(f"session {session_id} does not exist")
        return row

    async def restore(self, item: SessionImport) -> Restored:
        """Store an imported session in one transaction, or find it here already (this
        export was imported before, or the session never left). Nothing is written
        unless all of it is. Files are linked again where their bytes are here, or
        came with the export (kept now, once per content hash, in this transaction)."""
        now = utcnow()
        carried = {a.sha256: a for m in item.messages for a in m.attachments if a.data is not None}
        keep = None
        if carried:
            dialect = sqlite if self.db.is_sqlite else postgresql
            keep = dialect.insert(blobs)
            keep = keep.on_conflict_do_update(
                index_elements=["sha256"], set_={"last_used_at": keep.excluded.last_used_at}
            )

        def transaction(conn: Connection) -> Restored:
            known = conn.execute(
                select(sessions)
                .join(session_imports, session_imports.c.session_id == sessions.c.id)
                .where(session_imports.c.origin == item.origin)
            ).mappings()
            found = known.first()
            if found is not None:
                return Restored(session_info(found), False)
            same = conn.execute(select(sessions).where(sessions.c.id == item.id)).mappings()
            here = same.first()
            if here is not None and item.origin == fingerprint(
                here["id"],
                session_info(here).created_at,
                here["interface"],
                here["chat_ref"],
                here["scope"],
            ):
                return Restored(session_info(here), False)
            if keep is not None:
                for a in carried.values():  # one statement a blob, not one of all of them
                    conn.execute(
                        keep,
                        {
                            "sha256": a.sha256,
                            "media_type": a.media_type,
                            "size": len(a.data or b""),
                            "data": a.data,
                            "created_at": now,
                            "last_used_at": now,
                        },
                    )
            hashes = {a.sha256 for m in item.messages for a in m.attachments}
            present = set()
            if hashes:
                have = conn.execute(select(blobs.c.sha256).where(blobs.c.sha256.in_(hashes)))
                present = {str(h) for h in have.scalars()}
            linked = {
                m.seq: [a for a in m.attachments if a.sha256 in present] for m in item.messages
            }
            counts = {
                m.seq: m.token_count + sum(a.tokens for a in linked[m.seq]) for m in item.messages
            }
            new_id = self._restored_id(conn, item.id, taken=here is not None)
            project_id = item.project_id
            if project_id is not None:
                live = conn.execute(select(projects.c.id).where(projects.c.id == project_id))
                project_id = project_id if live.first() is not None else None
            last = item.messages[-1].seq if item.messages else 0
            through = max((s.last_seq for s in item.summaries), default=0)
            unsummarized = sum(counts[m.seq] for m in item.messages if m.seq > through)
            usage = item.usage
            values: dict[str, Any] = {
                "scope": item.scope,
                "chat_ref": item.chat_ref,
                "project_id": project_id,
                "interface": item.interface,
                "status": item.status.value,
                "created_at": item.created_at,
                "last_activity_at": item.last_activity_at,
                "ended_at": item.ended_at,
                "finalized_at": item.last_activity_at
                if item.status is SessionStatus.FINALIZED
                else None,
                "message_count": len(item.messages),
                "last_seq": last,
                "summarized_through": through,
                "context_start": 1,
                "message_tokens": sum(counts.values()),
                "unsummarized_tokens": unsummarized,
                "summary_tokens": sum(s.token_count for s in item.summaries),
                "tool_calls": 0,
                "errors": 0,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "cost_usd": usage.cost_usd,
                "state": {},
                "carried_summary": item.carried_summary,
                "closing_summary": item.closing_summary,
                "version": 1,
            }
            if new_id is not None:
                values["id"] = new_id
            sid = conn.execute(insert(sessions).values(**values).returning(sessions.c.id))
            session_id = int(sid.scalar_one())
            rows = [_message_row(session_id, m, counts[m.seq]) for m in item.messages]
            for start in range(0, len(rows), _IMPORT_CHUNK):
                conn.execute(insert(messages), rows[start : start + _IMPORT_CHUNK])
            files = [
                {
                    "session_id": session_id,
                    "seq": seq,
                    "position": position,
                    "sha256": a.sha256,
                    "name": a.name,
                    "kind": a.kind,
                    "media_type": a.media_type,
                    "size": a.size,
                    "width": a.width,
                    "height": a.height,
                    "pages": a.pages,
                    "tokens": a.tokens,
                }
                for seq, kept in linked.items()
                for position, a in enumerate(kept)
            ]
            if files:
                conn.execute(insert(links), files)
                conn.execute(
                    update(blobs).where(blobs.c.sha256.in_(present)).values(last_used_at=now)
                )
            if item.summaries:
                conn.execute(
                    insert(summaries),
                    [
                        {
                            "session_id": session_id,
                            "first_seq": s.first_seq,
                            "last_seq": s.last_seq,
                            "level": s.level,
                            "text": s.text,
                            "token_count": s.token_count,
                            "summarizer": s.summarizer,
                            "fallback": s.fallback,
                            "superseded_by": None,
                            "created_at": s.created_at,
                        }
                        for s in item.summaries
                    ],
                )
            conn.execute(
                insert(session_imports).values(
                    origin=item.origin, session_id=session_id, imported_at=now
                )
            )
            conn.execute(lifecycle_event(session_id, "imported", {"from": item.id}))
            stored = conn.execute(select(sessions).where(sessions.c.id == session_id))
            missing = sum(len(m.attachments) - len(linked[m.seq]) for m in item.messages)
            return Restored(session_info(stored.mappings().one()), True, missing)

        async with translate_errors():
            return await self.db.run_write(transaction)

    @staticmethod
    def _restored_id(conn: Connection, wanted: int, *, taken: bool) -> int | None:
        """``wanted`` if no session here ever had that id (ids are never reused: another
        process may still cache the one that had it), else None: a new id."""
        if taken:
            return None
        if conn.dialect.name == "sqlite":
            seq = conn.execute(text("SELECT seq FROM sqlite_sequence WHERE name = 'sessions'"))
            high = seq.scalar()
            return wanted if wanted > int(high or 0) else None
        name = conn.execute(text("SELECT pg_get_serial_sequence('sessions', 'id')")).scalar_one()
        last_value, called = conn.execute(
            text(f"SELECT last_value, is_called FROM {name}")  # a name PostgreSQL gave
        ).one()
        high = int(last_value) if called else int(last_value) - 1
        if wanted <= high:
            return None
        # Past the sequence: move it on, so that it never hands out this id again.
        conn.execute(
            text("SELECT setval(CAST(:name AS regclass), :id)"), {"name": name, "id": wanted}
        )
        return wanted


def _message_row(session_id: int, m: Any, token_count: int) -> dict[str, Any]:
    u = m.usage
    return {
        "session_id": session_id,
        "seq": m.seq,
        "role": m.role.value,
        "text": m.text,
        "token_count": token_count,
        "author_id": m.author_id,
        "author_name": m.author_name,
        # Imported history is no chat's live conversation: its platform ids do not
        # claim the chat's idempotency keys, and nothing is owed to anyone.
        "chat_ref": None,
        "platform_message_id": m.platform_message_id,
        "created_at": m.created_at,
        "meta": m.metadata,
        "input_tokens": None if u is None else u.input_tokens,
        "output_tokens": None if u is None else u.output_tokens,
        "cache_read_tokens": None if u is None else u.cache_read_tokens,
        "cache_write_tokens": None if u is None else u.cache_write_tokens,
        "cost_usd": None if u is None else u.cost_usd,
        "billed_to": None,
        "delivery": None,
    }
