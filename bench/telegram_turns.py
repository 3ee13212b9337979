"""Benchmark of Telegram turns end to end: prints a table.

    python bench/telegram_turns.py [--chats 200] [--messages 5] [--latency 1.0]
                                   [--overhead-chats 1,10,50] [--postgres URL]

The whole application runs as in production - Palaver (SQLite file, or PostgreSQL with
--postgres), the Claude agent through the real anthropic SDK, the real python-telegram-bot
Application polling over HTTP - against fakes at the network boundary: FakeTelegram (Bot
API) and FakeAnthropic with a fixed model latency. In each of N private chats a user sends
M messages one after another (the next once the previous one is answered), all chats at
once.

- turns/s: N chats x M messages with the model taking ``--latency`` s per reply; perfect
  concurrency gives N / latency turns/s (each chat has one turn in flight).
- host overhead per turn: from the update reaching the bot's handler to the reply's
  sendMessage returning, minus the time spent in the agent (the Messages API call through
  the SDK). It covers the update handling, access and rate checks, two database commits,
  the context, the typing action and sending the reply. "e2e" is measured by the fake
  instead: from the user's message being queued to the reply arriving, minus model time;
  it adds the long-poll hop and the HTTP round trips.

The fakes run in a child process (the Bot API with the simulated users, and the Messages
API), so their CPU does not count as the bot's; the bot has one event loop, as in
production. The machine's load average is printed with the table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr

from agents.base import AgentEvent, AgentReply, AgentRequest, TextDelta
from agents.settings import ClaudeSettings, SpendSettings
from bench.common import TimedAgent, model_time, turns_row, turns_table
from bots.app import Palaver, freeze_startup_heap
from bots.config import (
    AccessSettings,
    Config,
    PalaverSettings,
    RateLimitSettings,
    Secrets,
    TelegramSettings,
)
from bots.telegram_bot import TelegramBot
from bots.turn import Incoming, Outcome, Turn, TurnResult
from memory.settings import DatabaseSettings
from memory.types import Usage
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.telegram_api import JSON, FakeTelegram

TOKEN = "123:BENCH"
API_KEY = "bench-key"
FIRST_CHAT = 10_000
WARM_UP_CHAT = FIRST_CHAT - 1
Row = tuple[str, ...]


# -- the fakes' process ------------------------------------------------------------------------


class Users(FakeTelegram):
    """The Bot API, plus users who each send their next message once answered.

    With ``stagger``, each user's first message comes at a random moment within that many
    seconds, as real users' do; without, all chats start at the same instant and stay in
    lock step (every reply of a round is due at once: the worst case for one event loop).
    """

    def __init__(self, chats: int, messages: int, stagger: float) -> None:
        super().__init__(token=TOKEN)
        self.chats_n = chats
        self.messages_n = messages
        self.stagger = stagger
        self.sent_at: dict[int, float] = {}
        self.started: dict[int, float] = {}
        self.finished: dict[int, float] = {}
        self.replies: list[float] = []
        self.e2e: list[float] = []
        self.done = asyncio.Event()
        self.pending = chats * messages
        self.counts: dict[int, int] = {}

    async def warm_up(self) -> None:
        """One turn in a chat of its own first: imports, connections, caches."""
        self.user_message(WARM_UP_CHAT, "warm up")
        await self.wait_for_message(WARM_UP_CHAT, timeout=60)

    def begin(self) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(4)
        for i in range(self.chats_n):
            loop.call_later(rng.uniform(0, self.stagger), self._ask, FIRST_CHAT + i)

    def _ask(self, chat: int) -> None:
        n = self.counts.get(chat, 0)
        self.counts[chat] = n + 1
        self.sent_at[chat] = time.perf_counter()
        self.started.setdefault(chat, self.sent_at[chat])
        self.user_message(chat, f"message {n} from chat {chat}")

    async def _send_message(self, params: JSON) -> JSON:
        result = await super()._send_message(params)
        chat = int(params["chat_id"])
        if chat == WARM_UP_CHAT:
            return result
        now = time.perf_counter()
        self.e2e.append(now - self.sent_at[chat])
        self.replies.append(now)
        self.pending -= 1
        if self.counts[chat] < self.messages_n:
            self._ask(chat)
        else:
            self.finished[chat] = now
        if self.pending == 0:
            self.done.set()
        return result

    def throughput(self) -> float:
        """Turns per second while every chat is active (all started, none finished)."""
        begin, end = max(self.started.values()), min(self.finished.values())
        if end - begin < 1.0:  # no steady state: count the whole run
            begin, end = min(self.started.values()), max(self.finished.values())
            return len(self.replies) / (end - begin)
        return sum(1 for t in self.replies if begin < t <= end) / (end - begin)


async def serve_fakes(chats: int, messages: int, latency: float, stagger: float, pipe: Any) -> None:
    users = Users(chats, messages, stagger)
    async with users, FakeAnthropic(api_key=API_KEY, latency=latency) as claude:
        pipe.send((users.base_url, users.base_file_url, claude.url))
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
                "errors": len(users.errors),
                "fake_cpu": time.process_time() - cpu,
            }
        )
        await loop.run_in_executor(None, pipe.recv)  # the bot has stopped


def fakes_main(chats: int, messages: int, latency: float, stagger: float, pipe: Any) -> None:
    asyncio.run(serve_fakes(chats, messages, latency, stagger, pipe))


# -- the bot's process -------------------------------------------------------------------------


class SleepAgent:
    """An in-process model: waits ``latency`` seconds, then answers (no SDK, no HTTP)."""

    name = "sleep"

    def __init__(self, latency: float) -> None:
        self.latency = latency

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[AgentEvent]:
        await asyncio.sleep(self.latency)
        yield TextDelta("A short answer.")
        yield AgentReply("A short answer.", Usage(100, 5), "sleep")


class AdapterOnlyTurn:
    """The Telegram adapter alone: access from the real turn, no memory, an instant reply."""

    def __init__(self, turn: Turn, latency: float) -> None:
        self.access = turn.access
        self.latency = latency

    async def handle(self, incoming: Incoming, *, on_progress: Any = None) -> TurnResult:
        spent = model_time.get(None)
        began = time.perf_counter()
        await asyncio.sleep(self.latency)
        if spent is not None:
            spent.append(time.perf_counter() - began)
        return TurnResult(Outcome.REPLIED, "A short answer.")

    async def observe(self, incoming: Incoming) -> TurnResult:
        return TurnResult(Outcome.STORED, "")


class TimedBot(TelegramBot):
    """Records each turn's host overhead: handler time minus model time."""

    overhead: list[float]
    model: list[float]

    async def handle_update(self, update: Any) -> None:
        spent: list[float] = []
        model_time.set(spent)
        began = time.perf_counter()
        await super().handle_update(update)
        elapsed = time.perf_counter() - began
        if spent:
            self.overhead.append(elapsed - sum(spent))
            self.model.append(sum(spent))


async def run_bot(
    url: str, urls: tuple[str, str, str], pipe: Any, layer: str, latency: float
) -> dict[str, Any]:
    base_url, base_file_url, claude_url = urls
    data = Path(tempfile.mkdtemp(prefix="palaver-bench-"))
    config = Config(
        palaver=PalaverSettings(data_dir=data, log_level="WARNING"),
        database=DatabaseSettings(url=url or f"sqlite+aiosqlite:///{data / 'palaver.db'}"),
        access=AccessSettings(allow_everyone=True),
        rate_limit=RateLimitSettings(per_minute=6000, burst=1000),
        spend=SpendSettings(),
        claude=ClaudeSettings(base_url=claude_url, max_retries=0),
        telegram=TelegramSettings(base_url=base_url, base_file_url=base_file_url),
        secrets=Secrets(telegram_bot_token=SecretStr(TOKEN), anthropic_api_key=SecretStr(API_KEY)),
    )
    app = Palaver(config)
    await app.start()
    turn: Any = app.turn
    if layer == "claude":
        turn.agent = TimedAgent(turn.agent)
    elif layer == "agent":
        turn.agent = TimedAgent(SleepAgent(latency))
    else:
        turn = AdapterOnlyTurn(app.turn, latency)
    bot = TimedBot(config.telegram, TOKEN, turn, app.commands)
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
    "adapter": "Telegram adapter only",
}


def scenario(chats: int, messages: int, latency: float, url: str, layer: str, stagger: bool) -> Row:
    parent, child = multiprocessing.Pipe()
    fake_latency = latency if layer == "claude" else 0.0
    spread = max(latency, 0.1) if stagger else 0.0
    fakes = multiprocessing.get_context("spawn").Process(
        target=fakes_main, args=(chats, messages, fake_latency, spread, child), daemon=True
    )
    fakes.start()
    urls = parent.recv()
    result = asyncio.run(run_bot(url, urls, parent, layer, latency))
    fakes.join(30)
    return turns_row(LAYERS[layer], chats, messages, latency, stagger, result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument(
        "--overhead-chats", default="1,20", help="zero-latency runs: concurrent chats"
    )
    parser.add_argument("--overhead-messages", type=int, default=50)
    parser.add_argument(
        "--layers",
        default="claude,agent,adapter",
        help="what runs: claude (full stack), agent (in-process model), adapter (Telegram only)",
    )
    parser.add_argument(
        "--start", default="staggered,lockstep", help="staggered and/or lockstep first messages"
    )
    parser.add_argument("--postgres", default=os.environ.get("BENCH_DATABASE_URL", ""))
    args = parser.parse_args()
    layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    starts = [start.strip() == "staggered" for start in args.start.split(",") if start.strip()]
    rows = []
    for layer in layers:
        for stagger in starts:
            rows.append(
                scenario(args.chats, args.messages, args.latency, args.postgres, layer, stagger)
            )
    for chats in (int(c) for c in args.overhead_chats.split(",") if c.strip()):
        for layer in layers:
            rows.append(
                scenario(chats, args.overhead_messages, 0.0, args.postgres, layer, chats > 1)
            )
    database = "PostgreSQL" if args.postgres else "SQLite (WAL)"
    print(
        f"Telegram turns, {database}; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {json.dumps(os.getloadavg())}"
    )
    print(turns_table("chats", rows))


if __name__ == "__main__":
    main()
