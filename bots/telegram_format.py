"""Claude's Markdown as Telegram HTML.

Telegram renders a small HTML subset (b, i, s, code, pre, a, blockquote) and rejects a
whole message whose markup it cannot parse. Claude writes CommonMark-ish Markdown, which
Telegram's own "Markdown" modes misread (``snake_case``, ``2 * 3 * 4``, unbalanced
asterisks). So the reply is converted here, conservatively:

- every character of text is escaped (``& < >``; ``"`` too inside attributes), so the
  output is always well-formed: a construct is either emitted whole, open and close tag
  together, or left as literal text;
- fenced code blocks become ``<pre><code class="language-x">``; an unclosed fence (a
  reply cut off, or a partial reply while streaming) runs to the end;
- inline code, bold (``**``/``__``), italic (``*``/``_``, not inside words), strikethrough
  (``~~``) and links (http, https, tg, mailto; others stay literal) map to their tags;
- headings become bold lines, ``-``/``*``/``+`` list items get a bullet, numbered items
  keep their numbers, ``>`` quotes become a blockquote, rules become a line;
- tables and anything else stay as text.

What the reader sees is never longer than the Markdown source, which is what lets
``bots.chunking`` split by the source length.
"""

from __future__ import annotations

import re
import string

from bots.chunking import closes_fence, fence_opener

_PUNCTUATION = frozenset(string.punctuation)
_HEADING = re.compile(r"^ {0,3}#{1,6}(?:\s+(.*?))?(?:\s+#+)?\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_ORDERED = re.compile(r"^(\s*)(\d{1,9}[.)])\s+(.*)$")
_QUOTE = re.compile(r"^ {0,3}>\s?(.*)$")
_RULE = re.compile(r"^ {0,3}([-*_])(?:\s*\1){2,}\s*$")
_LANGUAGE = re.compile(r"[A-Za-z0-9_+#.-]{1,32}")
_URL_SCHEMES = ("http://", "https://", "tg://", "mailto:")
_AUTOLINK = re.compile(r"<((?:https?|tg)://[^\s<>]+|mailto:[^\s<>]+)>")


def escape(text: str) -> str:
    """Escape text for Telegram HTML (the three characters its parser treats specially)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def escape_attribute(text: str) -> str:
    return escape(text).replace('"', "&quot;")


def markdown_to_html(text: str) -> str:
    """Render Markdown as Telegram HTML; always well-formed, whatever the input."""
    lines = text.replace("\r\n", "\n").split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = fence_opener(line)
        if fence is not None:
            info = line.strip()[len(fence) :].strip()
            body: list[str] = []
            i += 1
            while i < len(lines) and not closes_fence(lines[i], fence):
                body.append(lines[i])
                i += 1
            i += 1  # the closing fence (or past the end)
            out.append(_code_block(body, info))
            continue
        if _QUOTE.match(line):
            quoted: list[str] = []
            while i < len(lines) and (match := _QUOTE.match(lines[i])):
                quoted.append(_inline(match.group(1)))
                i += 1
            inner = "\n".join(quoted)
            out.append(f"<blockquote>{inner}</blockquote>" if inner.strip() else inner)
            continue
        out.append(_line(line))
        i += 1
    return "\n".join(out)


def _code_block(body: list[str], info: str) -> str:
    code = escape("\n".join(body))
    language = info.split()[0] if info else ""
    if not code.strip():
        return code  # an empty <pre> is no entity at all; keep the (blank) text
    if language and _LANGUAGE.fullmatch(language):
        return f'<pre><code class="language-{language}">{code}</code></pre>'
    return f"<pre>{code}</pre>"


def _line(line: str) -> str:
    if _RULE.match(line):
        return "———"
    heading = _HEADING.match(line)
    if heading is not None:
        title = _inline(heading.group(1) or "")
        return f"<b>{title}</b>" if title.strip() else title
    bullet = _BULLET.match(line)
    if bullet is not None:
        return f"{bullet.group(1)}• {_inline(bullet.group(2))}"
    ordered = _ORDERED.match(line)
    if ordered is not None:
        return f"{ordered.group(1)}{ordered.group(2)} {_inline(ordered.group(3))}"
    return _inline(line)


def _backtick_run(s: str, i: int) -> int:
    j = i
    while j < len(s) and s[j] == "`":
        j += 1
    return j - i


def _code_span_end(s: str, i: int) -> int | None:
    """If a code span opens at ``i``, the index just past its closing backticks."""
    run = _backtick_run(s, i)
    j = i + run
    while j < len(s):
        if s[j] == "`":
            other = _backtick_run(s, j)
            if other == run:
                return j + run
            j += other
        else:
            j += 1
    return None


def _skip_code(s: str, i: int) -> int:
    """Past the code span opening at ``i`` (or its backticks, if it never closes):
    nothing inside code is markup."""
    end = _code_span_end(s, i)
    return end if end is not None else i + _backtick_run(s, i)


def _word_char(c: str) -> bool:
    return c.isalnum()


def _opens(s: str, i: int, marker: str) -> bool:
    after = i + len(marker)
    if after >= len(s) or s[after].isspace():
        return False
    return not (marker[0] == "_" and i > 0 and _word_char(s[i - 1]))


def _closes(s: str, j: int, marker: str) -> bool:
    if j == 0 or s[j - 1].isspace():
        return False
    after = j + len(marker)
    return not (marker[0] == "_" and after < len(s) and _word_char(s[after]))


def _find_close(s: str, start: int, marker: str) -> int | None:
    """Index of the marker closing an emphasis opened just before ``start``."""
    j = start
    char = marker[0]
    while j < len(s):
        c = s[j]
        if c == "\\" and j + 1 < len(s):
            j += 2
            continue
        if c == "`":
            j = _skip_code(s, j)
            continue
        if c == char:
            run = j
            while run < len(s) and s[run] == char:
                run += 1
            length = run - j
            if len(marker) == 1 and length == 2:
                # A nested strong/strike span: skip it whole if it closes.
                inner = _find_close(s, run, marker * 2) if _opens(s, j, marker * 2) else None
                if inner is not None:
                    j = inner + 2
                    continue
            if length >= len(marker):
                candidate = run - len(marker)  # "***x***": the innermost closer
                if candidate > start and _closes(s, candidate, marker):
                    return candidate
            j = run
            continue
        j += 1
    return None


def _link(s: str, i: int) -> tuple[str, str, int] | None:
    """``[text](url "title")`` at ``i`` -> (text, url, index past it)."""
    depth = 0
    j = i
    while j < len(s):
        c = s[j]
        if c == "\\":
            j += 2
            continue
        if c == "`":
            j = _skip_code(s, j)
            continue
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
            if depth == 0:
                break
        j += 1
    else:
        return None
    if j + 1 >= len(s) or s[j + 1] != "(":
        return None
    k = j + 2
    parens = 1
    while k < len(s):
        if s[k] == "(":
            parens += 1
        elif s[k] == ")":
            parens -= 1
            if parens == 0:
                break
        k += 1
    else:
        return None
    target = s[j + 2 : k].strip()
    url = target.split()[0] if target else ""
    if url.startswith("<") and url.endswith(">"):
        url = url[1:-1]
    return s[i + 1 : j], url, k + 1


def _inline(s: str, *, in_link: bool = False) -> str:
    out: list[str] = []
    i = 0
    n = len(s)
    while i < n:
        c = s[i]
        if c == "\\" and i + 1 < n and s[i + 1] in _PUNCTUATION:
            out.append(escape(s[i + 1]))
            i += 2
            continue
        if c == "`":
            end = _code_span_end(s, i)
            run = _backtick_run(s, i)
            if end is None:
                out.append(s[i : i + run])
                i += run
                continue
            code = s[i + run : end - run]
            if code.startswith(" ") and code.endswith(" ") and code.strip():
                code = code[1:-1]
            out.append(f"<code>{escape(code)}</code>" if code.strip() else escape(s[i:end]))
            i = end
            continue
        if c == "<" and not in_link:
            auto = _AUTOLINK.match(s, i)
            if auto is not None:
                out.append(escape(auto.group(1)))  # Telegram links bare URLs itself
                i = auto.end()
                continue
        if c in "[!" and not in_link:
            start = i + 1 if c == "!" and s.startswith("[", i + 1) else i
            link = _link(s, start) if s.startswith("[", start) else None
            if link is not None:
                label, url, end = link
                if url.lower().startswith(_URL_SCHEMES) and label.strip():
                    inner = _inline(label, in_link=True)
                    out.append(f'<a href="{escape_attribute(url)}">{inner}</a>')
                    i = end
                    continue
        tag = _emphasis(s, i)
        if tag is not None:
            name, marker, close = tag
            inner = _inline(s[i + len(marker) : close], in_link=in_link)
            out.append(f"<{name}>{inner}</{name}>")
            i = close + len(marker)
            continue
        out.append(escape(c))
        i += 1
    return "".join(out)


def _emphasis(s: str, i: int) -> tuple[str, str, int] | None:
    """(tag, marker, index of the closing marker) for an emphasis opening at ``i``."""
    for marker, name in (("**", "b"), ("__", "b"), ("~~", "s"), ("*", "i"), ("_", "i")):
        if not s.startswith(marker, i) or not _opens(s, i, marker):
            continue
        close = _find_close(s, i + len(marker), marker)
        if close is not None and s[i + len(marker) : close].strip():
            return name, marker, close
    return None
