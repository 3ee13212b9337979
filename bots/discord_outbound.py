"""The outbound port on Discord: a channel (replying to a message), a DM, or an
interaction's follow-ups; and a reply that grows while the model writes it.

Text is cut at Discord's 2,000 characters between paragraphs or lines
(bots.chunking); a code block that has to be cut is closed and reopened with its
language. Mentions in the model's text never ping anyone (the client's
``allowed_mentions``). Discord's answers map onto the port's failures: a DM to a user
whose DMs are closed, a channel the bot may not write to, or one that is gone, is
``Unreachable``; any other 4xx but 429 refuses the message for good (``Rejected``); a
wait longer than discord.py's ``max_ratelimit_timeout``, or a 429 discord.py gave up on
(five in a row, a Cloudflare ban), is ``RetryLater`` (shorter 429s discord.py waits out
itself); Discord out of reach (5xx, network errors, timeouts) is
``Transient``. Each says how many parts of the text were shown before it
(``sent_parts``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord

from bots.chunking import DISCORD_LIMIT, split_markdown, unclosed_fence
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

log = logging.getLogger(__name__)

UPLOAD_LIMIT = 10 * 1024 * 1024  # what Discord accepts from a bot in a server without boosts
# "typing..." starts only if the reply has not begun by then: a quick answer needs none,
# and each indicator is a REST call.
TYPING_AFTER_S = 0.3
# What a REST call to Discord can fail with (an error answer, or Discord out of reach).
DELIVERY_ERRORS = (
    discord.HTTPException,
    discord.RateLimited,
    aiohttp.ClientError,
    OSError,
    TimeoutError,
)

Sent = discord.Message | discord.WebhookMessage
Interaction = discord.Interaction[discord.Client]


def delivery_error(error: BaseException) -> DeliveryError:
    """Discord's refusal, or Discord out of reach, as the port's failure."""
    if isinstance(error, DeliveryError):
        return error
    if isinstance(error, discord.Forbidden | discord.NotFound):
        return Unreachable(str(error))
    if isinstance(error, discord.RateLimited):
        return RetryLater(error.retry_after)
    if isinstance(error, discord.HTTPException) and error.status == 429:
        # A 429 discord.py gave up on (five in a row, or a Cloudflare ban): wait, not refuse.
        return RetryLater(_retry_after(error))
    if isinstance(error, discord.HTTPException) and 400 <= error.status < 500:
        return Rejected(str(error))
    return Transient(repr(error))


def _retry_after(error: discord.HTTPException) -> float:
    """The wait a 429 asked for (its Retry-After header), 60 s where it names none."""
    try:
        return max(1.0, float(error.response.headers.get("Retry-After", "")))
    except (TypeError, ValueError, AttributeError):
        return 60.0


def parts(text: str) -> list[str]:
    """The messages ``text`` goes out in: the same for ``send`` and a stream's end."""
    return _close_fence(split_markdown(text, DISCORD_LIMIT)) or ["…"]


@contextlib.asynccontextmanager
async def delivery_errors() -> AsyncIterator[None]:
    try:
        yield
    except discord.Forbidden as error:
        raise Unreachable(str(error)) from error


def _file(file: OutboundFile) -> discord.File:
    return discord.File(file.path, filename=file.name)


def _extra(file: discord.File | None, view: discord.ui.View | None) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if file is not None:
        extra["file"] = file
    if view is not None:
        extra["view"] = view
    return extra


# A button press: (the interaction, the button's data) -> what to show the presser, and
# whether the question is settled (the buttons go).
Press = Callable[[Interaction, str], tuple[str, bool]]


@dataclass(frozen=True, slots=True)
class PortSettings:
    """What every port of one bot shares."""

    stream_interval: float  # discord.stream_edit_interval_s
    on_press: Press  # a button of ``offer`` was pressed: the core's Dispatcher.choose


class _Choice(discord.ui.Button["Choices"]):
    def __init__(self, label: str, data: str, on_press: Press, *, first: bool) -> None:
        style = discord.ButtonStyle.success if first else discord.ButtonStyle.danger
        super().__init__(label=label, style=style, custom_id=data)
        self.data = data
        self.on_press = on_press

    async def callback(self, interaction: Interaction) -> None:
        said, settled = self.on_press(interaction, self.data)
        try:
            if settled:
                content = interaction.message.content if interaction.message else ""
                await interaction.response.edit_message(content=f"{content}\n\n{said}", view=None)
                if self.view is not None:
                    self.view.stop()
            else:
                await interaction.response.send_message(said, ephemeral=True)
        except DELIVERY_ERRORS as error:
            log.info("discord: could not show the answer to a button: %r", error)


class Choices(discord.ui.View):
    """Buttons for one ``offer``; a press the core accepts takes them away."""

    def __init__(self, choices: Sequence[tuple[str, str]], on_press: Press) -> None:
        super().__init__(timeout=None)
        for index, (label, data) in enumerate(choices):
            self.add_item(_Choice(label, data, on_press, first=index == 0))


class _Port(ABC):
    """What every Discord port shares: chunked text, files, the stream."""

    upload_limit = UPLOAD_LIMIT

    def __init__(self, settings: PortSettings) -> None:
        self.settings = settings

    @abstractmethod
    async def _post(
        self, text: str, file: discord.File | None = None, view: discord.ui.View | None = None
    ) -> Sent:
        """Post one message (of at most 2,000 characters) where this port writes."""

    async def send(self, text: str, *, markdown: bool = False, skip: int = 0) -> None:
        chunks = parts(text)
        for index in range(skip, len(chunks)):
            try:
                await self._post(chunks[index])
            except (DeliveryError, *DELIVERY_ERRORS) as error:
                raise delivery_error(error).shown(index) from error

    async def send_file(self, file: OutboundFile, caption: str) -> None:
        chunks = split_markdown(caption, DISCORD_LIMIT) or [file.name]
        async with delivery_errors():
            for chunk in chunks[:-1]:
                await self._post(chunk)
            await self._post(chunks[-1], _file(file))

    def stream(self) -> ReplyStream:
        return DiscordStream(self, self.settings.stream_interval)

    async def offer(self, text: str, choices: Sequence[tuple[str, str]]) -> None:
        """Buttons under the message; a press is answered by ``on_press``."""
        view = Choices(choices, self.settings.on_press)
        async with delivery_errors():
            await self._post(text, view=view)

    @abstractmethod
    async def typing(self) -> None:
        """Show "typing..." until cancelled (where the platform shows it at all)."""


class ChannelPort(_Port):
    """A channel or thread; in a guild the first message replies to the question."""

    def __init__(
        self,
        channel: discord.abc.Messageable,
        *,
        question: discord.Message | discord.PartialMessage | None,
        author: discord.User | discord.Member | None,
        settings: PortSettings,
    ) -> None:
        super().__init__(settings)
        self.channel = channel
        self.question = question
        self.author = author

    async def _post(
        self, text: str, file: discord.File | None = None, view: discord.ui.View | None = None
    ) -> Sent:
        extra = _extra(file, view)
        if self.question is not None:
            # The first message shows which one it answers; if the question was deleted
            # meanwhile, the answer still goes out, unattached.
            extra.update(
                reference=self.question.to_reference(fail_if_not_exists=False),
                mention_author=False,
            )
            self.question = None
        return await self.channel.send(text, **extra)

    async def typing(self) -> None:
        async with self.channel.typing():
            await asyncio.Event().wait()  # until cancelled; discord.py repeats every 5 s

    def private(self) -> Outbound | None:
        guild = getattr(self.channel, "guild", None)
        if guild is None or self.author is None:
            return None
        return DirectPort(self.author, self.settings)

    def private_hint(self, command: str) -> str:
        return (
            "That answer is only for you, and your DMs are closed: use the "
            f"/{command} slash command instead, whose answer only you can see."
        )


class DirectPort(_Port):
    """The asker's DMs, for an answer only they may see."""

    def __init__(self, user: discord.User | discord.Member, settings: PortSettings) -> None:
        super().__init__(settings)
        self.user = user

    async def _post(
        self, text: str, file: discord.File | None = None, view: discord.ui.View | None = None
    ) -> Sent:
        return await self.user.send(text, **_extra(file, view))

    async def typing(self) -> None:
        """Nothing to show: the answer is ready when it is sent."""

    def private(self) -> Outbound | None:
        return None

    def private_hint(self, command: str) -> str:
        return f"Use the /{command} slash command, whose answer only you can see."


class InteractionPort(_Port):
    """A slash command's follow-ups: the first fills in its deferred "thinking..."."""

    def __init__(self, interaction: Interaction, ephemeral: bool, settings: PortSettings) -> None:
        super().__init__(settings)
        self.interaction = interaction
        self.ephemeral = ephemeral

    async def _post(
        self, text: str, file: discord.File | None = None, view: discord.ui.View | None = None
    ) -> Sent:
        return await self.interaction.followup.send(
            text, ephemeral=self.ephemeral, wait=True, **_extra(file, view)
        )

    async def typing(self) -> None:
        """The deferred response already shows "thinking..."."""

    def private(self) -> Outbound | None:
        if self.ephemeral:
            return None
        return InteractionPort(self.interaction, True, self.settings)

    def private_hint(self, command: str) -> str:
        return f"Use /{command} again."


class DiscordStream:
    """A reply that grows: one message edited at most every ``interval`` seconds,
    continued in further messages past 2,000 characters; "typing..." until the first
    message appears. Edits are made by one flusher task, so a slow Discord never slows
    the model stream, and a send is never cancelled halfway (which could post twice)."""

    def __init__(self, port: _Port, interval: float) -> None:
        self.port = port
        self.interval = interval
        self.latest = ""
        self._sent: list[Sent] = []
        self._shown: list[str] = []
        self._finished = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._typing: asyncio.Task[None] | None = asyncio.create_task(self._keep_typing())

    async def update(self, text: str) -> None:
        self.latest = text
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_periodically())

    async def finish(self, text: str) -> None:
        self._finished.set()
        if self._flusher is not None:
            await self._flusher
        self._stop_typing()
        try:
            await self._render(text)
        except (DeliveryError, *DELIVERY_ERRORS) as error:
            final = parts(text)
            shown = 0
            while shown < min(len(final), len(self._shown)) and self._shown[shown] == final[shown]:
                shown += 1
            raise delivery_error(error).shown(shown) from error

    async def close(self) -> None:
        self._finished.set()
        self._stop_typing()
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)

    async def _keep_typing(self) -> None:
        try:
            await asyncio.sleep(TYPING_AFTER_S)
            await self.port.typing()
        except DELIVERY_ERRORS as error:
            log.debug("discord: typing indicator failed: %r", error)

    def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            self._typing = None

    async def _flush_periodically(self) -> None:
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._finished.wait(), self.interval)
                if self._finished.is_set():
                    return
                await self._render(self.latest)
        except DELIVERY_ERRORS as error:
            log.warning("discord: streaming edit failed: %r", error)

    async def _render(self, text: str) -> None:
        chunks = (
            parts(text)
            if self._finished.is_set()
            else _close_fence(split_markdown(text, DISCORD_LIMIT))
        )
        for index, chunk in enumerate(chunks):
            if index < len(self._sent):
                if self._shown[index] != chunk:
                    self._sent[index] = await self._sent[index].edit(content=chunk)
                    self._shown[index] = chunk
                continue
            self._sent.append(await self.port._post(chunk))
            self._shown.append(chunk)
            self._stop_typing()
        for extra in self._sent[len(chunks) :]:  # the text shrank (a retried stream)
            await extra.delete()
        del self._sent[len(chunks) :], self._shown[len(chunks) :]


def _close_fence(chunks: list[str]) -> list[str]:
    """Close a code fence left open at the end (a reply still streaming, or cut off)."""
    if not chunks:
        return chunks
    fence = unclosed_fence(chunks[-1])
    if fence is None:
        return chunks
    last = f"{chunks[-1]}\n{fence}"
    if len(last) <= DISCORD_LIMIT:
        return [*chunks[:-1], last]
    return [*chunks[:-1], *split_markdown(last, DISCORD_LIMIT)]
