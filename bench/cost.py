"""Cost benchmark: a scripted 300-turn conversation through the turn pipeline against
the fake Messages API, compared with a naive policy that sends the whole history every
turn without prompt caching. Prints a table.

    python bench/cost.py [--turns 300] [--token-limit 20000]

"Billed input" weighs tokens as they are priced: input x1, cache writes x1.25, cache
reads x0.1. Host overhead is the time a turn spends in Palaver, excluding the time
spent waiting on the agent's stream (the SDK and the model). The fake Messages API runs
in a child process, so its own work is not counted as Palaver's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anthropic

from agents.base import Agent, AgentEvent, AgentRequest
from bench.common import format_table, pct
from bots.app import Palaver, freeze_startup_heap
from bots.config import load_config
from conversation.access import Actor
from conversation.turn import Outcome, Question
from memory.types import ChatKey
from tests.fakes.anthropic_api import FakeAnthropic

WORDS = [
    "alpha",
    "bravo",
    "charlie",
    "delta",
    "echo",
    "foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
]


def user_text(i: int) -> str:
    size = 20 + (i * 37) % 60
    body = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(size))
    return f"Turn {i}: ticket PAL-{1000 + i} for {WORDS[i % len(WORDS)].title()}. {body}?"


def reply_text(body: dict[str, Any]) -> str:
    n = len(body["messages"])
    size = 40 + (n * 53) % 90
    return "Noted. " + " ".join(WORDS[(n + j) % len(WORDS)] for j in range(size)) + "."


class TimedAgent:
    """Wraps the real agent to measure the time spent waiting on it."""

    def __init__(self, inner: Agent) -> None:
        self.inner = inner
        self.name = inner.name
        self.waited = 0.0

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        iterator = self.inner.stream(request).__aiter__()
        while True:
            started = time.perf_counter()
            try:
                event = await iterator.__anext__()
            except StopAsyncIteration:
                self.waited += time.perf_counter() - started
                return
            self.waited += time.perf_counter() - started
            yield event


def billed(usage: list[dict[str, int]]) -> tuple[int, int, float]:
    total = sum(
        u["input_tokens"] + u["cache_read_input_tokens"] + u["cache_creation_input_tokens"]
        for u in usage
    )
    read = sum(u["cache_read_input_tokens"] for u in usage)
    weighted = sum(
        u["input_tokens"]
        + 1.25 * u["cache_creation_input_tokens"]
        + 0.1 * u["cache_read_input_tokens"]
        for u in usage
    )
    return total, read, weighted


class RemoteFake:
    """The fake Messages API in a child process, driven over a pipe."""

    def __init__(self) -> None:
        self._pipe, child = multiprocessing.Pipe()
        self._process = multiprocessing.get_context("spawn").Process(
            target=fake_main, args=(child,), daemon=True
        )
        self._process.start()
        self.url: str = self._pipe.recv()

    def call(self, command: str) -> Any:
        self._pipe.send(command)
        return self._pipe.recv()

    def stop(self) -> None:
        self.call("stop")
        self._process.join(10)


def fake_main(pipe: Any) -> None:
    async def serve() -> None:
        async with FakeAnthropic(responder=reply_text) as fake:
            pipe.send(fake.url)
            loop = asyncio.get_running_loop()
            while True:
                command = await loop.run_in_executor(None, pipe.recv)
                if command == "log":
                    pipe.send((fake.usage_log, [r["model"] for r in fake.requests]))
                elif command == "reset":
                    fake.reset()
                    pipe.send("ok")
                else:
                    pipe.send("bye")
                    return

    asyncio.run(serve())


async def palaver_run(fake: RemoteFake, turns: int, token_limit: int, tmp: str) -> list[Any]:
    path = Path(tmp) / "palaver.toml"
    path.write_text("")
    config = load_config(
        path,
        environ={
            "ANTHROPIC_API_KEY": "test-key",
            "PALAVER_CLAUDE__BASE_URL": fake.url,
            "PALAVER_ACCESS__ALLOW_EVERYONE": "true",
            "PALAVER_RATE_LIMIT__BURST": "100000",
            "PALAVER_MEMORY__TOKEN_LIMIT": str(token_limit),
            "PALAVER_SPEND__SESSION_USD": "0",
            "PALAVER_SPEND__USER_DAILY_USD": "0",
            "PALAVER_PALAVER__DATA_DIR": str(Path(tmp) / "data"),
        },
    )
    app = Palaver(config)
    await app.start()
    freeze_startup_heap()  # as run.py does once everything is up
    timed = TimedAgent(app.turn.agent)
    app.turn.agent = timed
    key, actor = ChatKey("bench", "cost"), Actor("bench", "1", "Ada")
    overheads: list[float] = []
    model = config.agent.model
    for i in range(turns):
        before = timed.waited
        started = time.perf_counter()
        result = await app.turn.handle(Question(key, actor, user_text(i), str(i)))
        elapsed = time.perf_counter() - started
        assert result.outcome is Outcome.REPLIED, result.text
        overheads.append(elapsed - (timed.waited - before))
        await app.manager.wait_for_summaries()  # keep the script deterministic
    session = await app.manager.find_by_chat(key)
    assert session is not None
    summaries = len(await app.manager.summaries(session.id, include_superseded=True))
    await app.stop()
    usage_log, models = fake.call("log")
    chat_usage = [u for u, m in zip(usage_log, models, strict=True) if m == model]
    return [chat_usage, overheads, summaries]


async def naive_run(fake: RemoteFake, turns: int) -> list[dict[str, int]]:
    """The whole history every turn, no cache_control: what a naive bot pays."""
    client = anthropic.AsyncAnthropic(api_key="test-key", base_url=fake.url, max_retries=0)
    history: list[dict[str, Any]] = []
    usage: list[dict[str, int]] = []
    system = "You are Palaver, a helpful assistant in a chat. Answer clearly and concisely."
    for i in range(turns):
        history.append({"role": "user", "content": user_text(i)})
        reply = await client.messages.create(
            model="naive",
            max_tokens=1024,
            system=system,
            messages=history,  # type: ignore[arg-type]
        )
        history.append({"role": "assistant", "content": reply.content[0].text})  # type: ignore[union-attr]
        u = reply.usage
        usage.append(
            {
                "input_tokens": u.input_tokens,
                "cache_read_input_tokens": u.cache_read_input_tokens or 0,
                "cache_creation_input_tokens": u.cache_creation_input_tokens or 0,
            }
        )
    await client.close()
    return usage


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=300)
    parser.add_argument("--token-limit", type=int, default=20_000)
    args = parser.parse_args()
    fake = RemoteFake()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            usage, overheads, summaries = await palaver_run(fake, args.turns, args.token_limit, tmp)
        fake.call("reset")
        naive = await naive_run(fake, args.turns)
    finally:
        fake.stop()
    total, read, weighted = billed(usage)
    n_total, _n_read, n_weighted = billed(naive)
    rows = [
        ("palaver", "input tokens (all)", f"{total:,}", ""),
        ("palaver", "read from cache", f"{read / total:.1%}", ">= 70%"),
        ("palaver", "billed input (price-weighted)", f"{weighted:,.0f}", ""),
        ("palaver", "summaries written", f"{summaries}", ""),
        ("naive", "input tokens (all)", f"{n_total:,}", ""),
        ("naive", "billed input (price-weighted)", f"{n_weighted:,.0f}", ""),
        ("palaver/naive", "billed input", f"{weighted / n_weighted:.1%}", "<= 25%"),
        ("palaver/naive", "input tokens (unweighted)", f"{total / n_total:.1%}", ""),
        ("host overhead", "per turn p50", f"{pct(overheads, 0.5) * 1000:.2f} ms", ""),
        ("host overhead", "per turn p99", f"{pct(overheads, 0.99) * 1000:.2f} ms", "<= 5 ms"),
    ]
    print(
        f"{args.turns} turns, token_limit {args.token_limit:,}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(format_table(("case", "measure", "value", "target"), rows))


if __name__ == "__main__":
    asyncio.run(main())
