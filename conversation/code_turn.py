"""A turn of a Claude Code project: the model call of the turn, done by Claude Code.

The turn (conversation.turn) stores the question, checks the caps and stores the
reply as for any turn; for a project of kind ``claude_code`` it hands the model call
to this module, which:

- resumes the project's current Claude Code session (or starts fresh after
  ``/project reset``), in the project's directory, with its model, prompt, allowed
  tools, permission mode and per-turn budget; only an id that is the project's own
  (``CodeSessions.belongs``) is resumed, any other is treated as a lost session;
- streams Claude Code's text into the chat with the tools it uses as short progress
  lines below it ("Reading app/models.py", "Running: pytest -q");
- asks the chat to approve any tool that is not read-only (conversation.approvals);
- records the session id the turn ended on, its usage and cost, and the chat that
  used it (``/project history``); a session that could not be resumed is replaced by
  a fresh one seeded with Palaver's memory of the project, and the user is told once;
- keeps the 70% rule: when Claude Code's context passes ``summarize_threshold`` of
  the project's budget, its session is compacted (``/compact``) in the background,
  and the summary is kept in Palaver's memory too, as a note in the project's session;
- keeps the host's secrets out of the chat: Claude Code's CLI holds the API key in its
  environment, so a tool (``env``, ``cat`` of a config) can put it in front of the
  model, which may repeat it. Everything Claude Code says to a chat (streamed text,
  progress lines, the reply that is stored, the tool shown for approval) goes through
  ``redact`` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from agents.base import AgentError, AgentReply, TextDelta
from agents.claude_code import (
    Approver,
    ClaudeCodeAgent,
    CodeReply,
    CodeRequest,
    ToolApproval,
    ToolProgress,
    seeded_prompt,
)
from agents.uploads import Upload, describe_uploads, write_uploads
from agents.workspace import WorkspaceError, resolve_workdir
from conversation.metering import timed_model
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.types import ChatKey, Project, Role, SessionInfo

log = logging.getLogger(__name__)

NO_CLAUDE_CODE = (
    "This project runs Claude Code, which needs ANTHROPIC_API_KEY; the operator has not "
    "set it. Your message is saved."
)
LOST = (
    "(I couldn't resume this project's previous Claude Code session, so I started a "
    "fresh one with a summary of the project so far.)"
)
COMPACTED = "Claude Code compacted this project's context. Its summary:"
_PROGRESS_LINES = 3
# Receives the reply so far (the whole text, not a delta) while it streams.
ProgressSink = Callable[[str], Awaitable[None]]
_SEED_MESSAGES = 20
_TURNS_BETWEEN_COMPACTIONS = 3
_SEED_CHARS = 6000


def _unchanged(text: str) -> str:
    return text


class CodeTurns:
    """The Claude Code side of turns (see the module docstring)."""

    def __init__(
        self,
        manager: SessionManager,
        agent: ClaudeCodeAgent | None,
        root: Path,
        default_model: str,
        *,
        redact: Callable[[str], str] | None = None,
    ) -> None:
        self._manager = manager
        self._redact = redact or _unchanged
        self._agent = agent
        self._root = root
        self._default_model = default_model
        self._compacting: dict[int, asyncio.Task[None]] = {}
        # project -> (its Claude Code session, that session's turn count) when it was
        # last compacted: one entry per project, whatever the number of its sessions
        self._compacted_at: dict[int, tuple[str, int]] = {}

    def request(self, project: Project, prompt: str, resume: str | None, user: str) -> CodeRequest:
        settings = project.settings
        budget = settings.get("budget_usd")
        return CodeRequest(
            project_id=project.id,
            project_name=project.name,
            workdir=self._root / (project.workdir or project.name),
            prompt=prompt,
            resume=resume,
            model=project.model or self._default_model,
            system_prompt=project.system_prompt,
            allowed_tools=tuple(settings.get("allowed_tools") or ()),
            permission_mode=str(settings.get("permission_mode") or "default"),
            max_budget_usd=float(budget) if budget else None,
            user_id=user,
        )

    async def call(
        self,
        project: Project,
        session: SessionInfo,
        chat: ChatKey,
        prompt: str,
        user: str,
        *,
        on_progress: ProgressSink | None,
        approve: Approver,
        token_limit: int,
        files: Sequence[Upload] = (),
    ) -> AgentReply:
        """Run the turn in Claude Code; its reply as an ``AgentReply`` for the turn.

        Files sent with the message (images, PDFs) are written into the project's
        ``uploads`` folder, and Claude Code is told where they are.
        """
        if self._agent is None:
            raise AgentError(NO_CLAUDE_CODE, kind="no_claude_code")
        if files:
            prompt = await self._with_uploads(project, prompt, files)
        current = await self._manager.code_session(project.id)
        resume = current.session_id if current else None
        foreign: str | None = None  # a current id that is not this project's own
        if resume is not None and not await self._manager.code_session_belongs(project.id, resume):
            log.warning(
                "Project %s: Claude Code session %s is not its own; starting a fresh one",
                project.name,
                resume,
            )
            foreign, resume = resume, None
        request = self.request(project, prompt, resume, user)
        if current is not None:
            # Only needed if the session turns out lost; cheap: no model call.
            seed = await self._memory_of(session)
            request = dataclasses.replace(request, seed_summary=seed)
            if foreign is not None:
                # As for a lost session: a fresh one, seeded, and the user told.
                request = dataclasses.replace(
                    request, prompt=seeded_prompt(foreign, seed, request.prompt)
                )
        text = ""
        tools: list[str] = []
        reply: CodeReply | None = None
        redact = self._redact

        async def approve_redacted(approval: ToolApproval) -> bool:
            return await approve(dataclasses.replace(approval, summary=redact(approval.summary)))

        async with contextlib.aclosing(self._agent.stream(request, approve_redacted)) as events:
            async for event in timed_model(events):
                if isinstance(event, TextDelta):
                    text += event.text
                elif isinstance(event, ToolProgress):
                    tools = [*tools[-(_PROGRESS_LINES - 1) :], event.line]
                elif isinstance(event, CodeReply):
                    reply = event
                    continue
                if on_progress is not None:
                    shown = "\n".join(f"_{line}_" for line in tools)
                    await on_progress(redact(f"{text}\n\n{shown}".strip() if tools else text))
        if reply is None:
            raise AgentError("Claude Code ended without an answer.", kind="code_error")
        if foreign is not None and reply.lost_session is None:
            reply = dataclasses.replace(reply, lost_session=foreign)
        recorded = await self._manager.record_code_turn(
            project.id,
            reply.session_id,
            chat=chat,
            usage=reply.usage,
            num_turns=reply.num_turns,
            context_tokens=reply.context_tokens,
            lost=reply.lost_session,
        )
        due = reply.context_tokens >= self._manager.summarize_threshold * token_limit
        compacted, last = self._compacted_at.get(project.id, ("", 0))
        if due and (
            compacted != reply.session_id or recorded.turns - last >= _TURNS_BETWEEN_COMPACTIONS
        ):
            # Not every turn: Claude Code's own prompt may keep it above the line.
            self._compacted_at[project.id] = (reply.session_id, recorded.turns)
            self._compact_later(project, session, reply.session_id, user)
        text = redact(reply.text)
        answer = f"{LOST}\n\n{text}" if reply.lost_session else text
        return AgentReply(answer, reply.usage, reply.model)

    async def _with_uploads(self, project: Project, prompt: str, files: Sequence[Upload]) -> str:
        def write() -> str:
            workdir = resolve_workdir(self._root, project.workdir or project.name)
            return describe_uploads(write_uploads(workdir, files), workdir)

        try:
            where = await asyncio.to_thread(write)
        except WorkspaceError as error:
            raise AgentError(str(error), kind="workspace") from None
        return f"{prompt}\n\n{where}" if where else prompt

    async def _memory_of(self, session: SessionInfo) -> str | None:
        """Palaver's memory of the project: its summaries, then its latest messages."""
        parts = [s.text for s in await self._manager.summaries(session.id)]
        after = max(0, session.last_seq - _SEED_MESSAGES)
        for message in await self._manager.messages(session.id, after=after):
            who = "Claude Code" if message.role is Role.ASSISTANT else message.author_name
            parts.append(f"{who or message.role.value}: {message.text}")
        memory = "\n\n".join(parts)
        return memory[-_SEED_CHARS:] or None

    def _compact_later(
        self, project: Project, session: SessionInfo, code_id: str, user: str
    ) -> None:
        if project.id in self._compacting:
            return
        task = asyncio.create_task(
            self._compact(project, session, code_id, user), name=f"compact-{project.name}"
        )
        self._compacting[project.id] = task
        task.add_done_callback(lambda _t: self._compacting.pop(project.id, None))

    async def _compact(
        self, project: Project, session: SessionInfo, code_id: str, user: str
    ) -> None:
        assert self._agent is not None
        try:
            summary = await self._agent.compact(self.request(project, "/compact", code_id, user))
            if summary:
                await self._manager.add_message(
                    session.id, Role.SYSTEM, f"{COMPACTED}\n\n{self._redact(summary)}"
                )
        except (AgentError, PalaverError) as error:
            log.warning("compacting project %s failed: %s", project.name, error)

    async def idle(self) -> None:
        """Wait for the compactions running in the background."""
        while self._compacting:
            await asyncio.gather(*list(self._compacting.values()), return_exceptions=True)

    async def release(self, project_id: int) -> None:
        """The project's settings changed: its live CLI goes; the next turn resumes."""
        if self._agent is not None:
            await self._agent.release(project_id)

    async def close(self) -> None:
        for task in list(self._compacting.values()):
            task.cancel()
        await asyncio.gather(*self._compacting.values(), return_exceptions=True)
        if self._agent is not None:
            await self._agent.close()
