"""What every benchmark here shares: percentiles, the printed table, the model timer."""

from __future__ import annotations

import contextvars
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from agents.base import Agent, AgentEvent, AgentRequest

# The model time of the turn being handled: TimedAgent adds to it, the timed bot reads it.
model_time: contextvars.ContextVar[list[float]] = contextvars.ContextVar("model_time")


class TimedAgent:
    """Adds the time spent in the agent to the turn it belongs to (via ``model_time``)."""

    def __init__(self, inner: Agent) -> None:
        self.inner = inner
        self.name = inner.name

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream(request)

    async def _stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        began = time.perf_counter()
        try:
            async for event in self.inner.stream(request):
                yield event
        finally:
            slot = model_time.get(None)
            if slot is not None:
                slot.append(time.perf_counter() - began)


def pct(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank; 0.0 for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell, separated by pipes."""
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(head, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def turns_row(
    what: str, units: int, messages: int, latency: float, stagger: bool, result: dict[str, Any]
) -> tuple[str, ...]:
    """One row of the bot benchmarks (Telegram, Discord): ``result`` holds the rate, the
    per-turn overhead, model and end-to-end times, CPU seconds and errors of a run."""
    turns = units * messages
    model = sum(result["model"]) / max(1, len(result["model"]))
    e2e = [t - model for t in result["e2e"]]
    overhead = result["overhead"]
    ideal = units / latency if latency else 0.0
    rate = result["rate"]
    ms = 1000.0
    return (
        what,
        f"{units} x {messages}",
        f"{latency:g} s",
        "staggered" if stagger else "lock step",
        f"{rate:.0f}",
        f"{ideal:.0f}" if ideal else "-",
        f"{rate / ideal:.0%}" if ideal else "-",
        f"{pct(overhead, 0.5) * ms:.1f}",
        f"{pct(overhead, 0.99) * ms:.1f}",
        f"{pct(e2e, 0.5) * ms:.1f}",
        f"{pct(e2e, 0.99) * ms:.1f}",
        f"{result['cpu'] / turns * ms:.1f}",
        f"{result['fake_cpu'] / turns * ms:.1f}",
        str(result["errors"]),
    )


def turns_table(unit: str, rows: Sequence[Sequence[str]]) -> str:
    """The bot benchmarks' table; ``unit`` is what runs concurrently (chats, channels)."""
    head = (
        "what runs",
        f"{unit} x msgs",
        "model",
        "start",
        "turns/s",
        "ideal",
        "eff",
        "ovh p50 ms",
        "ovh p99 ms",
        "e2e p50 ms",
        "e2e p99 ms",
        "bot CPU ms/turn",
        "fakes CPU",
        "errors",
    )
    return format_table(head, rows)
