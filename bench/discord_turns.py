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

import asyncio
import random
import re
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import discord
import yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route
from pydantic import SecretStr

from agents.base import AgentRequest
from agents.settings import ClaudeSettings
from bench import turns
from bench.turns import ClosedLoop, SleepAgent, TimedAgent, TurnTimer, measure, model_sleep
from bots.app import Palaver
from bots.config import Config, DiscordSettings, PalaverSettings, Secrets
from bots.discord_bot import DiscordBot
from conversation.code_turn import ProgressSink
from conversation.settings import AccessSettings, RateLimitSettings
from conversation.turn import Outcome, Question, TurnResult
from memory.settings import DatabaseSettings
from memory.types import Role
from tests.fakes.anthropic_api import JSON, FakeAnthropic
from tests.fakes.discord_api import FakeDiscord, FakeMessage

TOKEN = "bench-token"
API_KEY = "bench-key"
GUILD = 9_000_000_000_000_000_000
FIRST_USER = 8_000_000_000_000_000_000
QUESTION = re.compile(r"\bq(\d+)\b")


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
        self.stagger = stagger
        self.loop = ClosedLoop(channels, messages)
        self.asked: dict[int, tuple[int, float]] = {}  # channel -> (question id, sent at)
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

    def error_count(self) -> int:
        return len(self.errors) + len(self.unhandled)

    def _spawn_ask(self, channel: int) -> None:
        task = asyncio.create_task(self._ask(channel))
        task.add_done_callback(lambda t: t.result())

    async def _ask(self, channel: int) -> None:
        warm_up = channel == self.channels[-1]
        n = 0 if warm_up else self.loop.asking(channel)
        question = self.snowflake()
        self.asked[channel] = (question, time.perf_counter())
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
        elif self.loop.answered(msg.channel_id, asked[1]):
            self._spawn_ask(msg.channel_id)


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
        await turns.serve_users(pipe, (users.api_base, users.gateway_url, claude.url), users)


def fakes_main(
    channels: int, messages: int, latency: float, stagger: float, pipe: Connection
) -> None:
    asyncio.run(serve_fakes(channels, messages, latency, stagger, pipe))


# -- the bot's process -------------------------------------------------------------------


class AdapterOnlyTurn:
    """The Discord adapter and the dispatcher alone: no memory, an instant reply."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def handle(
        self, question: Question, *, on_progress: ProgressSink | None = None
    ) -> TurnResult:
        await model_sleep(self.latency)
        return TurnResult(Outcome.REPLIED, answer_to(question.text))

    async def observe(self, question: Question) -> TurnResult:
        return TurnResult(Outcome.STORED, "")


class TimedBot(DiscordBot):
    """Records each turn's host overhead: handler time minus model time."""

    timer: TurnTimer

    async def on_message(self, message: discord.Message) -> None:
        await self.timer.time(lambda: super(TimedBot, self).on_message(message))


def answer_last_question(request: AgentRequest) -> str:
    return answer_to([m.text for m in request.context.messages if m.role is Role.USER][-1])


async def run_bot(
    url: str, urls: tuple[str, ...], pipe: Connection, layer: str, latency: float
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
        turn.agent = TimedAgent(SleepAgent(latency, answer_last_question))
    else:
        app.dispatcher.turn = AdapterOnlyTurn(latency)  # type: ignore[assignment]
    bot = TimedBot(config.discord, TOKEN, app.dispatcher, guild_ready_timeout=0.1)
    bot.timer = TurnTimer()
    return await measure(app, bot, pipe)


if __name__ == "__main__":
    turns.main(__doc__ or "", "Discord", "channels", fakes_main, run_bot)
