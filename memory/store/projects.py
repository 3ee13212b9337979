"""Projects and chat bindings: which project a chat works in.

A binding row per chat key holds its active project and its private session; it is
created on first use, race-free across processes (INSERT ... ON CONFLICT DO NOTHING,
then read).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from memory.database import translate_errors
from memory.errors import ProjectExists, ProjectNotFound
from memory.store.base import Repository
from memory.store.rows import bindings, project_of, projects, utcnow
from memory.types import ChatKey, Project


def bind_chat(conn: Connection, key: ChatKey, now: datetime) -> Mapping[Any, Any]:
    """The chat's binding row, locked; created if missing."""
    query = select(bindings).where(bindings.c.chat_ref == key.ref)
    if conn.dialect.name != "sqlite":  # SQLite's BEGIN IMMEDIATE holds the lock already
        query = query.with_for_update()
    row = conn.execute(query).mappings().first()
    if row is not None:
        return row
    dialect_insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
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


class Projects(Repository):
    """The projects table and the chats' choice of project."""

    async def create(
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
            return await self._create(
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

    async def _create(
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

    async def get(self, *, name: str | None = None, id: int | None = None) -> Project:
        query = select(projects)
        query = query.where(projects.c.name == name) if name else query.where(projects.c.id == id)
        async with translate_errors(), self.db.reader.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            raise ProjectNotFound(f"no project named {name!r}" if name else f"no project {id}")
        return project_of(row)

    async def update(self, project_id: int, **values: Any) -> Project:
        """Change a project's settings (columns; ``settings`` replaces the JSON)."""
        allowed = {"name", "agent_kind", "model", "system_prompt", "token_limit", "workdir"}
        unknown = set(values) - allowed - {"settings"}
        if unknown:
            raise ValueError(f"not project columns: {sorted(unknown)}")
        try:
            async with translate_errors(), self.db.writer.begin() as conn:
                row = (
                    (
                        await conn.execute(
                            update(projects)
                            .where(projects.c.id == project_id)
                            .values(**values)
                            .returning(projects)
                        )
                    )
                    .mappings()
                    .first()
                )
        except IntegrityError:
            raise ProjectExists(f"a project named {values.get('name')!r} already exists") from None
        if row is None:
            raise ProjectNotFound(f"no project {project_id}")
        return project_of(row)

    async def all(self) -> list[Project]:
        async with translate_errors(), self.db.reader.connect() as conn:
            rows = (await conn.execute(select(projects).order_by(projects.c.name))).mappings()
            return [project_of(r) for r in rows]

    async def set_active(self, key: ChatKey, project_id: int | None) -> None:
        def transaction(conn: Connection) -> None:
            binding = bind_chat(conn, key, utcnow())
            conn.execute(
                update(bindings)
                .where(bindings.c.id == binding["id"])
                .values(active_project_id=project_id, updated_at=utcnow())
            )

        async with translate_errors():
            await self.db.run_write(transaction)
