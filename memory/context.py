"""Context building: a pure function from what the cache holds to a ``Context``.

Pure so that it is cheap (no I/O on the reply path), and so that hypothesis can
check its invariants directly: within budget, newest message kept whole, roles
alternating, first turn from the user.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, NamedTuple

from memory.errors import InvalidMessage
from memory.tokens import MESSAGE_OVERHEAD
from memory.types import Context, ContextMessage, Role

# A cached unsummarized message: (role, tokens, text, author), ``role`` being the
# Role's plain string value. A plain tuple of strings and ints, not a NamedTuple:
# CPython's collector stops tracking exact tuples of untracked values, so a large
# cache adds nothing to its full passes (as NamedTuples holding Role members,
# 50,000 cached messages made each full pass stall the loop for ~20 ms).
TailMessage = tuple[str, int, str, str | None]
ROLE: Final = 0
TOKENS: Final = 1


_USER, _ASSISTANT, _SYSTEM, _TOOL = (
    r.value for r in (Role.USER, Role.ASSISTANT, Role.SYSTEM, Role.TOOL)
)


class Block(NamedTuple):
    """A prefix block (the system prompt, a summary) and its token count."""

    text: str
    tokens: int


def _render(message: TailMessage, label_authors: bool) -> str:
    """A user-side message as the model sees it: the Messages API knows only user and
    assistant, so notes and tool output travel as labelled user turns."""
    role, _tokens, text, author = message
    if role == _SYSTEM:
        return f"(note) {text}"
    if role == _TOOL:
        return f"(tool result) {text}"
    if label_authors and author and role == _USER:
        return f"[{author}] {text}"
    return text


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
    newest = tail[-1][TOKENS] + MESSAGE_OVERHEAD if tail else 0
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
        cost = message[TOKENS] + MESSAGE_OVERHEAD
        if used + cost > allowance:
            break
        used += cost
        kept += 1
    window = tail[len(tail) - kept :]
    # The first turn must be the user's: leading assistant messages go.
    start = 0
    while start < len(window) and window[start][ROLE] == _ASSISTANT:
        used -= window[start][TOKENS] + MESSAGE_OVERHEAD
        start += 1
    merged: list[ContextMessage] = []
    parts: list[str] = []
    current: Role | None = None
    author: str | None = None
    user, assistant = Role.USER, Role.ASSISTANT
    for message in window[start:]:
        stored_role, _tokens, text, message_author = message
        role: Role
        if stored_role == _ASSISTANT:
            role = assistant
        else:
            if stored_role != _USER or label_authors:
                text = _render(message, label_authors)
            role = user
        if role is current:
            parts.append(text)
            if author != message_author:
                author = None
            continue
        if current is not None:
            merged.append(ContextMessage(current, "\n\n".join(parts), author))
        current, parts, author = role, [text], message_author
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
        raw_tokens=fixed + used,
    )
