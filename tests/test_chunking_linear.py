"""The splitter's cost is linear in the text: counted in characters measured, not time.

``split_markdown`` runs on the event loop for every streamed draft. Its work is
dominated by measuring (UTF-16 lengths, in Telegram's case), so a measure that counts
what it is given shows the cost on any machine: bounded per character means linear.
A longest-prefix search over the whole rest of a long word, as the splitter once did,
measures each character dozens of times at these sizes, and more the longer the word.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bots.chunking import TELEGRAM_LIMIT, Measure, split_markdown, utf16_len

WORST = {
    "one long word": "x" * 200_000,
    "one long word of emoji": "😀" * 100_000,
    "a long word of mixed widths": "é😀" * 70_000,
    "long lines without spaces": ("y" * 9_000 + "\n") * 20,
    "long lines in a code block": "```py\n" + ("z" * 9_000 + "\n") * 20 + "```",
    "backticks": "`" * 100_000,
    "many short paragraphs": "a\n\n" * 50_000,
    "many fences": "```\n" * 50_000,
    "many words": "ab " * 60_000,
}


@pytest.mark.parametrize("name", WORST)
def test_every_character_is_measured_a_bounded_number_of_times(name: str) -> None:
    text = WORST[name]
    measured = 0

    def counting(piece: str) -> int:
        nonlocal measured
        measured += len(piece)
        return utf16_len(piece)

    chunks = split_markdown(text, TELEGRAM_LIMIT, counting)
    assert measured <= 16 * len(text)
    assert all(0 < utf16_len(chunk) <= TELEGRAM_LIMIT for chunk in chunks)


@pytest.mark.parametrize("limit", [TELEGRAM_LIMIT, TELEGRAM_LIMIT - 1, 3])
def test_a_word_longer_than_a_message_is_cut_into_the_longest_pieces_that_fit(limit: int) -> None:
    word = "é😀" * 5_000
    chunks = split_markdown(word, limit, utf16_len)
    assert "".join(chunks) == word
    for chunk, following in itertools.pairwise(chunks):
        assert utf16_len(chunk) <= limit < utf16_len(chunk + following[0])


CHARACTERS = st.sampled_from(["a", "é", "😀", "\U0001f9d1\u200d\U0001f4bb"])  # 1, 1, 2, 5 units


@settings(max_examples=300, deadline=None)
@given(
    st.lists(CHARACTERS, min_size=1).map("".join),
    st.integers(min_value=1, max_value=40),
)
def test_hard_cut_pieces_fit_are_maximal_and_lose_nothing(word: str, limit: int) -> None:
    measure: Measure = utf16_len
    chunks = split_markdown(word, limit, measure)
    assert "".join(chunks) == word
    for index, chunk in enumerate(chunks):
        # A character longer than the limit goes alone; no other piece is too long.
        assert measure(chunk) <= limit or len(chunk) == 1
        if index + 1 < len(chunks):
            assert measure(chunk + chunks[index + 1][0]) > limit


@given(st.text())
def test_utf16_len_counts_code_units(text: str) -> None:
    assert utf16_len(text) == len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def test_utf16_len_counts_a_lone_surrogate_as_one_unit() -> None:
    assert utf16_len("a\ud800b") == 3
