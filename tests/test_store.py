"""Every Store operation, against real databases (SQLite always, PostgreSQL when set)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from memory.errors import PalaverError, ProjectNotFound, SessionNotFound
from memory.manager import SessionManager
from memory.store import NewMessage, SessionDelta, Store, utcnow
from memory.store.rows import bindings, events, job_runs, messages, sessions, summaries
from memory.types import ChatKey, Role, SessionInfo, SessionStatus, StoredMessage, Usage

TG = ChatKey("telegram", "100")
TG_TOPIC = ChatKey("telegram", "100", "7")
DC = ChatKey("discord", "555")
DAY = timedelta(days=1)


@pytest.fixture
def store(manager: SessionManager) -> Store:
    return manager.store


async def open_(store: Store, key: ChatKey, *, force_new: bool = False) -> SessionInfo:
    return await store.sessions.open(key, expire_after=DAY, carry_summary=True, force_new=force_new)


def msg(
    sid: int,
    text: str,
    tokens: int,
    *,
    role: Role = Role.USER,
    key: ChatKey | None = None,
    pid: str | None = None,
    usage: Usage | None = None,
    metadata: dict[str, Any] | None = None,
) -> NewMessage:
    return NewMessage(
        session_id=sid,
        role=role,
        text=text,
        token_count=tokens,
        author_id="u1" if role is Role.USER else None,
        author_name="Ann" if role is Role.USER else None,
        chat_ref=key.ref if key else None,
        platform_message_id=pid,
        metadata=metadata,
        usage=usage,
    )


async def stored(store: Store, items: list[NewMessage]) -> list[StoredMessage]:
    outcome = await store.messages.append(items)
    out: list[StoredMessage] = []
    for result in outcome.results:
        assert isinstance(result, StoredMessage), result
        out.append(result)
    return out


async def set_columns(store: Store, sid: int, **values: Any) -> None:
    async with store.db.writer.begin() as conn:
        await conn.execute(update(sessions).where(sessions.c.id == sid).values(**values))


async def count_rows(store: Store, table: Any, sid: int | None = None) -> int:
    query = select(func.count()).select_from(table)
    if sid is not None:
        query = query.where(table.c.session_id == sid)
    async with store.db.reader.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


# -- projects ------------------------------------------------------------------------


async def test_projects_create_get_list(store: Store) -> None:
    beta = await store.projects.create(
        "beta",
        agent_kind="code",
        model="claude-x",
        system_prompt="be brief",
        token_limit=5000,
        workdir="/tmp/beta",
        settings={"tools": ["bash"]},
    )
    alpha = await store.projects.create("alpha")
    assert beta.name == "beta"
    assert (beta.agent_kind, beta.model, beta.system_prompt) == ("code", "claude-x", "be brief")
    assert (beta.token_limit, beta.workdir, beta.settings) == (
        5000,
        "/tmp/beta",
        {"tools": ["bash"]},
    )
    assert (alpha.agent_kind, alpha.model, alpha.token_limit, alpha.settings) == (
        "chat",
        None,
        None,
        {},
    )
    assert await store.projects.get(name="beta") == beta
    assert await store.projects.get(id=alpha.id) == alpha
    assert [p.name for p in await store.projects.all()] == ["alpha", "beta"]
    with pytest.raises(ProjectNotFound, match="no project named 'gamma'"):
        await store.projects.get(name="gamma")
    with pytest.raises(ProjectNotFound):
        await store.projects.get(id=alpha.id + beta.id + 100)


async def test_duplicate_project_name_is_refused_and_writes_nothing(store: Store) -> None:
    first = await store.projects.create("alpha", model="m1")
    with pytest.raises((IntegrityError, PalaverError)):
        await store.projects.create("alpha", model="m2")
    assert await store.projects.all() == [first]


async def test_duplicate_project_name_error_is_a_palaver_error(store: Store) -> None:
    await store.projects.create("alpha")
    with pytest.raises(PalaverError, match="a project named 'alpha' already exists"):
        await store.projects.create("alpha")


# -- bindings and sessions -------------------------------------------------------------


async def test_open_session_same_key_same_session(store: Store) -> None:
    first = await open_(store, TG)
    again = await open_(store, TG)
    topic = await open_(store, TG_TOPIC)
    other = await open_(store, DC)
    assert again.id == first.id
    assert len({first.id, topic.id, other.id}) == 3
    assert (first.scope, first.chat_ref, first.project_id) == ("chat", "telegram:100:", None)
    assert (first.interface, first.status, first.version) == ("telegram", SessionStatus.ACTIVE, 1)
    assert (first.message_count, first.last_seq, first.context_start) == (0, 0, 1)
    assert topic.chat_ref == "telegram:100:7"
    assert other.interface == "discord"
    assert await store.sessions.current(TG) == (first, None)
    assert await store.sessions.current(ChatKey("telegram", "never")) == (None, None)
    assert [e["name"] for e in await store.events.of(first.id, "lifecycle")] == ["created"]


async def test_current_session_reads_every_column_as_get_session_does(store: Store) -> None:
    """current_session has its own read path on SQLite: it must agree field for field."""
    session = await open_(store, TG)
    await stored(
        store,
        [
            msg(session.id, "question", 5, key=TG, pid="m1"),
            msg(session.id, "answer", 7, role=Role.ASSISTANT, usage=Usage(120, 30, 80, 10, 0.0042)),
        ],
    )
    await store.events.update_state(session.id, {"lang": "en", "deep": {"a": [1, 2]}})
    await set_columns(
        store,
        session.id,
        carried_summary="carried over",
        closing_summary="closing",
        ended_at=utcnow(),
    )
    current, project = await store.sessions.current(TG)
    assert project is None
    assert current == await store.sessions.get(session.id)
    assert current is not None and current.usage.cost_usd == pytest.approx(0.0042)
    assert current.state == {"lang": "en", "deep": {"a": [1, 2]}}
    assert current.ended_at is not None and current.ended_at.tzinfo is not None


async def test_spend_sums_one_users_cost_since_a_moment(store: Store) -> None:
    session = await open_(store, TG)

    def reply(cost: float, user: str | None) -> NewMessage:
        return NewMessage(
            session.id,
            Role.ASSISTANT,
            "answer",
            3,
            usage=Usage(10, 5, cost_usd=cost),
            billed_to=user,
        )

    await stored(store, [reply(0.25, "telegram:1"), reply(0.5, "telegram:2"), reply(1.0, None)])
    await stored(store, [reply(0.125, "telegram:1")])
    # The first reply was yesterday's.
    async with store.db.writer.begin() as conn:
        await conn.execute(
            update(messages)
            .where(messages.c.session_id == session.id, messages.c.seq == 1)
            .values(created_at=utcnow() - DAY)
        )
    midnight = utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    assert await store.usage.spent(billed_to="telegram:1", since=midnight) == pytest.approx(0.125)
    assert await store.usage.spent(
        billed_to="telegram:1", since=utcnow() - 2 * DAY
    ) == pytest.approx(0.375)
    assert await store.usage.spent(billed_to="telegram:2", since=midnight) == pytest.approx(0.5)
    assert await store.usage.spent(billed_to="nobody", since=midnight) == 0.0
    # A failed call's cost, kept with its error, counts too (and in the session's totals).
    before = await store.sessions.get(session.id)
    await store.events.record(
        session.id,
        "error",
        "stream_broken",
        usage=Usage(7, 3, cost_usd=0.0625),
        billed_to="telegram:2",
    )
    assert await store.usage.spent(billed_to="telegram:2", since=midnight) == pytest.approx(0.5625)
    after = await store.sessions.get(session.id)
    assert after.usage.cost_usd == pytest.approx(before.usage.cost_usd + 0.0625)
    assert after.usage.output_tokens == before.usage.output_tokens + 3


async def test_force_new_ends_the_old_session_and_binds_a_new_one(store: Store) -> None:
    old = await open_(store, TG)
    await stored(store, [msg(old.id, "keep me", 3)])
    new = await open_(store, TG, force_new=True)
    assert new.id != old.id
    ended = await store.sessions.get(old.id)
    assert ended.status is SessionStatus.ENDED
    assert ended.ended_at is not None
    assert ended.version == old.version + 2  # the append, then the end
    assert (new.status, new.message_count, new.carried_summary) == (
        SessionStatus.ACTIVE,
        0,
        None,
    )
    current, _ = await store.sessions.current(TG)
    assert current is not None and current.id == new.id
    assert (await open_(store, TG)).id == new.id
    assert [m.text for m in await store.messages.read(old.id)] == ["keep me"]
    assert [e["name"] for e in await store.events.of(new.id)] == ["reset"]


async def test_active_project_is_shared_across_interfaces(store: Store) -> None:
    private = await open_(store, TG)
    project = await store.projects.create("book")
    await store.projects.set_active(TG, project.id)
    await store.projects.set_active(DC, project.id)
    from_tg = await open_(store, TG)
    from_dc = await open_(store, DC)
    assert from_tg.id == from_dc.id != private.id
    assert (from_tg.scope, from_tg.project_id, from_tg.chat_ref) == ("project", project.id, None)
    assert from_tg.interface == "telegram"  # the interface that started it
    assert await store.sessions.current(DC) == (from_tg, await store.projects.get(id=project.id))
    # A reset from one chat ends the project session for every chat that selects it.
    fresh = await open_(store, DC, force_new=True)
    assert (await store.sessions.get(from_tg.id)).status is SessionStatus.ENDED
    assert (await open_(store, TG)).id == fresh.id
    # Back to no project: the chat's own private session again.
    await store.projects.set_active(TG, None)
    assert (await open_(store, TG)).id == private.id
    assert await store.sessions.current(TG) == (await store.sessions.get(private.id), None)


async def test_open_session_expires_a_stale_session_and_carries_its_closing_summary(
    store: Store,
) -> None:
    old = await open_(store, TG)
    await store.sessions.set_status(
        old.id, SessionStatus.FINALIZED, closing_summary="we spoke of owls"
    )
    await set_columns(store, old.id, last_activity_at=utcnow() - DAY - timedelta(seconds=5))
    new = await open_(store, TG)
    assert new.id != old.id
    assert new.carried_summary == "we spoke of owls"
    expired = await store.sessions.get(old.id)
    assert expired.status is SessionStatus.EXPIRED
    assert expired.ended_at is not None
    assert expired.closing_summary == "we spoke of owls"


# -- messages ----------------------------------------------------------------------------


async def test_append_assigns_gapless_seqs_and_updates_counters(store: Store) -> None:
    session = await open_(store, TG)
    u1 = Usage(100, 20, 5, 7, 0.25)
    u2 = Usage(300, 40, 0, 3, 0.5)
    first = await store.messages.append(
        [
            msg(session.id, "hi", 3, metadata={"reply_to": 9}),
            msg(session.id, "hello!", 5, role=Role.ASSISTANT, usage=u1),
            msg(session.id, "what now", 4),
        ]
    )
    assert first.deltas == {session.id: SessionDelta(session.id, 1, 2)}
    second = await store.messages.append(
        [
            msg(session.id, "a note", 2, role=Role.SYSTEM),
            msg(session.id, "answer", 11, role=Role.ASSISTANT, usage=u2),
        ]
    )
    assert second.deltas == {session.id: SessionDelta(session.id, 2, 3)}
    results = [r for r in first.results + second.results if isinstance(r, StoredMessage)]
    assert [r.seq for r in results] == [1, 2, 3, 4, 5]
    assert [r.duplicate for r in results] == [False] * 5
    assert results[0].metadata == {"reply_to": 9}
    assert results[1].usage == u1 and results[0].usage is None

    info = await store.sessions.get(session.id)
    assert (info.message_count, info.last_seq, info.version) == (5, 5, 3)
    assert (info.message_tokens, info.unsummarized_tokens) == (25, 25)
    assert info.usage == Usage(400, 60, 5, 10, 0.75)
    assert info.status is SessionStatus.ACTIVE
    assert info.last_activity_at >= session.last_activity_at

    read = await store.messages.read(session.id)
    assert [(m.seq, m.role, m.text, m.token_count) for m in read] == [
        (1, Role.USER, "hi", 3),
        (2, Role.ASSISTANT, "hello!", 5),
        (3, Role.USER, "what now", 4),
        (4, Role.SYSTEM, "a note", 2),
        (5, Role.ASSISTANT, "answer", 11),
    ]
    assert (read[0].author_id, read[0].author_name, read[0].metadata) == (
        "u1",
        "Ann",
        {"reply_to": 9},
    )
    assert read[1].usage == u1 and read[4].usage == u2 and read[2].usage is None


async def test_append_spreads_one_batch_over_sessions(store: Store) -> None:
    a = await open_(store, TG)
    b = await open_(store, DC)
    outcome = await store.messages.append(
        [msg(a.id, "a1", 1), msg(b.id, "b1", 2), msg(a.id, "a2", 3), msg(b.id, "b2", 4)]
    )
    assert [(r.session_id, r.seq) for r in outcome.results if isinstance(r, StoredMessage)] == [
        (a.id, 1),
        (b.id, 1),
        (a.id, 2),
        (b.id, 2),
    ]
    assert outcome.deltas == {a.id: SessionDelta(a.id, 1, 2), b.id: SessionDelta(b.id, 1, 2)}
    assert (await store.sessions.get(a.id)).message_tokens == 4
    assert (await store.sessions.get(b.id)).message_tokens == 6


async def test_duplicate_platform_id_within_one_batch(store: Store) -> None:
    session = await open_(store, TG)
    results = await stored(
        store,
        [
            msg(session.id, "first", 3, key=TG, pid="m1"),
            msg(session.id, "first again", 4, key=TG, pid="m1"),
            msg(session.id, "second", 5, key=TG, pid="m2"),
        ],
    )
    assert [(r.seq, r.text, r.duplicate) for r in results] == [
        (1, "first", False),
        (1, "first", True),
        (2, "second", False),
    ]
    info = await store.sessions.get(session.id)
    assert (info.message_count, info.last_seq, info.message_tokens) == (2, 2, 8)
    assert [m.text for m in await store.messages.read(session.id)] == ["first", "second"]


async def test_duplicate_platform_id_across_batches_writes_nothing(store: Store) -> None:
    session = await open_(store, TG)
    await stored(store, [msg(session.id, "original", 3, key=TG, pid="m1")])
    before = await store.sessions.get(session.id)
    outcome = await store.messages.append(
        [msg(session.id, "redelivered", 9, key=TG, pid="m1", usage=Usage(5, 5))]
    )
    assert outcome.deltas == {}
    [again] = outcome.results
    assert isinstance(again, StoredMessage)
    assert (again.seq, again.text, again.token_count, again.duplicate) == (1, "original", 3, True)
    assert again.platform_message_id == "m1"
    assert await store.sessions.get(session.id) == before
    assert await count_rows(store, messages, session.id) == 1


async def test_same_platform_id_in_two_chats_is_not_a_duplicate(store: Store) -> None:
    tg = await open_(store, TG)
    dc = await open_(store, DC)
    [in_tg, in_dc] = await stored(
        store,
        [
            msg(tg.id, "from telegram", 3, key=TG, pid="42"),
            msg(dc.id, "from discord", 3, key=DC, pid="42"),
        ],
    )
    [in_topic] = await stored(store, [msg(tg.id, "from a topic", 3, key=TG_TOPIC, pid="42")])
    assert (in_tg.duplicate, in_dc.duplicate, in_topic.duplicate) == (False, False, False)
    assert (in_tg.seq, in_dc.seq, in_topic.seq) == (1, 1, 2)
    assert [m.text for m in await store.messages.read(tg.id)] == ["from telegram", "from a topic"]


async def test_append_to_a_missing_session_fails_that_item_only(store: Store) -> None:
    session = await open_(store, TG)
    outcome = await store.messages.append(
        [msg(session.id, "ok 1", 2), msg(session.id + 999, "lost?", 2), msg(session.id, "ok 2", 2)]
    )
    first, missing, second = outcome.results
    assert isinstance(first, StoredMessage) and first.seq == 1
    assert isinstance(missing, SessionNotFound)
    assert str(missing) == f"session {session.id + 999} does not exist"
    assert isinstance(second, StoredMessage) and second.seq == 2
    assert outcome.deltas == {session.id: SessionDelta(session.id, 1, 2)}
    assert (await store.sessions.get(session.id)).message_count == 2


async def test_messages_after_and_through(store: Store) -> None:
    session = await open_(store, TG)
    await stored(store, [msg(session.id, f"m{i}", 1) for i in range(1, 11)])
    assert [m.seq for m in await store.messages.read(session.id, after=7)] == [8, 9, 10]
    assert [m.seq for m in await store.messages.read(session.id, through=3)] == [1, 2, 3]
    assert [m.seq for m in await store.messages.read(session.id, after=4, through=6)] == [5, 6]
    assert await store.messages.read(session.id, after=10) == []
    assert await store.messages.read(session.id + 1) == []


# -- snapshot and summaries -----------------------------------------------------------------


async def test_snapshot_tail_follows_summaries(store: Store) -> None:
    session = await open_(store, TG)
    await stored(store, [msg(session.id, f"m{i}", i) for i in range(1, 9)])
    snap = await store.messages.snapshot(session.id)
    assert snap.tail_seqs == list(range(1, 9))
    assert snap.summaries == [] and snap.session.last_seq == 8
    written = await store.summaries.add(
        session.id,
        expected_through=0,
        first_seq=1,
        last_seq=5,
        text="one to five",
        token_count=6,
        summarizer="test",
        fallback=False,
    )
    assert written is not None
    snap = await store.messages.snapshot(session.id)
    assert snap.tail_seqs == [6, 7, 8]
    assert [s.text for s in snap.summaries] == ["one to five"]
    with pytest.raises(SessionNotFound):
        await store.messages.snapshot(session.id + 999)


async def test_add_summary_moves_the_range_and_token_counters(store: Store) -> None:
    session = await open_(store, TG)
    await stored(store, [msg(session.id, f"m{i}", 10 + i) for i in range(1, 11)])
    before = await store.sessions.get(session.id)
    assert before.unsummarized_tokens == sum(10 + i for i in range(1, 11)) == 155
    written = await store.summaries.add(
        session.id,
        expected_through=0,
        first_seq=1,
        last_seq=4,
        text="summary 1-4",
        token_count=9,
        summarizer="extractive",
        fallback=True,
    )
    assert written is not None
    record, delta = written
    assert (record.first_seq, record.last_seq, record.level) == (1, 4, 1)
    assert (record.text, record.token_count, record.summarizer, record.fallback) == (
        "summary 1-4",
        9,
        "extractive",
        True,
    )
    assert delta == SessionDelta(session.id, before.version, before.version + 1)
    info = await store.sessions.get(session.id)
    assert info.summarized_through == 4
    assert info.unsummarized_tokens == 155 - (11 + 12 + 13 + 14)
    assert (info.summary_tokens, info.message_tokens, info.message_count) == (9, 155, 10)
    assert await store.summaries.of(session.id) == [record]
    assert len(await store.messages.read(session.id)) == 10  # nothing deleted

    # Stale plans write nothing: wrong expected_through, wrong start, beyond the end.
    for expected, first, last in ((0, 1, 6), (4, 6, 8), (4, 5, 11)):
        assert (
            await store.summaries.add(
                session.id,
                expected_through=expected,
                first_seq=first,
                last_seq=last,
                text="stale",
                token_count=3,
                summarizer="test",
                fallback=False,
            )
            is None
        )
    assert await store.sessions.get(session.id) == info
    assert await count_rows(store, summaries, session.id) == 1

    second = await store.summaries.add(
        session.id,
        expected_through=4,
        first_seq=5,
        last_seq=7,
        text="summary 5-7",
        token_count=5,
        summarizer="test",
        fallback=False,
    )
    assert second is not None
    info = await store.sessions.get(session.id)
    assert (info.summarized_through, info.summary_tokens) == (7, 14)
    assert info.unsummarized_tokens == 18 + 19 + 20


async def add_level1(store: Store, sid: int, first: int, last: int, tokens: int) -> int:
    info = await store.sessions.get(sid)
    written = await store.summaries.add(
        sid,
        expected_through=info.summarized_through,
        first_seq=first,
        last_seq=last,
        text=f"s{first}-{last}",
        token_count=tokens,
        summarizer="test",
        fallback=False,
    )
    assert written is not None
    return written[0].id


async def test_merge_summaries_supersedes_without_deleting(store: Store) -> None:
    session = await open_(store, TG)
    await stored(store, [msg(session.id, f"m{i}", 10) for i in range(1, 13)])
    a = await add_level1(store, session.id, 1, 4, 20)
    b = await add_level1(store, session.id, 5, 7, 30)
    before = await store.sessions.get(session.id)
    assert before.summary_tokens == 50
    written = await store.summaries.merge(
        session.id,
        merged_ids=[a, b],
        text="merged 1-7",
        token_count=25,
        summarizer="t",
        fallback=False,
    )
    assert written is not None
    merged, delta = written
    assert (merged.first_seq, merged.last_seq, merged.level, merged.text) == (1, 7, 2, "merged 1-7")
    assert delta == SessionDelta(session.id, before.version, before.version + 1)
    info = await store.sessions.get(session.id)
    assert info.summary_tokens == 25
    assert info.summarized_through == 7 and info.unsummarized_tokens == before.unsummarized_tokens
    assert [s.id for s in await store.summaries.of(session.id)] == [merged.id]
    everything = await store.summaries.of(session.id, include_superseded=True)
    assert [(s.id, s.level) for s in everything] == [(a, 1), (b, 1), (merged.id, 2)]
    async with store.db.reader.connect() as conn:
        superseded = dict(
            (await conn.execute(select(summaries.c.id, summaries.c.superseded_by))).all()
        )
    assert superseded == {a: merged.id, b: merged.id, merged.id: None}

    # A plan made before the merge is stale now: nothing is written.
    assert (
        await store.summaries.merge(
            session.id, merged_ids=[a, b], text="x", token_count=1, summarizer="t", fallback=False
        )
        is None
    )
    assert await store.sessions.get(session.id) == info

    c = await add_level1(store, session.id, 8, 10, 15)
    again = await store.summaries.merge(
        session.id,
        merged_ids=[merged.id, c],
        text="1-10",
        token_count=30,
        summarizer="t",
        fallback=True,
    )
    assert again is not None
    top = again[0]
    assert (top.first_seq, top.last_seq, top.level, top.fallback) == (1, 10, 3, True)
    assert (await store.sessions.get(session.id)).summary_tokens == 30
    assert await count_rows(store, summaries, session.id) == 5


# -- state, events, lifecycle ---------------------------------------------------------------


async def test_update_state_merges_and_none_removes(store: Store) -> None:
    session = await open_(store, TG)
    state, delta = await store.events.update_state(
        session.id, {"lang": "en", "n": 1, "deep": {"a": [1]}}
    )
    assert state == {"lang": "en", "n": 1, "deep": {"a": [1]}}
    assert delta == SessionDelta(session.id, 1, 2)
    state, _ = await store.events.update_state(
        session.id, {"n": None, "mood": "calm", "absent": None}
    )
    assert state == {"lang": "en", "deep": {"a": [1]}, "mood": "calm"}
    info = await store.sessions.get(session.id)
    assert info.state == state and info.version == 3
    with pytest.raises(SessionNotFound):
        await store.events.update_state(session.id + 999, {"x": 1})


async def test_record_event_counts_tool_calls_and_errors(store: Store) -> None:
    session = await open_(store, TG)
    await store.events.record(session.id, "tool_call", "search", {"q": "owls"})
    await store.events.record(session.id, "tool_call", "fetch")
    await store.events.record(session.id, "error", "overloaded", {"status": 529})
    delta = await store.events.record(session.id, "lifecycle", "note")
    assert delta == SessionDelta(session.id, 4, 5)
    info = await store.sessions.get(session.id)
    assert (info.tool_calls, info.errors, info.version) == (2, 1, 5)
    tools = await store.events.of(session.id, "tool_call")
    assert [(e["name"], e["detail"]) for e in tools] == [("search", {"q": "owls"}), ("fetch", None)]
    assert [e["name"] for e in await store.events.of(session.id, "error")] == ["overloaded"]
    assert [e["kind"] for e in await store.events.of(session.id)] == [
        "lifecycle",
        "tool_call",
        "tool_call",
        "error",
        "lifecycle",
    ]
    with pytest.raises(SessionNotFound):
        await store.events.record(session.id + 999, "error", "x")


async def test_set_status_records_closing_summary_and_end_time(store: Store) -> None:
    session = await open_(store, TG)
    await store.sessions.set_status(session.id, SessionStatus.IDLE)
    assert (await store.sessions.get(session.id)).status is SessionStatus.IDLE
    await store.sessions.set_status(session.id, SessionStatus.FINALIZED, closing_summary="bye")
    info = await store.sessions.get(session.id)
    assert (info.status, info.closing_summary, info.ended_at) == (
        SessionStatus.FINALIZED,
        "bye",
        None,
    )
    async with store.db.reader.connect() as conn:
        finalized_at = (
            await conn.execute(select(sessions.c.finalized_at).where(sessions.c.id == session.id))
        ).scalar_one()
    assert finalized_at is not None
    await store.sessions.set_status(session.id, SessionStatus.EXPIRED)
    info = await store.sessions.get(session.id)
    assert info.status is SessionStatus.EXPIRED and info.ended_at is not None
    assert info.closing_summary == "bye"
    names = [e["name"] for e in await store.events.of(session.id, "lifecycle")]
    assert names == ["created", "idle", "finalized", "expired"]


async def test_mark_idle_and_expire_by_last_activity(store: Store) -> None:
    fresh = await open_(store, TG)
    quiet = await open_(store, DC)
    old = await open_(store, TG_TOPIC)
    ended = await open_(store, ChatKey("console", "local"))
    now = utcnow()
    await set_columns(store, quiet.id, last_activity_at=now - timedelta(hours=1))
    await set_columns(store, old.id, last_activity_at=now - timedelta(days=2))
    await set_columns(store, ended.id, last_activity_at=now - timedelta(days=2))
    await store.sessions.set_status(ended.id, SessionStatus.ENDED)

    idle = await store.sessions.mark_idle(now - timedelta(minutes=30))
    assert sorted(idle) == sorted([quiet.id, old.id])
    assert (await store.sessions.get(fresh.id)).status is SessionStatus.ACTIVE
    assert (await store.sessions.get(quiet.id)).status is SessionStatus.IDLE
    assert (await store.sessions.get(quiet.id)).version == quiet.version + 1
    assert await store.sessions.mark_idle(now - timedelta(minutes=30)) == []  # idle stays idle

    await store.sessions.set_status(old.id, SessionStatus.FINALIZED, closing_summary="c")
    assert await store.sessions.expire(now - DAY) == [old.id]
    expired = await store.sessions.get(old.id)
    assert expired.status is SessionStatus.EXPIRED and expired.ended_at is not None
    assert (await store.sessions.get(ended.id)).status is SessionStatus.ENDED
    assert (await store.sessions.get(quiet.id)).status is SessionStatus.IDLE
    assert await store.sessions.expire(now - DAY) == []


async def test_delete_ended_removes_only_those_sessions(store: Store) -> None:
    keep = await open_(store, TG)
    doomed = await open_(store, DC)
    recent_end = await open_(store, TG_TOPIC)
    for sid in (keep.id, doomed.id, recent_end.id):
        await stored(store, [msg(sid, "a", 2), msg(sid, "b", 2), msg(sid, "c", 2)])
        await add_level1(store, sid, 1, 2, 3)
        await store.events.record(sid, "tool_call", "t")
    await store.sessions.set_status(doomed.id, SessionStatus.EXPIRED)
    await store.sessions.set_status(recent_end.id, SessionStatus.ENDED)
    long_ago = utcnow() - timedelta(days=40)
    await set_columns(store, doomed.id, last_activity_at=long_ago, ended_at=long_ago)
    # Active sessions are never deleted, however old.
    await set_columns(store, keep.id, last_activity_at=long_ago)

    assert await store.sessions.delete_ended(utcnow() - timedelta(days=30)) == 1
    with pytest.raises(SessionNotFound):
        await store.sessions.get(doomed.id)
    for table in (messages, summaries, events):
        assert await count_rows(store, table, doomed.id) == 0
        assert await count_rows(store, table, keep.id) > 0
        assert await count_rows(store, table, recent_end.id) > 0
    assert await count_rows(store, messages) == 6
    assert await store.sessions.current(DC) == (None, None)
    async with store.db.reader.connect() as conn:
        bound = (
            await conn.execute(
                select(bindings.c.current_session_id).where(bindings.c.chat_ref == DC.ref)
            )
        ).scalar_one()
    assert bound is None
    # The unbound chat simply gets a new session.
    assert (await open_(store, DC)).id not in (keep.id, doomed.id, recent_end.id)
    assert await store.sessions.delete_ended(utcnow() - timedelta(days=30)) == 0


async def test_delete_ended_unbinds_a_project(store: Store) -> None:
    project = await store.projects.create("p")
    await store.projects.set_active(TG, project.id)
    session = await open_(store, TG)
    await store.sessions.set_status(session.id, SessionStatus.EXPIRED)
    long_ago = utcnow() - timedelta(days=40)
    await set_columns(store, session.id, last_activity_at=long_ago, ended_at=long_ago)
    assert await store.sessions.delete_ended(utcnow() - timedelta(days=30)) == 1
    assert await store.sessions.current(TG) == (None, project)
    fresh = await open_(store, TG)
    assert (fresh.scope, fresh.project_id) == ("project", project.id)


# -- stats, calibration, jobs, listing ------------------------------------------------------


async def test_global_stats(store: Store) -> None:
    assert await store.usage.global_counts() == {
        "sessions_total": 0,
        "messages": 0,
        "input_tokens": 0,
        "output_tokens": 0,
        "cache_read_tokens": 0,
        "cache_write_tokens": 0,
        "cost_usd": 0.0,
        "sessions_active": 0,
        "by_interface": {},
    }
    a = await open_(store, TG)
    b = await open_(store, TG_TOPIC)
    c = await open_(store, DC)
    await stored(
        store,
        [
            msg(a.id, "q", 1),
            msg(a.id, "r", 1, role=Role.ASSISTANT, usage=Usage(10, 2, 3, 4, 0.5)),
            msg(c.id, "q", 1),
            msg(c.id, "r", 1, role=Role.ASSISTANT, usage=Usage(20, 4, 6, 8, 0.25)),
            msg(b.id, "q", 1),
        ],
    )
    await store.sessions.set_status(b.id, SessionStatus.ENDED)
    stats = await store.usage.global_counts()
    assert stats == {
        "sessions_total": 3,
        "messages": 5,
        "input_tokens": 30,
        "output_tokens": 6,
        "cache_read_tokens": 9,
        "cache_write_tokens": 12,
        "cost_usd": 0.75,
        "sessions_active": 2,
        "by_interface": {"telegram": 2, "discord": 1},
    }


async def test_calibration_add_and_load(store: Store) -> None:
    assert await store.usage.load_calibration() == {}
    assert await store.usage.add_calibration("sonnet", 100, 110) == (100, 110)
    assert await store.usage.add_calibration("sonnet", 50, 40) == (150, 150)
    assert await store.usage.add_calibration("haiku", 10, 12) == (10, 12)
    assert await store.usage.load_calibration() == {"sonnet": (150, 150), "haiku": (10, 12)}


async def test_job_runs_start_and_finish(store: Store) -> None:
    first = await store.jobs.start("finalize_idle")
    second = await store.jobs.start("cleanup")
    assert first != second
    await store.jobs.finish(first, "ok", {"finalized": 3})
    await store.jobs.finish(second, "failed", None, "the database failed")
    async with store.db.reader.connect() as conn:
        rows = {r["id"]: r for r in (await conn.execute(select(job_runs))).mappings()}
    assert (rows[first]["job"], rows[first]["outcome"], rows[first]["counts"]) == (
        "finalize_idle",
        "ok",
        {"finalized": 3},
    )
    assert rows[first]["error"] is None and rows[first]["ended_at"] is not None
    assert (rows[second]["outcome"], rows[second]["counts"], rows[second]["error"]) == (
        "failed",
        None,
        "the database failed",
    )
    assert rows[first]["started_at"] <= rows[first]["ended_at"]


async def test_list_sessions_filters(store: Store) -> None:
    project = await store.projects.create("p")
    a = await open_(store, TG)
    b = await open_(store, DC)
    await store.projects.set_active(TG_TOPIC, project.id)
    c = await open_(store, TG_TOPIC)
    now = utcnow()
    await set_columns(store, a.id, last_activity_at=now - timedelta(hours=3))
    await set_columns(store, b.id, last_activity_at=now - timedelta(hours=2))
    await set_columns(store, c.id, last_activity_at=now - timedelta(hours=1))
    await store.sessions.set_status(b.id, SessionStatus.IDLE)

    def ids(found: list[SessionInfo]) -> list[int]:
        return [s.id for s in found]

    assert ids(await store.sessions.find()) == [c.id, b.id, a.id]  # newest activity first
    assert ids(await store.sessions.find(status=SessionStatus.ACTIVE)) == [c.id, a.id]
    assert ids(await store.sessions.find(interface="telegram")) == [c.id, a.id]
    assert ids(await store.sessions.find(chat_ref=TG.ref)) == [a.id]
    assert ids(await store.sessions.find(project_id=project.id)) == [c.id]
    assert ids(await store.sessions.find(active_since=now - timedelta(minutes=150))) == [c.id, b.id]
    assert ids(await store.sessions.find(limit=2)) == [c.id, b.id]
    assert ids(await store.sessions.find(limit=2, offset=2)) == [a.id]
    assert await store.sessions.find(status=SessionStatus.EXPIRED) == []


async def test_session_version_and_missing_sessions(store: Store) -> None:
    session = await open_(store, TG)
    assert await store.sessions.version(session.id) == 1
    await stored(store, [msg(session.id, "x", 1)])
    assert await store.sessions.version(session.id) == 2
    missing = session.id + 999
    assert await store.sessions.version(missing) is None
    with pytest.raises(SessionNotFound):
        await store.sessions.get(missing)
    with pytest.raises(SessionNotFound):
        await store.sessions.set_status(missing, SessionStatus.IDLE)
