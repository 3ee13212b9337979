"""The turn: the same for every interface (console, Telegram, Discord).

Read this file top to bottom to see what happens to a message:

    authorize -> rate-limit -> resolve the session -> take the session's lock ->
    store the user message (idempotent on the platform id) -> check the spend caps ->
    build the context within budget -> call the agent, streaming -> store the reply
    with its usage -> schedule summarization if the context is at the threshold ->
    release.

Interfaces translate platform events into an ``Incoming`` and render the
``TurnResult``; they hold no memory logic of their own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from agents.base import Agent, AgentError, AgentReply, AgentRequest, PromptTooLong, TextDelta
from agents.settings import SpendSettings
from bots.access import AccessPolicy, Actor
from bots.config import AgentSettings
from bots.ratelimit import RateLimiter
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.types import ChatKey, Context, Project, Role, SessionInfo, Usage

log = logging.getLogger(__name__)

# What a chat is told when a bug, not the model or the user, broke its turn.
INTERNAL_ERROR = "Something went wrong on my side. Your message is saved; please try again."

# Receives the reply so far (the whole text, not a delta) while it streams.
ProgressSink = Callable[[str], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message from a chat, already translated from the platform's event."""

    key: ChatKey
    actor: Actor
    text: str
    platform_message_id: str | None = None
    is_group: bool = False
    metadata: dict[str, Any] | None = None


class Outcome(StrEnum):
    REPLIED = "replied"
    STORED = "stored"  # a group message kept for context, not answered
    DENIED = "denied"
    RATE_LIMITED = "rate_limited"
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


@dataclass(frozen=True, slots=True)
class Profile:
    """What a session's model call uses: the project's settings over the defaults."""

    system_prompt: str
    model: str
    max_tokens: int
    token_limit: int
    budget: int


class Turn:
    def __init__(
        self,
        manager: SessionManager,
        agent: Agent,
        access: AccessPolicy,
        limiter: RateLimiter,
        settings: AgentSettings,
        spend: SpendSettings | None = None,
    ) -> None:
        self.manager = manager
        self.agent = agent
        self.access = access
        self.limiter = limiter
        self.settings = settings
        self.spend = spend or SpendSettings(user_daily_usd=0, session_usd=0)
        self._projects: dict[int, Project] = {}

    async def profile(self, session: SessionInfo) -> Profile:
        project = None
        if session.project_id is not None:
            project = self._projects.get(session.project_id)
            if project is None:
                project = await self.manager.project(id=session.project_id)
                self._projects[project.id] = project
        limit = (project and project.token_limit) or self.manager.settings.token_limit
        max_tokens = self.settings.max_tokens
        return Profile(
            system_prompt=(project and project.system_prompt) or self.settings.system_prompt,
            model=(project and project.model) or self.settings.model,
            max_tokens=max_tokens,
            token_limit=limit,
            budget=min(limit, self.settings.context_window - max_tokens),
        )

    async def handle(
        self, incoming: Incoming, *, on_progress: ProgressSink | None = None
    ) -> TurnResult:
        # 1. authorize: nothing from a stranger reaches the model or the database.
        if not self.access.allows(incoming.actor):
            return TurnResult(Outcome.DENIED, self.access.denied_message(incoming.actor))

        # 2. rate-limit, per user.
        wait = self.limiter.acquire(f"{incoming.actor.interface}:{incoming.actor.user_id}")
        if wait > 0:
            return TurnResult(
                Outcome.RATE_LIMITED,
                f"You're sending messages faster than I can answer. "
                f"Please wait {max(1, round(wait))} s and try again.",
            )

        try:
            # 3. resolve the session: the chat's own, or its active project's.
            session = await self.manager.open(incoming.key)
            profile = await self.profile(session)

            # 4. one turn at a time per session; other sessions run concurrently.
            async with self.manager.lock(session.id):
                return await self._locked_turn(incoming, session, profile, on_progress)
        except PalaverError as error:
            # Bad input or the database is down: nothing was half-stored.
            return TurnResult(Outcome.REJECTED, f"I couldn't take that message: {error}.")

    async def _locked_turn(
        self,
        incoming: Incoming,
        session: SessionInfo,
        profile: Profile,
        on_progress: ProgressSink | None,
    ) -> TurnResult:
        manager = self.manager

        # 5. store the user message first: from here on, it cannot be lost.
        stored = await manager.add_message(
            session.id,
            Role.USER,
            incoming.text,
            author_id=incoming.actor.user_id,
            author_name=incoming.actor.display_name,
            chat=incoming.key,
            platform_message_id=incoming.platform_message_id,
            metadata=incoming.metadata,
        )
        if stored.duplicate:
            return TurnResult(Outcome.DUPLICATE, "", session.id)

        # 6. spend caps: over a cap, the user is told and no model call is made.
        billed_to = f"{incoming.actor.interface}:{incoming.actor.user_id}"
        refusal = await self._over_cap(session, billed_to)
        if refusal is not None:
            await manager.record_error(session.id, "spend_cap", {"user": billed_to})
            return TurnResult(Outcome.OVER_BUDGET, refusal, session.id)

        # 7. the context, then the agent, streaming partial text to the interface. If
        #    the model finds the prompt too long, summarize now and try once more.
        try:
            try:
                reply = await self._call_agent(incoming, session, profile, on_progress)
            except PromptTooLong as error:
                if error.tokens:
                    context = await self._context(incoming, session, profile)
                    manager.note_calibration(
                        profile.model, self._raw_estimate(context, profile), error.tokens
                    )
                await manager.record_error(session.id, error.kind, {"detail": error.detail})
                await manager.fold(session.id)
                reply = await self._call_agent(incoming, session, profile, on_progress)
        except AgentError as error:
            await manager.record_error(session.id, error.kind, {"detail": error.detail})
            return TurnResult(Outcome.FAILED, error.user_message, session.id)
        except Exception as error:
            log.exception("agent %s failed in session %s", self.agent.name, session.id)
            await manager.record_error(session.id, "internal", {"detail": repr(error)})
            return TurnResult(Outcome.FAILED, INTERNAL_ERROR, session.id)
        if reply is None or not reply.text.strip():
            await manager.record_error(session.id, "empty_reply", None)
            return TurnResult(
                Outcome.FAILED,
                "The model sent an empty answer. Your message is saved; please try again.",
                session.id,
            )
        if reply.usage is not None:
            reported = (
                reply.usage.input_tokens
                + reply.usage.cache_read_tokens
                + reply.usage.cache_write_tokens
            )
            manager.note_calibration(profile.model, reply.estimated_input_tokens, reported)

        # 8. store the reply with what it cost, charged to the user who asked.
        await manager.add_message(
            session.id,
            Role.ASSISTANT,
            reply.text,
            usage=reply.usage,
            billed_to=billed_to if reply.usage is not None else None,
        )

        # 9. fold older history in the background if the context is at the threshold.
        await manager.maybe_summarize(
            session.id,
            system_prompt=profile.system_prompt,
            token_limit=profile.token_limit,
            model=profile.model,
        )
        return TurnResult(Outcome.REPLIED, reply.text, session.id, reply.usage)

    async def _context(self, incoming: Incoming, session: SessionInfo, profile: Profile) -> Context:
        return await self.manager.build_context(
            session.id,
            system_prompt=profile.system_prompt,
            budget=profile.budget,
            model=profile.model,
            label_authors=incoming.is_group,
        )

    def _raw_estimate(self, context: Context, profile: Profile) -> int:
        """The context's tokens as tiktoken counts them, before calibration."""
        return round(context.estimated_tokens / self.manager.tokens.factor(profile.model))

    async def _call_agent(
        self,
        incoming: Incoming,
        session: SessionInfo,
        profile: Profile,
        on_progress: ProgressSink | None,
    ) -> AgentReply | None:
        context = await self._context(incoming, session, profile)
        request = AgentRequest(
            context=context,
            model=profile.model,
            max_tokens=profile.max_tokens,
            session_id=session.id,
            user_id=f"{incoming.actor.interface}:{incoming.actor.user_id}",
        )
        reply: AgentReply | None = None
        text = ""
        async for event in self.agent.stream(request):
            if isinstance(event, TextDelta):
                text += event.text
                if on_progress is not None:
                    await on_progress(text)
            else:
                reply = event
        if reply is not None:
            # What the calibration compares with the API's count: the raw estimate.
            raw = self._raw_estimate(context, profile)
            reply = AgentReply(reply.text, reply.usage, reply.model, raw)
        return reply

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

    async def observe(self, incoming: Incoming) -> TurnResult:
        """Store a group message the bot saw but was not asked to answer."""
        if not self.access.allows(incoming.actor):
            return TurnResult(Outcome.DENIED, "")
        try:
            session = await self.manager.open(incoming.key)
            stored = await self.manager.add_message(
                session.id,
                Role.USER,
                incoming.text,
                author_id=incoming.actor.user_id,
                author_name=incoming.actor.display_name,
                chat=incoming.key,
                platform_message_id=incoming.platform_message_id,
                metadata=incoming.metadata,
            )
        except PalaverError as error:
            return TurnResult(Outcome.REJECTED, str(error))
        outcome = Outcome.DUPLICATE if stored.duplicate else Outcome.STORED
        return TurnResult(outcome, "", session.id)
