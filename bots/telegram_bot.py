"""The Telegram interface: python-telegram-bot v22 in front of the conversation core.

It translates, and decides nothing about a conversation: each update becomes an
``Inbound`` for the dispatcher (conversation.dispatcher), and replies go out through
``TelegramPort`` (bots.telegram_outbound; streaming in bots.telegram_stream, flood
control in bots.telegram_flood, Markdown in bots.telegram_format, HTTP in
bots.telegram_http).

What is Telegram's about a message is read in bots.telegram_updates; here:

- **Lifecycle.** The Application runs inside the one event loop run.py owns:
  ``initialize`` (getMe: a rejected token is a PalaverError at start), ``start``,
  ``updater.start_polling``; never ``run_polling``, which would take the loop over.
  If the Bot API cannot be reached at start, it is retried in the background while
  the other interfaces run. Shutdown stops polling first (``stop_receiving``); once
  the core has let the turns in flight finish, ``stop`` stops the Application.
- **HTTP.** Bot API calls go through aiohttp (bots.telegram_http), not PTB's httpx
  transport, which costs several times the CPU per call; ``http_client = "httpx"``
  switches back.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import itertools
import logging
from typing import Any

import aiohttp
from telegram import BotCommand, BotCommandScopeChat, CallbackQuery, Message, Update
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
from bots.telegram_updates import INTERFACE, UpdateReader
from conversation.dispatcher import Dispatcher
from conversation.outbound import Outbound
from memory.errors import PalaverError
from memory.types import ChatKey

log = logging.getLogger(__name__)

TelegramApp = Application[ExtBot[RateLimitArgs], Any, Any, Any, Any, Any]

# The core's lanes order each chat's updates; PTB only has to hand them over at once.
_UNBOUNDED_UPDATES = 2**31 - 1
_RETRY_MAX_S = 60.0


def build_application(
    settings: TelegramSettings, token: str, trace: aiohttp.TraceConfig | None = None
) -> TelegramApp:
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
        builder = builder.request(AiohttpRequest(settings.connection_pool_size, trace=trace))
        builder = builder.get_updates_request(AiohttpRequest(1, trace=trace))
    else:
        builder = (
            builder.connection_pool_size(settings.connection_pool_size)
            .pool_timeout(30.0)
            .http_version(settings.http_version)
        )
    return builder.job_queue(None).build()


class TelegramBot:
    """The Telegram interface (see the module docstring)."""

    name = INTERFACE

    def __init__(
        self,
        settings: TelegramSettings,
        token: str,
        dispatcher: Dispatcher,
        *,
        trace: aiohttp.TraceConfig | None = None,  # counts the Bot API's errors (metrics)
    ) -> None:
        self.settings = settings
        self.dispatcher = dispatcher
        self.application = build_application(settings, token, trace)
        self.application.add_handler(TypeHandler(Update, self._on_update))
        self.application.add_error_handler(self._on_error)
        self.drafts = settings.use_drafts
        self.draft_ids = itertools.count(1)
        self.updates = UpdateReader(self)
        self._starting: asyncio.Task[None] | None = None
        self._initialized = False
        self._running = False

    @property
    def connected(self) -> bool:
        """Polling the Bot API (readiness)."""
        updater = self.application.updater
        return self._running and updater is not None and updater.running

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
                allowed_updates=[Update.MESSAGE, Update.EDITED_MESSAGE, Update.CALLBACK_QUERY],
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
        if update.callback_query is not None:
            await self._on_press(update.callback_query)
            return
        translated = self.updates.translate(update)
        if translated is not None:
            inbound, target = translated
            await self.dispatcher.handle(inbound, TelegramPort(self, target))

    async def _on_press(self, query: CallbackQuery) -> None:
        """A button of the core's ``offer``: answered at once, outside the chat's lane."""
        pressed = self.updates.press(query)
        if pressed is None:
            await query.answer()
            return
        key, actor, data = pressed
        said = self.dispatcher.choose(key, actor, data)
        try:
            await query.answer(said[:200])
            message = query.message
            if isinstance(message, Message) and message.text and not said.startswith("Only"):
                await query.edit_message_text(f"{message.text}\n\n{said}")
        except TelegramError as error:
            log.info("telegram: could not show the answer to a button: %s", error)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        update_id = update.update_id if isinstance(update, Update) else update
        log.error("telegram: error handling update %s", update_id, exc_info=context.error)
