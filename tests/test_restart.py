"""A restart loses nothing: a new manager (new engines) over the same database sees
every session, message, summary, counter and state, and builds the same context."""

from __future__ import annotations

from memory.manager import SessionManager
from memory.types import ChatKey, Context, Role, SessionInfo, StoredMessage, SummaryRecord, Usage
from tests.conftest import ManagerFactory

TG = ChatKey("telegram", "42")
TG_TOPIC = ChatKey("telegram", "42", "3")
DC = ChatKey("discord", "77")
SYSTEM = "You are a patient assistant."


def line(i: int) -> str:
    """About 40 tokens, distinct per message."""
    return f"message {i}: the " + " ".join(f"word{i}x{j}" for j in range(9))


def usage_of(i: int) -> Usage:
    return Usage(100 + i, 10 + i, i, 2 * i, round(0.001 * i, 6))


async def converse(
    manager: SessionManager, sid: int, chat: ChatKey, start: int, count: int
) -> None:
    """User messages carry platform ids; assistant replies carry usage."""
    for i in range(start, start + count):
        if i % 2 == 0:
            await manager.add_message(
                sid,
                Role.USER,
                line(i),
                author_id="u7",
                author_name="Ann",
                chat=chat,
                platform_message_id=f"p{i}",
                metadata={"i": i},
            )
        else:
            await manager.add_message(sid, Role.ASSISTANT, line(i), usage=usage_of(i))


async def summarize(manager: SessionManager, sid: int) -> None:
    await manager.maybe_summarize(sid, system_prompt=SYSTEM)
    await manager.wait_for_summaries()


class View:
    """Everything a manager can tell about the sessions, for comparison."""

    def __init__(
        self,
        infos: list[SessionInfo],
        messages: dict[int, list[StoredMessage]],
        summaries: dict[int, list[SummaryRecord]],
        contexts: dict[int, Context],
        events: dict[int, list[tuple[str, str]]],
    ) -> None:
        self.infos = infos
        self.messages = messages
        self.summaries = summaries
        self.contexts = contexts
        self.events = events


async def view(manager: SessionManager) -> View:
    infos = await manager.list_sessions()
    ids = [s.id for s in infos]
    return View(
        infos,
        {sid: await manager.messages(sid) for sid in ids},
        {sid: await manager.summaries(sid, include_superseded=True) for sid in ids},
        {sid: await manager.build_context(sid, system_prompt=SYSTEM) for sid in ids},
        {sid: [(e["kind"], e["name"]) for e in await manager.store.events.of(sid)] for sid in ids},
    )


async def test_a_new_manager_sees_everything_the_old_one_wrote(
    make_manager: ManagerFactory,
) -> None:
    old = await make_manager()
    chat = await old.open(TG)
    topic = await old.open(TG_TOPIC)
    project = await old.create_project("novel", model="claude-x", system_prompt="be literary")
    await old.select_project(DC, "novel")
    shared = await old.open(DC)
    assert shared.project_id == project.id

    await converse(old, chat.id, TG, 0, 60)
    await summarize(old, chat.id)
    await converse(old, chat.id, TG, 60, 40)
    await summarize(old, chat.id)
    # Make sure the stack has a merged summary with a level-1 one on top of it.
    await old.fold(chat.id)
    assert await old.merge_if_needed(chat.id, force=True) is not None
    await converse(old, chat.id, TG, 100, 10)
    assert await old.fold(chat.id) is not None
    await converse(old, topic.id, TG_TOPIC, 0, 6)
    await converse(old, shared.id, DC, 0, 40)
    await summarize(old, shared.id)
    await old.update_state(chat.id, {"lang": "en", "tone": "dry", "n": [1, 2]})
    await old.update_state(chat.id, {"tone": None})
    await old.update_state(shared.id, {"chapter": 3})
    await old.record_tool_call(chat.id, "search", {"q": "owls"})
    await old.record_tool_call(chat.id, "fetch")
    await old.record_error(chat.id, "overloaded", {"status": 529})
    await old.record_tool_call(shared.id, "bash")
    assert old.note_calibration("claude-x", 1000, 1100) == 1.1
    await old.flush_calibration()

    # The set-up did what it meant to: folds, a merge, counters.
    chat_summaries = await old.summaries(chat.id, include_superseded=True)
    assert len(chat_summaries) >= 4
    stack = sorted(await old.summaries(chat.id), key=lambda s: s.first_seq)
    assert [s.level for s in stack][1:] == [1] and stack[0].level >= 2
    assert stack[0].first_seq == 1 and stack[1].first_seq == stack[0].last_seq + 1
    chat_info = await old.get(chat.id)
    assert chat_info.summarized_through > 100
    assert (chat_info.message_count, chat_info.last_seq) == (110, 110)
    assert (chat_info.tool_calls, chat_info.errors) == (2, 1)
    assert chat_info.state == {"lang": "en", "n": [1, 2]}
    expected_usage = Usage()
    for i in range(1, 110, 2):
        expected_usage = expected_usage + usage_of(i)
    assert chat_info.usage.input_tokens == expected_usage.input_tokens == 55 * 100 + 55 * 55
    assert chat_info.usage.output_tokens == expected_usage.output_tokens
    assert chat_info.usage.cache_read_tokens == expected_usage.cache_read_tokens
    assert chat_info.usage.cache_write_tokens == expected_usage.cache_write_tokens
    assert abs(chat_info.usage.cost_usd - expected_usage.cost_usd) < 1e-9
    assert len(await old.summaries(shared.id)) >= 1

    before = await view(old)
    old_stats = await old.global_stats()
    await old.close()
    await old.store.db.dispose()

    new = await make_manager()
    assert new.cache.misses == 0 and len(new.cache) == 0
    after = await view(new)
    assert after.infos == before.infos
    assert after.messages == before.messages
    assert after.summaries == before.summaries
    assert after.events == before.events
    assert after.contexts == before.contexts
    assert sum(len(m) for m in after.messages.values()) == 156
    assert [m.seq for m in after.messages[chat.id]] == list(range(1, 111))
    assert after.messages[chat.id][2].metadata == {"i": 2}
    assert after.messages[chat.id][3].usage == usage_of(3)
    assert after.messages[chat.id][0].platform_message_id == "p0"
    assert after.contexts[chat.id].summaries  # the folded history is in the context

    new_stats = await new.global_stats()
    assert (new_stats.sessions_total, new_stats.messages) == (3, 156)
    assert (new_stats.input_tokens, new_stats.output_tokens) == (
        old_stats.input_tokens,
        old_stats.output_tokens,
    )
    assert new.tokens.factor("claude-x") == 1.1  # calibration is loaded at start

    # Bindings and project selection survived too.
    assert (await new.open(TG)).id == chat.id
    assert (await new.open(TG_TOPIC)).id == topic.id
    assert (await new.open(DC)).id == shared.id
    active = await new.active_project(DC)
    assert active is not None and active.name == "novel"
    assert await new.active_project(TG) is None


async def test_a_redelivered_message_is_still_a_duplicate_after_restart(
    make_manager: ManagerFactory,
) -> None:
    old = await make_manager()
    session = await old.open(TG)
    await converse(old, session.id, TG, 0, 10)
    first = (await old.messages(session.id))[4]
    await old.close()
    await old.store.db.dispose()

    new = await make_manager()
    before = await new.get(session.id)
    again = await new.add_message(
        session.id, Role.USER, "redelivered text", chat=TG, platform_message_id="p4"
    )
    assert again.duplicate
    assert (again.seq, again.text, again.created_at) == (first.seq, first.text, first.created_at)
    assert await new.get(session.id) == before
    # The same id from another chat is a different message.
    other = await new.open(DC)
    fresh = await new.add_message(other.id, Role.USER, "hi", chat=DC, platform_message_id="p4")
    assert (fresh.duplicate, fresh.seq) == (False, 1)
    # And the next new message continues the sequence without a gap.
    nxt = await new.add_message(session.id, Role.USER, "next", chat=TG, platform_message_id="p10")
    assert (nxt.duplicate, nxt.seq) == (False, 11)
