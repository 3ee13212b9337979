"""A reply while the model writes it, on Telegram: "typing...", a preview, the answer.

"typing..." is repeated every ``typing_interval_s`` (Telegram shows it for 5 s) until
the preview or the answer shows. The preview is a draft (``sendMessageDraft``) in
private chats, and one message edited at most every ``edit_interval_s`` in groups or
where drafts are refused; it is best effort and throttled: it never slows the model
stream (``update`` only records the text; a background task sends the newest text at
most once per interval), it is skipped rather than queued during flood control, and
it falls back to plain text, or from drafts to an edited message, when Telegram
refuses. The first preview waits one interval, so that a quick reply needs none.
The final answer always arrives as normal messages (which notify); an edited
preview message is deleted once it is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from telegram.constants import ChatAction, ParseMode
from telegram.error import BadRequest, EndPointNotFound, RetryAfter, TelegramError

from bots.chunking import TELEGRAM_LIMIT, split_markdown, utf16_len
from bots.telegram_flood import BEST_EFFORT, retry_seconds
from bots.telegram_format import markdown_to_html

if TYPE_CHECKING:
    from bots.telegram_outbound import TelegramPort

log = logging.getLogger(__name__)


class TelegramStream:
    """A ``conversation.outbound.ReplyStream`` on Telegram (see the module docstring)."""

    def __init__(self, port: TelegramPort, *, preview: tuple[bool, float] | None) -> None:
        self._port = port
        owner = port.owner
        self._bot = owner.bot
        self._target = port.target
        draft, interval = preview if preview is not None else (False, 0.0)
        self._previewing = preview is not None
        self._draft_id = next(owner.draft_ids) if draft else 0
        self._interval = interval
        self._latest = ""
        self._shown = ""
        self._plain = False
        self._failed = False
        self._resume_at = 0.0
        self._message_id: int | None = None
        self._fresh = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._typing = asyncio.create_task(self._keep_typing(owner.settings.typing_interval_s))

    async def update(self, text: str) -> None:
        self._latest = text
        self._fresh.set()
        if self._previewing and self._task is None and not self._closing.is_set():
            self._task = asyncio.create_task(self._run(), name="telegram-preview")

    async def finish(self, text: str) -> None:
        await self._stop_preview()
        await self._port.send(text, markdown=True)
        await self._discard()

    async def close(self) -> None:
        await self._stop_preview()
        await self._discard()

    async def _stop_preview(self) -> None:
        """Stop typing and the preview, waiting for a request in flight, so that no
        stale draft can land after the final message."""
        self._closing.set()
        self._typing.cancel()
        if self._task is not None:
            await self._task
        with contextlib.suppress(asyncio.CancelledError):
            await self._typing

    async def _discard(self) -> None:
        """Delete the edited preview message (a draft just goes away)."""
        if self._message_id is None:
            return
        message_id, self._message_id = self._message_id, None
        try:
            await self._bot.delete_message(
                self._target.chat_id, message_id, rate_limit_args=BEST_EFFORT
            )
        except TelegramError as error:
            log.info("could not delete the preview message: %s", error)

    async def _keep_typing(self, interval: float) -> None:
        target = self._target
        while not self._shown:
            try:
                await self._bot.send_chat_action(
                    target.chat_id,
                    ChatAction.TYPING,
                    message_thread_id=target.thread_id,
                    rate_limit_args=BEST_EFFORT,
                )
            except TelegramError as error:
                log.debug("telegram: typing action skipped: %s", error)
            await asyncio.sleep(interval)

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
            drafting = bool(self._draft_id)
            await self._push(self._latest)
            if drafting and not self._draft_id:
                continue  # drafts refused: show the edited preview now, not an interval on
            if await self._pause(max(self._interval, self._resume_at - loop.time())):
                return

    async def _push(self, text: str) -> None:
        chunks = split_markdown(text, TELEGRAM_LIMIT, utf16_len)
        if not chunks:
            return
        body = chunks[-1] if self._plain else markdown_to_html(chunks[-1])
        mode = None if self._plain else ParseMode.HTML
        bot = self._bot
        target = self._target
        try:
            if self._draft_id:
                await bot.send_message_draft(
                    target.chat_id,
                    self._draft_id,
                    body,
                    message_thread_id=target.thread_id,
                    parse_mode=mode,
                    rate_limit_args=BEST_EFFORT,
                )
            elif self._message_id is None:
                sent = await bot.send_message(
                    target.chat_id,
                    body,
                    parse_mode=mode,
                    message_thread_id=target.thread_id,
                    reply_parameters=target.reply_parameters(),
                    disable_notification=True,
                    rate_limit_args=BEST_EFFORT,
                )
                self._message_id = sent.message_id
            else:
                await bot.edit_message_text(
                    body,
                    target.chat_id,
                    self._message_id,
                    parse_mode=mode,
                    rate_limit_args=BEST_EFFORT,
                )
            self._shown = text
        except RetryAfter as error:
            self._resume_at = asyncio.get_running_loop().time() + retry_seconds(error)
        except EndPointNotFound:
            log.info("this Bot API server has no sendMessageDraft: streaming by editing")
            self._port.owner.drafts = False
            self._switch_to_edits()
        except BadRequest as error:
            reason = str(error).lower()
            if "not modified" in reason:
                self._shown = text
            elif "parse entities" in reason and not self._plain:
                self._plain = True
            elif self._draft_id:
                log.info("drafts refused in chat %s (%s): editing instead", target.chat_id, error)
                self._switch_to_edits()
            else:
                log.info("streaming preview stopped in chat %s: %s", target.chat_id, error)
                self._failed = True
        except TelegramError as error:
            log.debug("streaming preview skipped in chat %s: %s", target.chat_id, error)

    def _switch_to_edits(self) -> None:
        """Drafts are refused: preview by editing one message, at the edit interval."""
        self._draft_id = 0
        self._interval = max(self._interval, self._port.owner.settings.edit_interval_s)
