"""Conformance of the fake Bot API with the real python-telegram-bot.

If PTB's own HTTP layer, parsers, error mapping and polling loop accept the fake's answers
the way they accept Telegram's, bot tests built on the fake say something about production.
"""

from __future__ import annotations

import asyncio
import datetime as dtm
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from telegram import Bot, BotCommand, MessageEntity, ReplyParameters, Update
from telegram.constants import ParseMode
from telegram.error import BadRequest, EndPointNotFound, InvalidToken, RetryAfter
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)
from telegram.warnings import PTBUserWarning

from tests.fakes.telegram_api import FakeTelegram, HtmlParseError, parse_html

TOKEN = "123:ABC"


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN) as fake:
        yield fake


@pytest.fixture
async def bot(tg: FakeTelegram) -> AsyncIterator[Bot]:
    async with Bot(TOKEN, base_url=tg.base_url, base_file_url=tg.base_file_url) as real_bot:
        yield real_bot


def build_app(tg: FakeTelegram, token: str = TOKEN) -> Application:  # type: ignore[type-arg]
    return (
        ApplicationBuilder()
        .token(token)
        .base_url(tg.base_url)
        .base_file_url(tg.base_file_url)
        .build()
    )


async def start(app: Application) -> None:  # type: ignore[type-arg]
    await app.initialize()
    await app.start()
    assert app.updater is not None
    await app.updater.start_polling(poll_interval=0, timeout=1)


async def stop(app: Application) -> None:  # type: ignore[type-arg]
    assert app.updater is not None
    await app.updater.stop()
    await app.stop()
    await app.shutdown()


async def test_initialize_calls_get_me(tg: FakeTelegram) -> None:
    app = build_app(tg)
    await app.initialize()
    try:
        assert app.bot.id == 999
        assert app.bot.username == "palaver_test_bot"
        assert app.bot.first_name == "Palaver"
    finally:
        await app.shutdown()


async def test_invalid_token_is_rejected(tg: FakeTelegram) -> None:
    with pytest.raises(InvalidToken):
        await build_app(tg, token="123:WRONG").initialize()


async def test_polling_app_echoes_and_handles_commands(tg: FakeTelegram) -> None:
    seen: list[Update] = []

    async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None and update.message.text is not None
        seen.append(update)
        await update.message.reply_text(update.message.text)

    async def hello(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.effective_chat is not None
        await context.bot.send_message(update.effective_chat.id, f"hello {context.args}")

    app = build_app(tg)
    app.add_handler(CommandHandler("start", hello))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    await start(app)
    try:
        injected = tg.user_message(42, "ping", first_name="Ada", username="ada")
        reply = await tg.wait_for_message(42, text="ping")
        assert seen[0].update_id == injected["update_id"]
        assert seen[0].effective_user is not None and seen[0].effective_user.username == "ada"
        assert reply["from"]["id"] == tg.bot_id

        # Entities are generated as Telegram does, so PTB's CommandHandler recognises them,
        # including the /cmd@botname form used in groups.
        tg.user_message(42, "/start now")
        await tg.wait_for_message(42, text="hello ['now']")
        tg.user_message(-100, "/start@palaver_test_bot x", chat_type="group", user_id=7)
        await tg.wait_for_message(-100, text="hello ['x']")
        await tg.wait_for(lambda: not tg.updates)  # the polling offset confirmed everything
    finally:
        await stop(app)
    assert [m["text"] for m in tg.messages(42)] == ["ping", "hello ['now']"]


async def test_forum_topic_thread_id_round_trips(tg: FakeTelegram) -> None:
    async def answer(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        message = update.message
        assert message is not None and message.is_topic_message
        await message.reply_text("in topic", message_thread_id=message.message_thread_id)

    app = build_app(tg)
    app.add_handler(MessageHandler(filters.TEXT, answer))
    await start(app)
    try:
        update = tg.user_message(-1005, "hi", chat_type="supergroup", message_thread_id=7)
        assert update["message"]["chat"]["is_forum"] is True
        reply = await tg.wait_for_message(-1005, message_thread_id=7)
    finally:
        await stop(app)
    assert reply["text"] == "in topic"
    assert reply["message_thread_id"] == 7
    assert tg.messages(-1005, message_thread_id=8) == []


async def test_send_and_edit_message(tg: FakeTelegram, bot: Bot) -> None:
    tg.add_chat(5)
    sent = await bot.send_message(5, "draft <b>one</b>", parse_mode=ParseMode.HTML)
    assert sent.text == "draft one"
    assert sent.entities == (MessageEntity(MessageEntity.BOLD, 6, 3),)
    assert sent.from_user is not None and sent.from_user.id == tg.bot_id
    edited = await bot.edit_message_text("final", chat_id=5, message_id=sent.message_id)
    assert isinstance(edited, type(sent)) and edited.text == "final"
    assert edited.edit_date is not None
    assert [m["text"] for m in tg.messages(5)] == ["final"]
    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await bot.edit_message_text("final", chat_id=5, message_id=sent.message_id)
    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await bot.edit_message_text("x", chat_id=5, message_id=999)


async def test_reply_parameters_and_message_ids(tg: FakeTelegram, bot: Bot) -> None:
    user = tg.user_message(6, "question")["message"]
    answer = await bot.send_message(
        6, "answer", reply_parameters=ReplyParameters(user["message_id"])
    )
    assert answer.message_id == user["message_id"] + 1
    assert answer.reply_to_message is not None
    assert answer.reply_to_message.text == "question"
    with pytest.raises(BadRequest, match=r"(?i)message to be replied not found"):
        await bot.send_message(6, "x", reply_parameters=ReplyParameters(12345))


async def test_text_validation(tg: FakeTelegram, bot: Bot) -> None:
    tg.add_chat(5)
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities: Unsupported start tag"):
        await bot.send_message(5, "1 < 2 <x>", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities: Unmatched end tag"):
        await bot.send_message(5, "<b><i>x</b></i>", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await bot.send_message(5, "  \n ")
    with pytest.raises(BadRequest, match=r"(?i)message text is empty"):
        await bot.send_message(5, "<b> </b>", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(5, "x" * 4097)
    await bot.send_message(5, "x" * 4096)
    await bot.send_message(5, "<b>" + "x" * 4096 + "</b>", parse_mode=ParseMode.HTML)
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(5, "😀" * 2049)  # 4098 UTF-16 code units
    with pytest.raises(BadRequest, match=r"(?i)chat not found"):
        await bot.send_message(777, "nobody here")
    assert [e[2] for e in tg.errors] == [400] * 7


def test_html_parser_matches_tdlib_cases() -> None:
    assert parse_html("a &lt;&gt;&amp;&quot; &ge; AT&T &#128512;") == (
        'a <>&" &ge; AT&T 😀',
        [],
    )
    text, entities = parse_html(
        '<pre><code class="language-py">x</code></pre> <a href="https://t.me">t</a>'
        '<span class="tg-spoiler">s</span><blockquote expandable>q</blockquote>'
    )
    assert text == "x tsq"
    assert entities == [
        {"type": "pre", "offset": 0, "length": 1, "language": "py"},
        {"type": "text_link", "offset": 2, "length": 1, "url": "https://t.me"},
        {"type": "spoiler", "offset": 3, "length": 1},
        {"type": "expandable_blockquote", "offset": 4, "length": 1},
    ]
    for markup, reason in [
        ("<b>x", 'Can\'t find end tag corresponding to start tag "b"'),
        ("x</b>", "Unexpected end tag at byte offset 1"),
        ("<span>x</span>", 'Tag "span" must have class "tg-spoiler" at byte offset 0'),
        ("😀<div>", 'Unsupported start tag "div" at byte offset 4'),
        ("<b", "Unclosed start tag at byte offset 0"),
    ]:
        with pytest.raises(HtmlParseError) as info:
            parse_html(markup)
        assert str(info.value) == reason
    with pytest.raises(HtmlParseError):
        parse_html("AT&T", strict_entities=True)


@pytest.mark.filterwarnings("ignore:.*retry_after.*timedelta:DeprecationWarning")
async def test_flood_control_maps_to_retry_after(tg: FakeTelegram, bot: Bot) -> None:
    tg.add_chat(5)
    tg.flood(method="sendMessage", times=2, retry_after=3)
    for _ in range(2):
        with pytest.raises(RetryAfter) as info:
            await bot.send_message(5, "hi")
        assert info.value.retry_after in (3, dtm.timedelta(seconds=3))
    await bot.send_message(5, "hi")
    assert [method for method, _ in tg.sent] == ["getMe"] + ["sendMessage"] * 3
    assert len(tg.messages(5)) == 1


async def test_documents_upload_and_download(tg: FakeTelegram, bot: Bot) -> None:
    update = tg.user_message(8, caption="see file", document=("notes.txt", b"hello file"))
    document = update["message"]["document"]
    assert document["file_name"] == "notes.txt" and document["mime_type"] == "text/plain"
    assert document["file_size"] == 10
    telegram_file = await bot.get_file(document["file_id"])
    assert telegram_file.file_path is not None
    assert telegram_file.file_path.startswith(tg.base_file_url + TOKEN + "/")
    assert await telegram_file.download_as_bytearray() == bytearray(b"hello file")

    sent = await bot.send_document(
        8,
        document=b"%PDF-1.4 fake",
        filename="report.pdf",
        caption="<i>report</i>",
        parse_mode=ParseMode.HTML,
    )
    assert sent.document is not None and sent.document.file_name == "report.pdf"
    assert sent.caption == "report"
    stored = tg.documents[-1]
    assert (stored["file_name"], stored["data"]) == ("report.pdf", b"%PDF-1.4 fake")
    assert stored["mime_type"] == "application/pdf"
    again = await (await bot.get_file(sent.document.file_id)).download_as_bytearray()
    assert again == bytearray(b"%PDF-1.4 fake")
    with pytest.raises(BadRequest, match=r"(?i)invalid file_id"):
        await bot.get_file("nope")


async def test_commands(tg: FakeTelegram, bot: Bot) -> None:
    assert await bot.get_my_commands() == ()
    await bot.set_my_commands([BotCommand("new", "Start over"), BotCommand("help", "Help")])
    commands = await bot.get_my_commands()
    assert [(c.command, c.description) for c in commands] == [
        ("new", "Start over"),
        ("help", "Help"),
    ]
    assert tg.commands[0] == {"command": "new", "description": "Start over"}
    with pytest.raises(BadRequest, match=r"(?i)BOT_COMMAND_INVALID"):
        await bot.set_my_commands([BotCommand("Bad-Command", "x")])
    await bot.delete_my_commands()
    assert tg.commands == []


async def test_message_draft_and_chat_action(tg: FakeTelegram, bot: Bot) -> None:
    tg.add_chat(9)
    tg.add_chat(-9, "group")
    assert await bot.send_message_draft(9, draft_id=1, text="<b>partial</b>", parse_mode="HTML")
    assert await bot.send_message_draft(9, draft_id=1)  # empty: "Thinking..." placeholder
    assert [(d["text"], d["draft_id"]) for d in tg.drafts] == [("partial", 1), ("", 1)]
    with pytest.warns(PTBUserWarning, match="Bot.sendMessageDraft"):  # PTB prefers the method
        raw = await bot.do_api_request(
            "sendMessageDraft", api_kwargs={"chat_id": 9, "draft_id": 2, "text": "raw"}
        )
    assert raw is True and tg.drafts[-1]["text"] == "raw"
    with pytest.raises(BadRequest, match=r"(?i)TEXTDRAFT_PEER_INVALID"):
        await bot.send_message_draft(-9, draft_id=1, text="x")
    assert await bot.send_chat_action(9, "typing")
    assert tg.actions == [{"chat_id": 9, "action": "typing", "message_thread_id": None}]
    with pytest.raises(EndPointNotFound):
        await bot.do_api_request("noSuchMethod")


async def test_long_poll_wakes_on_update_and_confirms_offset(tg: FakeTelegram, bot: Bot) -> None:
    began = time.monotonic()
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await tg.wait_for(lambda: tg.get_updates_calls == 1)
    first = tg.user_message(1, "one")
    updates = await poll
    assert time.monotonic() - began < 5  # woken by the update, not by the poll's timeout
    assert [u.update_id for u in updates] == [first["update_id"]]

    duplicate = tg.push_update(first)  # re-delivery of the same update_id
    assert duplicate["update_id"] == first["update_id"]
    assert len(await bot.get_updates(timeout=0)) == 2
    assert await bot.get_updates(offset=first["update_id"] + 1, timeout=0) == ()
    began = time.monotonic()
    assert await bot.get_updates(timeout=dtm.timedelta(milliseconds=300)) == ()
    assert time.monotonic() - began >= 0.25


async def test_concurrent_chats_are_not_serialized(tg: FakeTelegram) -> None:
    # aiohttp as client: PTB's httpx transport itself scales poorly past ~25 concurrent
    # requests (encode/httpx#3215), which would hide what this test is about.
    # All 200 calls are held inside the fake at once before any is answered: a fake
    # that served one call at a time would never have more than one in flight.
    tg.held = asyncio.Event()
    chats = range(1, 201)
    for chat_id in chats:
        tg.add_chat(chat_id)
    url = f"{tg.base_url}{TOKEN}/sendMessage"
    connector = aiohttp.TCPConnector(limit=250)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(chat_id: int) -> None:
            async with session.post(url, data={"chat_id": chat_id, "text": f"hi {chat_id}"}) as r:
                assert r.status == 200

        sending = asyncio.gather(*(send(c) for c in chats))
        await tg.wait_for(lambda: tg.in_flight == len(chats), timeout=60)
        tg.held.set()
        await sending
    assert all(tg.messages(c)[0]["text"] == f"hi {c}" for c in chats)


async def test_raw_json_and_form_bodies(tg: FakeTelegram) -> None:
    tg.add_chat(3)
    url = f"{tg.base_url}{TOKEN}/sendMessage"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json={"chat_id": "3", "text": "json"}) as response:
            assert (await response.json())["result"]["text"] == "json"
        async with session.post(url, data={"chat_id": "3", "text": "form"}) as response:
            assert (await response.json())["result"]["message_id"] == 2
        async with session.post(f"{tg.base_url}1:BAD/getMe") as response:
            assert response.status == 401
            assert await response.json() == {
                "ok": False,
                "error_code": 401,
                "description": "Unauthorized",
            }
        tg.flood("sendMessage", retry_after=1)
        async with session.post(url, json={"chat_id": 3, "text": "x"}) as response:
            assert response.status == 429
            assert (await response.json())["parameters"] == {"retry_after": 1}
