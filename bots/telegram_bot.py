"""The Telegram interface: python-telegram-bot v22 in front of the conversation core.

It translates, and decides nothing about a conversation: each update becomes an
``Inbound`` for the dispatcher (conversation.dispatcher), and replies go out through
``TelegramPort`` (bots.telegram_outbound; streaming in bots.telegram_stream, flood
control in bots.telegram_flood, Markdown in bots.telegram_format, HTTP in
bots.telegram_http).

What is Telegram's, and so decided here:

- **Chats.** A chat is ``ChatKey("telegram", <chat id>)``; a forum topic is a chat of
  its own, ``ChatKey("telegram", <chat id>, <message_thread_id>)``, answered in the
  topic. The General topic is the group's own chat.
- **Addressed.** In private chats every message; in groups a message that mentions
  the bot, replies to one of its messages, or is a command addressed to it
  (``/cmd@this_bot``), or every message with ``group_mode = "all"``. Other bots are
  ignored, and so are commands addressed to another bot (``/cmd@other_bot``). In a
  forum topic every message "replies" to the topic's first message: that is no reply.
- **Files.** Documents are attachments fetched through ``getFile`` (only when the
  core wants them); photos, stickers, voice and the rest are named by kind; the
  caption is the text; an album's parts share one notice.
- **Duplicates.** An update delivered twice is dropped here (by chat and message id);
  the core also stores each message once, across restarts.
- **Lifecycle.** The Application runs inside the one event loop run.py owns:
  ``initialize`` (getMe: a rejected token is a PalaverError at start), ``start``,
  ``updater.start_polling``; never ``run_polling``, which would take the loop over.
  If the Bot API cannot be reached at start, it is retried in the background while
  the other interfaces run. Shutdown stops polling first (``stop_receiving``); once
  the core has let the turns in flight finish, ``close`` stops the Application.
- **HTTP.** Bot API calls go through aiohttp (bots.telegram_http), not PTB's httpx
  transport, which costs several times the CPU per call; ``http_client = "httpx"``
  switches back.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import itertools
import logging
import re
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from telegram import BotCommand, BotCommandScopeChat, Message, MessageEntity, Update
from telegram.constants import ChatType
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    ContextTypes,
    ExtBot,
    SimpleUpdateProcessor,
    TypeHandler,
)

from bots.config import TelegramSettings
from bots.telegram_flood import FloodControl, RateLimitArgs
from bots.telegram_http import AiohttpRequest
from bots.telegram_outbound import Target, TelegramPort
from conversation.access import Actor
from conversation.dispatcher import Dispatcher
from conversation.inbound import Attachment, Inbound
from conversation.outbound import Outbound
from conversation.registry import parse_command
from memory.errors import PalaverError
from memory.types import ChatKey

log = logging.getLogger(__name__)

INTERFACE = "telegram"
TelegramApp = Application[ExtBot[RateLimitArgs], Any, Any, Any, Any, Any]

_MEDIA_KINDS = (
    *("photo", "sticker", "voice", "video", "video_note", "audio", "animation"),
    *("location", "venue", "contact", "poll", "dice", "game", "story", "invoice", "paid_media"),
)
# The core's lanes order each chat's updates; PTB only has to hand them over at once.
_UNBOUNDED_UPDATES = 2**31 - 1
_RETRY_MAX_S = 60.0


def build_application(settings: TelegramSettings, token: str) -> TelegramApp:
    """The PTB Application, not yet initialized (no network until ``start``)."""
    # Bot API URLs carry the token, and httpx logs every request URL at INFO.
    httpx_log = logging.getLogger("httpx")
    if httpx_log.getEffectiveLevel() < logging.WARNING:
        httpx_log.setLevel(logging.WARNING)
    builder = (
        ApplicationBuilder()
        .token(token)
        .base_url(settings.base_url)
        .base_file_url(settings.base_file_url)
        .concurrent_updates(SimpleUpdateProcessor(_UNBOUNDED_UPDATES))
        .rate_limiter(FloodControl(settings.flood_max_retries, settings.flood_max_wait_s))
    )
    if settings.http_client == "aiohttp":
        builder = builder.request(AiohttpRequest(settings.connection_pool_size))
        builder = builder.get_updates_request(AiohttpRequest(1))
    else:
        builder = (
            builder.connection_pool_size(settings.connection_pool_size)
            .pool_timeout(30.0)
            .http_version(settings.http_version)
        )
    return builder.job_queue(None).build()


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


class TelegramBot:
    """The Telegram interface (see the module docstring)."""

    name = INTERFACE

    def __init__(self, settings: TelegramSettings, token: str, dispatcher: Dispatcher) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.application = build_application(settings, token)
        self.application.add_handler(TypeHandler(Update, self._on_update))
        self.application.add_error_handler(self._on_error)
        self.drafts = settings.use_drafts
        self.draft_ids = itertools.count(1)
        self._seen = _Recent()
        self._starting: asyncio.Task[None] | None = None
        self._initialized = False
        self._running = False

    @property
    def bot(self) -> ExtBot[RateLimitArgs]:
        return self.application.bot

    @property
    def username(self) -> str:
        return self.bot.username

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the token (getMe), register the commands, start polling.

        A rejected token is an error now; a Bot API out of reach is retried in the
        background, so that it never holds up the other interfaces.
        """
        try:
            await self.application.initialize()
            self._initialized = True
        except InvalidToken:
            await self.application.bot.shutdown()
            raise PalaverError(
                "Telegram rejected the bot token (TELEGRAM_BOT_TOKEN): check it with "
                "@BotFather; it looks like 123456:ABC-DEF..."
            ) from None
        except TelegramError as error:
            log.warning(
                "telegram: cannot reach the Bot API at %s (%s); retrying in the background",
                self.settings.base_url,
                error,
            )
            self._starting = asyncio.create_task(self._start_later(), name="telegram-start")
            return
        await self._poll()

    async def _start_later(self) -> None:
        delay = 1.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.application.initialize()
                self._initialized = True
            except InvalidToken:
                log.error("telegram: the Bot API rejected TELEGRAM_BOT_TOKEN; Telegram stays off")
                return
            except TelegramError as error:
                delay = min(delay * 2, _RETRY_MAX_S)
                log.warning("telegram: still unreachable (%s); retrying in %.0f s", error, delay)
                continue
            await self._poll()
            return

    async def _poll(self) -> None:
        app = self.application
        try:
            await self._register_commands()
            await app.start()
            assert app.updater is not None
            await app.updater.start_polling(
                poll_interval=0.0,
                timeout=dtm.timedelta(seconds=self.settings.poll_timeout_s),
                allowed_updates=[Update.MESSAGE, Update.EDITED_MESSAGE],
            )
        except BaseException:
            if app.running:
                await app.stop()
            await app.shutdown()
            raise
        self._running = True
        log.info("telegram: polling as @%s", self.username)

    async def stop_receiving(self) -> None:
        """Fetch no more updates (those fetched are still handed to the core)."""
        if self._starting is not None:
            self._starting.cancel()
        updater = self.application.updater
        if self._running and updater is not None and updater.running:
            try:
                await updater.stop()
            except TelegramError as error:
                log.warning("telegram: stopping the poller: %s", error)

    async def stop(self) -> None:
        """Close: the Application stops (after the updates it holds) and shuts down."""
        await self.stop_receiving()
        if self._starting is not None:
            await asyncio.gather(self._starting, return_exceptions=True)
        app = self.application
        if self._running:
            self._running = False
            await app.stop()
        if self._initialized:
            await app.shutdown()
        log.info("telegram: stopped")

    def outbound(self, key: ChatKey, reply_to: str | None) -> Outbound:
        thread = int(key.thread_id) if key.thread_id else None
        private = self.is_private(key)
        reply = int(reply_to) if reply_to and reply_to.isdigit() and not private else None
        return TelegramPort(self, Target(int(key.chat_id), thread, reply, private))

    def is_private(self, key: ChatKey) -> bool:
        # Users' private chats have positive ids; groups and channels negative ones.
        return int(key.chat_id) > 0

    async def _register_commands(self) -> None:
        """The command menu from the core's registry; admin commands only in the
        admins' private chats."""
        everyone: list[BotCommand] = []
        admins: list[BotCommand] = []
        for command in self.dispatcher.registry:
            entries = [BotCommand(command.name, command.description[:256])]
            entries += [BotCommand(alias, f"Same as /{command.name}") for alias in command.aliases]
            (admins if command.admin_only else everyone).extend(entries)
        try:
            await self.bot.set_my_commands(everyone)
        except TelegramError as error:
            log.warning("telegram: could not register the command menu: %s", error)
            return
        for admin in self.dispatcher.access.admin_ids(INTERFACE):
            try:
                await self.bot.set_my_commands(
                    everyone + admins, scope=BotCommandScopeChat(int(admin))
                )
            except (TelegramError, ValueError) as error:
                log.info("telegram: no admin command menu for %s: %s", admin, error)

    # -- updates --------------------------------------------------------------------------------

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        translated = self.translate(update)
        if translated is not None:
            await self.dispatcher.handle(*translated)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        update_id = update.update_id if isinstance(update, Update) else update
        log.error("telegram: error handling update %s", update_id, exc_info=context.error)

    def translate(self, update: Update) -> tuple[Inbound, TelegramPort] | None:
        """An update as the core's inbound message and the port to answer it, or None
        for what the core never sees (other bots, repeats). A command addressed to
        another bot is passed on unaddressed: kept for the context, never answered."""
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
            or self.settings.group_mode == "all"
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
        return inbound, TelegramPort(self, target)

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

            async def fetch() -> bytes:
                telegram_file = await document.get_file()
                return bytes(await telegram_file.download_as_bytearray())

            return (
                Attachment(
                    document.file_name or "file",
                    "file",
                    document.mime_type,
                    document.file_size,
                    fetch,
                ),
            )
        kind = next((k for k in _MEDIA_KINDS if getattr(message, k, None)), None)
        return () if kind is None else (Attachment(f"a {kind.replace('_', ' ')}", kind),)

    def _mentions_me(self, message: Message) -> bool:
        kinds: list[str | None] = [MessageEntity.MENTION, MessageEntity.TEXT_MENTION]
        found = {**message.parse_entities(kinds), **message.parse_caption_entities(kinds)}
        me = "@" + self.username.lower()
        for entity, value in found.items():
            if entity.type == MessageEntity.MENTION and value.lower() == me:
                return True
            if entity.user is not None and entity.user.id == self.bot.id:
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
        return sender is not None and sender.id == self.bot.id

    def _without_my_mention(self, text: str) -> str:
        stripped = re.sub(rf"@{re.escape(self.username)}\b", "", text, flags=re.IGNORECASE)
        return re.sub(r"[ \t]{2,}", " ", stripped).strip()
