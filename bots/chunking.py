"""Split a long Markdown reply into messages that fit a chat platform's limit.

Telegram takes 4,096 UTF-16 code units per message (after formatting), Discord 2,000
characters. Cutting at the limit breaks words, code blocks and formatting, so a reply is
cut where a reader would cut it: between paragraphs, else between lines, else between
words, and only as a last resort inside a word. A fenced code block is never cut unless
it alone is longer than the limit; then every piece is closed with a fence and the next
one reopens it with the same info string (```py), so each message renders on its own
and no formatting is ever left open across a cut.

The splitter works on the Markdown source, in time linear in its length (it runs on the
event loop, on every streamed draft). Rendering Markdown to a platform's markup mostly
removes characters from what the reader sees (markers, link targets), and a renderer
never makes a chunk that fits the limit longer than the limit (bots.telegram_format), so
a chunk whose source fits also fits once rendered, and also fits when it is sent as
plain text because the platform rejected the rendered form.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

Measure = Callable[[str], int]
"""Length of a text in the platform's unit; must be additive, m(a + b) == m(a) + m(b),
and at least one per character."""

TELEGRAM_LIMIT = 4096
DISCORD_LIMIT = 2000

# A fence opens with 3+ backticks or tildes, indented by at most 3 spaces.
_FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>[^`]*)$")


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit of Telegram's limits (a lone surrogate,
    which Python strings may hold, counts as one)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def fence_opener(line: str) -> str | None:
    """The fence characters if ``line`` opens a fenced code block, else None."""
    match = _FENCE.match(line)
    if match is None:
        return None
    fence = match.group("fence")
    if fence[0] == "`" and "`" in match.group("info"):
        return None
    return fence


def closes_fence(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened by ``fence`` (same char, at least as long)."""
    stripped = line.strip()
    return (
        len(line) - len(line.lstrip(" ")) <= 3
        and len(stripped) >= len(fence)
        and set(stripped) == {fence[0]}
    )


@dataclass(slots=True)
class _Block:
    """A paragraph, or a fenced code block with its fence lines."""

    lines: list[str]
    sep: str  # what separated it from the previous block ("\n", "\n\n", ...)
    fence: str | None = None  # the fence characters of a code block
    closed: bool = True  # a code block had its closing fence

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def unclosed_fence(text: str) -> str | None:
    """The fence of a code block ``text`` leaves open at its end (a reply still
    streaming, or cut off), else None."""
    blocks = _blocks(text)
    last = blocks[-1] if blocks else None
    return last.fence if last is not None and not last.closed else None


def _blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    blank = 0
    current: _Block | None = None
    for line in text.split("\n"):
        if current is not None and current.fence is not None and not current.closed:
            current.lines.append(line)
            if len(current.lines) > 1 and closes_fence(line, current.fence):
                current.closed = True
                current = None
            continue
        fence = fence_opener(line)
        if fence is not None:
            current = _Block([line], "\n" * (blank + 1), fence, closed=False)
            blocks.append(current)
            blank = 0
            continue
        if not line.strip():
            blank += 1
            current = None
            continue
        if current is None:
            current = _Block([line], "\n" * (blank + 1))
            blocks.append(current)
        else:
            current.lines.append(line)
        blank = 0
    return blocks


def _hard_cut(text: str, limit: int, measure: Measure) -> Iterator[str]:
    """Pieces of at most ``limit``; used only for a word longer than a whole message."""
    start = 0
    while start < len(text):
        end = start + _fitting(text[start : start + limit], limit, measure)
        yield text[start:end]
        start = end


def _fitting(window: str, limit: int, measure: Measure) -> int:
    """How many characters from the start of ``window`` fit in ``limit`` (at least one).

    No character measures less than one unit, so a piece never has more than ``limit``
    characters and ``window`` holds the longest one. Binary lifting finds its end while
    measuring at most twice the window in all: the hard cut stays linear in the text.
    """
    if measure(window) <= limit:
        return len(window)
    count = size = 0
    step = 1 << (len(window).bit_length() - 1)
    while step:
        if count + step <= len(window):
            extra = measure(window[count : count + step])
            if size + extra <= limit:
                count += step
                size += extra
        step >>= 1
    return max(count, 1)  # a character longer than the limit still goes, alone


def _pack(units: list[str], joiner: str, limit: int, measure: Measure) -> list[str]:
    """Greedily join ``units`` with ``joiner`` into pieces of at most ``limit``."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    glue = measure(joiner)
    for unit in units:
        length = measure(unit)
        if current and size + glue + length <= limit:
            current.append(unit)
            size += glue + length
            continue
        if current:
            pieces.append(joiner.join(current))
        current, size = [unit], length
    if current:
        pieces.append(joiner.join(current))
    return pieces


def _split_line(line: str, limit: int, measure: Measure) -> list[str]:
    """A line longer than ``limit``: between words, else inside a word."""
    words: list[str] = []
    for word in line.split(" "):
        if measure(word) <= limit:
            words.append(word)
        else:
            words.extend(_hard_cut(word, limit, measure))
    return [piece for piece in _pack(words, " ", limit, measure) if piece.strip()]


def _split_lines(lines: list[str], limit: int, measure: Measure) -> list[str]:
    units: list[str] = []
    for line in lines:
        if measure(line) <= limit:
            units.append(line)
        else:
            units.extend(_split_line(line, limit, measure))
    return _pack(units, "\n", limit, measure)


def _split_code(block: _Block, limit: int, measure: Measure) -> list[str]:
    """A code block longer than ``limit``: closed and reopened at line boundaries."""
    assert block.fence is not None
    opener, closer = block.lines[0], block.fence
    body = block.lines[1:-1] if block.closed and len(block.lines) > 1 else block.lines[1:]
    frame = measure(opener) + measure(closer) + 2 * measure("\n")
    room = limit - frame
    if room < max(1, limit // 4):  # a tiny limit: a frame would not leave room for code
        return _split_lines(block.lines, limit, measure)
    units: list[str] = []
    for line in body:
        units.extend([line] if measure(line) <= room else _hard_cut(line, room, measure))
    return [f"{opener}\n{piece}\n{closer}" for piece in _pack(units, "\n", room, measure)]


def split_markdown(text: str, limit: int, measure: Measure = len) -> list[str]:
    """Cut ``text`` into chunks of at most ``limit`` (by ``measure``); none is blank.

    A text that fits is returned whole. Otherwise blocks (paragraphs and code blocks)
    are packed greedily with their original separators; a block longer than the limit
    is cut between lines, a line between words, a code block into framed pieces.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    text = text.replace("\r\n", "\n").strip("\n")
    if not text.strip():
        return []
    if measure(text) <= limit:
        return [text]
    chunks: list[str] = []
    current: list[str] = []  # the pieces of the chunk being filled, and their separators
    size = 0
    for block in _blocks(text):
        whole = block.text
        if measure(whole) <= limit:
            pieces = [whole]
        elif block.fence is not None:
            pieces = _split_code(block, limit, measure)
        else:
            pieces = _split_lines(block.lines, limit, measure)
        for index, piece in enumerate(pieces):
            sep = block.sep if index == 0 else "\n"
            length = measure(piece)
            if current and size + measure(sep) + length <= limit:
                current += (sep, piece)
                size += measure(sep) + length
            else:
                _flush(current, chunks)
                current, size = [piece], length
    _flush(current, chunks)
    return chunks


def _flush(pieces: list[str], chunks: list[str]) -> None:
    chunk = "".join(pieces)
    if chunk.strip():
        chunks.append(chunk)
