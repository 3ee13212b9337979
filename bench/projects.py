"""Claude Code projects: what Palaver's agent adds to a turn, and what a live CLI costs.

    python bench/projects.py [--warm 30] [--cold 8] [--projects 20]

The real CLI (bundled in claude-agent-sdk) talks to the fake Messages API, which runs
in a child process (so that its CPU is not counted as the host's) and answers at once:
every figure is host and CLI overhead, not model time. Rows:

- warm follow-up: one more turn on a running CLI. "bare" is a ClaudeSDKClient used
  directly (query, read to the result); "palaver" is ClaudeCodeAgent.stream() with
  resume, the permission callback, the transcript mirrored to SQLite and the reply
  assembled. The overhead is the difference of the medians.
- cold start: a turn that has to start a CLI: the bare client's connect + turn, and
  the agent resuming the session from the database.
- processes and memory: CLI processes and their resident memory (VmRSS) with 1 and N
  projects live, and the agent's warm follow-up p50 with N live.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from claude_agent_sdk import ClaudeAgentOptions, ClaudeSDKClient, ResultMessage

from agents.claude_code import ClaudeCodeAgent, CodeReply, CodeRequest, ToolApproval
from agents.settings import ClaudeCodeSettings
from bench.common import format_table, pct
from memory.database import migrate, open_database
from memory.settings import DatabaseSettings
from memory.transcripts import TranscriptStore

API_KEY = "bench-key"
MODEL = "claude-sonnet-4-6"


def _serve_fake(conn: Connection) -> None:
    from tests.fakes.anthropic_api import FakeAnthropic

    async def main() -> None:
        async with FakeAnthropic(api_key=API_KEY, responder=lambda body: "ok") as fake:
            conn.send(fake.url)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)

    asyncio.run(main())


def cli_children() -> list[int]:
    me, pids = os.getpid(), []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                argv0 = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == me and argv0.endswith(b"claude"):
                pids.append(int(entry))
    return pids


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def approve(_: ToolApproval) -> bool:
    return True


class Bench:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url = url
        self.tmp = tmp
        self.root = tmp / "projects"
        self.env = {
            "ANTHROPIC_BASE_URL": url,
            "ANTHROPIC_API_KEY": API_KEY,
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "CLAUDE_CONFIG_DIR": str(tmp / "bare-config"),
        }

    def workdir(self, n: int) -> Path:
        path = self.root / f"p{n}"
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def bare(self, warm: int, cold: int) -> tuple[list[float], list[float]]:
        async def turn(client: ClaudeSDKClient, prompt: str) -> None:
            await client.query(prompt)
            async for message in client.receive_response():
                if isinstance(message, ResultMessage) and message.is_error:
                    raise RuntimeError(message.result)

        # What the agent starts the CLI with, less Palaver: the same system prompt and
        # settings, so that both send the same requests.
        options = ClaudeAgentOptions(
            cwd=self.workdir(0),
            env=self.env,
            model=MODEL,
            include_partial_messages=True,
            system_prompt={"type": "preset", "preset": "claude_code"},
            setting_sources=["project"],
            permission_mode="default",
        )
        colds = []
        for i in range(cold):
            started = time.perf_counter()
            client = ClaudeSDKClient(options)
            await client.connect()
            await turn(client, f"cold {i}")
            colds.append(time.perf_counter() - started)
            await client.disconnect()
        client = ClaudeSDKClient(options)
        await client.connect()
        await turn(client, "warm-up")
        warms = []
        for i in range(warm):
            started = time.perf_counter()
            await turn(client, f"follow-up {i}")
            warms.append(time.perf_counter() - started)
        await client.disconnect()
        return warms, colds

    def agent(self, store: TranscriptStore, max_live: int) -> ClaudeCodeAgent:
        return ClaudeCodeAgent(
            ClaudeCodeSettings(max_live=max_live),
            config_dir=self.tmp / "agent-config",
            projects_root=self.root,
            transcripts=store,
            api_key=API_KEY,
            base_url=self.url,
        )

    @staticmethod
    async def turn(agent: ClaudeCodeAgent, project: int, workdir: Path, resume: str | None) -> str:
        request = CodeRequest(
            project_id=project,
            project_name=f"p{project}",
            workdir=workdir,
            prompt="next",
            resume=resume,
            model=MODEL,
        )
        reply: CodeReply | None = None
        async for event in agent.stream(request, approve):
            if isinstance(event, CodeReply):
                reply = event
        assert reply is not None
        return reply.session_id

    async def palaver(
        self, store: TranscriptStore, warm: int, cold: int
    ) -> tuple[list[float], list[float]]:
        workdir = self.workdir(0)
        agent = self.agent(store, max_live=1)
        session = await self.turn(agent, 0, workdir, None)
        colds = []
        for _ in range(cold):
            await agent.release(0)  # the next turn starts a CLI and resumes from the DB
            started = time.perf_counter()
            session = await self.turn(agent, 0, workdir, session)
            colds.append(time.perf_counter() - started)
        warms = []
        for _ in range(warm):
            started = time.perf_counter()
            session = await self.turn(agent, 0, workdir, session)
            warms.append(time.perf_counter() - started)
        await agent.close()
        return warms, colds

    async def live(self, store: TranscriptStore, projects: int, rounds: int) -> dict[str, float]:
        agent = self.agent(store, max_live=projects)
        sessions: dict[int, str] = {}
        for n in range(1, projects + 1):
            sessions[n] = await self.turn(agent, n, self.workdir(n), None)
        pids = cli_children()
        rss = [rss_mb(pid) for pid in pids]
        warms = []
        for _ in range(rounds):
            for n in range(1, projects + 1):
                started = time.perf_counter()
                sessions[n] = await self.turn(agent, n, self.workdir(n), sessions[n])
                warms.append(time.perf_counter() - started)
        await agent.close()
        return {
            "processes": len(pids),
            "rss_total": sum(rss),
            "rss_each": sum(rss) / max(1, len(rss)),
            "warm_p50": pct(warms, 0.5),
            "warm_p99": pct(warms, 0.99),
        }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def main(args: argparse.Namespace) -> None:
    for name in [n for n in os.environ if n.startswith(("ANTHROPIC_", "CLAUDE"))]:
        del os.environ[name]
    parent, child = multiprocessing.Pipe()
    server = multiprocessing.Process(target=_serve_fake, args=(child,), daemon=True)
    server.start()
    url = parent.recv()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        database = open_database(f"sqlite+aiosqlite:///{tmp / 'palaver.db'}", DatabaseSettings())
        await migrate(database)
        store = TranscriptStore(database)
        bench = Bench(url, tmp)
        bare_warm, bare_cold = await bench.bare(args.warm, args.cold)
        agent_warm, agent_cold = await bench.palaver(store, args.warm, args.cold)
        one = await bench.live(store, 1, args.rounds)
        many = await bench.live(store, args.projects, args.rounds)
        await database.dispose()
    parent.send("stop")
    server.join(5)

    bare50, agent50 = pct(bare_warm, 0.5), pct(agent_warm, 0.5)
    rows = [
        ["warm follow-up p50", ms(bare50), ms(agent50), ms(agent50 - bare50)],
        [
            "warm follow-up p99",
            ms(pct(bare_warm, 0.99)),
            ms(pct(agent_warm, 0.99)),
            ms(pct(agent_warm, 0.99) - pct(bare_warm, 0.99)),
        ],
        [
            "cold start p50",
            ms(pct(bare_cold, 0.5)),
            ms(pct(agent_cold, 0.5)),
            ms(pct(agent_cold, 0.5) - pct(bare_cold, 0.5)),
        ],
        [
            "cold start p99",
            ms(pct(bare_cold, 0.99)),
            ms(pct(agent_cold, 0.99)),
            ms(pct(agent_cold, 0.99) - pct(bare_cold, 0.99)),
        ],
        ["warm / bare (p50)", "1.00x", f"{agent50 / bare50:.2f}x", ""],
        ["cold / warm (p50)", "", f"{pct(agent_cold, 0.5) / agent50:.1f}x", ""],
    ]
    print(f"Claude Code turns against a fake Messages API (answers at once): {args.warm} warm,")
    print(f"{args.cold} cold; CLI {_cli_version()}, Python {sys.version.split()[0]}")
    print()
    print(format_table(["", "bare ClaudeSDKClient", "palaver agent", "overhead"], rows))
    print()
    live_rows: list[list[str]] = []
    for count, figures in ((1, one), (args.projects, many)):
        live_rows.append(
            [
                str(count),
                f"{figures['processes']:.0f}",
                f"{figures['rss_each']:.0f} MB",
                f"{figures['rss_total']:.0f} MB",
                ms(figures["warm_p50"]),
                ms(figures["warm_p99"]),
            ]
        )
    print(
        format_table(
            [
                "live projects",
                "CLI processes",
                "RSS per CLI",
                "RSS total",
                "warm p50",
                "warm p99",
            ],
            live_rows,
        )
    )


def _cli_version() -> str:
    import claude_agent_sdk

    version = Path(claude_agent_sdk.__file__).parent / "_bundled" / "claude.version"
    return version.read_text().split()[0] if version.exists() else "?"


def _args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--warm", type=int, default=30, help="warm follow-ups per variant")
    parser.add_argument("--cold", type=int, default=8, help="cold starts per variant")
    parser.add_argument("--projects", type=int, default=20, help="live projects, second row")
    parser.add_argument("--rounds", type=int, default=3, help="follow-ups per live project")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(_args()))
