"""Files sent to the bot: which ones are read, how they reach the model, and what the
user is told about the rest. One pipeline and one wording for every interface; only
downloading is the platform's (``Attachment.fetch``).

Text files (by content type, else by extension, UTF-8, up to ``max_text_bytes``) are
read into the message, each tagged with its name; everything else is named in one
short note saying what the bot can read.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from conversation.inbound import Attachment
from conversation.settings import AttachmentSettings

log = logging.getLogger(__name__)

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


@dataclass(frozen=True, slots=True)
class ReadFiles:
    """What came of a message's attachments: text blocks for the model, and the names
    of what could not be read, each with its reason."""

    blocks: tuple[str, ...]
    refused: tuple[str, ...]


class AttachmentReader:
    def __init__(self, settings: AttachmentSettings) -> None:
        self.settings = settings
        self.text_files = TextFiles(settings.text_extensions)

    async def read(self, attachments: Sequence[Attachment]) -> ReadFiles:
        blocks: list[str] = []
        refused: list[str] = []
        limit = self.settings.max_text_bytes
        for item in attachments:
            if item.kind != "file" or not self.text_files.is_text(item.name, item.content_type):
                refused.append(item.name)
                continue
            if (item.size or 0) > limit or item.fetch is None:
                refused.append(f"{item.name} (too large)" if item.fetch else item.name)
                continue
            try:
                data = await item.fetch()
            except Exception as error:  # the platform's download failed: say so, go on
                log.warning("downloading %s failed: %r", item.name, error)
                refused.append(f"{item.name} (the download failed; please send it again)")
                continue
            if len(data) > limit:
                refused.append(f"{item.name} (too large)")
                continue
            content = decode_text(data)
            if content is None:
                refused.append(f"{item.name} (not UTF-8 text)")
                continue
            blocks.append(file_block(item.name, content))
        return ReadFiles(tuple(blocks), tuple(refused))

    def refusal(self, refused: Sequence[str]) -> str:
        """The one note for what could not be read."""
        limit = self.settings.max_text_bytes
        size = f"{limit / 1000:,.0f} KB" if limit >= 1000 else f"{limit} bytes"
        return (
            f"I skipped {', '.join(refused)}: I can read messages, captions and text files "
            f"(.txt, .md, .py, .json, .csv and other plain text, UTF-8, up to {size}). "
            "Images, audio, video and other files aren't supported: please describe them "
            "in words."
        )


def seen_as(attachments: Sequence[Attachment]) -> str:
    """How a message's files appear in a stored message the bot did not answer."""
    return " ".join(
        f"[{item.kind}: {item.name}]" if item.kind == "file" else f"[{item.kind}]"
        for item in attachments
    )
