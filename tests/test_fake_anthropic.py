"""Conformance of the fake Messages API with the real ``anthropic`` SDK.

If the SDK parses the fake's answers and maps its errors to the same exception classes as
the real service, tests built on the fake say something about production behaviour.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from anthropic import AsyncAnthropic

from tests.fakes.anthropic_api import FakeAnthropic, count_tokens

MODEL = "claude-sonnet-4-6"
LONG_SYSTEM = "You are Palaver, a careful and friendly assistant. " * 200  # ~2000 tokens


@pytest.fixture
async def fake() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as server:
        yield server


def client_for(fake: FakeAnthropic, **kwargs: Any) -> AsyncAnthropic:
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("api_key", "test-key")
    return AsyncAnthropic(base_url=fake.url, **kwargs)


def user(text: str) -> Any:
    """Plain dicts, as our context builder sends; ``Any`` spares the SDK's TypedDicts."""
    return [{"role": "user", "content": text}]


async def test_non_streaming_create(fake: FakeAnthropic) -> None:
    client = client_for(fake)
    msg = await client.messages.create(
        model=MODEL, max_tokens=100, system="Be brief.", messages=user("hello there")
    )
    assert msg.id.startswith("msg_")
    assert msg.type == "message" and msg.role == "assistant" and msg.model == MODEL
    assert msg.content[0].type == "text" and msg.content[0].text == "Echo: hello there"
    assert msg.stop_reason == "end_turn" and msg.stop_sequence is None
    expected_input = count_tokens("Be brief.") + count_tokens("hello there") + 3
    assert msg.usage.input_tokens == expected_input
    assert msg.usage.output_tokens == count_tokens("Echo: hello there")
    assert msg.usage.cache_read_input_tokens == 0
    assert msg.usage.cache_creation_input_tokens == 0
    assert msg._request_id is not None and msg._request_id.startswith("req_")
    assert fake.requests[-1]["system"] == "Be brief."
    assert fake.request_headers[-1]["authorization"] == "Bearer test-key"
    assert fake.usage_log[-1]["input_tokens"] == expected_input


async def test_max_tokens_truncates(fake: FakeAnthropic) -> None:
    fake.responder = lambda body: "one two three four five six seven eight"
    msg = await client_for(fake).messages.create(model=MODEL, max_tokens=3, messages=user("x"))
    assert msg.stop_reason == "max_tokens" and msg.usage.output_tokens == 3


async def test_streaming_with_async_responder(fake: FakeAnthropic) -> None:
    reply = "The quick brown fox jumps over the lazy dog, twice and then once more."

    async def responder(body: dict[str, Any]) -> str:
        await asyncio.sleep(0)
        return reply

    fake.responder = responder
    client = client_for(fake)
    async with client.messages.stream(model=MODEL, max_tokens=200, messages=user("go")) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 2 and "".join(pieces) == reply
    assert final.content[0].type == "text" and final.content[0].text == reply
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == count_tokens(reply)
    assert final.usage.input_tokens == count_tokens("go") + 3


async def test_raw_stream_event_sequence(fake: FakeAnthropic) -> None:
    client = client_for(fake)
    stream = await client.messages.create(
        model=MODEL, max_tokens=50, messages=user("a b c d e f g h"), stream=True
    )
    kinds = [event.type async for event in stream]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert kinds.count("content_block_delta") >= 2


async def test_prompt_cache_accounting(fake: FakeAnthropic) -> None:
    client = client_for(fake)
    system: Any = [{"type": "text", "text": LONG_SYSTEM, "cache_control": {"type": "ephemeral"}}]
    first = await client.messages.create(
        model=MODEL, max_tokens=50, system=system, messages=user("hi")
    )
    assert first.usage.cache_creation_input_tokens == count_tokens(LONG_SYSTEM)
    assert first.usage.cache_read_input_tokens == 0
    assert first.usage.input_tokens == count_tokens("hi") + 3

    second = await client.messages.create(
        model=MODEL, max_tokens=50, system=system, messages=user("hi")
    )
    assert second.usage.cache_read_input_tokens == count_tokens(LONG_SYSTEM)
    assert second.usage.cache_creation_input_tokens == 0
    assert second.usage.input_tokens == count_tokens("hi") + 3
    assert fake.requests[-1]["system"][0]["cache_control"] == {"type": "ephemeral"}


async def test_cache_moving_breakpoint_min_length_and_ttl() -> None:
    now = [0.0]
    async with FakeAnthropic(clock=lambda: now[0]) as fake:
        client = client_for(fake)
        cc: Any = {"type": "ephemeral"}
        turn1: Any = [
            {
                "role": "user",
                "content": [{"type": "text", "text": LONG_SYSTEM, "cache_control": cc}],
            }
        ]
        first = await client.messages.create(model=MODEL, max_tokens=20, messages=turn1)
        created = first.usage.cache_creation_input_tokens
        assert created and created > 1024
        # The conversation grows and the breakpoint moves to the newest message: the old
        # prefix is still found by the lookback, only the new tail is written.
        turn2: Any = [
            {"role": "user", "content": [{"type": "text", "text": LONG_SYSTEM}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "more", "cache_control": cc}]},
        ]
        second = await client.messages.create(model=MODEL, max_tokens=20, messages=turn2)
        assert second.usage.cache_read_input_tokens == created
        assert (
            second.usage.cache_creation_input_tokens
            == count_tokens("ok") + count_tokens("more") + 6
        )
        assert second.usage.input_tokens == 0
        # Entries expire after the TTL.
        now[0] += 301
        third = await client.messages.create(model=MODEL, max_tokens=20, messages=turn2)
        assert third.usage.cache_read_input_tokens == 0
        # Prefixes below min_cache_tokens are never cached.
        short: Any = [
            {"role": "user", "content": [{"type": "text", "text": "tiny", "cache_control": cc}]}
        ]
        for _ in range(2):
            msg = await client.messages.create(model=MODEL, max_tokens=20, messages=short)
            assert msg.usage.cache_creation_input_tokens == 0
            assert msg.usage.cache_read_input_tokens == 0


async def test_too_many_breakpoints(fake: FakeAnthropic) -> None:
    block: Any = {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}
    with pytest.raises(anthropic.BadRequestError, match="maximum of 4 blocks"):
        await client_for(fake).messages.create(
            model=MODEL, max_tokens=5, system=[block] * 5, messages=user("hi")
        )


async def test_rate_limit_surfaces_and_retry_honours_retry_after(fake: FakeAnthropic) -> None:
    fake.fail_next(429, retry_after=0)
    with pytest.raises(anthropic.RateLimitError) as info:
        await client_for(fake).messages.create(model=MODEL, max_tokens=5, messages=user("hi"))
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "0"
    body: Any = info.value.body
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": body["error"]["message"]},
        "request_id": info.value.request_id,
    }

    fake.fail_next(429, retry_after=1)
    started = time.monotonic()
    msg = await client_for(fake, max_retries=1).messages.create(
        model=MODEL, max_tokens=5, messages=user("hi")
    )
    assert time.monotonic() - started >= 0.9  # the client waited as retry-after said
    assert msg.content[0].type == "text"
    assert len(fake.requests) == 3  # the failed call plus the failure and its retry


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (529, anthropic.OverloadedError),
        (500, anthropic.InternalServerError),
        (401, anthropic.AuthenticationError),
        (400, anthropic.BadRequestError),
    ],
)
async def test_scripted_failures_map_to_sdk_errors(
    fake: FakeAnthropic, status: int, error_class: type[anthropic.APIStatusError]
) -> None:
    fake.fail_next(status, message="scripted")
    with pytest.raises(error_class, match="scripted") as info:
        await client_for(fake).messages.create(model=MODEL, max_tokens=5, messages=user("hi"))
    assert info.value.status_code == status
    msg = await client_for(fake).messages.create(model=MODEL, max_tokens=5, messages=user("hi"))
    assert msg.stop_reason == "end_turn"  # only the next request fails


async def test_wrong_api_key(fake: FakeAnthropic) -> None:
    with pytest.raises(anthropic.AuthenticationError):
        await client_for(fake, api_key="nope").messages.create(
            model=MODEL, max_tokens=5, messages=user("hi")
        )


async def test_prompt_too_long() -> None:
    async with FakeAnthropic(context_window=50) as fake:
        with pytest.raises(anthropic.BadRequestError, match=r"prompt is too long: \d+ tokens > 50"):
            await client_for(fake).messages.create(
                model=MODEL, max_tokens=5, messages=user("word " * 100)
            )


async def test_mid_stream_error(fake: FakeAnthropic) -> None:
    fake.responder = lambda body: " ".join(f"w{i}" for i in range(30))
    fake.fail_mid_stream(after_chunks=2)
    client = client_for(fake)
    received: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as info:
        async with client.messages.stream(model=MODEL, max_tokens=100, messages=user("x")) as s:
            async for text in s.text_stream:
                received.append(text)
    assert len(received) == 2
    body: Any = info.value.body
    assert body["error"]["type"] == "overloaded_error"


async def test_hang_causes_client_timeout(fake: FakeAnthropic) -> None:
    fake.hang_next(30)
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        await client_for(fake, timeout=0.5).messages.create(
            model=MODEL, max_tokens=5, messages=user("hi")
        )
    assert time.monotonic() - started < 30  # the client gave up before the hang ended


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([*user("a"), *user("b")], "roles must alternate"),
        ([{"role": "assistant", "content": "a"}], 'first message must use the "user" role'),
        ([{"role": "system", "content": "a"}], "Input should be 'user' or 'assistant'"),
        ([], "at least one message"),
        ([{"role": "user", "content": ""}], "non-empty content"),
        ([{"role": "user", "content": [{"type": "text", "text": " "}]}], "non-whitespace"),
    ],
)
async def test_validation(fake: FakeAnthropic, messages: list[Any], fragment: str) -> None:
    with pytest.raises(anthropic.BadRequestError, match=fragment) as info:
        await client_for(fake).messages.create(model=MODEL, max_tokens=5, messages=messages)
    body: Any = info.value.body
    assert body["error"]["type"] == "invalid_request_error"


async def test_prefill_final_assistant_allowed(fake: FakeAnthropic) -> None:
    messages: Any = [*user("hi"), {"role": "assistant", "content": "Sure,"}]
    msg = await client_for(fake).messages.create(model=MODEL, max_tokens=20, messages=messages)
    assert msg.content[0].type == "text"


async def test_count_tokens(fake: FakeAnthropic) -> None:
    result = await client_for(fake).messages.count_tokens(
        model=MODEL, system="sys", messages=user("count me please")
    )
    assert result.input_tokens == count_tokens("sys") + count_tokens("count me please") + 3
    assert fake.requests == []  # count_tokens is recorded separately
    assert len(fake.count_token_requests) == 1


async def test_concurrent_requests_overlap(fake: FakeAnthropic) -> None:
    fake.latency = 0.5
    client = client_for(fake)
    started = time.monotonic()
    results = await asyncio.gather(
        *(
            client.messages.create(model=MODEL, max_tokens=20, messages=user(f"n{i}"))
            for i in range(50)
        )
    )
    assert time.monotonic() - started < 50 * 0.5  # one at a time would take 25 s
    assert {r.content[0].text for r in results if r.content[0].type == "text"} == {
        f"Echo: n{i}" for i in range(50)
    }
