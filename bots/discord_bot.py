"""The Discord interface: discord.py in front of the conversation core.

It translates, and decides nothing about a conversation: each message or slash
command becomes an ``Inbound`` for the dispatcher, and replies go out through the
ports of bots.discord_outbound; slash commands are made from the core's registry
(bots.discord_commands).

What is Discord's, and so decided here:

- **Chats** and people: see bots.discord_events.
- **Addressed.** In DMs, every message; in guild channels and threads, a message that
  mentions the bot (as a user or through its managed role) or replies to one of its
  messages, or every message with ``guild_mode = "all"``. Bots never start a turn.
  Seeing guild messages that do not mention the bot needs the privileged Message
  Content intent (``message_content``). Edited messages are not passed on.
- **Slash commands** are acknowledged at once (deferred, well within Discord's 3 s;
  ephemerally when the core says the answer is for the asker alone), then answered in
  follow-ups. ``/ask`` is a turn like a message.
- **Lifecycle.** The client runs as a task of the one loop. A rejected token or a
  missing privileged intent at start is a ``PalaverError``; Discord out of reach at
  start is retried in the background (after ``connect_timeout_s`` the other
  interfaces go on); after start discord.py reconnects and resumes by itself, and a
  fatal gateway error is logged while the other interfaces keep running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import discord
from discord import app_commands
from discord.utils import MISSING

from bots.config import DiscordSettings
from bots.discord_commands import build_tree
from bots.discord_events import INTERFACE, actor_of, attachments_of, chat_key, readable_content
from bots.discord_outbound import DELIVERY_ERRORS, ChannelPort, InteractionPort, PortSettings
from conversation.dispatcher import Dispatcher
from conversation.inbound import Inbound
from conversation.outbound import Outbound
from conversation.registry import CommandCall
from memory.errors import PalaverError
from memory.types import ChatKey

log = logging.getLogger(__name__)

# discord.py's waits: for the GUILD_CREATEs after READY, and before a re-IDENTIFY (Discord
# allows one IDENTIFY per 5 s). Module constants so tests against a local fake can shorten them.
GUILD_READY_TIMEOUT_S = 2.0
IDENTIFY_DELAY_S = 5.0
_RETRY_MAX_S = 60.0

Interaction = discord.Interaction[discord.Client]


class PalaverClient(discord.Client):
    """discord.Client whose events go to the adapter; the subclass exists for the hooks."""

    def __init__(
        self,
        bot: DiscordBot,
        intents: discord.Intents,
        *,
        guild_ready_timeout: float,
        http_trace: aiohttp.TraceConfig | None = None,
    ) -> None:
        super().__init__(
            intents=intents,
            http_trace=http_trace or aiohttp.TraceConfig(),  # an empty one counts nothing
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
    """The Discord interface (see the module docstring)."""

    name = INTERFACE

    def __init__(
        self,
        settings: DiscordSettings,
        token: str,
        dispatcher: Dispatcher,
        *,
        guild_ready_timeout: float | None = None,
        trace: aiohttp.TraceConfig | None = None,  # counts Discord's API errors (metrics)
    ) -> None:
        self.token = token
        self.settings = settings
        self.dispatcher = dispatcher
        intents = discord.Intents.default()
        intents.message_content = settings.message_content
        self.client = PalaverClient(
            self,
            intents,
            guild_ready_timeout=GUILD_READY_TIMEOUT_S
            if guild_ready_timeout is None
            else guild_ready_timeout,
            http_trace=trace,
        )
        self.ready = asyncio.Event()
        self.ports = PortSettings(settings.stream_edit_interval_s, self._pressed)
        self._runner: asyncio.Task[None] | None = None
        build_tree(self.client.tree, dispatcher.registry, self.on_slash, self._call_of)
        self._add_ask()

    @property
    def connected(self) -> bool:
        """Connected to the gateway and ready (readiness)."""
        return self.ready.is_set() and self.client.is_ready() and not self.client.is_closed()

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        """Log in and connect in a task of this loop; return once ready (or still trying).

        Waits at most ``connect_timeout_s`` for the gateway's READY; if Discord is slow
        or unreachable, the client keeps trying in the background rather than holding
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
        """``client.start``, with the login retried while Discord is unreachable."""
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
            # The failed login's HTTP session closed its connector with it; the next
            # login must make both afresh, or it fails with "Session is closed".
            await self.client.http.close()
            self.client.http.connector = MISSING
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_S)
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

    async def stop_receiving(self) -> None:
        """Nothing to pause: events that arrive now meet a core that is draining."""

    async def stop(self) -> None:
        await self.client.close()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(self._runner, 5.0)

    def outbound(self, key: ChatKey, reply_to: str | None) -> Outbound:
        channel = self.client.get_partial_messageable(int(key.thread_id or key.chat_id))
        question = channel.get_partial_message(int(reply_to)) if reply_to else None
        return ChannelPort(
            channel,
            question=question,
            author=None,
            settings=self.ports,
        )

    def is_private(self, key: ChatKey) -> bool:
        channel = self.client.get_channel(int(key.chat_id))
        return isinstance(channel, discord.DMChannel)

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

    # -- slash commands ------------------------------------------------------------

    def _add_ask(self) -> None:
        @self.client.tree.command(name="ask", description="Ask Claude something here")
        @app_commands.describe(prompt="What to ask")
        async def ask(interaction: Interaction, prompt: str) -> None:
            await self.on_interaction(interaction, prompt, None)

    def _call_of(self, interaction: Interaction) -> CommandCall:
        actor = actor_of(interaction.user, interaction.channel)
        return CommandCall(
            chat_key(interaction.channel, interaction.channel_id),
            actor,
            "",
            interaction.guild_id is None,
            self.dispatcher.access.is_admin(actor),
        )

    async def on_slash(self, interaction: Interaction, name: str, argument: str) -> None:
        await self.on_interaction(interaction, f"/{name} {argument}".strip(), (name, argument))

    async def on_interaction(
        self, interaction: Interaction, text: str, command: tuple[str, str] | None
    ) -> None:
        """Acknowledge at once (ephemerally where the answer is the asker's alone), then
        hand the command or question to the core."""
        inbound = Inbound(
            key=chat_key(interaction.channel, interaction.channel_id),
            actor=actor_of(interaction.user, interaction.channel),
            text=text,
            # An interaction id is a snowflake like a message id: a replayed
            # INTERACTION_CREATE is the same question.
            message_id=str(interaction.id),
            private=interaction.guild_id is None,
            addressed=True,
            command=command,
            needs_answer=True,
        )
        ephemeral = self.dispatcher.answers_privately(inbound)
        try:
            await interaction.response.defer(ephemeral=ephemeral, thinking=True)
        except DELIVERY_ERRORS as error:
            log.warning("discord: could not acknowledge %s: %r", text[:40], error)
            return
        port = InteractionPort(interaction, ephemeral, self.ports)
        await self.dispatcher.handle(inbound, port)

    def _pressed(self, interaction: Interaction, data: str) -> tuple[str, bool]:
        """A button of the core's ``offer``: answered at once, outside the chat's lane."""
        key = chat_key(interaction.channel, interaction.channel_id)
        said = self.dispatcher.choose(key, actor_of(interaction.user, interaction.channel), data)
        return said, said.startswith(("Approved", "Denied"))

    # -- messages ------------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> None:
        translated = self.translate(message)
        if translated is not None:
            await self.dispatcher.handle(*translated)

    def translate(self, message: discord.Message) -> tuple[Inbound, ChannelPort] | None:
        """A message as the core's inbound message and the port to answer it, or None
        for what the core never sees (the bot's own messages, system messages)."""
        me = self.client.user
        if me is None or message.author.id == me.id:
            return None
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return None  # joins, pins, thread starters and other system messages
        in_guild = message.guild is not None
        addressed = not message.author.bot and (
            not in_guild or self.settings.guild_mode == "all" or self._addressed(message, me)
        )
        reference = message.reference
        inbound = Inbound(
            key=chat_key(message.channel, message.channel.id),
            actor=actor_of(message.author, message.channel),
            text=readable_content(message, strip_user_id=me.id if addressed else None),
            message_id=str(message.id),
            private=not in_guild,
            addressed=addressed,
            attachments=attachments_of(message),
            reply_to=str(reference.message_id) if reference and reference.message_id else None,
        )
        port = ChannelPort(
            message.channel,
            question=message if in_guild else None,
            author=message.author,
            settings=self.ports,
        )
        return inbound, port

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
