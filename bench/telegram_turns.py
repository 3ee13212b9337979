"""Benchmark of Telegram turns end to end: prints a table.

    python bench/telegram_turns.py [--chats 200] [--messages 10] [--latency 1.0]
                                   [--overhead-chats 1,20] [--overhead-messages 50]
                                   [--layers claude,agent,adapter] [--start staggered,lockstep]
                                   [--postgres URL]

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

import asyncio
import random
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pydantic import SecretStr

from agents.base import AgentRequest
from agents.settings import ClaudeSettings, SpendSettings
from bench import turns
from bench.turns import ClosedLoop, SleepAgent, TimedAgent, TurnTimer, measure, model_sleep
from bots.app import Palaver
from bots.config import Config, PalaverSettings, Secrets, TelegramSettings
from bots.telegram_bot import TelegramBot
from conversation.settings import AccessSettings, RateLimitSettings
from conversation.turn import Outcome, Question, TurnResult
from memory.settings import DatabaseSettings
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.telegram_api import JSON, FakeTelegram

TOKEN = "123:BENCH"
API_KEY = "bench-key"
FIRST_CHAT = 10_000
WARM_UP_CHAT = FIRST_CHAT - 1
ANSWER = "A short answer."


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
        self.stagger = stagger
        self.loop = ClosedLoop(chats, messages)
        self.sent_at: dict[int, float] = {}

    async def warm_up(self) -> None:
        """One turn in a chat of its own first: imports, connections, caches."""
        self.user_message(WARM_UP_CHAT, "warm up")
        await self.wait_for_message(WARM_UP_CHAT, timeout=60)

    def begin(self) -> None:
        loop = asyncio.get_running_loop()
        rng = random.Random(4)
        for i in range(self.chats_n):
            loop.call_later(rng.uniform(0, self.stagger), self._ask, FIRST_CHAT + i)

    def error_count(self) -> int:
        return len(self.errors)

    def _ask(self, chat: int) -> None:
        n = self.loop.asking(chat)
        self.sent_at[chat] = time.perf_counter()
        self.user_message(chat, f"message {n} from chat {chat}")

    async def _send_message(self, params: JSON) -> JSON:
        result = await super()._send_message(params)
        chat = int(params["chat_id"])
        if chat != WARM_UP_CHAT and self.loop.answered(chat, self.sent_at[chat]):
            self._ask(chat)
        return result


async def serve_fakes(
    chats: int, messages: int, latency: float, stagger: float, pipe: Connection
) -> None:
    users = Users(chats, messages, stagger)
    async with users, FakeAnthropic(api_key=API_KEY, latency=latency) as claude:
        await turns.serve_users(pipe, (users.base_url, users.base_file_url, claude.url), users)


def fakes_main(chats: int, messages: int, latency: float, stagger: float, pipe: Connection) -> None:
    asyncio.run(serve_fakes(chats, messages, latency, stagger, pipe))


# -- the bot's process -------------------------------------------------------------------------


class AdapterOnlyTurn:
    """The Telegram adapter and the dispatcher alone: no memory, an instant reply."""

    def __init__(self, latency: float) -> None:
        self.latency = latency

    async def handle(self, question: Question, *, on_progress: Any = None) -> TurnResult:
        await model_sleep(self.latency)
        return TurnResult(Outcome.REPLIED, ANSWER)

    async def observe(self, question: Question) -> TurnResult:
        return TurnResult(Outcome.STORED, "")


class TimedBot(TelegramBot):
    """Records each turn's host overhead: handler time minus model time."""

    timer: TurnTimer

    async def _on_update(self, update: Any, context: Any) -> None:
        await self.timer.time(lambda: super(TimedBot, self)._on_update(update, context))


def short_answer(request: AgentRequest) -> str:
    return ANSWER


async def run_bot(
    url: str, urls: tuple[str, ...], pipe: Connection, layer: str, latency: float
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
    turn = app.turn
    if layer == "claude":
        turn.agent = TimedAgent(turn.agent)
    elif layer == "agent":
        turn.agent = TimedAgent(SleepAgent(latency, short_answer))
    else:
        app.dispatcher.turn = AdapterOnlyTurn(latency)  # type: ignore[assignment]
    bot = TimedBot(config.telegram, TOKEN, app.dispatcher)
    bot.timer = TurnTimer()
    return await measure(app, bot, pipe)


if __name__ == "__main__":
    turns.main(__doc__, "Telegram", "chats", fakes_main, run_bot)
