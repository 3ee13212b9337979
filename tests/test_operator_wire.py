"""The operator surface beside a real bot: python-telegram-bot against the fake Bot
API and the anthropic SDK against the fake Messages API, with the HTTP API on. Its
metrics count Telegram's 429s and the turns; /readyz sees the bot's connection."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr

from bots.app import Palaver
from bots.http_settings import HttpSettings
from bots.telegram_bot import TelegramBot
from conversation.job_settings import JobsSettings
from memory.settings import MemorySettings
from memory.types import ChatKey, SessionStatus
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.telegram_api import FakeTelegram
from tests.operator_surface import AUTH, TOKEN
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
