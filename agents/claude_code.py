"""The Claude Code agent: a project's turn runs in Claude Code, resuming its session.

One live ``ClaudeSDKClient`` (one CLI process) per active project, at most
``claude_code.max_live`` of them: a follow-up on a live project is one more message
to a running CLI, not a new process. The least recently used idle client is closed to
make room, clients idle for ``idle_s`` are closed, and a project whose client is
busy with a turn is never robbed of it: a turn that needs a process when every one is
busy waits for one. Turns of one project run one at a time (a lock per project).

Sessions: a turn names the Claude Code session id the project stored (``resume``).
A live client that ended its last turn on that id, with the same options, continues
it; otherwise a new CLI resumes it from the transcript, which the SDK loads from
Palaver's database (``memory.transcripts.TranscriptStore``), so neither a restart nor
the loss of the CLI's config dir loses it. When it cannot be resumed, a fresh session
starts with Palaver's summary of the project as its first words, and the reply says
so (``CodeReply.lost_session``).

Cost: the CLI reports a running total per process; a turn's cost is the difference.
Its ``--max-budget-usd`` also counts from the process's start, so for a project with a
per-turn budget the agent caps each turn itself (after each model call, as the CLI
does, interrupting the turn once the budget is passed) and gives the CLI a budget of
``budget_turns_per_process`` turns as a backstop, starting a new process (resumed)
before that is used up.

Errors reach the chat as ``AgentError`` with plain words; the CLI's own text stays in
``detail`` for the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    CLINotFoundError,
    PermissionResultAllow,
    PermissionResultDeny,
    ResultMessage,
    SessionStore,
    StreamEvent,
    SystemMessage,
    TextBlock,
    ToolPermissionContext,
    ToolUseBlock,
)
from claude_agent_sdk.types import PermissionResult, SystemPromptPreset

from agents.base import AgentError, TextDelta
from agents.claude_code_env import cli_environment
from agents.claude_code_tools import describe_tool, read_only_inside
from agents.pricing import Pricing
from agents.settings import ClaudeCodeSettings, ClaudeSettings
from agents.workspace import WorkspaceError, resolve_workdir
from memory.types import Usage

log = logging.getLogger(__name__)

PermissionMode = Literal["default", "acceptEdits", "plan", "bypassPermissions"]
PERMISSION_MODES: frozenset[str] = frozenset(
    {"default", "acceptEdits", "plan", "bypassPermissions"}
)

DENIED = (
    "The user did not approve this tool use in the chat (denied, or no answer in time). "
    "Do not retry it; continue without it or ask the user."
)
OVER_BUDGET = "This turn has reached the project's budget; stop here."
_STDERR_LINES = 20


@dataclass(frozen=True, slots=True)
class CodeRequest:
    """One turn of a Claude Code project."""

    project_id: int
    project_name: str
    workdir: Path
    prompt: str
    resume: str | None  # the project's stored Claude Code session id; None: start fresh
    model: str | None = None
    system_prompt: str | None = None  # appended to Claude Code's own
    allowed_tools: tuple[str, ...] = ()  # run without asking, e.g. "Bash(pytest:*)"
    permission_mode: str = "default"
    max_budget_usd: float | None = None  # per turn
    seed_summary: str | None = None  # starts a fresh session when ``resume`` is lost
    user_id: str = ""


@dataclass(frozen=True, slots=True)
class ToolApproval:
    """A tool use that needs the chat's Approve / Deny."""

    tool_name: str
    summary: str  # one line: "Running: rm -rf build"
    input: Mapping[str, Any]
    project_name: str


Approver = Callable[[ToolApproval], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class ToolProgress:
    """A tool the turn used, as one short line for the streamed message."""

    line: str


@dataclass(frozen=True, slots=True)
class CodeReply:
    """The end of a turn."""

    text: str
    usage: Usage  # this turn's tokens; cost_usd is Claude Code's own estimate
    session_id: str  # the session the turn ended on: store it for the next turn
    num_turns: int  # model round trips in this turn
    context_tokens: int  # the session's context size after the turn (the 70% rule)
    lost_session: str | None  # ``resume`` could not be resumed; a fresh one was seeded
    model: str


CodeEvent = TextDelta | ToolProgress | CodeReply


def claude_config_dir(settings: ClaudeCodeSettings, data_dir: Path) -> Path:
    """The CLI's CLAUDE_CONFIG_DIR: ``claude_code.config_dir`` or ``<data_dir>/claude``."""
    return Path(settings.config_dir).expanduser() if settings.config_dir else data_dir / "claude"


def seeded_prompt(lost: str, summary: str | None, prompt: str) -> str:
    """The first message of a session started because ``lost`` could not be resumed."""
    if not summary:
        return (
            "[Palaver: the earlier Claude Code session of this project could not be "
            "resumed and no summary of it is available; this is a fresh session.]\n\n" + prompt
        )
    return (
        "[Palaver: the earlier Claude Code session of this project could not be resumed, "
        "so this is a fresh session. What happened in the project so far, in summary:]\n\n"
        f"{summary.strip()}\n\n[The user's message follows.]\n\n{prompt}"
    )


@dataclass
class _Turn:
    """What the permission callback needs to know about the turn in progress."""

    request: CodeRequest
    workdir: Path
    approver: Approver
    over_budget: bool = False


@dataclass
class _Live:
    """A running CLI and what is known about it."""

    project_id: int
    client: ClaudeSDKClient
    options_key: tuple[Any, ...]
    cli_budget: float | None
    session_id: str | None = None
    cost_total: float = 0.0  # the CLI's running total at its last result
    spent: float = 0.0  # since it started
    last_used: float = field(default_factory=time.monotonic)
    turn: _Turn | None = None
    stderr: deque[str] = field(default_factory=lambda: deque(maxlen=_STDERR_LINES))


class ClaudeCodeAgent:
    """Claude Code turns for projects; see the module's docstring."""

    name = "claude_code"

    def __init__(
        self,
        settings: ClaudeCodeSettings,
        *,
        config_dir: Path,
        projects_root: Path,
        transcripts: SessionStore | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        pricing: Pricing | None = None,
        cli_env: Mapping[str, str] | None = None,
    ) -> None:
        self._settings = settings
        self._config_dir = config_dir
        self._root = projects_root
        self._transcripts = transcripts
        self._api_key = api_key
        self._base_url = base_url
        self._pricing = pricing or Pricing(ClaudeSettings())
        self._cli_env = dict(cli_env or {})
        self._live: dict[int, _Live] = {}
        self._processes = 0  # live clients and clients being started
        self._locks: dict[int, asyncio.Lock] = {}
        self._pool = asyncio.Condition()
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False

    # -- public API -------------------------------------------------------------------

    def stream(self, request: CodeRequest, approver: Approver) -> AsyncGenerator[CodeEvent, None]:
        """Run one turn: ``TextDelta``s and ``ToolProgress`` lines as they come, then
        exactly one ``CodeReply``; or raise ``AgentError``. Turns of one project wait
        for each other. Close the iterator (``contextlib.aclosing``) if you stop early."""
        return self._stream(request, approver)

    async def compact(self, request: CodeRequest) -> str | None:
        """Claude Code's ``/compact`` on the project's session (``request.resume``).

        Returns the summary Claude Code wrote, read from the transcript (None when
        there is no transcript store or none was written). Nothing to compact (no
        stored session) returns None without starting the CLI.
        """
        if request.resume is None:
            return None
        workdir = self._workdir(request)
        async with self._lock(request.project_id):
            live, lost = await self._acquire(request, workdir)
            if lost is not None:
                return None  # a fresh session has nothing to compact
            live.turn = _Turn(request, workdir, _deny_all)
            result: ResultMessage | None = None
            try:
                await live.client.query("/compact")
                async for message in live.client.receive_response():
                    if isinstance(message, ResultMessage):
                        result = message
            except Exception as error:
                await self._discard(live)
                raise self._crashed(live, error) from error
            finally:
                live.turn = None
                live.last_used = time.monotonic()
            if result is None or result.is_error:
                await self._discard(live)
                detail = "" if result is None else _result_text(result)
                raise AgentError(
                    "Claude Code could not compact this project's session.",
                    kind="compact_failed",
                    detail=detail,
                )
            live.session_id = result.session_id
            self._account(live, result)
            return await self._compact_summary(workdir, result.session_id)

    def live_projects(self) -> list[int]:
        """Projects that have a running CLI now, the most recently used last."""
        return [p for p, _ in sorted(self._live.items(), key=lambda kv: kv[1].last_used)]

    async def release(self, project_id: int) -> None:
        """Stop the project's CLI (after its turn, if one runs): e.g. after its settings
        changed. The session itself is kept; the next turn resumes it."""
        async with self._lock(project_id):
            live = self._live.get(project_id)
            if live is not None:
                await self._discard(live)

    async def close(self) -> None:
        """Stop every CLI (turns in flight end with an error)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        await asyncio.gather(
            *(self._discard(live) for live in list(self._live.values())), return_exceptions=True
        )

    # -- the turn ---------------------------------------------------------------------

    async def _stream(
        self, request: CodeRequest, approver: Approver
    ) -> AsyncGenerator[CodeEvent, None]:
        if self._closed:
            raise AgentError("Claude Code is shutting down.", kind="closed")
        if not request.prompt.strip():
            raise AgentError("There is nothing to send to Claude Code.", kind="empty_prompt")
        if request.permission_mode not in PERMISSION_MODES:
            raise AgentError(
                f"The project's permission mode {request.permission_mode!r} is not one of "
                f"{', '.join(sorted(PERMISSION_MODES))}.",
                kind="bad_setting",
            )
        if request.max_budget_usd is not None and request.max_budget_usd <= 0:
            raise AgentError("The project's budget per turn must be above $0.", kind="bad_setting")
        workdir = self._workdir(request)
        self._start_reaper()
        async with self._lock(request.project_id):
            live, lost = await self._acquire(request, workdir)
            prompt = request.prompt
            if lost is not None:
                prompt = seeded_prompt(lost, request.seed_summary, prompt)
            turn = _Turn(request, workdir, approver)
            live.turn = turn
            finished = False
            try:
                async for event in self._run(live, turn, prompt, lost):
                    finished = isinstance(event, CodeReply)
                    yield event
            finally:
                live.turn = None
                live.last_used = time.monotonic()
                if not finished:
                    # Cut off mid-turn (the caller stopped reading, or was cancelled):
                    # the CLI is still answering, so it cannot take the next turn. What
                    # it did so far is in the transcript; the next turn resumes it.
                    await self._discard(live)
        # Its client is idle now: a turn waiting for a place may take it.
        async with self._pool:
            self._pool.notify_all()

    async def _run(
        self, live: _Live, turn: _Turn, prompt: str, lost: str | None
    ) -> AsyncIterator[CodeEvent]:
        request = turn.request
        text: list[str] = []
        streamed: set[str] = set()  # ids of model calls whose text came as deltas
        call_usage: dict[str, Any] = {}
        turn_cost = 0.0
        context_tokens = 0
        model = request.model or ""
        api_error: str | None = None
        result: ResultMessage | None = None
        in_text_block = False
        separate = False  # the next text starts a new block: set it apart
        try:
            await live.client.query(prompt)
            async for message in live.client.receive_response():
                if isinstance(message, StreamEvent):
                    if message.parent_tool_use_id is not None:
                        continue
                    event = message.event
                    kind = event.get("type")
                    if kind == "message_start":
                        started = event.get("message") or {}
                        call_usage = dict(started.get("usage") or {})
                        model = str(started.get("model") or model)
                        if started.get("id"):
                            streamed.add(str(started["id"]))
                    elif kind == "content_block_start":
                        in_text_block = (event.get("content_block") or {}).get("type") == "text"
                        separate = bool(text)
                    elif kind == "content_block_delta" and in_text_block:
                        delta = event.get("delta") or {}
                        if delta.get("type") == "text_delta" and delta.get("text"):
                            piece = ("\n\n" if separate else "") + str(delta["text"])
                            separate = False
                            text.append(piece)
                            yield TextDelta(piece)
                    elif kind == "message_delta":
                        call_usage.update(
                            {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
                        )
                        usage = _usage(call_usage)
                        turn_cost += self._pricing.cost(model, usage)
                        context_tokens = (
                            usage.input_tokens
                            + usage.cache_read_tokens
                            + usage.cache_write_tokens
                            + usage.output_tokens
                        )
                        budget = request.max_budget_usd
                        if budget is not None and turn_cost >= budget and not turn.over_budget:
                            turn.over_budget = True
                            with contextlib.suppress(Exception):
                                await live.client.interrupt()
                elif isinstance(message, AssistantMessage):
                    if message.error is not None and message.parent_tool_use_id is None:
                        api_error = message.error
                        continue
                    for block in message.content:
                        if isinstance(block, ToolUseBlock):
                            yield ToolProgress(describe_tool(block.name, block.input, turn.workdir))
                        elif (
                            isinstance(block, TextBlock)
                            and message.parent_tool_use_id is None
                            and message.message_id not in streamed
                            and block.text
                        ):
                            piece = ("\n\n" if text else "") + block.text
                            text.append(piece)
                            yield TextDelta(piece)
                    if message.parent_tool_use_id is None:
                        model = message.model or model
                elif isinstance(message, SystemMessage) and message.subtype == "api_retry":
                    log.info(
                        "Claude Code retries a model call for project %s: %s",
                        request.project_name,
                        message.data.get("error_status"),
                    )
                elif isinstance(message, ResultMessage):
                    result = message
        except Exception as error:
            await self._discard(live)
            raise self._crashed(live, error, _spent(call_usage, turn_cost)) from error

        if result is None:
            await self._discard(live)
            raise self._crashed(live, None, _spent(call_usage, turn_cost))
        live.session_id = result.session_id
        cost = self._account(live, result)
        usage = _usage(result.usage or {})
        if turn.over_budget or result.subtype == "error_max_budget_usd":
            await self._discard(live)
            budget = request.max_budget_usd or 0.0
            spent = max(cost, turn_cost)
            raise AgentError(
                f"This turn hit the project's budget of ${budget:.2f} and was stopped; "
                "what Claude Code did so far is kept in the session.",
                kind="budget",
                detail=f"spent about ${spent:.4f}",
                usage=_priced(usage, spent),  # charged all the same: the caps count it
            )
        if result.is_error or api_error is not None:
            await self._discard(live)
            failed = _result_error(result, api_error)
            if cost > 0:
                failed.usage = _priced(usage, cost)
            raise failed
        yield CodeReply(
            text="".join(text),
            usage=_priced(usage, cost),
            session_id=result.session_id,
            num_turns=result.num_turns,
            context_tokens=context_tokens,
            lost_session=lost,
            model=model,
        )

    def _account(self, live: _Live, result: ResultMessage) -> float:
        """This turn's cost from the CLI's running total, and the process's spend."""
        total = result.total_cost_usd or 0.0
        cost = total - live.cost_total if total >= live.cost_total else total
        live.cost_total = total
        live.spent += cost
        return cost

    # -- permission -------------------------------------------------------------------

    async def _can_use_tool(
        self, live: _Live, tool_name: str, tool_input: dict[str, Any], _: ToolPermissionContext
    ) -> PermissionResult:
        turn = live.turn
        if turn is None:
            return PermissionResultDeny(message=DENIED)
        if turn.over_budget:
            return PermissionResultDeny(message=OVER_BUDGET, interrupt=True)
        if read_only_inside(tool_name, tool_input, turn.workdir):
            return PermissionResultAllow()
        approval = ToolApproval(
            tool_name=tool_name,
            summary=describe_tool(tool_name, tool_input, turn.workdir),
            input=dict(tool_input),
            project_name=turn.request.project_name,
        )
        try:
            approved = await turn.approver(approval)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("The approver failed for %s; denied", tool_name)
            approved = False
        if approved is True:
            return PermissionResultAllow()
        return PermissionResultDeny(message=DENIED)

    # -- the pool ---------------------------------------------------------------------

    def _lock(self, project_id: int) -> asyncio.Lock:
        lock = self._locks.get(project_id)
        if lock is None:
            lock = self._locks[project_id] = asyncio.Lock()
        return lock

    def _workdir(self, request: CodeRequest) -> Path:
        try:
            return resolve_workdir(self._root, request.workdir)
        except WorkspaceError as error:
            raise AgentError(str(error), kind="workspace") from error

    def _options_key(self, request: CodeRequest, workdir: Path) -> tuple[Any, ...]:
        """What a running CLI was started with: a turn that differs needs a new one."""
        return (
            str(workdir),
            request.model,
            request.system_prompt,
            tuple(request.allowed_tools),
            request.permission_mode,
            request.max_budget_usd,
        )

    async def _acquire(self, request: CodeRequest, workdir: Path) -> tuple[_Live, str | None]:
        """The project's live client, continuing ``request.resume``; a new CLI when there
        is none fit for it. The second value is the session id that was lost, if any."""
        key = self._options_key(request, workdir)
        live = self._live.get(request.project_id)
        if live is not None:
            budget = request.max_budget_usd
            fits = (
                live.options_key == key
                and request.resume is not None
                and live.session_id == request.resume
                and (
                    budget is None
                    or live.cli_budget is None
                    or live.spent + budget <= live.cli_budget
                )
            )
            if fits:
                return live, None
            await self._discard(live)
        await self._reserve()
        try:
            lost: str | None = None
            if request.resume is not None:
                try:
                    live = await self._connect(request, workdir, key, request.resume)
                except AgentError as error:
                    if error.kind == "cli_missing":
                        raise
                    log.warning(
                        "Project %s: Claude Code session %s could not be resumed (%s); "
                        "starting a fresh one",
                        request.project_name,
                        request.resume,
                        error.detail,
                    )
                    lost = request.resume
                    live = None
            if live is None:
                live = await self._connect(request, workdir, key, None)
        except BaseException:
            await self._unreserve()
            raise
        self._live[request.project_id] = live
        return live, lost

    async def _connect(
        self, request: CodeRequest, workdir: Path, key: tuple[Any, ...], resume: str | None
    ) -> _Live:
        budget = request.max_budget_usd
        cli_budget = None if budget is None else budget * self._settings.budget_turns_per_process
        stderr: deque[str] = deque(maxlen=_STDERR_LINES)
        holder: list[_Live] = []

        async def can_use_tool(
            name: str, tool_input: dict[str, Any], context: ToolPermissionContext
        ) -> PermissionResult:
            return await self._can_use_tool(holder[0], name, tool_input, context)

        system_prompt: SystemPromptPreset = {"type": "preset", "preset": "claude_code"}
        if request.system_prompt:
            system_prompt["append"] = request.system_prompt
        options = ClaudeAgentOptions(
            cwd=workdir,
            cli_path=self._settings.cli_path or None,
            model=request.model,
            system_prompt=system_prompt,
            allowed_tools=list(request.allowed_tools),
            permission_mode=request.permission_mode,  # type: ignore[arg-type]
            max_budget_usd=cli_budget,
            resume=resume,
            can_use_tool=can_use_tool,
            include_partial_messages=True,
            session_store=self._transcripts,
            setting_sources=list(self._settings.setting_sources),  # type: ignore[arg-type]
            env=cli_environment(
                os.environ,
                config_dir=self._config_dir,
                api_key=self._api_key,
                base_url=self._base_url,
                pass_env=self._settings.pass_env,
                extra=self._cli_env,
            ),
            stderr=stderr.append,
        )
        client = ClaudeSDKClient(options)
        live = _Live(request.project_id, client, key, cli_budget, stderr=stderr)
        holder.append(live)
        try:
            await client.connect()
        except CLINotFoundError as error:
            raise AgentError(
                "Claude Code cannot be started: its program was not found. The operator "
                "should check claude_code.cli_path (empty uses the one bundled with "
                "claude-agent-sdk).",
                kind="cli_missing",
                detail=str(error),
            ) from error
        except Exception as error:
            detail = " | ".join([str(error), *stderr])
            raise AgentError(
                "Claude Code failed to start for this project; the operator can find why "
                "in Palaver's log.",
                kind="cli_failed",
                detail=detail[:2000],
            ) from error
        live.session_id = resume
        return live

    async def _reserve(self) -> None:
        """A place for one more CLI: closes the least recently used idle client when
        the pool is full (and waits for its process to end, so there are never more
        than ``max_live``), or waits while every live client is in a turn."""
        while True:
            async with self._pool:
                if self._processes < self._settings.max_live:
                    self._processes += 1
                    return
                idle = [
                    live
                    for live in self._live.values()
                    if live.turn is None and not self._lock(live.project_id).locked()
                ]
                victim = min(idle, key=lambda live: live.last_used, default=None)
                if victim is None:
                    await self._pool.wait()
                    continue
                del self._live[victim.project_id]  # still counted until its process ends
            await _disconnect(victim)
            await self._unreserve()

    async def _unreserve(self) -> None:
        async with self._pool:
            self._processes -= 1
            self._pool.notify_all()

    async def _discard(self, live: _Live) -> None:
        """Stop a client and give its place back (no-op for one already discarded)."""
        if self._live.get(live.project_id) is not live:
            return
        del self._live[live.project_id]
        await _disconnect(live)
        await self._unreserve()

    def _start_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Close clients idle for ``idle_s``."""
        every = max(0.05, min(self._settings.idle_s / 4, 30.0))
        while True:
            await asyncio.sleep(every)
            cutoff = time.monotonic() - self._settings.idle_s
            for live in list(self._live.values()):
                lock = self._lock(live.project_id)
                if live.turn is None and live.last_used < cutoff and not lock.locked():
                    async with lock:
                        if live.turn is None and live.last_used < cutoff:
                            log.debug("Closing the idle Claude Code of project %s", live.project_id)
                            await self._discard(live)

    # -- errors and transcripts ----------------------------------------------------------

    def _crashed(
        self, live: _Live, error: BaseException | None, spent: Usage | None = None
    ) -> AgentError:
        """A CLI that died mid-turn; ``spent`` is what its model calls had cost by then,
        charged all the same (the spend caps count it)."""
        detail = " | ".join([str(error) if error else "no result", *live.stderr])
        return AgentError(
            "Claude Code stopped unexpectedly during this turn; what it did so far is kept. "
            "Send your message again to continue.",
            kind="cli_crashed",
            detail=detail[:2000],
            usage=spent,
        )

    async def _compact_summary(self, workdir: Path, session_id: str) -> str | None:
        if self._transcripts is None:
            return None
        from claude_agent_sdk import project_key_for_directory

        lines = await self._transcripts.load(
            {"project_key": project_key_for_directory(workdir), "session_id": session_id}
        )
        for line in reversed(lines or []):
            if isinstance(line, dict) and line.get("isCompactSummary"):
                return _message_text(line.get("message"))
        return None


async def _deny_all(_: ToolApproval) -> bool:
    return False


async def _disconnect(live: _Live) -> None:
    try:
        await live.client.disconnect()
    except Exception:
        log.warning("Closing Claude Code of project %s failed", live.project_id, exc_info=True)


def _usage(raw: Mapping[str, Any]) -> Usage:
    return Usage(
        int(raw.get("input_tokens") or 0),
        int(raw.get("output_tokens") or 0),
        int(raw.get("cache_read_input_tokens") or 0),
        int(raw.get("cache_creation_input_tokens") or 0),
    )


def _spent(call_usage: dict[str, Any], turn_cost: float) -> Usage | None:
    """What a turn cut short had cost, as the streamed usage priced it; None if nothing."""
    return _priced(_usage(call_usage), turn_cost) if turn_cost > 0 else None


def _priced(usage: Usage, cost: float) -> Usage:
    return Usage(
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        cost,
    )


def _message_text(message: Any) -> str | None:
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text"
        ]
        return "\n".join(p for p in parts if p) or None
    return None


def _result_text(result: ResultMessage) -> str:
    return "; ".join(result.errors or []) or (result.result or "") or result.subtype


def _result_error(result: ResultMessage, api_error: str | None) -> AgentError:
    """Plain words for a turn the CLI ended with an error (after its own retries)."""
    status = result.api_error_status
    detail = f"{result.subtype}: {_result_text(result)}"[:2000]
    if api_error == "authentication_failed" or status in (401, 403):
        return AgentError(
            "Claude Code could not sign in to Claude: the operator should check ANTHROPIC_API_KEY.",
            kind="auth",
            detail=detail,
        )
    if api_error == "billing_error":
        return AgentError(
            "Claude refused the request for billing reasons; the operator should check "
            "the account's credit.",
            kind="billing",
            detail=detail,
        )
    if status == 429 or api_error == "rate_limit":
        return AgentError(
            "Claude is rate-limited right now and Claude Code gave up retrying; please try "
            "again in a minute.",
            kind="rate_limited",
            detail=detail,
        )
    if status == 529:
        return AgentError(
            "Claude is overloaded right now and Claude Code gave up retrying; please try "
            "again in a few minutes.",
            kind="overloaded",
            detail=detail,
        )
    if (status is not None and status >= 500) or api_error == "server_error":
        return AgentError(
            "Claude's service failed and Claude Code gave up retrying; please try again later.",
            kind="api_error",
            detail=detail,
        )
    if result.subtype == "error_max_turns":
        return AgentError(
            "Claude Code stopped: this turn reached its maximum number of steps.",
            kind="max_turns",
            detail=detail,
        )
    return AgentError(
        "Claude Code ended this turn with an error; the operator can find it in Palaver's log.",
        kind="code_error",
        detail=detail,
    )
