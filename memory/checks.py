"""What a message must be to be stored: checked before anything is written.

A message that fails is refused whole, with a reason fit for the chat user; nothing
is half-stored. Token limits are checked by the manager after counting, since
counting is the expensive part.
"""

from __future__ import annotations

import json
from typing import Any

from memory.errors import InvalidMessage
from memory.types import ChatKey, Role

# Nesting deeper than this is refused before it reaches the JSON encoder, which
# would recurse once per level.
MAX_METADATA_DEPTH = 20


def role_of(role: Role | str) -> Role:
    try:
        return Role(role)
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise InvalidMessage(f"unknown role {role!r}; expected one of {allowed}") from None


def check_text(text: object, max_chars: int) -> None:
    if not isinstance(text, str):
        raise InvalidMessage(f"message is not text ({type(text).__name__})")
    if not text.strip():
        raise InvalidMessage("message is empty")
    if len(text) > max_chars:
        raise InvalidMessage(
            f"message is too long: {len(text):,} characters; the limit is {max_chars:,}"
        )
    if "\x00" in text:
        raise InvalidMessage("message contains NUL bytes, which cannot be stored as text")
    check_unicode(text, "message")


def check_unicode(text: str, what: str) -> None:
    """Refuse a lone surrogate, which no database encoding can store."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidMessage(
                f"{what} is not valid Unicode text (it has a lone surrogate)"
            ) from None


def check_origin(chat: ChatKey | None, platform_message_id: str | None) -> None:
    for part in (chat.interface, chat.chat_id, chat.thread_id or "") if chat else ():
        check_unicode(part, "the chat id")
        if len(part) > 100:
            raise InvalidMessage("the chat id is longer than 100 characters")
    if platform_message_id is None:
        return
    if chat is None:
        raise InvalidMessage("a platform message id needs the chat it belongs to")
    if len(platform_message_id) > 100:
        raise InvalidMessage("platform message id is longer than 100 characters")
    check_unicode(platform_message_id, "the platform message id")


def check_metadata(metadata: dict[str, Any] | None) -> None:
    if metadata is None:
        return
    if _depth(metadata) > MAX_METADATA_DEPTH:
        raise InvalidMessage(f"message metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as error:
        raise InvalidMessage(f"message metadata is not JSON: {error}") from None


def _depth(value: object) -> int:
    """How deeply ``value`` nests, without recursion (a hostile value may be deep)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: list[object] = list(item.values())
        elif isinstance(item, list | tuple):
            children = list(item)
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_METADATA_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest
