"""The operator surface, measured: API read latency, and what a live listener costs turns.

1. Read latency: the app (SQLite, or PostgreSQL with --postgres) holds --sessions
   sessions of --messages messages each; an HTTP client asks, one request at a time,
   for a page of sessions (plain, with stats, filtered by a user), one session, and a
   page of one session's messages. p50/p99 per request, from the client's side.
2. Turn overhead with and without a Socket.IO client subscribed to every event:
   --chats chats each ask --turns questions in a closed loop, through the conversation
   core as the "api" interface, to a model that takes --latency seconds. The listener
   runs in a child process (so its CPU is not the bot's) and counts what it receives.
   Host overhead per turn is the turn's time minus the model's (bench.turns).

    python bench/api.py [--sessions 2000] [--messages 20] [--chats 200] [--turns 5]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from bench.common import format_table, pct
from bench.turns import SleepAgent, TimedAgent, TurnTimer
from bots.app import Palaver, freeze_startup_heap
from bots.config import load_config
from conversation.access import Actor
from conversation.inbound import Inbound
from conversation.outbound import Outbound, OutboundFile, ReplyStream
from memory.types import ChatKey, Role, Usage

TOKEN = "bench-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class _Quiet:
    async def update(self, text: str) -> None:
        return None

    async def finish(self, text: str) -> None:
        return None

    async def close(self) -> None:
        return None


class NullPort:
    """An outbound port that takes everything and shows nothing."""

    upload_limit = 1 << 30

    async def send(self, text: str, *, markdown: bool = False, skip: int = 0) -> None:
        return None

    async def send_file(self, file: OutboundFile, caption: str) -> None:
        return None

    async def offer(self, text: str, choices: Sequence[tuple[str, str]]) -> None:
        return None

    def stream(self) -> ReplyStream:
        return _Quiet()

    def private(self) -> Outbound | None:
        return None

    def private_hint(self, command: str) -> str:
        return ""


async def build(data_dir: Path, postgres: str, latency: float) -> tuple[Palaver, str]:
    if postgres:
        from tests.conftest import reset_postgres

        await reset_postgres(postgres)
    config_file = data_dir / "bench.toml"
    config_file.write_text(f'[palaver]\ndata_dir = "{data_dir}"\nlog_level = "WARNING"\n')
    environ = {
        "PALAVER_HTTP__ENABLED": "true",
        "PALAVER_HTTP__PORT": "0",
        "PALAVER_RATE_LIMIT__PER_MINUTE": "1000000",
        "PALAVER_RATE_LIMIT__BURST": "100000",
        "PALAVER_SPEND__USER_DAILY_USD": "0",
        "PALAVER_SPEND__SESSION_USD": "0",
        "PALAVER_ADMIN_TOKEN": TOKEN,
    }
    if postgres:
        environ["PALAVER_DATABASE__URL"] = postgres
    app = Palaver(load_config(config_file, environ))
    await app.start()
    app.turn.agent = TimedAgent(SleepAgent(latency, lambda _r: "noted, thank you"))
    for interface in app.build_interfaces():
        await interface.start()
    assert app.operator is not None
    return app, app.operator.url


async def fill(app: Palaver, sessions: int, messages: int) -> int:
    """Sessions with alternating questions and replies; the id of the last one."""
    manager = app.manager
    last = 0
    for n in range(sessions):
        key = ChatKey("telegram", f"chat{n}")
        session = await manager.open(key)
        writes = []
        for m in range(messages):
            if m % 2 == 0:
                writes.append(
                    manager.add_message(
                        session.id, Role.USER, f"question {m} from chat {n}", author_id=f"u{n % 50}"
                    )
                )
            else:
                writes.append(
                    manager.add_message(
                        session.id,
                        Role.ASSISTANT,
                        f"answer {m}",
                        usage=Usage(100, 20, 50, 0, 0.001),
                    )
                )
        await asyncio.gather(*writes)
        last = session.id
    return last


async def read_latency(url: str, last: int, rounds: int) -> list[tuple[str, ...]]:
    requests = [
        ("list 50 sessions", "/api/sessions", {"limit": "50"}),
        ("list 50, ?stats=true", "/api/sessions", {"limit": "50", "stats": "true"}),
        ("list, filter user", "/api/sessions", {"limit": "50", "user": "u7"}),
        ("one session", f"/api/sessions/{last}", {}),
        ("100 messages of one", f"/api/sessions/{last}/messages", {"limit": "100"}),
    ]
    rows: list[tuple[str, ...]] = []
    async with aiohttp.ClientSession(headers=AUTH) as http:
        for what, path, params in requests:
            times = []
            for _ in range(rounds):
                began = time.perf_counter()
                async with http.get(url + path, params=params) as response:
                    await response.read()
                    assert response.status == 200, response.status
                times.append(time.perf_counter() - began)
            rows.append(
                (
                    what,
                    str(rounds),
                    f"{pct(times, 0.5) * 1000:.2f}",
                    f"{pct(times, 0.99) * 1000:.2f}",
                )
            )
    return rows


def listener_main(url: str, pipe: Connection) -> None:
    """The child process: a Socket.IO client subscribed to every event, counting."""
    import socketio

    async def run() -> None:
        client = socketio.AsyncClient(reconnection=False)
        counts: dict[str, int] = {}

        def counter(name: str) -> Any:
            async def count(_data: Any) -> None:
                counts[name] = counts.get(name, 0) + 1

            return count

        for name in ("message", "session", "summary", "job_run"):
            client.on(name, counter(name))
        await client.connect(url, auth={"token": TOKEN}, transports=["websocket"])
        await client.call("subscribe", {"all": True}, timeout=10)
        pipe.send("subscribed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)  # the run is over
        await asyncio.sleep(1.0)  # the last events in flight
        pipe.send(counts)
        await client.disconnect()

    asyncio.run(run())


async def turns(
    app: Palaver, url: str, chats: int, per_chat: int, latency: float, listen: bool, tag: str
) -> tuple[str, ...]:
    listener = None
    parent = None
    if listen:
        parent, child = multiprocessing.Pipe()
        listener = multiprocessing.get_context("spawn").Process(
            target=listener_main, args=(url, child), daemon=True
        )
        listener.start()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, parent.recv)
    timer = TurnTimer()
    dispatcher = app.dispatcher
    port = NullPort()

    async def chat(n: int) -> None:
        await asyncio.sleep(latency * n / chats)  # staggered starts
        key = ChatKey("api", f"{tag}-{n}")
        actor = Actor("api", f"user{n}", f"User {n}")
        for m in range(per_chat):
            inbound = Inbound(key, actor, f"question {m}", f"{tag}-{n}-{m}")
            await timer.time(functools.partial(dispatcher.handle, inbound, port))

    cpu = time.process_time()
    began = time.perf_counter()
    await asyncio.gather(*(chat(n) for n in range(chats)))
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu
    received = "-"
    if parent is not None and listener is not None:
        parent.send("done")
        loop = asyncio.get_running_loop()
        counts = await loop.run_in_executor(None, parent.recv)
        listener.join(10)
        received = str(counts.get("message", 0))
    live = app.operator.live if app.operator else None
    dropped = str(live.dropped + live.skipped) if live else "-"
    total = chats * per_chat
    ms = 1000.0
    return (
        "subscribed to all" if listen else "nobody listening",
        f"{chats} x {per_chat}",
        f"{latency:g} s",
        f"{total / wall:.0f}",
        f"{pct(timer.overhead, 0.5) * ms:.2f}",
        f"{pct(timer.overhead, 0.99) * ms:.2f}",
        f"{cpu / total * ms:.2f}",
        received,
        dropped,
    )


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="palaver-bench-api-") as tmp:
        app, url = await build(Path(tmp), args.postgres, args.latency)
        try:
            last = await fill(app, args.sessions, args.messages)
            freeze_startup_heap()
            reads = await read_latency(url, last, args.rounds)
            rows: list[tuple[str, ...]] = []
            for listen in (False, True) * args.repeat:
                tag = f"run{len(rows)}"
                rows.append(
                    await turns(app, url, args.chats, args.turns, args.latency, listen, tag)
                )
        finally:
            interfaces = [app.operator.api] if app.operator else []
            await app.close_interfaces(interfaces, 5.0)
            await app.stop()
    database = "PostgreSQL" if args.postgres else "SQLite (WAL)"
    print(
        f"operator API, {database}; Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}; {args.sessions} sessions x {args.messages} "
        "messages"
    )
    print(format_table(("request", "n", "p50 ms", "p99 ms"), reads))
    print()
    head = (
        "live events",
        "chats x turns",
        "model",
        "turns/s",
        "ovh p50 ms",
        "ovh p99 ms",
        "bot CPU ms/turn",
        "messages received",
        "dropped",
    )
    print(format_table(head, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--chats", type=int, default=200)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2, help="alternate runs of each kind")
    parser.add_argument("--postgres", default=os.environ.get("BENCH_DATABASE_URL", ""))
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
