"""Telegram's flood control, honoured per chat: plugged into python-telegram-bot.

"React only if necessary": after a 429 for a chat, requests to that chat wait until
``retry_after`` has passed and are then retried, up to ``max_retries`` times and only
for waits up to ``max_wait`` seconds; a longer wait raises ``RetryAfter`` to the
caller (the outbound port turns it into ``RetryLater`` so that the core keeps the
reply and delivers it when the wait is over). Calls made with
``rate_limit_args={"max_retries": 0}`` (drafts, edits, chat actions) are not queued
behind a wait: they fail at once, and the caller skips them. Other chats are not
slowed down.

PTB's ``AIORateLimiter`` is not used: it needs the extra ``aiolimiter`` dependency,
pauses every chat when one chat is flooded, and its global 30 msg/s throttle would cap
a busy bot far below what the Bot API allows for replies.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import logging
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.error import RetryAfter
from telegram.ext import BaseRateLimiter

log = logging.getLogger(__name__)

RateLimitArgs = dict[str, Any]
# Drafts, edits and chat actions: skipped during a flood wait rather than queued.
BEST_EFFORT: RateLimitArgs = {"max_retries": 0}


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
    """Per-chat waits after a 429 (see the module docstring)."""

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
