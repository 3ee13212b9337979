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

# A file a message carried (an image, a PDF): (sha256, media type, tokens, bytes,
# pages), plain values like the message itself; its bytes stay in the database.
MediaRef = tuple[str, str, int, int, int]
REF_TOKENS: Final = 2
REF_BYTES: Final = 3
REF_PAGES: Final = 4

# A cached unsummarized message: (role, tokens, text, author), ``role`` being the
# Role's plain string value. A plain tuple of strings and ints, not a NamedTuple:
# CPython's collector stops tracking exact tuples of untracked values, so a large
# cache adds nothing to its full passes (as NamedTuples holding Role members,
# 50,000 cached messages made each full pass stall the loop for ~20 ms). A message
# that carried files has a fifth element, its MediaRef tuple (still plain values);
# ``tokens`` then includes what the files cost. Text-only messages stay 4-tuples,
# and a tail without files takes the same path as before files existed.
TailMessage = (
    tuple[str, int, str, str | None] | tuple[str, int, str, str | None, tuple[MediaRef, ...]]
)
ROLE: Final = 0
TOKENS: Final = 1
TEXT: Final = 2
AUTHOR: Final = 3
MEDIA: Final = 4

# What one Messages API request may carry (its documented limits, with room left for
# the text): files beyond these, oldest first, go as their description alone.
MAX_MEDIA = 20  # more than 20 images in a request limits each to 2000 px
MAX_MEDIA_BYTES = 20_000_000  # base64 adds a third: under the 32 MB request limit
MAX_PDF_PAGES = 100


_USER, _ASSISTANT, _SYSTEM, _TOOL = (
    r.value for r in (Role.USER, Role.ASSISTANT, Role.SYSTEM, Role.TOOL)
)


class Block(NamedTuple):
    """A prefix block (the system prompt, a summary) and its token count."""

    text: str
    tokens: int


def has_media(message: TailMessage) -> bool:
    return len(message) > MEDIA


def media_of(message: TailMessage) -> tuple[MediaRef, ...]:
    return message[MEDIA] if len(message) > MEDIA else ()


def media_tokens(message: TailMessage) -> int:
    return sum(ref[REF_TOKENS] for ref in media_of(message))


def _render(message: TailMessage, label_authors: bool) -> str:
    """A user-side message as the model sees it: the Messages API knows only user and
    assistant, so notes and tool output travel as labelled user turns."""
    role, text, author = message[ROLE], message[TEXT], message[AUTHOR]
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
    media: bool = False,
) -> Context:
    """Fit system + summaries + the newest messages into ``budget`` tokens.

    ``factor`` is the model's calibration (reported / estimated tokens): the
    estimate is scaled by it so that the budget holds for the model's own count.
    If the summaries and the newest message do not fit, the oldest summaries are
    left out. Raises InvalidMessage if the system prompt and the newest message
    alone do not fit.

    ``media`` says that some message of the tail carried files (see TailMessage).
    A file goes with its message while the budget and a request's limits allow,
    newest first; from the first message whose files do not fit on, older messages
    go as their text alone (which names each file), so that the files sent form a
    stable suffix of the window. The newest message's text must fit; its files only
    if there is room (``Context.media_left_out`` counts them when there is not).
    """
    allowance = int(budget / factor)
    newest = tail[-1][TOKENS] + MESSAGE_OVERHEAD if tail else 0
    if media and tail:
        newest -= media_tokens(tail[-1])
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
    if media:
        return _with_media(
            session_id,
            system,
            summaries,
            kept_summaries,
            tail,
            budget,
            factor,
            label_authors,
            fixed,
            allowance,
        )
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
        stored_role, _tokens, text, message_author = message  # type: ignore[misc]
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


def _with_media(
    session_id: int,
    system: Block,
    summaries: Sequence[Block],
    kept_summaries: list[Block],
    tail: Sequence[TailMessage],
    budget: int,
    factor: float,
    label_authors: bool,
    fixed: int,
    allowance: int,
) -> Context:
    """build_context's window and turns for a tail with files (see its docstring)."""
    kept = 0
    used = 0
    sending = True  # files go only with a suffix of the window
    count = size = pages = 0
    carried: set[int] = set()  # tail indexes of the messages whose files are sent
    left_out = 0
    last = len(tail) - 1
    for index in range(last, -1, -1):
        message = tail[index]
        cost = message[TOKENS] + MESSAGE_OVERHEAD
        refs = media_of(message)
        if refs:
            if sending and used + cost <= allowance:
                more = len(refs), sum(r[REF_BYTES] for r in refs), sum(r[REF_PAGES] for r in refs)
                if (
                    count + more[0] <= MAX_MEDIA
                    and size + more[1] <= MAX_MEDIA_BYTES
                    and pages + more[2] <= MAX_PDF_PAGES
                ):
                    count, size, pages = count + more[0], size + more[1], pages + more[2]
                    carried.add(index)
                    used += cost
                    kept += 1
                    continue
            sending = False
            cost -= sum(r[REF_TOKENS] for r in refs)
            if index == last:
                left_out = len(refs)
        if used + cost > allowance:
            break
        used += cost
        kept += 1
    first = len(tail) - kept
    start = first
    while start < len(tail) and tail[start][ROLE] == _ASSISTANT:
        used -= tail[start][TOKENS] + MESSAGE_OVERHEAD
        start += 1
    merged: list[ContextMessage] = []
    parts: list[str] = []
    files: list[MediaRef] = []
    current: Role | None = None
    author: str | None = None
    for index in range(start, len(tail)):
        message = tail[index]
        stored_role, text, message_author = message[ROLE], message[TEXT], message[AUTHOR]
        role = Role.ASSISTANT if stored_role == _ASSISTANT else Role.USER
        if role is Role.USER and (stored_role != _USER or label_authors):
            text = _render(message, label_authors)
        if role is not current:
            if current is not None:
                merged.append(ContextMessage(current, "\n\n".join(parts), author, tuple(files)))
            current, parts, files, author = role, [], [], message_author
        elif author != message_author:
            author = None
        parts.append(text)
        if index in carried:
            files.extend(media_of(message))
    if current is not None:
        merged.append(ContextMessage(current, "\n\n".join(parts), author, tuple(files)))
    return Context(
        session_id=session_id,
        system=system.text,
        summaries=tuple(s.text for s in kept_summaries),
        messages=tuple(merged),
        estimated_tokens=int((fixed + used) * factor),
        budget=budget,
        dropped_messages=start,
        dropped_summaries=len(summaries) - len(kept_summaries),
        raw_tokens=fixed + used,
        media_left_out=left_out,
        files=sum(len(m.media) for m in merged),
    )
