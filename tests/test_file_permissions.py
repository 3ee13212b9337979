"""Conversations are readable by their owner only: the data directory 0700, the
database with its -wal and -shm files and exports 0600, whatever the umask; looser
existing ones are named at start."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from memory.database import migrate, open_database
from memory.manager import SessionManager
from memory.private_files import open_private, private_file, write_private
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o000, 0o022], ids=["umask-000", "umask-022"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """The process umask for one test: SQLite's threads create files under it."""
    value: int = request.param
    old = os.umask(value)
    try:
        yield value
    finally:
        os.umask(old)


async def test_the_database_and_its_wal_and_shm_are_private(tmp_path: Path, umask: int) -> None:
    data = tmp_path / "data"
    db = data / "palaver.db"
    database = open_database(f"sqlite+aiosqlite:///{db}", DatabaseSettings())
    try:
        await migrate(database)
        manager = SessionManager(Store(database), TokenCounter(), MemorySettings())
        await manager.start()
        session = await manager.open(ChatKey("test", "private"))
        await manager.add_message(session.id, Role.USER, "nobody else may read this")
        wal, shm = Path(f"{db}-wal"), Path(f"{db}-shm")  # open: SQLite made them itself
        assert (mode(data), mode(db), mode(wal), mode(shm)) == (0o700, 0o600, 0o600, 0o600)
        await manager.close()
    finally:
        await database.dispose()


async def test_looser_existing_ones_are_named_once_each_and_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    db = data / "palaver.db"
    db.touch()
    os.chmod(data, 0o755)
    os.chmod(db, 0o644)
    with caplog.at_level(logging.WARNING, logger="memory.private_files"):
        database = open_database(f"sqlite+aiosqlite:///{db}", DatabaseSettings())
        try:
            await migrate(database)
        finally:
            await database.dispose()
    lines = [r.getMessage() for r in caplog.records if r.name == "memory.private_files"]
    assert len(lines) == 2, lines
    assert f"{data} is open to other users (mode 0755)" in lines[0]
    assert f"{db} is open to other users (mode 0644)" in lines[1]
    assert (mode(data), mode(db)) == (0o755, 0o644)  # the operator's choice stays


def test_exports_are_written_private_and_whole(tmp_path: Path, umask: int) -> None:
    exports = tmp_path / "data"  # missing: made 0700
    path = write_private(exports / "export.md", "# Conversation\n\nhello\n")
    assert path.read_text(encoding="utf-8") == "# Conversation\n\nhello\n"
    assert (mode(exports), mode(path)) == (0o700, 0o600)

    loose = exports / "old.json"
    loose.write_text("{}")
    os.chmod(loose, 0o644)
    write_private(loose, b'{"messages": []}')
    assert loose.read_bytes() == b'{"messages": []}' and mode(loose) == 0o600

    with pytest.raises(RuntimeError), open_private(loose) as file:
        file.write(b"half an exp")
        raise RuntimeError("the export failed midway")
    assert loose.read_bytes() == b'{"messages": []}'  # the old one, whole
    assert sorted(p.name for p in exports.iterdir()) == ["export.md", "old.json"]


def test_private_file_creates_empty_and_keeps_what_exists(tmp_path: Path, umask: int) -> None:
    path = private_file(tmp_path / "new")
    assert path.read_bytes() == b"" and mode(path) == 0o600
    path.write_bytes(b"kept")
    private_file(path)
    assert path.read_bytes() == b"kept"


def test_run_creates_the_data_dir_and_database_private(tmp_path: Path) -> None:
    """The whole program, started as an operator would, under a umask of 000."""
    config = tmp_path / "palaver.toml"
    data = tmp_path / "data"
    config.write_text(f'[palaver]\ndata_dir = "{data}"\nlog_level = "WARNING"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PALAVER_", "ANTHROPIC_"))}
    done = subprocess.run(
        [sys.executable, "run.py", "--config", str(config), "console"],
        cwd=ROOT,
        env=env,
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=60,
        umask=0o000,
    )
    assert done.returncode == 0, done.stderr
    assert (mode(data), mode(data / "palaver.db")) == (0o700, 0o600)
    assert "open to other users" not in done.stderr
