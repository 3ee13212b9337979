"""The application object: the one place where everything is built and wired.

Config -> database (migrated) -> store -> session manager -> agents -> the
conversation core (turn, command registry, dispatcher) -> the jobs (runner and
timetable) -> the operator surface (when [http] is on) -> interfaces. No
module-level singletons: tests build their own Palaver with their own config,
several side by side if they like.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anthropic

from agents.base import Agent
from agents.claude import ClaudeAgent
from agents.claude_code import ClaudeCodeAgent, claude_config_dir
from agents.claude_summarizer import ClaudeSummarizer
from agents.offline import OfflineAgent
from agents.pricing import Pricing
from bots.config import Config
from bots.redaction import Redactor
from conversation.access import AccessPolicy
from conversation.approvals import Approvals
from conversation.attachments import AttachmentReader
from conversation.code_turn import CodeTurns
from conversation.commands import BuiltinCommands
from conversation.delivery import Outbox
from conversation.dispatcher import Dispatcher
from conversation.job_commands import JobCommands
from conversation.job_runner import JobRunner
from conversation.ordering import ChatLanes
from conversation.outbound import Interface
from conversation.projects import ProjectCommands
from conversation.ratelimit import RateLimiter
from conversation.registry import Registry
from conversation.scheduler import Scheduler
from conversation.turn import Turn
from memory.database import Database, migrate, open_database
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.private_files import private_dir
from memory.store import Store
from memory.summarizer import Summarizer
from memory.tokens import TokenCounter

if TYPE_CHECKING:
    from bots.http_server import OperatorServer

log = logging.getLogger(__name__)


def freeze_startup_heap() -> None:
    """Take what start-up loaded out of the garbage collector's full passes.

    A host keeps its modules, engines, clients and settings for its whole life;
    left in the collector's oldest generation, every full pass walks all of them
    again (~90,000 objects, 20-50 ms on the benchmark machine: a stall of the one
    event loop that every chat feels). Frozen, they are still freed by reference
    counting if they are ever dropped. Called once, after start-up.
    """
    gc.collect()
    gc.freeze()


@dataclass(slots=True)
class Wiring:
    database: Database
    manager: SessionManager
    agent: Agent
    turn: Turn
    dispatcher: Dispatcher
    client: anthropic.AsyncAnthropic | None
    code: CodeTurns
    scheduler: Scheduler


class Palaver:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._wiring: Wiring | None = None
        self.operator: OperatorServer | None = None  # the HTTP API, when [http] is enabled

    @property
    def wiring(self) -> Wiring:
        if self._wiring is None:
            raise RuntimeError("Palaver.start() has not run")
        return self._wiring

    @property
    def manager(self) -> SessionManager:
        return self.wiring.manager

    @property
    def turn(self) -> Turn:
        return self.wiring.turn

    @property
    def dispatcher(self) -> Dispatcher:
        return self.wiring.dispatcher

    @property
    def scheduler(self) -> Scheduler:
        """The jobs: their timetable once ``start_jobs`` ran; by hand at any time."""
        return self.wiring.scheduler

    def build_claude(self) -> tuple[Agent, Summarizer | None, anthropic.AsyncAnthropic | None]:
        """Claude and its summarizer when ANTHROPIC_API_KEY is set, else the offline agent.

        The SDK's own retries are off: the agent retries itself (bounded, honouring
        retry-after, never repeating streamed text). ``claude.base_url`` points at a
        gateway; left empty, the SDK reads ANTHROPIC_BASE_URL itself.
        """
        key = self.config.secrets.anthropic_api_key
        if key is None:
            return OfflineAgent(), None, None
        settings = self.config.claude
        client = anthropic.AsyncAnthropic(
            api_key=key.get_secret_value(),
            base_url=settings.base_url or None,
            max_retries=0,
            timeout=settings.timeout_s,
            # aiohttp under the SDK: a fraction of httpx's CPU per streamed call.
            http_client=anthropic.DefaultAioHttpClient(timeout=settings.timeout_s),
        )
        agent = ClaudeAgent(client, settings, Pricing(settings))
        return agent, ClaudeSummarizer(client, settings), client

    def build_claude_code(self, manager: SessionManager) -> ClaudeCodeAgent | None:
        """The Claude Code agent for projects, when ANTHROPIC_API_KEY is set. Its CLI
        gets the key in its environment (never its arguments), its own config dir in
        the data dir, and resumes sessions from Palaver's database."""
        key = self.config.secrets.anthropic_api_key
        if key is None:
            return None
        config = self.config
        config.projects_root.mkdir(parents=True, exist_ok=True)
        return ClaudeCodeAgent(
            config.claude_code,
            config_dir=claude_config_dir(config.claude_code, config.palaver.data_dir),
            projects_root=config.projects_root,
            transcripts=manager.transcripts,
            api_key=key.get_secret_value(),
            base_url=config.claude.base_url or None,
            pricing=Pricing(config.claude),
        )

    async def start(self) -> None:
        """Open and migrate the database, then build the memory and the turn.

        A start that fails midway closes what it opened (the database, the manager,
        the Claude client) before it raises: a failed start leaks nothing.
        """
        config = self.config
        # Exports, logs and Claude Code's own state live here: nobody else's business.
        private_dir(config.palaver.data_dir)
        database = open_database(config.database_url, config.database)
        client: anthropic.AsyncAnthropic | None = None
        manager: SessionManager | None = None
        try:
            await migrate(database)
            agent, summarizer, client = self.build_claude()
            opened = SessionManager(Store(database), TokenCounter(), config.memory, summarizer)
            await opened.start()
            manager = opened
            self._wire(database, manager, agent, client)
        except BaseException:
            if self._wiring is not None:
                await self.stop()
            else:
                try:
                    if manager is not None:
                        await manager.close(config.palaver.shutdown_grace_s)
                finally:
                    if client is not None:
                        await client.close()
                    await database.dispose()
            self.operator = None
            raise
        log.info("palaver started: database %s, agent %s", database.reader.dialect.name, agent.name)

    def _wire(
        self,
        database: Database,
        manager: SessionManager,
        agent: Agent,
        client: anthropic.AsyncAnthropic | None,
    ) -> None:
        """The core, the jobs and the operator surface, on an open memory."""
        config = self.config
        code = CodeTurns(
            manager,
            self.build_claude_code(manager),
            config.projects_root,
            config.agent.model,
            # Claude Code's CLI holds the API key and a tool can show it to the model.
            redact=Redactor.for_config(config).redact,
        )
        turn = Turn(manager, agent, config.agent, config.spend, code)
        registry = Registry()
        BuiltinCommands(registry, manager, turn, config.palaver.data_dir / "exports").register()
        ProjectCommands(registry, manager, code, config.projects_root).register()
        access = AccessPolicy(config.access)
        limiter = RateLimiter(config.rate_limit)
        dispatcher = Dispatcher(
            turn=turn,
            registry=registry,
            access=access,
            limiter=limiter,
            reader=AttachmentReader(config.attachments),
            lanes=ChatLanes(config.palaver.max_concurrent_turns),
            outbox=Outbox(manager, config.memory.expire_after_s),
            approvals=Approvals(access, config.claude_code.approval_timeout_s),
        )
        runner = JobRunner(
            manager, config.jobs, prunables={"rate_limit": limiter, "notices": dispatcher.notices}
        )
        scheduler = Scheduler(runner)
        JobCommands(registry, scheduler).register()
        self._wiring = Wiring(database, manager, agent, turn, dispatcher, client, code, scheduler)
        if config.http.enabled:
            from bots.http_server import OperatorServer  # aiohttp's server: loaded when on

            token = config.secrets.palaver_admin_token
            secret = token.get_secret_value() if token else None
            exports = config.palaver.data_dir / "exports"
            self.operator = OperatorServer(config.http, secret, dispatcher, exports)
            self.operator.jobs = scheduler
            runner.observers.append(self.operator.job_finished)

    async def start_jobs(self) -> None:
        """Put the jobs on their timetable (``[jobs] enabled``); the serving process
        does, the operator's one-off commands do not."""
        if self.config.jobs.enabled:
            await self.scheduler.start()

    async def stop(self) -> None:
        """Stop the jobs (a running one gets the shutdown grace), flush pending
        writes and summaries, then close the database."""
        if self._wiring is None:
            return
        wiring, self._wiring = self._wiring, None
        try:
            try:
                await wiring.scheduler.stop(self.config.palaver.shutdown_grace_s)
            finally:
                await wiring.code.close()
            await wiring.manager.close(self.config.palaver.shutdown_grace_s)
        finally:
            if wiring.client is not None:
                await wiring.client.close()
            await wiring.database.dispose()

    async def resume(self, interfaces: Sequence[Interface]) -> None:
        """Once the interfaces are up: deliver what is owed from before the start."""
        try:
            await self.dispatcher.resume({i.name: i for i in interfaces})
        except PalaverError as error:
            log.warning("could not look up what is owed from before the start: %s", error)

    async def close_interfaces(self, interfaces: Sequence[Interface], grace: float) -> None:
        """Shutdown: the interfaces take no more events, the core lets the turns in
        flight finish for ``grace`` seconds (then cancels them: their messages are
        kept, and answered after the restart), a running job likewise (then it is
        cancelled and recorded so), and the interfaces close.

        Also the way out of a start that failed midway: an interface that never
        started (or started half-way) is stopped all the same, and one that fails
        to stop is logged and the others still close.
        """
        for interface in interfaces:
            try:
                await interface.stop_receiving()
            except Exception:
                log.exception("%s: could not stop receiving", interface.name)
        if self._wiring is not None:
            # A job in flight gets the same grace as the turns, side by side.
            await asyncio.gather(self.dispatcher.drain(grace), self.scheduler.stop(grace))
        for interface in reversed(interfaces):
            try:
                await interface.stop()
            except Exception:
                log.exception("%s: could not stop", interface.name)

    def build_interfaces(self) -> list[Interface]:
        """The bots whose tokens are set, built but not started."""
        interfaces: list[Interface] = []
        telegram_token = self.config.secrets.telegram_bot_token
        if telegram_token is not None:
            from bots.telegram_bot import TelegramBot  # PTB is loaded only when configured

            interfaces.append(
                TelegramBot(
                    self.config.telegram,
                    telegram_token.get_secret_value(),
                    self.dispatcher,
                    trace=self.operator.metrics.trace("telegram") if self.operator else None,
                )
            )
        discord_token = self.config.secrets.discord_bot_token
        if discord_token is not None:
            from bots.discord_bot import DiscordBot  # discord.py is loaded only when configured

            interfaces.append(
                DiscordBot(
                    self.config.discord,
                    discord_token.get_secret_value(),
                    self.dispatcher,
                    trace=self.operator.metrics.trace("discord") if self.operator else None,
                )
            )
        if self.operator is not None:
            interfaces.append(self.operator.watch(interfaces))
        return interfaces

    def startup_hint(self) -> str:
        secrets = self.config.secrets
        lines = ["Palaver is running in the console (type /help; Ctrl-D to quit)."]
        if not secrets.anthropic_api_key:
            lines.append("  ANTHROPIC_API_KEY   not set: replies come from the offline agent")
        if not secrets.telegram_bot_token:
            lines.append("  TELEGRAM_BOT_TOKEN  set it to serve a Telegram bot")
        if not secrets.discord_bot_token:
            lines.append("  DISCORD_BOT_TOKEN   set it to serve a Discord bot")
        return "\n".join(lines)
