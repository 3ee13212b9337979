"""What the two bot benchmarks (Telegram, Discord) share.

Each runs the bot in this process and its fakes (the platform with simulated users,
and the Messages API) in a child process, so that the fakes' CPU is not the bot's.
The two processes step through the same handshake over a pipe: the fakes are up,
the bot is up, one warm-up turn, counters reset, go, results, the bot has stopped.
Only the platform differs: how a user asks and how a reply is recognised.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import json
import multiprocessing
import os
import platform
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from multiprocessing.connection import Connection
from typing import Any, Protocol

from agents.base import Agent, AgentEvent, AgentReply, AgentRequest, TextDelta
from bench.common import format_table, pct
from bots.app import Palaver, freeze_startup_heap
from conversation.outbound import Interface
from memory.types import Usage

Row = tuple[str, ...]

LAYERS = {
    "claude": "full stack, Claude agent via the SDK",
    "agent": "memory + turn, in-process model",
    "adapter": "{platform} adapter only",
}

# The model time of the turn being handled: TimedAgent adds to it, TurnTimer reads it.
model_time: contextvars.ContextVar[list[float]] = contextvars.ContextVar("model_time")


# -- the fakes' process ------------------------------------------------------------------


class ClosedLoop:
    """The users' side: each of ``units`` users (chats, channels) asks ``messages``
    questions, the next once the last is answered; turns/s and end-to-end times."""

    def __init__(self, units: int, messages: int) -> None:
        self.messages_n = messages
        self.counts: dict[int, int] = {}
        self.started: dict[int, float] = {}
        self.finished: dict[int, float] = {}
        self.replies: list[float] = []
        self.e2e: list[float] = []
        self.pending = units * messages
        self.done = asyncio.Event()

    def asking(self, unit: int) -> int:
        """A user is about to ask: the number of its question (0, 1, ...)."""
        n = self.counts.get(unit, 0)
        self.counts[unit] = n + 1
        self.started.setdefault(unit, time.perf_counter())
        return n

    def answered(self, unit: int, asked_at: float) -> bool:
        """A user got its answer; True if it asks again."""
        now = time.perf_counter()
        self.e2e.append(now - asked_at)
        self.replies.append(now)
        self.pending -= 1
        again = self.counts[unit] < self.messages_n
        if not again:
            self.finished[unit] = now
        if self.pending == 0:
            self.done.set()
        return again

    def throughput(self) -> float:
        """Turns per second while every user is active (all started, none finished)."""
        begin, end = max(self.started.values()), min(self.finished.values())
        if end - begin < 1.0:  # no steady state: count the whole run
            begin, end = min(self.started.values()), max(self.finished.values())
            return len(self.replies) / (end - begin)
        return sum(1 for t in self.replies if begin < t <= end) / (end - begin)


class Users(Protocol):
    """A fake platform with simulated users, as the handshake drives it."""

    loop: ClosedLoop

    async def warm_up(self) -> None: ...

    def begin(self) -> None: ...

    def error_count(self) -> int: ...


async def serve_users(pipe: Connection, urls: tuple[str, ...], users: Users) -> None:
    """The fakes' half of the handshake, once the fakes are listening on ``urls``."""
    pipe.send(urls)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, pipe.recv)  # the bot is up
    await users.warm_up()
    pipe.send("warm")
    await loop.run_in_executor(None, pipe.recv)  # the bot has reset its counters
    cpu = time.process_time()
    users.begin()
    await users.loop.done.wait()
    pipe.send(
        {
            "e2e": users.loop.e2e,
            "rate": users.loop.throughput(),
            "errors": users.error_count(),
            "fake_cpu": time.process_time() - cpu,
        }
    )
    await loop.run_in_executor(None, pipe.recv)  # the bot has stopped


# -- the bot's process -------------------------------------------------------------------


class TimedAgent:
    """Adds the time spent in the agent to the turn it belongs to (via ``model_time``)."""

    def __init__(self, inner: Agent) -> None:
        self.inner = inner
        self.name = inner.name

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        began = time.perf_counter()
        try:
            async for event in self.inner.stream(request):
                yield event
        finally:
            slot = model_time.get(None)
            if slot is not None:
                slot.append(time.perf_counter() - began)


class SleepAgent:
    """An in-process model: waits ``latency`` seconds, then answers (no SDK, no HTTP)."""

    name = "sleep"

    def __init__(self, latency: float, answer: Callable[[AgentRequest], str]) -> None:
        self.latency = latency
        self.answer = answer

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        await asyncio.sleep(self.latency)
        text = self.answer(request)
        yield TextDelta(text)
        yield AgentReply(text, Usage(100, 5), "sleep")


async def model_sleep(latency: float) -> None:
    """The adapter-only layer's stand-in for a model call, counted as model time."""
    began = time.perf_counter()
    await asyncio.sleep(latency)
    spent = model_time.get(None)
    if spent is not None:
        spent.append(time.perf_counter() - began)


class TurnTimer:
    """Each turn's host overhead: the handler's time minus the model's."""

    def __init__(self) -> None:
        self.overhead: list[float] = []
        self.model: list[float] = []

    async def time(self, handler: Callable[[], Awaitable[None]]) -> None:
        spent: list[float] = []
        model_time.set(spent)
        began = time.perf_counter()
        await handler()
        elapsed = time.perf_counter() - began
        if spent:
            self.overhead.append(elapsed - sum(spent))
            self.model.append(sum(spent))


class TimedInterface(Interface, Protocol):
    timer: TurnTimer


async def measure(app: Palaver, bot: TimedInterface, pipe: Connection) -> dict[str, Any]:
    """The bot's half of the handshake: start, warm up, run, stop; the results."""
    await bot.start()
    freeze_startup_heap()  # as run.py does once everything is up
    loop = asyncio.get_running_loop()
    pipe.send("up")
    await loop.run_in_executor(None, pipe.recv)  # warmed up
    bot.timer.overhead.clear()
    bot.timer.model.clear()
    cpu = time.process_time()
    pipe.send("go")
    result: dict[str, Any] = await loop.run_in_executor(None, pipe.recv)
    result["cpu"] = time.process_time() - cpu
    await app.close_interfaces([bot], 10.0)
    await app.stop()
    pipe.send("stopped")
    result.update(overhead=bot.timer.overhead, model=bot.timer.model)
    return result


# -- the scenarios and the table ----------------------------------------------------------

FakesMain = Callable[[int, int, float, float, Connection], None]
RunBot = Callable[
    [str, tuple[str, ...], Connection, str, float], Coroutine[Any, Any, dict[str, Any]]
]


def scenario(
    fakes_main: FakesMain,
    run_bot: RunBot,
    what: str,
    units: int,
    messages: int,
    latency: float,
    url: str,
    layer: str,
    stagger: bool,
) -> Row:
    """One run: the fakes in a child process, the bot here; its row of the table."""
    if url:
        from tests.conftest import reset_postgres

        asyncio.run(reset_postgres(url))
    parent, child = multiprocessing.Pipe()
    fake_latency = latency if layer == "claude" else 0.0
    spread = max(latency, 0.1) if stagger else 0.0
    fakes = multiprocessing.get_context("spawn").Process(
        target=fakes_main, args=(units, messages, fake_latency, spread, child), daemon=True
    )
    fakes.start()
    urls = parent.recv()
    result = asyncio.run(run_bot(url, urls, parent, layer, latency))
    fakes.join(30)
    return turns_row(what, units, messages, latency, stagger, result)


def main(doc: str, platform_name: str, unit: str, fakes_main: FakesMain, run_bot: RunBot) -> None:
    """The command line of a bot benchmark; ``unit`` is what runs concurrently."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument(f"--{unit}", type=int, default=200, dest="units")
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument(
        f"--overhead-{unit}",
        default="1,20",
        dest="overhead_units",
        help=f"zero-latency runs: concurrent {unit}",
    )
    parser.add_argument("--overhead-messages", type=int, default=50)
    parser.add_argument(
        "--layers",
        default="claude,agent,adapter",
        help=f"what runs: claude (full stack), agent (in-process model), adapter "
        f"({platform_name} only)",
    )
    parser.add_argument(
        "--start", default="staggered,lockstep", help="staggered and/or lockstep first messages"
    )
    parser.add_argument("--postgres", default=os.environ.get("BENCH_DATABASE_URL", ""))
    args = parser.parse_args()
    layers = [layer.strip() for layer in args.layers.split(",") if layer.strip()]
    starts = [start.strip() == "staggered" for start in args.start.split(",") if start.strip()]
    load = os.getloadavg()

    def run(units: int, messages: int, latency: float, layer: str, stagger: bool) -> Row:
        what = LAYERS[layer].format(platform=platform_name)
        return scenario(
            fakes_main, run_bot, what, units, messages, latency, args.postgres, layer, stagger
        )

    rows = [
        run(args.units, args.messages, args.latency, layer, stagger)
        for layer in layers
        for stagger in starts
    ]
    for units in (int(c) for c in args.overhead_units.split(",") if c.strip()):
        rows += [run(units, args.overhead_messages, 0.0, layer, units > 1) for layer in layers]
    database = "PostgreSQL" if args.postgres else "SQLite (WAL)"
    print(
        f"{platform_name} turns, {database}; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {json.dumps(load)} before, "
        f"{json.dumps(os.getloadavg())} after"
    )
    print(turns_table(unit, rows))


def turns_row(
    what: str, units: int, messages: int, latency: float, stagger: bool, result: dict[str, Any]
) -> Row:
    """One row of the table: ``result`` holds the rate, the per-turn overhead, model and
    end-to-end times, CPU seconds and errors of a run."""
    turns = units * messages
    model = sum(result["model"]) / max(1, len(result["model"]))
    e2e = [t - model for t in result["e2e"]]
    overhead = result["overhead"]
    ideal = units / latency if latency else 0.0
    rate = result["rate"]
    ms = 1000.0
    return (
        what,
        f"{units} x {messages}",
        f"{latency:g} s",
        "staggered" if stagger else "lock step",
        f"{rate:.0f}",
        f"{ideal:.0f}" if ideal else "-",
        f"{rate / ideal:.0%}" if ideal else "-",
        f"{pct(overhead, 0.5) * ms:.1f}",
        f"{pct(overhead, 0.99) * ms:.1f}",
        f"{pct(e2e, 0.5) * ms:.1f}",
        f"{pct(e2e, 0.99) * ms:.1f}",
        f"{result['cpu'] / turns * ms:.1f}",
        f"{result['fake_cpu'] / turns * ms:.1f}",
        str(result["errors"]),
    )


def turns_table(unit: str, rows: Sequence[Row]) -> str:
    """The table; ``unit`` is what runs concurrently (chats, channels)."""
    head = (
        "what runs",
        f"{unit} x msgs",
        "model",
        "start",
        "turns/s",
        "ideal",
        "eff",
        "ovh p50 ms",
        "ovh p99 ms",
        "e2e p50 ms",
        "e2e p99 ms",
        "bot CPU ms/turn",
        "fakes CPU",
        "errors",
    )
    return format_table(head, rows)
