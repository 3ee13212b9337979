"""The Telegram interface end to end: the real python-telegram-bot Application and the real
anthropic SDK, talking over HTTP to the fake Bot API and the fake Messages API, with the
whole Palaver application (database, memory, turn, commands) in between."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import bots.telegram_outbound as telegram_outbound
from agents.settings import ClaudeSettings
from bots.app import Palaver
from bots.config import Config, PalaverSettings, Secrets, TelegramSettings
from bots.http_settings import HttpSettings
from bots.telegram_bot import TelegramBot
from conversation.delivery import REFUSED
from conversation.settings import AccessSettings, AgentSettings, RateLimitSettings
from memory.errors import PalaverError
from memory.settings import DatabaseSettings
from memory.types import ChatKey, Delivery, Role
from run import serve
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.telegram_api import JSON, FakeTelegram, parse_html, utf16_len

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "123:ABC"
ANN, BOB, ADMIN, STRANGER = 1001, 1002, 4242, 7777
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, strict_html_entities=True) as fake:
        yield fake


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


@dataclass
class Bot:
    tg: FakeTelegram
    claude: FakeAnthropic
    app: Palaver
    telegram: TelegramBot

    async def history(self, key: ChatKey) -> list[tuple[Role, str]]:
        session = await self.app.manager.find_by_chat(key)
        assert session is not None
        return [(m.role, m.text) for m in await self.app.manager.messages(session.id)]

    def last_prompt(self) -> list[JSON]:
        messages: list[JSON] = self.claude.requests[-1]["messages"]
        return messages


def make_config(
    tmp_path: Path,
    url: str,
    tg: FakeTelegram,
    claude: FakeAnthropic,
    *,
    telegram: dict[str, Any] | None = None,
    rate_limit: RateLimitSettings | None = None,
    access: AccessSettings | None = None,
    max_tokens: int = 1024,
    max_concurrent_turns: int = 1024,
) -> Config:
    return Config(
        palaver=PalaverSettings(data_dir=tmp_path, max_concurrent_turns=max_concurrent_turns),
        database=DatabaseSettings(url=url),
        access=access
        or AccessSettings(
            allowed_users=[str(c) for c in range(1, 400)] + [f"telegram:{ANN}", str(BOB)],
            admins=[f"telegram:{ADMIN}"],
        ),
        rate_limit=rate_limit or RateLimitSettings(per_minute=600, burst=50),
        agent=AgentSettings(max_tokens=max_tokens),
        claude=ClaudeSettings(base_url=claude.url, max_retries=0),
        telegram=TelegramSettings(
            base_url=tg.base_url,
            base_file_url=tg.base_file_url,
            **{"draft_interval_s": 0.05, "edit_interval_s": 0.2, **(telegram or {})},
        ),
        secrets=Secrets(
            telegram_bot_token=SecretStr(TOKEN), anthropic_api_key=SecretStr(claude.api_key)
        ),
    )


@asynccontextmanager
async def running(
    tmp_path: Path, url: str, tg: FakeTelegram, claude: FakeAnthropic, **options: Any
) -> AsyncIterator[Bot]:
    app = Palaver(make_config(tmp_path, url, tg, claude, **options))
    await app.start()
    try:
        (interface,) = app.build_interfaces()
        assert isinstance(interface, TelegramBot)
        await interface.start()
        try:
            yield Bot(tg, claude, app, interface)
        finally:
            await app.close_interfaces([interface], 5.0)
    finally:
        await app.stop()


@pytest.fixture
async def bot(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> AsyncIterator[Bot]:
    async with running(tmp_path, sqlite_url, tg, claude) as started:
        yield started


def texts(tg: FakeTelegram, chat_id: int, thread: int | None = None) -> list[str]:
    return [str(m.get("text", m.get("caption", ""))) for m in tg.messages(chat_id, thread)]


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    """Poll ``predicate``: for state the Telegram fake cannot wake us on (the model's)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - the fakes have no shared event to wait on
            await asyncio.sleep(0.01)


async def settle(tg: FakeTelegram, seconds: float = 0.3) -> None:
    """Let the bot finish what the fake sent it (all updates confirmed, then a pause)."""
    await tg.wait_for(lambda: not tg.updates)
    await asyncio.sleep(seconds)


# -- private chats -------------------------------------------------------------------------------


async def test_a_private_turn_is_answered_stored_and_shown_typing(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(tmp_path, db_url, tg, claude) as b:
        tg.user_message(ANN, "hello there", first_name="Ann")
        reply = await tg.wait_for_message(ANN, contains="Echo: hello there")
        assert "reply_to_message" not in reply  # private chats need no quote
        assert {"chat_id": ANN, "action": "typing", "message_thread_id": None} in tg.actions
        assert await b.history(ChatKey("telegram", str(ANN))) == [
            (Role.USER, "hello there"),
            (Role.ASSISTANT, "Echo: hello there"),
        ]
        # The menu: everyone's commands, and /stats only in the admin's chat.
        names = [c["command"] for c in tg.commands]
        assert names[:4] == ["help", "start", "reset", "new"]
        assert {"status", "summary", "export"} <= set(names) and "stats" not in names
        admin = tg.commands_for({"type": "chat", "chat_id": ADMIN})
        assert "stats" in [c["command"] for c in admin]


async def test_the_reply_streams_as_a_draft_then_arrives_as_a_message(
    bot: Bot, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    claude.chunk_delay = 0.03
    claude.responder = lambda body: "**Streaming** " + " ".join(f"word{i}" for i in range(40))
    tg.user_message(ANN, "stream please")
    final = await tg.wait_for_message(ANN, contains="word39")
    assert final["text"].startswith("Streaming word0")
    assert final["entities"][0]["type"] == "bold"
    drafts = [d for d in tg.drafts if d["chat_id"] == ANN]
    assert len(drafts) >= 2, "the reply should have streamed as drafts"
    assert all(d["parse_mode"] == "HTML" for d in drafts)
    assert len({d["draft_id"] for d in drafts}) == 1
    assert len(tg.messages(ANN)) == 1  # drafts are not messages
    calls = [name for name, params in tg.sent if params.get("chat_id") == ANN]
    assert calls.index("sendMessage") > max(
        i for i, name in enumerate(calls) if name == "sendMessageDraft"
    ), "no draft may land after the final message"


async def test_where_drafts_are_refused_the_preview_is_edited_at_the_edit_interval(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    """The fallback preview used to be edited every draft_interval_s (0.5 s)."""
    claude.chunk_delay = 0.05
    claude.responder = lambda body: "a long streamed answer " * 20  # about two seconds
    tg.refuse_drafts = True
    options = {"draft_interval_s": 0.05, "edit_interval_s": 5.0}
    async with running(tmp_path, sqlite_url, tg, claude, telegram=options):
        tg.user_message(ANN, "stream to me")
        await tg.wait_for_call("deleteMessage", timeout=15)  # the answer is there
        edits = [c for c in tg.calls("editMessageText") if c["chat_id"] == ANN]
        assert len(edits) <= 1, f"{len(edits)} edits: the preview ran at the draft interval"
        previews = [c for c in tg.calls("sendMessage") if c.get("disable_notification")]
        assert len(previews) == 1, "the preview fell back to one edited message"


async def test_reset_starts_a_fresh_context(bot: Bot, tg: FakeTelegram) -> None:
    tg.user_message(ANN, "my name is Ann")
    await tg.wait_for_message(ANN, contains="Echo: my name is Ann")
    tg.user_message(ANN, "/reset")
    await tg.wait_for_message(ANN, contains="Started a fresh conversation")
    tg.user_message(ANN, "who am I?")
    await tg.wait_for_message(ANN, contains="Echo: who am I?")
    prompt = json.dumps(bot.last_prompt())
    assert "who am I?" in prompt and "my name is Ann" not in prompt
    tg.user_message(ANN, "/new")
    await tg.wait_for_message(ANN, contains="Started a fresh conversation", count=2)


async def test_status_summary_export_and_stats(bot: Bot, tg: FakeTelegram) -> None:
    tg.user_message(ANN, "remember *this*")
    await tg.wait_for_message(ANN, contains="Echo:")
    tg.user_message(ANN, "/status")
    status = await tg.wait_for_message(ANN, contains="Session #")
    assert "Context:" in status["text"] and "Cost: $" in status["text"]
    tg.user_message(ANN, "/summary")
    await tg.wait_for_message(ANN, contains="No summaries yet")

    tg.user_message(ANN, "/export")
    await tg.wait_for(lambda: len(tg.documents) == 1)
    markdown = tg.documents[0]
    assert markdown["file_name"].endswith(".md") and "2 messages" in markdown["caption"]
    assert "remember *this*" in markdown["data"].decode()
    tg.user_message(ANN, "/export json")
    await tg.wait_for(lambda: len(tg.documents) == 2)
    exported = json.loads(tg.documents[1]["data"])
    assert [m["role"] for m in exported["messages"]] == ["user", "assistant"]
    assert exported["messages"][0]["author_name"] == "Tester"

    tg.user_message(ANN, "/stats")
    await tg.wait_for_message(ANN, contains="Only the bot's admins")
    tg.user_message(ADMIN, "/stats")
    stats = await tg.wait_for_message(ADMIN, contains="Sessions:")
    assert "telegram 1" in stats["text"]


# -- groups and topics ---------------------------------------------------------------------------


async def test_groups_answer_mentions_replies_and_commands_and_store_the_rest(
    bot: Bot, tg: FakeTelegram
) -> None:
    group = -100
    tg.user_message(group, "lunch at noon?", chat_type="group", user_id=ANN, first_name="Ann")
    tg.user_message(group, "/help@other_bot", chat_type="group", user_id=BOB)
    await settle(tg)
    assert texts(tg, group) == [], "not addressed: stored, not answered"

    question = tg.user_message(
        group,
        "@palaver_test_bot when is lunch?",
        chat_type="group",
        user_id=BOB,
        first_name="Bob",
    )
    reply = await tg.wait_for_message(group, contains="Echo:")
    assert reply["reply_to_message"]["message_id"] == question["message"]["message_id"]
    prompt = json.dumps(bot.last_prompt())
    assert "Ann" in prompt and "lunch at noon?" in prompt, "the group's context has authors"
    assert "when is lunch?" in prompt and "@palaver_test_bot" not in prompt

    tg.user_message(
        group, "thanks!", chat_type="group", user_id=ANN, reply_to_message_id=reply["message_id"]
    )
    await tg.wait_for_message(group, contains="Echo:", count=2)
    tg.user_message(group, "/status", chat_type="group", user_id=ANN)
    # Only for the asker, who never opened a private chat with the bot: told how.
    await tg.wait_for_message(group, contains="open a private chat with @")
    history = await bot.history(ChatKey("telegram", str(group)))
    assert [text for role, text in history if role is Role.USER] == [
        "lunch at noon?",
        "/help@other_bot",
        "when is lunch?",
        "thanks!",
    ]


async def test_answers_only_for_the_asker_go_to_their_private_chat(
    bot: Bot, tg: FakeTelegram
) -> None:
    tg.user_message(-3, "/stats", chat_type="group", user_id=ADMIN)
    # Never wrote to the bot, so it cannot write to them: told how, nothing in the group.
    await tg.wait_for_message(-3, contains="open a private chat with @")
    assert not any("Sessions:" in t for t in texts(tg, -3))
    tg.user_message(ADMIN, "hi")
    await tg.wait_for_message(ADMIN, contains="Echo: hi")
    tg.user_message(-3, "/stats", chat_type="group", user_id=ADMIN)
    await tg.wait_for_message(-3, contains="sent you the answer privately")
    await tg.wait_for_message(ADMIN, contains="Sessions:")


async def test_pythons_telegram_bots_own_httpx_transport_works_too(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(tmp_path, sqlite_url, tg, claude, telegram={"http_client": "httpx"}):
        tg.user_message(ANN, caption="read it", document=("a.py", b"print('hi')"))
        await tg.wait_for_message(ANN, contains="Echo: read it")
        tg.user_message(ANN, "/export")
        await tg.wait_for(lambda: len(tg.documents) == 1)
        assert b"print('hi')" in tg.documents[0]["data"]


async def test_group_mode_all_answers_everything(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(tmp_path, sqlite_url, tg, claude, telegram={"group_mode": "all"}):
        tg.user_message(-5, "anyone?", chat_type="group", user_id=ANN)
        await tg.wait_for_message(-5, contains="anyone?")


async def test_group_replies_stream_by_editing_one_message_then_delete_it(
    bot: Bot, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    claude.chunk_delay = 0.05
    claude.responder = lambda body: " ".join(f"part{i}" for i in range(30))
    tg.user_message(-7, "@palaver_test_bot go", chat_type="group", user_id=ANN)
    await tg.wait_for_message(-7, contains="part29")
    await tg.wait_for_call("deleteMessage")
    assert tg.calls("editMessageText"), "the preview should have been edited while streaming"
    assert not tg.calls("sendMessageDraft")
    assert texts(tg, -7) == [" ".join(f"part{i}" for i in range(30))]


async def test_forum_topics_are_separate_sessions_answered_in_their_topic(
    bot: Bot, tg: FakeTelegram
) -> None:
    forum = -1005
    for thread, word in ((7, "apples"), (8, "pears")):
        tg.user_message(
            forum,
            f"@palaver_test_bot I like {word}",
            chat_type="supergroup",
            user_id=ANN,
            message_thread_id=thread,
        )
    await tg.wait_for_message(forum, message_thread_id=7, contains="apples")
    await tg.wait_for_message(forum, message_thread_id=8, contains="pears")
    tg.user_message(
        forum, "@palaver_test_bot what do I like?", chat_type="supergroup", user_id=ANN,
        message_thread_id=8,
    )  # fmt: skip
    await tg.wait_for_message(forum, message_thread_id=8, count=2)
    prompt = json.dumps(bot.last_prompt())
    assert "pears" in prompt and "apples" not in prompt
    seven = await bot.app.manager.find_by_chat(ChatKey("telegram", str(forum), "7"))
    eight = await bot.app.manager.find_by_chat(ChatKey("telegram", str(forum), "8"))
    assert seven is not None and eight is not None and seven.id != eight.id
    assert texts(tg, forum, 7) == ["Echo: [Tester] I like apples"]


# -- replies -------------------------------------------------------------------------------------


LONG_REPLY = "\n\n".join(
    [f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 30 for i in range(6)]
    + ["```python\n" + "\n".join(f"print('line {i} <&>')" for i in range(300)) + "\n```"]
    + [f"**Closing** paragraph {i}. " + "and so on " * 40 for i in range(4)]
)


async def test_a_long_reply_is_split_between_paragraphs_never_inside_code_or_tags(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    claude.responder = lambda body: LONG_REPLY
    async with running(tmp_path, sqlite_url, tg, claude, max_tokens=16_000):
        tg.user_message(ANN, "write a lot")
        await tg.wait_for_message(ANN, contains="Closing paragraph 3")
    sent = [params for name, params in tg.sent if name == "sendMessage"]
    assert len(sent) >= 4 and not tg.errors
    for params in sent:
        text, _entities = parse_html(params["text"], strict_entities=True)
        assert utf16_len(text) <= 4096
    messages = tg.messages(ANN)
    code = [m for m in messages if "print('line" in m["text"]]
    assert len(code) >= 2, "300 lines of code need more than one message"
    for message in code:  # every piece of the code block is a whole code block
        (pre,) = [e for e in message["entities"] if e["type"] == "pre"]
        assert pre["language"] == "python"
        assert message["text"].strip().startswith("print('line")
    visible = "".join(m["text"] for m in messages)
    assert re.sub(r"\s", "", visible) == re.sub(r"\s|\*\*|```python|```", "", LONG_REPLY)


async def test_formatting_falls_back_to_plain_text_when_telegram_rejects_it(
    bot: Bot, tg: FakeTelegram, claude: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(telegram_outbound, "markdown_to_html", lambda text: f"<b>{text}")
    claude.responder = lambda body: "a **bold** claim"
    tg.user_message(ANN, "format this")
    reply = await tg.wait_for_message(ANN, text="a **bold** claim")
    assert "entities" not in reply
    assert any("can't parse entities" in e[3] for e in tg.errors)


async def test_telegram_flood_control_is_waited_out_without_holding_up_other_chats(
    bot: Bot, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    claude.chunk_delay = 0.02
    claude.responder = lambda body: "a reply worth waiting for " * 5
    tg.flood("sendMessage", times=1, retry_after=2)
    tg.flood("sendMessageDraft", times=1, retry_after=2)
    began = time.monotonic()
    tg.user_message(ANN, "flood me")
    await tg.wait_for(lambda: any(e[0] == "sendMessage" for e in tg.errors))
    tg.user_message(BOB, "other chats are not held up")
    await tg.wait_for_message(BOB, contains="worth waiting", timeout=1.5)
    assert texts(tg, ANN) == [], "Ann's reply waits for the flood to pass"
    await tg.wait_for_message(ANN, contains="worth waiting")
    assert time.monotonic() - began >= 2
    assert [(e[0], e[1]["chat_id"], e[2]) for e in tg.errors] == [
        ("sendMessageDraft", ANN, 429),
        ("sendMessage", ANN, 429),
    ]
    ann_drafts = [d for d in tg.calls("sendMessageDraft") if d["chat_id"] == ANN]
    assert len(ann_drafts) == 1, "drafts are skipped, not queued, during a flood wait"
    assert len(texts(tg, ANN)) == 1


async def test_a_reply_delayed_past_the_flood_limit_is_delivered_later_in_order_once(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    """A 429 longer than flood_max_wait_s used to lose the reply silently."""
    options = {"flood_max_wait_s": 1.0, "stream_replies": False}
    async with running(tmp_path, sqlite_url, tg, claude, telegram=options) as b:
        tg.flood("sendMessage", times=1, retry_after=3)
        began = time.monotonic()
        tg.user_message(ANN, "a long flood")
        await tg.wait_for(lambda: len(tg.errors) == 1)
        tg.user_message(ANN, "and another")
        await tg.wait_for(lambda: len(texts(tg, ANN)) == 2, timeout=8)
        assert time.monotonic() - began >= 3
        assert texts(tg, ANN) == ["Echo: a long flood", "Echo: and another"]
        # Four 429s in a row, more than flood_max_retries: waited out all the same.
        tg.flood("sendMessage", times=4, retry_after=1)
        tg.user_message(ANN, "four floods")
        await tg.wait_for_message(ANN, contains="Echo: four floods", timeout=10)
        await settle(tg)
        assert texts(tg, ANN)[-1] == "Echo: four floods" and len(texts(tg, ANN)) == 3
        owed = await b.app.manager.owed(b.app.dispatcher.outbox.since())
        assert owed == []


LONG_PARTS = [" ".join([word] * 500) for word in ("alpha", "bravo", "charlie")]


async def test_a_long_reply_held_up_at_its_second_part_is_resumed_there_each_part_once(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    """A 429 beyond the flood wait on part 2 of 3 used to resend the whole reply after
    the wait: part 1 showed twice."""
    claude.responder = lambda body: "\n\n".join(LONG_PARTS)
    options = {"flood_max_wait_s": 1.0, "stream_replies": False}
    async with running(tmp_path, sqlite_url, tg, claude, telegram=options, max_tokens=4096) as b:
        tg.flood("sendMessage", times=1, retry_after=2, after=1)
        tg.user_message(ANN, "a long answer, please")
        await tg.wait_for(lambda: len(tg.errors) == 1)
        await tg.wait_for(lambda: len(texts(tg, ANN)) >= 3, timeout=8)
        await b.app.dispatcher.outbox.idle()
        await settle(tg)
        assert texts(tg, ANN) == LONG_PARTS
        assert await b.app.manager.owed(b.app.dispatcher.outbox.since()) == []


async def test_a_long_reply_held_up_at_its_second_part_resumes_there_after_a_restart(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    claude.responder = lambda body: "\n\n".join(LONG_PARTS)
    options = {"flood_max_wait_s": 1.0, "stream_replies": False}
    config = make_config(tmp_path, sqlite_url, tg, claude, telegram=options, max_tokens=4096)
    tg.flood("sendMessage", times=1, retry_after=600, after=1)
    app = Palaver(config)
    await app.start()
    (interface,) = app.build_interfaces()
    await interface.start()
    tg.user_message(ANN, "a long answer, please")
    await tg.wait_for(lambda: len(tg.errors) == 1)
    await settle(tg)
    await app.close_interfaces([interface], 2.0)
    await app.stop()
    assert texts(tg, ANN) == LONG_PARTS[:1]

    again = Palaver(config)
    await again.start()
    (interface,) = again.build_interfaces()
    await interface.start()
    try:
        await again.resume([interface])
        await again.dispatcher.settled()
        await settle(tg)
        assert texts(tg, ANN) == LONG_PARTS
        assert len(claude.requests) == 1
    finally:
        await again.close_interfaces([interface], 2.0)
        await again.stop()


async def test_a_reply_telegram_refuses_for_good_is_marked_failed_and_said_once(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    """A 400 Bad Request used to be retried forever, every 300 s at most."""
    options = {"stream_replies": False}
    async with running(tmp_path, sqlite_url, tg, claude, telegram=options) as b:
        tg.refuse("sendMessage", times=1)
        tg.user_message(ANN, "refuse this")
        await tg.wait_for(lambda: len(tg.errors) == 1)
        async with asyncio.timeout(5):
            await b.app.dispatcher.outbox.idle()
        await tg.wait_for_message(ANN, text=REFUSED)
        await settle(tg)
        assert texts(tg, ANN) == [REFUSED]
        assert len(tg.errors) == 1, "refused once, not retried"
        [failed] = await b.app.manager.owed(b.app.dispatcher.outbox.since())
        assert (failed.text, failed.delivery) == ("Echo: refuse this", Delivery.FAILED)


async def test_a_reply_still_owed_at_shutdown_is_delivered_after_the_restart(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    options = {"flood_max_wait_s": 1.0, "stream_replies": False}
    config = make_config(tmp_path, sqlite_url, tg, claude, telegram=options)
    tg.flood("sendMessage", times=1, retry_after=600)
    app = Palaver(config)
    await app.start()
    (interface,) = app.build_interfaces()
    await interface.start()
    tg.user_message(ANN, "answer me after the flood")
    await tg.wait_for(lambda: len(tg.errors) == 1)
    await settle(tg)
    await app.close_interfaces([interface], 2.0)
    await app.stop()
    assert texts(tg, ANN) == []

    again = Palaver(config)
    await again.start()
    (interface,) = again.build_interfaces()
    await interface.start()
    try:
        await again.resume([interface])
        await again.dispatcher.settled()
        await tg.wait_for_message(ANN, contains="Echo: answer me after the flood")
        assert texts(tg, ANN) == ["Echo: answer me after the flood"]
        assert len(claude.requests) == 1, "the stored reply is sent, not asked again"
    finally:
        await again.close_interfaces([interface], 2.0)
        await again.stop()


async def test_a_duplicated_update_is_handled_once(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(tmp_path, db_url, tg, claude) as b:
        first = tg.user_message(ANN, "only once")
        tg.push_update(first)  # the same update_id again
        tg.push_update({"message": first["message"]})  # the same message, a new update_id
        await tg.wait_for_message(ANN, contains="Echo: only once")
        await settle(tg)
        assert texts(tg, ANN) == ["Echo: only once"]
        assert len(b.claude.requests) == 1
        assert await b.history(ChatKey("telegram", str(ANN))) == [
            (Role.USER, "only once"),
            (Role.ASSISTANT, "Echo: only once"),
        ]
        command = tg.user_message(ANN, "/reset")
        tg.push_update(command)
        await settle(tg)
        assert texts(tg, ANN).count(texts(tg, ANN)[-1]) == 1


async def test_a_user_who_is_not_allowed_is_told_their_id_once(
    bot: Bot, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    tg.user_message(STRANGER, "let me in")
    denial = await tg.wait_for_message(STRANGER, contains="not on its allowlist")
    assert f"user id is {STRANGER}" in denial["text"]
    assert f'"telegram:{STRANGER}" to access.allowed_users' in denial["text"]
    tg.user_message(STRANGER, "please?")
    tg.user_message(STRANGER, "/start")
    tg.user_message(STRANGER, caption="a file", document=("x.txt", b"secret"))
    tg.user_message(-9, "@palaver_test_bot hi", chat_type="group", user_id=STRANGER + 1)
    tg.user_message(-9, "just talking", chat_type="group", user_id=STRANGER + 2)
    await tg.wait_for_message(-9, contains="not on its allowlist")
    await settle(tg)
    assert len(texts(tg, STRANGER)) == 1 and len(texts(tg, -9)) == 1
    assert claude.requests == [] and not tg.calls("getFile")
    assert await bot.app.manager.find_by_chat(ChatKey("telegram", str(STRANGER))) is None
    assert await bot.app.manager.find_by_chat(ChatKey("telegram", "-9")) is None


async def test_allowed_chats_let_every_member_in(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    access = AccessSettings(allowed_chats=["telegram:-77"])
    async with running(tmp_path, sqlite_url, tg, claude, access=access):
        tg.user_message(-77, "@palaver_test_bot hi", chat_type="group", user_id=STRANGER)
        await tg.wait_for_message(-77, contains="Echo: [Tester] hi")
        tg.user_message(STRANGER, "and privately?")
        await tg.wait_for_message(STRANGER, contains="not on its allowlist")


async def test_text_documents_are_read_and_media_get_one_short_answer(
    bot: Bot, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    tg.user_message(ANN, caption="what is in it?", document=("notes.md", b"# Notes\nbuy milk"))
    await tg.wait_for_message(ANN, contains="Echo: what is in it?")
    user_text = bot.last_prompt()[-1]["content"]
    assert "buy milk" in json.dumps(user_text) and "notes.md" in json.dumps(user_text)

    tg.user_message(ANN, document=("report.pdf", b"%PDF-1.4"))
    await tg.wait_for_message(ANN, contains="I skipped report.pdf (the PDF is damaged")
    tg.user_message(ANN, document=("big.txt", b"x" * 60_000))
    await tg.wait_for_message(ANN, contains="I skipped big.txt (too large)")
    tg.user_message(ANN, sticker=True)
    tg.user_message(ANN, voice=True)
    await tg.wait_for_message(ANN, contains="aren't supported", count=4)
    await settle(tg)
    assert len(claude.requests) == 1, "nothing but the text file reached the model"
    # A caption counts as text: it is answered, and a photo that is no image named.
    tg.user_message(ANN, photo=True, caption="look at the sky")
    await tg.wait_for_message(ANN, contains="I skipped a photo (the image is damaged")
    await tg.wait_for_message(ANN, contains="Echo: look at the sky")

    tg.user_message(ANN, "fixed typo", message_id=5000)
    await tg.wait_for_message(ANN, contains="Echo: fixed typo")
    tg.user_message(ANN, "fixed typo!", message_id=5000, edited=True)
    await tg.wait_for_message(ANN, contains="I answer new messages only")
    tg.user_message(ANN, "fixed typo!!", message_id=5000, edited=True)
    await settle(tg)
    assert sum("I answer new messages only" in t for t in texts(tg, ANN)) == 1
    assert len(claude.requests) == 3


async def test_the_rate_limit_answers_politely_once(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    limit = RateLimitSettings(per_minute=1, burst=2)
    async with running(tmp_path, sqlite_url, tg, claude, rate_limit=limit):
        for i in range(5):
            tg.user_message(ANN, f"message {i}")
        await tg.wait_for_message(ANN, contains="faster than I can answer")
        await settle(tg)
        replies = texts(tg, ANN)
        assert [r for r in replies if r.startswith("Echo:")] == [
            "Echo: message 0",
            "Echo: message 1",
        ]
        assert len(replies) == 3


async def test_fifty_chats_at_once_and_a_slow_one_holds_up_nobody(
    bot: Bot, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    release = asyncio.Event()

    async def respond(body: JSON) -> str:
        text = json.dumps(body["messages"][-1])
        if "slow" in text:
            await release.wait()
            return "finally"
        return "quick " + str(re.findall(r"chat \d+", text)[0])

    claude.responder = respond
    tg.user_message(1, "slow one")
    await until(lambda: len(claude.requests) == 1)
    for chat in range(2, 51):
        tg.user_message(chat, f"hello from chat {chat}")
    for chat in range(2, 51):  # answered while the slow one is held, whatever the machine
        await tg.wait_for_message(chat, text=f"quick chat {chat}", timeout=30)
    assert texts(tg, 1) == [], "the slow chat is still waiting for its model"
    release.set()
    await tg.wait_for_message(1, text="finally")


async def test_a_chats_queued_messages_take_no_slot_from_other_chats(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    """Messages waiting behind their own chat's turn take none of max_concurrent_turns."""
    release = asyncio.Event()

    async def respond(body: JSON) -> str:
        if "slow" in json.dumps(body["messages"][-1]):
            await release.wait()
        return "done"

    claude.responder = respond
    async with running(tmp_path, sqlite_url, tg, claude, max_concurrent_turns=2):
        tg.user_message(ANN, "slow one")
        await until(lambda: len(claude.requests) == 1)
        for i in range(3):
            tg.user_message(ANN, f"and another {i}")
        tg.user_message(BOB, "hello")
        await tg.wait_for_message(BOB, text="done", timeout=5)
        assert texts(tg, ANN) == []
        release.set()
        await tg.wait_for(lambda: len(texts(tg, ANN)) == 4)


async def test_one_chats_messages_are_answered_in_order(
    bot: Bot, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async def respond(body: JSON) -> str:
        text = json.dumps(body["messages"][-1]["content"])
        await asyncio.sleep(0.2 if "first" in text else 0.0)
        return "re: " + ("first" if "first" in text else "second")

    claude.responder = respond
    tg.user_message(ANN, "first")
    tg.user_message(ANN, "second")
    await tg.wait_for_message(ANN, text="re: second")
    assert texts(tg, ANN) == ["re: first", "re: second"]
    assert [t for _, t in await bot.history(ChatKey("telegram", str(ANN)))] == [
        "first",
        "re: first",
        "second",
        "re: second",
    ]


# -- lifecycle -----------------------------------------------------------------------------------


async def test_shutdown_lets_a_turn_in_flight_finish_and_loses_nothing(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async def slow(body: JSON) -> str:
        await asyncio.sleep(1.0)
        return "worth the wait"

    claude.responder = slow
    config = make_config(tmp_path, db_url, tg, claude)
    app = Palaver(config)
    await app.start()
    (interface,) = app.build_interfaces()
    await interface.start()
    tg.user_message(ANN, "are you still there?")
    await until(lambda: len(claude.requests) == 1)
    await app.close_interfaces([interface], 10.0)
    await app.stop()
    assert texts(tg, ANN) == ["worth the wait"]
    assert tg.updates == [], "the update's offset was confirmed"

    again = Palaver(config)
    await again.start()
    try:
        session = await again.manager.find_by_chat(ChatKey("telegram", str(ANN)))
        assert session is not None
        stored = await again.manager.messages(session.id)
        assert [(m.role, m.text) for m in stored] == [
            (Role.USER, "are you still there?"),
            (Role.ASSISTANT, "worth the wait"),
        ]
    finally:
        await again.stop()


async def test_past_the_grace_period_the_turn_is_cancelled_but_answered_after_restart(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async def hang(body: JSON) -> str:
        await asyncio.sleep(30)
        return "too late"

    claude.responder = hang
    config = make_config(tmp_path, sqlite_url, tg, claude)
    app = Palaver(config)
    await app.start()
    (interface,) = app.build_interfaces()
    await interface.start()
    tg.user_message(ANN, "long question")
    await until(lambda: len(claude.requests) == 1)
    began = time.monotonic()
    await app.close_interfaces([interface], 0.3)
    assert time.monotonic() - began < 30  # the grace ended it, not the model's 30 s
    session = await app.manager.find_by_chat(ChatKey("telegram", str(ANN)))
    assert session is not None
    assert [m.text for m in await app.manager.messages(session.id)] == ["long question"]
    await app.stop()
    assert texts(tg, ANN) == []

    # After the restart the question is answered, not asked for again.
    claude.responder = None
    again = Palaver(config)
    await again.start()
    (interface,) = again.build_interfaces()
    await interface.start()
    try:
        await again.resume([interface])
        await tg.wait_for_message(ANN, contains="Echo: long question")
        stored = await again.manager.messages(session.id)
        assert [(m.role, m.text) for m in stored] == [
            (Role.USER, "long question"),
            (Role.ASSISTANT, "Echo: long question"),
        ]
    finally:
        await again.close_interfaces([interface], 2.0)
        await again.stop()


async def test_a_bad_token_is_a_clear_error(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    config = make_config(tmp_path, sqlite_url, tg, claude)
    config.secrets.telegram_bot_token = SecretStr("123:WRONG")
    app = Palaver(config)
    await app.start()
    try:
        (interface,) = app.build_interfaces()
        with pytest.raises(PalaverError, match="Telegram rejected the bot token") as caught:
            await interface.start()
        assert "WRONG" not in str(caught.value)
        await interface.stop()  # harmless when it never started
    finally:
        await app.stop()


async def test_a_bot_api_out_of_reach_at_start_is_retried_in_the_background(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    """It used to be a start-up error (exit 1), taking the other interfaces down."""
    tg.outage("getMe", times=2)
    app = Palaver(make_config(tmp_path, sqlite_url, tg, claude))
    await app.start()
    (interface,) = app.build_interfaces()
    try:
        await interface.start()  # returns: Telegram is retried in the background
        assert tg.calls("setMyCommands") == [], "not set up yet: the Bot API is still down"
        tg.user_message(ANN, "are you up yet?")
        await tg.wait_for_message(ANN, contains="Echo: are you up yet?", timeout=15)
        assert [e[2] for e in tg.errors] == [502, 502]
    finally:
        await app.close_interfaces([interface], 2.0)
        await app.stop()


async def test_run_py_exits_non_zero_on_a_bad_token(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    config = make_config(tmp_path, sqlite_url, tg, claude)
    config.secrets.telegram_bot_token = SecretStr("123:WRONG")
    assert await serve(config, console_only=False) == 1
    err = capsys.readouterr().err
    assert "palaver: cannot start: Telegram rejected the bot token" in err
    assert "WRONG" not in err


def running_tasks() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


async def test_a_start_that_fails_midway_closes_what_it_opened_and_says_why_in_one_line(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Telegram starts, then the operator API cannot bind its port: Telegram, the
    API's hooks, the jobs and the database are all closed again, in one line."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    config = make_config(tmp_path, sqlite_url, tg, claude)
    config.http = HttpSettings(enabled=True, port=taken.getsockname()[1])
    before = running_tasks()
    try:
        assert await serve(config, console_only=False) == 1
    finally:
        taken.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "palaver: cannot start: the HTTP server cannot listen" in err
    leaked = [t.get_name() for t in running_tasks() - before - {asyncio.current_task()}]
    assert leaked == []


async def test_an_unexpected_error_at_start_is_one_line_and_stops_the_started_interfaces(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """An interface whose start raises something other than Palaver's own errors (a
    library's bug, say): no traceback on the terminal, exit 1, and Telegram (up by
    then) and the failed interface are stopped, the app with them."""
    stopped: list[str] = []

    class Broken:
        name = "broken"

        async def start(self) -> None:
            raise RuntimeError("the widget fell over")

        async def stop_receiving(self) -> None:
            pass

        async def stop(self) -> None:
            stopped.append(self.name)
            raise RuntimeError("and it cannot stop either")

    built = Palaver.build_interfaces
    monkeypatch.setattr(Palaver, "build_interfaces", lambda app: [*built(app), Broken()])
    before = running_tasks()
    assert await serve(make_config(tmp_path, sqlite_url, tg, claude), console_only=False) == 1
    err = capsys.readouterr().err
    assert "palaver: cannot start: RuntimeError: the widget fell over" in err
    assert "Traceback" not in err.split("palaver: cannot start")[1]
    assert stopped == ["broken"]
    leaked = [t.get_name() for t in running_tasks() - before - {asyncio.current_task()}]
    assert leaked == []


async def test_run_py_serves_telegram_and_stops_cleanly_on_sigterm(
    tmp_path: Path, tg: FakeTelegram
) -> None:
    (tmp_path / "palaver.toml").write_text(
        f'[palaver]\ndata_dir = "{tmp_path}"\n[access]\nallowed_users = ["{ANN}"]\n'
        f'[telegram]\nbase_url = "{tg.base_url}"\nbase_file_url = "{tg.base_file_url}"\n'
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PALAVER_", "ANTHROPIC"))}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "run.py", "--config", str(tmp_path / "palaver.toml"),
        cwd=ROOT, env={**env, "TELEGRAM_BOT_TOKEN": TOKEN},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert b"telegram is up" in line
    tg.user_message(ANN, "hi from a real process")
    await tg.wait_for_message(ANN, contains="hi from a real process", timeout=20)
    process.send_signal(signal.SIGTERM)
    _out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert TOKEN.encode() not in err, "the token must never reach the log"
