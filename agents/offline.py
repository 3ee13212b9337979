"""The offline agent: answers without a model, so the whole memory path runs.

With no ANTHROPIC_API_KEY a newcomer still sees Palaver work: messages are stored
and counted, summaries appear at 70% of the budget, /reset starts afresh. The reply
is deterministic and says plainly that no model is configured.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from agents.base import AgentEvent, AgentReply, AgentRequest, TextDelta
from memory.types import Role


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


class OfflineAgent:
    name = "offline"

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        context = request.context
        last = next((m for m in reversed(context.messages) if m.role is Role.USER), None)
        heard = " ".join((last.text if last else "").split())
        if len(heard) > 120:
            heard = heard[:117] + "..."
        percent = 100 * context.estimated_tokens / context.budget if context.budget else 0.0
        parts = [
            "No model is configured, so this is an offline reply "
            "(set ANTHROPIC_API_KEY to talk to Claude). ",
            f'You said: "{heard}". ',
            f"Memory holds {_plural(len(context.messages), 'turn')} in context and "
            f"{_plural(len(context.summaries), 'summary', 'summaries')}; the context is about "
            f"{context.estimated_tokens:,} tokens ({percent:.0f}% of the budget).",
        ]
        newest = last is not None and last is context.messages[-1]
        files = len(last.media) + context.media_left_out if last is not None and newest else 0
        if files:
            parts.append(
                f" I can't look at images or PDFs without a model; your "
                f"{'file is' if files == 1 else 'files are'} kept with the conversation."
            )
        for part in parts:
            yield TextDelta(part)
        yield AgentReply("".join(parts), None, self.name)
