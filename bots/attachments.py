"""Text files sent to the bot: which ones are read, and how they reach the model.

Both adapters read a text attachment into the message the same way; only how the
file is downloaded and how a refusal is worded are the platform's.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath

# Content types that are text without saying text/*.
TEXT_MIME_TYPES = frozenset(
    {
        "application/json",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/javascript",
        "application/x-sh",
        "application/sql",
        "application/x-python",
        "application/x-ndjson",
    }
)


class TextFiles:
    """Decides which files are text: by content type, else by name (``extensions``)."""

    def __init__(self, extensions: Iterable[str]) -> None:
        self.suffixes = frozenset(f".{e.lower().lstrip('.')}" for e in extensions)

    def is_text(self, filename: str, content_type: str | None) -> bool:
        kind = (content_type or "").split(";", 1)[0].strip().lower()
        if kind.startswith("text/") or kind in TEXT_MIME_TYPES:
            return True
        path = PurePosixPath(filename.lower())
        # A name with no suffix ("Dockerfile") is text if the whole name is listed.
        return path.suffix in self.suffixes or f".{path.name}" in self.suffixes


def decode_text(data: bytes) -> str | None:
    """The file as UTF-8 text (a byte-order mark dropped), or None if it is not."""
    try:
        content = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in content else content


def file_block(name: str, content: str) -> str:
    """A file as the model sees it inside the message: tagged with its name."""
    return f'<file name="{name}">\n{content.rstrip()}\n</file>'
