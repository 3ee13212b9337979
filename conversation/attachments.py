"""Files sent to the bot: which ones are read, how they reach the model, and what the
user is told about the rest. One pipeline and one wording for every interface; only
downloading is the platform's (``Attachment.fetch``).

- **Text files** (by content type, else by extension, UTF-8, up to ``max_text_bytes``)
  are read into the message, each tagged with its name.
- **Images** (JPEG, PNG, GIF, WebP: photos, image files, static stickers) and **PDFs**
  go to the model as image and document blocks, and are kept with the message
  (memory.attachments); the message's text names each one (``[image: a.png,
  800x600]``, ``[PDF: b.pdf, 3 pages]``), which is what summaries and exports see.
  Of the sizes a platform offers of a photo, the largest within the limits is taken.
  An image is checked and scaled down in conversation.images, a PDF counted in
  conversation.pdfs, both in a worker thread, two at a time at most (decoding is
  where memory goes).
- **Everything else**, and whatever breaks a limit, is named in one short note with
  its reason and what the bot can read.

Nothing is downloaded before the core decided to read it: not for a stranger, not for
a message the bot was not asked about, not for a file that is too large.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import PurePosixPath

from conversation.images import ImageLimits, ImageRefused, fit_image
from conversation.inbound import Attachment
from conversation.pdfs import PdfRefused, read_pdf
from conversation.settings import AttachmentSettings
from memory.attachments import NewAttachment

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


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp"})
IMAGE_MIME_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/gif", "image/webp"})
DECODERS = 2  # images and PDFs opened at once: each may hold a few hundred MB briefly


def _base_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:,.1f} MB".replace(".0 MB", " MB")


def describe(attachment: NewAttachment) -> str:
    """How a kept file is named in its message's text: what summaries and exports see."""
    if attachment.kind == "pdf":
        pages = attachment.pages or 0
        return f"[PDF: {attachment.name}, {pages} page{'' if pages == 1 else 's'}]"
    return f"[image: {attachment.name}, {attachment.width}x{attachment.height}]"


def file_block(name: str, content: str) -> str:
    """A file as the model sees it inside the message: tagged with its name."""
    return f'<file name="{name}">\n{content.rstrip()}\n</file>'


@dataclass(frozen=True, slots=True)
class ReadFiles:
    """What came of a message's attachments: text blocks for the model, the images and
    PDFs to send and keep, and the names of what could not be read, each with its
    reason."""

    blocks: tuple[str, ...]
    refused: tuple[str, ...]
    media: tuple[NewAttachment, ...] = ()

    def text(self, caption: str) -> str:
        """The message's text: the caption, the text files, and a line naming each image
        and PDF."""
        named = "\n".join(describe(a) for a in self.media)
        return "\n\n".join(part for part in (caption, *self.blocks, named) if part.strip())


class AttachmentReader:
    def __init__(self, settings: AttachmentSettings) -> None:
        self.settings = settings
        self.text_files = TextFiles(settings.text_extensions)
        self.limits = ImageLimits(
            max_edge=settings.image_max_edge,
            max_megapixels=settings.image_max_megapixels,
            max_bytes=settings.image_max_bytes,
            max_pixels=settings.image_max_pixels,
        )
        self._decoding = asyncio.Semaphore(DECODERS)

    def kind_of(self, item: Attachment) -> str | None:
        """How ``item`` would be read: as "text", an "image" or a "pdf"; None: it is not."""
        if item.fetch is None:
            return None
        base = _base_type(item.content_type)
        suffix = PurePosixPath(item.name.lower()).suffix
        if item.kind == "file" and self.text_files.is_text(item.name, item.content_type):
            return "text"
        if self.settings.read_images and (
            item.kind == "photo"
            or (item.kind in ("file", "sticker") and base in IMAGE_MIME_TYPES)
            or (item.kind == "file" and not base.startswith("text/") and suffix in IMAGE_SUFFIXES)
        ):
            return "image"
        if (
            self.settings.read_pdfs
            and item.kind == "file"
            and (base == "application/pdf" or (suffix == ".pdf" and not base.startswith("image/")))
        ):
            return "pdf"
        return None

    async def read(self, attachments: Sequence[Attachment]) -> ReadFiles:
        blocks: list[str] = []
        refused: list[str] = []
        media: list[NewAttachment] = []
        room = self.settings.max_files_per_message
        for item in attachments:
            kind = self.kind_of(item)
            if kind is None:
                refused.append(item.name)
                continue
            if kind != "text":
                if room <= 0:
                    refused.append(
                        f"{item.name} (I read {self.settings.max_files_per_message} "
                        "files of a message at most)"
                    )
                    continue
                room -= 1
            try:
                if kind == "text":
                    blocks.append(await self._text(item))
                elif kind == "image":
                    media.append(await self._image(item))
                else:
                    media.append(await self._pdf(item))
            except _Skipped as skipped:
                refused.append(f"{item.name} ({skipped.reason})" if skipped.reason else item.name)
        return ReadFiles(tuple(blocks), tuple(refused), tuple(media))

    async def _download(self, item: Attachment, limit: int) -> bytes:
        if (item.size or 0) > limit:
            raise _Skipped(f"too large: {_megabytes(item.size or 0)}")
        assert item.fetch is not None
        try:
            data = await item.fetch()
        except Exception as error:  # the platform's download failed: say so, go on
            log.warning("downloading %s failed: %r", item.name, error)
            raise _Skipped("the download failed; please send it again") from None
        if len(data) > limit:
            raise _Skipped(f"too large: {_megabytes(len(data))}")
        return data

    async def _text(self, item: Attachment) -> str:
        limit = self.settings.max_text_bytes
        if (item.size or 0) > limit:
            raise _Skipped("too large")
        data = await self._download(item, limit)
        content = decode_text(data)
        if content is None:
            raise _Skipped("not UTF-8 text")
        return file_block(item.name, content)

    def _largest_fitting(self, item: Attachment) -> Attachment:
        """Of the sizes offered of an image, the largest within the download and pixel
        limits (sizes the platform does not state are tried, and checked once here)."""
        for size in (item, *item.smaller):
            if (size.size or 0) > self.settings.max_download_bytes:
                continue
            if size.width and size.height and size.width * size.height > self.limits.max_pixels:
                continue
            return size
        return item  # none fits: the download check names the reason

    async def _image(self, item: Attachment) -> NewAttachment:
        chosen = self._largest_fitting(item)
        data = await self._download(chosen, self.settings.max_download_bytes)
        async with self._decoding:
            try:
                fit = await asyncio.to_thread(fit_image, data, self.limits)
            except ImageRefused as refusal:
                raise _Skipped(refusal.reason) from None
        self._keepable(len(fit.data))
        return NewAttachment.of(
            _image_name(item, fit.media_type),
            "image",
            fit.media_type,
            fit.data,
            fit.tokens,
            width=fit.width,
            height=fit.height,
        )

    async def _pdf(self, item: Attachment) -> NewAttachment:
        settings = self.settings
        limit = min(settings.pdf_max_bytes, settings.max_download_bytes)
        if (item.size or 0) > limit:
            raise _Skipped(
                f"too large: {_megabytes(item.size or 0)}; I read PDFs up to {_megabytes(limit)}"
            )
        data = await self._download(item, limit)
        async with self._decoding:
            try:
                fit = await asyncio.to_thread(read_pdf, data, settings.pdf_max_pages)
            except PdfRefused as refusal:
                raise _Skipped(refusal.reason) from None
        self._keepable(len(fit.data))
        tokens = fit.pages * settings.pdf_tokens_per_page
        return NewAttachment.of(
            item.name, "pdf", "application/pdf", fit.data, tokens, pages=fit.pages
        )

    def _keepable(self, size: int) -> None:
        if size > self.settings.store_max_bytes:
            raise _Skipped(
                f"too large to keep: {_megabytes(size)}; I keep files up to "
                f"{_megabytes(self.settings.store_max_bytes)}"
            )

    def within_quota(self, read: ReadFiles, kept: int, kept_hashes: frozenset[str]) -> ReadFiles:
        """``read`` without the files that would take the chat's session past what it may
        keep (``session_max_bytes``, counting each distinct file once), those named as
        refused instead."""
        cap = self.settings.session_max_bytes
        media: list[NewAttachment] = []
        refused = list(read.refused)
        seen = set(kept_hashes)
        for item in read.media:
            if item.sha256 not in seen:
                if kept + item.size > cap:
                    refused.append(
                        f"{item.name} (this conversation already keeps {_megabytes(kept)} of "
                        f"files, and {_megabytes(cap)} is its limit: /reset starts a new one)"
                    )
                    continue
                kept += item.size
                seen.add(item.sha256)
            media.append(item)
        if len(media) == len(read.media):
            return read
        return replace(read, media=tuple(media), refused=tuple(refused))

    def refusal(self, refused: Sequence[str]) -> str:
        """The one note for what could not be read."""
        settings = self.settings
        limit = settings.max_text_bytes
        size = f"{limit / 1000:,.0f} KB" if limit >= 1000 else f"{limit} bytes"
        readable = [
            "messages, captions",
            f"text files (.txt, .md, .py, .json, .csv and other plain text, UTF-8, up to {size})",
        ]
        if settings.read_images:
            readable.append("images (JPEG, PNG, GIF, WebP)")
        if settings.read_pdfs:
            readable.append(
                f"PDFs (up to {settings.pdf_max_pages} pages and "
                f"{_megabytes(min(settings.pdf_max_bytes, settings.max_download_bytes))})"
            )
        other = (
            "Audio, video and other files"
            if settings.read_images
            else ("Images, audio, video and other files")
        )
        return (
            f"I skipped {', '.join(refused)}: I can read {', '.join(readable[:-1])} and "
            f"{readable[-1]}. {other} aren't supported: please describe them in words."
        )


class _Skipped(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _image_name(item: Attachment, media_type: str) -> str:
    """A name for an image: its file name, or for a photo or sticker, one by its kind."""
    if item.kind == "file":
        return item.name
    suffix = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif"}.get(
        media_type, ".webp"
    )
    return f"{item.kind}{suffix}"


def seen_as(attachments: Sequence[Attachment]) -> str:
    """How a message's files appear in a stored message the bot did not answer (they
    are not downloaded: named only)."""
    return " ".join(
        f"[{item.kind}: {item.name}]" if item.kind == "file" else f"[{item.kind}]"
        for item in attachments
    )
