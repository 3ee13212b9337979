"""The turn: one message answered by the model, the same for every interface.

Read this file top to bottom to see what happens to a message the bot was asked
(access and rate limits were checked by the dispatcher before it gets here):

    resolve the session -> take the session's lock -> store the user message
    (idempotent on the platform id) -> check the spend caps -> build the context
    within budget -> call the agent, streaming -> store the reply with its usage ->
    schedule summarization if the context is at the threshold -> release.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agents.base import Agent, AgentError, AgentReply, AgentRequest, PromptTooLong, TextDelta
from agents.claude_code import Approver, ToolApproval
from agents.settings import SpendSettings
from conversation.access import Actor
from conversation.code_turn import CodeTurns, ProgressSink
from conversation.metering import TurnObserver, measure, timed_model
from conversation.settings import AgentSettings
from memory.attachments import NewAttachment
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.types import (
    ChatKey,
    Context,
    Delivery,
    Project,
    Role,
    SessionInfo,
    StoredMessage,
    Usage,
)

log = logging.getLogger(__name__)

# What a chat is told when a bug, not the model or the user, broke its turn.
INTERNAL_ERROR = "Something went wrong on my side. Your message is saved; please try again."
EMPTY_REPLY = "The model sent an empty answer. Your message is saved; please try again."


@dataclass(frozen=True, slots=True)
class Question:
    """A message for the turn: already read (attachments included) and allowed."""

    key: ChatKey
    actor: Actor
    text: str
    message_id: str | None = None
    group: bool = False  # several people talk here: the model sees who said what
    metadata: dict[str, Any] | None = None
    attachments: tuple[NewAttachment, ...] = ()  # images and PDFs, kept with the message

    @property
    def billed_to(self) -> str:
        return f"{self.actor.interface}:{self.actor.user_id}"


class Outcome(StrEnum):
    REPLIED = "replied"
    STORED = "stored"  # a group message kept for context, not answered
    DUPLICATE = "duplicate"
    REJECTED = "rejected"  # bad input: nothing stored, the user told why
    OVER_BUDGET = "over_budget"  # a spend cap is reached: stored, no model call made
    FAILED = "failed"  # the agent failed: the user message is stored, the error recorded


@dataclass(frozen=True, slots=True)
class TurnResult:
    outcome: Outcome
    text: str
    session_id: int | None = None
    usage: Usage | None = None
    reply: StoredMessage | None = None  # the stored reply, owed to the chat until delivered
    fresh: bool = False  # the chat's last session had expired: this one starts anew


@dataclass(frozen=True, slots=True)
class Profile:
    """What a session's model call uses: the project's settings over the defaults."""

    system_prompt: str
    model: str
    max_tokens: int
    token_limit: int
    budget: int
    project: Project | None = None

    @property
    def claude_code(self) -> bool:
        """The project's turns run in Claude Code (conversation.code_turn)."""
        return self.project is not None and self.project.agent_kind == "claude_code"


class Turn:
    def __init__(
        self,
        manager: SessionManager,
        agent: Agent,
        settings: AgentSettings,
        spend: SpendSettings | None = None,
        code: CodeTurns | None = None,
    ) -> None:
        self.manager = manager
        self.agent = agent
        self.settings = settings
        self.spend = spend or SpendSettings(user_daily_usd=0, session_usd=0)
        self.code = code
        self.observers: list[TurnObserver] = []  # told of every turn (conversation.metering)

    def profile(self, project: Project | None) -> Profile:
        limit = (project and project.token_limit) or self.manager.default_token_limit
        max_tokens = self.settings.max_tokens
        return Profile(
            system_prompt=(project and project.system_prompt) or self.settings.system_prompt,
            model=(project and project.model) or self.settings.model,
            max_tokens=max_tokens,
            token_limit=limit,
            budget=min(limit, self.settings.context_window - max_tokens),
            project=project,
        )

    async def handle(
        self,
        question: Question,
        *,
        on_progress: ProgressSink | None = None,
        approve: Approver | None = None,
    ) -> TurnResult:
        if self.observers:
            turn = self._handle(question, on_progress, approve)
            return await measure(self.observers, question.key.interface, turn)
        return await self._handle(question, on_progress, approve)

    async def _handle(
        self, question: Question, on_progress: ProgressSink | None, approve: Approver | None
    ) -> TurnResult:
        try:
            # 1. resolve the session: the chat's own, or its active project's (read fresh,
            #    so a project's edited settings count from the next turn on).
            session, project = await self.manager.resolve(question.key)
            profile = self.profile(project)

            # 2. one turn at a time per session; other sessions run concurrently.
            async with self.manager.lock(session.id):
                return await self._locked_turn(question, session, profile, on_progress, approve)
        except PalaverError as error:
            # Bad input or the database is down: nothing was half-stored.
            reason = str(error).rstrip(".")
            return TurnResult(Outcome.REJECTED, f"I couldn't take that message: {reason}.")

    async def _locked_turn(
        self,
        question: Question,
        session: SessionInfo,
        profile: Profile,
        on_progress: ProgressSink | None,
        approve: Approver | None,
    ) -> TurnResult:
        manager = self.manager

        # 3. store the user message first: from here on, it cannot be lost. A platform
        #    message is owed an answer until it has one, so that one cut off by a
        #    shutdown or a crash is answered after the restart (where it comes back
        #    here as a duplicate still awaiting its answer).
        owed = question.message_id is not None
        stored = await self._store(session, question, owed=owed)
        if stored.duplicate and stored.delivery is not Delivery.AWAITING:
            return TurnResult(Outcome.DUPLICATE, "", session.id)

        async def told(result: TurnResult) -> TurnResult:
            """The user is told something other than an answer: nothing more is owed."""
            if owed:
                await manager.settle(stored)
            return result

        # 4. spend caps: over a cap, the user is told and no model call is made.
        refusal = await self._over_cap(session, question.billed_to)
        if refusal is not None:
            await manager.record_error(session.id, "spend_cap", {"user": question.billed_to})
            return await told(TurnResult(Outcome.OVER_BUDGET, refusal, session.id))

        # 5. the context, then the agent, streaming partial text to the interface. If
        #    the model finds the prompt too long, summarize now and try once more. A
        #    Claude Code project's turn runs in Claude Code, which keeps its own context.
        try:
            context, reply = await self._answer(question, session, profile, on_progress, approve)
        except AgentError as error:
            return await self._failed(question, session, error, told)
        except Exception as error:
            log.exception("agent %s failed in session %s", self.agent.name, session.id)
            await manager.record_error(session.id, "internal", {"detail": repr(error)})
            return await told(TurnResult(Outcome.FAILED, INTERNAL_ERROR, session.id))
        if reply is None or not reply.text.strip():
            await manager.record_error(session.id, "empty_reply", None)
            return await told(TurnResult(Outcome.FAILED, EMPTY_REPLY, session.id))

        # 6. store the reply with what it cost, charged to the user who asked; it is
        #    owed to the chat until delivered, and settles the question with it.
        stored_reply = await manager.add_reply(
            session.id,
            reply.text,
            context=context,
            model=profile.model,
            usage=reply.usage,
            billed_to=question.billed_to,
            prompt_tokens=reply.prompt_tokens,
            question=stored if owed else None,
            chat=question.key if owed else None,
        )

        # 7. fold older history in the background if the context is at the threshold.
        await manager.maybe_summarize(
            session.id,
            system_prompt=profile.system_prompt,
            token_limit=profile.token_limit,
            model=profile.model,
        )
        return TurnResult(
            Outcome.REPLIED,
            reply.text,
            session.id,
            reply.usage,
            stored_reply if owed else None,
            fresh=session.message_count == 0 and session.carried_summary is not None,
        )

    async def _failed(
        self,
        question: Question,
        session: SessionInfo,
        error: AgentError,
        told: Callable[[TurnResult], Awaitable[TurnResult]],
    ) -> TurnResult:
        """The agent failed: recorded, with what the failed call cost (an answer that
        broke off still costs), charged to the asker."""
        await self.manager.record_error(
            session.id,
            error.kind,
            {"detail": error.detail},
            usage=error.usage,
            billed_to=question.billed_to,
        )
        return await told(TurnResult(Outcome.FAILED, error.user_message, session.id))

    async def _answer(
        self,
        question: Question,
        session: SessionInfo,
        profile: Profile,
        on_progress: ProgressSink | None,
        approve: Approver | None,
    ) -> tuple[Context | None, AgentReply | None]:
        """The model's answer, and the context it was given (None for Claude Code, which
        keeps its own). A prompt the model finds too long is summarized, then retried
        once."""
        if profile.claude_code:
            return None, await self._call_code(question, session, profile, on_progress, approve)
        try:
            return await self._call_agent(question, session, profile, on_progress)
        except PromptTooLong as error:
            if error.tokens:
                context = await self._context(question, session, profile)
                self.manager.note_prompt_too_long(context, profile.model, error.tokens)
            await self.manager.record_error(session.id, error.kind, {"detail": error.detail})
            await self.manager.fold(session.id)
            return await self._call_agent(question, session, profile, on_progress)

    async def _call_code(
        self,
        question: Question,
        session: SessionInfo,
        profile: Profile,
        on_progress: ProgressSink | None,
        approve: Approver | None,
    ) -> AgentReply:
        assert profile.project is not None
        if self.code is None:
            raise AgentError("Claude Code projects are not set up here.", kind="no_claude_code")
        return await self.code.call(
            profile.project,
            session,
            question.key,
            question.text,
            question.billed_to,
            on_progress=on_progress,
            approve=approve or _deny,
            token_limit=profile.token_limit,
            files=question.attachments,
        )

    async def _context(self, question: Question, session: SessionInfo, profile: Profile) -> Context:
        return await self.manager.build_context(
            session.id,
            system_prompt=profile.system_prompt,
            budget=profile.budget,
            model=profile.model,
            label_authors=question.group,
        )

    async def _call_agent(
        self,
        question: Question,
        session: SessionInfo,
        profile: Profile,
        on_progress: ProgressSink | None,
    ) -> tuple[Context, AgentReply | None]:
        context = await self._context(question, session, profile)
        request = AgentRequest(
            context=context,
            model=profile.model,
            max_tokens=profile.max_tokens,
            session_id=session.id,
            user_id=question.billed_to,
            media=await self.manager.media_for(context) if context.files else {},
        )
        reply: AgentReply | None = None
        text = ""
        async for event in timed_model(self.agent.stream(request)):
            if isinstance(event, TextDelta):
                text += event.text
                if on_progress is not None:
                    await on_progress(text)
            else:
                reply = event
        return context, reply

    async def _over_cap(self, session: SessionInfo, billed_to: str) -> str | None:
        caps = self.spend
        if caps.session_usd and session.usage.cost_usd >= caps.session_usd:
            return (
                f"This conversation has reached its spending limit (${caps.session_usd:.2f}). "
                "Send /reset to start a new one."
            )
        if caps.user_daily_usd:
            spent = await self.manager.spent_today(billed_to)
            if spent >= caps.user_daily_usd:
                return (
                    f"You've reached today's spending limit (${caps.user_daily_usd:.2f}). "
                    "It resets at midnight UTC."
                )
        return None

    async def observe(self, question: Question, *, owed: bool = False) -> TurnResult:
        """Store a message the bot saw but was not asked to answer (or, ``owed``, one
        it will answer later: after a restart)."""
        try:
            session = await self.manager.open(question.key)
            stored = await self._store(session, question, owed=owed)
        except PalaverError as error:
            return TurnResult(Outcome.REJECTED, str(error))
        outcome = Outcome.DUPLICATE if stored.duplicate else Outcome.STORED
        return TurnResult(outcome, "", session.id)

    async def _store(
        self, session: SessionInfo, question: Question, *, owed: bool
    ) -> StoredMessage:
        """The question as a user message; ``owed`` marks it awaiting an answer."""
        return await self.manager.add_message(
            session.id,
            Role.USER,
            question.text,
            author_id=question.actor.user_id,
            author_name=question.actor.display_name,
            chat=question.key,
            platform_message_id=question.message_id,
            metadata=question.metadata,
            delivery=Delivery.AWAITING if owed else None,
            attachments=question.attachments,
        )


async def _deny(_: ToolApproval) -> bool:
    """Where nobody can be asked (no chat to show buttons in), tools that need an
    approval are denied."""
    return False
