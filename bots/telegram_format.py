"""Claude's Markdown as Telegram HTML.

Telegram renders a small HTML subset (b, i, s, code, pre, a, blockquote) and rejects a
whole message whose markup it cannot parse. Claude writes CommonMark, which Telegram's
own "Markdown" modes misread (``snake_case``, ``2 * 3 * 4``, unbalanced asterisks). So
the reply is parsed here by markdown-it-py, a CommonMark parser that runs in linear time
on any input (a backtracking scanner took seconds on a few kilobytes of unclosed ``*``
or ``[``, on the event loop), and its tokens are rendered as Telegram HTML:

- text is escaped (``& < >``; ``"`` too inside attributes) and every tag is closed where
  it opens, so Telegram always accepts the markup; raw HTML in the Markdown is text;
- emphasis, strong and ``~~strikethrough~~`` map to i, b and s; inline code to code
  (plain inside a link, which may not contain code); links with a scheme Telegram opens
  (http, https, tg, mailto) to ``a``; any other link, an image, or a link inside a link
  becomes ``label (url)``, so nothing is lost; autolinks stay bare (Telegram links them);
- headings become bold lines; list items ``• `` or their number, nested items indented;
  quotes one blockquote (Telegram cannot nest them); code blocks
  ``<pre><code class="language-x">``; tables a ``<pre>`` of aligned columns, or of their
  source text when the padding does not fit or the parser would drop cells; a rule a line;
- blocks are separated by a blank line where the source had one, else by a newline.

``bots.chunking`` splits a reply by its source length and Telegram counts its limit on
the rendered text, so what the reader sees is never longer than the limit or the source,
whichever is longer. Markup mostly removes characters, and a table's padding only
spends what that leaves. Whatever else adds some (numbers counted up past the ones
written, indentation under tab-indented items) is checked at the end: a rendering that
would be too long, or blank, falls back to the escaped source text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.common.utils import unescapeAll
from markdown_it.token import Token

from bots.chunking import TELEGRAM_LIMIT, utf16_len

# CommonMark, plus the two GFM extensions Claude uses; raw HTML is not markup but text.
_PARSER = MarkdownIt("commonmark", {"html": False}).enable(["strikethrough", "table"])
# The parser ignores what is nested deeper than this (a container's content is dropped).
_MAX_NESTING = int(_PARSER.options["maxNesting"])

_LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")
_BLANK = re.compile(r"[ \t>]*")  # a blank line, inside quotes or not
_MARKERS = re.compile(r"^(?:[ \t>]|[-+*](?=[ \t]|$)|[0-9]{1,9}[.)](?=[ \t]|$))*")
_TAG = re.compile(r"<[^>]*>")
_CELL_PIPE = re.compile(r"(?<!\\)\|")  # GFM: a pipe splits cells unless escaped
_INLINE_TAGS = {"em_open": "i", "strong_open": "b", "s_open": "s"}


def escape(text: str) -> str:
    """Escape text for Telegram HTML (the three characters its parser treats specially)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_attribute(text: str) -> str:
    return escape(text).replace('"', "&quot;")


def markdown_to_html(text: str, *, limit: int = TELEGRAM_LIMIT) -> str:
    """Render Markdown as Telegram HTML; always well-formed, whatever the input.

    What the reader sees is at most ``limit`` UTF-16 units long, or the length of
    ``text`` if that is longer: a chunk that ``bots.chunking`` cut to fit the limit
    still fits once rendered.
    """
    # The parser's own normalisation, done first so that its line numbers index ``lines``.
    source = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    budget = max(utf16_len(source), limit)
    html = _Renderer(source.split("\n"), budget).render(_PARSER.parse(source))
    shown = visible_text(html)
    if utf16_len(shown) > budget or (not shown.strip() and source.strip()):
        return escape(source)  # too long, or nothing to show (Telegram refuses blank text)
    return html


def visible_text(html: str) -> str:
    """What Telegram shows of our HTML (and counts against its limit): the text without
    tags. Only the three escapes ``escape`` writes occur in text."""
    return _TAG.sub("", html).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


@dataclass(slots=True)
class _Table:
    """A table's place in the output, its source text and, if it can be, its aligned form."""

    index: int
    source: str
    aligned: str | None


@dataclass(slots=True)
class _Open:
    """An inline tag or link opened in the output and not yet closed."""

    close: str  # what closes it: "</b>", "</a>", or "" for a link shown as text
    index: int  # its opening piece in the output
    ink: int  # the ink count when it opened
    url: str = ""  # a link's target, shown when the label is empty or the link is text


class _Renderer:
    """One pass over the parser's tokens, appending HTML pieces to ``out``.

    Block structure is kept as state rather than recursion: the open lists (for markers
    and indentation), the depth of quotes (only the outermost is a tag) and whether the
    next block continues the current line (the first block of a list item or a quote).
    ``ink`` counts pieces of visible, non-blank text, so that a tag around nothing
    (``<b></b>``, an empty quote) can be taken back out.
    """

    def __init__(self, lines: list[str], budget: int) -> None:
        self.lines = lines
        self.budget = budget
        self.out: list[str] = []
        self.ink = 0
        self.lists: list[int | None] = []  # one per open list: its next number, if ordered
        self.quote_depth = 0
        self.quote: _Open | None = None
        self.fresh = True  # the next block continues the current line
        self.marker = False  # ... right after a list marker, so it needs a space first
        self.tables: list[_Table] = []
        self.links = 0  # open <a> tags: a link may not contain another
        self.heading: _Open | None = None

    def render(self, tokens: list[Token]) -> str:
        i = 0
        while i < len(tokens):
            token = tokens[i]
            kind = token.type
            if kind == "inline":
                self.inline(token.children or [])
            elif kind == "paragraph_open":
                self.start_block(token, indent=True)
            elif kind == "heading_open":
                self.start_block(token, indent=True)
                self.heading = self.open_tag("b")
            elif kind == "heading_close" and self.heading is not None:
                self.finish(self.heading)
            elif kind in ("fence", "code_block"):
                self.start_block(token, indent=False)
                self.code_block(token)
            elif kind == "hr":
                self.start_block(token, indent=True)
                self.text("———")
            elif kind == "bullet_list_open":
                self.lists.append(None)
            elif kind == "ordered_list_open":
                self.lists.append(int(token.attrGet("start") or 1))
            elif kind in ("bullet_list_close", "ordered_list_close"):
                self.lists.pop()
            elif kind == "list_item_open":
                self.list_item(token)
                self.dropped(token)
            elif kind == "blockquote_open":
                self.open_quote(token)
                self.dropped(token)
            elif kind == "blockquote_close":
                self.close_quote()
            elif kind == "list_item_close":
                self.fresh = self.marker = False  # an empty item: the next one is a new line
            elif kind == "table_open":
                i = self.table(tokens, i)
            i += 1
        self.widen_tables()
        return "".join(self.out)

    # -- blocks --------------------------------------------------------------------------

    def start_block(self, token: Token, *, indent: bool) -> None:
        """Separate a block from what came before, as the source did."""
        if self.fresh:
            if self.marker:
                self.out.append(" ")
            self.fresh = self.marker = False
            return
        line = token.map[0] if token.map else 0
        blank = line > 0 and _BLANK.fullmatch(self.lines[line - 1]) is not None
        self.out.append("\n\n" if blank else "\n")
        if indent and self.lists:
            self.out.append("  " * len(self.lists))

    def list_item(self, token: Token) -> None:
        fresh = self.fresh
        self.start_block(token, indent=False)
        if not fresh and len(self.lists) > 1:
            self.out.append("  " * (len(self.lists) - 1))
        number = self.lists[-1]
        if number is None:
            self.text("•")
        else:
            self.text(f"{number}{token.markup}")
            self.lists[-1] = number + 1
        self.fresh = self.marker = True

    def open_quote(self, token: Token) -> None:
        self.quote_depth += 1
        if self.quote_depth == 1:  # Telegram cannot nest quotes: only the outer one is a tag
            self.start_block(token, indent=False)
            self.quote = _Open("</blockquote>", len(self.out), self.ink)
            self.out.append("<blockquote>")
            self.fresh = True

    def close_quote(self) -> None:
        self.quote_depth -= 1
        if self.quote_depth == 0 and self.quote is not None:
            self.finish(self.quote)
            # An empty quote is taken out; its separator already stands for it.
            self.fresh = self.out[self.quote.index] == ""
            self.quote = None

    def dropped(self, token: Token) -> None:
        """Content nested deeper than the parser follows is dropped from its tokens; show
        the container's source lines instead, so nothing the model wrote is lost."""
        if token.level + 1 >= _MAX_NESTING and token.map:
            start, end = token.map
            first, *rest = self.lines[start:end]
            # The first line's prefix is the markers of the containers just rendered.
            lines = [_MARKERS.sub("", first), *(line.lstrip(" \t>") for line in rest)]
            self.start_block(token, indent=False)
            self.text("\n".join(lines).strip())

    def code_block(self, token: Token) -> None:
        code = token.content.removesuffix("\n")
        if not code.strip():
            return  # an empty <pre> is no entity at all
        info = unescapeAll(token.info).strip()
        language = info.split()[0] if info else ""
        if _LANGUAGE.fullmatch(language):
            self.out.append(f'<pre><code class="language-{language}">{escape(code)}</code></pre>')
        else:
            self.out.append(f"<pre>{escape(code)}</pre>")
        self.ink += 1

    def table(self, tokens: list[Token], i: int) -> int:
        """Render the table opening at ``i``; the index of its ``table_close``."""
        opening = tokens[i]
        rows: list[list[str]] = []
        row_lines: list[int] = []
        while tokens[i].type != "table_close":
            token = tokens[i]
            if token.type == "tr_open":
                rows.append([])
                row_lines.append(token.map[0] if token.map else -1)
            elif token.type == "inline":
                rows[-1].append(_plain(token.children or []))
            i += 1
        start, end = opening.map if opening.map else (row_lines[0], row_lines[-1] + 1)
        # Only container prefixes (quote markers, indentation) precede a row: a line
        # starting with ">" would have ended the table as a quote.
        source = "\n".join(line.lstrip(" \t>").rstrip() for line in self.lines[start:end])
        # Cells beyond the header's count are dropped by the parser: then show the source.
        columns = len(rows[0])
        complete = all(
            _source_cells(self.lines[line]) <= columns for line in row_lines[1:] if line >= 0
        )
        self.start_block(opening, indent=False)
        self.tables.append(_Table(len(self.out), source, _align(rows) if complete else None))
        self.out.append(f"<pre>{escape(source)}</pre>")
        self.ink += 1
        return i

    def widen_tables(self) -> None:
        """Align tables while what the rest of the message saved pays for their padding."""
        if not self.tables:
            return
        spare = self.budget - utf16_len(visible_text("".join(self.out)))
        for table in self.tables:
            if table.aligned is None:
                continue
            cost = utf16_len(table.aligned) - utf16_len(table.source)
            if cost <= spare:
                self.out[table.index] = f"<pre>{escape(table.aligned)}</pre>"
                spare -= cost

    # -- inline --------------------------------------------------------------------------

    def inline(self, tokens: list[Token]) -> None:
        opened: list[_Open] = []
        for token in tokens:
            kind = token.type
            if kind == "text":
                self.text(token.content)
            elif kind in ("softbreak", "hardbreak"):
                self.out.append("\n")
            elif kind == "code_inline":
                if token.content.strip() and not self.links:  # a link may not contain code
                    self.out.append(f"<code>{escape(token.content)}</code>")
                    self.ink += 1
                else:
                    self.text(token.content)
            elif kind in _INLINE_TAGS:
                opened.append(self.open_tag(_INLINE_TAGS[kind]))
            elif kind == "link_open":
                opened.append(self.open_link(token))
            elif kind.endswith("_close") and opened:  # em, strong, s, link
                self.finish(opened.pop())
            elif kind == "image":  # Telegram shows no inline images: a link to it
                link = self.open_link(token)
                self.inline(token.children or [])
                self.finish(link)
            else:  # a construct this renderer does not know: its text
                self.text(token.content)
        while opened:  # the parser balances its tokens; this only keeps the HTML so
            self.finish(opened.pop())

    def open_tag(self, name: str) -> _Open:
        tag = _Open(f"</{name}>", len(self.out), self.ink)
        self.out.append(f"<{name}>")
        return tag

    def open_link(self, token: Token) -> _Open:
        if token.markup == "autolink":  # <https://...>: its text is its URL, linked by Telegram
            return _Open("", len(self.out), self.ink)
        url = str(token.attrGet("src" if token.type == "image" else "href") or "")
        shown = _PARSER.normalizeLinkText(url)
        if not url.lower().startswith(_LINK_SCHEMES) or self.links:
            return _Open("", len(self.out), self.ink, shown)  # shown as "label (url)"
        self.links += 1
        self.out.append(f'<a href="{escape_attribute(url)}">')
        return _Open("</a>", len(self.out) - 1, self.ink, shown)

    def finish(self, tag: _Open) -> None:
        """Close ``tag``: a link without a label shows its URL, a link that is no tag
        shows it after the label, and any other tag around nothing is taken out."""
        empty = self.ink == tag.ink
        if tag.url and (empty or not tag.close):
            self.text(tag.url if empty else f" ({tag.url})")
        elif empty and tag.close:
            self.out[tag.index] = ""
            return
        if tag.close == "</a>":
            self.links -= 1
        self.out.append(tag.close)

    def text(self, text: str) -> None:
        if text:
            self.out.append(escape(text))
            if not text.isspace():
                self.ink += 1


def _plain(tokens: list[Token]) -> str:
    """The text of inline tokens without markup, as a table cell shows it in <pre>."""
    parts: list[str] = []
    urls: list[str] = []
    for token in tokens:
        kind = token.type
        if kind in ("text", "code_inline"):
            parts.append(token.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append(" ")
        elif kind == "link_open":
            url = str(token.attrGet("href") or "")
            urls.append("" if token.markup == "autolink" else _PARSER.normalizeLinkText(url))
        elif kind == "link_close" and urls:
            url = urls.pop()
            if url:
                parts.append(f" ({url})")
        elif kind == "image":
            alt = _plain(token.children or [])
            src = _PARSER.normalizeLinkText(str(token.attrGet("src") or ""))
            parts.append(f"{alt} ({src})" if alt.strip() else src)
    return "".join(parts)


def _source_cells(line: str) -> int:
    """How many cells a table row's source line has (GFM: enclosing pipes are optional)."""
    cells = _CELL_PIPE.split(line.lstrip(" \t>").strip())
    if cells and cells[0] == "":
        cells.pop(0)
    if cells and cells[-1] == "":
        cells.pop()
    return len(cells)


def _align(rows: list[list[str]]) -> str:
    """Rows as columns padded to their widest cell, the header ruled off."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [
        " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)
