"""The conversation core for tests: built from its parts, and an in-memory outbound port.

``RecordingPort`` implements conversation.outbound.Outbound by keeping what was sent,
so that the core's behaviour is tested directly and quickly; what only the real
platforms can show (translation, the client libraries) is tested against the wire
fakes in tests/fakes/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents.base import Agent
from agents.claude_code import ClaudeCodeAgent
from agents.settings import SpendSettings
from conversation.access import AccessPolicy
from conversation.approvals import Approvals
from conversation.attachments import AttachmentReader
from conversation.code_turn import CodeTurns
from conversation.commands import BuiltinCommands
from conversation.delivery import Outbox
from conversation.dispatcher import Dispatcher
from conversation.ordering import ChatLanes
from conversation.outbound import Outbound, OutboundFile, ReplyStream, RetryLater, Unreachable
from conversation.projects import ProjectCommands
from conversation.ratelimit import RateLimiter
from conversation.registry import Registry
from conversation.settings import (
    AccessSettings,
    AgentSettings,
    AttachmentSettings,
    RateLimitSettings,
)
from conversation.turn import Turn
from memory.manager import SessionManager


def make_dispatcher(
    manager: SessionManager,
    agent: Agent,
    *,
    access: AccessSettings,
    exports: Path,
    per_minute: float = 600,
    burst: int = 100,
    attachments: AttachmentSettings | None = None,
    spend: SpendSettings | None = None,
    max_running: int = 1024,
    code_agent: ClaudeCodeAgent | None = None,
    projects_root: Path | None = None,
    approval_timeout_s: float = 5.0,
    redact: Callable[[str], str] | None = None,
) -> Dispatcher:
    """The core as bots/app.py builds it, over ``manager`` and ``agent``."""
    root = projects_root or exports / "projects"
    code = CodeTurns(manager, code_agent, root, "claude-sonnet-4-6", redact=redact)
    turn = Turn(manager, agent, AgentSettings(), spend, code)
    registry = Registry()
    BuiltinCommands(registry, manager, turn, exports).register()
    ProjectCommands(registry, manager, code, root).register()
    policy = AccessPolicy(access)
    return Dispatcher(
        turn=turn,
        registry=registry,
        access=policy,
        limiter=RateLimiter(RateLimitSettings(per_minute=per_minute, burst=burst)),
        reader=AttachmentReader(attachments or AttachmentSettings()),
        lanes=ChatLanes(max_running),
        outbox=Outbox(manager, 86_400),
        approvals=Approvals(policy, approval_timeout_s),
    )


@dataclass
class Sent:
    """One thing a port delivered: text (``markdown`` for model replies) or a file."""

    text: str
    markdown: bool = False
    file: str | None = None  # the file's name
    data: bytes | None = None  # the file's content


@dataclass
class RecordingStream:
    port: RecordingPort
    updates: list[str] = field(default_factory=list)
    finished: bool = False
    closed: bool = False

    async def update(self, text: str) -> None:
        self.updates.append(text)

    async def finish(self, text: str) -> None:
        await self.port.send(text, markdown=True)
        self.finished = True

    async def close(self) -> None:
        self.closed = True


@dataclass
class RecordingPort:
    """An in-memory outbound port; ``fail_with`` makes its deliveries fail, and
    ``fail_plain`` its plain texts only (the core's notices)."""

    upload_limit: int = 1 << 30
    is_private: bool = True
    sent: list[Sent] = field(default_factory=list)
    streams: list[RecordingStream] = field(default_factory=list)
    direct: RecordingPort | None = None  # the asker's private port, if any
    fail_with: Exception | None = None
    # Plain texts (the core's notices) fail with this; model replies (Markdown) still go.
    fail_plain: Exception | None = None
    fail_uploads: Exception | None = None
    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    offers: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)

    async def send(self, text: str, *, markdown: bool = False, skip: int = 0) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        if self.fail_plain is not None and not markdown:
            raise self.fail_plain
        if skip:  # one part, shown already
            return
        self.sent.append(Sent(text, markdown))
        self.delivered.set()

    async def send_file(self, file: OutboundFile, caption: str) -> None:
        if self.fail_uploads is not None:
            raise self.fail_uploads
        if self.fail_with is not None:
            raise self.fail_with
        data = await asyncio.to_thread(file.path.read_bytes)
        self.sent.append(Sent(caption, file=file.name, data=data))
        self.delivered.set()

    async def offer(self, text: str, choices: Sequence[tuple[str, str]]) -> None:
        """Buttons: kept in ``offers`` (text, choices) for a test to press."""
        if self.fail_with is not None:
            raise self.fail_with
        self.offers.append((text, list(choices)))
        self.sent.append(Sent(text))
        self.delivered.set()

    def stream(self) -> ReplyStream:
        stream = RecordingStream(self)
        self.streams.append(stream)
        return stream

    def private(self) -> Outbound | None:
        if self.is_private:
            return None
        if self.direct is None:
            self.direct = RecordingPort()
        return self.direct

    def private_hint(self, command: str) -> str:
        return f"open a private chat and send /{command} there"

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.sent]


def group_port() -> RecordingPort:
    return RecordingPort(is_private=False)


__all__ = ["RecordingPort", "RetryLater", "Unreachable", "group_port", "make_dispatcher"]
