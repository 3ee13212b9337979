"""The console, end to end: `python run.py console` in a subprocess, typed at."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_console(tmp_path: Path, lines: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "palaver.toml"
    config.write_text(f'[palaver]\ndata_dir = "{tmp_path / "data"}"\nlog_level = "WARNING"\n')
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PALAVER_")}
    for name in ("ANTHROPIC_API_KEY", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        environ.pop(name, None)
    environ.update(env)
    return subprocess.run(
        [sys.executable, "run.py", "--config", str(config), "console"],
        cwd=ROOT,
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def test_a_newcomer_sees_the_offline_agent_and_the_hint(tmp_path: Path) -> None:
    done = run_console(tmp_path, ["Hello, I am Ada and my order is 4417"])
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "ANTHROPIC_API_KEY   not set" in out
    assert "TELEGRAM_BOT_TOKEN  set it to serve a Telegram bot" in out
    assert "No model is configured" in out
    assert 'You said: "Hello, I am Ada and my order is 4417"' in out
    assert (tmp_path / "data" / "palaver.db").exists()


def test_status_summary_and_reset_through_the_console(tmp_path: Path) -> None:
    chatter = [
        f"Note {i}: the ticket PAL-{100 + i} belongs to Grace, due day {i}" for i in range(40)
    ]
    done = run_console(
        tmp_path,
        [*chatter, "/status", "/summary", "/reset", "/status", "/nonsense"],
        PALAVER_MEMORY__TOKEN_LIMIT="2000",
        PALAVER_MEMORY__SUMMARY_MAX_TOKENS="200",
        PALAVER_MEMORY__MAX_MESSAGE_TOKENS="500",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "faster than I can answer" not in out  # the operator is never rate-limited
    after_status = out.partition("Session #1 (active")[2]
    first_status, _, after_reset = after_status.partition("Started a fresh conversation")
    assert "Messages: 80; summaries: " in first_status
    assert "summaries: none yet" not in first_status
    summary = first_status
    assert "Messages 1-" in summary  # the folded range
    assert "extractive; no model was used" in summary
    assert "PAL-100" in summary and "Grace" in summary  # identifiers and names kept
    assert "Session #2 (active" in after_reset
    assert "Messages: 0; summaries: none yet" in after_reset
    assert "Unknown command /nonsense. Send /help" in after_reset


def test_export_is_written_to_a_file_and_logs_stay_out_of_the_chat(tmp_path: Path) -> None:
    done = run_console(
        tmp_path,
        ["remember the code 2718", "/export", "/export json"],
        PALAVER_PALAVER__LOG_LEVEL="INFO",
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    exports = tmp_path / "data" / "exports"
    markdown = exports / "palaver-console-conversation-1.md"
    data = exports / "palaver-console-conversation-1.json"
    assert f"Saved to {markdown}" in out and f"Saved to {data}" in out
    assert "remember the code 2718" in markdown.read_text()
    assert json.loads(data.read_text())["messages"][0]["text"] == "remember the code 2718"
    assert markdown.stat().st_mode & 0o777 == 0o600
    # Log lines go to a file in the data dir, never between the chat's lines.
    assert " INFO " not in out and " INFO " not in done.stderr
    assert "palaver started" in (tmp_path / "data" / "palaver.log").read_text()


def test_at_a_terminal_it_edits_lines_keeps_history_and_renders_replies(tmp_path: Path) -> None:
    """The console on a pseudo-terminal: prompt_toolkit reads the lines (history kept in
    the data dir), rich renders the reply."""
    import pty
    import select
    import time

    config = tmp_path / "palaver.toml"
    config.write_text(f'[palaver]\ndata_dir = "{tmp_path / "data"}"\n')
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PALAVER_")}
    for name in ("ANTHROPIC_API_KEY", "TELEGRAM_BOT_TOKEN", "DISCORD_BOT_TOKEN"):
        environ.pop(name, None)
    environ.update(TERM="xterm", COLUMNS="100", LINES="40", PROMPT_TOOLKIT_NO_CPR="1")
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "run.py", "--config", str(config), "console"],
        cwd=ROOT,
        stdin=follower,
        stdout=follower,
        stderr=subprocess.PIPE,
        env=environ,
        close_fds=True,
    )
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, within: float = 60.0) -> None:
        nonlocal seen
        deadline = time.monotonic() + within
        while marker not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{marker!r} never came; the terminal showed {seen[-2000:]!r}"
            ready, _, _ = select.select([leader], [], [], left)
            if ready:
                try:
                    seen += os.read(leader, 65536)
                except OSError:  # the console exited
                    break

    try:
        read_until(b"you>")
        os.write(leader, b"hello there\r")
        read_until(b"offline reply")
        os.write(leader, b"/export\r")
        read_until(b"Saved to")
        seen = seen.partition(b"Saved to")[2]
        read_until(b"you>")  # the prompt again
        os.write(leader, b"\x04")  # Ctrl-D: the end
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    history = (tmp_path / "data" / "console_history").read_text()
    assert "hello there" in history and "/export" in history
    assert (tmp_path / "data" / "exports" / "palaver-console-conversation-1.md").exists()
