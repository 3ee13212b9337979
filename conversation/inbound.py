"""What an interface hands the core: one platform event, translated.

An adapter fills these in from its platform's event and nothing more: who wrote,
where, what, and whether the bot was asked. Every decision about the message
(access, limits, commands, what to store, what to answer) is the core's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from conversation.access import Actor
from memory.types import ChatKey


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file or medium that came with a message.

    ``fetch`` downloads its bytes; it is called only once the core has decided the
    file is wanted (never for a stranger's message, never for a file too large).
    ``width`` and ``height`` are what the platform says of an image; ``smaller``
    are the other sizes it offers of the same image, largest first (Telegram's
    photo sizes), from which the core picks the largest that fits its limits.
    """

    name: str
    kind: str = "file"  # "file", or the platform's medium: "photo", "sticker", "voice", ...
    content_type: str | None = None
    size: int | None = None
    fetch: Callable[[], Awaitable[bytes]] | None = None
    width: int | None = None
    height: int | None = None
    smaller: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class Inbound:
    """One message (or structured command) from a chat."""

    key: ChatKey
    actor: Actor
    text: str
    message_id: str | None = None  # the platform's id: the same message is handled once
    private: bool = True  # a one-to-one chat with the bot (a DM, a private chat, the console)
    addressed: bool = True  # the bot was asked: a DM, a mention, a reply to the bot
    command: tuple[str, str] | None = None  # (name, argument) of a structured command
    attachments: tuple[Attachment, ...] = ()
    album: str | None = None  # messages sent together (a Telegram album): one notice for all
    reply_to: str | None = None  # the platform id of the message this one replies to
    edited: bool = False  # an edit of an earlier message
    needs_answer: bool = False  # the platform waits for an answer (a slash command)
