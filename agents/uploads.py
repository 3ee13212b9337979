"""Files sent in a Claude Code project's chat, written where Claude Code can read them.

Claude Code reads files from its working directory rather than from the prompt, so an
image or PDF sent in a project chat is written into the project's ``uploads`` folder
and its path handed to Claude Code with the message. Names come from chat users:
each is reduced to one plain file name (no directories, no leading dot, no control
or reserved characters), and a file never replaces another: a taken name gets a
number (``photo-2.jpg``). The folder itself must be a real directory inside the
working directory; a symlink planted in its place is refused.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Protocol

from agents.workspace import WorkspaceError

UPLOADS = "uploads"
MAX_NAME = 120
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]+')


class Upload(Protocol):
    """A file to write: what it was called, and its bytes."""

    @property
    def name(self) -> str: ...

    @property
    def data(self) -> bytes: ...


def safe_name(name: str) -> str:
    """``name`` as one harmless file name, its extension kept (at most MAX_NAME chars)."""
    name = unicodedata.normalize("NFKC", name).replace("\\", "/")
    name = _UNSAFE.sub("_", PurePosixPath(name).name).strip().lstrip(".").strip()
    if not name.strip("_"):
        name = "file"
    path = PurePosixPath(name)
    suffix = path.suffix if len(path.suffix) <= 16 else ""
    stem = name[: len(name) - len(suffix)] if suffix else name
    return stem[: MAX_NAME - len(suffix)].rstrip(" .") + suffix


def write_uploads(workdir: Path, attachments: Iterable[Upload]) -> list[Path]:
    """Write each file into ``workdir/uploads`` under a safe name, never over an
    existing file; returns the paths written, in order.

    Blocking file I/O: call it through ``asyncio.to_thread``. Raises WorkspaceError
    when the uploads folder cannot be used (a symlink, a file in its place).
    """
    folder = workdir / UPLOADS
    try:
        folder.mkdir(mode=0o755, exist_ok=True)
    except OSError as error:
        raise WorkspaceError(f"The uploads folder {folder} cannot be created: {error}") from None
    if folder.is_symlink() or not folder.is_dir():
        raise WorkspaceError(f"{folder} is not a plain directory; uploads are not written there.")
    written: list[Path] = []
    for item in attachments:
        written.append(_write_new(folder, safe_name(item.name), item.data))
    return written


def _write_new(folder: Path, name: str, data: bytes) -> Path:
    stem, suffix = (name[: -len(PurePosixPath(name).suffix)], PurePosixPath(name).suffix)
    if not suffix:
        stem = name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    number = 1
    while True:
        candidate = folder / (name if number == 1 else f"{stem}-{number}{suffix}")
        try:
            fd = os.open(candidate, flags, 0o644)
        except FileExistsError:
            number += 1
            continue
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        return candidate


def describe_uploads(paths: Iterable[Path], workdir: Path) -> str:
    """The line that tells Claude Code where the user's files are (relative paths)."""
    shown = ", ".join(str(path.relative_to(workdir)) for path in paths)
    return f"[The user sent files, saved in the project as: {shown}]" if shown else ""
