"""Conformance of the fake Discord with the real discord.py client.

If these pass, the fake speaks enough of Discord's REST and gateway protocols for discord.py's
own login, caching, upload, retry, interaction and RESUME code paths to work unmodified, so
bot tests built on it exercise the library rather than a mock of it.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import zlib
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import aiohttp
import discord
import pytest
from discord import app_commands

from tests.fakes.discord_api import FakeDiscord

T = TypeVar("T")

TOKEN = "fake-token"
GUILD = 4_242_424_242_424_242
CHANNEL = 5_353_535_353_535_353
USER = 7_777_777_777_777_777


class Bot(discord.Client):
    """A minimal bot: records what it receives, answers two slash commands."""

    def __init__(self) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        # A short guild_ready_timeout: discord.py otherwise waits 2 s after the last GUILD_CREATE.
        super().__init__(intents=intents, guild_ready_timeout=0.05)
        self.tree = app_commands.CommandTree(self)
        self.inbox: asyncio.Queue[discord.Message] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.is_up = asyncio.Event()
        self.slow_seconds = 0.0

        @self.tree.command(name="ask", description="Ask Claude something")
        async def ask(interaction: discord.Interaction, prompt: str, depth: int = 1) -> None:
            await asyncio.sleep(self.slow_seconds)
            try:
                await interaction.response.defer(ephemeral=True)
            except discord.HTTPException as exc:
                await self.errors.put(exc)
                return
            await interaction.followup.send(f"answer to {prompt} at depth {depth}")

        @self.tree.command(
            name="reset", description="Forget this channel", guild=discord.Object(GUILD)
        )
        async def reset(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("forgotten")
            await interaction.edit_original_response(content="forgotten!")

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every non-initial IDENTIFY; not worth it against a fake."""

    async def on_ready(self) -> None:
        self.is_up.set()

    async def on_message(self, message: discord.Message) -> None:
        assert self.user is not None
        if message.author.id != self.user.id:
            await self.inbox.put(message)


async def within(aw: Awaitable[T], seconds: float = 5.0) -> T:
    return await asyncio.wait_for(aw, seconds)


@pytest.fixture
async def dc() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(token=TOKEN, heartbeat_interval_ms=1000) as fake:
        fake.add_guild(
            GUILD, "Palaver HQ", channels=[(CHANNEL, "general")], members=[(USER, "alice")]
        )
        with fake.patch_discord():
            yield fake
        assert fake.errors == [] and fake.unhandled == []


@pytest.fixture
async def bot(dc: FakeDiscord) -> AsyncIterator[Bot]:
    client = Bot()
    task = asyncio.create_task(client.start(TOKEN))
    ready = asyncio.create_task(client.is_up.wait())
    try:
        done, _ = await asyncio.wait({task, ready}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            task.result()  # surfaces the startup error
        assert ready in done, "bot never became ready"
        yield client
    finally:
        ready.cancel()
        await client.close()
        await within(task)


async def test_bad_token_is_login_failure(dc: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.default())
    try:
        with pytest.raises(discord.LoginFailure):
            await client.start("not-the-token")
    finally:
        await client.close()
    assert dc.sent == [("GET", "/users/@me", None)]
    assert dc.identify_count == 0


async def test_ready_caches_guild_channels_and_self(bot: Bot, dc: FakeDiscord) -> None:
    assert bot.user is not None and bot.user.id == dc.bot_id and bot.user.name == "palaver"
    assert bot.application_id == dc.application_id
    guild = bot.get_guild(GUILD)
    assert guild is not None and guild.name == "Palaver HQ"
    channel = guild.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel) and channel.name == "general"
    assert guild.me is not None and guild.me.guild_permissions.send_messages
    # discord.py asked for zlib-stream and inflated our frames.
    assert dc.gateway_connects == ["/gateway?v=10&encoding=json&compress=zlib-stream"]
    assert dc.identify_count == 1
    fetched = await bot.fetch_channel(CHANNEL)
    assert isinstance(fetched, discord.TextChannel) and fetched.guild.id == GUILD


async def test_dm_message_reply_and_edit(bot: Bot, dc: FakeDiscord) -> None:
    await dc.user_message(None, "hello bot", author_id=USER, username="alice")
    message = await within(bot.inbox.get())
    assert isinstance(message.channel, discord.DMChannel)
    assert message.content == "hello bot" and message.author.id == USER

    sent = await message.channel.send("hi alice")
    edited = await sent.edit(content="hi again, alice")  # returns a new Message

    [stored] = dc.channel_messages(message.channel.id)
    assert stored.content == "hi again, alice" and stored.history == ["hi alice"]
    assert stored.id == sent.id == edited.id and edited.content == "hi again, alice"


async def test_guild_mention_reply_and_typing(bot: Bot, dc: FakeDiscord) -> None:
    await dc.user_message(CHANNEL, "ping", author_id=USER, username="alice", mentions_bot=True)
    message = await within(bot.inbox.get())
    assert bot.user in message.mentions and isinstance(message.author, discord.Member)
    async with message.channel.typing():
        reply = await message.reply("pong")
    assert reply.reference is not None and reply.reference.message_id == message.id
    assert [cid for cid, _ in dc.typing] == [CHANNEL]
    assert [m.content for m in dc.channel_messages(CHANNEL)] == ["pong"]


async def test_invalid_messages_are_rejected_like_discord(bot: Bot, dc: FakeDiscord) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert too_long.value.status == 400 and too_long.value.code == 50035
    assert "content" in too_long.value.text
    with pytest.raises(discord.HTTPException) as empty:
        await channel.send("")
    assert empty.value.code == 50006
    dc.fail(f"/channels/{CHANNEL}/messages", 403, 50013, "Missing Permissions")
    with pytest.raises(discord.Forbidden) as forbidden:
        await channel.send("not allowed")
    assert forbidden.value.code == 50013
    assert dc.channel_messages(CHANNEL) == []


async def test_file_upload_and_attachment_download(bot: Bot, dc: FakeDiscord) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    sent = await channel.send("report", file=discord.File(io.BytesIO(b"%PDF-1.7"), "report.pdf"))
    [stored] = dc.channel_messages(CHANNEL)
    assert stored.attachments[0].filename == "report.pdf"
    assert stored.attachments[0].data == b"%PDF-1.7"
    assert sent.attachments[0].content_type == "application/pdf"
    assert await sent.attachments[0].read() == b"%PDF-1.7"

    upload = ("notes.txt", b"user bytes", "text/plain")
    await dc.user_message(
        CHANNEL, "see attached", author_id=USER, username="alice", attachments=[upload]
    )
    message = await within(bot.inbox.get())
    [attachment] = message.attachments
    assert attachment.filename == "notes.txt" and attachment.size == len(b"user bytes")
    assert await attachment.read() == b"user bytes"


async def test_command_sync_registers_global_and_guild_commands(bot: Bot, dc: FakeDiscord) -> None:
    guild_cmds = await bot.tree.sync(guild=discord.Object(GUILD))
    global_cmds = await bot.tree.sync()
    assert [c["name"] for c in dc.commands[GUILD]] == ["reset"]
    assert [c["name"] for c in dc.commands[None]] == ["ask"]
    assert [o["name"] for o in dc.commands[None][0]["options"]] == ["prompt", "depth"]
    assert global_cmds[0].id == int(dc.commands[None][0]["id"]) and guild_cmds[0].guild_id == GUILD
    again = await bot.tree.sync()
    assert again[0].id == global_cmds[0].id  # overwrite keeps the ids of unchanged commands


async def test_slash_command_defer_ephemeral_then_followup(bot: Bot, dc: FakeDiscord) -> None:
    await bot.tree.sync()
    payload = await dc.slash_command(
        "ask", {"prompt": "why", "depth": 3}, channel_id=CHANNEL, author_id=USER, username="alice"
    )
    record = dc.interaction_responses(payload["id"])
    await dc.wait_for(lambda: record.followups)
    assert record.callback_type == 5 and record.ephemeral
    assert record.ack_delay is not None and record.ack_delay < dc.interaction_deadline
    [followup] = record.followups
    assert followup.content == "answer to why at depth 3" and followup.ephemeral
    assert followup is record.original  # the first follow-up fills the "thinking" message
    assert dc.channel_messages(CHANNEL) == []  # ephemeral: nobody else sees it


async def test_guild_slash_command_message_and_edit_original(bot: Bot, dc: FakeDiscord) -> None:
    await bot.tree.sync(guild=discord.Object(GUILD))
    payload = await dc.slash_command("reset", channel_id=CHANNEL, author_id=USER, username="alice")
    record = dc.interaction_responses(payload["id"])
    await dc.wait_for(lambda: record.original_edits)
    assert record.callback_type == 4 and not record.ephemeral
    assert record.original is not None and record.original.content == "forgotten!"
    assert [m.content for m in dc.channel_messages(CHANNEL)] == ["forgotten!"]


async def test_late_interaction_ack_is_unknown_interaction(bot: Bot, dc: FakeDiscord) -> None:
    await bot.tree.sync()
    dc.interaction_deadline = 0.2
    bot.slow_seconds = 0.3
    payload = await dc.slash_command("ask", {"prompt": "slow"}, channel_id=CHANNEL)
    error = await within(bot.errors.get())
    assert isinstance(error, discord.NotFound) and error.code == 10062
    record = dc.interaction_responses(payload["id"])
    assert record.callback_type is None and record.late_callbacks[0] >= 0.2


async def test_rate_limit_is_retried(bot: Bot, dc: FakeDiscord) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    dc.rate_limit(f"POST /channels/{CHANNEL}/messages", times=1, retry_after=0.2)
    started = time.monotonic()
    await channel.send("patience")
    assert time.monotonic() - started >= 0.2
    posts = [c for c in dc.sent if c == ("POST", f"/channels/{CHANNEL}/messages", c.json)]
    assert len(posts) == 2 and [m.content for m in dc.channel_messages(CHANNEL)] == ["patience"]


async def test_concurrent_requests_are_not_serialized(bot: Bot, dc: FakeDiscord) -> None:
    channel = bot.get_channel(CHANNEL)
    assert isinstance(channel, discord.TextChannel)
    dc.latency = 0.2
    started = time.monotonic()
    await asyncio.gather(*(channel.send(f"m{i}") for i in range(10)))
    # discord.py sends one request to learn the bucket, then the rest at once: ~2
    # latencies; one at a time would take 10.
    assert time.monotonic() - started < 10 * 0.2
    assert len(dc.channel_messages(CHANNEL)) == 10


@pytest.mark.parametrize("how", ["drop", "close"])
async def test_disconnect_resumes_and_replays_missed_events_once(
    bot: Bot, dc: FakeDiscord, how: str
) -> None:
    if how == "drop":
        await dc.drop_connection(hold=True)
    else:
        await dc.disconnect_gateway(4000, hold=True)
    await dc.user_message(None, "sent while away", author_id=USER, username="alice")
    dc.release_gateway()
    await dc.wait_for(lambda: dc.resume_count == 1)
    missed = await within(bot.inbox.get())
    assert missed.content == "sent while away"

    await dc.user_message(None, "after resume", author_id=USER, username="alice")
    after = await within(bot.inbox.get())
    assert after.content == "after resume"  # a duplicate replay would have come first
    assert bot.inbox.empty()
    assert dc.identify_count == 1
    assert [url.split("?")[0] for url in dc.gateway_connects] == ["/gateway", "/gateway/resume"]


@pytest.mark.parametrize("op", ["reconnect", "invalid_session"])
async def test_gateway_op7_resumes_and_op9_reidentifies(bot: Bot, dc: FakeDiscord, op: str) -> None:
    if op == "reconnect":
        await dc.request_reconnect()
        await dc.wait_for(lambda: dc.resume_count == 1 and dc.connected)
    else:
        await dc.invalidate_session()
        await dc.wait_for(lambda: dc.identify_count == 2 and dc.connected)
    await dc.user_message(None, "still there?", author_id=USER, username="alice")
    assert (await within(bot.inbox.get())).content == "still there?"


async def test_threads_and_guilds_added_while_connected(bot: Bot, dc: FakeDiscord) -> None:
    thread_id = dc.snowflake()
    dc.add_thread(thread_id, CHANNEL, "long chat")
    await dc.dispatch_thread_create(thread_id)
    await dc.user_message(thread_id, "in a thread", author_id=USER, username="alice")
    message = await within(bot.inbox.get())
    assert isinstance(message.channel, discord.Thread) and message.channel.parent_id == CHANNEL
    await message.channel.send("thread reply")
    assert [m.content for m in dc.channel_messages(thread_id)] == ["thread reply"]

    dc.add_guild(9_999, "Second", channels=[(9_998, "lobby")])
    await dc.dispatch_guild_create(9_999)
    await dc.user_message(9_998, "hi from lobby", author_id=USER, username="alice")
    message = await within(bot.inbox.get())
    assert message.guild is not None and message.guild.name == "Second"


async def test_guild_content_needs_message_content_intent(dc: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
    inbox: asyncio.Queue[discord.Message] = asyncio.Queue()

    @client.event
    async def on_message(message: discord.Message) -> None:
        await inbox.put(message)

    task = asyncio.create_task(client.start(TOKEN))
    try:
        await dc.wait_for(lambda: dc.connected)
        await dc.user_message(CHANNEL, "secret", author_id=USER, username="alice")
        await dc.user_message(
            CHANNEL, "hey bot", author_id=USER, username="alice", mentions_bot=True
        )
        await dc.user_message(None, "dm text", author_id=USER, username="alice")
        got = [(await within(inbox.get())).content for _ in range(3)]
        assert got == ["", f"<@{dc.bot_id}> hey bot", "dm text"]
    finally:
        await client.close()
        await within(task)


async def test_raw_gateway_protocol(dc: FakeDiscord) -> None:
    """zlib-stream framing, HELLO/heartbeat/READY sequencing, bad RESUME and bad token."""
    url = f"{dc.gateway_url}?v=10&encoding=json&compress=zlib-stream"
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url) as ws:
            inflate = zlib.decompressobj()

            async def receive() -> Any:
                frame = await ws.receive(timeout=5)
                assert frame.type is aiohttp.WSMsgType.BINARY
                assert frame.data.endswith(b"\x00\x00\xff\xff")
                return json.loads(inflate.decompress(frame.data))

            hello = await receive()
            assert hello["op"] == 10 and hello["d"]["heartbeat_interval"] == 1000
            await ws.send_json({"op": 1, "d": None})
            assert (await receive())["op"] == 11
            await ws.send_json({"op": 2, "d": {"token": TOKEN, "intents": 1, "properties": {}}})
            ready, guild = await receive(), await receive()
            assert (ready["t"], ready["s"], guild["t"], guild["s"]) == (
                "READY",
                1,
                "GUILD_CREATE",
                2,
            )
            assert ready["d"]["resume_gateway_url"] == dc.resume_gateway_url

        async with http.ws_connect(dc.gateway_url + "?v=10&encoding=json") as ws:
            assert (await ws.receive_json(timeout=5))["op"] == 10
            await ws.send_json({"op": 6, "d": {"token": TOKEN, "session_id": "nope", "seq": 1}})
            assert await ws.receive_json(timeout=5) == {"op": 9, "d": False, "s": None, "t": None}

        async with http.ws_connect(dc.gateway_url + "?v=10&encoding=json") as ws:
            await ws.receive_json(timeout=5)
            await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 1, "properties": {}}})
            closing = await ws.receive(timeout=5)
            assert closing.type is aiohttp.WSMsgType.CLOSE and closing.data == 4004
