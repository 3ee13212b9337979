"""Albums: several photos or files sent together, answered as one message.

Telegram delivers an album as one message per part, sharing a ``media_group_id``,
within moments of each other; usually only the first part has a caption. Answered
part by part, the caption would get an answer about the first photo and the other
photos none (or an answer each). So the first part of an album waits in its chat's
lane until no new part has come for ``wait`` seconds (at most ``MAX_WAIT_S`` in all);
the parts that arrive meanwhile join it instead of queueing as messages of their
own, and the album goes on as one message: the captions joined, every file attached,
asked if any part asked. Parts join synchronously, before the interface's first
``await`` for them, so the chat's order holds: a message sent after the album is
handled after it.

The album keeps its first part's message id, which is what makes it idempotent; a
part re-delivered on its own after a restart would come in as an album of one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

from conversation.inbound import Inbound
from memory.types import ChatKey

MAX_WAIT_S = 10.0


class _Album:
    __slots__ = ("changed", "last_part_at", "parts", "started_at")

    def __init__(self, first: Inbound) -> None:
        self.parts = [first]
        self.started_at = self.last_part_at = time.monotonic()
        self.changed = asyncio.Event()


class Albums:
    def __init__(self, wait: float) -> None:
        self.wait = wait
        self._open: dict[tuple[ChatKey, str], _Album] = {}

    def join(self, inbound: Inbound) -> bool:
        """Add a part to its album if one is open; True: it joined (nothing more to do
        with it), False: it is the album's first part, which gathers the rest."""
        assert inbound.album is not None
        key = (inbound.key, inbound.album)
        album = self._open.get(key)
        if album is None:
            self._open[key] = _Album(inbound)
            return False
        album.parts.append(inbound)
        album.last_part_at = time.monotonic()
        album.changed.set()
        return True

    async def gather(self, first: Inbound) -> Inbound:
        """The album that ``first`` began, once no part has come for ``wait`` seconds."""
        assert first.album is not None
        key = (first.key, first.album)
        album = self._open.get(key)
        if album is None or album.parts[0] is not first:
            return first
        try:
            while True:
                now = time.monotonic()
                left = min(
                    album.last_part_at + self.wait - now, album.started_at + MAX_WAIT_S - now
                )
                if left <= 0:
                    break
                album.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(album.changed.wait(), left)
        finally:
            del self._open[key]
        return merged(album.parts)


def merged(parts: list[Inbound]) -> Inbound:
    """One message of an album's parts, in the order they came."""
    first = parts[0]
    if len(parts) == 1:
        return first
    text = "\n\n".join(part.text for part in parts if part.text.strip())
    return replace(
        first,
        text=text,
        attachments=tuple(a for part in parts for a in part.attachments),
        addressed=any(part.addressed for part in parts),
        reply_to=next((part.reply_to for part in parts if part.reply_to), None),
    )
