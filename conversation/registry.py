"""The command registry: every chat command once, with what interfaces need to offer it.

Telegram's command menu, Discord's slash commands and /help are all made from these
entries, so a command added here appears everywhere, described the same way. Whether
a command answers only the asker (``private``) or only admins may use it
(``admin_only``) is decided here too, not by an interface.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from conversation.access import Actor
from conversation.outbound import OutboundFile
from memory.types import ChatKey


@dataclass(frozen=True, slots=True)
class CommandCall:
    """A command as the core received it."""

    key: ChatKey
    actor: Actor
    argument: str
    private_chat: bool  # asked in a one-to-one chat with the bot
    admin: bool  # the asker is one of the bot's admins


@dataclass(frozen=True, slots=True)
class Reply:
    """What a command answers: text, or a file with the text as its caption."""

    text: str
    file: OutboundFile | None = None


Handler = Callable[[CommandCall], Awaitable[Reply]]
Completer = Callable[[CommandCall, str], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Argument:
    """A command's argument, as Discord's slash commands show it (Telegram and the
    console take the text after the command)."""

    name: str
    description: str
    choices: tuple[tuple[str, str], ...] = ()  # (label, value)
    required: bool = False
    complete: Completer | None = None  # suggestions for what was typed so far


@dataclass(frozen=True, slots=True)
class Subcommand:
    """A sub-command (``/project use NAME``): its name is the argument's first word."""

    name: str
    description: str
    arguments: tuple[Argument, ...] = ()


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    description: str  # one line, shown in menus and /help
    handler: Handler = field(compare=False)
    aliases: tuple[str, ...] = ()
    arguments: tuple[Argument, ...] = ()
    subcommands: tuple[Subcommand, ...] = ()
    private: bool = False  # answered to the asker alone, never in a shared chat
    admin_only: bool = False


def parse_command(text: str) -> tuple[str, str] | None:
    """``"/reset extra"`` -> ``("reset", "extra")``; None if ``text`` is no command."""
    stripped = text.strip()
    if not stripped.startswith("/") or len(stripped) < 2:
        return None
    head, *tail = stripped[1:].split(maxsplit=1)
    name = head.lower()
    if not name.replace("_", "").isalnum():
        return None
    return name, (tail[0] if tail else "").strip()


class Registry:
    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self._names: dict[str, str] = {}  # a name or alias -> the command's name

    def add(self, command: Command) -> None:
        for name in (command.name, *command.aliases):
            if name in self._names:
                raise ValueError(f"/{name} is registered twice")
            self._names[name] = command.name
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        """The command called ``name`` (or one of its aliases)."""
        found = self._names.get(name.lower())
        return None if found is None else self._commands[found]

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())
