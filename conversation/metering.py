"""How long a turn took, and how much of it was the model: for whoever watches turns
(the metrics of the operator surface).

``Turn.handle`` measures only when someone watches (``Turn.observers``): the clock
lives in a context variable for the duration of the turn, and ``timed_model`` wraps
the agent's stream only when a clock is running, so that an unwatched turn pays
nothing. A watcher is a plain callback that must only take note and return; its
exceptions are logged, never raised into the turn.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from memory.types import Usage

log = logging.getLogger(__name__)

_E = TypeVar("_E")


@dataclass(frozen=True, slots=True)
class TurnMeasured:
    """One turn, done: its interface, outcome (conversation.turn.Outcome's value, or
    "error" when it raised), its time and the model's share of it, and its usage."""

    interface: str
    outcome: str
    seconds: float
    model_seconds: float
    usage: Usage | None

    @property
    def overhead_seconds(self) -> float:
        """The host's own time: everything but waiting for the model."""
        return max(0.0, self.seconds - self.model_seconds)


TurnObserver = Callable[[TurnMeasured], None]

_model: contextvars.ContextVar[list[float]] = contextvars.ContextVar("palaver_model_time")


class _HasOutcome(Protocol):
    @property
    def outcome(self) -> object: ...

    @property
    def usage(self) -> Usage | None: ...


_R = TypeVar("_R", bound=_HasOutcome)


async def measure(
    observers: Sequence[TurnObserver], interface: str, turn: Coroutine[Any, Any, _R]
) -> _R:
    """Run ``turn`` with a clock running, then tell ``observers`` how it went."""
    spent: list[float] = []
    token = _model.set(spent)
    began = time.perf_counter()
    outcome = "error"
    usage: Usage | None = None
    try:
        result = await turn
        outcome, usage = str(result.outcome), result.usage
        return result
    finally:
        _model.reset(token)
        measured = TurnMeasured(interface, outcome, time.perf_counter() - began, sum(spent), usage)
        for observer in observers:
            try:
                observer(measured)
            except Exception:
                log.exception("a turn observer failed")


def timed_model(stream: AsyncIterator[_E]) -> AsyncIterator[_E]:
    """``stream`` (an agent's), timed into the running turn's clock if there is one."""
    spent = _model.get(None)
    return stream if spent is None else _timed(stream, spent)


async def _timed(stream: AsyncIterator[_E], spent: list[float]) -> AsyncIterator[_E]:
    began = time.perf_counter()
    try:
        async for event in stream:
            yield event
    finally:
        spent.append(time.perf_counter() - began)
