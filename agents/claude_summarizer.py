"""Rolling summaries written by a small Claude model, behind a circuit breaker.

When the call fails, the manager falls back to the extractive summarizer and flags
the summary; ``upgrade`` later rewrites flagged summaries with Claude. The breaker
stops a failing API from being called (and failing) for every fold: after
``breaker_failures`` failures in a row it opens for ``breaker_reset_s`` seconds.

Files: memory hands over the images and PDFs of the messages being summarized (see
memory.summarizing); they go as the same image and document blocks a turn sends
(agents.claude.file_block), each just before its message's line, and the summary is
asked to say what each one shows. A model in ``claude.text_only_models``, or one the
API answers 400 about files, gets the transcript alone, which names each file; so
does a request with files the API finds too large (413).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import anthropic
from anthropic.types import MessageParam

from agents.claude import Block, about_the_model, file_block, files_refused
from agents.settings import ClaudeSettings
from memory.summarizer import SummaryInput, SummaryText

log = logging.getLogger(__name__)

INSTRUCTIONS = """You maintain the memory of a chat conversation. Write a summary that \
lets the conversation continue without the original messages. Use these headings:
Goal: what the participants are trying to do.
Facts: names, numbers, identifiers, dates, file names and links, copied word for word.
Decisions: what was agreed or done.
Open questions: what is still unanswered or pending.
Be terse: short bullet points, no preamble, within {limit} tokens."""

FILES = """Images and PDFs the participants sent are shown just before the line of \
the message that carried them. They will not be shown again: under Facts, say briefly \
what each one shows or contains, by its file name."""


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
        # Whether the model reads files: configured, or learned from a 400 about files.
        self.reads_files = self._model not in settings.text_only_models

    @property
    def available(self) -> bool:
        return not self.breaker.open

    async def _ask(
        self, content: str | list[Block], max_tokens: int, plain: str | None = None
    ) -> str:
        """The model's summary of ``content``; ``plain`` is the same request in text
        alone, sent at once if the API refuses the files of ``content``."""
        self.breaker.check()
        message: MessageParam = {"role": "user", "content": content}
        try:
            try:
                reply = await self._client.messages.create(
                    model=self._model,
                    max_tokens=max_tokens,
                    system=INSTRUCTIONS.format(limit=max_tokens),
                    messages=[message],
                    timeout=self._timeout,
                )
            except anthropic.APIStatusError as error:
                reason = files_refused(error) if plain is not None else None
                if plain is not None and reason is None and error.status_code == 413:
                    reason = "the files made the request too large"
                if plain is None or reason is None:
                    raise
                if about_the_model(reason):
                    self.reads_files = False
                log.warning("the summarizer refused files (%s): summarizing by name", reason)
                reply = await self._client.messages.create(
                    model=self._model,
                    max_tokens=max_tokens,
                    system=INSTRUCTIONS.format(limit=max_tokens),
                    messages=[{"role": "user", "content": plain}],
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
        first, last = messages[0].seq, messages[-1].seq
        heading = f"Summarize messages {first}-{last} of the conversation:"
        lines = [_line(m) for m in messages]
        plain = f"{heading}\n\n" + "\n".join(lines)
        content = _with_files(heading, messages, lines) if self.reads_files else None
        if content is None:
            text = await self._ask(plain, max_tokens)
        else:
            text = await self._ask(content, max_tokens, plain)
        return SummaryText(text, f"claude:{self._model}")

    async def merge(self, summaries: Sequence[str], max_tokens: int) -> SummaryText:
        joined = "\n\n---\n\n".join(summaries)
        text = await self._ask(
            "Merge these consecutive summaries (oldest first) into one, keeping every "
            f"identifier and number that still matters:\n\n{joined}",
            max_tokens,
        )
        return SummaryText(text, f"claude:{self._model}")


def _line(message: SummaryInput) -> str:
    return f"[{message.seq}] {message.author or message.role.value}: {message.text}"


def _with_files(
    heading: str, messages: Sequence[SummaryInput], lines: Sequence[str]
) -> list[Block] | None:
    """The transcript as blocks, each message's files just before its line; None when
    no message carries a file the API can read."""
    blocks: list[Block] = []
    pending = [f"{heading}\n\n{FILES}\n"]
    shown = False
    for message, line in zip(messages, lines, strict=True):
        files = [(f.name, file_block(f.media_type, f.data)) for f in message.files]
        readable = [(name, block) for name, block in files if block is not None]
        if readable:
            shown = True
            blocks.append({"type": "text", "text": "\n".join(pending)})
            pending = []
            for name, block in readable:
                blocks.append({"type": "text", "text": f"File {name} (message {message.seq}):"})
                blocks.append(block)
        pending.append(line)
    if not shown:
        return None
    blocks.append({"type": "text", "text": "\n".join(pending)})
    return blocks
