"""Summarizers: the interface, and the extractive one that needs no model.

The extractive summarizer is the floor: it always works, offline, and keeps what
a later turn is most likely to need verbatim (names, numbers, identifiers, open
questions). Model-backed summarizers live in agents/ and fall back to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from memory.tokens import TokenCounter
from memory.types import Role


@dataclass(frozen=True, slots=True)
class SummaryFile:
    """A file (an image, a PDF) a summarized message carried, as memory hands it to the
    summarizer for that one summary: its name, media type and base64 data."""

    name: str
    media_type: str
    data: str = field(repr=False)  # base64; read from memory for this request only


@dataclass(frozen=True, slots=True)
class SummaryInput:
    """One message to summarize. ``text`` names each file the message carried (e.g.
    "[image: whiteboard.jpg, 640x480]"); ``files`` are those files themselves, for a
    summarizer that can look at them, within what one summary request may carry."""

    seq: int
    role: Role
    text: str
    author: str | None = None
    files: tuple[SummaryFile, ...] = ()


@dataclass(frozen=True, slots=True)
class SummaryText:
    text: str
    summarizer: str
    fallback: bool = False


class Summarizer(Protocol):
    """Writes rolling summaries; may be slow, runs off the reply path."""

    name: str
    # Whether ``summarize`` looks at a message's files: memory reads and encodes them
    # (up to 8 MB) for a summary only then. It may turn False (a model found text-only).
    reads_files: bool

    async def summarize(self, messages: Sequence[SummaryInput], max_tokens: int) -> SummaryText:
        """Summarize consecutive messages in at most ``max_tokens`` tokens.

        A message's ``files`` are shown to the summarizer this once: the summary should
        say briefly what each shows or contains, for no later context or summary sends
        them again. A summarizer that cannot read files uses the text, which names them.
        """
        ...

    async def merge(self, summaries: Sequence[str], max_tokens: int) -> SummaryText:
        """Merge stacked summaries (oldest first) into one: from their text alone."""
        ...


_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
_NUMBER = re.compile(r"(?<![\w.])[-+]?\$?\d[\d,.:/%-]*\b")
_IDENTIFIER = re.compile(
    r"https?://\S+|[\w.+-]+@[\w-]+\.[\w.]+|#\d+|`[^`]+`|"
    r"\b[A-Za-z_][\w-]*(?:[./][\w-]+)+\b|\b[a-z]+(?:_[a-z0-9]+)+\b|"
    r"\b[a-z]+[A-Z][A-Za-z0-9]*\b|\b[A-Z]{2,}[0-9A-Z_-]*\b|\b[A-Za-z]+\d+[A-Za-z0-9]*\b"
)
_NAME = re.compile(r"(?<![.!?]\s)(?<!^)\b[A-Z][a-z]{2,}(?:\s[A-Z][a-z]+)*\b")
_STOP = {"The", "This", "That", "What", "When", "Where", "Which", "There", "Then", "And", "But"}


def _facts(text: str) -> list[str]:
    found = _IDENTIFIER.findall(text) + _NUMBER.findall(text)
    names = [n for n in _NAME.findall(text) if n.split()[0] not in _STOP]
    return found + names


class ExtractiveSummarizer:
    """Picks the most informative sentences, in order, within the token bound. It reads
    no files: a message's text names them, and that is what it keeps."""

    name = "extractive"
    reads_files = False

    def __init__(self, tokens: TokenCounter) -> None:
        self._tokens = tokens

    async def summarize(self, messages: Sequence[SummaryInput], max_tokens: int) -> SummaryText:
        if not messages:
            return SummaryText("", self.name)
        participants = sorted({m.author for m in messages if m.author})
        answered_after: set[int] = set()
        seen_reply = False
        for index in range(len(messages) - 1, -1, -1):
            if messages[index].role is Role.ASSISTANT:
                seen_reply = True
            elif seen_reply:
                answered_after.add(index)
        points: list[tuple[float, int, str]] = []
        questions: list[str] = []
        facts: dict[str, None] = {}
        order = 0
        for index, message in enumerate(messages):
            who = message.author or message.role.value
            for sentence in _SENTENCE.split(message.text.strip()):
                sentence = " ".join(sentence.split())
                if len(sentence) < 3:
                    continue
                found = _facts(sentence)
                for fact in found:
                    facts.setdefault(fact.strip("`"), None)
                open_question = sentence.endswith("?") and message.role is Role.USER
                if open_question and index not in answered_after:
                    questions.append(f"{who}: {sentence}")
                    continue
                score = 1.0 + 2.0 * len(found) + (0.5 if message.role is Role.USER else 0.0)
                score /= 1.0 + len(sentence) / 400
                points.append((score, order, f"{who}: {sentence}"))
                order += 1
        first, last = messages[0].seq, messages[-1].seq
        header = f"Summary of messages {first}-{last} (extractive; no model was used)."
        lines = [header]
        if participants:
            lines.append("Participants: " + ", ".join(participants))
        budget = max_tokens - self._tokens.count("\n".join(lines)) - 8
        fact_line = ""
        if facts:
            fact_line = "Kept verbatim: " + "; ".join(list(facts)[:60])
            fact_line = self.fit(fact_line, budget // 3)
            budget -= self._tokens.count(fact_line)
        question_lines = [self.fit("- " + q, 80) for q in questions[-5:]]
        budget -= sum(self._tokens.count(q) for q in question_lines) + 4
        chosen: list[tuple[int, str]] = []
        for _score, position, text in sorted(points, key=lambda p: (-p[0], p[1])):
            line = self.fit("- " + text, 120)
            cost = self._tokens.count(line) + 1
            if cost > budget:
                continue
            budget -= cost
            chosen.append((position, line))
        if chosen:
            lines.append("Key points:")
            lines.extend(line for _, line in sorted(chosen))
        if fact_line:
            lines.append(fact_line)
        if question_lines:
            lines.append("Open questions:")
            lines.extend(question_lines)
        return SummaryText(self.fit("\n".join(lines), max_tokens), self.name)

    async def merge(self, summaries: Sequence[str], max_tokens: int) -> SummaryText:
        inputs = [SummaryInput(i + 1, Role.SYSTEM, s) for i, s in enumerate(summaries) if s]
        merged = await self.summarize(inputs, max_tokens)
        text = merged.text.replace("Summary of messages", "Merged summaries", 1)
        return SummaryText(self.fit(text, max_tokens), self.name)

    def fit(self, text: str, max_tokens: int) -> str:
        """Cut ``text`` to at most ``max_tokens`` tokens, on a word boundary."""
        if max_tokens <= 0:
            return ""
        if self._tokens.count(text) <= max_tokens:
            return text
        low, high = 0, len(text)
        while low < high:
            middle = (low + high + 1) // 2
            if self._tokens.count(text[:middle] + " ...") <= max_tokens:
                low = middle
            else:
                high = middle - 1
        cut = text[:low]
        if " " in cut:
            cut = cut[: cut.rfind(" ")]
        return cut + " ..."
