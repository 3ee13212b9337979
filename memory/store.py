"""The async store: every SQL statement Palaver runs lives here.

Core statements over the tables of memory.models, returning the plain data of
memory.types. Every write to a session bumps its ``version`` inside the same
transaction that locks the row (``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE`` on
PostgreSQL), so a process can tell when another one changed a session and never
trusts a stale copy: that, not process memory, is what keeps several processes safe.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import (
    Connection,
    Select,
    String,
    Table,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.dml import Update

from memory.context import TailMessage
from memory.database import Database, translate_errors
from memory.errors import ProjectExists, ProjectNotFound, SessionNotFound
from memory.models import (
    ChatBindingRow,
    EventRow,
    JobRunRow,
    MessageRow,
    ProjectRow,
    SessionRow,
    SummaryRow,
    TokenCalibrationRow,
)
from memory.types import (
    ChatKey,
    Project,
    Role,
    SessionInfo,
    SessionStatus,
    StoredMessage,
    SummaryRecord,
    Usage,
)

projects: Table = ProjectRow.__table__  # type: ignore[assignment]
bindings: Table = ChatBindingRow.__table__  # type: ignore[assignment]
sessions: Table = SessionRow.__table__  # type: ignore[assignment]
messages: Table = MessageRow.__table__  # type: ignore[assignment]
summaries: Table = SummaryRow.__table__  # type: ignore[assignment]
events: Table = EventRow.__table__  # type: ignore[assignment]
job_runs: Table = JobRunRow.__table__  # type: ignore[assignment]
calibration: Table = TokenCalibrationRow.__table__  # type: ignore[assignment]

_Q = TypeVar("_Q", bound=Select[Any])

CONTINUABLE = (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.FINALIZED)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything Palaver stores is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _opt_utc(value: datetime | None) -> datetime | None:
    return None if value is None else _utc(value)


@dataclass(slots=True)  # not frozen: built once per message on the hot path
class NewMessage:
    """A message on its way in: validated and counted by the manager."""

    session_id: int
    role: Role
    text: str
    token_count: int
    author_id: str | None = None
    author_name: str | None = None
    chat_ref: str | None = None
    platform_message_id: str | None = None
    metadata: dict[str, Any] | None = None
    usage: Usage | None = None
    billed_to: str | None = None


@dataclass(frozen=True, slots=True)
class SessionDelta:
    """How one write moved a session's version: the cache's coherence check."""

    session_id: int
    version_before: int
    version_after: int


@dataclass(slots=True)
class AppendOutcome:
    results: list[StoredMessage | BaseException]
    deltas: dict[int, SessionDelta] = field(default_factory=dict)


def tail_after(summarized_through: int, context_start: int) -> int:
    """The seq the unsummarized tail starts after: the last summarized message or the
    last one a /clear hid, whichever is later."""
    return max(summarized_through, context_start - 1)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the cache holds of a session: its row, active summaries, unsummarized tail."""

    session: SessionInfo
    summaries: list[SummaryRecord]
    tail: list[TailMessage]  # contiguous: seqs tail_first_seq, tail_first_seq + 1, ...
    tail_first_seq: int

    @classmethod
    def empty(cls, info: SessionInfo) -> Snapshot:
        """The snapshot of a session that has no messages yet: all of it is in ``info``."""
        return cls(info, [], [], tail_after(info.summarized_through, info.context_start) + 1)

    @property
    def tail_seqs(self) -> list[int]:
        return list(range(self.tail_first_seq, self.tail_first_seq + len(self.tail)))


def session_info(row: Mapping[Any, Any]) -> SessionInfo:
    return SessionInfo(
        id=row["id"],
        scope=row["scope"],
        chat_ref=row["chat_ref"],
        project_id=row["project_id"],
        interface=row["interface"],
        status=SessionStatus(row["status"]),
        created_at=_utc(row["created_at"]),
        last_activity_at=_utc(row["last_activity_at"]),
        ended_at=_opt_utc(row["ended_at"]),
        message_count=row["message_count"],
        last_seq=row["last_seq"],
        summarized_through=row["summarized_through"],
        context_start=row["context_start"],
        message_tokens=row["message_tokens"],
        unsummarized_tokens=row["unsummarized_tokens"],
        summary_tokens=row["summary_tokens"],
        tool_calls=row["tool_calls"],
        errors=row["errors"],
        usage=Usage(
            row["input_tokens"],
            row["output_tokens"],
            row["cache_read_tokens"],
            row["cache_write_tokens"],
            row["cost_usd"],
        ),
        state=dict(row["state"] or {}),
        carried_summary=row["carried_summary"],
        closing_summary=row["closing_summary"],
        version=row["version"],
    )


def stored_message(row: Mapping[Any, Any], *, duplicate: bool = False) -> StoredMessage:
    usage = None
    if row["input_tokens"] is not None or row["output_tokens"] is not None:
        usage = Usage(
            row["input_tokens"] or 0,
            row["output_tokens"] or 0,
            row["cache_read_tokens"] or 0,
            row["cache_write_tokens"] or 0,
            row["cost_usd"] or 0.0,
        )
    return StoredMessage(
        session_id=row["session_id"],
        seq=row["seq"],
        role=Role(row["role"]),
        text=row["text"],
        token_count=row["token_count"],
        author_id=row["author_id"],
        author_name=row["author_name"],
        platform_message_id=row["platform_message_id"],
        created_at=_utc(row["created_at"]),
        metadata=dict(row["meta"] or {}),
        usage=usage,
        duplicate=duplicate,
    )


def summary_record(row: Mapping[Any, Any]) -> SummaryRecord:
    return SummaryRecord(
        id=row["id"],
        session_id=row["session_id"],
        first_seq=row["first_seq"],
        last_seq=row["last_seq"],
        level=row["level"],
        text=row["text"],
        token_count=row["token_count"],
        summarizer=row["summarizer"],
        fallback=row["fallback"],
        created_at=_utc(row["created_at"]),
    )


def project_of(row: Mapping[Any, Any]) -> Project:
    return Project(
        id=row["id"],
        name=row["name"],
        agent_kind=row["agent_kind"],
        model=row["model"],
        system_prompt=row["system_prompt"],
        token_limit=row["token_limit"],
        workdir=row["workdir"],
        settings=dict(row["settings"] or {}),
    )


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
)


def _identity(value: Any) -> Any:
    return value


_REQUIRED = object()


class _SqliteRead:
    """A Core SELECT compiled once for the sqlite3 driver, for Database.run_read.

    Values go in and come back through the dialect's own bind and result
    processors, so a row reads exactly as it would through SQLAlchemy (datetimes,
    JSON).
    """

    def __init__(self, query: Select[Any], dialect: Any) -> None:
        compiled = query.compile(dialect=dialect)
        self.sql = str(compiled)
        binds = [compiled.binds[name] for name in compiled.positiontup or ()]
        # (name, processor, value): a bound literal (the 0.0 of a coalesce) keeps
        # its own value; a named bindparam must be given.
        self.params = [
            (
                b.key,
                b.type.dialect_impl(dialect).bind_processor(dialect),
                _REQUIRED if b.required else b.effective_value,
            )
            for b in binds
        ]
        self.keys = [str(c.key) for c in query.selected_columns]
        self.processors = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) or _identity
            for c in query.selected_columns
        ]

    def __call__(
        self, conn: sqlite3.Connection, values: Mapping[str, Any]
    ) -> list[Mapping[str, Any]]:
        """Runs on the driver's thread: the rows, as mappings."""
        args = []
        for name, process, literal in self.params:
            value = values[name] if literal is _REQUIRED else values.get(name, literal)
            args.append(value if process is None else process(value))
        rows = conn.execute(self.sql, args).fetchall()
        keys, processors = self.keys, self.processors
        return [{k: p(v) for k, p, v in zip(keys, processors, row, strict=True)} for row in rows]


class _StaleHint(Exception):
    """A session row moved since this process last wrote it: read it, then retry."""


class _Tally:
    """A session's running numbers while a batch is assembled."""

    __slots__ = ("count", "last_seq", "tokens", "usage", "version")

    def __init__(self, last_seq: int, version: int) -> None:
        self.last_seq = last_seq
        self.version = version
        self.count = 0
        self.tokens = 0
        self.usage = Usage()


class _BulkAppend:
    """The statements of a batch append, rendered once for the driver.

    add_message is the hot path: SQLAlchemy's per-row parameter processing for an
    executemany costs more than SQLite's own work, so these statements go to the
    driver as plain SQL with positional rows. Values still pass through the
    dialect's own bind processors, so what is stored is exactly what Core stores.
    """

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

    def update_row(self, sid: int, t: _Tally, stamp: Any) -> tuple[Any, ...]:
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

    def update_sql(self, check_version: bool) -> str:
        return self.update_if_version if check_version else self.update

    def plan(
        self,
        items: Sequence[NewMessage],
        locked: dict[int, _Tally],
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
        )


_CURRENT_SESSION: Select[Any] = (
    select(bindings.c.active_project_id.label("bound_project_id"), sessions)
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
_SESSION_VERSION: Select[Any] = select(sessions.c.version).where(sessions.c.id == bindparam("id"))
_SPEND: Select[Any] = select(
    func.coalesce(func.sum(messages.c.cost_usd), 0.0).label("spent")
).where(
    messages.c.billed_to == bindparam("billed_to"),
    messages.c.created_at >= bindparam("since"),
)


def _bump_statement(row: Mapping[Any, Any], **values: Any) -> Update:
    """Write ``values`` to the session of ``row`` and move its version on by one."""
    return (
        update(sessions)
        .where(sessions.c.id == row["id"])
        .values(version=sessions.c.version + 1, **values)
    )


class Store:
    """Async access to one database."""

    def __init__(self, database: Database) -> None:
        self.db = database
        self._bulk = _BulkAppend(database.writer.dialect)
        dialect = database.reader.dialect
        # The reads every turn makes, compiled once for SQLite's fast path (_read).
        self._fast: dict[Select[Any], _SqliteRead] = (
            {q: _SqliteRead(q, dialect) for q in (_CURRENT_SESSION, _SESSION_VERSION, _SPEND)}
            if database.is_sqlite
            else {}
        )

    async def _read(self, query: Select[Any], values: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """Rows of one of the hot queries: one hand-off on SQLite, Core elsewhere."""
        async with translate_errors():
            fast = self._fast.get(query)
            if fast is not None:
                return await self.db.run_read(fast, values)
            async with self.db.reader.connect() as conn:
                return list((await conn.execute(query, values)).mappings())

    def _locked(self, query: _Q) -> _Q:
        # SQLite's BEGIN IMMEDIATE already holds the write lock; PostgreSQL locks rows.
        return query if self.db.is_sqlite else query.with_for_update()

    async def _session_row(
        self, conn: AsyncConnection, session_id: int, *, lock: bool = False
    ) -> Mapping[Any, Any]:
        """The session's row (locked for writing with ``lock``), or SessionNotFound."""
        query = select(sessions).where(sessions.c.id == session_id)
        if lock:
            query = self._locked(query)
        row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise SessionNotFound(f"session {session_id} does not exist")
        return row

    async def _bump(
        self, conn: AsyncConnection, row: Mapping[Any, Any], **values: Any
    ) -> SessionDelta:
        await conn.execute(_bump_statement(row, **values))
        return SessionDelta(row["id"], row["version"], row["version"] + 1)

    # -- projects and bindings ------------------------------------------------------

    async def create_project(
        self,
        name: str,
        *,
        agent_kind: str = "chat",
        model: str | None = None,
        system_prompt: str | None = None,
        token_limit: int | None = None,
        workdir: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Project:
        try:
            return await self._create_project(
                name,
                agent_kind=agent_kind,
                model=model,
                system_prompt=system_prompt,
                token_limit=token_limit,
                workdir=workdir,
                settings=settings,
            )
        except IntegrityError:
            raise ProjectExists(f"a project named {name!r} already exists") from None

    async def _create_project(
        self,
        name: str,
        *,
        agent_kind: str,
        model: str | None,
        system_prompt: str | None,
        token_limit: int | None,
        workdir: str | None,
        settings: dict[str, Any] | None,
    ) -> Project:
        async with translate_errors(), self.db.writer.begin() as conn:
            result = await conn.execute(
                insert(projects)
                .values(
                    name=name,
                    agent_kind=agent_kind,
                    model=model,
                    system_prompt=system_prompt,
                    token_limit=token_limit,
                    workdir=workdir,
                    settings=settings or {},
                    created_at=utcnow(),
                )
                .returning(projects)
            )
            return project_of(result.mappings().one())

    async def get_project(self, *, name: str | None = None, id: int | None = None) -> Project:
        query = select(projects)
        query = query.where(projects.c.name == name) if name else query.where(projects.c.id == id)
        async with translate_errors(), self.db.reader.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise ProjectNotFound(f"no project named {name!r}" if name else f"no project {id}")
        return project_of(row)

    async def list_projects(self) -> list[Project]:
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = (await conn.execute(select(projects).order_by(projects.c.name))).mappings()
            return [project_of(r) for r in rows]

    async def set_active_project(self, key: ChatKey, project_id: int | None) -> None:
        def transaction(conn: Connection) -> None:
            binding = self._binding(conn, key, utcnow())
            conn.execute(
                update(bindings)
                .where(bindings.c.id == binding["id"])
                .values(active_project_id=project_id, updated_at=utcnow())
            )

        async with translate_errors():
            await self.db.run_write(transaction)

    def _binding(self, conn: Connection, key: ChatKey, now: datetime) -> Mapping[Any, Any]:
        """The chat's binding row, locked; created if missing, race-free across
        processes (INSERT ... ON CONFLICT DO NOTHING, then read)."""
        query = self._locked(select(bindings).where(bindings.c.chat_ref == key.ref))
        row = conn.execute(query).mappings().first()
        if row is not None:
            return row
        dialect_insert = sqlite_insert if self.db.is_sqlite else pg_insert
        conn.execute(
            dialect_insert(bindings)
            .values(
                chat_ref=key.ref,
                interface=key.interface,
                chat_id=key.chat_id,
                thread_id=key.thread_id,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing(index_elements=["chat_ref"])
        )
        return conn.execute(query).mappings().one()

    # -- sessions -------------------------------------------------------------------

    async def get_session(self, session_id: int) -> SessionInfo:
        async with translate_errors(), self.db.reader.connect() as conn:
            return session_info(await self._session_row(conn, session_id))

    async def current_session(self, key: ChatKey) -> tuple[SessionInfo | None, int | None]:
        """The chat's current session (project or private) and its active project id.

        One round trip: this runs at the start of every turn.
        """
        rows = await self._read(_CURRENT_SESSION, {"ref": key.ref})
        row = rows[0] if rows else None
        if row is None:
            return None, None
        project_id = row["bound_project_id"]
        return (session_info(row) if row["id"] is not None else None), project_id

    async def open_session(
        self, key: ChatKey, *, expire_after: timedelta, carry_summary: bool, force_new: bool
    ) -> SessionInfo:
        """The chat's usable session, or a new one; with ``force_new``, always a new one.

        Runs in one write transaction, so two processes resolving the same chat at
        once agree on a single session.
        """
        now = utcnow()

        def transaction(conn: Connection) -> SessionInfo:
            binding = self._binding(conn, key, now)
            project_id = binding["active_project_id"]
            project = None
            if project_id is not None:
                project = (
                    conn.execute(self._locked(select(projects).where(projects.c.id == project_id)))
                    .mappings()
                    .one()
                )
                current_id = project["current_session_id"]
            else:
                current_id = binding["current_session_id"]
            carried: str | None = None
            if current_id is not None:
                row = (
                    conn.execute(self._locked(select(sessions).where(sessions.c.id == current_id)))
                    .mappings()
                    .first()
                )
                if row is not None:
                    usable = (
                        row["status"] in CONTINUABLE
                        and _utc(row["last_activity_at"]) + expire_after > now
                    )
                    if usable and not force_new:
                        return session_info(row)
                    if row["status"] in CONTINUABLE:
                        status = SessionStatus.ENDED if force_new else SessionStatus.EXPIRED
                        conn.execute(_bump_statement(row, status=status, ended_at=now))
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

    async def list_sessions(
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

    # -- messages -------------------------------------------------------------------

    async def append_messages(
        self, items: Sequence[NewMessage], hints: Mapping[int, tuple[int, int]] | None = None
    ) -> AppendOutcome:
        """Store a batch in one transaction: gapless seqs, idempotent on platform ids.

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
                    return await self._append_batch(items, hints)
                except _StaleHint:
                    return await self._append_batch(items, None)
            except (IntegrityError, sqlite3.IntegrityError):
                pass
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
            return await self._append_batch([item], None)
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
        self, items: Sequence[NewMessage], hints: Mapping[int, tuple[int, int]] | None
    ) -> AppendOutcome:
        now = utcnow()
        session_ids = sorted({i.session_id for i in items})
        if self.db.is_sqlite:
            optimistic = hints is not None and all(s in hints for s in session_ids)
            # The whole transaction is one call on the writer's thread: a batch costs
            # one hand-off instead of one per statement.
            return await self.db.run_on_writer(
                self._sqlite_append, items, session_ids, hints if optimistic else None, now
            )
        bulk = self._bulk
        async with self.db.writer.begin() as conn:
            result = await conn.exec_driver_sql(bulk.lock(len(session_ids)), tuple(session_ids))
            rows: list[tuple[int, int, int]] = [tuple(r) for r in result]
            locked = {sid: _Tally(last_seq, version) for sid, last_seq, version in rows}
            outcome, updates, inserts = bulk.plan(items, locked, now, check_version=False)
            if inserts:
                await conn.exec_driver_sql(bulk.update, updates)
                await conn.exec_driver_sql(bulk.insert, inserts)
        return outcome

    def _sqlite_append(
        self,
        conn: sqlite3.Connection,
        items: Sequence[NewMessage],
        session_ids: list[int],
        hints: Mapping[int, tuple[int, int]] | None,
        now: datetime,
    ) -> AppendOutcome:
        """The SQLite append, run on the driver's thread as one transaction.

        With ``hints`` it skips reading the session rows and updates them only where
        the version still matches; if a row moved (another process wrote), it rolls
        back and runs again behind a read of the rows, still on this thread.
        """
        bulk = self._bulk
        while True:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if hints is not None:
                    locked = {sid: _Tally(*hints[sid]) for sid in session_ids}
                else:
                    rows = conn.execute(bulk.lock(len(session_ids)), session_ids).fetchall()
                    locked = {sid: _Tally(last_seq, version) for sid, last_seq, version in rows}
                outcome, updates, inserts = bulk.plan(
                    items, locked, now, check_version=hints is not None
                )
                if inserts:
                    if conn.executemany(
                        bulk.update_sql(hints is not None), updates
                    ).rowcount != len(updates):
                        raise _StaleHint
                    conn.executemany(bulk.insert, inserts)
            except _StaleHint:
                conn.rollback()
                hints = None
                continue
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
            return outcome

    async def messages(
        self, session_id: int, *, after: int = 0, through: int | None = None
    ) -> list[StoredMessage]:
        query = (
            select(messages)
            .where(messages.c.session_id == session_id, messages.c.seq > after)
            .order_by(messages.c.seq)
        )
        if through is not None:
            query = query.where(messages.c.seq <= through)
        async with translate_errors(), self.db.reader.connect() as conn:
            return [stored_message(r) for r in (await conn.execute(query)).mappings()]

    async def snapshot(self, session_id: int) -> Snapshot:
        """The session, its active summaries and the messages not yet summarized."""
        async with translate_errors(), self.db.reader.begin() as conn:
            info = session_info(await self._session_row(conn, session_id))
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
            return Snapshot(
                info,
                [summary_record(r) for r in active.mappings()],
                [(roles[r[0]], r[1], r[2], r[3]) for r in tail.all()],
                start + 1,
            )

    async def summaries(
        self, session_id: int, *, include_superseded: bool = False
    ) -> list[SummaryRecord]:
        query = select(summaries).where(summaries.c.session_id == session_id)
        if not include_superseded:
            query = query.where(summaries.c.superseded_by.is_(None))
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = await conn.execute(query.order_by(summaries.c.level, summaries.c.first_seq))
            return [summary_record(r) for r in rows.mappings()]

    async def session_version(self, session_id: int) -> int | None:
        rows = await self._read(_SESSION_VERSION, {"id": session_id})
        return int(rows[0]["version"]) if rows else None

    # -- summaries ------------------------------------------------------------------

    async def add_summary(
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
            row = await self._session_row(conn, session_id, lock=True)
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
            delta = await self._bump(
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

    async def merge_summaries(
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
            row = await self._session_row(conn, session_id, lock=True)
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
            delta = await self._bump(
                conn,
                row,
                summary_tokens=max(0, row["summary_tokens"] - old_tokens) + token_count,
            )
            record = SummaryRecord(
                new_id, session_id, first, last, level, text, token_count, summarizer, fallback, now
            )
            return record, delta

    # -- session state, events, lifecycle ------------------------------------------

    async def clear_context(self, session_id: int) -> SessionDelta:
        """Start the context after the last message; messages and summaries are kept."""
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self._session_row(conn, session_id, lock=True)
            delta = await self._bump(
                conn, row, context_start=row["last_seq"] + 1, unsummarized_tokens=0
            )
            await self._event(
                conn, session_id, "lifecycle", "cleared", {"through": row["last_seq"]}
            )
            return delta

    async def update_state(
        self, session_id: int, patch: Mapping[Any, Any]
    ) -> tuple[dict[str, Any], SessionDelta]:
        """Merge ``patch`` into the session's state; a None value removes a key."""
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self._session_row(conn, session_id, lock=True)
            state = dict(row["state"] or {})
            for k, v in patch.items():
                if v is None:
                    state.pop(k, None)
                else:
                    state[k] = v
            delta = await self._bump(conn, row, state=state)
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

    async def record_event(
        self, session_id: int, kind: str, name: str, detail: dict[str, Any] | None = None
    ) -> SessionDelta:
        """Record a tool call, an error or a lifecycle event, and count it."""
        async with translate_errors(), self.db.writer.begin() as conn:
            row = await self._session_row(conn, session_id, lock=True)
            await self._event(conn, session_id, kind, name, detail)
            counters: dict[str, Any] = {}
            if kind == "tool_call":
                counters["tool_calls"] = row["tool_calls"] + 1
            elif kind == "error":
                counters["errors"] = row["errors"] + 1
            return await self._bump(conn, row, **counters)

    async def events(self, session_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(events).where(events.c.session_id == session_id).order_by(events.c.id)
        if kind:
            query = query.where(events.c.kind == kind)
        async with translate_errors(), self.db.reader.connect() as conn:
            return [dict(r) for r in (await conn.execute(query)).mappings()]

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
            row = await self._session_row(conn, session_id, lock=True)
            await self._event(conn, session_id, "lifecycle", status.value, None)
            return await self._bump(conn, row, **values)

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
            await self._event(conn, session_id, "lifecycle", "finalized", None)
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
            # Explicit child deletes: SQLite only cascades with foreign keys on.
            for table in (messages, summaries, events):
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

    # -- stats, calibration, job runs ----------------------------------------------

    async def spend(self, *, billed_to: str, since: datetime) -> float:
        """USD charged to ``billed_to`` since ``since`` (indexed: billed_to, created_at)."""
        rows = await self._read(_SPEND, {"billed_to": billed_to, "since": since})
        return float(rows[0]["spent"])

    async def usage_totals(self, by: str, *, since: datetime | None = None) -> dict[str, Usage]:
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

    async def replace_summary(
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
            row = await self._session_row(conn, old["session_id"], lock=True)
            await conn.execute(
                update(summaries)
                .where(summaries.c.id == summary_id)
                .values(text=text, token_count=token_count, summarizer=summarizer, fallback=False)
            )
            return await self._bump(
                conn,
                row,
                summary_tokens=max(0, row["summary_tokens"] - old["token_count"]) + token_count,
            )

    async def global_stats(self) -> dict[str, Any]:
        c = sessions.c
        async with translate_errors(), self.db.reader.connect() as conn:
            totals = (
                await conn.execute(
                    select(
                        func.count(c.id),
                        func.coalesce(func.sum(c.message_count), 0),
                        func.coalesce(func.sum(c.input_tokens), 0),
                        func.coalesce(func.sum(c.output_tokens), 0),
                        func.coalesce(func.sum(c.cache_read_tokens), 0),
                        func.coalesce(func.sum(c.cache_write_tokens), 0),
                        func.coalesce(func.sum(c.cost_usd), 0.0),
                    )
                )
            ).one()
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
        return {
            "sessions_total": int(totals[0]),
            "messages": int(totals[1]),
            "input_tokens": int(totals[2]),
            "output_tokens": int(totals[3]),
            "cache_read_tokens": int(totals[4]),
            "cache_write_tokens": int(totals[5]),
            "cost_usd": float(totals[6]),
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
                        self._locked(select(calibration).where(calibration.c.model == model))
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

    async def start_job_run(self, job: str) -> int:
        async with translate_errors(), self.db.writer.begin() as conn:
            return int(
                (
                    await conn.execute(
                        insert(job_runs)
                        .values(job=job, started_at=utcnow(), outcome="running")
                        .returning(job_runs.c.id)
                    )
                ).scalar_one()
            )

    async def finish_job_run(
        self, run_id: int, outcome: str, counts: dict[str, Any] | None, error: str | None = None
    ) -> None:
        async with translate_errors(), self.db.writer.begin() as conn:
            await conn.execute(
                update(job_runs)
                .where(job_runs.c.id == run_id)
                .values(ended_at=utcnow(), outcome=outcome, counts=counts, error=error)
            )
