"""The operator's command line, end to end: `python run.py sessions ...` and
`python run.py stats` in a subprocess, over a database a console session filled."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from memory.attachments import NewAttachment
from memory.database import migrate, open_database
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.tokens import TokenCounter
from memory.types import ChatKey, Role
from tests.media import jpeg

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent


def palaver(
    tmp_path: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "palaver.toml"
    if not config.exists():
        config.write_text(
            f'[palaver]\ndata_dir = "{tmp_path / "data"}"\nlog_level = "WARNING"\n'
            "[memory]\ntoken_limit = 2000\nsummary_max_tokens = 200\nmax_message_tokens = 500\n"
        )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PALAVER_")}
    for name in ("ANTHROPIC_API_KEY", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        environ.pop(name, None)
    environ["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "run.py", "--config", str(config), *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def test_list_show_export_import_delete_and_stats(tmp_path: Path) -> None:
    chatter = "\n".join(f"Note {i}: ticket PAL-{100 + i} belongs to Grace" for i in range(30))
    filled = palaver(tmp_path, "console", stdin=chatter + "\n")
    assert filled.returncode == 0, filled.stderr

    listed = palaver(tmp_path, "sessions", "list")
    assert listed.returncode == 0, listed.stderr
    assert "console" in listed.stdout and "60" in listed.stdout  # 30 notes, 30 replies
    as_json = json.loads(palaver(tmp_path, "sessions", "list", "--json").stdout)
    assert [s["id"] for s in as_json["items"]] == [1]

    shown = palaver(tmp_path, "sessions", "show", "1", "--messages", "2")
    assert shown.returncode == 0, shown.stderr
    assert "Session #1" in shown.stdout and "Summary of messages 1-" in shown.stdout
    assert "PAL-129" in shown.stdout

    target = tmp_path / "out" / "one.json"
    exported = palaver(tmp_path, "sessions", "export", "1", "--format", "json", "-o", str(target))
    assert exported.returncode == 0, exported.stderr
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    document = json.loads(target.read_text())
    assert len(document["messages"]) == 60
    markdown = palaver(tmp_path, "sessions", "export", "1", "--format", "md")
    assert markdown.stdout.startswith("# Palaver conversation #1")

    refused = palaver(tmp_path, "sessions", "delete", "1")  # no terminal, no --yes
    assert refused.returncode == 1 and "--yes" in refused.stderr
    deleted = palaver(tmp_path, "sessions", "delete", "1", "--yes")
    assert deleted.returncode == 0 and "deleted session #1 (60 messages)" in deleted.stdout
    missing = palaver(tmp_path, "sessions", "show", "1")
    assert missing.returncode == 1 and "session 1 does not exist" in missing.stderr

    imported = palaver(tmp_path, "sessions", "import", str(target))
    assert imported.returncode == 0, imported.stderr
    assert "imported session #2 (60 messages)" in imported.stdout
    again = palaver(tmp_path, "sessions", "import", str(target))
    assert again.returncode == 0 and "nothing changed" in again.stdout

    target.write_text(json.dumps({**document, "messages": document["messages"][:3] * 2}))
    hostile = palaver(tmp_path, "sessions", "import", str(target))
    assert hostile.returncode == 1 and "appears twice" in hostile.stderr

    stats = palaver(tmp_path, "stats")
    assert stats.returncode == 0, stats.stderr
    assert "By interface" in stats.stdout and "console" in stats.stdout
    numbers = json.loads(palaver(tmp_path, "stats", "--json").stdout)
    assert numbers["sessions"]["total"] == 1 and numbers["messages"] == 60

    bad = palaver(tmp_path, "sessions", "show", "abc")
    assert bad.returncode == 1 and "positive whole number" in bad.stderr


def test_jobs_from_the_command_line_and_the_console(tmp_path: Path) -> None:
    """`run.py jobs` and /jobs run the same jobs, recorded in the same table."""
    never = palaver(tmp_path, "jobs", "list")
    assert never.returncode == 0, never.stderr
    assert "finalize" in never.stdout and "every 1 min" in never.stdout
    assert "never" in never.stdout

    ran = palaver(tmp_path, "jobs", "run", "finalize")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("finalize: ok at ")
    as_json = json.loads(palaver(tmp_path, "jobs", "run", "prune", "--json").stdout)
    assert as_json["job"] == "prune" and as_json["outcome"] == "ok"
    unknown = palaver(tmp_path, "jobs", "run", "vacuum")
    assert unknown.returncode == 1
    assert "there is no job 'vacuum'; the jobs are: finalize, expire" in unknown.stderr

    listed = json.loads(palaver(tmp_path, "jobs", "list", "--json").stdout)
    runs = {job["name"]: job["last_run"] for job in listed}
    assert runs["finalize"]["outcome"] == "ok" and runs["cleanup"] is None

    # The console's user runs the bot, so /jobs is theirs.
    console = palaver(tmp_path, "console", stdin="/jobs\n/jobs run expire\n/jobs run vacuum\n")
    assert console.returncode == 0, console.stderr
    assert "finalize (every 1 min): idle sessions get their closing summary" in console.stdout
    assert "last: ok at " in console.stdout
    assert "expire: ok at " in console.stdout
    assert "That didn't work: there is no job 'vacuum'" in console.stdout


async def _with_manager(data_dir: Path, work: Callable[[SessionManager], Awaitable[T]]) -> T:
    """``work`` with a session manager over the command line's own SQLite file."""
    database = open_database(f"sqlite+aiosqlite:///{data_dir / 'palaver.db'}", DatabaseSettings())
    try:
        await migrate(database)
        manager = SessionManager(Store(database), TokenCounter(), MemorySettings())
        await manager.start()
        try:
            return await work(manager)
        finally:
            await manager.close()
    finally:
        await database.dispose()


def test_export_with_files_and_import_elsewhere_from_the_command_line(tmp_path: Path) -> None:
    photo = NewAttachment.of("cat.jpg", "image", "image/jpeg", jpeg(40, 30), 2, width=40, height=30)

    async def seed(manager: SessionManager) -> int:
        session = await manager.open(ChatKey("telegram", "42"))
        await manager.add_message(session.id, Role.USER, "my cat", attachments=[photo])
        await manager.add_message(session.id, Role.ASSISTANT, "a fine cat")
        return session.id

    (tmp_path / "data").mkdir()
    session_id = asyncio.run(_with_manager(tmp_path / "data", seed))
    target = tmp_path / "with-files.json"
    exported = palaver(
        tmp_path, "sessions", "export", str(session_id), "--files", "-o", str(target)
    )
    assert exported.returncode == 0, exported.stderr
    (carried,) = json.loads(target.read_text())["messages"][0]["attachments"]
    assert base64.b64decode(carried["data"]) == photo.data
    plain = palaver(tmp_path, "sessions", "export", str(session_id))  # references only
    assert "data" not in json.loads(plain.stdout)["messages"][0]["attachments"][0]
    csv = palaver(tmp_path, "sessions", "export", str(session_id), "--format", "csv", "--files")
    assert csv.returncode == 1 and "format=json" in csv.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    imported = palaver(elsewhere, "sessions", "import", str(target))
    assert imported.returncode == 0, imported.stderr
    assert f"imported session #{session_id} (2 messages)" in imported.stdout

    async def kept(manager: SessionManager) -> tuple[list[str], bytes | None]:
        files = await manager.attachments(session_id)
        return [a.sha256 for a in files[1]], await manager.attachment_data(photo.sha256)

    assert asyncio.run(_with_manager(elsewhere / "data", kept)) == ([photo.sha256], photo.data)
