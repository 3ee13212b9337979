"""Chat commands, one implementation for every interface.

An interface parses nothing itself: it passes the text after the slash (or the
slash command's name and argument) to ``Commands.run`` and renders the reply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bots.access import Actor
from bots.turn import Turn
from memory.errors import PalaverError
from memory.types import ChatKey


@dataclass(frozen=True, slots=True)
class CommandReply:
    text: str
    private: bool = False  # only for the asker (an ephemeral reply where possible)


@dataclass(frozen=True, slots=True)
class CommandInfo:
    name: str
    description: str
    admin_only: bool = False


COMMANDS: tuple[CommandInfo, ...] = (
    CommandInfo("help", "What this bot does and its commands"),
    CommandInfo("reset", "Start a fresh conversation (alias: /new)"),
    CommandInfo("status", "Tokens used, budget, summaries and counters"),
    CommandInfo("summary", "The summaries of older history"),
)
ALIASES = {"new": "reset", "start": "help"}

Handler = Callable[[ChatKey, Actor, str], Awaitable[CommandReply]]


def parse_command(text: str) -> tuple[str, str] | None:
    """``"/reset@bot extra"`` -> ``("reset", "extra")``; None if not a command."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    head, _, rest = stripped[1:].partition(" ")
    name = head.split("@", 1)[0].lower()
    if not name.replace("_", "").isalnum():
        return None
    return name, rest.strip()


class Commands:
    def __init__(self, turn: Turn) -> None:
        self.turn = turn
        self.manager = turn.manager
        self._handlers: dict[str, Handler] = {
            "help": self.help,
            "reset": self.reset,
            "status": self.status,
            "summary": self.summary,
        }
        self._extra: tuple[CommandInfo, ...] = ()

    def register(self, info: CommandInfo, handler: Handler) -> None:
        """Add a command (interfaces and later features extend the shared set)."""
        self._handlers[info.name] = handler
        self._extra = (*self._extra, info)

    @property
    def infos(self) -> tuple[CommandInfo, ...]:
        return COMMANDS + self._extra

    async def run(self, name: str, argument: str, key: ChatKey, actor: Actor) -> CommandReply:
        name = ALIASES.get(name, name)
        handler = self._handlers.get(name)
        if handler is None:
            return CommandReply(f"Unknown command /{name}. Send /help to see what I can do.")
        if not self.turn.access.allows(actor):
            return CommandReply(self.turn.access.denied_message(actor), private=True)
        info = next((i for i in self.infos if i.name == name), None)
        if info is not None and info.admin_only and not self.turn.access.is_admin(actor):
            return CommandReply("Only the bot's admins can use that command.", private=True)
        try:
            return await handler(key, actor, argument)
        except PalaverError as error:
            return CommandReply(f"That didn't work: {error}.", private=True)

    async def help(self, key: ChatKey, actor: Actor, argument: str) -> CommandReply:
        lines = [
            "I'm Palaver, a Claude chat bot with a memory: I keep this conversation, "
            "and fold older parts into summaries when it grows long.",
            "",
        ]
        is_admin = self.turn.access.is_admin(actor)
        lines += [
            f"/{i.name} - {i.description}" for i in self.infos if not i.admin_only or is_admin
        ]
        return CommandReply("\n".join(lines))

    async def reset(self, key: ChatKey, actor: Actor, argument: str) -> CommandReply:
        await self.manager.reset(key)
        return CommandReply(
            "Started a fresh conversation. The previous one is kept until cleanup "
            "and no longer in my context."
        )

    async def status(self, key: ChatKey, actor: Actor, argument: str) -> CommandReply:
        session = await self.manager.find_by_chat(key)
        if session is None:
            return CommandReply("No conversation yet: send a message to start one.")
        profile = await self.turn.profile(session)
        stats = await self.manager.session_stats(session.id, token_limit=profile.token_limit)
        usage = stats.usage
        lines = [
            f"Session #{stats.session_id} ({stats.status.value}), model {profile.model}",
            f"Context: {stats.context_tokens:,} of {stats.token_limit:,} tokens "
            f"({stats.budget_used:.0%}; summaries start at "
            f"{self.manager.settings.summarize_threshold:.0%})",
            f"Messages: {stats.message_count:,}; summaries: {stats.summaries} "
            f"(covering messages 1-{stats.summarized_through})"
            if stats.summaries
            else f"Messages: {stats.message_count:,}; summaries: none yet",
            f"Tokens billed: {usage.input_tokens:,} in, {usage.output_tokens:,} out, "
            f"{usage.cache_read_tokens:,} cache read, {usage.cache_write_tokens:,} cache write",
            f"Cost: ${usage.cost_usd:.4f}; tool calls: {stats.tool_calls}; errors: {stats.errors}",
        ]
        return CommandReply("\n".join(lines))

    async def summary(self, key: ChatKey, actor: Actor, argument: str) -> CommandReply:
        session = await self.manager.find_by_chat(key)
        if session is None:
            return CommandReply("No conversation yet.")
        summaries = await self.manager.summaries(session.id)
        parts = []
        if session.carried_summary:
            parts.append("From the previous session:\n" + session.carried_summary)
        for s in summaries:
            flag = " (offline summary)" if s.fallback else ""
            parts.append(f"Messages {s.first_seq}-{s.last_seq}, level {s.level}{flag}:\n{s.text}")
        if not parts:
            return CommandReply(
                "No summaries yet: they are written when the conversation reaches "
                f"{self.manager.settings.summarize_threshold:.0%} of its token budget."
            )
        return CommandReply("\n\n".join(parts))
