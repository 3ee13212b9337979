"""Claude's Markdown as Telegram HTML.

Telegram renders a small HTML subset (b, i, s, code, pre, a, blockquote) and rejects a
whole message whose markup it cannot parse. Claude writes CommonMark, which Telegram's
own "Markdown" modes misread (``snake_case``, ``2 * 3 * 4``, unbalanced asterisks). So
the reply is parsed here by pyromark (pulldown-cmark, the CommonMark pull parser rustdoc
uses, which runs in linear time on any input: at most about 2 ms for a 4,096-character
chunk, where a backtracking scanner took seconds on a few kilobytes of unclosed ``*`` or
``[`` and markdown-it-py up to 90 ms, on the event loop), and its events are rendered as
Telegram HTML in one flat pass:

- text is escaped (``& < >``; ``"`` too inside attributes) and every tag is closed where
  it opens, so Telegram always accepts the markup; raw HTML in the Markdown is text;
- emphasis, strong and ``~~strikethrough~~`` map to i, b and s (a single ``~`` is kept
  as written: "~5 min" is not struck through); inline code to code (plain inside a link,
  which may not contain code); links with a scheme Telegram opens (http, https, tg,
  mailto) to ``a``; any other link, an image, or a link inside a link becomes
  ``label (url)``, so nothing is lost; autolinks stay bare (Telegram links them);
- headings become bold lines; list items ``• `` or their number, nested items indented;
  quotes one blockquote (Telegram cannot nest them); code blocks
  ``<pre><code class="language-x">``; tables a ``<pre>`` of aligned columns, or of their
  source text when the padding does not fit or the parser would drop cells; a rule a line;
- blocks are separated by a blank line where the source had one, else by a newline.

The renderer keeps block structure as counters and stacks, never as recursion, and does
constant work per event (apart from text it copies once), so input nested thousands of
levels deep costs what its length costs.

``bots.chunking`` splits a reply by its source length and Telegram counts its limit on
the rendered text, so what the reader sees is never longer than the limit or the source,
whichever is longer. Markup mostly removes characters, and a table's padding only
spends what that leaves. Whatever else adds some (numbers counted up past the ones
written, indentation under tab-indented items) is checked at the end: a rendering that
would be too long, or blank, falls back to the escaped source text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyromark

from bots.chunking import TELEGRAM_LIMIT, utf16_len

# CommonMark, plus the two GFM extensions Claude uses. Subscript is on only so that a
# single "~" pair is not strikethrough (GFM's reading): it is rendered as written.
_PARSER = pyromark.Markdown(
    options=pyromark.Options.ENABLE_STRIKETHROUGH
    | pyromark.Options.ENABLE_TABLES
    | pyromark.Options.ENABLE_SUBSCRIPT
)

_LINK_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")
_BLANK = re.compile(rb"[ \t>]*")  # a blank line, inside quotes or not
_ORDERED_MARKER = re.compile(rb"[ \t]*[0-9]{1,9}([.)])")  # an item's range starts indented
_TAG = re.compile(r"<[^>]*>")
_CELL_PIPE = re.compile(r"(?<!\\)\|")  # GFM: a pipe splits cells unless escaped
# ASCII that may not stand in a URL as written; anything else (Unicode included, which
# Telegram takes) is left for Telegram to read.
_URL_UNSAFE = re.compile(r'[\x00-\x20"<>\\^`{|}\x7f]')
_INLINE_TAGS = {"Emphasis": "i", "Strong": "b", "Strikethrough": "s"}
_INLINE = ("Emphasis", "Strong", "Strikethrough", "Subscript", "Link", "Image")


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
    # One line ending, so that the source's lines are the parser's; NUL as CommonMark has it.
    source = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    try:
        data = source.encode()
    except UnicodeEncodeError:  # lone surrogates, which UTF-8 (and the parser) cannot hold
        source = source.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        data = source.encode()
    budget = max(utf16_len(source), limit)
    html = _Renderer(data, budget).render(_PARSER.events_with_range(source, merge_text=True))
    shown = visible_text(html)
    if utf16_len(shown) > budget or (not shown.strip() and source.strip()):
        return escape(source)  # too long, or nothing to show (Telegram refuses blank text)
    return html


def visible_text(html: str) -> str:
    """What Telegram shows of our HTML (and counts against its limit): the text without
    tags. Only the three escapes ``escape`` writes occur in text."""
    return _TAG.sub("", html).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _href(url: str) -> str:
    """``url`` with spaces, quotes and the like percent-encoded, as a browser sends it."""
    return _URL_UNSAFE.sub(lambda match: f"%{ord(match[0]):02X}", url)


@dataclass(slots=True)
class _Open:
    """An inline tag or link opened in the output and not yet closed."""

    close: str  # what closes it: "</b>", "</a>", or "" for a link shown as text
    index: int  # its opening piece in the output
    ink: int  # the ink count when it opened
    url: str = ""  # a link's target, shown when the label is empty or the link is text


@dataclass(slots=True)
class _Table:
    """A table being read, then its place in the output, source text and aligned form."""

    source: str
    rows: list[list[str]] = field(default_factory=list)
    cell: list[str] = field(default_factory=list)  # the text of the cell being read
    links: list[tuple[str, int]] = field(default_factory=list)  # open links: (url, ink)
    ink: int = 0  # pieces of non-blank text in the current cell
    columns: int = 0  # the header's; a row whose source has more cells loses some
    complete: bool = True
    index: int = 0
    aligned: str | None = None


class _Renderer:
    """One pass over the parser's events, appending HTML pieces to ``out``.

    Block structure is kept as state rather than recursion: the open lists (for markers
    and indentation), the depth of quotes (only the outermost is a tag), whether the
    next block continues the current line (the first block of a list item or a quote),
    and whether inline content goes straight to the output (``in_block``: inside a
    paragraph or heading; a tight list item's text comes without a paragraph, a table
    cell's is gathered as plain text). ``ink`` counts pieces of visible, non-blank text,
    so that a tag around nothing (``<b></b>``, an empty quote) can be taken back out.
    Every event costs a few dictionary look-ups and appends: a chunk of 4,096 tiny
    blocks is about as many events as it has characters.
    """

    def __init__(self, data: bytes, budget: int) -> None:
        self.data = data  # the source as UTF-8: the parser's ranges are byte offsets
        self.scanned = 0  # how far the source has been searched for line ends
        self.blank = False  # ... and whether the line before the last one found is blank
        self.budget = budget
        self.out: list[str] = []
        self.ink = 0
        self.lists: list[int | None] = []  # one per open list: its next number, if ordered
        self.quote_depth = 0
        self.quote: _Open | None = None
        self.fresh = True  # the next block continues the current line
        self.marker = False  # ... right after a list marker, so it needs a space first
        self.in_block = False  # inline content goes straight to the output
        self.opened: list[_Open] = []  # inline tags and links, innermost last
        self.heading: _Open | None = None
        self.links = 0  # open <a> tags: a link may not contain another
        self.verbatim: list[str] | None = None  # the text of a code or HTML block being read
        self.language = ""
        self.table: _Table | None = None  # a table being read
        self.tables: list[_Table] = []
        self.starts: dict[str, Callable[[str, Any, Any], None]] = {
            "Paragraph": self.start_paragraph,
            "Heading": self.start_heading,
            "Item": self.start_item,
            "List": self.start_list,
            "BlockQuote": self.start_quote,
            "CodeBlock": self.start_code,
            "HtmlBlock": self.start_raw,
            "Table": self.start_table,
            "TableHead": self.start_row,
            "TableRow": self.start_row,
            "TableCell": self.start_cell,
            **dict.fromkeys(_INLINE, self.start_inline),
        }
        self.ends: dict[str, Callable[[str], None]] = {
            "Paragraph": self.end_paragraph,
            "Heading": self.end_heading,
            "Item": self.end_item,
            "List": self.end_list,
            "BlockQuote": self.end_quote,
            "CodeBlock": self.end_code,
            "HtmlBlock": self.end_raw,
            "Table": self.end_table,
            "TableHead": self.end_head,
            "TableCell": self.end_cell,
            **dict.fromkeys(_INLINE, self.end_inline),
        }

    def render(self, events: Iterable[tuple[Any, Any]]) -> str:
        """Render the parser's ``(event, range)`` pairs; the HTML.

        An event is a bare string (SoftBreak, HardBreak, Rule) or a one-key dict:
        ``{"Text": "x"}``, ``{"Start": "Paragraph"}``, ``{"Start": {"List": 1}}``,
        ``{"End": "Item"}``, ``{"Code": "c"}``, ``{"InlineHtml": "<b>"}``, ...
        """
        out, starts, ends = self.out, self.starts, self.ends
        for event, span in events:
            if type(event) is str:
                if event == "Rule":
                    self.rule(span)
                else:
                    self.line_break(span)
                continue
            (kind,) = event
            value = event[kind]
            if kind == "Text":
                if self.in_block:  # most text: in a paragraph, straight out
                    out.append(escape(value))
                    if value and not value.isspace():
                        self.ink += 1
                elif self.verbatim is not None:
                    self.verbatim.append(value)
                else:
                    self.inline_text(value, span)
            elif kind == "Start":
                if type(value) is str:
                    starts.get(value, _ignore)(value, None, span)
                else:
                    (tag,) = value
                    starts.get(tag, _ignore)(tag, value[tag], span)
            elif kind == "End":
                if type(value) is not str:
                    (value,) = value
                ends.get(value, _ignore_end)(value)
            elif kind == "Code":
                self.inline_code(value, span)
            elif kind == "Html" and self.verbatim is not None:
                self.verbatim.append(value)
            elif type(value) is str:  # InlineHtml, and whatever else carries text
                self.inline_text(value, span)
        self.widen_tables()
        return "".join(out)

    # -- blocks --------------------------------------------------------------------------

    def start_block(self, start: int, *, indent: bool) -> None:
        """Separate a block from what came before, as the source did: by a blank line
        if the line before the block's first line is blank (inside quotes or not).

        Blocks start in source order, so each stretch of the source is searched once:
        for the newline ending the last line before ``start``, and for that line's
        start when it is a new one.
        """
        self.in_block = False
        if self.fresh:
            if self.marker:
                self.out.append(" ")
            self.fresh = self.marker = False
            return
        data = self.data
        line = data.rfind(b"\n", self.scanned if start >= self.scanned else 0, start)
        self.scanned = start
        if line >= 0:
            previous = data.rfind(b"\n", 0, line) + 1
            self.blank = previous == line or _BLANK.fullmatch(data, previous, line) is not None
        self.out.append("\n\n" if self.blank else "\n")
        if indent and self.lists:
            self.out.append("  " * len(self.lists))

    def start_paragraph(self, _tag: str, _argument: None, span: Any) -> None:
        self.start_block(span["start"], indent=True)
        self.in_block = True

    def end_paragraph(self, _tag: str) -> None:
        self.in_block = False

    def start_heading(self, _tag: str, _argument: Any, span: Any) -> None:
        self.start_block(span["start"], indent=True)
        self.heading = self.open_tag("b")
        self.in_block = True

    def end_heading(self, _tag: str) -> None:
        if self.heading is not None:
            self.finish(self.heading)
            self.heading = None
        self.in_block = False

    def rule(self, span: Any) -> None:
        self.start_block(span["start"], indent=True)
        self.text("———")

    def start_list(self, _tag: str, number: int | None, _span: Any) -> None:
        self.in_block = False
        self.lists.append(number)

    def end_list(self, _tag: str) -> None:
        self.lists.pop()

    def start_item(self, _tag: str, _argument: None, span: Any) -> None:
        start = span["start"]
        if self.fresh:  # continues the line: "- - x", or "> - x"
            if self.marker:
                self.out.append(" ")
            self.in_block = False
        else:
            self.start_block(start, indent=False)
            if len(self.lists) > 1:
                self.out.append("  " * (len(self.lists) - 1))
        number = self.lists[-1]
        if number is None:
            self.out.append("•")
        else:  # the delimiter as written: "1." or "1)"
            marker = _ORDERED_MARKER.match(self.data, start)
            self.out.append(f"{number}{marker[1].decode() if marker else '.'}")
            self.lists[-1] = number + 1
        self.ink += 1
        self.fresh = self.marker = True

    def end_item(self, _tag: str) -> None:
        self.in_block = False
        self.fresh = self.marker = False  # an empty item: the next one is a new line

    def start_quote(self, _tag: str, _kind: Any, span: Any) -> None:
        self.in_block = False
        self.quote_depth += 1
        if self.quote_depth == 1:  # Telegram cannot nest quotes: only the outer one is a tag
            self.start_block(span["start"], indent=False)
            self.quote = _Open("</blockquote>", len(self.out), self.ink)
            self.out.append("<blockquote>")
            self.fresh = True

    def end_quote(self, _tag: str) -> None:
        self.quote_depth -= 1
        if self.quote_depth == 0 and self.quote is not None:
            self.finish(self.quote)
            # An empty quote is taken out; its separator already stands for it.
            self.fresh = self.out[self.quote.index] == ""
            self.quote = None

    def start_code(self, _tag: str, kind: Any, span: Any) -> None:
        self.start_block(span["start"], indent=False)
        info = kind.get("Fenced", "") if isinstance(kind, dict) else ""  # else "Indented"
        self.language = info.split()[0] if info.strip() else ""
        self.verbatim = []

    def end_code(self, _tag: str) -> None:
        code = "".join(self.verbatim or ())
        self.verbatim = None
        # Up to its last line that is not blank (an unclosed fence runs on over blank lines).
        end = code.find("\n", len(code.rstrip()))
        code = code if end < 0 else code[:end]
        if not code.strip():
            return  # an empty <pre> is no entity at all
        if _LANGUAGE.fullmatch(self.language):
            self.out.append(
                f'<pre><code class="language-{self.language}">{escape(code)}</code></pre>'
            )
        else:
            self.out.append(f"<pre>{escape(code)}</pre>")
        self.ink += 1

    def start_raw(self, _tag: str, _argument: None, span: Any) -> None:
        """Raw HTML is shown as the text it is (Telegram takes only its own tags)."""
        self.start_block(span["start"], indent=True)
        self.verbatim = []

    def end_raw(self, _tag: str) -> None:
        raw = "".join(self.verbatim or ()).strip()
        self.verbatim = None
        self.text(raw)

    # -- tables --------------------------------------------------------------------------

    def start_table(self, _tag: str, _alignments: Any, span: Any) -> None:
        start = span["start"]
        # Only container prefixes (quote markers, indentation) precede a row: a line
        # starting with ">" would have ended the table as a quote.
        lines = self.data[start : span["end"]].decode().rstrip("\n").split("\n")
        source = "\n".join(line.lstrip(" \t>").rstrip() for line in lines)
        self.start_block(start, indent=False)
        self.table = _Table(source)

    def start_row(self, _tag: str, _argument: None, span: Any) -> None:
        self.in_block = False
        table = self.table
        if table is None:
            return
        table.rows.append([])
        # Cells beyond the header's count are dropped by the parser: then show the source.
        if table.columns:
            row = self.data[span["start"] : span["end"]].decode()
            if _source_cells(row) > table.columns:
                table.complete = False

    def end_head(self, _tag: str) -> None:
        if self.table is not None and self.table.rows:
            self.table.columns = len(self.table.rows[0])

    def start_cell(self, _tag: str, _argument: None, _span: Any) -> None:
        self.in_block = False
        if self.table is not None:
            self.table.cell = []
            self.table.ink = 0

    def end_cell(self, _tag: str) -> None:
        if self.table is not None and self.table.rows:
            self.table.rows[-1].append("".join(self.table.cell))

    def end_table(self, _tag: str) -> None:
        table = self.table
        self.table = None
        if table is None:
            return
        # The parser fills short rows with empty cells; pad anyway, _align needs it.
        rows = [row + [""] * (table.columns - len(row)) for row in table.rows]
        if table.complete and rows and table.columns:
            table.aligned = _align(rows)
        table.index = len(self.out)
        self.out.append(f"<pre>{escape(table.source)}</pre>")
        self.tables.append(table)
        self.ink += 1

    def cell_text(self, text: str) -> None:
        """Text of a table cell, without markup, as it shows in a <pre>."""
        assert self.table is not None
        self.table.cell.append(text)
        if text and not text.isspace():
            self.table.ink += 1

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

    def begin_inline(self, span: Any) -> bool:
        """Route inline content outside ``in_block``: true if it goes to the output (a
        tight list item's text, which has no paragraph: one starts here), false if a
        table cell took it."""
        if self.table is not None:
            return False
        self.start_block(span["start"], indent=True)
        self.in_block = True
        return True

    def inline_text(self, text: str, span: Any) -> None:
        if self.in_block or self.begin_inline(span):
            self.text(text)
        else:
            self.cell_text(text)

    def line_break(self, span: Any) -> None:
        if self.in_block or self.begin_inline(span):
            self.out.append("\n")
        else:
            self.cell_text(" ")

    def inline_code(self, code: str, span: Any) -> None:
        if not (self.in_block or self.begin_inline(span)):
            self.cell_text(code)
        elif code.strip() and not self.links:  # a link may not contain code
            self.out.append(f"<code>{escape(code)}</code>")
            self.ink += 1
        else:
            self.text(code)

    def start_inline(self, tag: str, argument: Any, span: Any) -> None:
        if not (self.in_block or self.begin_inline(span)):
            self.start_cell_link(tag, argument)
        elif tag == "Subscript":  # a single "~" pair: as written
            self.text("~")
        elif tag in _INLINE_TAGS:
            self.opened.append(self.open_tag(_INLINE_TAGS[tag]))
        else:  # Link, or Image: Telegram shows no inline images, so a link to it
            self.opened.append(self.open_link(argument))

    def end_inline(self, tag: str) -> None:
        if self.table is not None:
            self.end_cell_link(tag)
        elif tag == "Subscript":
            self.text("~")
        elif self.opened:  # the parser balances its events
            self.finish(self.opened.pop())

    def start_cell_link(self, tag: str, argument: Any) -> None:
        table = self.table
        assert table is not None
        if tag == "Subscript":
            self.cell_text("~")
        elif tag in ("Link", "Image"):
            automatic = argument["link_type"] in ("Autolink", "Email")
            table.links.append(("" if automatic else str(argument["dest_url"]), table.ink))

    def end_cell_link(self, tag: str) -> None:
        table = self.table
        assert table is not None
        if tag == "Subscript":
            self.cell_text("~")
        elif tag in ("Link", "Image") and table.links:
            url, ink = table.links.pop()
            if url:
                self.cell_text(f" ({url})" if table.ink > ink else url)

    def open_tag(self, name: str) -> _Open:
        tag = _Open(f"</{name}>", len(self.out), self.ink)
        self.out.append(f"<{name}>")
        return tag

    def open_link(self, link: dict[str, Any]) -> _Open:
        if link["link_type"] in ("Autolink", "Email"):  # <https://...>: Telegram links it
            return _Open("", len(self.out), self.ink)
        url = str(link["dest_url"])
        if not url.lower().startswith(_LINK_SCHEMES) or self.links:
            return _Open("", len(self.out), self.ink, url)  # shown as "label (url)"
        self.links += 1
        self.out.append(f'<a href="{escape_attribute(_href(url))}">')
        return _Open("</a>", len(self.out) - 1, self.ink, url)

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


def _ignore(_tag: str, _argument: Any, _span: Any) -> None:
    """A construct this renderer does not know (none is enabled): its content still shows."""


def _ignore_end(_tag: str) -> None:
    pass


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
