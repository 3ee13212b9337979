"""Chat commands, one implementation for every interface.

An interface parses nothing itself: it passes the text after the slash (or the
slash command's name and argument) to ``Commands.run`` and renders the reply.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from bots.access import Actor
from bots.turn import Turn
from memory.errors import PalaverError
from memory.types import ChatKey, Role, SessionInfo, StoredMessage, SummaryRecord, Usage


@dataclass(frozen=True, slots=True)
class ReplyFile:
    """A file a command answers with (an export); interfaces upload it as a document."""

    name: str
    data: bytes
    mime_type: str


@dataclass(frozen=True, slots=True)
class CommandReply:
    text: str
    private: bool = False  # only for the asker (an ephemeral reply where possible)
    file: ReplyFile | None = None  # sent as an attachment, ``text`` as its caption


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
    CommandInfo("export", "This conversation as a file (/export json for JSON)"),
    CommandInfo("stats", "Usage across all conversations", admin_only=True),
)
ALIASES = {"new": "reset", "start": "help"}

Handler = Callable[[ChatKey, Actor, str], Awaitable[CommandReply]]


def parse_command(text: str) -> tuple[str, str] | None:
    """``"/reset@bot extra"`` -> ``("reset", "extra")``; None if not a command."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    head, *tail = stripped[1:].split(maxsplit=1)
    rest = tail[0] if tail else ""
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
            "export": self.export,
            "stats": self.stats,
        }
        self._extra: tuple[CommandInfo, ...] = ()

    def register(self, info: CommandInfo, handler: Handler) -> None:
        """Add a command (interfaces and later features extend the shared set)."""
        self._handlers[info.name] = handler
        self._extra = (*self._extra, info)

    def knows(self, name: str) -> bool:
        """Whether ``name`` (or an alias of it) is a command here."""
        return ALIASES.get(name, name) in self._handlers

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

    async def export(self, key: ChatKey, actor: Actor, argument: str) -> CommandReply:
        """The chat's current session as a file: Markdown to read, JSON to process."""
        kind = argument.strip().lower() or "markdown"
        if kind not in ("markdown", "md", "json"):
            return CommandReply("Usage: /export (Markdown) or /export json.")
        session = await self.manager.find_by_chat(key)
        if session is None:
            return CommandReply("No conversation yet: send a message to start one.")
        messages = await self.manager.messages(session.id)
        summaries = await self.manager.summaries(session.id)
        stem = f"palaver-{key.interface}-conversation-{session.id}"
        if kind == "json":
            data = _export_json(session, messages, summaries)
            file = ReplyFile(f"{stem}.json", data, "application/json")
        else:
            data = _export_markdown(session, messages, summaries)
            file = ReplyFile(f"{stem}.md", data, "text/markdown")
        label = "JSON" if kind == "json" else "Markdown"
        return CommandReply(
            f"Conversation #{session.id}: {len(messages)} messages ({label}).", file=file
        )

    async def stats(self, key: ChatKey, actor: Actor, argument: str) -> CommandReply:
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
        return CommandReply("\n".join(lines), private=True)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC") if moment is not None else "-"


def _speaker(message: StoredMessage) -> str:
    if message.role is Role.ASSISTANT:
        return "Palaver"
    if message.role is Role.USER:
        return message.author_name or (f"user {message.author_id}" if message.author_id else "User")
    return message.role.value.capitalize()


def _export_markdown(
    session: SessionInfo, messages: list[StoredMessage], summaries: list[SummaryRecord]
) -> bytes:
    usage = session.usage
    lines = [
        f"# Palaver conversation #{session.id}",
        "",
        f"- Chat: {session.chat_ref or session.scope}",
        f"- Started: {_when(session.created_at)}; last activity: "
        f"{_when(session.last_activity_at)}; status: {session.status.value}",
        f"- Messages: {len(messages)}; tokens billed: {usage.input_tokens:,} in, "
        f"{usage.output_tokens:,} out; cost: ${usage.cost_usd:.4f}",
        "",
    ]
    if session.carried_summary:
        lines += ["## Carried over from the previous conversation", "", session.carried_summary, ""]
    if summaries:
        lines += ["## Summaries of older messages", ""]
        for s in summaries:
            flag = ", offline summary" if s.fallback else ""
            lines += [f"### Messages {s.first_seq}-{s.last_seq} (level {s.level}{flag})", ""]
            lines += [s.text, ""]
    lines += ["## Messages", ""]
    for m in messages:
        lines += [f"**{_speaker(m)}** · {_when(m.created_at)}", "", m.text, ""]
    return "\n".join(lines).encode("utf-8")


def _export_json(
    session: SessionInfo, messages: list[StoredMessage], summaries: list[SummaryRecord]
) -> bytes:
    def usage(u: Usage | None) -> dict[str, Any] | None:
        return None if u is None else asdict(u)

    document = {
        "format": "palaver-export/1",
        "session": {
            "id": session.id,
            "chat": session.chat_ref,
            "scope": session.scope,
            "project_id": session.project_id,
            "status": session.status.value,
            "created_at": session.created_at.isoformat(),
            "last_activity_at": session.last_activity_at.isoformat(),
            "ended_at": session.ended_at.isoformat() if session.ended_at else None,
            "usage": usage(session.usage),
            "carried_summary": session.carried_summary,
            "closing_summary": session.closing_summary,
        },
        "summaries": [
            {
                "first_seq": s.first_seq,
                "last_seq": s.last_seq,
                "level": s.level,
                "text": s.text,
                "summarizer": s.summarizer,
                "fallback": s.fallback,
                "created_at": s.created_at.isoformat(),
            }
            for s in summaries
        ],
        "messages": [
            {
                "seq": m.seq,
                "role": m.role.value,
                "author_id": m.author_id,
                "author_name": m.author_name,
                "text": m.text,
                "created_at": m.created_at.isoformat(),
                "token_count": m.token_count,
                "platform_message_id": m.platform_message_id,
                "metadata": m.metadata,
                "usage": usage(m.usage),
            }
            for m in messages
        ],
    }
    return json.dumps(document, ensure_ascii=False, indent=2).encode("utf-8")
