"""The built-in chat commands, one implementation for every interface.

Each is registered with its metadata (conversation.registry); interfaces build their
menus and slash commands from the registry and pass every call to the dispatcher.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from conversation.export import FORMATS, MIME, SUFFIX, write_export
from conversation.outbound import OutboundFile
from conversation.registry import Argument, Command, CommandCall, Registry, Reply
from conversation.turn import Turn
from memory.manager import SessionManager
from memory.types import SessionStatus

INTRO = (
    "I'm Palaver, a Claude chat bot with a memory: I keep this conversation, "
    "and fold older parts into summaries when it grows long."
)


class BuiltinCommands:
    """/help, /reset, /status, /summary, /export and /stats."""

    def __init__(
        self, registry: Registry, manager: SessionManager, turn: Turn, exports: Path
    ) -> None:
        self.registry = registry
        self.manager = manager
        self.turn = turn
        self.exports = exports

    def register(self) -> None:
        add = self.registry.add
        add(Command("help", "What this bot does and its commands", self.help, aliases=("start",)))
        add(Command("reset", "Start a fresh conversation", self.reset, aliases=("new",)))
        add(
            Command(
                "status",
                "Tokens used, budget, summaries and counters",
                self.status,
                private=True,
            )
        )
        add(Command("summary", "The summaries of older history", self.summary, private=True))
        add(
            Command(
                "export",
                "This conversation as a file (Markdown, JSON or CSV)",
                self.export,
                arguments=(
                    Argument(
                        "format",
                        "Markdown to read (the default), JSON to process, CSV for a spreadsheet",
                        choices=(("Markdown", "markdown"), ("JSON", "json"), ("CSV", "csv")),
                    ),
                ),
                private=True,
            )
        )
        add(
            Command(
                "stats",
                "Usage across all conversations (admins)",
                self.stats,
                private=True,
                admin_only=True,
            )
        )

    async def help(self, call: CommandCall) -> Reply:
        lines = [INTRO, ""]
        for command in self.registry:
            if command.admin_only and not call.admin:
                continue
            also = "".join(f", /{alias}" for alias in command.aliases)
            lines.append(f"/{command.name}{also} - {command.description}")
        return Reply("\n".join(lines))

    async def reset(self, call: CommandCall) -> Reply:
        await self.manager.reset(call.key)
        return Reply(
            "Started a fresh conversation. The previous one is kept until cleanup "
            "and no longer in my context."
        )

    async def status(self, call: CommandCall) -> Reply:
        manager = self.manager
        session = await manager.find_by_chat(call.key)
        if session is None:
            return Reply("No conversation yet: send a message to start one.")
        profile = self.turn.profile(await manager.active_project(call.key))
        stats = await manager.session_stats(
            session.id,
            token_limit=profile.token_limit,
            system_prompt=profile.system_prompt,
            model=profile.model,
        )
        usage = stats.usage
        expires = session.last_activity_at + timedelta(seconds=manager.expire_after_s)
        # The state reached by now, which the jobs may not have stored yet.
        status = manager.state_of(session)
        state = status.value
        if status in (SessionStatus.ACTIVE, SessionStatus.IDLE, SessionStatus.FINALIZED):
            state += f"; continues until {expires:%Y-%m-%d %H:%M} UTC unless you write again"
        elif status is SessionStatus.EXPIRED:
            state += "; your next message starts a fresh conversation"
            if manager.settings.carry_closing_summary:
                state += " that carries a summary of this one"
        lines = [
            f"Session #{stats.session_id} ({state}), model {profile.model}",
            f"Context: {stats.context_tokens:,} of {stats.token_limit:,} tokens "
            f"({stats.budget_used:.0%}; summaries start at "
            f"{manager.summarize_threshold:.0%})",
            f"Messages: {stats.message_count:,}; summaries: {stats.summaries} "
            f"(covering messages 1-{stats.summarized_through})"
            if stats.summaries
            else f"Messages: {stats.message_count:,}; summaries: none yet",
            f"Tokens billed: {usage.input_tokens:,} in, {usage.output_tokens:,} out, "
            f"{usage.cache_read_tokens:,} cache read, {usage.cache_write_tokens:,} cache write",
            f"Cost: ${usage.cost_usd:.4f}; tool calls: {stats.tool_calls}; errors: {stats.errors}",
        ]
        return Reply("\n".join(lines))

    async def summary(self, call: CommandCall) -> Reply:
        session = await self.manager.find_by_chat(call.key)
        if session is None:
            return Reply("No conversation yet.")
        summaries = await self.manager.summaries(session.id)
        parts = []
        if session.carried_summary:
            parts.append("From the previous session:\n" + session.carried_summary)
        for s in summaries:
            flag = " (offline summary)" if s.fallback else ""
            parts.append(f"Messages {s.first_seq}-{s.last_seq}, level {s.level}{flag}:\n{s.text}")
        if not parts:
            return Reply(
                "No summaries yet: they are written when the conversation reaches "
                f"{self.manager.summarize_threshold:.0%} of its token budget."
            )
        return Reply("\n\n".join(parts))

    async def export(self, call: CommandCall) -> Reply:
        """The chat's current session as a file, written page by page off the loop."""
        kind = FORMATS.get(call.argument.strip().lower() or "markdown")
        if kind is None:
            return Reply("Usage: /export (Markdown), /export json or /export csv.")
        session = await self.manager.find_by_chat(call.key)
        if session is None:
            return Reply("No conversation yet: send a message to start one.")
        path = await write_export(self.manager, session, kind, self.exports)
        name = f"palaver-{call.key.interface}-conversation-{session.id}{SUFFIX[kind]}"
        label = {"markdown": "Markdown", "json": "JSON", "csv": "CSV"}[kind]
        return Reply(
            f"Conversation #{session.id}: {session.message_count:,} messages ({label}).",
            file=OutboundFile(name, path, MIME[kind]),
        )

    async def stats(self, call: CommandCall) -> Reply:
        """Usage across every session (admins only: it shows other people's totals)."""
        stats = await self.manager.global_stats()
        by_interface = ", ".join(f"{name} {count:,}" for name, count in stats.by_interface.items())
        lines = [
            f"Sessions: {stats.sessions_total:,} ({stats.sessions_active:,} active or idle)"
            + (f"; by interface: {by_interface}" if by_interface else ""),
            f"Messages: {stats.messages:,} "
            f"(about {stats.average_session_messages:.1f} per session)",
            f"Tokens billed: {stats.input_tokens:,} in, {stats.output_tokens:,} out, "
            f"{stats.cache_read_tokens:,} cache read, {stats.cache_write_tokens:,} cache write "
            f"({stats.prompt_cache_read_share:.0%} of input from the prompt cache)",
            f"Cost: ${stats.cost_usd:.4f}",
            f"Session cache: {stats.cache_hit_rate:.0%} hits "
            f"({stats.cache_hits:,} hits, {stats.cache_misses:,} misses)",
        ]
        return Reply("\n".join(lines))
