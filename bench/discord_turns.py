"""Benchmark of Discord turns end to end: prints a table.

    python bench/discord_turns.py [--channels 200] [--messages 10] [--latency 1.0]
                                  [--overhead-channels 1,20] [--overhead-messages 50]
                                  [--layers claude,agent,adapter] [--start staggered,lockstep]
                                  [--postgres URL]

The same measure as bench/telegram_turns.py, through the fake Discord. The bot runs as in
production - Palaver (a SQLite file, or PostgreSQL with --postgres), the Claude agent
through the real anthropic SDK, the real discord.py client on the gateway - in this
process, with one event loop. FakeDiscord (gateway + REST, with the simulated users) and
FakeAnthropic (with a fixed model latency) run in a child process, so that their CPU does
not count as the bot's. In each of N guild channels a user sends M messages that mention
the bot, one after another (the next once the previous one is answered), all channels at
once.

- turns/s: while every channel is active; perfect concurrency gives N / latency.
- host overhead per turn: from discord.py handing the message to the bot to the reply's
  last REST call returning, minus the time spent in the agent (the Messages API call
  through the SDK). It covers the adapter, access and rate checks, two database commits,
  the context, and sending the reply. "e2e" is measured by the fake Discord instead: from
  the user's MESSAGE_CREATE to the reply arriving, minus model time; it adds the gateway
  and the REST round trip.
- what runs: ``claude`` is the whole stack; ``agent`` replaces the SDK with an in-process
  model that only sleeps; ``adapter`` replaces the shared turn too (no memory): the
  Discord adapter and discord.py alone.

The machine's load average is printed with the table: the fakes and other jobs share it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import re
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route
from pydantic import SecretStr

from agents.base import AgentEvent, AgentReply, AgentRequest, TextDelta
from agents.settings import ClaudeSettings
from bench.common import TimedAgent, model_time, turns_row, turns_table
from bots.app import Palaver, freeze_startup_heap
from bots.config import (
    AccessSettings,
    Config,
    DiscordSettings,
    PalaverSettings,
    RateLimitSettings,
    Secrets,
)
from bots.discord_bot import DiscordBot
from bots.turn import Incoming, Outcome, ProgressSink, Turn, TurnResult
from memory.settings import DatabaseSettings
from memory.types import Role, Usage
from tests.fakes.anthropic_api import JSON, FakeAnthropic
from tests.fakes.discord_api import FakeDiscord, FakeMessage

TOKEN = "bench-token"
API_KEY = "bench-key"
GUILD = 9_000_000_000_000_000_000
FIRST_USER = 8_000_000_000_000_000_000
QUESTION = re.compile(r"\bq(\d+)\b")
Row = tuple[str, ...]


def answer_to(question: str) -> str:
    """A reply that names the question it answers (``q<id>``) and ends in a marker, so the
    users can tell the final answer from a streamed partial one."""
    found = QUESTION.findall(question)
    return f"The capital of France is Paris (q{found[-1] if found else 0}). END"


# -- the fakes' process ------------------------------------------------------------------


class Users(FakeDiscord):
    """The fake Discord, plus users who each send their next message once answered.

    With ``stagger``, each user's first message comes at a random moment within that many
    seconds, as real users' do; without, all channels start at the same instant and stay
    in lock step (every reply of a round is due at once: the worst case for one loop).
    """

    def __init__(self, channels: int, messages: int, stagger: float) -> None:
        super().__init__(token=TOKEN)
        self.channels = [GUILD + 1 + i for i in range(channels + 1)]  # the last: warm-up
        self.add_guild(
            GUILD,
            "Bench",
            channels=[(cid, f"c{i}") for i, cid in enumerate(self.channels)],
            members=[(FIRST_USER + i, f"user{i}") for i in range(channels + 1)],
        )
        self.messages_n = messages
        self.stagger = stagger
        self.asked: dict[int, tuple[int, float]] = {}  # channel -> (question id, sent at)
        self.counts: dict[int, int] = {}
        self.started: dict[int, float] = {}
        self.finished: dict[int, float] = {}
        self.replies: list[float] = []
        self.e2e: list[float] = []
        self.pending = channels * messages
        self.done = asyncio.Event()
        self.warm = asyncio.Event()

    async def warm_up(self) -> None:
        """One turn in a channel of its own first: imports, connections, caches."""
        await self._ask(self.channels[-1])
        await self.warm.wait()

    def begin(self) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(4)
        for channel in self.channels[:-1]:
            loop.call_later(rng.uniform(0, self.stagger), self._spawn_ask, channel)

    def _spawn_ask(self, channel: int) -> None:
        task = asyncio.create_task(self._ask(channel))
        task.add_done_callback(lambda t: t.result())

    async def _ask(self, channel: int) -> None:
        n = self.counts.get(channel, 0)
        self.counts[channel] = n + 1
        question = self.snowflake()
        sent = time.perf_counter()
        self.asked[channel] = (question, sent)
        if channel != self.channels[-1]:
            self.started.setdefault(channel, sent)
        index = self.channels.index(channel)
        await self.user_message(
            channel,
            f"question q{question} ({n}): what is the capital of France?",
            author_id=FIRST_USER + index,
            username=f"user{index}",
            mentions_bot=True,
            message_id=question,
        )

    async def _dispatch_message(self, name: str, msg: FakeMessage) -> None:
        await super()._dispatch_message(name, msg)
        if msg.author_id != self.bot_id or not msg.content.endswith(" END"):
            return
        asked = self.asked.get(msg.channel_id)
        match = QUESTION.search(msg.content)
        if asked is None or match is None or int(match.group(1)) != asked[0]:
            return
        del self.asked[msg.channel_id]
        if msg.channel_id == self.channels[-1]:
            self.warm.set()
            return
        now = time.perf_counter()
        self.e2e.append(now - asked[1])
        self.replies.append(now)
        self.pending -= 1
        if self.counts[msg.channel_id] < self.messages_n:
            self._spawn_ask(msg.channel_id)
        else:
            self.finished[msg.channel_id] = now
        if self.pending == 0:
            self.done.set()

    def throughput(self) -> float:
        """Turns per second while every channel is active (all started, none finished)."""
        begin, end = max(self.started.values()), min(self.finished.values())
        if end - begin < 1.0:  # no steady state: count the whole run
            begin, end = min(self.started.values()), max(self.finished.values())
            return len(self.replies) / (end - begin)
        return sum(1 for t in self.replies if begin < t <= end) / (end - begin)


def model_answer(body: JSON) -> str:
    content = body["messages"][-1]["content"]
    text = content if isinstance(content, str) else " ".join(b.get("text", "") for b in content)
    return answer_to(text)


async def serve_fakes(
    channels: int, messages: int, latency: float, stagger: float, pipe: Connection
) -> None:
    users = Users(channels, messages, stagger)
    async with (
        users,
        FakeAnthropic(api_key=API_KEY, latency=latency, responder=model_answer) as claude,
    ):
        pipe.send((users.api_base, users.gateway_url, claude.url))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)  # the bot is up
        await users.warm_up()
        pipe.send("warm")
        await loop.run_in_executor(None, pipe.recv)  # the bot has reset its counters
        cpu = time.process_time()
        users.begin()
        await users.done.wait()
        pipe.send(
            {
                "e2e": users.e2e,
                "rate": users.throughput(),
                "errors": len(users.errors) + len(users.unhandled),
                "fake_cpu": time.process_time() - cpu,
            }
        )
        await loop.run_in_executor(None, pipe.recv)  # the bot has stopped


def fakes_main(
    channels: int, messages: int, latency: float, stagger: float, pipe: Connection
) -> None:
    asyncio.run(serve_fakes(channels, messages, latency, stagger, pipe))


# -- the bot's process -------------------------------------------------------------------


class SleepAgent:
    """An in-process model: waits ``latency`` seconds, then answers (no SDK, no HTTP)."""

    name = "sleep"

    def __init__(self, latency: float) -> None:
        self.latency = latency

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        await asyncio.sleep(self.latency)
        question = [m.text for m in request.context.messages if m.role is Role.USER][-1]
        text = answer_to(question)
        yield TextDelta(text)
        yield AgentReply(text, Usage(100, 5), "sleep")


class AdapterOnlyTurn(Turn):
    """The Discord adapter alone: access from the real turn, no memory, an instant reply."""

    latency = 0.0

    async def handle(
        self, incoming: Incoming, *, on_progress: ProgressSink | None = None
    ) -> TurnResult:
        began = time.perf_counter()
        await asyncio.sleep(self.latency)
        spent = model_time.get(None)
        if spent is not None:
            spent.append(time.perf_counter() - began)
        return TurnResult(Outcome.REPLIED, answer_to(incoming.text))

    async def observe(self, incoming: Incoming) -> TurnResult:
        return TurnResult(Outcome.STORED, "")


class TimedBot(DiscordBot):
    """Records each turn's host overhead: handler time minus model time."""

    overhead: list[float]
    model: list[float]

    async def on_message(self, message: discord.Message) -> None:
        spent: list[float] = []
        model_time.set(spent)
        began = time.perf_counter()
        await super().on_message(message)
        elapsed = time.perf_counter() - began
        if spent:
            self.overhead.append(elapsed - sum(spent))
            self.model.append(sum(spent))


async def run_bot(
    url: str, urls: tuple[str, str, str], pipe: Connection, layer: str, latency: float
) -> dict[str, Any]:
    api_base, gateway_url, claude_url = urls
    # What FakeDiscord.patch_discord does, for a fake in another process.
    Route.BASE = api_base
    DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
    data = Path(tempfile.mkdtemp(prefix="palaver-bench-"))
    config = Config(
        palaver=PalaverSettings(data_dir=data, log_level="WARNING"),
        database=DatabaseSettings(url=url or f"sqlite+aiosqlite:///{data / 'palaver.db'}"),
        access=AccessSettings(allow_everyone=True),
        rate_limit=RateLimitSettings(per_minute=6000, burst=1000),
        claude=ClaudeSettings(base_url=claude_url, max_retries=0),
        discord=DiscordSettings(),
        secrets=Secrets(discord_bot_token=SecretStr(TOKEN), anthropic_api_key=SecretStr(API_KEY)),
    )
    app = Palaver(config)
    await app.start()
    turn = app.turn
    if layer == "claude":
        turn.agent = TimedAgent(turn.agent)
    elif layer == "agent":
        turn.agent = TimedAgent(SleepAgent(latency))
    else:
        turn = AdapterOnlyTurn(turn.manager, turn.agent, turn.access, turn.limiter, turn.settings)
        turn.latency = latency
    bot = TimedBot(config.discord, TOKEN, turn, app.commands, guild_ready_timeout=0.1)
    bot.overhead, bot.model = [], []
    await bot.start()
    freeze_startup_heap()  # as run.py does once everything is up
    loop = asyncio.get_running_loop()
    pipe.send("up")
    await loop.run_in_executor(None, pipe.recv)  # warmed up
    bot.overhead.clear()
    bot.model.clear()
    cpu = time.process_time()
    pipe.send("go")
    result: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
    result["cpu"] = time.process_time() - cpu
    await bot.stop(10.0)
    await app.stop()
    pipe.send("stopped")
    result.update(overhead=bot.overhead, model=bot.model)
    return result


LAYERS = {
    "claude": "full stack, Claude agent via the SDK",
    "agent": "memory + turn, in-process model",
    "adapter": "Discord adapter only",
}


def scenario(
    channels: int, messages: int, latency: float, url: str, layer: str, stagger: bool
) -> Row:
    if url:
        from tests.conftest import reset_postgres

        asyncio.run(reset_postgres(url))
    parent, child = multiprocessing.Pipe()
    fake_latency = latency if layer == "claude" else 0.0
    spread = max(latency, 0.1) if stagger else 0.0
    fakes = multiprocessing.get_context("spawn").Process(
        target=fakes_main, args=(channels, messages, fake_latency, spread, child), daemon=True
    )
    fakes.start()
    urls = parent.recv()
    result = asyncio.run(run_bot(url, urls, parent, layer, latency))
    fakes.join(30)
    return turns_row(LAYERS[layer], channels, messages, latency, stagger, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--channels", type=int, default=200)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument(
        "--overhead-channels", default="1,20", help="zero-latency runs: concurrent channels"
    )
    parser.add_argument("--overhead-messages", type=int, default=50)
    parser.add_argument(
        "--layers",
        default="claude,agent,adapter",
        help="what runs: claude (full stack), agent (in-process model), adapter (Discord only)",
    )
    parser.add_argument(
        "--start", default="staggered,lockstep", help="staggered and/or lockstep first messages"
    )
    parser.add_argument("--postgres", default=os.environ.get("BENCH_DATABASE_URL", ""))
    args = parser.parse_args()
    layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    starts = [start.strip() == "staggered" for start in args.start.split(",") if start.strip()]
    load = os.getloadavg()
    rows = []
    for layer in layers:
        for stagger in starts:
            rows.append(
                scenario(args.channels, args.messages, args.latency, args.postgres, layer, stagger)
            )
    for channels in (int(c) for c in args.overhead_channels.split(",") if c.strip()):
        for layer in layers:
            rows.append(
                scenario(channels, args.overhead_messages, 0.0, args.postgres, layer, channels > 1)
            )
    database = "PostgreSQL" if args.postgres else "SQLite (WAL)"
    print(
        f"Discord turns, {database}; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {json.dumps(load)} before, "
        f"{json.dumps(os.getloadavg())} after"
    )
    print(turns_table("channels", rows))


if __name__ == "__main__":
    main()
