"""The application object: the one place where everything is built and wired.

Config -> database (migrated) -> store -> session manager -> agent -> turn and
commands -> interfaces. No module-level singletons: tests build their own Palaver
with their own config, several side by side if they like.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from agents.base import Agent
from agents.offline import OfflineAgent
from bots.access import AccessPolicy
from bots.commands import Commands
from bots.config import Config
from bots.interface import Interface
from bots.ratelimit import RateLimiter
from bots.turn import Turn
from memory.database import Database, migrate, open_database
from memory.manager import SessionManager
from memory.store import Store
from memory.tokens import TokenCounter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Wiring:
    database: Database
    manager: SessionManager
    agent: Agent
    turn: Turn
    commands: Commands


class Palaver:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._wiring: Wiring | None = None

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
    def commands(self) -> Commands:
        return self.wiring.commands

    def build_agent(self) -> Agent:
        return OfflineAgent()

    async def start(self) -> None:
        """Open and migrate the database, then build the memory and the turn."""
        config = self.config
        database = open_database(config.database_url, config.database)
        try:
            await migrate(database)
            manager = SessionManager(Store(database), TokenCounter(), config.memory)
            await manager.start()
        except BaseException:
            await database.dispose()
            raise
        agent = self.build_agent()
        turn = Turn(
            manager,
            agent,
            AccessPolicy(config.access),
            RateLimiter(config.rate_limit),
            config.agent,
        )
        self._wiring = Wiring(database, manager, agent, turn, Commands(turn))
        log.info("palaver started: database %s, agent %s", database.reader.dialect.name, agent.name)

    async def stop(self) -> None:
        """Flush pending writes and summaries, then close the database."""
        if self._wiring is None:
            return
        wiring, self._wiring = self._wiring, None
        try:
            await wiring.manager.close()
        finally:
            await wiring.database.dispose()

    def build_interfaces(self) -> list[Interface]:
        """The bots whose tokens are set, built but not started."""
        interfaces: list[Interface] = []
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
