"""Bad input gets a clear error and loses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from memory.database import migrate, open_database
from memory.errors import InvalidMessage, StoreUnavailable
from memory.manager import SessionManager
from memory.settings import DatabaseSettings
from memory.types import ChatKey, Role
from tests.conftest import ManagerFactory

KEY = ChatKey("discord", "100", "7")


async def stored_texts(manager: SessionManager, sid: int) -> list[str]:
    return [m.text for m in await manager.messages(sid)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "message is empty"),
        ("   \n\t ", "message is empty"),
        ("x" * 1_048_576, "message is too long: 1,048,576 characters; the limit is 100,000"),
        ("null\x00byte", "NUL bytes"),
        ("lone \ud800 surrogate", "lone surrogate"),
        (b"binary \xff", "message is not text (bytes)"),
        (None, "message is not text (NoneType)"),
    ],
)
async def test_bad_text_is_refused_and_nothing_is_stored(
    manager: SessionManager, text: object, expected: str
) -> None:
    session = await manager.open(KEY)
    await manager.add_message(session.id, Role.USER, "before")
    with pytest.raises(InvalidMessage, match=expected.replace("(", r"\(").replace(")", r"\)")):
        await manager.add_message(session.id, Role.USER, text)  # type: ignore[arg-type]
    await manager.add_message(session.id, Role.USER, "after")
    assert await stored_texts(manager, session.id) == ["before", "after"]
    info = await manager.get(session.id)
    assert (info.message_count, info.last_seq) == (2, 2)


async def test_unknown_role_is_refused(manager: SessionManager) -> None:
    session = await manager.open(KEY)
    with pytest.raises(InvalidMessage, match="unknown role 'wizard'; expected one of user"):
        await manager.add_message(session.id, "wizard", "hello")
    assert await stored_texts(manager, session.id) == []


async def test_too_many_tokens_is_refused(make_manager: ManagerFactory) -> None:
    manager = await make_manager(max_message_tokens=100)
    session = await manager.open(KEY)
    with pytest.raises(InvalidMessage, match=r"tokens; the limit is 100"):
        await manager.add_message(session.id, Role.USER, "word " * 500)
    assert await stored_texts(manager, session.id) == []


async def test_metadata_must_be_json(manager: SessionManager) -> None:
    session = await manager.open(KEY)
    with pytest.raises(InvalidMessage, match="metadata is not JSON"):
        await manager.add_message(session.id, Role.USER, "hi", metadata={"x": object()})
    assert await stored_texts(manager, session.id) == []


async def test_a_large_message_is_counted_off_the_event_loop(
    make_manager: ManagerFactory,
) -> None:
    manager = await make_manager(token_limit=100_000, max_message_tokens=32_000)
    session = await manager.open(KEY)
    text = "lorem ipsum dolor sit amet " * 3000  # 81,000 characters, under the limit
    stored = await manager.add_message(session.id, Role.USER, text)
    assert stored.token_count == manager.tokens.count(text)
    assert await stored_texts(manager, session.id) == [text]


async def test_locked_sqlite_file_gives_a_clear_error_and_recovers(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    url = f"sqlite+aiosqlite:///{path}"
    database = open_database(url, DatabaseSettings(busy_timeout_ms=200))
    await migrate(database)
    from memory.settings import MemorySettings
    from memory.store import Store
    from memory.tokens import TokenCounter

    manager = SessionManager(
        Store(database),
        TokenCounter(),
        MemorySettings(token_limit=2000, summary_max_tokens=200, max_message_tokens=800),
    )
    session = await manager.open(KEY)
    await manager.add_message(session.id, Role.USER, "kept")
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreUnavailable, match="locked by another process"):
            await manager.add_message(session.id, Role.USER, "while locked")
    finally:
        blocker.rollback()
        blocker.close()
    await manager.add_message(session.id, Role.USER, "after unlock")
    assert await stored_texts(manager, session.id) == ["kept", "after unlock"]
    info = await manager.get(session.id)
    assert info.last_seq == 2
    await manager.close()
    await database.dispose()


async def test_unreachable_postgresql_gives_a_clear_error() -> None:
    database = open_database(
        "postgresql+asyncpg://palaver:secret-password@127.0.0.1:1/nowhere",
        DatabaseSettings(connect_timeout_s=2),
    )
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await asyncio.wait_for(migrate(database), 20)
    finally:
        await database.dispose()
    assert str(caught.value) == "the database cannot be reached"
    assert "secret-password" not in str(caught.value)


async def test_unsupported_database_url_is_named() -> None:
    with pytest.raises(StoreUnavailable, match="supported are sqlite"):
        open_database("mysql+aiomysql://root@127.0.0.1/test", DatabaseSettings())
