"""What an agent is: something that turns a Context into a streamed reply.

The turn pipeline depends only on this module; the Claude and offline agents
implement it. Errors an agent expects (rate limits, outages, bad keys) are raised
as ``AgentError`` carrying a short message fit for the chat user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from memory.types import Context, Usage


@dataclass(frozen=True, slots=True)
class AgentRequest:
    context: Context
    model: str
    max_tokens: int
    session_id: int
    user_id: str | None = None
    # The base64 data of the files the context sends (images, PDFs), by content hash:
    # see SessionManager.media_for. Empty for a context without files.
    media: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class AgentReply:
    """The end of a stream: the whole text and what the call cost.

    ``usage`` is everything this reply was charged, failed attempts before it
    included; ``prompt_tokens`` is the prompt as the API counted it for the attempt
    that answered (input + cache reads + cache writes), the sample for calibration.
    """

    text: str
    usage: Usage | None
    model: str
    prompt_tokens: int | None = None


AgentEvent = TextDelta | AgentReply


class AgentError(Exception):
    """An expected failure; ``user_message`` is what the chat user is told.

    ``usage`` is what the failed call was charged all the same (priced): an answer
    that broke off midway, attempts that timed out after the API had begun. The
    turn records it so that the spend caps count it; None when nothing was.
    """

    def __init__(
        self, user_message: str, *, kind: str, detail: str = "", usage: Usage | None = None
    ) -> None:
        super().__init__(detail or user_message)
        self.user_message = user_message
        self.kind = kind
        self.detail = detail
        self.usage = usage


class PromptTooLong(AgentError):
    """The model counted more tokens than its window holds; ``tokens`` is its count.

    The turn answers it by summarizing at once and retrying once.
    """

    def __init__(self, tokens: int | None, detail: str) -> None:
        super().__init__(
            "This conversation has grown too long for the model. I summarized older "
            "messages; please send your message again.",
            kind="prompt_too_long",
            detail=detail,
        )
        self.tokens = tokens


class Agent(Protocol):
    name: str

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        """Yield TextDelta events as text arrives, then exactly one AgentReply."""
        ...
