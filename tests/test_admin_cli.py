"""The operator's command line, end to end: `python run.py sessions ...` and
`python run.py stats` in a subprocess, over a database a console session filled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
