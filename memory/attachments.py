"""Files kept with their message: images and PDFs, as memory stores and counts them.

A file's bytes are kept once per content (a blob keyed by its SHA-256), and each
message that carried it links to the blob with what the file was (name, kind, size,
pixels, pages) and what it costs the model in tokens. That cost is counted in the
message's own token count, so the budget and the summary trigger hold with files in
the history. In the session cache a message with files is a 5-tuple whose last
element is its ``MediaRef`` tuple (see memory.context); a text-only message stays
the 4-tuple it always was.

memory/ knows nothing of platforms or models here either: what a file is worth in
tokens, and whether it is fit to send, the core decided before handing it in.
"""

from __future__ import annotations

import base64
import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from memory.context import MediaRef

KINDS = frozenset({"image", "pdf"})


@dataclass(frozen=True, slots=True)
class NewAttachment:
    """A file on its way in with its message, ready to send as it is."""

    name: str
    kind: str  # "image" or "pdf"
    media_type: str
    data: bytes
    tokens: int  # what the model is estimated to count for it
    sha256: str
    width: int | None = None
    height: int | None = None
    pages: int | None = None

    @classmethod
    def of(
        cls,
        name: str,
        kind: str,
        media_type: str,
        data: bytes,
        tokens: int,
        *,
        width: int | None = None,
        height: int | None = None,
        pages: int | None = None,
    ) -> NewAttachment:
        """The attachment of ``data``, its content hash computed once here."""
        return cls(
            name,
            kind,
            media_type,
            data,
            tokens,
            hashlib.sha256(data).hexdigest(),
            width,
            height,
            pages,
        )

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def ref(self) -> MediaRef:
        return (self.sha256, self.media_type, self.tokens, len(self.data), self.pages or 0)


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """A file as stored with a message (the bytes are read apart, by ``sha256``)."""

    seq: int
    position: int
    name: str
    kind: str
    media_type: str
    sha256: str
    size: int
    tokens: int
    width: int | None
    height: int | None
    pages: int | None

    @property
    def ref(self) -> MediaRef:
        return (self.sha256, self.media_type, self.tokens, self.size, self.pages or 0)


class EncodedMedia:
    """The base64 form of recently sent files, by content hash, bounded in bytes.

    A file in the unsummarized tail goes to the model with every turn; encoding it
    (and reading it from the database) once per turn would cost more than the turn.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._bytes = 0

    def get(self, sha256: str) -> str | None:
        found = self._entries.get(sha256)
        if found is not None:
            self._entries.move_to_end(sha256)
        return found

    def put(self, sha256: str, encoded: str) -> None:
        if len(encoded) > self.max_bytes or sha256 in self._entries:
            return
        self._entries[sha256] = encoded
        self._bytes += len(encoded)
        while self._bytes > self.max_bytes:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= len(dropped)

    def discard(self, hashes: Iterable[str]) -> None:
        for sha256 in hashes:
            dropped = self._entries.pop(sha256, None)
            if dropped is not None:
                self._bytes -= len(dropped)


def encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
