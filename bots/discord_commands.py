"""Discord's slash commands, made from the core's command registry.

Every registered command becomes a slash command with the same name, description and
arguments (string options, with their choices and autocomplete); a command with
sub-commands becomes a group (``/project use``). Each call is handed to ``on_call``
as (name, argument text), exactly what typing the command would give the core.
discord.py reads a callback's parameters from its signature, so each command gets a
callback of its own with as many optional string parameters as it has arguments,
renamed to the arguments' names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

import discord
from discord import app_commands

from conversation.registry import Argument, Command, CommandCall, Completer, Registry

Interaction = discord.Interaction[discord.Client]
OnCall = Callable[[Interaction, str, str], Awaitable[None]]
CallOf = Callable[[Interaction], CommandCall]
Callback = Callable[..., Coroutine[Any, Any, None]]
MAX_ARGUMENTS = 3


def _callback(name: str, count: int, on_call: OnCall) -> Callback:
    """A callback taking ``count`` optional strings, joined into the argument text."""

    def argument(*values: str | None) -> str:
        return " ".join(v.strip() for v in values if v and v.strip())

    if count == 0:

        async def call0(interaction: Interaction) -> None:
            await on_call(interaction, name, "")

        return call0
    if count == 1:

        async def call1(interaction: Interaction, a1: str | None = None) -> None:
            await on_call(interaction, name, argument(a1))

        return call1
    if count == 2:

        async def call2(
            interaction: Interaction, a1: str | None = None, a2: str | None = None
        ) -> None:
            await on_call(interaction, name, argument(a1, a2))

        return call2

    async def call3(
        interaction: Interaction,
        a1: str | None = None,
        a2: str | None = None,
        a3: str | None = None,
    ) -> None:
        await on_call(interaction, name, argument(a1, a2, a3))

    return call3


def _describe(text: str) -> str:
    return text[:100] or "A Palaver command"


def _slash(
    name: str,
    description: str,
    arguments: Sequence[Argument],
    call_name: str,
    on_call: OnCall,
    call_of: CallOf,
) -> app_commands.Command[Any, ..., None]:
    arguments = arguments[:MAX_ARGUMENTS]
    callback = _callback(call_name, len(arguments), on_call)
    slots = [f"a{i}" for i in range(1, len(arguments) + 1)]
    callback = app_commands.rename(**{s: a.name for s, a in zip(slots, arguments, strict=True)})(
        callback
    )
    callback = app_commands.describe(
        **{s: _describe(a.description) for s, a in zip(slots, arguments, strict=True)}
    )(callback)
    choices = {
        s: [app_commands.Choice(name=label, value=value) for label, value in a.choices]
        for s, a in zip(slots, arguments, strict=True)
        if a.choices
    }
    if choices:
        callback = app_commands.choices(**choices)(callback)
    command: app_commands.Command[Any, ..., None] = app_commands.Command(
        name=name, description=_describe(description), callback=callback
    )
    for slot, spec in zip(slots, arguments, strict=True):
        if spec.complete is not None:
            command.autocomplete(slot)(_suggester(spec.complete, call_of))
    return command


def _suggester(
    complete: Completer, call_of: CallOf
) -> Callable[[Interaction, str], Coroutine[Any, Any, list[app_commands.Choice[str]]]]:
    async def suggest(interaction: Interaction, current: str) -> list[app_commands.Choice[str]]:
        found = await complete(call_of(interaction), current)
        return [app_commands.Choice(name=v[:100], value=v[:100]) for v in found[:25]]

    return suggest


def build_tree(
    tree: app_commands.CommandTree[Any], registry: Registry, on_call: OnCall, call_of: CallOf
) -> None:
    """Add every registered command to ``tree``."""
    for command in registry:
        tree.add_command(_for(command, on_call, call_of))


def _for(
    command: Command, on_call: OnCall, call_of: CallOf
) -> app_commands.Command[Any, ..., None] | app_commands.Group:
    if not command.subcommands:
        return _slash(
            command.name, command.description, command.arguments, command.name, on_call, call_of
        )
    group = app_commands.Group(name=command.name, description=_describe(command.description))

    for sub in command.subcommands:

        async def on_sub(
            interaction: Interaction, name: str, argument: str, sub: str = sub.name
        ) -> None:
            await on_call(interaction, name, f"{sub} {argument}".strip())

        group.add_command(
            _slash(sub.name, sub.description, sub.arguments, command.name, on_sub, call_of)
        )
    return group
