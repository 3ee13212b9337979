"""What memory tells whoever watches it: a message stored, a summary written, a
session's state changed.

Plain frozen values handed to plain callbacks, so that memory knows nothing of who
listens (the live events of the operator surface, metrics). A callback runs on the
event loop inside the write path: it must only take note (put the event on a
bounded queue, bump a counter) and return. It never slows or fails a write: its
exceptions are logged and swallowed. With nobody watching, nothing is built at all:
the emitting code checks ``if observers:`` first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from memory.types import StoredMessage, SummaryRecord

log = logging.getLogger(__name__)


class Change(StrEnum):
    """How a session's state changed."""

    CREATED = "created"  # a chat's first session, or one after the last expired
    RESET = "reset"  # a new session started by /reset (the old one is ``ended``)
    ENDED = "ended"  # closed by /reset or by the operator; kept until cleanup
    IDLE = "idle"
    FINALIZED = "finalized"  # idle, and its closing summary is written
    EXPIRED = "expired"
    DELETED = "deleted"
    IMPORTED = "imported"  # restored from an export


@dataclass(frozen=True, slots=True)
class MessageStored:
    """A message committed to a session (never a duplicate). Treat it as read-only:
    it is the very value the writer handed back to the turn."""

    message: StoredMessage


@dataclass(frozen=True, slots=True)
class SummaryWritten:
    summary: SummaryRecord
    merged: bool = False  # a merge of stacked summaries (level 2+)
    upgraded: bool = False  # an extractive summary rewritten by the model summarizer


@dataclass(frozen=True, slots=True)
class SessionChanged:
    session_id: int
    change: Change
    at: datetime
    chat_ref: str | None = None


MemoryEvent = MessageStored | SummaryWritten | SessionChanged
Observer = Callable[[MemoryEvent], None]


class Observers:
    """The callbacks watching one SessionManager."""

    __slots__ = ("_callbacks",)

    def __init__(self) -> None:
        self._callbacks: tuple[Observer, ...] = ()

    def add(self, callback: Observer) -> Callable[[], None]:
        """Watch from now on; returns the function that stops watching."""
        self._callbacks = (*self._callbacks, callback)

        def remove() -> None:
            self._callbacks = tuple(c for c in self._callbacks if c is not callback)

        return remove

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def emit(self, event: MemoryEvent) -> None:
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("a memory observer failed on %s", type(event).__name__)

    def changed(
        self, session_ids: list[int], change: Change, at: datetime, chat_ref: str | None = None
    ) -> None:
        """Several sessions moved to the same state."""
        if self._callbacks:
            for session_id in session_ids:
                self.emit(SessionChanged(session_id, change, at, chat_ref))
