"""The Claude agent through the real anthropic SDK against a fake Messages API."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest

from agents.base import AgentError, AgentReply, AgentRequest, TextDelta
from agents.claude import ClaudeAgent
from agents.pricing import Pricing
from bots.app import Palaver
from bots.config import Config, load_config
from conversation.access import Actor
from conversation.turn import Outcome, Question
from memory.types import ChatKey, Context, ContextMessage, Role
from tests.fakes.anthropic_api import FakeAnthropic, count_tokens

KEY = ChatKey("telegram", "555")
ANN = Actor("telegram", "1", "Ann")
SUMMARIZER = "claude-haiku-4-5"


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic(min_cache_tokens=50) as server:
        yield server


async def start_app(tmp_path: Path, fake: FakeAnthropic, **env: str) -> Palaver:
    environ = {
        "ANTHROPIC_API_KEY": "test-key",
        "PALAVER_CLAUDE__BASE_URL": fake.url,
        "PALAVER_CLAUDE__RETRY_BASE_DELAY_S": "0.01",
        "PALAVER_CLAUDE__TIMEOUT_S": "5",
        "PALAVER_ACCESS__ALLOW_EVERYONE": "true",
        "PALAVER_RATE_LIMIT__BURST": "1000",
        "PALAVER_PALAVER__DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    config = load_config(_empty(tmp_path), environ=environ)
    app = Palaver(config)
    await app.start()
    return app


def _empty(tmp_path: Path) -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "palaver.toml"
    path.write_text("")
    return path


@pytest.fixture
async def app(tmp_path: Path, fake: FakeAnthropic) -> AsyncIterator[Palaver]:
    palaver = await start_app(tmp_path, fake)
    yield palaver
    await palaver.stop()


def message_requests(fake: FakeAnthropic, model: str | None = None) -> list[dict[str, Any]]:
    return [r for r in fake.requests if model is None or r["model"] == model]


async def say(app: Palaver, text: str, pid: str | None = None, **kw: Any) -> Any:
    streamed: list[str] = []

    async def progress(so_far: str) -> None:
        streamed.append(so_far)

    result = await app.turn.handle(Question(KEY, ANN, text, pid, **kw), on_progress=progress)
    return result, streamed


async def test_a_streamed_turn_records_usage_and_cost(app: Palaver, fake: FakeAnthropic) -> None:
    result, streamed = await say(app, "Hello Claude, please remember the number 8675309", "1")
    assert result.outcome is Outcome.REPLIED
    assert result.text.startswith("Echo: Hello Claude")
    assert len(streamed) > 1 and streamed[-1] == result.text  # arrived in pieces
    assert result.session_id is not None
    stored = await app.manager.messages(result.session_id)
    assert [m.role for m in stored] == [Role.USER, Role.ASSISTANT]
    usage = stored[1].usage
    assert usage is not None
    reported = fake.usage_log[-1]
    assert usage.input_tokens == reported["input_tokens"]
    assert usage.output_tokens == reported["output_tokens"]
    assert usage.cache_write_tokens == reported["cache_creation_input_tokens"]
    expected_cost = (
        usage.input_tokens * 3.0
        + usage.cache_write_tokens * 3.0 * 1.25
        + usage.cache_read_tokens * 3.0 * 0.1
        + usage.output_tokens * 15.0
    ) / 1e6
    assert usage.cost_usd == pytest.approx(expected_cost)
    info = await app.manager.get(result.session_id)
    assert info.usage.output_tokens == usage.output_tokens
    assert info.usage.cost_usd == pytest.approx(expected_cost)
    by_user = await app.manager.store.usage.totals("user")
    assert by_user["telegram:1"].cost_usd == pytest.approx(expected_cost)
    by_day = await app.manager.store.usage.totals("day")
    assert sum(u.output_tokens for u in by_day.values()) == usage.output_tokens


async def test_requests_carry_cache_breakpoints_roles_and_authors(
    app: Palaver, fake: FakeAnthropic
) -> None:
    fake.min_cache_tokens = 1  # a short conversation: cache even small prefixes
    group = ChatKey("telegram", "-100", None)
    bob = Actor("telegram", "2", "Bob")
    await app.turn.observe(Question(group, bob, "I vote for Lisbon", "1", group=True))
    await app.turn.handle(Question(group, ANN, "What did Bob vote for?", "2", group=True))
    await app.turn.handle(Question(group, ANN, "And me?", "3", group=True))
    body = message_requests(fake, "claude-sonnet-4-6")[-1]
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    roles = [m["role"] for m in body["messages"]]
    assert roles == ["user", "assistant", "user"]
    first = body["messages"][0]["content"][0]["text"]
    assert first == "[Bob] I vote for Lisbon\n\n[Ann] What did Bob vote for?"
    # The second turn reads the first turn's prefix from the cache.
    assert fake.usage_log[-1]["cache_read_input_tokens"] > 0


async def test_summaries_reach_the_request_once_seventy_percent_is_passed(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    app = await start_app(
        tmp_path,
        fake,
        PALAVER_MEMORY__TOKEN_LIMIT="3000",
        PALAVER_MEMORY__SUMMARY_MAX_TOKENS="200",
        PALAVER_MEMORY__MAX_MESSAGE_TOKENS="500",
    )
    try:
        for i in range(40):
            text = f"Fact {i}: the locker code for room R{i} is {1000 + i}. " + "Noted. " * 20
            await say(app, text, str(i))
            await app.manager.wait_for_summaries()
        summarizer_calls = message_requests(fake, SUMMARIZER)
        assert summarizer_calls, "the small model wrote no summary"
        assert "Summarize messages 1-" in summarizer_calls[0]["messages"][0]["content"]
        body = message_requests(fake, "claude-sonnet-4-6")[-1]
        system_text = "\n".join(block["text"] for block in body["system"])
        assert "Summary of the earlier conversation" in system_text
        for used in fake.usage_log:
            total = (
                used["input_tokens"]
                + used["cache_read_input_tokens"]
                + used["cache_creation_input_tokens"]
            )
            assert total <= 3000
        session = await app.manager.find_by_chat(KEY)
        assert session is not None
        summaries = await app.manager.summaries(session.id)
        assert summaries and all(not s.fallback for s in summaries)
        assert summaries[0].summarizer == f"claude:{SUMMARIZER}"
        assert app.manager.tokens.factor("claude-sonnet-4-6") != 1.0  # calibration fed
    finally:
        await app.stop()


@pytest.mark.parametrize(
    ("status", "times", "outcome", "words"),
    [
        (429, 1, Outcome.REPLIED, "Echo:"),
        (500, 2, Outcome.REPLIED, "Echo:"),
        (529, 1, Outcome.REPLIED, "Echo:"),
        (429, 9, Outcome.FAILED, "rate-limiting this bot"),
        (529, 9, Outcome.FAILED, "overloaded right now"),
        (500, 9, Outcome.FAILED, "had a problem answering"),
    ],
)
async def test_api_failures_are_retried_then_told_plainly(
    app: Palaver, fake: FakeAnthropic, status: int, times: int, outcome: Outcome, words: str
) -> None:
    fake.fail_next(status, times=times, retry_after=0 if status == 429 else None)
    result, _ = await say(app, "are you there?", "1")
    assert result.outcome is outcome
    assert words in result.text
    assert result.session_id is not None
    stored = await app.manager.messages(result.session_id)
    assert stored[0].text == "are you there?"
    events = await app.manager.store.events.of(result.session_id, "error")
    assert len(events) == (1 if outcome is Outcome.FAILED else 0)
    fake.reset()
    again, _ = await say(app, "and now?", "2")
    assert again.outcome is Outcome.REPLIED  # the next turn works


async def test_a_long_retry_after_is_not_waited_for(app: Palaver, fake: FakeAnthropic) -> None:
    fake.fail_next(429, retry_after=600)
    result, _ = await say(app, "hello", "1")
    assert result.outcome is Outcome.FAILED
    assert "try again in about 600 s" in result.text
    assert len(fake.requests) == 1


async def test_timeout_and_connection_errors(tmp_path: Path, fake: FakeAnthropic) -> None:
    app = await start_app(
        tmp_path, fake, PALAVER_CLAUDE__TIMEOUT_S="0.3", PALAVER_CLAUDE__MAX_RETRIES="1"
    )
    try:
        fake.hang_next(2)
        fake.hang_next(2)
        result, _ = await say(app, "slow?", "1")
        assert result.outcome is Outcome.FAILED
        assert "took too long" in result.text
    finally:
        await app.stop()
    closed = await start_app(
        tmp_path / "b",
        fake,
        PALAVER_CLAUDE__BASE_URL="http://127.0.0.1:9",
        PALAVER_CLAUDE__MAX_RETRIES="1",
    )
    try:
        result, _ = await say(closed, "anyone?", "1")
        assert result.outcome is Outcome.FAILED
        assert "couldn't connect to Claude" in result.text
    finally:
        await closed.stop()


async def test_a_bad_key_logs_once_for_the_operator(
    tmp_path: Path, fake: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    app = await start_app(tmp_path, fake, ANTHROPIC_API_KEY="sk-wrong-key-123")
    try:
        with caplog.at_level(logging.ERROR):
            first, _ = await say(app, "hi", "1")
            second, _ = await say(app, "hi again", "2")
    finally:
        await app.stop()
    assert first.outcome is Outcome.FAILED and second.outcome is Outcome.FAILED
    assert "API key was rejected" in first.text
    assert "sk-wrong-key-123" not in first.text
    operator_lines = [r for r in caplog.records if "ANTHROPIC_API_KEY" in r.getMessage()]
    assert len(operator_lines) == 1
    assert all("sk-wrong-key-123" not in r.getMessage() for r in caplog.records)


async def test_a_broken_stream_keeps_the_message_and_the_next_turn_works(
    app: Palaver, fake: FakeAnthropic
) -> None:
    fake.fail_mid_stream(after_chunks=2)
    result, streamed = await say(app, "tell me a long story about the sea", "1")
    assert streamed, "some text had arrived before the break"
    assert result.outcome is Outcome.FAILED
    assert "broke off midway" in result.text
    assert result.session_id is not None
    assert [m.role for m in await app.manager.messages(result.session_id)] == [Role.USER]
    # What the broken answer cost is charged all the same: the caps count it.
    session = await app.manager.get(result.session_id)
    assert session.usage.output_tokens > 0 and session.usage.cost_usd > 0
    [error] = await app.manager.store.events.of(result.session_id, "error")
    assert error["billed_to"] == "telegram:1" and error["cost_usd"] == session.usage.cost_usd
    assert await app.manager.spent_today("telegram:1") == pytest.approx(session.usage.cost_usd)
    again, _ = await say(app, "try again", "2")
    assert again.outcome is Outcome.REPLIED


async def test_prompt_too_long_summarizes_and_retries_once(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    app = await start_app(
        tmp_path,
        fake,
        PALAVER_MEMORY__TOKEN_LIMIT="100000",
        PALAVER_MEMORY__MIN_MESSAGES_TO_SUMMARIZE="4",
    )
    try:
        for i in range(12):
            await say(app, f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 40, str(i))
        fake.context_window = 2500  # the model's real window is smaller than we thought
        result, _ = await say(app, "now summarize everything", "x")
        assert result.outcome is Outcome.REPLIED, result.text
        assert result.session_id is not None
        summaries = await app.manager.summaries(result.session_id)
        assert summaries, "the turn summarized before retrying"
        events = await app.manager.store.events.of(result.session_id, "error")
        assert [e["name"] for e in events] == ["prompt_too_long"]
        await app.manager.flush_calibration()
        estimated, reported = (await app.manager.store.usage.load_calibration())[
            "claude-sonnet-4-6"
        ]
        assert estimated > 0 and reported > 0  # the API's count fed the calibration
    finally:
        await app.stop()


async def test_spend_caps_refuse_without_calling_the_api(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    app = await start_app(
        tmp_path,
        fake,
        PALAVER_CLAUDE__PRICES="{ default = [100000.0, 100000.0] }",
        PALAVER_SPEND__SESSION_USD="1.0",
        PALAVER_SPEND__USER_DAILY_USD="0",
    )
    try:
        first, _ = await say(app, "expensive hello", "1")
        assert first.outcome is Outcome.REPLIED
        calls = len(fake.requests)
        second, _ = await say(app, "again", "2")
        assert second.outcome is Outcome.OVER_BUDGET
        assert "spending limit ($1.00)" in second.text
        assert len(fake.requests) == calls
        assert second.session_id is not None
        texts = [m.text for m in await app.manager.messages(second.session_id)]
        assert texts[-1] == "again"  # stored all the same
    finally:
        await app.stop()
    daily = await start_app(
        tmp_path / "d",
        fake,
        PALAVER_CLAUDE__PRICES="{ default = [100000.0, 100000.0] }",
        PALAVER_SPEND__SESSION_USD="0",
        PALAVER_SPEND__USER_DAILY_USD="1.0",
    )
    try:
        await say(daily, "one", "1")
        await daily.manager.reset(KEY)
        calls = len(fake.requests)
        capped, _ = await say(daily, "two, in a fresh session", "2")
        assert capped.outcome is Outcome.OVER_BUDGET
        assert "today's spending limit ($1.00)" in capped.text
        assert len(fake.requests) == calls
    finally:
        await daily.stop()


async def test_a_failing_summarizer_falls_back_then_upgrades(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    app = await start_app(
        tmp_path,
        fake,
        PALAVER_MEMORY__TOKEN_LIMIT="3000",
        PALAVER_MEMORY__SUMMARY_MAX_TOKENS="200",
        PALAVER_MEMORY__MAX_MESSAGE_TOKENS="500",
        PALAVER_CLAUDE__BREAKER_FAILURES="1",
        PALAVER_CLAUDE__BREAKER_RESET_S="1",
    )

    def summarizer_down(body: dict[str, Any]) -> str:
        if body["model"] == SUMMARIZER:
            raise RuntimeError("summarizer down")
        last: str = body["messages"][-1]["content"][-1]["text"]
        return "ok: " + last[:40]

    try:
        session_id = None
        for i in range(60):
            text = f"Item {i}: order ORD-{i:04d} ships to Oslo. " + "Details follow. " * 15
            result, _ = await say(app, text, str(i))
            session_id = result.session_id
            await app.manager.wait_for_summaries()
            if session_id and await app.manager.summaries(session_id):
                break
            if i == 5:
                fake.responder = summarizer_down
        assert session_id is not None
        summaries = await app.manager.summaries(session_id)
        assert summaries and summaries[0].fallback
        assert summaries[0].summarizer == "extractive"
        assert "ORD-" in summaries[0].text
        fake.responder = None
        import asyncio

        await asyncio.sleep(1.1)  # the breaker half-opens
        assert await app.manager.upgrade_fallbacks(session_id) >= 1
        upgraded = await app.manager.summaries(session_id)
        assert not upgraded[0].fallback
        assert upgraded[0].summarizer == f"claude:{SUMMARIZER}"
    finally:
        await app.stop()


# -- what a failed attempt cost --------------------------------------------------------------


def claude_agent(tmp_path: Path, fake: FakeAnthropic, **env: str) -> tuple[ClaudeAgent, Config]:
    """The agent exactly as the application builds it, against the fake."""
    environ = {
        "ANTHROPIC_API_KEY": fake.api_key,
        "PALAVER_CLAUDE__BASE_URL": fake.url,
        "PALAVER_CLAUDE__RETRY_BASE_DELAY_S": "0.01",
        "PALAVER_CLAUDE__TIMEOUT_S": "0.5",
        "PALAVER_PALAVER__DATA_DIR": str(tmp_path / "data"),
        **env,
    }
    config = load_config(_empty(tmp_path), environ=environ)
    agent, _, _ = Palaver(config).build_claude()
    assert isinstance(agent, ClaudeAgent)
    return agent, config


def story_request() -> AgentRequest:
    text = "tell me a long story about the sea, the ships, the storms and the harbours"
    context = Context(1, "Be brief.", (), (ContextMessage(Role.USER, text),), 40, 10_000, 0)
    return AgentRequest(context, "claude-sonnet-4-6", 1024, session_id=1)


async def run_stream(agent: ClaudeAgent) -> tuple[list[str], AgentReply | None]:
    deltas: list[str] = []
    reply: AgentReply | None = None
    async for event in agent.stream(story_request()):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
        else:
            reply = event
    return deltas, reply


@pytest.mark.parametrize(
    ("how", "kind"), [("error", "stream_broken"), ("drop", "stream_broken"), ("stall", "timeout")]
)
async def test_a_broken_stream_carries_what_it_cost(
    tmp_path: Path, fake: FakeAnthropic, how: Literal["error", "drop", "stall"], kind: str
) -> None:
    """Input as message_start reported it, output as far as the text went: the caps
    count what the API charged for an answer the user never got whole."""
    agent, config = claude_agent(tmp_path, fake)
    fake.fail_mid_stream(after_chunks=3, how=how, seconds=3.0)
    deltas: list[str] = []
    with pytest.raises(AgentError) as caught:
        async for event in agent.stream(story_request()):
            assert isinstance(event, TextDelta)
            deltas.append(event.text)
    error = caught.value
    assert error.kind == kind
    assert len(deltas) == 3
    reported = fake.usage_log[-1]
    assert error.usage is not None
    assert error.usage.input_tokens == reported["input_tokens"] > 0
    assert error.usage.cache_write_tokens == reported["cache_creation_input_tokens"]
    assert error.usage.cache_read_tokens == reported["cache_read_input_tokens"]
    assert error.usage.output_tokens == count_tokens("".join(deltas)) > 1
    assert error.usage.cost_usd == pytest.approx(
        Pricing(config.claude).cost("claude-sonnet-4-6", error.usage)
    )
    assert error.usage.cost_usd > 0


@pytest.mark.parametrize("how", ["error", "drop", "stall"])
async def test_an_attempt_that_failed_after_message_start_is_added_to_the_reply(
    tmp_path: Path, fake: FakeAnthropic, how: Literal["error", "drop", "stall"]
) -> None:
    """message_start came (input counted, one output token), then the attempt failed
    before any text: it is retried, and the reply's usage is both attempts'."""
    agent, config = claude_agent(tmp_path, fake)
    fake.fail_mid_stream(after_chunks=0, how=how, seconds=3.0)
    _, reply = await run_stream(agent)
    assert reply is not None and reply.text.startswith("Echo: tell me")
    assert len(fake.requests) == 2
    first, second = fake.usage_log
    assert reply.usage is not None
    assert reply.usage.input_tokens == first["input_tokens"] + second["input_tokens"]
    assert reply.usage.cache_read_tokens == (
        first["cache_read_input_tokens"] + second["cache_read_input_tokens"]
    )
    assert reply.usage.output_tokens == 1 + second["output_tokens"]  # message_start's 1
    assert reply.usage.cost_usd == pytest.approx(
        Pricing(config.claude).cost("claude-sonnet-4-6", reply.usage)
    )


async def test_an_attempt_with_no_answer_at_all_costs_nothing(
    tmp_path: Path, fake: FakeAnthropic
) -> None:
    """Timed out before the API said a word: no usage was reported, none is invented."""
    agent, _ = claude_agent(tmp_path, fake, PALAVER_CLAUDE__MAX_RETRIES="0")
    fake.hang_next(3)
    with pytest.raises(AgentError) as caught:
        await run_stream(agent)
    assert caught.value.kind == "timeout"
    assert caught.value.usage is None
