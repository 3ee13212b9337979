"""DESIGN.md's invariants, each with a test that fails when it is broken."""

from __future__ import annotations

import asyncio
import gc
import itertools
from collections.abc import AsyncIterator, Sequence

from agents.base import AgentError, AgentEvent, AgentRequest
from conversation.access import Actor
from conversation.settings import AgentSettings
from conversation.turn import Outcome, Question, Turn
from memory.manager import SessionManager
from memory.summarizer import SummaryInput, SummaryText
from memory.tokens import MESSAGE_OVERHEAD
from memory.types import ChatKey, Role
from tests.conftest import ManagerFactory

KEY = ChatKey("telegram", "42")


def filler(i: int, words: int = 30) -> str:
    return f"message {i}: " + " ".join(f"word{i}x{j}" for j in range(words))


async def fill(manager: SessionManager, sid: int, count: int, *, start: int = 0) -> None:
    for i in range(start, start + count):
        role = Role.USER if i % 2 == 0 else Role.ASSISTANT
        await manager.add_message(sid, role, filler(i))


class FailingAgent:
    name = "failing"

    def stream(self, request: AgentRequest) -> AsyncIterator[AgentEvent]:
        return self._stream()

    async def _stream(self) -> AsyncIterator[AgentEvent]:
        raise AgentError("Claude is overloaded right now; please try again.", kind="overloaded")
        yield  # pragma: no cover - makes this an async generator


def turn_with(manager: SessionManager, agent: object) -> Turn:
    return Turn(manager, agent, AgentSettings())  # type: ignore[arg-type]


async def test_failed_agent_call_loses_nothing(manager: SessionManager) -> None:
    turn = turn_with(manager, FailingAgent())
    actor = Actor("telegram", "7", "Ann")
    result = await turn.handle(Question(KEY, actor, "please remember 31337", "m1"))
    assert result.outcome is Outcome.FAILED
    assert result.text == "Claude is overloaded right now; please try again."
    assert result.session_id is not None
    stored = await manager.messages(result.session_id)
    assert [(m.role, m.text) for m in stored] == [(Role.USER, "please remember 31337")]
    info = await manager.get(result.session_id)
    assert info.errors == 1
    events = await manager.store.events.of(result.session_id, "error")
    assert [e["name"] for e in events] == ["overloaded"]


async def test_same_platform_message_twice_is_handled_once(manager: SessionManager) -> None:
    from agents.offline import OfflineAgent

    turn = turn_with(manager, OfflineAgent())
    actor = Actor("telegram", "7", "Ann")
    first, second = await asyncio.gather(
        turn.handle(Question(KEY, actor, "hello", "update-1")),
        turn.handle(Question(KEY, actor, "hello", "update-1")),
    )
    assert sorted([first.outcome, second.outcome]) == [Outcome.DUPLICATE, Outcome.REPLIED]
    sid = first.session_id or second.session_id
    assert sid is not None
    stored = await manager.messages(sid)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT]


async def test_summarization_starts_at_the_threshold_and_not_below(
    manager: SessionManager,
) -> None:
    session = await manager.open(KEY)
    limit = manager.settings.token_limit
    threshold = manager.settings.summarize_threshold * limit
    i = 0
    while True:
        await manager.add_message(session.id, Role.USER, filler(i))
        i += 1
        stats = await manager.session_stats(session.id)
        started = await manager.maybe_summarize(session.id)
        if stats.context_tokens < threshold:
            assert not started, f"summarized at {stats.context_tokens} < {threshold}"
        else:
            assert started
            break
    await manager.wait_for_summaries()
    assert len(await manager.summaries(session.id)) >= 1


async def test_threshold_needs_the_minimum_message_count(make_manager: ManagerFactory) -> None:
    manager = await make_manager(min_messages_to_summarize=10, max_message_tokens=800)
    session = await manager.open(KEY)
    big = " ".join(f"token{j}" for j in range(200))
    count = 0
    while (await manager.session_stats(session.id)).budget_used < 0.7:
        await manager.add_message(session.id, Role.USER, big)
        count += 1
    assert count < 10
    assert not await manager.maybe_summarize(session.id)
    assert await manager.summaries(session.id) == []


async def test_summaries_cover_exact_contiguous_ranges_and_keep_newest_verbatim(
    manager: SessionManager,
) -> None:
    session = await manager.open(KEY)
    for i in range(120):
        await manager.add_message(session.id, Role.USER, filler(i))
        await manager.maybe_summarize(session.id)
        await manager.wait_for_summaries()
    records = await manager.summaries(session.id, include_superseded=True)
    level_one = sorted((r for r in records if r.level == 1), key=lambda r: r.first_seq)
    assert level_one, "no summary was written"
    expected = 1
    for record in level_one:
        assert record.first_seq == expected
        assert record.last_seq >= record.first_seq
        expected = record.last_seq + 1
    info = await manager.get(session.id)
    assert info.summarized_through == expected - 1
    # Nothing was deleted: every message is still stored.
    assert len(await manager.messages(session.id)) == 120
    context = await manager.build_context(session.id)
    newest = await manager.messages(session.id, after=info.summarized_through)
    assert [m.text for m in context.messages] == ["\n\n".join(m.text for m in newest)], (
        "the unsummarized messages are in the context verbatim"
    )


async def test_fold_takes_the_oldest_seventy_percent(manager: SessionManager) -> None:
    session = await manager.open(KEY)
    await fill(manager, session.id, 20)
    record = await manager.fold(session.id)
    assert record is not None
    assert (record.first_seq, record.last_seq) == (1, 14)  # 70% of 20, oldest first
    info = await manager.get(session.id)
    assert info.summarized_through == 14
    tail = await manager.messages(session.id, after=14)
    assert [m.seq for m in tail] == list(range(15, 21))


class GatedSummarizer:
    """Blocks until released, so a test can add messages while a summary is made."""

    name = "gated"
    reads_files = False

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.seen: list[int] = []

    async def summarize(self, messages: Sequence[SummaryInput], max_tokens: int) -> SummaryText:
        self.seen = [m.seq for m in messages]
        self.started.set()
        await self.release.wait()
        return SummaryText(f"summary of {self.seen[0]}-{self.seen[-1]}", self.name)

    async def merge(self, summaries: Sequence[str], max_tokens: int) -> SummaryText:
        return SummaryText(" | ".join(summaries), self.name)


async def test_messages_added_during_summarization_survive_unsummarized(
    make_manager: ManagerFactory,
) -> None:
    gate = GatedSummarizer()
    manager = await make_manager(summarizer=gate)
    session = await manager.open(KEY)
    await fill(manager, session.id, 40)
    assert await manager.maybe_summarize(session.id)
    await asyncio.wait_for(gate.started.wait(), 5)
    folded_through = gate.seen[-1]
    late = [f"late message {i} arrives mid-summary" for i in range(25)]
    await asyncio.gather(*(manager.add_message(session.id, Role.USER, t) for t in late))
    gate.release.set()
    await manager.wait_for_summaries()
    stored = await manager.messages(session.id)
    assert len(stored) == 65
    assert {m.text for m in stored} >= set(late)
    records = await manager.summaries(session.id, include_superseded=True)
    assert records[0].last_seq == folded_through
    late_seqs = sorted(m.seq for m in stored if m.text in late)
    assert all(seq > folded_through for seq in late_seqs)
    context = await manager.build_context(session.id)
    joined = "\n".join(m.text for m in context.messages)
    info = await manager.get(session.id)
    unsummarized_late = [
        m.text for m in stored if m.text in late and m.seq > info.summarized_through
    ]
    assert unsummarized_late, "late messages must not all be folded by the running summary"
    assert all(text in joined for text in unsummarized_late)


async def test_context_never_exceeds_the_budget(manager: SessionManager) -> None:
    session = await manager.open(KEY)
    system = "You are a careful assistant. " * 20
    for i in range(80):
        await manager.add_message(session.id, Role.USER if i % 2 else Role.ASSISTANT, filler(i))
        for budget in (600, 1000, 2000):
            context = await manager.build_context(session.id, system_prompt=system, budget=budget)
            assert context.estimated_tokens <= budget
            counted = manager.tokens.count(system) + sum(
                manager.tokens.count(s) for s in context.summaries
            )
            assert counted <= budget
        if i % 10 == 0:
            await manager.maybe_summarize(session.id)
            await manager.wait_for_summaries()
    context = await manager.build_context(session.id, system_prompt=system, budget=700)
    assert context.dropped_messages > 0
    assert context.messages[0].role is Role.USER
    recount = manager.tokens.count(system) + sum(manager.tokens.count(s) for s in context.summaries)
    recount += sum(manager.tokens.count(m.text) + MESSAGE_OVERHEAD for m in context.messages)
    assert recount <= 700


async def test_stacked_summaries_merge_into_a_higher_level(make_manager: ManagerFactory) -> None:
    manager = await make_manager(token_limit=4000, summary_max_tokens=300, summary_share=0.15)
    session = await manager.open(KEY)
    for i in range(400):
        await manager.add_message(session.id, Role.USER, filler(i))
        await manager.maybe_summarize(session.id)
        await manager.wait_for_summaries()
    everything = await manager.summaries(session.id, include_superseded=True)
    active = await manager.summaries(session.id)
    assert max(r.level for r in everything) >= 2, "summaries never merged"
    assert len(everything) > len(active), "merged summaries must be kept, superseded"
    info = await manager.get(session.id)
    assert sum(r.token_count for r in active) == info.summary_tokens
    assert info.summary_tokens <= 0.15 * 4000 + 300
    covered = sorted((r.first_seq, r.last_seq) for r in active)
    assert covered[0][0] == 1
    for (_, last), (first, _) in itertools.pairwise(covered):
        assert first == last + 1
    assert covered[-1][1] == info.summarized_through


async def test_cached_messages_stay_out_of_the_garbage_collectors_passes(
    manager: SessionManager,
) -> None:
    """A big cache must not lengthen full collections: its messages are untracked."""
    session = await manager.open(ChatKey("telegram", "gc"))
    await fill(manager, session.id, 6)  # appended to the entry cached at creation
    appended = manager.cache.peek(session.id)
    manager.cache.clear()
    await manager.build_context(session.id)  # loaded from the database
    loaded = manager.cache.peek(session.id)
    gc.collect()
    for entry in (appended, loaded):
        assert entry is not None and len(entry.tail) == 6
        assert not any(gc.is_tracked(message) for message in entry.tail)
