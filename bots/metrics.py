"""Prometheus metrics of this process, in a registry of its own (never the library's
global default: two apps in one process, as tests build them, keep apart).

Fed by plain callbacks: the turn's observers (conversation.metering) for turns,
latency, tokens and cost; memory's observers for summaries; the job routes and the
job runner for job runs; an aiohttp trace on the platforms' HTTP clients for their
errors and 429s. Gauges that live in the database (sessions by state) and the
session cache's counters are read when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any, Protocol

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from conversation.metering import TurnMeasured
from memory.manager import SessionManager
from memory.observers import MemoryEvent, SummaryWritten

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_MODEL_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)


class JobRunLike(Protocol):
    """What metrics and live events read of a recorded job run."""

    @property
    def job(self) -> str: ...

    @property
    def outcome(self) -> str: ...


class _SessionCache(Collector):
    """The session cache's hits and misses, read at scrape time."""

    def __init__(self, manager: SessionManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        cache_hits, cache_misses = self._manager.cache_counts()
        hits = CounterMetricFamily(
            "palaver_session_cache_hits", "Sessions served from the in-process cache"
        )
        hits.add_metric([], cache_hits)
        misses = CounterMetricFamily(
            "palaver_session_cache_misses", "Sessions read from the database into the cache"
        )
        misses.add_metric([], cache_misses)
        total = cache_hits + cache_misses
        rate = GaugeMetricFamily(
            "palaver_session_cache_hit_ratio", "Share of session reads served by the cache"
        )
        rate.add_metric([], cache_hits / total if total else 0.0)
        yield from (hits, misses, rate)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    def __init__(self, manager: SessionManager) -> None:
        self.manager = manager
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns = Counter(
            "palaver_turns",
            "Turns handled, by interface and outcome",
            ["interface", "outcome"],
            registry=r,
        )
        self.overhead = Histogram(
            "palaver_turn_overhead_seconds",
            "Host time of a turn, without the model",
            ["interface"],
            buckets=_OVERHEAD_BUCKETS,
            registry=r,
        )
        self.model_latency = Histogram(
            "palaver_model_latency_seconds",
            "Time spent waiting for the model in a turn",
            ["interface"],
            buckets=_MODEL_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "palaver_tokens", "Model tokens reported by the API, by kind", ["kind"], registry=r
        )
        self.cost = Counter("palaver_cost_usd", "Model cost in USD", registry=r)
        self.summaries = Counter(
            "palaver_summaries",
            "Summaries written, by kind (claude, extractive)",
            ["kind"],
            registry=r,
        )
        self.sessions = Gauge(
            "palaver_sessions", "Sessions in the database, by state", ["status"], registry=r
        )
        self.job_runs = Counter(
            "palaver_job_runs", "Job runs, by job and outcome", ["job", "outcome"], registry=r
        )
        self.platform_errors = Counter(
            "palaver_platform_api_errors",
            "Failed calls to a platform's API (HTTP 4xx/5xx other than 429, or network)",
            ["interface", "kind"],
            registry=r,
        )
        self.platform_rate_limited = Counter(
            "palaver_platform_rate_limited",
            "Calls a platform answered with 429 Too Many Requests",
            ["interface"],
            registry=r,
        )
        self.live_dropped = Counter(
            "palaver_live_events_dropped",
            "Live events not sent: the queue was full, or a client too far behind",
            ["reason"],
            registry=r,
        )
        r.register(_SessionCache(manager))

    # -- what feeds them ------------------------------------------------------------

    def turn_done(self, turn: TurnMeasured) -> None:
        """A turn observer (conversation.metering)."""
        self.turns.labels(turn.interface, turn.outcome).inc()
        self.overhead.labels(turn.interface).observe(turn.overhead_seconds)
        if turn.model_seconds:
            self.model_latency.labels(turn.interface).observe(turn.model_seconds)
        usage = turn.usage
        if usage is not None:
            self.tokens.labels("input").inc(usage.input_tokens)
            self.tokens.labels("output").inc(usage.output_tokens)
            self.tokens.labels("cache_read").inc(usage.cache_read_tokens)
            self.tokens.labels("cache_write").inc(usage.cache_write_tokens)
            self.cost.inc(usage.cost_usd)

    def memory_event(self, event: MemoryEvent) -> None:
        """A memory observer (memory.observers): summaries by who wrote them."""
        if isinstance(event, SummaryWritten):
            summary = event.summary
            kind = (
                "extractive"
                if summary.fallback or summary.summarizer == "extractive"
                else ("claude")
            )
            self.summaries.labels(kind).inc()

    def job_run(self, run: JobRunLike) -> None:
        if run.outcome != "running":
            self.job_runs.labels(run.job, run.outcome).inc()

    def trace(self, interface: str) -> aiohttp.TraceConfig:
        """Counts a platform's API errors and 429s: give it to that platform's aiohttp
        session (``trace_configs=[...]``, discord.py's ``http_trace=``)."""
        config = aiohttp.TraceConfig()

        async def on_end(_s: aiohttp.ClientSession, _c: SimpleNamespace, params: Any) -> None:
            status = params.response.status
            if status == 429:
                self.platform_rate_limited.labels(interface).inc()
            elif status >= 400:
                self.platform_errors.labels(interface, f"http_{status // 100}xx").inc()

        async def on_error(_s: aiohttp.ClientSession, _c: SimpleNamespace, _p: Any) -> None:
            self.platform_errors.labels(interface, "network").inc()

        config.on_request_end.append(on_end)
        config.on_request_exception.append(on_error)
        return config

    async def render(self) -> bytes:
        """The exposition, with the database's gauges read now."""
        counts = await self.manager.sessions_by_status()
        for status in ("active", "idle", "finalized", "expired", "ended", *counts):
            self.sessions.labels(status).set(counts.get(status, 0))
        return generate_latest(self.registry)
