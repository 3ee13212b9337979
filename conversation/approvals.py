"""Tool approvals in chat: Claude Code asks, the people of the chat answer.

Read-only tools run without asking (agents.claude_code decides which); any other tool
request (Bash, Edit, Write, ...) is shown in the chat with Approve and Deny, through
the outbound port's ``offer``. The platform's button press comes back to ``choose``:
only people allowed in that chat may answer, and a request nobody answers within
``timeout_s`` is denied. Presses are handled outside the chat's lane, which is busy
with the very turn that waits for the answer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from agents.claude_code import ToolApproval
from conversation.access import AccessPolicy, Actor
from conversation.outbound import Outbound
from memory.types import ChatKey

log = logging.getLogger(__name__)

APPROVE = "approve"
DENY = "deny"
EXPIRED = "This request is no longer waiting for an answer."


@dataclass(slots=True)
class _Pending:
    key: ChatKey
    answer: asyncio.Future[bool]


class Approvals:
    def __init__(self, access: AccessPolicy, timeout_s: float) -> None:
        self._access = access
        self._timeout_s = timeout_s
        self._pending: dict[str, _Pending] = {}

    async def ask(self, key: ChatKey, port: Outbound, approval: ToolApproval) -> bool:
        """Show ``approval`` in the chat and wait for Approve or Deny (or the timeout)."""
        token = secrets.token_hex(6)
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[token] = _Pending(key, answer)
        text = (
            f"Claude Code wants to use {approval.tool_name} in {approval.project_name}:\n"
            f"{approval.summary}"
        )
        try:
            await port.offer(text, [("Approve", f"{token}:{APPROVE}"), ("Deny", f"{token}:{DENY}")])
            async with asyncio.timeout(self._timeout_s):
                return await answer
        except TimeoutError:
            await port.send(
                f"No answer within {self._timeout_s:.0f} s: {approval.tool_name} was denied."
            )
            return False
        finally:
            self._pending.pop(token, None)

    def choose(self, key: ChatKey, actor: Actor, data: str) -> str:
        """A button was pressed in ``key`` by ``actor``: the text to show for it."""
        token, _, choice = data.partition(":")
        pending = self._pending.get(token)
        if pending is None or pending.answer.done() or pending.key != key:
            return EXPIRED
        if not self._access.allows(actor):
            return "Only people allowed to use this bot here may answer."
        if choice not in (APPROVE, DENY):
            return EXPIRED
        pending.answer.set_result(choice == APPROVE)
        who = actor.display_name or actor.user_id
        return f"Approved by {who}." if choice == APPROVE else f"Denied by {who}."
