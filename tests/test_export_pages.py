"""An export longer than one page (conversation.export writes PAGE messages at a time):
2,500 messages exported as JSON, CSV and Markdown through the HTTP API and through a
chat's /export. Every message is there once and in order, each file is valid JSON or
CSV, and each page is formatted while the event loop keeps turning. SQLite and
PostgreSQL.

The loop is watched by a ticker task, and each page's formatting (the real
``_Writer.page``, wrapped so as to look, never replaced) waits until the ticker has
turned once more: off the loop it soon has; on the loop it never could, and that is
noted at once rather than waited out.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import conversation.export as export
from agents.offline import OfflineAgent
from conversation.access import Actor
from conversation.inbound import Inbound
from conversation.settings import AccessSettings
from memory.manager import SessionManager
from memory.types import ChatKey, Role
from tests.core import RecordingPort, make_dispatcher
from tests.operator_surface import AUTH, Surface, start_surface, stop_surface

MESSAGES = 2500  # three pages: 1,000 + 1,000 + 500
DM = ChatKey("telegram", "11")
ANN = Actor("telegram", "11", "Ann")
ACCESS = AccessSettings(allowed_users=["telegram:11"])


def line(n: int) -> str:
    """Message ``n``: a unique marker, and what CSV must quote (a comma, quotes, a
    line break) and what JSON must escape."""
    return f'⟨{n:04d}⟩ said "yes, and no",\nthen a second line with ümlauts'


def marker(n: int) -> str:
    return f"⟨{n:04d}⟩"


async def long_session(manager: SessionManager, key: ChatKey = DM) -> int:
    """A session of MESSAGES messages, stored through the group-committing writer
    (all submitted at once, they are committed in batches)."""
    assert MESSAGES > 2 * export.PAGE
    session = await manager.open(key)
    await asyncio.gather(
        *(
            manager.add_message(session.id, Role.USER if n % 2 == 0 else Role.ASSISTANT, line(n))
            for n in range(MESSAGES)
        )
    )
    return session.id


class LoopWatch:
    """A ticker task on the loop, and what each export page saw of it."""

    def __init__(self) -> None:
        self.ticks = 0
        self.loop_thread = threading.get_ident()
        self.pages: list[bool] = []  # per page formatted: did the loop turn meanwhile?

    async def tick(self) -> None:
        while True:
            self.ticks += 1
            await asyncio.sleep(0.001)

    def saw_the_loop_turn(self) -> bool:
        """Called from inside a page's formatting."""
        if threading.get_ident() == self.loop_thread:
            return False  # formatting on the loop: nothing else runs until it is done
        seen = self.ticks
        deadline = time.monotonic() + 30  # only a broken loop would take this long
        while self.ticks == seen and time.monotonic() < deadline:
            time.sleep(0.001)
        return self.ticks != seen

    def reset(self) -> None:
        self.pages.clear()


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopWatch]:
    watch = LoopWatch()
    real = export._Writer.page

    def page(writer: Any, messages: Any, files: Any = None) -> None:
        watch.pages.append(watch.saw_the_loop_turn())
        real(writer, messages, files)

    monkeypatch.setattr(export._Writer, "page", page)
    yield watch


async def while_ticking(watch: LoopWatch, work: Any) -> Any:
    """Run ``work`` with the ticker going; the ticker must turn while it runs."""
    ticker = asyncio.create_task(watch.tick())
    try:
        await asyncio.sleep(0)
        before = watch.ticks
        result = await work
        assert watch.ticks > before, "the loop never turned while the export ran"
    finally:
        ticker.cancel()
    return result


def check_json(data: bytes, session_id: int) -> None:
    document = json.loads(data)
    assert document["session"]["id"] == session_id
    messages = document["messages"]
    assert [m["seq"] for m in messages] == list(range(1, MESSAGES + 1))
    assert [m["text"] for m in messages] == [line(n) for n in range(MESSAGES)]
    assert [m["role"] for m in messages[:2]] == ["user", "assistant"]


def check_csv(data: bytes) -> None:
    rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
    assert rows[0] == ["seq", "role", "author_id", "author_name", "created_at", "tokens", "text"]
    body = rows[1:]
    assert all(len(row) == 7 for row in body)
    assert [int(row[0]) for row in body] == list(range(1, MESSAGES + 1))
    assert [row[6] for row in body] == [line(n) for n in range(MESSAGES)]


def check_markdown(data: bytes, session_id: int) -> None:
    text = data.decode("utf-8")
    assert text.startswith(f"# Palaver conversation #{session_id}")
    assert f"- Messages: {MESSAGES}; " in text
    where = -1
    for n in range(MESSAGES):
        assert text.count(marker(n)) == 1, n
        found = text.index(line(n))
        assert found > where, f"message {n} is out of order"
        where = found


# -- the HTTP API ------------------------------------------------------------------------------


@pytest.fixture
async def surface(manager: SessionManager, tmp_path: Path) -> AsyncIterator[Surface]:
    started = await start_surface(manager, tmp_path)
    yield started
    await stop_surface(started)


async def download(surface: Surface, session_id: int, form: str) -> bytes:
    async with surface.http.get(
        f"{surface.url}/api/sessions/{session_id}/export", params={"format": form}, headers=AUTH
    ) as response:
        assert response.status == 200, await response.text()
        data = await response.read()
        assert int(response.headers["Content-Length"]) == len(data)
        return data


async def test_an_export_of_many_pages_over_http_has_every_message_once_in_order(
    surface: Surface, watch: LoopWatch, tmp_path: Path
) -> None:
    session_id = await long_session(surface.manager)
    checks: list[tuple[str, Callable[[bytes], None]]] = [
        ("json", lambda data: check_json(data, session_id)),
        ("csv", check_csv),
        ("md", lambda data: check_markdown(data, session_id)),
    ]
    for form, check in checks:
        watch.reset()
        data = await while_ticking(watch, download(surface, session_id, form))
        check(data)
        assert watch.pages == [True, True, True], form  # 1,000 + 1,000 + 500
    assert list((tmp_path / "exports").iterdir()) == []


# -- a chat's /export --------------------------------------------------------------------------


async def test_a_chat_s_export_of_many_pages_has_every_message_once_in_order(
    manager: SessionManager, watch: LoopWatch, tmp_path: Path
) -> None:
    core = make_dispatcher(manager, OfflineAgent(), access=ACCESS, exports=tmp_path / "exports")
    session_id = await long_session(manager)
    checks: list[tuple[str, str, Callable[[bytes], None]]] = [
        ("json", ".json", lambda data: check_json(data, session_id)),
        ("csv", ".csv", check_csv),
        ("", ".md", lambda data: check_markdown(data, session_id)),
    ]
    for argument, suffix, check in checks:
        watch.reset()
        port = RecordingPort()
        command = Inbound(DM, ANN, f"/export {argument}".strip(), None, private=True)
        await while_ticking(watch, core.handle(command, port))
        [sent] = port.sent
        assert sent.file == f"palaver-telegram-conversation-{session_id}{suffix}", port.texts
        assert f"{MESSAGES:,} messages" in sent.text
        assert sent.data is not None
        check(sent.data)
        assert watch.pages == [True, True, True], argument or "markdown"
    assert list((tmp_path / "exports").iterdir()) == []
