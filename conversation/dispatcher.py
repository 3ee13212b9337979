"""The dispatcher: every rule between "a platform event arrived" and "this goes out".

    inbound -> its chat's lane -> access (a stranger is told how to get in, once an
    hour) -> an edit? -> shutting down? -> rate limit (told once per window) ->
    a command, or a turn, or stored unanswered (not addressed) -> what the outcome
    says -> the outbound port

Interfaces translate their events into ``Inbound`` values and implement the port;
everything here is decided once for all of them, so the bot behaves the same on
Telegram, Discord, the console and the HTTP API.

Notices (how a stranger gets in, the rate limit, restarting, a fresh conversation,
unreadable files, an error) are best effort: one that cannot be sent (the platform
asks to wait, the chat is unreachable, the network fails) is logged and costs
nothing else: the question is still stored and answered, the reply still delivered
(or kept owed by the outbox).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping, Sequence

from agents.claude_code import ToolApproval
from conversation.access import AccessPolicy, Actor
from conversation.albums import Albums
from conversation.approvals import Approvals
from conversation.attachments import AttachmentReader, seen_as
from conversation.delivery import Outbox
from conversation.export import fit_for_upload
from conversation.inbound import Inbound
from conversation.ordering import ChatLanes
from conversation.outbound import (
    DeliveryError,
    Interface,
    Outbound,
    OutboundFile,
    ReplyStream,
    Unreachable,
)
from conversation.ratelimit import Notices, RateLimiter
from conversation.registry import CommandCall, Registry, Reply, parse_command
from conversation.turn import INTERNAL_ERROR, Outcome, Question, Turn, TurnResult
from memory.attachments import NewAttachment
from memory.errors import PalaverError
from memory.types import ChatKey, Delivery, Role, StoredMessage

log = logging.getLogger(__name__)

DENIED_WINDOW_S = 3600.0  # a stranger is told how to get in at most this often
RATE_WINDOW_S = 10.0  # a user over the rate limit is told at most this often
EDITED_WINDOW_S = 3600.0  # a private chat is told edits are not answered at most this often
REFUSED_WINDOW_S = 600.0  # one note per album (or message) of unreadable files

EDITED = (
    "I answer new messages only, so I didn't act on your edit. "
    "Send the corrected text as a new message if you'd like an answer to it."
)
RESTARTING = "I'm restarting; your message is saved and I'll answer it as soon as I'm back."
RESTARTING_RESEND = "I'm restarting; please send your message again in a minute."
BARE_MENTION = "Yes? Write your question in the same message."
ALREADY_ANSWERED = "Already answered."
SENT_PRIVATELY = "I've sent you the answer privately."
ADMINS_ONLY = "Only the bot's admins can use that command."
FRESH_START = (
    "It's been a while, so this is a fresh conversation; I kept a summary of the last one "
    "(/summary shows it)."
)


class Dispatcher:
    def __init__(
        self,
        *,
        turn: Turn,
        registry: Registry,
        access: AccessPolicy,
        limiter: RateLimiter,
        reader: AttachmentReader,
        lanes: ChatLanes,
        outbox: Outbox,
        approvals: Approvals,
    ) -> None:
        self.turn = turn
        self.registry = registry
        self.access = access
        self.limiter = limiter
        self.reader = reader
        self.lanes = lanes
        self.outbox = outbox
        self.approvals = approvals
        self.notices = Notices()
        self.albums = Albums(reader.settings.album_wait_s)
        self.draining = False
        self._resumed: set[asyncio.Task[None]] = set()

    # -- what interfaces ask before they answer ----------------------------------------

    def command_of(self, inbound: Inbound) -> tuple[str, str] | None:
        """The command ``inbound`` carries: a structured one, or typed text that names a
        known command (or any command, where the bot is asked: it will say it is
        unknown). Other text that starts with a slash is an ordinary message."""
        if inbound.command is not None:
            return inbound.command
        parsed = parse_command(inbound.text)
        if parsed is None:
            return None
        if self.registry.get(parsed[0]) is not None or inbound.private or inbound.addressed:
            return parsed
        return None

    def answers_privately(self, inbound: Inbound) -> bool:
        """Whether the answer to ``inbound`` is for its sender alone (so that an
        interface can acknowledge it privately before the answer is ready)."""
        if not self.access.allows(inbound.actor):
            return True
        named = self.command_of(inbound)
        command = self.registry.get(named[0]) if named else None
        if command is None:
            return False
        return command.private or (command.admin_only and not self.access.is_admin(inbound.actor))

    def choose(self, key: ChatKey, actor: Actor, data: str) -> str:
        """A button of an ``offer`` was pressed: what to show the presser. Handled at
        once, outside the chat's lane (the turn in it may be waiting for this)."""
        return self.approvals.choose(key, actor, data)

    # -- the entry point ---------------------------------------------------------------

    async def handle(self, inbound: Inbound, port: Outbound) -> None:
        """Handle one inbound message; its chat's messages are handled in order.

        An interface calls this before its own first ``await`` for the event, so the
        chat's lane is entered in arrival order. The parts of an album join its first
        part here and are handled with it, as one message (conversation.albums).
        """
        album = inbound.album is not None and not inbound.edited
        if album and self.albums.join(inbound):
            return
        async with self.lanes.lane(inbound.key):
            try:
                if album:
                    inbound = await self.albums.gather(inbound)
                await self._handle(inbound, port)
            except DeliveryError as error:
                log.info("could not answer in %s: %r", inbound.key.ref, error)
            except Exception:
                log.exception("handling a message in %s failed", inbound.key.ref)
                try:
                    await port.send(INTERNAL_ERROR)
                except Exception as error:
                    log.info("could not report the failure in %s: %r", inbound.key.ref, error)

    async def drain(self, grace: float) -> None:
        """Shutting down: answer no more messages; let turns in flight finish for
        ``grace`` seconds, then cancel them (their messages are kept, and answered
        after the restart); replies still waiting for their chat stay owed."""
        self.draining = True
        await self.lanes.drain(grace)
        await self.outbox.close()

    async def resume(self, interfaces: Mapping[str, Interface]) -> int:
        """After a start: deliver the replies still owed, and answer the questions a
        shutdown or crash left unanswered. Returns how many questions are answered."""
        owed = await self.turn.manager.owed(self.outbox.since())

        def port(message: StoredMessage) -> Outbound | None:
            key = ChatKey.from_ref(message.chat_ref or "")
            interface = interfaces.get(key.interface)
            reply_to = message.metadata.get("reply_to")
            if interface is None:
                return None
            return interface.outbound(key, reply_to if isinstance(reply_to, str) else None)

        self.outbox.resume([m for m in owed if m.role is Role.ASSISTANT], port)
        questions = [
            m
            for m in owed
            if m.role is Role.USER and m.delivery is Delivery.AWAITING and m.chat_ref
        ]
        for question in questions:
            key = ChatKey.from_ref(question.chat_ref or "")
            interface = interfaces.get(key.interface)
            if interface is None or question.author_id is None:
                continue
            inbound = Inbound(
                key,
                Actor(key.interface, question.author_id, question.author_name),
                question.text,
                question.platform_message_id,
                private=interface.is_private(key),
            )
            destination = interface.outbound(key, question.platform_message_id)
            task = asyncio.create_task(self._answer_owed(inbound, destination))
            self._resumed.add(task)
            task.add_done_callback(self._resumed.discard)
        if questions:
            log.info("answering %d messages left unanswered by the last shutdown", len(questions))
        return len(questions)

    async def settled(self) -> None:
        """Wait until what ``resume`` started is done: owed questions answered, owed
        replies delivered."""
        while self._resumed:
            await asyncio.gather(*list(self._resumed), return_exceptions=True)
        await self.outbox.idle()

    async def _answer_owed(self, inbound: Inbound, port: Outbound) -> None:
        """A question stored before a shutdown, already allowed then: its turn now."""
        async with self.lanes.lane(inbound.key):
            try:
                await self._ask(inbound, port)
            except Exception:
                log.exception("answering a kept message in %s failed", inbound.key.ref)

    async def _handle(self, inbound: Inbound, port: Outbound) -> None:
        actor = inbound.actor
        command = self.command_of(inbound)
        addressed = inbound.addressed or command is not None
        if not self.access.allows(actor):
            # Nothing of a stranger's is read, downloaded or stored.
            if addressed:
                denied = ("denied", actor.interface, actor.user_id)
                await self._notice(port, inbound, denied, DENIED_WINDOW_S, self._denied(actor))
            return
        if inbound.edited:
            if inbound.private:
                edited = ("edited", inbound.key)
                await self._notice(port, inbound, edited, EDITED_WINDOW_S, EDITED)
            return
        if self.draining:
            owed = addressed and inbound.message_id is not None and command is None
            await self._observe(inbound, owed=owed)
            if addressed:
                await self._say(port, inbound, RESTARTING if owed else RESTARTING_RESEND)
            return
        await self.outbox.reachable(inbound.key, port)
        if addressed and not self.access.is_operator(actor):
            wait = self.limiter.acquire(f"{actor.interface}:{actor.user_id}")
            if wait > 0:
                text = (
                    "You're sending messages faster than I can answer. "
                    f"Please wait {max(1, round(wait))} s and try again."
                )
                rate = ("rate", actor.interface, actor.user_id)
                await self._notice(port, inbound, rate, RATE_WINDOW_S, text)
                return
        if command is not None:
            await self._command(inbound, port, *command)
        elif not addressed:
            await self._observe(inbound)
        else:
            await self._ask(inbound, port)

    def _denied(self, actor: Actor) -> str:
        return self.access.denied_message(actor)

    async def _notice(
        self, port: Outbound, inbound: Inbound, key: Hashable, window: float, text: str
    ) -> None:
        """A notice that no input may make the bot repeat: once per ``key`` and window
        (always, though, where the platform waits for an answer)."""
        if self.notices.take(key, window) or inbound.needs_answer:
            await self._say(port, inbound, text)

    async def _say(self, port: Outbound, inbound: Inbound, text: str) -> None:
        """A notice, best effort (see the module docstring)."""
        try:
            await port.send(text)
        except DeliveryError as error:
            log.info("a notice to %s could not be sent: %r", inbound.key.ref, error)
        except Exception as error:
            log.warning("a notice to %s failed: %r", inbound.key.ref, error)

    # -- commands ------------------------------------------------------------------

    async def _command(self, inbound: Inbound, port: Outbound, name: str, argument: str) -> None:
        command = self.registry.get(name)
        if command is None:
            await port.send(f"Unknown command /{name}. Send /help to see what I can do.")
            return
        admin = self.access.is_admin(inbound.actor)
        if command.admin_only and not admin:
            await self._answer(port, inbound, Reply(ADMINS_ONLY), private=True, name=name)
            return
        call = CommandCall(inbound.key, inbound.actor, argument, inbound.private, admin)
        try:
            reply = await command.handler(call)
        except PalaverError as error:
            reply = Reply(f"That didn't work: {str(error).rstrip('.')}.")
        await self._answer(port, inbound, reply, private=command.private, name=name)

    async def _answer(
        self, port: Outbound, inbound: Inbound, reply: Reply, *, private: bool, name: str
    ) -> None:
        """A command's reply; one meant for the asker alone never goes to a shared chat."""
        target = port.private() if private and not inbound.private else None
        if target is None:
            await self._send_reply(port, reply)
            return
        try:
            await self._send_reply(target, reply)
        except Unreachable:
            await port.send(port.private_hint(name))
        else:
            await port.send(SENT_PRIVATELY)

    async def _send_reply(self, port: Outbound, reply: Reply) -> None:
        if reply.file is None:
            await port.send(reply.text)
            return
        files, note = await fit_for_upload(reply.file, port.upload_limit)
        try:
            for index, file in enumerate(files):
                caption = reply.text + note if index == 0 else f"{file.name}"
                try:
                    await port.send_file(file, caption)
                except (DeliveryError, PalaverError):
                    raise
                except Exception as error:
                    log.warning("uploading %s failed: %r", file.name, error)
                    await port.send(
                        f"{reply.text}\nThe upload of {file.name} failed; please try again."
                    )
                    return
        finally:
            await asyncio.to_thread(_delete, files)

    # -- messages ------------------------------------------------------------------

    def _question(
        self, inbound: Inbound, text: str, attachments: tuple[NewAttachment, ...] = ()
    ) -> Question:
        metadata = {"reply_to": inbound.reply_to} if inbound.reply_to else None
        return Question(
            inbound.key,
            inbound.actor,
            text,
            inbound.message_id,
            group=not inbound.private,
            metadata=metadata,
            attachments=attachments,
        )

    async def _observe(self, inbound: Inbound, *, owed: bool = False) -> None:
        """Keep a message the bot was not asked to answer, so the model knows who said
        what when it is asked (or, ``owed``, one to answer after a restart); its files
        are named, not downloaded."""
        text = " ".join(part for part in (inbound.text, seen_as(inbound.attachments)) if part)
        if text.strip():
            await self.turn.observe(self._question(inbound, text), owed=owed)

    async def _ask(self, inbound: Inbound, port: Outbound) -> None:
        text = inbound.text
        files: tuple[NewAttachment, ...] = ()
        if inbound.attachments:
            read = await self.reader.read(inbound.attachments)
            if read.media:  # what the chat's session keeps already counts to its limit
                usage = await self.turn.manager.attachment_usage(inbound.key)
                read = self.reader.within_quota(read, *usage)
            if read.refused:
                once = ("refused", inbound.key, inbound.album or inbound.message_id)
                await self._notice(
                    port, inbound, once, REFUSED_WINDOW_S, self.reader.refusal(read.refused)
                )
            text, files = read.text(text), read.media
            if not text.strip() and read.refused:
                return
        if not text.strip():
            await self._say(port, inbound, BARE_MENTION)
            return
        stream = port.stream()
        shown = ""

        async def progress(so_far: str) -> None:
            nonlocal shown
            shown = so_far
            await stream.update(so_far)

        async def approve(approval: ToolApproval) -> bool:
            return await self.approvals.ask(inbound.key, port, approval)

        try:
            try:
                question = self._question(inbound, text, files)
                result = await self.turn.handle(question, on_progress=progress, approve=approve)
            except Exception:
                log.exception("the turn failed in %s", inbound.key.ref)
                result = TurnResult(Outcome.FAILED, INTERNAL_ERROR)
            await self._show(result, inbound, port, stream, shown)
        finally:
            await stream.close()

    async def _show(
        self,
        result: TurnResult,
        inbound: Inbound,
        port: Outbound,
        stream: ReplyStream,
        shown: str,
    ) -> None:
        """What each outcome of a turn says."""
        outcome = result.outcome
        if result.fresh:
            await self._say(port, inbound, FRESH_START)
        if outcome is Outcome.REPLIED and result.reply is not None:
            await self.outbox.deliver(inbound.key, result.reply, port, stream.finish)
        elif outcome is Outcome.REPLIED:
            await stream.finish(result.text)
        elif outcome in (Outcome.DUPLICATE, Outcome.STORED):
            if inbound.needs_answer:
                await self._say(port, inbound, ALREADY_ANSWERED)
        elif outcome is Outcome.FAILED and shown.strip():
            await stream.finish(f"{shown}\n\n{result.text}")  # keep what was already shown
        elif result.text.strip():
            await self._say(port, inbound, result.text)


def _delete(files: Sequence[OutboundFile]) -> None:
    """Files are sent from temporary copies: gone once sent (or not)."""
    for file in files:
        file.path.unlink(missing_ok=True)
