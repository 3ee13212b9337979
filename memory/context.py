"""Context building: a pure function from what the cache holds to a ``Context``.

Pure so that it is cheap (no I/O on the reply path), and so that hypothesis can
check its invariants directly: within budget, newest message kept whole, roles
alternating, first turn from the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from memory.errors import InvalidMessage
from memory.tokens import MESSAGE_OVERHEAD
from memory.types import Context, ContextMessage, Role


class TailMessage(NamedTuple):
    """A cached unsummarized message: a tuple, to keep hot sessions small in memory."""

    role: Role
    tokens: int
    text: str
    author: str | None


class Block(NamedTuple):
    """A prefix block (the system prompt, a summary) and its token count."""

    text: str
    tokens: int


def _render(message: TailMessage, label_authors: bool) -> str:
    """A user-side message as the model sees it: the Messages API knows only user and
    assistant, so notes and tool output travel as labelled user turns."""
    if message.role is Role.SYSTEM:
        return f"(note) {message.text}"
    if message.role is Role.TOOL:
        return f"(tool result) {message.text}"
    if label_authors and message.author and message.role is Role.USER:
        return f"[{message.author}] {message.text}"
    return message.text


def build_context(
    session_id: int,
    *,
    system: Block,
    summaries: Sequence[Block],
    tail: Sequence[TailMessage],
    budget: int,
    factor: float = 1.0,
    label_authors: bool = False,
) -> Context:
    """Fit system + summaries + the newest messages into ``budget`` tokens.

    ``factor`` is the model's calibration (reported / estimated tokens): the
    estimate is scaled by it so that the budget holds for the model's own count.
    If the summaries and the newest message do not fit, the oldest summaries are
    left out. Raises InvalidMessage if the system prompt and the newest message
    alone do not fit.
    """
    allowance = int(budget / factor)
    newest = tail[-1].tokens + MESSAGE_OVERHEAD if tail else 0
    if system.tokens + newest > allowance:
        what = "the newest message" if tail else "the system prompt"
        raise InvalidMessage(
            f"{what} does not fit in this session's token budget "
            f"({budget:,} tokens); send a shorter message or raise the budget"
        )
    # Summaries are the stable prefix, but the budget wins: the oldest go first.
    kept_summaries = list(summaries)
    fixed = system.tokens + sum(s.tokens for s in kept_summaries)
    while kept_summaries and fixed + newest > allowance:
        fixed -= kept_summaries.pop(0).tokens
    allowance -= fixed
    kept = 0
    used = 0
    for message in reversed(tail):
        cost = message.tokens + MESSAGE_OVERHEAD
        if used + cost > allowance:
            break
        used += cost
        kept += 1
    window = tail[len(tail) - kept :]
    # The first turn must be the user's: leading assistant messages go.
    start = 0
    while start < len(window) and window[start].role is Role.ASSISTANT:
        used -= window[start].tokens + MESSAGE_OVERHEAD
        start += 1
    merged: list[ContextMessage] = []
    parts: list[str] = []
    current: Role | None = None
    author: str | None = None
    user, assistant = Role.USER, Role.ASSISTANT
    for message in window[start:]:
        role = message.role
        if role is assistant:
            text = message.text
        else:
            text = (
                _render(message, label_authors)
                if role is not user or label_authors
                else (message.text)
            )
            role = user
        if role is current:
            parts.append(text)
            if author != message.author:
                author = None
            continue
        if current is not None:
            merged.append(ContextMessage(current, "\n\n".join(parts), author))
        current, parts, author = role, [text], message.author
    if current is not None:
        merged.append(ContextMessage(current, "\n\n".join(parts), author))
    estimated = int((fixed + used) * factor)
    return Context(
        session_id=session_id,
        system=system.text,
        summaries=tuple(s.text for s in kept_summaries),
        messages=tuple(merged),
        estimated_tokens=estimated,
        budget=budget,
        dropped_messages=len(tail) - kept + start,
        dropped_summaries=len(summaries) - len(kept_summaries),
    )
