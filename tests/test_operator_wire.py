"""The operator surface beside a real bot: python-telegram-bot against the fake Bot
API, or discord.py against the fake Discord, and the anthropic SDK against the fake
Messages API, with the HTTP API on. Its metrics count the platforms' 429s and errors,
the turns, the tokens and the summaries by kind; /readyz sees the bot's connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

import bots.discord_bot as discord_bot
import conversation.delivery as delivery
from agents.settings import ClaudeSettings
from bots.app import Palaver
from bots.config import Config, DiscordSettings, PalaverSettings, Secrets
from bots.http_settings import HttpSettings
from bots.telegram_bot import TelegramBot
from conversation.job_settings import JobsSettings
from conversation.settings import AccessSettings
from memory.settings import DatabaseSettings, MemorySettings
from memory.types import ChatKey, Role, SessionStatus
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.telegram_api import FakeTelegram
from tests.operator_surface import AUTH, TOKEN
from tests.test_discord_bot import ALICE
from tests.test_discord_bot import TOKEN as DC_TOKEN
from tests.test_telegram_bot import ADMIN, ANN, make_config
from tests.test_telegram_bot import TOKEN as BOT_TOKEN

OTHER_JOBS = ("expire", "cleanup", "upgrade_summaries", "upkeep", "prune")


@pytest.fixture
async def tg() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram(token=BOT_TOKEN) as fake:
        yield fake


@pytest.fixture
async def claude() -> AsyncIterator[FakeAnthropic]:
    async with FakeAnthropic() as fake:
        yield fake


async def test_metrics_and_readiness_of_a_running_telegram_bot(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    config = make_config(tmp_path, db_url, tg, claude, telegram={"stream_replies": False})
    config.http = HttpSettings(enabled=True, port=0)
    config.secrets.palaver_admin_token = SecretStr(TOKEN)
    app = Palaver(config)
    await app.start()
    interfaces = app.build_interfaces()
    assert [i.name for i in interfaces] == ["telegram", "api"]
    assert isinstance(interfaces[0], TelegramBot)
    assert app.operator is not None
    started = []
    try:
        for interface in interfaces:
            await interface.start()
            started.append(interface)
        url = app.operator.url
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(url + "/readyz") as response:
                body = await response.json()
                assert response.status == 200, body
                assert body["checks"] == {"database": "ok", "telegram": "connected"}
            tg.flood("sendMessage", times=1, retry_after=1)
            tg.user_message(ANN, "count this")
            await tg.wait_for_message(ANN, contains="Echo: count this", timeout=10)
            async with http.get(url + "/metrics") as response:
                text = await response.text()
            assert 'palaver_platform_rate_limited_total{interface="telegram"} 1.0' in text
            assert 'palaver_turns_total{interface="telegram",outcome="replied"} 1.0' in text
            assert 'palaver_tokens_total{kind="output"}' in text
            await interfaces[0].stop_receiving()
            async with http.get(url + "/readyz") as response:
                body = await response.json()
                assert response.status == 503
                assert body["checks"]["telegram"] == "not connected"
    finally:
        await app.close_interfaces(started, 5.0)
        await app.stop()


async def test_the_serving_app_runs_its_jobs_on_time_and_reports_them(
    tmp_path: Path, db_url: str, tg: FakeTelegram, claude: FakeAnthropic
) -> None:
    """The jobs on the timetable of a running app: a quiet chat is finalized with
    nobody asking; the run is in /metrics, /api/jobs and the admin's /jobs."""
    config = make_config(tmp_path, db_url, tg, claude, telegram={"stream_replies": False})
    config.http = HttpSettings(enabled=True, port=0)
    config.secrets.palaver_admin_token = SecretStr(TOKEN)
    config.memory = MemorySettings(idle_after_s=1)
    config.jobs = JobsSettings.model_validate(
        {"finalize": {"every": 1}, **{job: {"enabled": False} for job in OTHER_JOBS}}
    )
    app = Palaver(config)
    await app.start()
    interfaces = app.build_interfaces()
    started = []
    try:
        for interface in interfaces:
            await interface.start()
            started.append(interface)
        await app.start_jobs()
        tg.user_message(ANN, "remember the heron")
        await tg.wait_for_message(ANN, contains="Echo: remember the heron", timeout=10)
        finalized = None
        for _ in range(300):  # every second; the chat is quiet after one
            runs = await app.manager.job_history("finalize")
            finalized = next((r for r in runs if r.counts.get("finalized")), None)
            if finalized is not None:
                break
            await asyncio.sleep(0.1)
        assert finalized is not None and finalized.outcome == "ok"
        session = await app.manager.find_by_chat(ChatKey("telegram", str(ANN)))
        assert session is not None and session.status is SessionStatus.FINALIZED

        assert app.operator is not None
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.get(app.operator.url + "/metrics") as response:
                text = await response.text()
            assert 'palaver_job_runs_total{job="finalize",outcome="ok"}' in text
            async with http.get(app.operator.url + "/api/jobs") as response:
                jobs = {job["name"]: job for job in (await response.json())["items"]}
            assert jobs["finalize"]["next_run"] is not None
            assert jobs["cleanup"]["enabled"] is False

        tg.user_message(ADMIN, "/jobs")
        listing = await tg.wait_for_message(ADMIN, contains="finalize (every 1 s)", timeout=10)
        assert "cleanup (off)" in listing["text"]
        tg.user_message(ANN, "/jobs")
        await tg.wait_for_message(ANN, contains="admins", timeout=10)
    finally:
        await app.close_interfaces(started, 5.0)
        await app.stop()


async def test_metrics_of_a_running_discord_bot(
    tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """discord.py against the fake Discord, the anthropic SDK against the fake Messages
    API (caching from the first token, so the first turn writes the cache): Discord's
    429 and its 5xx are counted as Discord's, the cache-write tokens as the API
    reported them, and the summaries by who wrote them, Claude or (when Claude
    fails) the extractive fallback."""
    monkeypatch.setattr(discord_bot, "GUILD_READY_TIMEOUT_S", 0.05)
    monkeypatch.setattr(delivery, "FIRST_RETRY_S", 0.2)
    async with (
        FakeDiscord(token=DC_TOKEN, heartbeat_interval_ms=1000) as dc,
        FakeAnthropic(min_cache_tokens=1) as claude,
    ):
        with dc.patch_discord():
            config = Config(
                palaver=PalaverSettings(data_dir=tmp_path),
                database=DatabaseSettings(url=db_url),
                access=AccessSettings(allowed_users=[f"discord:{ALICE}"]),
                claude=ClaudeSettings(base_url=claude.url, max_retries=0),
                discord=DiscordSettings(stream_edit_interval_s=0.2),
                http=HttpSettings(enabled=True, port=0),
                secrets=Secrets(
                    discord_bot_token=SecretStr(DC_TOKEN),
                    anthropic_api_key=SecretStr(claude.api_key),
                    palaver_admin_token=SecretStr(TOKEN),
                ),
            )
            app = Palaver(config)
            await app.start()
            interfaces = app.build_interfaces()
            assert [i.name for i in interfaces] == ["discord", "api"]
            started = []
            try:
                for interface in interfaces:
                    await interface.start()
                    started.append(interface)
                assert app.operator is not None
                dm = dc.dm_channel(ALICE)

                def replies(count: int) -> bool:
                    done = [m for m in dc.channel_messages(dm) if m.content.startswith("Echo:")]
                    return len(done) >= count

                dc.rate_limit(f"POST /channels/{dm}/messages", times=1, retry_after=0.2)
                await dc.user_message(None, "count this", author_id=ALICE)
                await dc.wait_for(lambda: replies(1), timeout=10)
                dc.fail(f"POST /channels/{dm}/messages", 503)  # the outbox tries again
                await dc.user_message(None, "and this", author_id=ALICE)
                await dc.wait_for(lambda: replies(2), timeout=10)
                written = sum(u["cache_creation_input_tokens"] for u in claude.usage_log)
                assert len(claude.usage_log) == 2 and written > 0

                session = await app.manager.find_by_chat(ChatKey("discord", str(dm)))
                assert session is not None
                for n in range(30):
                    await app.manager.add_message(session.id, Role.USER, f"fact {n} of 30")
                assert await app.manager.fold(session.id) is not None  # by Claude
                claude.fail_next(529)  # overloaded: the extractive summarizer steps in
                for n in range(30):
                    await app.manager.add_message(session.id, Role.USER, f"more {n} of 30")
                fallback = await app.manager.fold(session.id)
                assert fallback is not None and fallback.fallback

                async with (
                    aiohttp.ClientSession(headers=AUTH) as http,
                    http.get(app.operator.url + "/metrics") as response,
                ):
                    text = await response.text()
                assert 'palaver_platform_rate_limited_total{interface="discord"} 1.0' in text
                assert (
                    'palaver_platform_api_errors_total{interface="discord",kind="http_5xx"} 1.0'
                    in text
                )
                assert f'palaver_tokens_total{{kind="cache_write"}} {float(written)}' in text
                assert 'palaver_turns_total{interface="discord",outcome="replied"} 2.0' in text
                assert 'palaver_summaries_total{kind="claude"} 1.0' in text
                assert 'palaver_summaries_total{kind="extractive"} 1.0' in text
            finally:
                await app.close_interfaces(started, 5.0)
                await app.stop()
