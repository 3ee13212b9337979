"""Markdown -> Telegram HTML, and splitting long replies: examples and properties.

The HTML is checked with the fake Bot API's parser, which follows TDLib's rules and, in
strict mode, also rejects an unescaped ``&``: what it accepts, Telegram accepts.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
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
        ("***both***", "<b><i>both</i></b>"),
        ("*a **b** c*", "<i>a <b>b</b> c</i>"),
        ("**`code` in bold**", "<b><code>code</code> in bold</b>"),
        ("`**not bold**`", "<code>**not bold**</code>"),
        ("``a ` b``", "<code>a ` b</code>"),
        ("\\*not italic\\*", "*not italic*"),
        ("unclosed **bold and `code", "unclosed **bold and `code"),
        ("[site](https://example.com/a_(b))", '<a href="https://example.com/a_(b)">site</a>'),
        ('[q](https://e.com/?a=1&b="2")', '<a href="https://e.com/?a=1&amp;b=&quot;2&quot;">q</a>'),
        ("[**bold** link](https://e.com)", '<a href="https://e.com"><b>bold</b> link</a>'),
        ("[x](javascript:alert(1))", "[x](javascript:alert(1))"),
        ("![diagram](https://e.com/d.png)", '<a href="https://e.com/d.png">diagram</a>'),
        ("see <https://e.com>", "see https://e.com"),
        ("# Title", "<b>Title</b>"),
        ("### Sub title ###", "<b>Sub title</b>"),
        ("#hashtag", "#hashtag"),
        ("- one\n* two\n+ three", "• one\n• two\n• three"),
        ("  - nested *it*", "  • nested <i>it</i>"),
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
        ("| a | b |\n|---|---|\n| 1 | 2 |", "| a | b |\n|---|---|\n| 1 | 2 |"),
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


MARKDOWNISH = st.lists(
    st.sampled_from([*"ab _*~`[]()<>&#>-+1.!\\\n :/\"'", "https://", "😀", "é", "```", "**"]),
    max_size=120,
).map("".join)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=300), MARKDOWNISH))
def test_any_text_renders_to_html_that_telegram_accepts_and_is_never_longer(text: str) -> None:
    rendered, _entities = visible(text)
    assert utf16_len(rendered) <= utf16_len(text)


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
    for chunk in chunks:
        visible(chunk)  # each chunk is valid on its own


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
