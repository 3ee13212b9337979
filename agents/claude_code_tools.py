"""Claude Code's tools as a chat shows them: one short line per tool use, and which
uses are read-only and inside the project (run without asking).

Read-only means the tool cannot change anything nor send anything anywhere: Read,
Grep, Glob, LS and NotebookRead, and only when every path they name resolves inside
the project's directory. WebFetch and WebSearch are not on the list: a URL can carry
the project's contents out, so they are asked about like any tool that acts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

READ_ONLY_TOOLS = frozenset({"Read", "Grep", "Glob", "LS", "NotebookRead"})
_PATH_KEYS = ("file_path", "path", "notebook_path")
_MAX_LINE = 120


def _short(text: str, limit: int = _MAX_LINE) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _shown_path(value: Any, workdir: Path) -> str:
    path = Path(str(value))
    try:
        return str(path.relative_to(workdir)) if path.is_absolute() else str(path)
    except ValueError:
        return str(path)


def describe_tool(name: str, tool_input: Mapping[str, Any], workdir: Path) -> str:
    """ "Reading app/models.py", "Running: pytest -q", "Editing x.py", ..."""

    def path(key: str = "file_path") -> str:
        return _shown_path(tool_input.get(key) or tool_input.get("path") or "", workdir)

    if name == "Read":
        return _short(f"Reading {path()}")
    if name in ("Edit", "MultiEdit"):
        return _short(f"Editing {path()}")
    if name == "Write":
        return _short(f"Writing {path()}")
    if name in ("NotebookEdit", "NotebookRead"):
        verb = "Editing" if name == "NotebookEdit" else "Reading"
        return _short(f"{verb} {path('notebook_path')}")
    if name == "Bash":
        return _short(f"Running: {tool_input.get('command', '')}")
    if name == "Grep":
        where = tool_input.get("path")
        suffix = f" in {_shown_path(where, workdir)}" if where else ""
        return _short(f"Searching for '{tool_input.get('pattern', '')}'{suffix}")
    if name == "Glob":
        return _short(f"Finding files: {tool_input.get('pattern', '')}")
    if name == "LS":
        return _short(f"Listing {path('path') or '.'}")
    if name == "WebFetch":
        return _short(f"Fetching {tool_input.get('url', '')}")
    if name == "WebSearch":
        return _short(f"Searching the web for '{tool_input.get('query', '')}'")
    if name in ("Task", "Agent"):
        return _short(
            f"Delegating: {tool_input.get('description') or tool_input.get('prompt', '')}"
        )
    if name == "TodoWrite":
        return "Updating the plan"
    return _short(f"Using {name}")


def read_only_inside(name: str, tool_input: Mapping[str, Any], workdir: Path) -> bool:
    """Whether this use only reads, and only inside ``workdir`` (a real path)."""
    if name not in READ_ONLY_TOOLS:
        return False
    for key in _PATH_KEYS:
        value = tool_input.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            return False
        path = Path(value).expanduser()
        try:
            real = (path if path.is_absolute() else workdir / path).resolve()
        except (OSError, RuntimeError):
            return False
        if real != workdir and not real.is_relative_to(workdir):
            return False
    return True
