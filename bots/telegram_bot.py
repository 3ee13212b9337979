"""The Telegram interface: python-telegram-bot v22 in front of the shared turn.

A thin adapter: it turns updates into ``Incoming`` messages and command calls, and turns
``TurnResult``s and ``CommandReply``s into Telegram messages. Memory, access rules, rate
limits and commands live in the turn and the shared command set; nothing here stores or
decides anything about a conversation.

The Application is built with the rest of the app (``Palaver.build_interfaces``) and
started inside the one event loop run.py owns: ``initialize`` (getMe: a bad token fails
here, as a PalaverError), ``start``, ``updater.start_polling``; never ``run_polling``,
which would take the loop over.

Behaviour, where the issue left the choice to us:

- **Order and concurrency.** Different chats (and forum topics) are handled concurrently;
  the updates of one chat are handled one at a time, in the order Telegram sent them
  (``ChatLanes``), so two quick messages are stored and answered in the order they were
  written. The session lock in the turn serializes a session across chats as well.
- **Duplicates.** An update seen twice (a re-delivery) is handled once: the turn stores a
  message idempotently on (chat, message_id), which survives restarts; commands and
  notices are de-duplicated in process by (chat, message_id).
- **Private chats.** Every text message, caption or text file is a turn.
- **Groups.** With ``group_mode = "mention"`` (the default) a message is a turn when it
  mentions the bot, replies to one of its messages, or is one of its commands; every other
  message from an allowed member is stored with its author (``Turn.observe``), so the
  model sees who said what when it is asked. ``"all"`` answers every message. Messages
  from other bots are ignored, and so are commands addressed to another bot
  (``/cmd@otherbot``).
- **Forum topics.** Each topic is its own session (the thread id is part of the chat key),
  and replies go to the same topic. The General topic is the group's own session.
- **Replies.** "typing" is shown until text appears. In private chats the reply streams as
  a draft (sendMessageDraft); in groups (or where drafts are refused) as one message that
  is edited at most every ``edit_interval_s`` and deleted once the final text is sent.
  The final text always arrives as normal messages (which notify), rendered from Markdown
  to Telegram HTML and split at 4,096 characters between paragraphs; if Telegram rejects
  the HTML, that part is sent as plain text. In groups the answer replies to the question.
- **Other input.** Text files (by extension or a text/* MIME type, up to
  ``max_document_bytes``) are read into the message, after the caption. Photos,
  stickers, voice, video and the rest get one short reply saying what is supported (one
  per album); in groups only when addressed to the bot, and their captions are stored
  for context otherwise.
- **Edited messages** are neither re-answered nor re-stored: the memory keeps what was
  answered. In a private chat the user is told so, at most once an hour; in groups edits
  are ignored silently.
- **Strangers** get one reply with their user id and how the operator can allow them (at
  most once an hour per user, so a stranger cannot make the bot spam); nothing of theirs
  is downloaded, stored or sent to the model. In groups only when they address the bot.
- **Rate limit.** Over the per-user limit, the user is told once per ``_RATE_NOTICE_S``.
- **Flood control.** ``FloodControl`` honours Telegram's 429 ``retry_after`` per chat:
  replies are re-sent after the wait (at most ``flood_max_retries`` times, for waits up to
  ``flood_max_wait_s``), while drafts, edits and chat actions are skipped instead of
  queued. PTB's ``AIORateLimiter`` is not used: it needs the extra ``aiolimiter``
  dependency, pauses every chat when one chat is flooded, and its global 30 msg/s
  throttle would cap a busy bot far below what the Bot API allows for replies.
- **HTTP.** Bot API calls go through ``bots.telegram_http.AiohttpRequest`` (aiohttp)
  rather than PTB's httpx transport, which costs several times the CPU per call and
  degrades with many calls in flight; ``telegram.http_client = "httpx"`` switches back.
- **Shutdown** (``stop``): polling stops first (no new updates; the offset of those
  already fetched is confirmed), then the fetched updates are all handled; turns still
  running after ``grace`` seconds are cancelled (their user messages are already
  stored), and then the HTTP client is closed. The app flushes memory afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dtm
import itertools
import logging
import re
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any

from telegram import (
    BotCommand,
    BotCommandScopeChat,
    Message,
    MessageEntity,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatAction, ChatType, ParseMode
from telegram.error import (
    BadRequest,
    EndPointNotFound,
    Forbidden,
    InvalidToken,
    RetryAfter,
    TelegramError,
)
from telegram.ext import (
    Application,
    ApplicationBuilder,
    BaseRateLimiter,
    BaseUpdateProcessor,
    ContextTypes,
    ExtBot,
    TypeHandler,
)

from bots.access import Actor
from bots.attachments import TextFiles, decode_text, file_block
from bots.chunking import TELEGRAM_LIMIT, split_markdown, utf16_len
from bots.commands import CommandReply, Commands, parse_command
from bots.config import TelegramSettings
from bots.ratelimit import Notices
from bots.telegram_format import markdown_to_html
from bots.telegram_http import AiohttpRequest
from bots.turn import INTERNAL_ERROR, Incoming, Outcome, Turn, TurnResult
from memory.errors import PalaverError
from memory.types import ChatKey

log = logging.getLogger(__name__)

INTERFACE = "telegram"
RateLimitArgs = dict[str, Any]
TelegramApp = Application[ExtBot[RateLimitArgs], Any, Any, Any, Any, Any]

_DENIED_NOTICE_S = 3600.0
_RATE_NOTICE_S = 10.0
_EDIT_NOTICE_S = 3600.0
_UNSUPPORTED_NOTICE_S = 600.0
# Drafts, edits and chat actions: skipped during a flood wait rather than queued.
_BEST_EFFORT: RateLimitArgs = {"max_retries": 0}
_MEDIA_KINDS = (
    "photo",
    "sticker",
    "voice",
    "video",
    "video_note",
    "audio",
    "animation",
    "location",
    "venue",
    "contact",
    "poll",
    "dice",
    "game",
    "story",
    "invoice",
    "paid_media",
)
_COMMAND_MENU = (
    ("start", "Start here: what this bot does"),
    ("help", "What this bot does and its commands"),
    ("reset", "Start a fresh conversation"),
    ("new", "Start a fresh conversation (same as /reset)"),
)


def retry_seconds(error: RetryAfter) -> float:
    """``retry_after`` in seconds, whichever type this PTB version hands out."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        value = error.retry_after
    if isinstance(value, dtm.timedelta):
        return value.total_seconds()
    return float(value)


# -- flood control and ordering: plugged into PTB -----------------------------------------------


class FloodControl(BaseRateLimiter[RateLimitArgs]):
    """Honour Telegram's 429 flood control per chat, "react only if necessary".

    After a 429 for a chat, requests to that chat wait until ``retry_after`` has passed and
    are then retried, up to ``max_retries`` times and only for waits up to ``max_wait``
    seconds (a reply delayed by minutes is worse than an error in the log). Calls made with
    ``rate_limit_args={"max_retries": 0}`` (drafts, edits, chat actions) are not queued
    behind a wait: they fail at once with RetryAfter, and the caller skips them.
    Other chats are not slowed down.
    """

    _PRUNE_AT = 10_000

    def __init__(self, max_retries: int, max_wait: float) -> None:
        self._max_retries = max_retries
        self._max_wait = max_wait
        self._paused_until: dict[object, float] = {}

    async def initialize(self) -> None:
        """Nothing to allocate."""

    async def shutdown(self) -> None:
        self._paused_until.clear()

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: RateLimitArgs | None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        key = data.get("chat_id", "")
        retries = self._max_retries
        if rate_limit_args is not None:
            retries = int(rate_limit_args.get("max_retries", retries))
        loop = asyncio.get_running_loop()
        attempt = 0
        while True:
            wait = self._paused_until.get(key, 0.0) - loop.time()
            if wait > 0:
                if retries == 0 or wait > self._max_wait:
                    raise RetryAfter(max(1, round(wait)))
                await asyncio.sleep(wait)
            try:
                return await callback(*args, **kwargs)
            except RetryAfter as error:
                seconds = retry_seconds(error)
                until = loop.time() + seconds
                self._paused_until[key] = max(self._paused_until.get(key, 0.0), until)
                if len(self._paused_until) > self._PRUNE_AT:
                    now = loop.time()
                    self._paused_until = {k: t for k, t in self._paused_until.items() if t > now}
                if attempt >= retries or seconds > self._max_wait:
                    raise
                attempt += 1
                log.warning(
                    "Telegram flood control on %s for chat %s: retrying in %.0f s (%d/%d)",
                    endpoint,
                    key,
                    seconds,
                    attempt,
                    retries,
                )


def _lane(update: object) -> tuple[int, int | None] | None:
    if not isinstance(update, Update):
        return None
    message = update.effective_message
    chat = update.effective_chat
    if message is None or chat is None:
        return None
    return chat.id, message.message_thread_id if message.is_topic_message else None


_UNBOUNDED_UPDATES = 2**31 - 1


class ChatLanes(BaseUpdateProcessor):
    """Updates of one chat or forum topic one at a time, in order; chats concurrently.

    PTB's concurrent mode handles every update in its own task, so two quick messages
    from one chat could race to the session lock and be stored (and answered) swapped.

    The ``max_concurrent_updates`` limit is applied here, once an update's turn in its
    lane has come: PTB's own semaphore is taken before ``do_process_update``, so under
    it the updates queued behind one busy chat would hold every slot and stall the
    other chats. PTB's is left too wide to bind.
    """

    def __init__(self, max_concurrent_updates: int) -> None:
        super().__init__(_UNBOUNDED_UPDATES)
        self._running = asyncio.Semaphore(max_concurrent_updates)
        self._lanes: dict[tuple[int, int | None], tuple[asyncio.Lock, int]] = {}

    async def do_process_update(self, update: object, coroutine: Awaitable[Any]) -> None:
        lane = _lane(update)
        if lane is None:
            async with self._running:
                await coroutine
            return
        lock, users = self._lanes.get(lane, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._lanes[lane] = (lock, users + 1)
        try:
            async with lock, self._running:
                await coroutine
        finally:
            lock, users = self._lanes[lane]
            if users <= 1:
                del self._lanes[lane]
            else:
                self._lanes[lane] = (lock, users - 1)

    async def initialize(self) -> None:
        """Nothing to allocate."""

    async def shutdown(self) -> None:
        """Nothing to free: lanes go away with their last update."""


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
        .concurrent_updates(ChatLanes(settings.concurrent_updates))
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


# -- small in-process memories of what was already done ------------------------------------------


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


# -- replies -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Target:
    """Where a reply goes: the chat, its forum topic, and the message it answers."""

    chat_id: int
    thread_id: int | None
    reply_to: int | None
    private: bool

    def reply_parameters(self) -> ReplyParameters | None:
        if self.reply_to is None:
            return None
        return ReplyParameters(self.reply_to, allow_sending_without_reply=True)


class _Preview:
    """The reply while it streams: a draft in private chats, else one edited message.

    Best effort and throttled: it never slows the model stream (``update`` only records
    the text; a background task sends the newest text at most once per interval), skips
    rather than queues during flood control, and falls back to plain text, or from
    drafts to an edited message, when Telegram refuses. The first preview waits one
    interval, so a quick reply needs none. ``close`` waits for a request in flight, so
    no stale draft can land after the final message.
    """

    def __init__(self, owner: TelegramBot, target: _Target, *, draft: bool, interval: float):
        self._owner = owner
        self._target = target
        self._draft_id = next(owner.draft_ids) if draft else 0
        self._interval = interval
        self._latest = ""
        self._shown = ""
        self._plain = False
        self._failed = False
        self._resume_at = 0.0
        self._fresh = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.message_id: int | None = None

    @property
    def shown(self) -> bool:
        return bool(self._shown)

    async def update(self, text: str) -> None:
        self._latest = text
        self._fresh.set()
        if self._task is None and not self._closing.is_set():
            self._task = asyncio.create_task(self._run(), name="telegram-preview")

    async def close(self) -> None:
        self._closing.set()
        if self._task is not None:
            await self._task

    async def discard(self) -> None:
        """Delete the edited preview message once the final text is there."""
        if self.message_id is None:
            return
        try:
            await self._owner.bot.delete_message(
                self._target.chat_id, self.message_id, rate_limit_args=_BEST_EFFORT
            )
        except TelegramError as error:
            log.info("could not delete the preview message: %s", error)

    async def _pause(self, seconds: float) -> bool:
        """Sleep, or less if closed; True when closed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()
        return self._closing.is_set()

    async def _until_fresh(self) -> bool:
        """Wait for new text; True when closed instead."""
        fresh = asyncio.ensure_future(self._fresh.wait())
        closing = asyncio.ensure_future(self._closing.wait())
        await asyncio.wait({fresh, closing}, return_when=asyncio.FIRST_COMPLETED)
        fresh.cancel()
        closing.cancel()
        return self._closing.is_set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        if await self._pause(self._interval):
            return
        while not self._failed:
            if self._latest == self._shown:
                self._fresh.clear()
                if await self._until_fresh():
                    return
                continue
            await self._push(self._latest)
            if await self._pause(max(self._interval, self._resume_at - loop.time())):
                return

    async def _push(self, text: str) -> None:
        chunks = split_markdown(text, TELEGRAM_LIMIT, utf16_len)
        if not chunks:
            return
        body = chunks[-1] if self._plain else markdown_to_html(chunks[-1])
        mode = None if self._plain else ParseMode.HTML
        bot = self._owner.bot
        target = self._target
        try:
            if self._draft_id:
                await bot.send_message_draft(
                    target.chat_id,
                    self._draft_id,
                    body,
                    message_thread_id=target.thread_id,
                    parse_mode=mode,
                    rate_limit_args=_BEST_EFFORT,
                )
            elif self.message_id is None:
                sent = await bot.send_message(
                    target.chat_id,
                    body,
                    parse_mode=mode,
                    message_thread_id=target.thread_id,
                    reply_parameters=target.reply_parameters(),
                    disable_notification=True,
                    rate_limit_args=_BEST_EFFORT,
                )
                self.message_id = sent.message_id
            else:
                await bot.edit_message_text(
                    body,
                    target.chat_id,
                    self.message_id,
                    parse_mode=mode,
                    rate_limit_args=_BEST_EFFORT,
                )
            self._shown = text
        except RetryAfter as error:
            self._resume_at = asyncio.get_running_loop().time() + retry_seconds(error)
        except EndPointNotFound:
            log.info("this Bot API server has no sendMessageDraft: streaming by editing")
            self._owner.drafts = False
            self._draft_id = 0
        except BadRequest as error:
            reason = str(error).lower()
            if "not modified" in reason:
                self._shown = text
            elif "parse entities" in reason and not self._plain:
                self._plain = True
            elif self._draft_id:
                log.info("drafts refused in chat %s (%s): editing instead", target.chat_id, error)
                self._draft_id = 0
            else:
                log.info("streaming preview stopped in chat %s: %s", target.chat_id, error)
                self._failed = True
        except TelegramError as error:
            log.debug("streaming preview skipped in chat %s: %s", target.chat_id, error)


# -- the interface -------------------------------------------------------------------------------


class TelegramBot:
    """The Telegram interface (see the module docstring for its behaviour)."""

    name = INTERFACE

    def __init__(
        self, settings: TelegramSettings, token: str, turn: Turn, commands: Commands
    ) -> None:
        self.settings = settings
        self.turn = turn
        self.commands = commands
        self.application = build_application(settings, token)
        self.application.add_handler(TypeHandler(Update, self._on_update))
        self.application.add_error_handler(self._on_error)
        self.drafts = settings.use_drafts
        self.draft_ids = itertools.count(1)
        self._seen = _Recent()
        self._notices = Notices()
        self._text_files = TextFiles(settings.text_extensions)
        self._inflight: set[asyncio.Task[Any]] = set()
        self._background: set[asyncio.Task[Any]] = set()
        self._abandon = False
        self._running = False

    @property
    def bot(self) -> ExtBot[RateLimitArgs]:
        return self.application.bot

    @property
    def username(self) -> str:
        return self.bot.username

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the token (getMe), register the commands, start polling."""
        app = self.application
        try:
            await app.initialize()
        except InvalidToken:
            await app.bot.shutdown()
            raise PalaverError(
                "Telegram rejected the bot token (TELEGRAM_BOT_TOKEN): check it with "
                "@BotFather; it looks like 123456:ABC-DEF..."
            ) from None
        except TelegramError as error:
            await app.bot.shutdown()
            raise PalaverError(
                f"cannot reach the Telegram Bot API at {self.settings.base_url}: {error}"
            ) from None
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

    async def stop(self, grace: float) -> None:
        """Stop polling, let the fetched updates finish (at most ``grace`` s), close."""
        if not self._running:
            return
        self._running = False
        app = self.application
        if app.updater is not None and app.updater.running:
            try:
                await app.updater.stop()
            except TelegramError as error:
                log.warning("telegram: stopping the poller: %s", error)
        stopping = asyncio.create_task(app.stop())
        done, _ = await asyncio.wait({stopping}, timeout=grace)
        if not done:
            self._abandon = True
            log.warning(
                "telegram: %d turns still running after %.0f s; cancelling them "
                "(their messages are stored, the replies are not sent)",
                len(self._inflight),
                grace,
            )
            for task in list(self._inflight):
                task.cancel()
            await stopping
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        await app.shutdown()
        log.info("telegram: stopped")

    async def _register_commands(self) -> None:
        """The command menu: everyone's, plus /stats in the admins' private chats."""
        menu = [BotCommand(name, text) for name, text in _COMMAND_MENU]
        shown = {name for name, _ in _COMMAND_MENU}
        infos = [i for i in self.commands.infos if i.name not in shown]
        menu += [BotCommand(i.name, i.description[:256]) for i in infos if not i.admin_only]
        try:
            await self.bot.set_my_commands(menu)
        except TelegramError as error:
            log.warning("telegram: could not register the command menu: %s", error)
            return
        admin_menu = menu + [BotCommand(i.name, i.description[:256]) for i in infos if i.admin_only]
        for admin in self.turn.access.admin_ids(INTERFACE):
            try:
                await self.bot.set_my_commands(admin_menu, scope=BotCommandScopeChat(int(admin)))
            except (TelegramError, ValueError) as error:
                log.info("telegram: no admin command menu for %s: %s", admin, error)

    # -- updates --------------------------------------------------------------------------------

    async def _on_update(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        if self._abandon:
            log.warning("telegram: update %s dropped: shutting down", update.update_id)
            return
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            await self.handle_update(update)
        except Forbidden as error:  # blocked by the user, removed from the group
            chat = update.effective_chat
            log.info("telegram: cannot write to chat %s: %s", chat.id if chat else "?", error)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        update_id = update.update_id if isinstance(update, Update) else update
        log.error("telegram: error handling update %s", update_id, exc_info=context.error)

    async def handle_update(self, update: Update) -> None:
        """One update: route it to a command, a turn, an observation or a notice."""
        edited = update.edited_message is not None
        message = update.message or update.edited_message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return
        chat = message.chat
        if not self._seen.add((chat.id, message.message_id, message.edit_date if edited else 0)):
            return
        private = chat.type == ChatType.PRIVATE
        user = message.from_user
        actor = Actor(
            INTERFACE,
            str(user.id),
            user.full_name,
            groups=() if private else (str(chat.id),),
        )
        target = _Target(
            chat.id,
            message.message_thread_id if message.is_topic_message else None,
            None if private else message.message_id,
            private,
        )
        text = message.text or message.caption or ""
        command, foreign = self._command(text, private)
        addressed = not foreign and (
            private
            or self.settings.group_mode == "all"
            or command is not None
            or self._mentions_me(message)
            or self._replies_to_me(message)
        )

        if not self.turn.access.allows(actor):
            if addressed and self._notices.take(("denied", user.id), _DENIED_NOTICE_S):
                await self._send_plain(target, self.turn.access.denied_message(actor))
            return
        if edited:
            if private and self._notices.take(("edited", chat.id), _EDIT_NOTICE_S):
                await self._send_plain(
                    target,
                    "I answer new messages only, so I didn't act on your edit. "
                    "Send the corrected text as a new message if you'd like an answer to it.",
                )
            return
        if command is not None:
            await self._run_command(target, self.chat_key(message), actor, *command)
            return

        metadata: dict[str, Any] = {}
        if message.reply_to_message is not None and not self._topic_root(message):
            metadata["reply_to"] = message.reply_to_message.message_id
        content = await self._content(message, target, addressed, metadata)
        if content is None:
            return
        if not private:
            content = self._without_my_mention(content)
        incoming = Incoming(
            self.chat_key(message),
            actor,
            content,
            platform_message_id=str(message.message_id),
            is_group=not private,
            metadata=metadata or None,
        )
        if addressed:
            await self._answer(target, incoming)
        else:
            await self.turn.observe(incoming)

    @staticmethod
    def chat_key(message: Message) -> ChatKey:
        thread = message.message_thread_id if message.is_topic_message else None
        return ChatKey(INTERFACE, str(message.chat.id), str(thread) if thread else None)

    def _command(self, text: str, private: bool) -> tuple[tuple[str, str] | None, bool]:
        """(name, argument) if ``text`` is one of our commands, and whether it is a
        command addressed to another bot (``/cmd@other_bot``)."""
        parsed = parse_command(text)
        if parsed is None:
            return None, False
        head = text.strip()[1:].split(maxsplit=1)[0]
        target = head.partition("@")[2]
        if target and target.lower() != self.username.lower():
            return None, True
        if not self.commands.knows(parsed[0]) and not private and not target:
            return None, False  # perhaps another bot's command; stored as a message
        return parsed, False

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

    def _replies_to_me(self, message: Message) -> bool:
        reply = message.reply_to_message
        if reply is None or reply.from_user is None or self._topic_root(message):
            return False
        return reply.from_user.id == self.bot.id

    def _without_my_mention(self, text: str) -> str:
        stripped = re.sub(rf"@{re.escape(self.username)}\b", "", text, flags=re.IGNORECASE)
        stripped = re.sub(r"[ \t]{2,}", " ", stripped).strip()
        return stripped or text

    # -- what a message says --------------------------------------------------------------------

    def _supported_hint(self) -> str:
        limit = self.settings.max_document_bytes
        size = f"{limit / 1000:.0f} KB" if limit >= 1000 else f"{limit} bytes"
        return (
            "I can read text: messages, captions and text files (.txt, .md, .py, .json, "
            f".csv and similar, up to {size}). Photos, stickers, voice messages, videos and "
            "other media aren't supported: please describe them in words."
        )

    async def _content(
        self, message: Message, target: _Target, addressed: bool, metadata: dict[str, Any]
    ) -> str | None:
        """The message's text for the model, or None when it was answered with a notice."""
        caption = message.caption or ""
        if message.document is not None:
            name = message.document.file_name or "file"
            metadata["attachment"] = {
                "kind": "document",
                "name": name,
                "mime_type": message.document.mime_type,
                "bytes": message.document.file_size,
            }
            if not addressed:
                return f"[file: {name}] {caption}".strip()
            body = await self._read_document(message, target)
            if body is None:
                return None
            return f"{caption}\n\n{body}" if caption.strip() else body
        kind = next((k for k in _MEDIA_KINDS if getattr(message, k, None)), None)
        if kind is not None:
            metadata["attachment"] = {"kind": kind}
            if not addressed:
                return f"[{kind}] {caption}" if caption.strip() else None
            once = message.media_group_id or message.message_id
            if self._notices.take(("media", message.chat.id, once), _UNSUPPORTED_NOTICE_S):
                await self._send_plain(target, self._supported_hint())
            return None
        text = message.text or caption
        return text if text.strip() else None

    async def _read_document(self, message: Message, target: _Target) -> str | None:
        document = message.document
        assert document is not None
        name = document.file_name or "file"
        limit = self.settings.max_document_bytes
        if not self._text_files.is_text(name, document.mime_type):
            await self._send_plain(target, f"I can't read {name}. " + self._supported_hint())
            return None
        too_big = (
            f"{name} is too large for me: I read text files up to {limit:,} bytes. "
            "Send a shorter excerpt as text or as a smaller file."
        )
        if (document.file_size or 0) > limit:
            await self._send_plain(target, too_big)
            return None
        try:
            telegram_file = await document.get_file()
            data = bytes(await telegram_file.download_as_bytearray())
        except TelegramError as error:
            log.warning("telegram: downloading %s failed: %s", name, error)
            await self._send_plain(target, f"I couldn't download {name}; please send it again.")
            return None
        if len(data) > limit:
            await self._send_plain(target, too_big)
            return None
        content = decode_text(data)
        if content is None:
            await self._send_plain(target, f"{name} isn't UTF-8 text, so I can't read it.")
            return None
        return file_block(name, content)

    # -- answering ------------------------------------------------------------------------------

    async def _answer(self, target: _Target, incoming: Incoming) -> None:
        """A turn: typing, a streamed preview, then the final text."""
        preview: _Preview | None = None
        if self.settings.stream_replies:
            draft = target.private and self.drafts
            interval = self.settings.draft_interval_s if draft else self.settings.edit_interval_s
            preview = _Preview(self, target, draft=draft, interval=interval)
        done = asyncio.Event()
        self._spawn(self._typing(target, preview, done))
        try:
            result = await self.turn.handle(
                incoming, on_progress=preview.update if preview is not None else None
            )
        except Exception:
            log.exception("telegram: the turn failed in chat %s", target.chat_id)
            result = TurnResult(Outcome.FAILED, INTERNAL_ERROR)
        finally:
            done.set()
            if preview is not None:
                await preview.close()
        await self._deliver(target, incoming, result)
        if preview is not None:
            await preview.discard()

    async def _deliver(self, target: _Target, incoming: Incoming, result: TurnResult) -> None:
        if result.outcome is Outcome.REPLIED:
            await self._send_markdown(target, result.text)
        elif result.outcome is Outcome.RATE_LIMITED:
            key = ("rate", incoming.actor.user_id)
            if self._notices.take(key, _RATE_NOTICE_S):
                await self._send_plain(target, result.text)
        elif result.outcome in (Outcome.DUPLICATE, Outcome.STORED):
            return
        elif result.text.strip():
            await self._send_plain(target, result.text)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _typing(self, target: _Target, preview: _Preview | None, done: asyncio.Event) -> None:
        """ "typing..." until the reply or its preview shows (Telegram shows it for 5 s)."""
        while not done.is_set() and not (preview is not None and preview.shown):
            try:
                await self.bot.send_chat_action(
                    target.chat_id,
                    ChatAction.TYPING,
                    message_thread_id=target.thread_id,
                    rate_limit_args=_BEST_EFFORT,
                )
            except TelegramError as error:
                log.debug("telegram: typing action skipped: %s", error)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.typing_interval_s):
                    await done.wait()

    async def _send_markdown(self, target: _Target, text: str) -> None:
        """Claude's Markdown as HTML messages; a part Telegram rejects goes as plain text."""
        for index, chunk in enumerate(split_markdown(text, TELEGRAM_LIMIT, utf16_len)):
            reply = target.reply_parameters() if index == 0 else None
            try:
                await self.bot.send_message(
                    target.chat_id,
                    markdown_to_html(chunk),
                    parse_mode=ParseMode.HTML,
                    message_thread_id=target.thread_id,
                    reply_parameters=reply,
                )
            except BadRequest as error:
                log.info("telegram: formatted reply rejected (%s); sending it as plain text", error)
                await self.bot.send_message(
                    target.chat_id,
                    chunk,
                    message_thread_id=target.thread_id,
                    reply_parameters=reply,
                )

    async def _send_plain(self, target: _Target, text: str) -> None:
        for index, chunk in enumerate(split_markdown(text, TELEGRAM_LIMIT, utf16_len)):
            await self.bot.send_message(
                target.chat_id,
                chunk,
                message_thread_id=target.thread_id,
                reply_parameters=target.reply_parameters() if index == 0 else None,
            )

    async def _run_command(
        self, target: _Target, key: ChatKey, actor: Actor, name: str, argument: str
    ) -> None:
        reply: CommandReply = await self.commands.run(name, argument, key, actor)
        if reply.private and not target.private:
            # Only for the asker: to their private chat, which Telegram allows only once
            # they have started one with the bot; never to the group.
            direct = _Target(int(actor.user_id), None, None, True)
            try:
                await self._send_reply(direct, reply)
            except (BadRequest, Forbidden):
                await self._send_plain(
                    target,
                    f"That answer is only for you: open a private chat with @{self.username}, "
                    f"press Start, and send /{name} there.",
                )
            else:
                await self._send_plain(target, "I've sent you the answer privately.")
            return
        await self._send_reply(target, reply)

    async def _send_reply(self, target: _Target, reply: CommandReply) -> None:
        """A command's reply: its text, or a file with the text as its caption."""
        if reply.file is None:
            await self._send_plain(target, reply.text)
            return
        await self.bot.send_document(
            target.chat_id,
            reply.file.data,
            filename=reply.file.name,
            caption=reply.text[:1024] or None,
            message_thread_id=target.thread_id,
            reply_parameters=target.reply_parameters(),
        )
