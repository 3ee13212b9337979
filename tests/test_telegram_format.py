"""Markdown -> Telegram HTML, and splitting long replies: examples and properties.

The HTML is checked with the fake Bot API's parser, which follows TDLib's rules and, in
strict mode, also rejects an unescaped ``&``: what it accepts, Telegram accepts.
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from bots.chunking import DISCORD_LIMIT, TELEGRAM_LIMIT, split_markdown, unclosed_fence, utf16_len
from bots.telegram_format import markdown_to_html
from tests.fakes.telegram_api import parse_html


def visible(markdown: str) -> tuple[str, list[dict[str, object]]]:
    return parse_html(markdown_to_html(markdown), strict_entities=True)


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("plain & <simple> text", "plain &amp; &lt;simple&gt; text"),
        ("**bold** __also__ *it* _it_", "<b>bold</b> <b>also</b> <i>it</i> <i>it</i>"),
        ("~~gone~~ and `x < y`", "<s>gone</s> and <code>x &lt; y</code>"),
        ("snake_case_name and 2 * 3 * 4", "snake_case_name and 2 * 3 * 4"),
        ("***both***", "<i><b>both</b></i>"),  # CommonMark: emphasis around strong
        ("*a **b** c*", "<i>a <b>b</b> c</i>"),
        ("**`code` in bold**", "<b><code>code</code> in bold</b>"),
        ("`**not bold**`", "<code>**not bold**</code>"),
        ("``a ` b``", "<code>a ` b</code>"),
        ("\\*not italic\\*", "*not italic*"),
        ("unclosed **bold and `code", "unclosed **bold and `code"),
        ("[site](https://example.com/a_(b))", '<a href="https://example.com/a_(b)">site</a>'),
        ('[q](https://e.com/?a=1&b="2")', '<a href="https://e.com/?a=1&amp;b=%222%22">q</a>'),
        ("[**bold** link](https://e.com)", '<a href="https://e.com"><b>bold</b> link</a>'),
        ("[x](javascript:alert(1))", "x (javascript:alert(1))"),  # a link, but not an <a>
        ("![diagram](https://e.com/d.png)", '<a href="https://e.com/d.png">diagram</a>'),
        ("see <https://e.com>", "see https://e.com"),
        ("# Title", "<b>Title</b>"),
        ("### Sub title ###", "<b>Sub title</b>"),
        ("#hashtag", "#hashtag"),
        ("- one\n* two\n+ three", "• one\n• two\n• three"),
        ("- a\n  - nested *it*", "• a\n  • nested <i>it</i>"),
        ("1. first\n2) second", "1. first\n2) second"),
        ("> quoted *text*\n> more", "<blockquote>quoted <i>text</i>\nmore</blockquote>"),
        ("---", "———"),
        (
            "```python\nif a < b:\n    print('&')\n```",
            "<pre><code class=\"language-python\">if a &lt; b:\n    print('&amp;')</code></pre>",
        ),
        ("```\nno language\n```", "<pre>no language</pre>"),
        ('```evil"lang\nx\n```', "<pre>x</pre>"),
        ("```\nunclosed <b>", "<pre>unclosed &lt;b&gt;</pre>"),
        ("~~~\ntilde fence\n~~~", "<pre>tilde fence</pre>"),
        ("| a | b |\n|---|---|\n| 1 | 2 |", "<pre>a | b\n--+--\n1 | 2</pre>"),
    ],
)
def test_markdown_to_html_examples(markdown: str, html: str) -> None:
    assert markdown_to_html(markdown) == html
    parse_html(html, strict_entities=True)


def test_code_block_entities_reach_telegram_as_pre_with_language() -> None:
    text, entities = visible("Run:\n```sh\nls -l | grep '<x>'\n```\nDone **now**.")
    assert text == "Run:\nls -l | grep '<x>'\nDone now."
    assert entities[0] == {"type": "pre", "offset": 5, "length": 18, "language": "sh"}
    assert entities[1]["type"] == "bold"


@pytest.mark.parametrize(
    ("markdown", "html"),
    [
        ("a\n\nb\nc", "a\n\nb\nc"),  # a blank line between blocks where the source had one
        ("- a\n\n- b", "• a\n\n• b"),
        ("- a\n  1. b\n     - c", "• a\n  1. b\n    • c"),
        ("1. a\n1. b\n1. c", "1. a\n2. b\n3. c"),  # CommonMark numbers on from the first
        ("-\n- x", "•\n• x"),
        ("- # Heading\n- ***", "• <b>Heading</b>\n• ———"),
        ("> a\n> > b\n>\n> c", "<blockquote>a\nb\n\nc</blockquote>"),  # no nested quotes
        ("a  \nb\\\nc", "a\nb\nc"),
        ("    x < y", "<pre>x &lt; y</pre>"),
        ("```\n\n```", "```\n\n```"),  # nothing to show: the source, not a blank message
        ("<b>x</b> & <div>", "&lt;b&gt;x&lt;/b&gt; &amp; &lt;div&gt;"),
        ("&amp; &copy; &#x1F600;", "&amp; © 😀"),
        ("~one~ ~~two~~", "~one~ <s>two</s>"),  # GFM would strike "one": kept as written
        ("takes ~5 min and ~10 MB", "takes ~5 min and ~10 MB"),
        ("[a](<https://e.com/a b>)", '<a href="https://e.com/a%20b">a</a>'),
        ("- ```\n  x\n  ```\n  after\n- b", "• <pre>x</pre>\n  after\n• b"),  # tight item
        ("- a\n  > q\n- b", "• a\n<blockquote>q</blockquote>\n• b"),
        ("[docs](docs/a.md) [x](ftp://h/f)", "docs (docs/a.md) x (ftp://h/f)"),
        ("[](https://e.com)", '<a href="https://e.com">https://e.com</a>'),
        ("[a `c`](https://e.com)", '<a href="https://e.com">a c</a>'),  # no code in a link
        ("![d](d.png)", "d (d.png)"),
        (
            "[![b](https://c.io/b.svg)](https://c.io)",
            '<a href="https://c.io">b (https://c.io/b.svg)</a>',
        ),
        ("<mailto:a@b.co>", "mailto:a@b.co"),
        ("> " * 30 + "deep", "<blockquote>deep</blockquote>"),  # deeper than the parser goes
        ("| a |\n|---|\n| 1 | 2 |", "<pre>| a |\n|---|\n| 1 | 2 |</pre>"),  # "2" is no cell
    ],
)
def test_commonmark_examples(markdown: str, html: str) -> None:
    assert markdown_to_html(markdown) == html
    parse_html(html, strict_entities=True)


TABLE = (
    "| Feature | Python | Rust |\n|---|---|---|\n"
    "| **Speed** | Moderate | Fast |\n| Memory | GC | Ownership |"
)


def test_lone_surrogates_are_replaced_not_an_error() -> None:
    assert markdown_to_html("a\ud800 *b*") == "a\ufffd <i>b</i>"


def test_a_table_is_aligned_when_its_padding_fits_and_else_shown_as_written() -> None:
    assert markdown_to_html(TABLE) == (
        "<pre>Feature | Python   | Rust\n"
        "--------+----------+----------\n"
        "Speed   | Moderate | Fast\n"
        "Memory  | GC       | Ownership</pre>"
    )
    assert markdown_to_html(TABLE, limit=0) == f"<pre>{TABLE}</pre>"
    # What the rest of the message saves pays for the padding.
    link = "[link](https://example.com/" + "x" * 40 + ")"
    assert markdown_to_html(f"{link}\n\n{TABLE}", limit=0).endswith("Ownership</pre>")


MARKDOWNISH = st.lists(
    st.sampled_from([*"ab _*~`[]()<>&#>-+1.!\\\n :/\"'", "https://", "😀", "é", "```", "**"]),
    max_size=120,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), MARKDOWNISH), st.sampled_from([0, 40, TELEGRAM_LIMIT]))
def test_any_text_renders_to_html_that_telegram_accepts_and_fits(text: str, limit: int) -> None:
    rendered, _entities = parse_html(markdown_to_html(text, limit=limit), strict_entities=True)
    assert utf16_len(rendered) <= max(utf16_len(text), limit)
    if text.strip():
        assert rendered.strip(), "Telegram refuses a blank message"


# Markdown made of markers and words of a few letters. Without ":" no link can have a
# scheme Telegram opens, and without "<", "&" or ":" there are no autolinks, entities,
# HTML or link definitions: every letter the reader should get is in the visible text,
# except a code block's language, which becomes an attribute.
MARKERS_AND_WORDS = st.lists(
    st.one_of(
        st.sampled_from([*"*_[]()`#>~|-!\\\n\t ", "```", "~~", "**", "- ", "> ", "1. ", "\n\n"]),
        st.text(alphabet="abc", min_size=1, max_size=4),
    ),
    max_size=80,
).map("".join)


def letters(text: str) -> Counter[str]:
    return Counter(c for c in text if c in "abc")


@settings(max_examples=500, deadline=None)
@given(MARKERS_AND_WORDS)
@example("> " * 30 + "abc")  # nested deeper than the parser follows
@example("- " * 15 + "abc")
@example("| a |\n|---|\n| b | c |")  # a cell the parser would drop
@example("[a](b) ![c](a) [![b](c)](a) [](b)")
def test_every_word_reaches_the_reader(text: str) -> None:
    # A fence's info string (a language, shown only on code) and a link's title are
    # not text: by design.
    assume(not re.search(r"(`{3}|~{3})[^\n]*[abc]", text))
    assume(not re.search(r"\]\([^)]*\s\(", text))
    shown, entities = visible(text)
    metadata = "".join(str(e.get("url", "")) + str(e.get("language", "")) for e in entities)
    assert letters(shown + metadata) >= letters(text)


@pytest.mark.parametrize(
    "text",
    [
        "*a " * 2000,
        "[" * 8000,
        "![" * 5000,
        "[a](" * 2000,
        "**" * 5000,
        "_" * 10000,
        "`" * 10000,
        "> " * 5000 + "end",  # far deeper than Python's recursion limit
        ">" * 5000 + "end",
        "- " * 5000 + "end",
        "1. " * 3000 + "end",
        ("- " * 2000 + "x\n") * 3,
        "<" * 10000,
        "\\" * 10000,
        "a\n\n" * 3000,
    ],
    ids=lambda text: repr(text[:8]),
)
def test_pathological_input_renders_valid_html_with_every_letter(text: str) -> None:
    shown, _entities = visible(text)
    assert letters(shown) >= letters(text)


# -- splitting -------------------------------------------------------------------------------------


def test_text_that_fits_is_one_chunk_and_blank_text_none() -> None:
    assert split_markdown("hello\n\nworld\n", 100) == ["hello\n\nworld"]
    assert split_markdown(" \n\n ", 100) == []


def test_splits_between_paragraphs_first_then_lines_then_words() -> None:
    paragraphs = ["first " * 10, "second " * 10, "third " * 10]
    chunks = split_markdown("\n\n".join(p.strip() for p in paragraphs), 80)
    assert chunks == [p.strip() for p in paragraphs]
    lines = "\n".join(f"line {i} " + "x" * 20 for i in range(10))
    chunks = split_markdown(lines, 100)
    assert all(len(c) <= 100 for c in chunks)
    assert all(line.startswith("line ") for c in chunks for line in c.split("\n"))
    words = " ".join(f"w{i}" for i in range(100))
    chunks = split_markdown(words, 50)
    assert " ".join(chunks).split() == words.split()
    assert split_markdown("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_a_code_block_that_fits_is_never_cut() -> None:
    code = "```py\n" + "\n".join(f"a{i} = {i}" for i in range(20)) + "\n```"
    text = "intro " * 20 + "\n\n" + code + "\n\n" + "outro " * 20
    chunks = split_markdown(text, len(code) + 10)
    assert code in chunks


def test_a_long_code_block_is_closed_and_reopened_with_its_language() -> None:
    code = "```python\n" + "\n".join(f"print({i})" for i in range(400)) + "\n```"
    for limit, measure in ((TELEGRAM_LIMIT, utf16_len), (DISCORD_LIMIT, len)):
        chunks = split_markdown("Here:\n" + code, limit, measure)
        assert len(chunks) > 1
        for chunk in chunks:
            assert measure(chunk) <= limit
            fences = [line for line in chunk.split("\n") if line.startswith("```")]
            assert len(fences) % 2 == 0, "every piece of code is closed"
            if "print(" in chunk:
                assert "```python" in chunk
        printed = [line for c in chunks for line in c.split("\n") if line.startswith("print(")]
        assert printed == [f"print({i})" for i in range(400)]


def test_telegram_limit_counts_utf16_units() -> None:
    chunks = split_markdown("😀" * 3000, TELEGRAM_LIMIT, utf16_len)
    assert [utf16_len(c) for c in chunks] == [4096, 1904]


_FENCE_LINE = re.compile(r"^ {0,3}(`{3,}|~{3,}).*$", re.MULTILINE)


def _content(text: str) -> str:
    return re.sub(r"\s", "", _FENCE_LINE.sub("", text))


BLOCKS = st.lists(
    st.one_of(
        st.text(alphabet=st.sampled_from(list("abc *_`\n")), min_size=1, max_size=120),
        st.builds(
            lambda lang, body: f"```{lang}\n{body}\n```",
            st.sampled_from(["", "py", "js"]),
            st.text(alphabet=st.sampled_from(list("xyz <>&\n😀")), max_size=300),
        ),
        st.text(alphabet=st.sampled_from(list("wxyz😀")), min_size=50, max_size=150),
    ),
    max_size=12,
).map("\n\n".join)


@settings(max_examples=300, deadline=None)
@given(BLOCKS, st.sampled_from([40, 100, 300]))
def test_chunks_fit_lose_nothing_and_render_on_their_own(text: str, limit: int) -> None:
    chunks = split_markdown(text, limit, utf16_len)
    assert all(utf16_len(c) <= limit and c.strip() for c in chunks)
    assert _content("\n".join(chunks)) == _content(text)
    for chunk in chunks:  # each chunk is valid on its own, and still fits once rendered
        shown, _entities = parse_html(markdown_to_html(chunk, limit=limit), strict_entities=True)
        assert utf16_len(shown) <= limit


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=500), st.integers(min_value=1, max_value=60))
def test_any_text_any_limit(text: str, limit: int) -> None:
    chunks = split_markdown(text, limit)
    assert all(len(c) <= limit for c in chunks)
    if "`" not in text and "~" not in text:
        assert re.sub(r"\s", "", "".join(chunks)) == re.sub(r"\s", "", text)


def test_an_unclosed_fence_is_found_and_a_closed_one_is_not() -> None:
    assert unclosed_fence("text\n\n```python\nprint(1)") == "```"
    assert unclosed_fence("~~~~\ncode\n~~~") == "~~~~"  # a shorter fence does not close it
    assert unclosed_fence("```\ncode\n```\n\nafter") is None
    assert unclosed_fence("plain text") is None
    assert unclosed_fence("") is None
