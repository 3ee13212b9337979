"""Telegram updates as the core's inbound messages: what is Telegram's about a message.

- **Chats.** A chat is ``ChatKey("telegram", <chat id>)``; a forum topic is a chat of
  its own, ``ChatKey("telegram", <chat id>, <message_thread_id>)``, answered in the
  topic. The General topic is the group's own chat.
- **Addressed.** In private chats every message; in groups a message that mentions
  the bot, replies to one of its messages, or is a command addressed to it
  (``/cmd@this_bot``), or every message with ``group_mode = "all"``. Other bots are
  ignored; a command addressed to another bot (``/cmd@other_bot``) is kept for the
  context, never answered. In a forum topic every message "replies" to the topic's
  first message: that is no reply.
- **Files.** Documents, photos and static stickers are attachments fetched through
  ``getFile`` (only when the core wants them); a photo offers each of its sizes,
  largest first, with their pixels, so that the core takes the largest that fits.
  Animated and video stickers, voice and the rest are named by kind. The caption is
  the text; an album's parts carry its ``media_group_id`` and the core gathers them.
- **Duplicates.** An update delivered twice is dropped here (by chat and message id);
  the core also stores each message once, across restarts.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import replace
from typing import TYPE_CHECKING

from telegram import CallbackQuery, Document, Message, MessageEntity, PhotoSize, Sticker, Update
from telegram.constants import ChatType

from bots.telegram_outbound import Target
from conversation.access import Actor
from conversation.inbound import Attachment, Inbound
from conversation.registry import parse_command
from memory.types import ChatKey

if TYPE_CHECKING:
    from bots.telegram_bot import TelegramBot

INTERFACE = "telegram"
_MEDIA_KINDS = (
    *("photo", "sticker", "voice", "video", "video_note", "audio", "animation"),
    *("location", "venue", "contact", "poll", "dice", "game", "story", "invoice", "paid_media"),
)


class _Recent:
    """The last ``size`` keys seen: an update delivered twice is handled once."""

    def __init__(self, size: int = 10_000) -> None:
        self._size = size
        self._keys: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable) -> bool:
        """True the first time ``key`` is seen."""
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
        return True


class UpdateReader:
    """Reads updates for one bot (its username and id say what addresses it)."""

    def __init__(self, bot: TelegramBot) -> None:
        self._owner = bot
        self._seen = _Recent()

    @property
    def username(self) -> str:
        return self._owner.username

    def press(self, query: CallbackQuery) -> tuple[ChatKey, Actor, str] | None:
        """A button press: in which chat, by whom, with which data."""
        message = query.message
        if query.data is None or not isinstance(message, Message):
            return None
        chat = message.chat
        private = chat.type == ChatType.PRIVATE
        thread = message.message_thread_id if message.is_topic_message else None
        user = query.from_user
        actor = Actor(INTERFACE, str(user.id), user.full_name, () if private else (str(chat.id),))
        return ChatKey(INTERFACE, str(chat.id), str(thread) if thread else None), actor, query.data

    def translate(self, update: Update) -> tuple[Inbound, Target] | None:
        """An update as the core's inbound message and where to answer it, or None for
        what the core never sees (other bots, repeats)."""
        edited = update.edited_message is not None
        message = update.message or update.edited_message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return None
        chat = message.chat
        if not self._seen.add((chat.id, message.message_id, message.edit_date if edited else 0)):
            return None
        private = chat.type == ChatType.PRIVATE
        user = message.from_user
        text = message.text or message.caption or ""
        text, targeted, foreign = self._strip_target(text)
        thread = message.message_thread_id if message.is_topic_message else None
        actor = Actor(INTERFACE, str(user.id), user.full_name, () if private else (str(chat.id),))
        replied = message.reply_to_message
        if replied is not None and self._topic_root(message):
            replied = None
        addressed = not foreign and (
            private
            or targeted
            or self._owner.settings.group_mode == "all"
            or self._mentions_me(message)
            or self._from_me(replied)
        )
        if not private:
            text = self._without_my_mention(text)
        inbound = Inbound(
            key=ChatKey(INTERFACE, str(chat.id), str(thread) if thread else None),
            actor=actor,
            text=text,
            message_id=str(message.message_id),
            private=private,
            addressed=addressed,
            attachments=self._attachments(message),
            album=message.media_group_id,
            reply_to=str(replied.message_id) if replied is not None else None,
            edited=edited,
        )
        target = Target(chat.id, thread, None if private else message.message_id, private, user.id)
        return inbound, target

    def _strip_target(self, text: str) -> tuple[str, bool, bool]:
        """``/cmd@bot args``: the text without ``@bot``, whether it names this bot, and
        whether it names another one."""
        if parse_command(text) is None:
            return text, False, False
        head, _, rest = text.strip().partition(" ")
        name, _, bot = head.partition("@")
        if not bot:
            return text, False, False
        if bot.lower() != self.username.lower():
            return text, False, True
        return f"{name} {rest}".strip(), True, False

    def _attachments(self, message: Message) -> tuple[Attachment, ...]:
        document = message.document
        if document is not None:
            return (
                Attachment(
                    document.file_name or "file",
                    "file",
                    document.mime_type,
                    document.file_size,
                    _fetcher(document),
                ),
            )
        if message.photo:
            sizes = sorted(message.photo, key=lambda p: p.width * p.height, reverse=True)
            offered = [_photo_size(size) for size in sizes]
            return (replace(offered[0], smaller=tuple(offered[1:])),)
        sticker = message.sticker
        if sticker is not None and not (sticker.is_animated or sticker.is_video):
            return (_static_sticker(sticker),)
        kind = next((k for k in _MEDIA_KINDS if getattr(message, k, None)), None)
        return () if kind is None else (Attachment(f"a {kind.replace('_', ' ')}", kind),)

    def _mentions_me(self, message: Message) -> bool:
        kinds: list[str | None] = [MessageEntity.MENTION, MessageEntity.TEXT_MENTION]
        found = {**message.parse_entities(kinds), **message.parse_caption_entities(kinds)}
        me = "@" + self.username.lower()
        for entity, value in found.items():
            if entity.type == MessageEntity.MENTION and value.lower() == me:
                return True
            if entity.user is not None and entity.user.id == self._owner.bot.id:
                return True
        return False

    @staticmethod
    def _topic_root(message: Message) -> bool:
        """In forum topics every message "replies" to the topic's first message."""
        reply = message.reply_to_message
        return bool(
            message.is_topic_message
            and reply is not None
            and reply.message_id == message.message_thread_id
        )

    def _from_me(self, message: Message | None) -> bool:
        sender = message.from_user if message is not None else None
        return sender is not None and sender.id == self._owner.bot.id

    def _without_my_mention(self, text: str) -> str:
        stripped = re.sub(rf"@{re.escape(self.username)}\b", "", text, flags=re.IGNORECASE)
        return re.sub(r"[ \t]{2,}", " ", stripped).strip()


def _fetcher(medium: Document | PhotoSize | Sticker) -> Callable[[], Awaitable[bytes]]:
    async def fetch() -> bytes:
        telegram_file = await medium.get_file()
        return bytes(await telegram_file.download_as_bytearray())

    return fetch


def _photo_size(size: PhotoSize) -> Attachment:
    return Attachment(
        "a photo",
        "photo",
        "image/jpeg",  # Telegram re-encodes every photo as JPEG
        size.file_size,
        _fetcher(size),
        width=size.width,
        height=size.height,
    )


def _static_sticker(sticker: Sticker) -> Attachment:
    """A static sticker is a WebP image (an animated one is TGS, a video one WebM)."""
    return Attachment(
        f"a sticker {sticker.emoji}" if sticker.emoji else "a sticker",
        "sticker",
        "image/webp",
        sticker.file_size,
        _fetcher(sticker),
        width=sticker.width,
        height=sticker.height,
    )
