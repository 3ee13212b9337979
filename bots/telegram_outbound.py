"""The outbound port on Telegram: where a reply goes and how it is sent.

Claude's Markdown goes out as Telegram HTML (``telegram_format``), split at 4,096
UTF-16 units between paragraphs (``chunking``); a part Telegram rejects goes as
plain text. In groups the first part replies to the question, and every part goes to
the question's forum topic. Telegram's answers map onto the port's failures: a flood
wait longer than the flood control waits out is ``RetryLater``; a blocked bot, a
chat the bot was removed from, or a private chat never started is ``Unreachable``;
any other 400 Bad Request is ``Rejected`` (sending it again would be refused again);
Telegram out of reach (network errors, 5xx, timeouts) is ``Transient``. Each says how
many parts of the text were shown before it (``sent_parts``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters
from telegram.constants import ParseMode
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from bots.chunking import TELEGRAM_LIMIT, split_markdown, utf16_len
from bots.telegram_flood import retry_seconds
from bots.telegram_format import markdown_to_html
from conversation.outbound import (
    DeliveryError,
    Outbound,
    OutboundFile,
    Rejected,
    ReplyStream,
    RetryLater,
    Transient,
    Unreachable,
)

if TYPE_CHECKING:
    from bots.telegram_bot import TelegramBot

log = logging.getLogger(__name__)

UPLOAD_LIMIT = 50 * 1000 * 1000  # what the Bot API accepts from a bot
CAPTION_LIMIT = 1024
_UNREACHABLE = ("chat not found", "bot was blocked", "user is deactivated", "not enough rights")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a reply goes: the chat, its forum topic, and the message it answers."""

    chat_id: int
    thread_id: int | None
    reply_to: int | None
    private: bool
    user_id: int | None = None  # the asker, whose private chat takes answers for them alone

    def reply_parameters(self) -> ReplyParameters | None:
        if self.reply_to is None:
            return None
        return ReplyParameters(self.reply_to, allow_sending_without_reply=True)


def delivery_error(error: TelegramError) -> DeliveryError:
    """Telegram's refusal as the port's failure (see the module docstring)."""
    if isinstance(error, RetryAfter):
        return RetryLater(retry_seconds(error))
    if isinstance(error, Forbidden):
        return Unreachable(str(error))
    if isinstance(error, BadRequest):
        if any(reason in str(error).lower() for reason in _UNREACHABLE):
            return Unreachable(str(error))
        return Rejected(str(error))
    return Transient(repr(error))


@contextlib.asynccontextmanager
async def delivery_errors() -> AsyncIterator[None]:
    """Waits and unreachable chats as the port's failures (files, offers: any other
    refusal goes up as it is, for the caller to say the upload failed)."""
    try:
        yield
    except (RetryAfter, Forbidden, BadRequest) as error:
        failure = delivery_error(error)
        if isinstance(failure, Rejected):
            raise
        raise failure from error


class TelegramPort:
    """The port to one Telegram chat (see conversation.outbound.Outbound)."""

    upload_limit = UPLOAD_LIMIT

    def __init__(self, bot: TelegramBot, target: Target) -> None:
        self.owner = bot
        self.target = target

    async def send(self, text: str, *, markdown: bool = False, skip: int = 0) -> None:
        chunks = split_markdown(text, TELEGRAM_LIMIT, utf16_len)
        for index in range(skip, len(chunks)):
            try:
                await self._send_part(chunks[index], markdown, first=index == 0)
            except TelegramError as error:
                raise delivery_error(error).shown(index) from error

    async def _send_part(self, chunk: str, markdown: bool, *, first: bool) -> None:
        target = self.target
        bot = self.owner.bot
        reply = target.reply_parameters() if first else None
        if markdown:
            try:
                await bot.send_message(
                    target.chat_id,
                    markdown_to_html(chunk),
                    parse_mode=ParseMode.HTML,
                    message_thread_id=target.thread_id,
                    reply_parameters=reply,
                )
                return
            except BadRequest as error:
                if "parse entities" not in str(error).lower():
                    raise
                log.info("telegram: formatting rejected (%s); sending plain text", error)
        await bot.send_message(
            target.chat_id,
            chunk,
            message_thread_id=target.thread_id,
            reply_parameters=reply,
        )

    async def send_file(self, file: OutboundFile, caption: str) -> None:
        target = self.target
        with file.path.open("rb") as data:
            async with delivery_errors():
                await self.owner.bot.send_document(
                    target.chat_id,
                    data,
                    filename=file.name,
                    caption=caption[:CAPTION_LIMIT] or None,
                    message_thread_id=target.thread_id,
                    reply_parameters=target.reply_parameters(),
                )
        if len(caption) > CAPTION_LIMIT:
            await self.send(caption)

    async def offer(self, text: str, choices: Sequence[tuple[str, str]]) -> None:
        """Inline keyboard buttons; a press arrives as a callback query."""
        keyboard = InlineKeyboardMarkup(
            [[InlineKeyboardButton(label, callback_data=data) for label, data in choices]]
        )
        target = self.target
        async with delivery_errors():
            await self.owner.bot.send_message(
                target.chat_id,
                text,
                message_thread_id=target.thread_id,
                reply_parameters=target.reply_parameters(),
                reply_markup=keyboard,
            )

    def stream(self) -> ReplyStream:
        from bots.telegram_stream import TelegramStream

        settings = self.owner.settings
        if not settings.stream_replies:
            return TelegramStream(self, preview=None)
        draft = self.target.private and self.owner.drafts
        interval = settings.draft_interval_s if draft else settings.edit_interval_s
        return TelegramStream(self, preview=(draft, interval))

    def private(self) -> Outbound | None:
        """The asker's private chat, which Telegram allows only once they started one."""
        user = self.target.user_id
        if self.target.private or user is None:
            return None
        return TelegramPort(self.owner, Target(user, None, None, True, user))

    def private_hint(self, command: str) -> str:
        return (
            f"That answer is only for you: open a private chat with @{self.owner.username}, "
            f"press Start, and send /{command} there."
        )
