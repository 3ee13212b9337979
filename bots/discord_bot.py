"""The Discord interface: a thin adapter from discord.py to the shared turn and commands.

Everything a user can do is translated into the same ``Incoming``/``Commands.run`` calls
the console and Telegram make; nothing here decides what to remember or what to answer.
What is Discord-specific, and decided here:

- **Chats.** A chat is ``ChatKey("discord", <channel id>)``; a DM is its DM channel's id;
  a thread is ``ChatKey("discord", <parent channel id>, <thread id>)`` (for a forum post
  the parent is the forum), so every thread is a session of its own while the parent id
  still says where it lives.
- **When a message is a turn.** In DMs, always. In guild channels and threads, when the bot
  is mentioned (user or its managed role), when the message replies to one of the bot's
  messages, or for every message with ``discord.guild_mode = "all"``. Every other
  message the bot sees is stored with its author (``Turn.observe``), so the context shows
  who said what. Bots (this one and others) never start a turn. Seeing guild messages that
  do not mention the bot needs the privileged Message Content intent
  (``discord.message_content``). Edited messages are not answered again.
- **Order.** Discord dispatches each event as its own task; events of one chat are passed
  to the turn in arrival order (a per-chat lock), events of different chats concurrently.
- **Slash commands** are acknowledged first (deferred, well within Discord's 3 s), then
  answered with follow-ups. /status, /summary, /export and /stats answer only the asker
  (ephemeral); /ask and /reset answer in the channel, as the conversation is shared there.
- **Replies** stream into one message, edited at most once per
  ``discord.stream_edit_interval_s``; past 2,000 characters they continue in further
  messages, split by ``bots.chunking`` (code fences closed and reopened).
- **Outages.** discord.py reconnects and RESUMEs by itself; the client runs as its own task,
  so a Discord outage only stalls Discord. A bad token or a missing privileged intent at
  start is a ``PalaverError`` (run.py exits non-zero); after start, a fatal gateway error
  is logged and the other interfaces keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, Protocol

import aiohttp
import discord
from discord import app_commands

from bots.access import Actor
from bots.attachments import TextFiles, decode_text, file_block
from bots.chunking import DISCORD_LIMIT, split_markdown, unclosed_fence
from bots.commands import CommandReply, Commands, parse_command
from bots.config import TEXT_EXTENSIONS, DiscordSettings
from bots.ratelimit import Notices
from bots.turn import INTERNAL_ERROR, Incoming, Outcome, Turn, TurnResult
from memory.errors import PalaverError
from memory.types import ChatKey

log = logging.getLogger(__name__)

INTERFACE = "discord"

RESTARTING = "I'm restarting; your message is saved. Please send it again in a minute."
# discord.py's waits: for the GUILD_CREATEs after READY, and before a re-IDENTIFY (Discord
# allows one IDENTIFY per 5 s). Module constants so tests against a local fake can shorten them.
GUILD_READY_TIMEOUT_S = 2.0
IDENTIFY_DELAY_S = 5.0
# "typing..." starts only if the reply has not begun by then: a quick answer needs none,
# and each indicator is a REST call.
TYPING_AFTER_S = 0.3
DENIED_NOTICE_S = 3600.0  # a stranger is told how to get in at most this often
RATE_NOTICE_S = 10.0  # a user over the rate limit is told at most this often

# Answered only to the asker: personal or noisy in a shared channel.
EPHEMERAL_COMMANDS = frozenset({"status", "summary", "export", "stats"})
# The slash commands this adapter offers from the shared set (besides /ask and /export,
# which take an argument).
SLASH_COMMANDS = ("reset", "status", "summary", "stats")

_TEXT_FILES = TextFiles(TEXT_EXTENSIONS)

# What a REST call to Discord can fail with (an error answer, or Discord out of reach).
DELIVERY_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError)

Sent = discord.Message | discord.WebhookMessage
Interaction = discord.Interaction[discord.Client]


class PalaverClient(discord.Client):
    """discord.Client whose events go to the adapter; the subclass exists for the hooks."""

    def __init__(
        self, bot: DiscordBot, intents: discord.Intents, *, guild_ready_timeout: float
    ) -> None:
        super().__init__(
            intents=intents,
            guild_ready_timeout=guild_ready_timeout,
            # The model's text must never ping @everyone, roles or arbitrary users.
            allowed_mentions=discord.AllowedMentions(
                everyone=False, users=False, roles=False, replied_user=True
            ),
        )
        self.bot = bot
        self.tree: app_commands.CommandTree[PalaverClient] = app_commands.CommandTree(self)
        self.identify_delay = IDENTIFY_DELAY_S

    async def setup_hook(self) -> None:
        await self.bot.sync_commands()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        if not initial and self.identify_delay > 0:
            await asyncio.sleep(self.identify_delay)

    async def on_ready(self) -> None:
        self.bot.ready.set()
        log.info("discord: connected as %s (%s guilds)", self.user, len(self.guilds))

    async def on_message(self, message: discord.Message) -> None:
        await self.bot.on_message(message)


class DiscordBot:
    """The Discord interface (see the module docstring); implements ``bots.interface``."""

    name = INTERFACE

    def __init__(
        self,
        settings: DiscordSettings,
        token: str,
        turn: Turn,
        commands: Commands,
        *,
        guild_ready_timeout: float | None = None,
    ) -> None:
        self.token = token
        self.settings = settings
        self.turn = turn
        self.commands = commands
        intents = discord.Intents.default()
        intents.message_content = settings.message_content
        self.client = PalaverClient(
            self,
            intents,
            guild_ready_timeout=GUILD_READY_TIMEOUT_S
            if guild_ready_timeout is None
            else guild_ready_timeout,
        )
        self.ready = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._accepting = True
        self._inflight: set[asyncio.Task[Any]] = set()
        self._chat_locks: weakref.WeakValueDictionary[ChatKey, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._notices = Notices()
        self._register_commands()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Log in and connect in a task of this loop; return once ready (or still trying).

        Waits at most ``discord.connect_timeout_s`` for the gateway's READY; if Discord is
        slow or unreachable, the client keeps trying in the background rather than holding
        up the other interfaces. A rejected token or a missing intent raises PalaverError.
        """
        self._runner = asyncio.create_task(self._run(), name="discord-client")
        waiter = asyncio.create_task(self.ready.wait())
        done, _ = await asyncio.wait(
            {self._runner, waiter},
            timeout=self.settings.connect_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        waiter.cancel()
        if self._runner in done:
            error = self._runner.exception()
            await self.client.close()
            if isinstance(error, PalaverError):
                raise error
            raise PalaverError(f"Discord client stopped while starting: {error!r}")
        self._runner.add_done_callback(self._runner_done)
        if waiter not in done:
            log.warning(
                "discord: not connected after %.0f s; still trying in the background",
                self.settings.connect_timeout_s,
            )

    async def _run(self) -> None:
        """``client.start`` with the login retried while Discord is unreachable."""
        delay = 1.0
        while True:
            try:
                await self.client.login(self.token)
                break
            except discord.LoginFailure:
                raise PalaverError(
                    "Discord rejected DISCORD_BOT_TOKEN (401 Unauthorized); copy the bot "
                    "token again from the Developer Portal (Bot > Reset Token)"
                ) from None
            except discord.HTTPException as error:
                if error.status < 500:
                    raise PalaverError(f"Discord refused the login: {error}") from None
                log.warning("discord: login failed (%s); retrying in %.0f s", error, delay)
            except (OSError, aiohttp.ClientError, TimeoutError) as error:
                log.warning("discord: cannot reach Discord (%r); retrying in %.0f s", error, delay)
            await self.client.http.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)
        try:
            await self.client.connect(reconnect=True)
        except discord.PrivilegedIntentsRequired:
            raise PalaverError(
                "Discord refused the Message Content intent: enable it in the Developer "
                "Portal (Bot > Privileged Gateway Intents > Message Content Intent), or set "
                "discord.message_content = false (guild messages are then seen only when "
                "they mention the bot)"
            ) from None

    def _runner_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "discord: the client stopped: %s; the other interfaces keep running",
            task.exception(),
        )

    async def stop(self, grace: float) -> None:
        """Stop starting turns, let those in flight finish (at most ``grace`` s), close."""
        self._accepting = False
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("discord: %d turns cut off by shutdown", len(pending))
        await self.client.close()
        if self._runner is not None:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._runner, 5.0)

    @contextlib.asynccontextmanager
    async def _in_flight(self) -> AsyncIterator[None]:
        """Count the current event's task as a turn in flight, for ``stop``."""
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            yield
        finally:
            self._inflight.discard(task)

    @contextlib.asynccontextmanager
    async def _chat_turn(self, key: ChatKey) -> AsyncIterator[None]:
        """Events of one chat in arrival order (discord.py runs each in its own task)."""
        lock = self._chat_locks.get(key)
        if lock is None:
            lock = self._chat_locks[key] = asyncio.Lock()
        async with self._in_flight(), lock:
            yield

    # -- slash commands ------------------------------------------------------------

    async def sync_commands(self) -> None:
        """Register the slash commands: in the configured guilds (instant), else globally
        (Discord may take up to an hour to show global changes). A failure is logged, not
        fatal: the bot still answers messages."""
        tree = self.client.tree
        try:
            if self.settings.command_guilds:
                for guild_id in self.settings.command_guilds:
                    guild = discord.Object(guild_id)
                    tree.copy_global_to(guild=guild)
                    await tree.sync(guild=guild)
            else:
                await tree.sync()
        except discord.HTTPException as error:
            log.warning("discord: could not register slash commands: %s", error)

    def _register_commands(self) -> None:
        tree = self.client.tree

        @tree.command(name="ask", description="Ask Claude something in this conversation")
        @app_commands.describe(prompt="What to ask")
        async def ask(interaction: Interaction, prompt: str) -> None:
            await self.on_ask(interaction, prompt)

        @tree.command(name="export", description="This conversation as a file")
        @app_commands.rename(kind="format")
        @app_commands.describe(kind="Markdown to read (the default), JSON to process")
        @app_commands.choices(
            kind=[
                app_commands.Choice(name="Markdown", value="markdown"),
                app_commands.Choice(name="JSON", value="json"),
            ]
        )
        async def export(interaction: Interaction, kind: str = "markdown") -> None:
            await self.on_command(interaction, "export", kind)

        infos = {info.name: info for info in self.commands.infos}
        for name in SLASH_COMMANDS:
            info = infos[name]
            tree.add_command(
                app_commands.Command(
                    name=name,
                    description=_describe(info.description),
                    callback=self._command_callback(name),
                )
            )

    def _command_callback(self, name: str) -> Callable[[Interaction], Coroutine[Any, Any, None]]:
        async def callback(interaction: Interaction) -> None:
            await self.on_command(interaction, name)

        return callback

    async def on_command(self, interaction: Interaction, name: str, argument: str = "") -> None:
        """A shared command: acknowledge at once (ephemeral where private), then answer."""
        actor = actor_of(interaction.user, interaction.channel)
        access = self.turn.access
        info = next((i for i in self.commands.infos if i.name == name), None)
        private = (
            name in EPHEMERAL_COMMANDS
            or not access.allows(actor)
            or (info is not None and info.admin_only and not access.is_admin(actor))
        )
        if not await self._acknowledge(interaction, ephemeral=private):
            return
        key = chat_key(interaction.channel, interaction.channel_id)
        async with self._chat_turn(key):
            reply = await self.commands.run(name, argument, key, actor)
            try:
                await _send_command_reply(_InteractionTarget(interaction, private), reply)
            except DELIVERY_ERRORS as error:
                log.warning("discord: could not answer /%s in %s: %r", name, key.ref, error)

    async def on_ask(self, interaction: Interaction, prompt: str) -> None:
        """/ask: a turn like a message, answered in the deferred response."""
        actor = actor_of(interaction.user, interaction.channel)
        allowed = self.turn.access.allows(actor)
        if not await self._acknowledge(interaction, ephemeral=not allowed):
            return
        key = chat_key(interaction.channel, interaction.channel_id)
        incoming = Incoming(
            key,
            actor,
            prompt,
            # The interaction id is a snowflake like a message id: a replayed
            # INTERACTION_CREATE is the same turn.
            platform_message_id=str(interaction.id),
            is_group=interaction.guild_id is not None,
            metadata={"slash_command": "ask"},
        )
        async with self._chat_turn(key):
            try:
                await self._turn(
                    _InteractionTarget(interaction, not allowed), incoming, must_answer=True
                )
            except DELIVERY_ERRORS as error:
                log.warning("discord: could not answer /ask in %s: %r", key.ref, error)

    async def _acknowledge(self, interaction: Interaction, *, ephemeral: bool) -> bool:
        """Defer within Discord's 3 s window; during shutdown, say so instead."""
        try:
            if not self._accepting:
                await interaction.response.send_message(
                    "I'm restarting; please try again in a minute.", ephemeral=True
                )
                return False
            await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        except DELIVERY_ERRORS as error:
            log.warning("discord: could not acknowledge /%s: %r", _command_name(interaction), error)
            return False
        return True

    # -- messages ------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.id == me.id:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return  # joins, pins, thread starters and other system messages
        key = chat_key(message.channel, message.channel.id)
        async with self._chat_turn(key):
            try:
                await self._on_message(message, key, me)
            except DELIVERY_ERRORS as error:
                log.warning("discord: could not answer in %s: %r", key.ref, error)

    async def _on_message(
        self, message: discord.Message, key: ChatKey, me: discord.ClientUser
    ) -> None:
        actor = actor_of(message.author, message.channel)
        in_guild = message.guild is not None
        addressed = not message.author.bot and (
            not in_guild or self.settings.guild_mode == "all" or self._addressed(message, me)
        )
        if not self.turn.access.allows(actor):
            # Nothing of a stranger's is read or stored; one notice an hour, when addressed.
            if addressed and self._notices.take(("denied", actor.user_id), DENIED_NOTICE_S):
                await self._send(message, self.turn.access.denied_message(actor))
            return
        text = readable_content(message, strip_user_id=me.id if addressed else None)
        metadata = _metadata(message)
        if not addressed or not self._accepting:
            # Seen, not answered: kept for the context, with who said it.
            names = [a.filename for a in message.attachments]
            seen = text or (f"(sent {', '.join(names)})" if names else "")
            if seen:
                await self.turn.observe(
                    Incoming(key, actor, seen, str(message.id), in_guild, metadata)
                )
            if addressed:
                await self._send(message, RESTARTING)
            return

        command = parse_command(text)
        if command is not None:
            reply = await self.commands.run(*command, key, actor)
            if reply.private and in_guild:
                await self._answer_privately(message, command[0], reply)
            else:
                await _send_command_reply(_ChannelTarget(message), reply)
            return

        files, refused = await self._read_attachments(message)
        if refused:
            await self._send(message, self._unsupported_note(refused))
        text = "\n\n".join(part for part in (text, *files) if part)
        if not text:
            if not refused:
                await self._send(message, "Yes? Write your question in the same message.")
            return
        incoming = Incoming(key, actor, text, str(message.id), in_guild, metadata)
        await self._turn(_ChannelTarget(message), incoming, must_answer=False)

    async def _answer_privately(
        self, message: discord.Message, name: str, reply: CommandReply
    ) -> None:
        """A reply only for the asker, to a command typed in a guild channel: by DM."""
        try:
            await _send_command_reply(_DirectTarget(message.author), reply)
        except discord.Forbidden:
            await self._send(
                message,
                f"That answer is only for you, and your DMs are closed: use the /{name} "
                "slash command instead, whose answer only you can see.",
            )
        else:
            await self._send(message, "I've sent you the answer in a DM.")

    def _addressed(self, message: discord.Message, me: discord.ClientUser) -> bool:
        """Mentioned (as a user or through the bot's own role), or replied to."""
        if any(user.id == me.id for user in message.mentions):
            return True
        guild = message.guild
        own_role = guild.self_role if guild is not None else None
        if own_role is not None and own_role in message.role_mentions:
            return True
        reference = message.reference
        if reference is not None and isinstance(reference.resolved, discord.Message):
            return reference.resolved.author.id == me.id
        return False

    async def _read_attachments(self, message: discord.Message) -> tuple[list[str], list[str]]:
        """Text files as blocks for the prompt, and the names of what could not be read."""
        files: list[str] = []
        refused: list[str] = []
        refused += (f"a sticker ({sticker.name})" for sticker in message.stickers)
        for attachment in message.attachments:
            if not _TEXT_FILES.is_text(attachment.filename, attachment.content_type):
                refused.append(attachment.filename)
                continue
            if attachment.size > self.settings.max_attachment_bytes:
                refused.append(f"{attachment.filename} (too large)")
                continue
            try:
                data = await attachment.read()
            except DELIVERY_ERRORS as error:
                log.warning("could not download %s: %s", attachment.filename, error)
                refused.append(f"{attachment.filename} (the download failed; please resend it)")
                continue
            content = decode_text(data)
            if content is None:
                refused.append(f"{attachment.filename} (not UTF-8 text)")
                continue
            files.append(file_block(attachment.filename, content))
        return files, refused

    def _unsupported_note(self, refused: list[str]) -> str:
        limit = self.settings.max_attachment_bytes
        size = f"{limit // 1000:,} KB" if limit >= 1000 else f"{limit} bytes"
        return (
            f"I skipped {', '.join(refused)}: I can read text files (.txt, .md, .py, .json, "
            f".csv and other plain text, UTF-8, up to {size}); images, audio, video and other "
            "files are not supported."
        )

    async def _send(self, message: discord.Message, text: str) -> None:
        await _ChannelTarget(message).send(text)

    # -- the turn and its reply ----------------------------------------------------

    async def _turn(self, target: _Target, incoming: Incoming, *, must_answer: bool) -> None:
        """Run the shared turn with a streamed reply, and show how it ended.

        A message need not be answered: a duplicate gets nothing, and the rate-limit notice
        comes at most once per ``RATE_NOTICE_S`` per user. A slash command must be (its
        "thinking..." would hang), so it always gets some text.
        """
        stream = _Stream(target, self.settings.stream_edit_interval_s)
        stream.begin()
        try:
            result = await self.turn.handle(incoming, on_progress=stream.progress)
        except Exception:
            log.exception("discord: the turn failed in %s", incoming.key.ref)
            result = TurnResult(Outcome.FAILED, INTERNAL_ERROR)
        except BaseException:
            await stream.abort()
            raise
        final = result.text
        if result.outcome in (Outcome.DUPLICATE, Outcome.STORED):
            final = ""
        elif result.outcome is Outcome.RATE_LIMITED and not must_answer:
            notice = ("rate", incoming.actor.user_id)
            final = result.text if self._notices.take(notice, RATE_NOTICE_S) else ""
        elif result.outcome is Outcome.FAILED and stream.latest.strip():
            final = f"{stream.latest}\n\n{result.text}"  # keep what was already shown
        if not final and must_answer:
            final = "Already answered."
        await stream.finish(final)


class _Target(Protocol):
    """Where a reply goes: a channel (replying to a message) or an interaction."""

    async def send(self, text: str, file: discord.File | None = None) -> Sent: ...

    async def typing(self) -> None: ...


class _ChannelTarget:
    def __init__(self, message: discord.Message) -> None:
        self.message = message
        self._replied = False

    async def send(self, text: str, file: discord.File | None = None) -> Sent:
        extra: dict[str, Any] = {} if file is None else {"file": file}
        if self.message.guild is not None and not self._replied:
            # In a shared channel, the first message shows which one it answers; if the
            # question was deleted meanwhile, the answer still goes out, unattached.
            self._replied = True
            reference = self.message.to_reference(fail_if_not_exists=False)
            extra.update(reference=reference, mention_author=False)
        return await self.message.channel.send(text, **extra)

    async def typing(self) -> None:
        async with self.message.channel.typing():
            await asyncio.Event().wait()  # until cancelled; discord.py repeats every 5 s


class _DirectTarget:
    """The asker's DMs, for an answer only they may see."""

    def __init__(self, user: discord.User | discord.Member) -> None:
        self.user = user

    async def send(self, text: str, file: discord.File | None = None) -> Sent:
        extra: dict[str, Any] = {} if file is None else {"file": file}
        return await self.user.send(text, **extra)

    async def typing(self) -> None:
        """Nothing to show: the answer is ready when it is sent."""


class _InteractionTarget:
    def __init__(self, interaction: Interaction, ephemeral: bool) -> None:
        self.interaction = interaction
        self.ephemeral = ephemeral

    async def send(self, text: str, file: discord.File | None = None) -> Sent:
        # The first follow-up fills in the deferred "thinking..." message.
        extra: dict[str, Any] = {} if file is None else {"file": file}
        return await self.interaction.followup.send(
            text, ephemeral=self.ephemeral, wait=True, **extra
        )

    async def typing(self) -> None:
        """The deferred response already shows "thinking..."."""


class _Stream:
    """A reply that grows: shown in one message edited at a throttled rate, continued in
    further messages past Discord's 2,000 characters; the typing indicator runs until the
    first message appears.

    Edits are made by one flusher task, so a slow Discord never slows the model stream,
    and a send is never cancelled halfway (which could post a message twice).
    """

    def __init__(self, target: _Target, interval: float) -> None:
        self.target = target
        self.interval = interval
        self.latest = ""
        self._sent: list[Sent] = []
        self._shown: list[str] = []
        self._finished = asyncio.Event()
        self._typing: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None

    def begin(self) -> None:
        self._typing = asyncio.create_task(self._keep_typing())

    async def progress(self, text: str) -> None:
        self.latest = text
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_periodically())

    async def _keep_typing(self) -> None:
        try:
            await asyncio.sleep(TYPING_AFTER_S)
            await self.target.typing()
        except DELIVERY_ERRORS as error:
            log.debug("discord: typing indicator failed: %r", error)

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
        chunks = _close_fence(split_markdown(text, DISCORD_LIMIT))
        for index, chunk in enumerate(chunks):
            if index < len(self._sent):
                if self._shown[index] != chunk:
                    self._sent[index] = await self._sent[index].edit(content=chunk)
                    self._shown[index] = chunk
                continue
            self._sent.append(await self.target.send(chunk))
            self._shown.append(chunk)
            self._stop_typing()
        for extra in self._sent[len(chunks) :]:  # the text shrank (a retried stream)
            await extra.delete()
        del self._sent[len(chunks) :], self._shown[len(chunks) :]

    def _stop_typing(self) -> None:
        if self._typing is not None:
            self._typing.cancel()
            self._typing = None

    async def finish(self, text: str) -> None:
        """Show ``text`` as the final reply (nothing if empty: a duplicate)."""
        self._finished.set()
        if self._flusher is not None:
            await self._flusher
        self._stop_typing()
        if text.strip():
            await self._render(text)

    async def abort(self) -> None:
        self._finished.set()
        self._stop_typing()
        if self._flusher is not None:
            self._flusher.cancel()


async def _send_command_reply(target: _Target, reply: CommandReply) -> None:
    """The text in as many messages as it takes; a file rides on the last one."""
    chunks = split_markdown(reply.text, DISCORD_LIMIT) or ["Done."]
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        file = reply.file if last else None
        await target.send(chunk, None if file is None else _file(file.name, file.data))


# -- translation helpers --------------------------------------------------------------


def chat_key(channel: object, channel_id: int | None) -> ChatKey:
    """The session key of a channel: threads are keyed under their parent channel."""
    if isinstance(channel, discord.Thread):
        return ChatKey(INTERFACE, str(channel.parent_id), str(channel.id))
    return ChatKey(INTERFACE, str(channel_id))


def actor_of(user: discord.User | discord.Member, channel: object) -> Actor:
    """The person, with the ids ``access`` lists may name to let them in: in a guild,
    the guild, the channel (and a thread's parent) and the member's roles; in a DM, none
    (a DM needs the user in ``allowed_users``: a guild's allowance stays in the guild)."""
    groups: list[str] = []
    if isinstance(user, discord.Member):
        groups.append(str(user.guild.id))
        if isinstance(channel, discord.Thread):
            groups.append(str(channel.parent_id))
        if isinstance(channel, discord.abc.GuildChannel | discord.Thread):
            groups.append(str(channel.id))
        # Member.roles includes @everyone, whose id is the guild's id.
        groups += (str(role.id) for role in user.roles)
    return Actor(INTERFACE, str(user.id), user.display_name, tuple(dict.fromkeys(groups)))


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


_MENTION = re.compile(r"<(@[!&]?|#)(\d+)>")


def readable_content(message: discord.Message, *, strip_user_id: int | None = None) -> str:
    """The text with mentions as names (``<@123>`` -> ``@alice``) for the model; a leading
    mention of ``strip_user_id`` (the bot, when addressed) is removed."""
    text = message.content
    if strip_user_id is not None:
        own_role = message.guild.self_role if message.guild is not None else None
        lead = rf"^\s*<@!?{strip_user_id}>" + (rf"|^\s*<@&{own_role.id}>" if own_role else "")
        text = re.sub(lead, "", text)
    users = {u.id: u.display_name for u in message.mentions}
    roles = {r.id: r.name for r in message.role_mentions}
    channels = {c.id: getattr(c, "name", str(c.id)) for c in message.channel_mentions}

    def name(match: re.Match[str]) -> str:
        kind, ident = match.group(1), int(match.group(2))
        if kind == "#":
            return f"#{channels[ident]}" if ident in channels else match.group(0)
        if kind == "@&":
            return f"@{roles[ident]}" if ident in roles else match.group(0)
        return f"@{users[ident]}" if ident in users else match.group(0)

    return _MENTION.sub(name, text).strip()


def _metadata(message: discord.Message) -> dict[str, Any] | None:
    meta: dict[str, Any] = {}
    if message.attachments:
        meta["attachments"] = [
            {"filename": a.filename, "size": a.size, "content_type": a.content_type}
            for a in message.attachments
        ]
    if message.reference is not None and message.reference.message_id is not None:
        meta["reply_to"] = str(message.reference.message_id)
    return meta or None


def _describe(description: str) -> str:
    """A shared command's description for Discord's picker (no Telegram-only aliases)."""
    return re.sub(r"\s*\(alias[^)]*\)", "", description)[:100] or "A Palaver command"


def _command_name(interaction: Interaction) -> str:
    command = interaction.command
    return command.name if command is not None else "?"


def _file(name: str, data: bytes) -> discord.File:
    return discord.File(io.BytesIO(data), filename=name)
