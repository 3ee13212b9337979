"""The /project commands: named workspaces that chats work in, on every interface.

A project is a name, a kind (``claude_code``: Claude Code working in a directory
inside ``projects.root``; ``chat``: a Messages-API conversation with the project's
own prompt and model), and its settings, kept in the database so that admins can
change them from a chat (``/project set``) and every process sees the change from
its next turn. A chat (a Telegram forum topic and a Discord thread are chats of
their own) that uses a project continues the project's one session, whichever
platform it is on.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from agents.claude_code import PERMISSION_MODES
from agents.workspace import resolve_workdir
from conversation.code_turn import CodeTurns
from conversation.registry import Argument, Command, CommandCall, Registry, Reply, Subcommand
from memory.errors import PalaverError, ProjectNotFound
from memory.manager import SessionManager
from memory.types import Project

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
KINDS = ("claude_code", "chat")
ADMINS_ONLY = "Only the bot's admins can create or change projects."
USAGE = (
    "Usage: /project, /project list, /project use NAME, /project off, /project reset, "
    "/project history, /project info; admins: /project new NAME [DIR], "
    "/project set KEY VALUE"
)
SETTABLE = {
    "kind": "claude_code or chat",
    "model": "a model name",
    "prompt": "extra system prompt text (- clears it)",
    "tokens": "the token budget of the project's context (1000 to 2000000)",
    "dir": "the working directory, inside projects.root",
    "tools": "tools Claude Code may use without asking, comma-separated (- clears)",
    "mode": "Claude Code's permission mode: " + ", ".join(sorted(PERMISSION_MODES)),
    "budget": "the most a turn may cost, in USD (0: no limit)",
}


class ProjectCommands:
    def __init__(
        self,
        registry: Registry,
        manager: SessionManager,
        code: CodeTurns,
        root: Path,
    ) -> None:
        self.registry = registry
        self.manager = manager
        self.code = code
        self.root = root

    def register(self) -> None:
        name = Argument("name", "The project's name", required=True, complete=self.complete)
        self.registry.add(
            Command(
                "project",
                "Work in a project (Claude Code in a directory, or a shared conversation)",
                self.run,
                subcommands=(
                    Subcommand("show", "This chat's project and its state"),
                    Subcommand("list", "Every project"),
                    Subcommand("use", "Work in a project here", (name,)),
                    Subcommand("off", "Back to this chat's own conversation"),
                    Subcommand("reset", "The next turn starts a fresh Claude Code session"),
                    Subcommand("history", "The project's Claude Code sessions"),
                    Subcommand("info", "The project's settings"),
                    Subcommand(
                        "new",
                        "Create a project (admins)",
                        (
                            Argument("name", "The new project's name", required=True),
                            Argument("dir", "Its directory inside projects.root"),
                        ),
                    ),
                    Subcommand(
                        "set",
                        "Change a setting of this chat's project (admins)",
                        (
                            Argument(
                                "key",
                                "What to change",
                                required=True,
                                choices=tuple((key, key) for key in SETTABLE),
                            ),
                            Argument("value", "The new value", required=True),
                        ),
                    ),
                ),
            )
        )

    async def complete(self, call: CommandCall, typed: str) -> list[str]:
        """Project names starting with what was typed (Discord's autocomplete)."""
        typed = typed.lower()
        return [p.name for p in await self.manager.projects() if p.name.lower().startswith(typed)]

    async def run(self, call: CommandCall) -> Reply:
        sub, _, rest = call.argument.strip().partition(" ")
        rest = rest.strip()
        handlers = {
            "": self.show,
            "show": self.show,
            "list": self.listing,
            "use": self.use,
            "off": self.off,
            "reset": self.reset,
            "history": self.history,
            "info": self.info,
            "new": self.new,
            "set": self.set,
        }
        handler = handlers.get(sub.lower())
        if handler is None:
            return Reply(f"Unknown /project {sub}. {USAGE}")
        return await handler(call, rest)

    async def _active(self, call: CommandCall) -> Project | None:
        return await self.manager.active_project(call.key)

    async def show(self, call: CommandCall, rest: str) -> Reply:
        project = await self._active(call)
        if project is None:
            return Reply(
                "No project: this chat has its own conversation. "
                "See /project list, and /project use NAME to work in one."
            )
        lines = [f"This chat works in project {project.name} ({_kind(project)})."]
        if project.agent_kind == "claude_code":
            current = await self.manager.code_session(project.id)
            if current is None:
                lines.append("Claude Code: no session yet; the next message starts one.")
            else:
                used = f"{current.last_used_at:%Y-%m-%d %H:%M} UTC"
                lines.append(
                    f"Claude Code session {current.session_id}: {current.turns} turns, "
                    f"${current.usage.cost_usd:.4f}, last used {used}; "
                    f"context {current.context_tokens:,} tokens."
                )
        return Reply("\n".join(lines))

    async def listing(self, call: CommandCall, rest: str) -> Reply:
        projects = await self.manager.projects()
        if not projects:
            return Reply("No projects yet. Admins create one with /project new NAME [DIR].")
        active = await self._active(call)
        lines = ["Projects:"]
        for project in projects:
            mark = " (this chat)" if active is not None and active.id == project.id else ""
            lines.append(f"- {project.name}: {_kind(project)}{mark}")
        return Reply("\n".join(lines))

    async def use(self, call: CommandCall, rest: str) -> Reply:
        if not rest:
            return Reply("Usage: /project use NAME (see /project list).")
        project = await self._named(rest)
        await self.manager.select_project(call.key, project.name)
        return Reply(
            f"This chat now works in project {project.name} ({_kind(project)}). "
            "/project off goes back to its own conversation."
        )

    async def off(self, call: CommandCall, rest: str) -> Reply:
        if await self._active(call) is None:
            return Reply("This chat is not in a project.")
        await self.manager.select_project(call.key, None)
        return Reply("Back to this chat's own conversation.")

    async def reset(self, call: CommandCall, rest: str) -> Reply:
        project = await self._active(call)
        if project is None:
            return Reply("This chat is not in a project; /reset starts its conversation afresh.")
        if project.agent_kind != "claude_code":
            await self.manager.reset(call.key)
            return Reply(f"Project {project.name} starts a fresh conversation.")
        retired = await self.manager.reset_code_session(project.id)
        await self.code.release(project.id)  # its live CLI holds the old conversation
        kept = f" The old one ({retired.session_id}) is kept." if retired else ""
        return Reply(
            f"The next message starts a fresh Claude Code session in {project.name}.{kept}"
        )

    async def history(self, call: CommandCall, rest: str) -> Reply:
        project = await self._named(rest) if rest else await self._active(call)
        if project is None:
            return Reply("This chat is not in a project: /project history NAME.")
        sessions = await self.manager.code_history(project.id)
        if not sessions:
            return Reply(f"Project {project.name} has no Claude Code sessions yet.")
        lines = [f"Claude Code sessions of {project.name}, the latest first:"]
        for s in sessions:
            chats = ", ".join(s.chat_refs[-3:])
            lines.append(
                f"- {s.session_id} ({s.status.value}): started {s.started_at:%Y-%m-%d %H:%M}, "
                f"last used {s.last_used_at:%Y-%m-%d %H:%M} UTC, {s.turns} turns, "
                f"${s.usage.cost_usd:.4f}; chats: {chats or '-'}"
            )
        return Reply("\n".join(lines))

    async def info(self, call: CommandCall, rest: str) -> Reply:
        project = await self._named(rest) if rest else await self._active(call)
        if project is None:
            return Reply("This chat is not in a project: /project info NAME.")
        settings = project.settings
        lines = [
            f"Project {project.name}",
            f"kind: {project.agent_kind}",
            f"model: {project.model or '(the default)'}",
            f"tokens: {project.token_limit or '(the default)'}",
            f"prompt: {project.system_prompt or '(none)'}",
        ]
        if project.agent_kind == "claude_code":
            lines += [
                f"dir: {project.workdir or project.name} (in {self.root})",
                f"tools: {', '.join(settings.get('allowed_tools') or []) or '(ask for all)'}",
                f"mode: {settings.get('permission_mode') or 'default'}",
                f"budget: ${float(settings.get('budget_usd') or 0):.2f} per turn (0: none)",
            ]
        return Reply("\n".join(lines))

    async def new(self, call: CommandCall, rest: str) -> Reply:
        if not call.admin:
            return Reply(ADMINS_ONLY)
        name, _, directory = rest.partition(" ")
        if not NAME.match(name):
            return Reply(
                "Usage: /project new NAME [DIR]. A name is 1 to 64 letters, digits, "
                "'.', '_' or '-', starting with a letter or digit."
            )
        workdir = await self._workdir(directory.strip() or name, create=not directory.strip())
        project = await self.manager.create_project(
            name, agent_kind="claude_code", workdir=workdir, settings={}
        )
        await self.manager.select_project(call.key, project.name)
        return Reply(
            f"Created project {project.name}: Claude Code in {self.root / workdir}. "
            "This chat works in it now; /project set changes its settings."
        )

    async def set(self, call: CommandCall, rest: str) -> Reply:
        if not call.admin:
            return Reply(ADMINS_ONLY)
        project = await self._active(call)
        if project is None:
            return Reply("This chat is not in a project: /project use NAME first.")
        key, _, value = rest.partition(" ")
        key, value = key.lower(), value.strip()
        if key not in SETTABLE or not value:
            keys = "\n".join(f"- {k}: {what}" for k, what in SETTABLE.items())
            return Reply(f"Usage: /project set KEY VALUE, where KEY is one of:\n{keys}")
        changes = await self._change(project, key, value)
        updated = await self.manager.update_project(project.id, **changes)
        await self.code.release(project.id)  # the next turn starts its CLI with the change
        return Reply(f"Project {updated.name}: {key} set.")

    async def _change(self, project: Project, key: str, value: str) -> dict[str, Any]:
        """The columns ``/project set key value`` changes, validated."""
        settings = dict(project.settings)
        clear = value == "-"
        if key == "kind":
            if value not in KINDS:
                raise PalaverError(f"kind must be one of {', '.join(KINDS)}, not {value!r}")
            return {"agent_kind": value}
        if key == "model":
            if len(value) > 100 or " " in value:
                raise PalaverError(f"{value!r} is not a model name")
            return {"model": value}
        if key == "prompt":
            if len(value) > 20_000:
                raise PalaverError("the prompt is longer than 20,000 characters")
            return {"system_prompt": None if clear else value}
        if key == "tokens":
            tokens = _number(value, int, "tokens", 1000, 2_000_000)
            return {"token_limit": tokens}
        if key == "dir":
            return {"workdir": await self._workdir(value, create=False)}
        if key == "tools":
            settings["allowed_tools"] = [] if clear else _tools(value)
        elif key == "mode":
            if value not in PERMISSION_MODES:
                allowed = ", ".join(sorted(PERMISSION_MODES))
                raise PalaverError(f"mode must be one of {allowed}, not {value!r}")
            settings["permission_mode"] = value
        elif key == "budget":
            settings["budget_usd"] = _number(value, float, "budget", 0.0, 1000.0)
        return {"settings": settings}

    async def _named(self, name: str) -> Project:
        try:
            return await self.manager.project(name=name.strip())
        except ProjectNotFound:
            raise PalaverError(
                f"there is no project {name.strip()!r} (see /project list)"
            ) from None

    async def _workdir(self, directory: str, *, create: bool) -> str:
        """``directory`` checked inside the root; stored relative to it."""
        real = await asyncio.to_thread(resolve_workdir, self.root, directory, create=create)
        root = await asyncio.to_thread(self.root.resolve)
        return str(real.relative_to(root))


def _kind(project: Project) -> str:
    return "Claude Code" if project.agent_kind == "claude_code" else "a shared conversation"


def _number(value: str, kind: type[int] | type[float], key: str, low: float, high: float) -> Any:
    try:
        number = kind(value)
    except ValueError:
        raise PalaverError(
            f"{key} must be a number from {low:g} to {high:g}, not {value!r}"
        ) from None
    if not low <= number <= high:
        raise PalaverError(f"{key} must be from {low:g} to {high:g}, not {value}")
    return number


def _tools(value: str) -> list[str]:
    tools = [t.strip() for t in re.split(r",\s*", value) if t.strip()]
    if any(len(t) > 200 for t in tools) or len(tools) > 50:
        raise PalaverError("tools: at most 50 names of at most 200 characters")
    return tools
