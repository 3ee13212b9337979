"""Rolling summaries written by a small Claude model, behind a circuit breaker.

When the call fails, the manager falls back to the extractive summarizer and flags
the summary; ``upgrade`` later rewrites flagged summaries with Claude. The breaker
stops a failing API from being called (and failing) for every fold: after
``breaker_failures`` failures in a row it opens for ``breaker_reset_s`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import anthropic

from agents.settings import ClaudeSettings
from memory.summarizer import SummaryInput, SummaryText

INSTRUCTIONS = """You maintain the memory of a chat conversation. Write a summary that \
lets the conversation continue without the original messages. Use these headings:
Goal: what the participants are trying to do.
Facts: names, numbers, identifiers, dates, file names and links, copied word for word.
Decisions: what was agreed or done.
Open questions: what is still unanswered or pending.
Be terse: short bullet points, no preamble, within {limit} tokens."""


class CircuitOpen(Exception):
    """The summarizer failed repeatedly and is resting; use the fallback."""


class CircuitBreaker:
    def __init__(self, failures: int, reset_after: float) -> None:
        self._limit = failures
        self._reset_after = reset_after
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def open(self) -> bool:
        # After reset_after it is half-open: the next call may try again.
        return (
            self._opened_at is not None and time.monotonic() - self._opened_at < self._reset_after
        )

    def check(self) -> None:
        if self.open:
            raise CircuitOpen("the Claude summarizer is resting after repeated failures")

    def success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def failure(self) -> None:
        self._failures += 1
        if self._failures >= self._limit:
            self._opened_at = time.monotonic()


class ClaudeSummarizer:
    name = "claude"

    def __init__(self, client: anthropic.AsyncAnthropic, settings: ClaudeSettings) -> None:
        self._client = client
        self._model = settings.summarizer_model
        self._timeout = settings.summarizer_timeout_s
        self.breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_reset_s)

    @property
    def available(self) -> bool:
        return not self.breaker.open

    async def _ask(self, content: str, max_tokens: int) -> str:
        self.breaker.check()
        try:
            reply = await self._client.messages.create(
                model=self._model,
                max_tokens=max_tokens,
                system=INSTRUCTIONS.format(limit=max_tokens),
                messages=[{"role": "user", "content": content}],
                timeout=self._timeout,
            )
        except anthropic.APIError:
            self.breaker.failure()
            raise
        text = "".join(b.text for b in reply.content if b.type == "text").strip()
        if not text:
            self.breaker.failure()
            raise ValueError("the summarizer model returned no text")
        self.breaker.success()
        return text

    async def summarize(self, messages: Sequence[SummaryInput], max_tokens: int) -> SummaryText:
        transcript = "\n".join(f"[{m.seq}] {m.author or m.role.value}: {m.text}" for m in messages)
        first, last = messages[0].seq, messages[-1].seq
        text = await self._ask(
            f"Summarize messages {first}-{last} of the conversation:\n\n{transcript}", max_tokens
        )
        return SummaryText(text, f"claude:{self._model}")

    async def merge(self, summaries: Sequence[str], max_tokens: int) -> SummaryText:
        joined = "\n\n---\n\n".join(summaries)
        text = await self._ask(
            "Merge these consecutive summaries (oldest first) into one, keeping every "
            f"identifier and number that still matters:\n\n{joined}",
            max_tokens,
        )
        return SummaryText(text, f"claude:{self._model}")
