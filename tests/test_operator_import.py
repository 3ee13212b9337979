"""Export and import over the API: streamed exports, a round trip that gives the same
JSON, imports that are idempotent and all or nothing, and hostile documents refused
with a clear 4xx and nothing half-imported. SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from conversation.importing import read_export
from memory.admin_types import SessionFilter
from memory.attachments import NewAttachment
from memory.errors import InvalidMessage
from memory.manager import SessionManager
from memory.types import ChatKey, Role, Usage
from tests.conftest import ManagerFactory
from tests.media import pdf, png
from tests.operator_surface import AUTH, Surface, start_surface, stop_surface


@pytest.fixture
async def surface(manager: SessionManager, tmp_path: Path) -> AsyncIterator[Surface]:
    started = await start_surface(manager, tmp_path, max_import_bytes=4 << 20)
    yield started
    await stop_surface(started)


async def conversation(manager: SessionManager, messages: int = 40) -> int:
    """A session with authors, usage, metadata and a summary."""
    key = ChatKey("telegram", "-100", "7")
    session = await manager.open(key)
    for n in range(messages // 2):
        await manager.add_message(
            session.id,
            Role.USER,
            f"Grace, ticket PAL-{n}: the printer on floor {n} is jammed ✓",
            author_id="11",
            author_name="Grace",
            chat=key,
            platform_message_id=str(1000 + n),
            metadata={"reply_to": str(999 + n)} if n else None,
        )
        await manager.add_message(
            session.id,
            Role.ASSISTANT,
            f"Noted PAL-{n}.",
            usage=Usage(100 + n, 10, 5, 1, 0.001),
            billed_to="telegram:11",
        )
    await manager.fold(session.id)
    return session.id


async def export(surface: Surface, session_id: int, form: str = "json") -> bytes:
    async with surface.http.get(
        f"{surface.url}/api/sessions/{session_id}/export",
        params={"format": form},
        headers=AUTH,
    ) as response:
        assert response.status == 200, await response.text()
        assert "attachment" in response.headers["Content-Disposition"]
        data = await response.read()
        assert int(response.headers["Content-Length"]) == len(data)
        return data


async def counts(manager: SessionManager) -> tuple[int, int]:
    sessions = await manager.sessions_page(SessionFilter(), limit=10_000)
    return len(sessions), sum(s.message_count for s in sessions)


async def test_exports_stream_in_every_format_and_leave_no_file_behind(
    surface: Surface, tmp_path: Path
) -> None:
    session_id = await conversation(surface.manager)
    doc = json.loads(await export(surface, session_id))
    assert doc["format"] == "palaver-export/1" and len(doc["messages"]) == 40
    csv = (await export(surface, session_id, "csv")).decode()
    assert csv.splitlines()[0].startswith("seq,role,author_id")
    markdown = (await export(surface, session_id, "md")).decode()
    assert markdown.startswith(f"# Palaver conversation #{session_id}")
    assert list((tmp_path / "exports").iterdir()) == []


async def test_export_delete_import_export_gives_the_same_json(surface: Surface) -> None:
    manager = surface.manager
    session_id = await conversation(manager)
    first = json.loads(await export(surface, session_id))
    status, _ = await surface.send("DELETE", f"/api/sessions/{session_id}")
    assert status == 200
    status, result = await surface.send("POST", "/api/import", first)
    assert status == 201 and result["imported"] is True and result["messages"] == 40
    again = json.loads(await export(surface, result["session_id"]))
    # Ids are never reused here: the restored session has a new one, nothing else moved.
    assert again["session"].pop("id") == result["session_id"]
    first["session"].pop("id")
    assert again == first


async def test_an_export_imported_into_a_fresh_database_is_the_same_byte_for_byte(
    surface: Surface, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    session_id = await conversation(surface.manager)
    raw = await export(surface, session_id)
    fresh = await make_manager(url=f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    other = await start_surface(fresh, tmp_path / "other")
    try:
        status, result = await other.send("POST", "/api/import", raw=raw)
        assert status == 201 and result["session_id"] == session_id
        assert await export(other, session_id) == raw
        # The session is readable like any other, and chats are not bound to it.
        status, page = await other.get(f"/api/sessions/{session_id}/messages", limit="2")
        assert page["items"][0]["author_name"] == "Grace"
        assert await fresh.find_by_chat(ChatKey("telegram", "-100", "7")) is None
    finally:
        await stop_surface(other)


async def test_importing_the_same_export_twice_changes_nothing(surface: Surface) -> None:
    manager = surface.manager
    session_id = await conversation(manager, 10)
    raw = await export(surface, session_id)
    status, result = await surface.send("POST", "/api/import", raw=raw)
    assert status == 200 and result["imported"] is False  # it never left
    assert result["session_id"] == session_id
    await surface.send("DELETE", f"/api/sessions/{session_id}")
    status, first = await surface.send("POST", "/api/import", raw=raw)
    assert status == 201
    before = await counts(manager)
    status, second = await surface.send("POST", "/api/import", raw=raw)
    assert status == 200 and second["imported"] is False
    assert second["session_id"] == first["session_id"]
    assert await counts(manager) == before


def _spoil(doc: dict[str, Any], how: str) -> dict[str, Any] | bytes:
    bad = copy.deepcopy(doc)
    messages = bad["messages"]
    if how == "seq as text":
        messages[3]["seq"] = "4"
    elif how == "duplicate seq":
        messages[5]["seq"] = 5
    elif how == "gap":
        del messages[4]
    elif how == "unknown field":
        messages[0]["admin"] = True
    elif how == "naive time":
        messages[2]["created_at"] = "2026-01-01T10:00:00"
    elif how == "negative tokens":
        bad["session"]["usage"]["input_tokens"] = -5
    elif how == "infinite cost":
        return json.dumps(bad).replace('"cost_usd": 0.0', '"cost_usd": 1e999', 1).encode()
    elif how == "huge text":
        messages[-1]["text"] = "x" * 2_000_000
    elif how == "text too long for memory":
        messages[-1]["text"] = "y" * 150_000
    elif how == "huge author":
        messages[0]["author_name"] = "G" * 5000
    elif how == "NUL byte":
        messages[1]["text"] = "a\u0000b"
    elif how == "deep metadata":
        deep: dict[str, Any] = {}
        node = deep
        for _ in range(60):
            node["a"] = {}
            node = node["a"]
        messages[1]["metadata"] = deep
    elif how == "summary past the end":
        bad["summaries"][0]["last_seq"] = 500
    elif how == "wrong format":
        bad["format"] = "palaver-export/9"
    elif how == "bad role":
        messages[0]["role"] = "root"
    elif how == "bad status":
        bad["session"]["status"] = "zombie"
    elif how == "not json":
        return b'{"format": "palaver-export/1", "session": '
    elif how == "a list":
        return b"[1, 2, 3]"
    return bad


HOSTILE = {
    "seq as text": "messages[3].seq",
    "duplicate seq": "seq 5 appears twice",
    "gap": "expected seq 5",
    "unknown field": "messages[0].admin",
    "naive time": "messages[2].created_at",
    "negative tokens": "session.usage.input_tokens",
    "infinite cost": "cost_usd",
    "huge text": "messages[39].text",
    "text too long for memory": "too long",
    "huge author": "messages[0].author_name",
    "NUL byte": "NUL",
    "deep metadata": "nested deeper",
    "summary past the end": "only 40",
    "wrong format": "format",
    "bad role": "messages[0].role",
    "bad status": "session.status",
    "not json": "not JSON",
    "a list": "document",
}


async def test_hostile_imports_get_a_clear_4xx_and_nothing_is_half_imported(
    surface: Surface,
) -> None:
    manager = surface.manager
    session_id = await conversation(manager)
    doc = json.loads(await export(surface, session_id))
    await surface.send("DELETE", f"/api/sessions/{session_id}")
    before = await counts(manager)
    for how, message in HOSTILE.items():
        spoiled = _spoil(doc, how)
        raw = spoiled if isinstance(spoiled, bytes) else json.dumps(spoiled).encode()
        status, body = await surface.send("POST", "/api/import", raw=raw)
        assert status in (400, 413, 422), (how, status, body)
        assert message in body["error"], (how, body["error"][:300])
        assert await counts(manager) == before, how
    status, body = await surface.send("POST", "/api/import", raw=b" " * (5 << 20))
    assert status == 413 and "at most" in body["error"]
    status, ok = await surface.send("POST", "/api/import", doc)
    assert status == 201 and ok["messages"] == 40  # the good one still goes in


async def test_files_are_linked_again_where_their_bytes_are_here(
    surface: Surface, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    manager = surface.manager
    key = ChatKey("telegram", "77")
    session = await manager.open(key)
    photo = NewAttachment.of("cat.png", "image", "image/png", b"\x89PNG" + b"c" * 5000, 420)
    await manager.add_message(session.id, Role.USER, "look at this", attachments=[photo])
    await manager.add_message(session.id, Role.ASSISTANT, "a cat")
    raw = await export(surface, session.id)
    doc = json.loads(raw)
    assert doc["messages"][0]["attachments"][0]["sha256"] == photo.sha256
    await surface.send("DELETE", f"/api/sessions/{session.id}")  # the blob stays until swept
    status, result = await surface.send("POST", "/api/import", raw=raw)
    assert status == 201 and result["files_missing"] == 0
    again = json.loads(await export(surface, result["session_id"]))
    again["session"].pop("id")
    doc["session"].pop("id")
    assert again == doc

    fresh = await make_manager(url=f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}")
    other = await start_surface(fresh, tmp_path / "other")
    try:
        status, result = await other.send("POST", "/api/import", raw=raw)
        assert status == 201 and result["files_missing"] == 1
        assert "not linked again" in result["note"]
        (first, _) = await fresh.messages(result["session_id"])
        assert first.token_count == doc["messages"][0]["token_count"] - 420
    finally:
        await stop_surface(other)


async def export_with_files(surface: Surface, session_id: int, files: str = "true") -> bytes:
    async with surface.http.get(
        f"{surface.url}/api/sessions/{session_id}/export",
        params={"format": "json", "files": files},
        headers=AUTH,
    ) as response:
        assert response.status == 200, await response.text()
        return await response.read()


async def photo_session(manager: SessionManager) -> tuple[int, NewAttachment, NewAttachment]:
    """A chat with a photo sent twice (one blob) and a PDF, and a text reply."""
    key = ChatKey("discord", "5150")
    session = await manager.open(key)
    photo = NewAttachment.of("board.png", "image", "image/png", png(64, 48), 5, width=64, height=48)
    paper = NewAttachment.of("notes.pdf", "pdf", "application/pdf", pdf(2), 3000, pages=2)
    await manager.add_message(
        session.id, Role.USER, "the whiteboard", attachments=[photo], author_id="7"
    )
    await manager.add_message(session.id, Role.ASSISTANT, "a diagram of the queue")
    await manager.add_message(
        session.id, Role.USER, "again, with notes", attachments=[photo, paper], author_id="7"
    )
    await manager.add_message(session.id, Role.ASSISTANT, "thanks")
    return session.id, photo, paper


@pytest.fixture
async def source(make_manager: ManagerFactory, tmp_path: Path) -> AsyncIterator[Surface]:
    """A second surface over a SQLite database of its own: where exports come from, so
    that the parametrized ``surface`` (SQLite or PostgreSQL) is the fresh database."""
    manager = await make_manager(url=f"sqlite+aiosqlite:///{tmp_path / 'source.db'}")
    started = await start_surface(manager, tmp_path / "source")
    yield started
    await stop_surface(started)


async def test_an_export_with_files_restores_them_in_a_fresh_database(
    source: Surface, surface: Surface
) -> None:
    session_id, photo, paper = await photo_session(source.manager)
    raw = await export_with_files(source, session_id)
    doc = json.loads(raw)
    carried = [a for m in doc["messages"] for a in m.get("attachments", [])]
    assert [a["sha256"] for a in carried] == [photo.sha256, photo.sha256, paper.sha256]
    assert base64.b64decode(carried[0]["data"]) == photo.data
    assert base64.b64decode(carried[2]["data"]) == paper.data

    # Without files (the default, as the chat's /export json), references only.
    plain = json.loads(await export(source, session_id))
    assert all("data" not in a for m in plain["messages"] for a in m.get("attachments", []))
    for a in carried:
        del a["data"]
    assert plain == doc

    fresh = surface.manager
    status, result = await surface.send("POST", "/api/import", raw=raw)
    assert status == 201, result
    assert result["session_id"] == session_id and result["files_missing"] == 0
    assert result["note"] is None
    restored = await fresh.attachments(session_id)
    assert [a.sha256 for a in restored[1]] == [photo.sha256]
    assert [(a.kind, a.width, a.height) for a in restored[1]] == [("image", 64, 48)]
    assert [a.sha256 for a in restored[3]] == [photo.sha256, paper.sha256]
    assert await fresh.attachment_data(photo.sha256) == photo.data
    assert await fresh.attachment_data(paper.sha256) == paper.data
    assert await fresh.store.attachments.count_blobs() == (2, photo.size + paper.size)
    # The files' tokens are counted with their messages, as where they came from.
    was = await source.manager.messages(session_id)
    now = await fresh.messages(session_id)
    assert [m.token_count for m in now] == [m.token_count for m in was]
    assert now[0].token_count == fresh.tokens.count("the whiteboard") + photo.tokens
    info = await fresh.get(session_id)
    assert info.message_tokens == (await source.manager.get(session_id)).message_tokens
    # The round trip is exact: exported again here, the same bytes.
    assert await export_with_files(surface, session_id) == raw


def _tamper(doc: dict[str, Any], how: str) -> dict[str, Any]:
    bad = copy.deepcopy(doc)
    last = bad["messages"][2]["attachments"][1]
    if how == "changed bytes":
        data = bytearray(base64.b64decode(last["data"]))
        data[100] ^= 0xFF
        last["data"] = base64.b64encode(bytes(data)).decode()
    elif how == "not base64":
        last["data"] = last["data"][:40] + "!*" + last["data"][42:]
    elif how == "another file":
        last["data"] = bad["messages"][0]["attachments"][0]["data"]
    elif how == "data as a number":
        last["data"] = 12
    return bad


TAMPERED = {
    "changed bytes": "messages[2].attachments[1].data: the bytes do not match sha256",
    "not base64": "messages[2].attachments[1].data: not valid base64",
    "another file": "messages[2].attachments[1].data: the bytes do not match sha256",
    "data as a number": "messages[2].attachments[1].data",
}


async def test_a_tampered_file_refuses_the_whole_import_and_nothing_is_stored(
    source: Surface, surface: Surface
) -> None:
    session_id, photo, _ = await photo_session(source.manager)
    doc = json.loads(await export_with_files(source, session_id))
    fresh = surface.manager
    for how, message in TAMPERED.items():
        status, body = await surface.send("POST", "/api/import", _tamper(doc, how))
        assert status == 422, (how, status, body)
        assert message in body["error"], (how, body["error"][:300])
        assert await counts(fresh) == (0, 0), how
        assert await fresh.store.attachments.count_blobs() == (0, 0), how  # not even the photo
    status, body = await source.get(f"/api/sessions/{session_id}/export", files="maybe")
    assert status == 400 and "files must be true or false" in body["error"]
    status, body = await source.get(
        f"/api/sessions/{session_id}/export", format="csv", files="true"
    )
    assert status == 400 and "format=json" in body["error"]
    status, result = await surface.send("POST", "/api/import", doc)
    assert status == 201 and result["files_missing"] == 0  # the untouched one goes in
    assert await fresh.attachment_data(photo.sha256) == photo.data


async def test_memory_keeps_no_blob_whose_bytes_are_not_its_hash(
    source: Surface, surface: Surface
) -> None:
    """The core refuses a damaged file first; memory keeps its own rule all the same
    (a blob is kept under the hash of its bytes), and stores nothing."""
    session_id, _, _ = await photo_session(source.manager)
    raw = await export_with_files(source, session_id)
    item = await read_export(raw, surface.manager.tokens)
    first = item.messages[0]
    wrong = replace(first.attachments[0], data=b"not the photo")
    spoiled = replace(item, messages=(replace(first, attachments=(wrong,)), *item.messages[1:]))
    with pytest.raises(InvalidMessage, match="do not match its sha256"):
        await surface.manager.import_session(spoiled)
    assert await counts(surface.manager) == (0, 0)
    assert await surface.manager.store.attachments.count_blobs() == (0, 0)
