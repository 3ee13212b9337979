"""Property tests: context building and summary ranges hold for any input."""

from __future__ import annotations

import asyncio
import itertools
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memory.context import Block, TailMessage, build_context
from memory.database import migrate, open_database
from memory.errors import InvalidMessage
from memory.manager import SessionManager
from memory.settings import DatabaseSettings, MemorySettings
from memory.store import Store
from memory.tokens import MESSAGE_OVERHEAD, TokenCounter
from memory.types import ChatKey, Role

roles = st.sampled_from([r.value for r in (Role.USER, Role.ASSISTANT, Role.SYSTEM, Role.TOOL)])
tails = st.lists(
    st.tuples(
        roles,
        st.integers(1, 400),
        st.text(min_size=1, max_size=20),
        st.one_of(st.none(), st.sampled_from(["Ann", "Bob"])),
    ),
    max_size=60,
)
blocks = st.lists(st.builds(Block, st.text(max_size=10), st.integers(0, 300)), max_size=6)


@given(
    tail=tails,
    summaries=blocks,
    system=st.integers(0, 500),
    budget=st.integers(200, 6000),
    factor=st.floats(0.5, 2.0),
)
def test_context_is_within_budget_and_valid_for_the_api(
    tail: list[TailMessage], summaries: list[Block], system: int, budget: int, factor: float
) -> None:
    try:
        context = build_context(
            1,
            system=Block("s", system),
            summaries=summaries,
            tail=tail,
            budget=budget,
            factor=factor,
        )
    except InvalidMessage:
        newest = tail[-1][1] + MESSAGE_OVERHEAD if tail else 0
        assert system + newest > int(budget / factor)  # only when it truly cannot fit
        return
    assert context.estimated_tokens <= budget
    if tail and tail[-1][0] != Role.ASSISTANT.value:
        # The newest message is always there, kept whole, at the end.
        assert context.messages
        assert context.messages[-1].text.endswith(tail[-1][2])
    for first, second in itertools.pairwise(context.messages):
        assert first.role is not second.role
    if context.messages:
        assert context.messages[0].role is Role.USER
    kept_from = len(summaries) - context.dropped_summaries
    assert context.summaries == tuple(s.text for s in summaries[len(summaries) - kept_from :])


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sizes=st.lists(st.integers(1, 120), min_size=5, max_size=120), fraction=st.floats(0.3, 0.9))
def test_summary_ranges_are_exact_contiguous_and_lose_nothing(
    sizes: list[int], fraction: float
) -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            database = open_database(f"sqlite+aiosqlite:///{tmp}/p.db", DatabaseSettings())
            await migrate(database)
            manager = SessionManager(
                Store(database),
                TokenCounter(),
                MemorySettings(
                    token_limit=1500,
                    summary_max_tokens=100,
                    max_message_tokens=400,
                    min_messages_to_summarize=3,
                    summarize_fraction=fraction,
                ),
            )
            session = await manager.open(ChatKey("console", "p"))
            for i, size in enumerate(sizes):
                text = f"m{i} " + " ".join(f"w{j}" for j in range(size))
                await manager.add_message(session.id, Role.USER, text)
                await manager.maybe_summarize(session.id)
                if i % 7 == 0:
                    await manager.wait_for_summaries()
            await manager.wait_for_summaries()
            info = await manager.get(session.id)
            stored = await manager.messages(session.id)
            assert [m.seq for m in stored] == list(range(1, len(sizes) + 1))
            level_one = sorted(
                (
                    r
                    for r in await manager.summaries(session.id, include_superseded=True)
                    if r.level == 1
                ),
                key=lambda r: r.first_seq,
            )
            expected = 1
            for record in level_one:
                assert record.first_seq == expected
                assert record.token_count <= 100
                expected = record.last_seq + 1
            assert expected - 1 == info.summarized_through
            unsummarized = sum(m.token_count for m in stored if m.seq > info.summarized_through)
            assert info.unsummarized_tokens == unsummarized
            await manager.close()
            await database.dispose()

    asyncio.run(scenario())
