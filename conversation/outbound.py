"""The outbound port: how the core's answers reach a chat. Each interface implements it.

One small contract, in the spirit of httpx's transports: the core says *what* goes out
(a text, a file, a reply that grows while the model writes it, an answer for the
asker alone) and an interface decides *how* on its platform (formatting, splitting
at its length limit, flood control, retries, typing indicators). A port belongs to
one inbound message: it answers in that chat, replying to that message where the
platform shows replies.

Failures a port reports, so that the core can keep a reply instead of losing it:

- ``RetryLater``: the platform asked to wait (a 429 beyond what the port waits out
  itself); the text was not shown, or not all of it.
- ``Unreachable``: the chat cannot be written to (the bot was blocked or removed, the
  user's DMs are closed). Retrying will not help until the user writes again.
- ``Rejected``: the platform refused this message for good (a 400 Bad Request other
  than a formatting error the port falls back from). Retrying the same text will not
  help.
- ``Transient``: a fault that may pass (the platform out of reach, a 5xx, a timeout).

A text goes out in parts (the platform's length limit). Every ``DeliveryError``
carries ``sent_parts``: how many of the text's parts the chat has all the same, so
that a later attempt passes ``skip=sent_parts`` and the chat gets each part once.
A port splits the same text the same way every time, so the count stays true across
attempts and restarts. Any other exception is treated as transient, none shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from memory.types import ChatKey


class DeliveryError(Exception):
    """A port could not deliver; see the subclasses. ``sent_parts``: how many parts of
    the text were shown before the failure (counted from the text's first part)."""

    sent_parts: int = 0

    def shown(self, parts: int) -> DeliveryError:
        """This error, saying that ``parts`` parts were shown; for ``raise``."""
        self.sent_parts = parts
        return self


class RetryLater(DeliveryError):
    def __init__(self, retry_after: float) -> None:
        super().__init__(f"retry after {retry_after:.0f} s")
        self.retry_after = retry_after


class Unreachable(DeliveryError):
    """The chat cannot be written to until its user writes again."""


class Rejected(DeliveryError):
    """The platform refused this message for good: sending it again will not help."""


class Transient(DeliveryError):
    """A fault that may pass (the platform out of reach); the cause is chained."""


@dataclass(frozen=True, slots=True)
class OutboundFile:
    """A file to upload; it stays on disk until the core deletes it after sending."""

    name: str
    path: Path
    mime_type: str

    @property
    def size(self) -> int:
        return self.path.stat().st_size


class ReplyStream(Protocol):
    """A reply while the model writes it. "typing..." shows from the moment the stream
    is opened until text appears; ``update`` is best effort (throttled, skipped under
    flood control, never raises); ``finish`` shows the final text for good, in the parts
    ``Outbound.send(text, markdown=True)`` would send, and raises the port's delivery
    errors (their ``sent_parts`` counting those parts); ``close`` ends the stream,
    removing any preview when ``finish`` never succeeded."""

    async def update(self, text: str) -> None: ...

    async def finish(self, text: str) -> None: ...

    async def close(self) -> None: ...


class Outbound(Protocol):
    """Where the answers to one inbound message go."""

    @property
    def upload_limit(self) -> int:
        """The largest file, in bytes, this platform accepts from a bot."""
        ...

    async def send(self, text: str, *, markdown: bool = False, skip: int = 0) -> None:
        """Send ``text`` (Claude's Markdown when ``markdown``, else plain), in as many
        messages as the platform's limit needs, leaving out the first ``skip`` of them
        (those an earlier attempt showed: its ``DeliveryError.sent_parts``)."""
        ...

    async def send_file(self, file: OutboundFile, caption: str) -> None: ...

    def stream(self) -> ReplyStream:
        """Open a reply that will grow; "typing..." shows at once."""
        ...

    async def offer(self, text: str, choices: Sequence[tuple[str, str]]) -> None:
        """Send ``text`` with a button per choice, (label, data). A press comes back to
        the core as ``Dispatcher.choose(key, actor, data)``; the interface shows the
        text it returns (and may take the buttons away)."""
        ...

    def private(self) -> Outbound | None:
        """A port that only the asker sees (a DM, an ephemeral reply), or None if this
        one already is. Delivery through it may raise ``Unreachable``."""
        ...

    def private_hint(self, command: str) -> str:
        """How the asker can get an answer only they see, when ``private`` failed."""
        ...


class Interface(Protocol):
    """A platform Palaver serves, to the application: it starts and stops, and can
    reach a chat again by its key (to deliver a reply kept over a restart)."""

    name: str

    async def start(self) -> None:
        """Connect and begin receiving; raise PalaverError (e.g. a bad token) to abort."""
        ...

    async def stop_receiving(self) -> None:
        """Take no more events from the platform (shutdown's first step; the core
        then lets the turns in flight finish)."""
        ...

    async def stop(self) -> None:
        """Close the platform connection (shutdown's last step)."""
        ...

    def outbound(self, key: ChatKey, reply_to: str | None) -> Outbound:
        """A port to the chat ``key``, replying to ``reply_to`` where it still exists."""
        ...

    def is_private(self, key: ChatKey) -> bool:
        """Whether ``key`` is a one-to-one chat with the bot."""
        ...
