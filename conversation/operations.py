"""The operator's operations: one implementation behind the HTTP API and the command
line. List sessions by filters a page at a time, read one with its messages and
summaries, export, import, end or delete it, and the stats.

Everything here takes and returns plain values (JSON-ready dicts for documents), so
that the HTTP routes only translate requests and the command line only prints.
Bad input raises ``InvalidRequest`` with a message that says what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from conversation.export import (
    FORMATS,
    Format,
    message_document,
    session_document,
    summary_document,
    write_export,
)
from conversation.importing import read_export
from memory.admin_types import SessionFilter
from memory.errors import PalaverError, ProjectNotFound
from memory.manager import SessionManager
from memory.types import Project, SessionInfo, SessionStatus, StoredMessage, SummaryRecord

_INTERFACE = re.compile(r"^[a-z0-9_-]{1,20}$")
MAX_CURSOR = 2**62


class InvalidRequest(PalaverError):
    """A parameter is out of range or malformed; the message says what is allowed."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing; ``next_cursor`` fetches the next (None: that was all)."""

    items: list[dict[str, Any]]
    next_cursor: str | None

    def document(self) -> dict[str, Any]:
        return {"items": self.items, "next_cursor": self.next_cursor}


def cursor_of(raw: str | None, what: str = "cursor") -> int | None:
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_CURSOR:
        raise InvalidRequest(f"{what} must be a cursor this API handed out, not {raw[:40]!r}")
    return int(raw)


def limit_of(raw: str | None, default: int, maximum: int) -> int:
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 9:
        raise InvalidRequest(f"limit must be a whole number from 1 to {maximum}")
    value = int(raw)
    if not 1 <= value <= maximum:
        raise InvalidRequest(f"limit must be from 1 to {maximum}, not {value}")
    return value


def session_id_of(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= MAX_CURSOR:
        raise InvalidRequest(f"a session id is a positive whole number, not {raw[:40]!r}")
    return int(raw)


def chat_ref_of(raw: str) -> str:
    """A chat as the API names it: "telegram:123", or "telegram:123:7" in a thread."""
    parts = raw.split(":")
    if len(parts) not in (2, 3) or not _INTERFACE.match(parts[0]) or not parts[1]:
        raise InvalidRequest(
            f"chat must be interface:chat_id or interface:chat_id:thread_id, not {raw[:60]!r}"
        )
    if any(len(p) > 100 for p in parts):
        raise InvalidRequest("chat ids are at most 100 characters")
    return raw if len(parts) == 3 else raw + ":"


def time_of(raw: str, what: str) -> datetime:
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(
            f"{what} must be an ISO 8601 time such as 2026-01-31T12:00:00Z, not {raw[:40]!r}"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def session_view(
    session: SessionInfo, *, stats: bool = False, summaries: int | None = None
) -> dict[str, Any]:
    """A session as the API and the command line show it."""
    view = session_document(session)
    view["message_count"] = session.message_count
    if stats:
        view["stats"] = {
            "message_tokens": session.message_tokens,
            "unsummarized_tokens": session.unsummarized_tokens,
            "summary_tokens": session.summary_tokens,
            "summarized_through": session.summarized_through,
            "summaries": summaries,
            "tool_calls": session.tool_calls,
            "errors": session.errors,
        }
    return view


def message_view(message: StoredMessage) -> dict[str, Any]:
    view = message_document(message)
    view["session_id"] = message.session_id
    return view


def summary_view(summary: SummaryRecord) -> dict[str, Any]:
    view = summary_document(summary)
    view.update(id=summary.id, token_count=summary.token_count)
    return view


def project_view(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "name": project.name,
        "agent_kind": project.agent_kind,
        "model": project.model,
        "token_limit": project.token_limit,
        "has_system_prompt": bool(project.system_prompt),
        "workdir": project.workdir,
    }


class Operations:
    """What an operator can do with memory (see the module docstring)."""

    def __init__(self, manager: SessionManager, exports: Path, max_page: int = 500) -> None:
        self.manager = manager
        self.exports = exports
        self.max_page = max_page

    # -- reading --------------------------------------------------------------------

    async def session_filter(self, params: Mapping[str, str]) -> SessionFilter:
        """The filter of a listing from its parameters (HTTP query or command line)."""
        unknown = set(params) - {
            "interface",
            "chat",
            "status",
            "project",
            "user",
            "active_since",
            "cursor",
            "limit",
            "stats",
        }
        if unknown:
            raise InvalidRequest(f"unknown parameter {sorted(unknown)[0]!r}")
        interface = params.get("interface") or None
        if interface is not None and not _INTERFACE.match(interface):
            raise InvalidRequest(f"interface must be a name such as telegram, not {interface!r}")
        statuses: list[SessionStatus] = []
        for name in filter(None, (params.get("status") or "").split(",")):
            try:
                statuses.append(SessionStatus(name.strip()))
            except ValueError:
                allowed = ", ".join(s.value for s in SessionStatus)
                raise InvalidRequest(f"status {name!r} is none of {allowed}") from None
        project_id = None
        if project := params.get("project"):
            project_id = await self._project_id(project)
        user = params.get("user") or None
        if user is not None and (len(user) > 120 or not user.strip()):
            raise InvalidRequest("user must be a user id, or interface:user_id")
        since = params.get("active_since")
        return SessionFilter(
            interface=interface,
            chat_ref=chat_ref_of(params["chat"]) if params.get("chat") else None,
            statuses=tuple(statuses),
            project_id=project_id,
            user=user,
            active_since=time_of(since, "active_since") if since else None,
        )

    async def _project_id(self, name_or_id: str) -> int:
        try:
            if name_or_id.isdigit() and len(name_or_id) < 19:
                return (await self.manager.project(id=int(name_or_id))).id
            return (await self.manager.project(name=name_or_id)).id
        except ProjectNotFound:
            raise InvalidRequest(f"there is no project {name_or_id[:100]!r}") from None

    async def sessions(self, params: Mapping[str, str], *, default_limit: int = 50) -> Page:
        """A page of sessions, newest first; ``stats=true`` adds each one's counters
        and the totals of everything the filter matches."""
        where = await self.session_filter(params)
        limit = limit_of(params.get("limit"), default_limit, self.max_page)
        before = cursor_of(params.get("cursor"))
        stats = (params.get("stats") or "false").lower()
        if stats not in ("true", "false", "1", "0"):
            raise InvalidRequest("stats must be true or false")
        with_stats = stats in ("true", "1")
        found = await self.manager.sessions_page(where, before_id=before, limit=limit)
        counts = await self.manager.summary_counts([s.id for s in found]) if with_stats else {}
        items = [session_view(s, stats=with_stats, summaries=counts.get(s.id, 0)) for s in found]
        page = Page(items, str(found[-1].id) if len(found) == limit else None)
        return page

    async def totals(self, params: Mapping[str, str]) -> dict[str, Any]:
        totals = await self.manager.sessions_totals(await self.session_filter(params))
        return {
            "sessions": totals.sessions,
            "messages": totals.messages,
            "usage": asdict(totals.usage),
        }

    async def session(self, session_id: int) -> dict[str, Any]:
        info = await self.manager.get(session_id)
        counts = await self.manager.summary_counts([info.id])
        return session_view(info, stats=True, summaries=counts.get(info.id, 0))

    async def messages(
        self, session_id: int, params: Mapping[str, str], *, default_limit: int = 100
    ) -> Page:
        """A page of a session's messages, oldest first; the cursor is a seq."""
        unknown = set(params) - {"cursor", "limit"}
        if unknown:
            raise InvalidRequest(f"unknown parameter {sorted(unknown)[0]!r}")
        limit = limit_of(params.get("limit"), default_limit, self.max_page)
        after = cursor_of(params.get("cursor")) or 0
        await self.manager.get(session_id)  # 404 for a session that does not exist
        found = await self.manager.messages(session_id, after=after, limit=limit)
        items = [message_view(m) for m in found]
        return Page(items, str(found[-1].seq) if len(found) == limit else None)

    async def summaries(self, session_id: int) -> list[dict[str, Any]]:
        await self.manager.get(session_id)
        return [summary_view(s) for s in await self.manager.summaries(session_id)]

    # -- export and import ----------------------------------------------------------

    @staticmethod
    def export_files(raw: str | None) -> bool:
        """The ``files`` option of an export: whether the files' bytes go with it."""
        value = (raw or "false").strip().lower()
        if value not in ("true", "1", "false", "0"):
            raise InvalidRequest("files must be true or false")
        return value in ("true", "1")

    @staticmethod
    def export_format(raw: str | None) -> Format:
        kind = FORMATS.get((raw or "json").strip().lower())
        if kind is None:
            raise InvalidRequest("format must be json, csv or md")
        return kind

    async def export(
        self,
        session_id: int,
        kind: Format,
        *,
        files: bool = False,
        on_progress: Callable[[int], None] | None = None,
    ) -> tuple[SessionInfo, Path]:
        """The session written to a new private file (the caller deletes it); with
        ``files`` (JSON only) each attachment carries its bytes, so that an import
        elsewhere links the files again. The chat's ``/export`` never asks for them."""
        if files and kind != "json":
            raise InvalidRequest("files are exported with format=json only")
        info = await self.manager.get(session_id)
        path = await write_export(
            self.manager, info, kind, self.exports, files=files, on_progress=on_progress
        )
        return info, path

    async def import_export(
        self, raw: bytes, *, on_progress: Callable[[int], None] | None = None
    ) -> dict[str, Any]:
        """Restore a JSON export: all of it or nothing, and only once."""
        item = await read_export(raw, self.manager.tokens, on_progress)
        restored = await self.manager.import_session(item)
        info, created = restored.session, restored.created
        note = None
        if not created:
            note = "this export is here already (imported before, or never left): nothing changed"
        elif restored.files_missing:
            note = (
                f"{restored.files_missing} file(s) were not linked again: this export holds "
                "no bytes for them (export with files=true), and this database does not have them"
            )
        return {
            "session_id": info.id,
            "imported": created,
            "messages": info.message_count,
            "original_id": item.id,
            "files_missing": restored.files_missing,
            "note": note,
        }

    # -- changing -------------------------------------------------------------------

    async def end(self, session_id: int) -> dict[str, Any]:
        return session_view(await self.manager.end_session(session_id))

    async def delete(self, session_id: int) -> dict[str, Any]:
        info = await self.manager.delete_session(session_id)
        return {"deleted": info.id, "messages": info.message_count}

    # -- stats and projects ---------------------------------------------------------

    async def stats(self, days: int = 30) -> dict[str, Any]:
        """Everything at once: totals, by interface, tokens and cost per day, and how
        often the session cache and the model's prompt cache were hit."""
        if not 1 <= days <= 3660:
            raise InvalidRequest("days must be from 1 to 3660")
        manager = self.manager
        overall = await manager.global_stats()
        since = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        per_day = await manager.usage_by_day(since - timedelta(days=days - 1))
        return {
            "sessions": {
                "total": overall.sessions_total,
                "active_or_idle": overall.sessions_active,
                "by_status": await manager.sessions_by_status(),
            },
            "messages": overall.messages,
            "usage": {
                "input_tokens": overall.input_tokens,
                "output_tokens": overall.output_tokens,
                "cache_read_tokens": overall.cache_read_tokens,
                "cache_write_tokens": overall.cache_write_tokens,
                "cost_usd": overall.cost_usd,
            },
            "prompt_cache_read_share": overall.prompt_cache_read_share,
            "session_cache": {
                "hits": overall.cache_hits,
                "misses": overall.cache_misses,
                "hit_rate": overall.cache_hit_rate,
            },
            "by_interface": [
                {
                    "interface": row.interface,
                    "sessions": row.sessions,
                    "messages": row.messages,
                    "usage": asdict(row.usage),
                }
                for row in await manager.usage_by_interface()
            ],
            "by_day": [
                {"day": day, "usage": asdict(usage)} for day, usage in sorted(per_day.items())
            ],
        }

    async def projects(self) -> list[dict[str, Any]]:
        return [project_view(p) for p in await self.manager.projects()]
