"""Images and PDFs end to end: the real python-telegram-bot and anthropic SDKs against
the fake Bot API and the fake Messages API (which checks and counts image and document
blocks), with the whole Palaver application between; and Discord's image attachments
through the real discord.py against its fake."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anthropic
import pytest
from PIL import Image
from pydantic import SecretStr

from agents.base import AgentReply, AgentRequest
from agents.claude import ClaudeAgent
from agents.pricing import Pricing
from agents.settings import ClaudeSettings
from bots.app import Palaver
from bots.config import Config, PalaverSettings, Secrets, TelegramSettings
from bots.telegram_bot import TelegramBot
from conversation.settings import AccessSettings, AttachmentSettings, RateLimitSettings
from memory.context import MediaRef
from memory.settings import DatabaseSettings, MemorySettings
from memory.types import ChatKey, Context, ContextMessage, Role
from tests.fakes.anthropic_api import JSON, ApiError, FakeAnthropic
from tests.fakes.telegram_api import FakeTelegram
from tests.media import bomb_png, jpeg, pdf, png
from tests.test_jobs import eventually
from tests.test_telegram_bot import settle

TOKEN = "123:ABC"
ANN, GROUP = 1001, -500
pytestmark = pytest.mark.filterwarnings("ignore:.*retry_after.*:DeprecationWarning")


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=TOKEN, strict_html_entities=True) as fake:
        yield fake


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


def config(
    tmp_path: Path,
    url: str,
    tg: FakeTelegram,
    claude: FakeAnthropic | None,
    *,
    memory: MemorySettings | None = None,
    attachments: AttachmentSettings | None = None,
    text_only_models: tuple[str, ...] = (),
) -> Config:
    return Config(
        palaver=PalaverSettings(data_dir=tmp_path),
        database=DatabaseSettings(url=url),
        memory=memory or MemorySettings(),
        access=AccessSettings(allowed_users=[f"telegram:{ANN}", "1002"]),
        rate_limit=RateLimitSettings(per_minute=600, burst=50),
        attachments=attachments or AttachmentSettings(album_wait_s=0.3),
        claude=ClaudeSettings(
            base_url=claude.url if claude else "",
            max_retries=0,
            text_only_models=list(text_only_models),
        ),
        telegram=TelegramSettings(
            base_url=tg.base_url, base_file_url=tg.base_file_url, draft_interval_s=0.05
        ),
        secrets=Secrets(
            telegram_bot_token=SecretStr(TOKEN),
            anthropic_api_key=SecretStr(claude.api_key) if claude else None,
        ),
    )


@asynccontextmanager
async def running(settings: Config) -> AsyncIterator[Palaver]:
    app = Palaver(settings)
    await app.start()
    try:
        (interface,) = app.build_interfaces()
        assert isinstance(interface, TelegramBot)
        await interface.start()
        try:
            yield app
        finally:
            await app.close_interfaces([interface], 5.0)
    finally:
        await app.stop()


def files_of(request: JSON, kind: str = "image") -> list[JSON]:
    """The image (or document) blocks of a request's last user message."""
    content = request["messages"][-1]["content"]
    return [block for block in content if block["type"] == kind]


def text_of(request: JSON) -> str:
    content = request["messages"][-1]["content"]
    return "\n".join(block["text"] for block in content if block["type"] == "text")


def pixels(block: JSON) -> tuple[int, int]:
    with Image.open(io.BytesIO(base64.b64decode(block["source"]["data"]))) as image:
        return image.size


async def history(app: Palaver, key: ChatKey) -> list[tuple[Role, str]]:
    session = await app.manager.find_by_chat(key)
    assert session is not None
    return [(m.role, m.text) for m in await app.manager.messages(session.id)]


PRIVATE = ChatKey("telegram", str(ANN))


# -- photos ------------------------------------------------------------------------------


async def test_a_photo_with_a_caption_reaches_the_model_beside_it_and_stays_cached(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(config(tmp_path, db_url, tg, claude)) as app:
        sent = tg.user_message(ANN, caption="what's on it?", photo=jpeg(2560, 1920))
        await tg.wait_for_message(ANN, contains="Echo: what's on it?")
        request = claude.requests[-1]
        [block] = files_of(request)
        width, height = pixels(block)
        assert block["source"]["media_type"] == "image/jpeg"
        assert max(width, height) <= 1568 and width * height <= 1_150_000
        assert request["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
        assert text_of(request) == f"what's on it?\n\n[image: photo.jpg, {width}x{height}]"
        # Of the sizes Telegram offers, the largest (it fits the limits) was fetched, once.
        [fetched] = tg.calls("getFile")
        largest = max(sent["message"]["photo"], key=lambda p: p["width"])
        assert fetched["file_id"] == largest["file_id"] and largest["width"] == 2560
        assert claude.media_log[-1]["images"] == 1

        # Stored with the message, counted in its tokens.
        session = await app.manager.find_by_chat(PRIVATE)
        assert session is not None
        question = (await app.manager.messages(session.id))[0]
        [kept] = (await app.manager.attachments(session.id))[question.seq]
        assert (kept.name, kept.width, kept.height) == ("photo.jpg", width, height)
        assert question.token_count == kept.tokens + app.manager.tokens.count(question.text)

        # The next turn sends it again, from the prompt cache.
        tg.user_message(ANN, "and the colours?")
        await tg.wait_for_message(ANN, contains="Echo: and the colours?")
        again = claude.requests[-1]
        assert files_of(again) == [] and len(claude.media_log) == 2
        assert claude.media_log[-1]["images"] == 1  # the photo's turn, earlier in the prompt
        assert (
            claude.usage_log[-1]["cache_read_input_tokens"] > claude.media_log[-1]["media_tokens"]
        )


async def test_an_album_is_answered_once_with_all_its_photos(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(config(tmp_path, db_url, tg, claude)) as app:
        for i in range(3):
            tg.user_message(
                ANN,
                caption="compare these" if i == 0 else None,
                photo=jpeg(640 + 10 * i, 480),
                media_group_id="album-1",
            )
        await tg.wait_for_message(ANN, contains="Echo: compare these")
        await settle(tg, 0.6)
        assert len(claude.requests) == 1
        assert [pixels(b) for b in files_of(claude.requests[0])] == [
            (640, 480),
            (650, 480),
            (660, 480),
        ]
        [(role, text)] = (await history(app, PRIVATE))[:1]
        assert role is Role.USER and text.startswith("compare these\n\n[image: photo.jpg, 640x480]")
        assert len(await history(app, PRIVATE)) == 2  # one question, one answer


async def test_oversized_damaged_and_hostile_images(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(config(tmp_path, db_url, tg, claude)) as app:
        tg.user_message(
            ANN, caption="a big one", document=("plan.png", png(5000, 3000), "image/png")
        )
        await tg.wait_for_message(ANN, contains="Echo: a big one")
        [block] = files_of(claude.requests[-1])
        assert block["source"]["media_type"] == "image/png"
        width, height = pixels(block)
        assert (width, height) == (1384, 830)  # 1.15 MP, the shape kept

        tg.user_message(ANN, document=("bomb.png", bomb_png(), "image/png"))
        await tg.wait_for_message(
            ANN, contains="I skipped bomb.png (it has more pixels than I open"
        )
        tg.user_message(ANN, document=("cut.jpg", jpeg(800, 600)[:3000], "image/jpeg"))
        await tg.wait_for_message(ANN, contains="I skipped cut.jpg (the image is damaged")
        tg.user_message(
            ANN, caption="this?", document=("fake.png", b"<html>nope</html>", "image/png")
        )
        await tg.wait_for_message(ANN, contains="I skipped fake.png (not an image I can read")
        await tg.wait_for_message(ANN, contains="Echo: this?")  # its caption is answered
        await settle(tg)
        assert len(claude.requests) == 2 and files_of(claude.requests[-1]) == []
        # Nothing of the refused files was kept.
        blobs, _ = await app.manager.store.attachments.count_blobs()
        assert blobs == 1


async def test_static_stickers_are_images_and_animated_ones_are_named(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    webp = io.BytesIO()
    Image.new("RGBA", (512, 512), (255, 0, 0, 128)).save(webp, "WEBP")
    async with running(config(tmp_path, sqlite_url, tg, claude)):
        tg.user_message(ANN, sticker=webp.getvalue())
        await tg.wait_for_message(ANN, contains="Echo: [image: sticker.webp, 512x512]")
        assert files_of(claude.requests[-1])[0]["source"]["media_type"] == "image/webp"
        tg.user_message(ANN, animated_sticker=True)
        await tg.wait_for_message(ANN, contains="I skipped a sticker:")
        await settle(tg)
        assert len(claude.requests) == 1


# -- PDFs --------------------------------------------------------------------------------


async def test_a_pdf_is_read_and_one_over_the_limit_is_named_plainly(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(config(tmp_path, db_url, tg, claude)) as app:
        tg.user_message(ANN, caption="summarize it", document=("report.pdf", pdf(3)))
        await tg.wait_for_message(ANN, contains="Echo: summarize it")
        [block] = files_of(claude.requests[-1], "document")
        assert block["source"]["media_type"] == "application/pdf"
        assert base64.b64decode(block["source"]["data"]) == pdf(3)
        assert text_of(claude.requests[-1]) == "summarize it\n\n[PDF: report.pdf, 3 pages]"
        assert claude.media_log[-1] == {
            "images": 0,
            "documents": 1,
            "pages": 3,
            "media_tokens": 6000 + 3,
        }
        session = await app.manager.find_by_chat(PRIVATE)
        assert session is not None
        question = (await app.manager.messages(session.id))[0]
        assert question.token_count == 3 * 2500 + app.manager.tokens.count(question.text)

        tg.user_message(ANN, caption="and this", document=("long.pdf", pdf(25)))
        await tg.wait_for_message(
            ANN, contains="I skipped long.pdf (25 pages; I read PDFs of up to 20 pages)"
        )
        await tg.wait_for_message(ANN, contains="Echo: and this")
        tg.user_message(ANN, document=("locked.pdf", pdf(1, encrypted=True)))
        await tg.wait_for_message(ANN, contains="I skipped locked.pdf (the PDF is encrypted")
        big = b"%PDF-1.4\n" + b"0" * 11_000_000
        tg.user_message(ANN, document=("huge.pdf", big))
        await tg.wait_for_message(
            ANN, contains="I skipped huge.pdf (too large: 11 MB; I read PDFs up to 10 MB)"
        )
        await settle(tg)
        assert len(tg.calls("getFile")) == 3  # never the file that was too large
        assert len(claude.requests) == 2


# -- groups, duplicates, restarts ------------------------------------------------------------


async def test_an_image_in_a_group_that_does_not_address_the_bot_is_stored_unread(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    async with running(config(tmp_path, db_url, tg, claude)) as app:
        tg.user_message(GROUP, chat_type="group", caption="nice view", photo=jpeg(800, 600))
        group = ChatKey("telegram", str(GROUP))

        async def stored() -> bool:
            return await app.manager.find_by_chat(group) is not None

        await eventually(stored)  # storing it is the last thing the bot does with it
        assert claude.requests == [] and tg.calls("getFile") == [] and tg.messages(GROUP) == []
        assert await history(app, group) == [(Role.USER, "nice view [photo]")]
        tg.user_message(GROUP, "@palaver_test_bot what did I post?", chat_type="group")
        await tg.wait_for_message(GROUP, contains="Echo:")
        assert "[Tester] nice view [photo]" in text_of(claude.requests[-1])
        assert claude.media_log[-1]["images"] == 0 and tg.calls("getFile") == []


async def test_the_same_file_sent_twice_is_kept_once(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    chart = png(300, 200)
    async with running(config(tmp_path, db_url, tg, claude)) as app:
        tg.user_message(ANN, caption="first", document=("chart.png", chart))
        await tg.wait_for_message(ANN, contains="Echo: first")
        tg.user_message(ANN, caption="again", document=("chart-copy.png", chart))
        await tg.wait_for_message(ANN, contains="Echo: again")
        assert await app.manager.store.attachments.count_blobs() == (1, len(chart))
        session = await app.manager.find_by_chat(PRIVATE)
        assert session is not None
        kept = await app.manager.attachments(session.id)
        assert [a.name for files in kept.values() for a in files] == ["chart.png", "chart-copy.png"]
        assert claude.media_log[-1]["images"] == 2  # both turns are in the context


SUMMARIZER = "claude-haiku-4-5"
SEEN = "Facts: whiteboard photo.jpg shows a three-step rollout plan."


def seeing_summarizer(body: JSON) -> str:
    """The fake's answers: the summarizer's fixed summary, else the echo of the turn."""
    if body["model"] == SUMMARIZER:
        return SEEN
    content = body["messages"][-1]["content"]
    return "Echo: " + " ".join(b["text"] for b in content if b["type"] == "text")[:200]


async def test_a_summary_sees_the_images_it_covers_once_and_they_are_not_sent_again(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    claude.responder = seeing_summarizer
    memory = MemorySettings(token_limit=2200, summary_max_tokens=200)
    settings = config(tmp_path, db_url, tg, claude, memory=memory)
    async with running(settings):
        tg.user_message(ANN, caption="our whiteboard", photo=jpeg(1600, 1200))
        await tg.wait_for_message(ANN, contains="Echo: our whiteboard")
    async with running(settings) as app:  # a restart: the photo comes back from the database
        tg.user_message(ANN, "what was on it?")
        await tg.wait_for_message(ANN, contains="Echo: what was on it?")
        assert claude.media_log[-1]["images"] == 1
        for i in range(5):
            tg.user_message(ANN, f"point {i}")
            await tg.wait_for_message(ANN, contains=f"Echo: point {i}")
        await app.manager.wait_for_summaries()
        session = await app.manager.find_by_chat(PRIVATE)
        assert session is not None
        [summary] = await app.manager.summaries(session.id)
        assert summary.first_seq == 1 and summary.summarizer == f"claude:{SUMMARIZER}"
        assert summary.text == SEEN  # the model's words, which describe the photo
        assert len(claude.media_log) == len(claude.requests)  # every request accepted
        asked = [i for i, r in enumerate(claude.requests) if r["model"] == SUMMARIZER]
        [first] = asked
        assert claude.media_log[first]["images"] == 1  # the photo, once, beside its message
        request = json.dumps(claude.requests[first])
        assert "[image: photo.jpg, 1238x928]" in request and "say briefly" in request
        folded = len(claude.requests)

        # Later turns and later summaries never carry it again.
        for i in range(14):
            tg.user_message(ANN, f"step {i}: " + "we talked about the rollout again. " * 12)
            await tg.wait_for_message(ANN, contains=f"Echo: step {i}:")
            await app.manager.wait_for_summaries()
        later = claude.media_log[folded:]
        assert later and all(m["images"] == 0 for m in later)
        again = [i for i, r in enumerate(claude.requests) if r["model"] == SUMMARIZER]
        assert len(again) > 1 and all(claude.media_log[i]["images"] == 0 for i in again[1:])
        summaries = await app.manager.summaries(session.id)
        assert summaries[-1].last_seq > summary.last_seq


def too_large_with_files(body: JSON) -> str:
    """The fake as an API (or gateway) that finds a summary request with files too big."""
    if body["model"] == SUMMARIZER and "base64" in json.dumps(body):
        raise ApiError(413, "Request exceeds the maximum allowed number of bytes.")
    return seeing_summarizer(body)


@pytest.mark.parametrize("how", ["configured", "learned", "too_large"])
async def test_a_summarizer_that_cannot_read_images_summarizes_them_by_name(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, how: str
) -> None:
    memory = MemorySettings(token_limit=2200, summary_max_tokens=200)
    text_only = (SUMMARIZER,) if how == "configured" else ()
    refusing = (SUMMARIZER,) if how != "too_large" else ()
    responder = too_large_with_files if how == "too_large" else seeing_summarizer
    async with (
        FakeAnthropic(text_only_models=refusing, responder=responder) as claude,
        running(
            config(tmp_path, sqlite_url, tg, claude, memory=memory, text_only_models=text_only)
        ) as app,
    ):
        tg.user_message(ANN, caption="our whiteboard", photo=jpeg(1600, 1200))
        await tg.wait_for_message(ANN, contains="Echo: our whiteboard")
        for i in range(6):
            tg.user_message(ANN, f"point {i}")
            await tg.wait_for_message(ANN, contains=f"Echo: point {i}")
        await app.manager.wait_for_summaries()
        session = await app.manager.find_by_chat(PRIVATE)
        assert session is not None
        [summary] = await app.manager.summaries(session.id)
        assert (summary.text, summary.fallback) == (SEEN, False)  # the model's, by name
        asked = [r for r in claude.requests if r["model"] == SUMMARIZER]
        # Learned: one refusal about the image, then the same request in text at once.
        assert len(asked) == (1 if how == "configured" else 2)
        assert "base64" not in json.dumps(asked[-1])
        assert "[image: photo.jpg, 1238x928]" in json.dumps(asked[-1])


# -- models that cannot read files -----------------------------------------------------------


async def test_a_model_that_cannot_read_images_answers_the_text_and_nothing_is_lost(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram
) -> None:
    async with (
        FakeAnthropic(text_only_models=("claude-sonnet-4-6",)) as claude,
        running(config(tmp_path, sqlite_url, tg, claude)) as app,
    ):
        tg.user_message(ANN, caption="what's this?", photo=jpeg(640, 480))
        reply = await tg.wait_for_message(ANN, contains="Echo: what's this?")
        assert (
            "(claude-sonnet-4-6 can't read images or PDFs, so I answered from the text "
            in (reply["text"])
        )
        assert "Your file is kept with the conversation.)" in reply["text"]
        assert len(claude.requests) == 2 and files_of(claude.requests[-1]) == []
        tg.user_message(ANN, caption="and this one?", document=("a.pdf", pdf(1)))
        await tg.wait_for_message(ANN, contains="Echo: and this one?")
        assert len(claude.requests) == 3  # learned: no second refusal
        session = await app.manager.find_by_chat(PRIVATE)
        assert session is not None
        assert len(await app.manager.attachments(session.id)) == 2


async def test_a_model_configured_as_text_only_is_never_sent_files(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    settings = config(tmp_path, sqlite_url, tg, claude, text_only_models=("claude-sonnet-4-6",))
    async with running(settings):
        tg.user_message(ANN, caption="look", photo=jpeg(320, 240))
        reply = await tg.wait_for_message(ANN, contains="Echo: look")
        assert "can't read images or PDFs" in reply["text"]
        assert len(claude.requests) == 1 and claude.media_log[-1]["images"] == 0


async def test_without_a_model_the_user_is_told_and_the_files_are_kept(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram
) -> None:
    async with running(config(tmp_path, sqlite_url, tg, None)) as app:
        tg.user_message(ANN, caption="see this", photo=jpeg(320, 240))
        reply = await tg.wait_for_message(ANN, contains="No model is configured")
        assert "I can't look at images or PDFs without a model; your file is kept" in reply["text"]
        session = await app.manager.find_by_chat(PRIVATE)
        assert session is not None
        assert len(await app.manager.attachments(session.id)) == 1


async def test_a_session_over_its_file_limit_is_told_and_the_text_answered(
    tmp_path: Path, sqlite_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    limits = AttachmentSettings(session_max_bytes=150_000, store_max_bytes=150_000)
    async with running(config(tmp_path, sqlite_url, tg, claude, attachments=limits)):
        tg.user_message(ANN, caption="one", document=("a.png", png(200, 200, noise=True)))
        await tg.wait_for_message(ANN, contains="Echo: one")
        tg.user_message(ANN, caption="two", document=("b.png", png(200, 200, noise=True)))
        await tg.wait_for_message(ANN, contains="I skipped b.png (this conversation already keeps")
        await tg.wait_for_message(ANN, contains="Echo: two")
        assert claude.media_log[-1]["images"] == 1


async def test_a_file_the_api_refuses_is_not_sent_again_and_the_text_is_answered(
    claude: FakeAnthropic,
) -> None:
    settings = ClaudeSettings(base_url=claude.url, max_retries=0)
    client = anthropic.AsyncAnthropic(api_key=claude.api_key, base_url=claude.url, max_retries=0)
    agent = ClaudeAgent(client, settings, Pricing(settings))
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n and then nothing").decode()
    ref = ("c0ffee", "image/png", 100, 20, 0)

    def request(media_left_out: int = 0, refs: tuple[MediaRef, ...] = (ref,)) -> AgentRequest:
        context = Context(
            session_id=1,
            system="",
            summaries=(),
            messages=(ContextMessage(Role.USER, "look", None, refs),),
            estimated_tokens=110,
            budget=1000,
            dropped_messages=0,
            media_left_out=media_left_out,
            files=len(refs),
        )
        return AgentRequest(context, "claude-sonnet-4-6", 100, 1, media={"c0ffee": broken})

    try:
        reply = [event async for event in agent.stream(request())][-1]
        assert isinstance(reply, AgentReply)
        assert reply.text == (
            "Echo: look\n\n(Claude couldn't read your file (Could not process image), so I "
            "answered from the text alone. Your file is kept with the conversation.)"
        )
        assert len(claude.requests) == 2 and files_of(claude.requests[-1]) == []
        again = [event async for event in agent.stream(request())][-1]
        assert isinstance(again, AgentReply) and "Claude couldn't read your file, so" in again.text
        assert len(claude.requests) == 3  # not offered again
        # A file that did not fit the budget is said to have been left out.
        left = [event async for event in agent.stream(request(1, ()))][-1]
        assert isinstance(left, AgentReply) and left.text.endswith(
            "(Your file didn't fit in this conversation's token budget, so I answered from the "
            "text alone. Your file is kept with the conversation.)"
        )
    finally:
        await client.close()
