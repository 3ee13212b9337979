"""Delivery: a stored reply is owed to its chat until the chat has it.

A reply is stored "pending" before it is sent (memory.types.Delivery) and settled
once the port delivered it, so that platform waits, outages and restarts delay a
reply and never lose it:

- the platform asks to wait (``RetryLater``, e.g. Telegram's 429 beyond what its
  flood control waits out) or is out of reach (``Transient``, or any exception not
  a ``DeliveryError``): the reply is queued for its chat and sent when the wait is
  over (with backoff while the platform stays out of reach); later replies to that
  chat queue behind it, so the chat gets them in order, once;
- a long reply goes out in parts, and a failure says how many were shown
  (``DeliveryError.sent_parts``): the count is stored with the reply, and the next
  attempt, in this process or after a restart, starts at the first part the chat
  does not have, so that no part is shown twice;
- the chat cannot be reached (``Unreachable``: the bot blocked, removed, DMs closed):
  the reply is marked "failed"; when someone writes from that chat again, the chat
  is reachable again, and it gets the replies it missed first, said as such;
- the platform refuses the reply for good (``Rejected``, e.g. a 400): sending it
  again would be refused again, so it is marked "failed" at once, logged, and the
  chat told in a plain line that an answer could not be delivered. After a restart
  it is tried once more when the chat writes (the refusal may have passed);
- transient faults are retried only while the reply is within the outbox's window
  (``window_s``, the session's expiry): the same horizon as a restart's, past which
  an owed reply is no longer delivered at all, and long enough to outlast any
  outage, at one request per chat every ``MAX_RETRY_S`` at most. Past it the
  reply is marked "failed" and the retries stop;
- after a restart, replies still pending are sent, questions stored but never
  answered (a shutdown or crash mid-turn) are answered, and chats with failed replies
  are remembered.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from conversation.outbound import DeliveryError, Outbound, Rejected, RetryLater, Unreachable
from memory.errors import PalaverError
from memory.manager import SessionManager
from memory.types import ChatKey, Delivery, StoredMessage

log = logging.getLogger(__name__)

MISSED = "I couldn't deliver this answer earlier:"
MISSED_REST = "I couldn't deliver the rest of this answer earlier:"
REFUSED = "I couldn't deliver an answer here: the platform refused it."
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 300.0

Send = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class _Parcel:
    """One reply on its way: the chat has ``sent`` parts of ``text`` already."""

    reply: StoredMessage
    port: Outbound
    note: str = ""  # introduces a missed reply, in its first message
    sent: int = 0
    lead: str = ""  # a line of its own before the rest of a reply partly shown

    @property
    def text(self) -> str:
        return f"{self.note}\n\n{self.reply.text}" if self.note else self.reply.text

    @property
    def kept(self) -> bool:
        """Whether ``sent`` counts the parts of the stored text (and is stored too)."""
        return not self.note


def _missed(reply: StoredMessage, port: Outbound) -> _Parcel:
    """A reply the chat could not take before, introduced as such."""
    if reply.delivered_parts:
        return _Parcel(reply, port, sent=reply.delivered_parts, lead=MISSED_REST)
    return _Parcel(reply, port, note=MISSED)


def _shown(error: BaseException) -> int:
    return error.sent_parts if isinstance(error, DeliveryError) else 0


class Outbox:
    """The replies owed to chats, and their delivery (see the module docstring)."""

    def __init__(self, manager: SessionManager, window_s: float) -> None:
        self._manager = manager
        self._window_s = window_s  # how far back what is owed is still delivered
        self._queues: dict[ChatKey, deque[_Parcel]] = {}
        self._flushers: dict[ChatKey, asyncio.Task[None]] = {}
        self._unreachable: set[str] = set()  # chat refs with failed replies

    def queued(self, key: ChatKey) -> int:
        return len(self._queues.get(key, ()))

    async def deliver(self, key: ChatKey, reply: StoredMessage, port: Outbound, send: Send) -> None:
        """Deliver ``reply`` now through ``send`` (the stream's last step), unless the
        chat still waits for earlier replies: then it queues behind them."""
        parcel = _Parcel(reply, port)
        if key in self._queues:
            self._enqueue(key, parcel, 0.0)
            return
        try:
            await send(reply.text)
        except Exception as error:
            await self._progress(parcel, error)
            if isinstance(error, RetryLater):
                log.info(
                    "delivery to %s delayed %.0f s by the platform", key.ref, error.retry_after
                )
                self._enqueue(key, parcel, error.retry_after)
            elif isinstance(error, Unreachable):
                await self._unreachable_now(key, [parcel], error)
            elif isinstance(error, Rejected):
                await self._rejected(key, parcel, error)
            else:
                log.warning("delivery to %s failed (%r); retrying", key.ref, error)
                self._enqueue(key, parcel, FIRST_RETRY_S)
        else:
            await self._settle(reply)

    def since(self) -> datetime:
        """What is older than this is no longer delivered (nor answered)."""
        return datetime.now(UTC) - timedelta(seconds=self._window_s)

    async def reachable(self, key: ChatKey, port: Outbound) -> None:
        """Someone wrote from ``key``: deliver what it could not take before."""
        if key.ref not in self._unreachable:
            return
        self._unreachable.discard(key.ref)
        for reply in await self._manager.owed(self.since(), chat=key):
            if reply.delivery is Delivery.FAILED:
                self._enqueue(key, _missed(reply, port), 0.0)

    def resume(
        self, owed: list[StoredMessage], ports: Callable[[StoredMessage], Outbound | None]
    ) -> None:
        """After a restart: send the replies still pending (from the first part their
        chat does not have); remember failed chats."""
        for reply in owed:
            if reply.chat_ref is None:
                continue
            key = ChatKey.from_ref(reply.chat_ref)
            if reply.delivery is Delivery.FAILED:
                self._unreachable.add(reply.chat_ref)
            elif reply.delivery is Delivery.PENDING:
                port = ports(reply)
                if port is not None:
                    self._enqueue(key, _Parcel(reply, port, sent=reply.delivered_parts), 0.0)

    async def idle(self) -> None:
        """Wait until every queued reply is delivered (or given up)."""
        while self._flushers:
            await asyncio.gather(*list(self._flushers.values()), return_exceptions=True)

    async def close(self) -> None:
        """Stop retrying; what is still queued stays pending in the database."""
        for task in self._flushers.values():
            task.cancel()
        await asyncio.gather(*self._flushers.values(), return_exceptions=True)
        self._flushers.clear()
        self._queues.clear()

    # -- the queue of one chat ------------------------------------------------------

    def _enqueue(self, key: ChatKey, parcel: _Parcel, after: float) -> None:
        self._queues.setdefault(key, deque()).append(parcel)
        if key not in self._flushers:
            self._flushers[key] = asyncio.create_task(
                self._flush(key, after), name=f"palaver-delivery-{key.ref}"
            )

    async def _flush(self, key: ChatKey, after: float) -> None:
        queue = self._queues[key]
        retry = FIRST_RETRY_S
        try:
            while queue:
                if after > 0:
                    await asyncio.sleep(after)
                    after = 0.0
                parcel = queue[0]
                try:
                    if parcel.lead:
                        await parcel.port.send(parcel.lead)
                        parcel.lead = ""
                    await parcel.port.send(parcel.text, markdown=True, skip=parcel.sent)
                except RetryLater as wait:
                    await self._progress(parcel, wait)
                    after = wait.retry_after
                    continue
                except Unreachable as error:
                    await self._progress(parcel, error)
                    await self._unreachable_now(key, list(queue), error)
                    queue.clear()
                    break
                except Rejected as error:
                    await self._progress(parcel, error)
                    queue.popleft()
                    await self._rejected(key, parcel, error)
                    continue
                except Exception as error:
                    await self._progress(parcel, error)
                    if self._expired(parcel):
                        queue.popleft()
                        await self._give_up(key, parcel, error)
                        continue
                    log.warning("delivery to %s failed again (%r)", key.ref, error)
                    after, retry = retry, min(retry * 2, MAX_RETRY_S)
                    continue
                retry = FIRST_RETRY_S
                queue.popleft()
                await self._settle(parcel.reply)
        finally:
            if not queue:
                self._queues.pop(key, None)
            self._flushers.pop(key, None)

    # -- what each failure does -----------------------------------------------------

    async def _progress(self, parcel: _Parcel, error: BaseException) -> None:
        """Keep how many parts the failed attempt showed, with the reply too."""
        shown = _shown(error)
        if shown <= parcel.sent:
            return
        parcel.sent = shown
        if not parcel.kept:
            return
        try:
            await self._manager.partly_delivered(parcel.reply, shown)
        except PalaverError as failure:  # a restart may show those parts again
            log.warning("could not record a reply's delivered parts: %s", failure)

    def _expired(self, parcel: _Parcel) -> bool:
        return parcel.reply.created_at < self.since()

    async def _give_up(self, key: ChatKey, parcel: _Parcel, error: Exception) -> None:
        log.warning(
            "delivery to %s given up: the reply is older than %.0f s and still fails (%r)",
            key.ref,
            self._window_s,
            error,
        )
        await self._mark_failed(parcel)

    async def _rejected(self, key: ChatKey, parcel: _Parcel, error: Rejected) -> None:
        log.warning("the platform refused a reply to %s for good: %s", key.ref, error)
        await self._mark_failed(parcel)
        try:
            await parcel.port.send(REFUSED)
        except Exception as failure:
            log.info("could not tell %s that a reply was refused: %r", key.ref, failure)

    async def _unreachable_now(
        self, key: ChatKey, parcels: list[_Parcel], error: Exception
    ) -> None:
        log.info("chat %s cannot be reached (%s): %d replies kept", key.ref, error, len(parcels))
        self._unreachable.add(key.ref)
        for parcel in parcels:
            await self._mark_failed(parcel)

    async def _mark_failed(self, parcel: _Parcel) -> None:
        try:
            await self._manager.undeliverable(parcel.reply, parcel.sent if parcel.kept else 0)
        except PalaverError as failure:
            log.warning("could not mark a reply undeliverable: %s", failure)

    async def _settle(self, reply: StoredMessage) -> None:
        try:
            await self._manager.settle(reply)
        except PalaverError as error:  # delivered all the same; a restart may resend it
            log.warning(
                "could not mark reply %s:%s delivered: %s", reply.session_id, reply.seq, error
            )
