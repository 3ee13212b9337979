"""No secret in any log line: the whole program at DEBUG, with all the secrets set,
against the fakes of Telegram, Discord and the Messages API, through a start, turns
on both platforms, failures (a rejected API key, a stream cut midway, rejected bot
tokens at start) and a SIGTERM shutdown. Whatever the libraries log, raw or
percent-encoded, the secrets must not be in the output; their names stand there.
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from bots.redaction import Redactor
from tests.fakes.anthropic_api import FakeAnthropic
from tests.fakes.discord_api import FakeDiscord
from tests.fakes.telegram_api import FakeTelegram

ROOT = Path(__file__).resolve().parent.parent

TELEGRAM = "7001234567:AAHsecretTelegramTokenValue-xyz_0123"
DISCORD = "MTIzNDU2Nzg5MDEy.secretDiscordToken.value-abc_987"
ANTHROPIC = "sk-ant-api03-secretAnthropicKey-value_456"
ADMIN = "palaver admin/secret+token 0987"  # spaces, a slash and a plus: encodes differently
SECRETS = {
    "TELEGRAM_BOT_TOKEN": TELEGRAM,
    "DISCORD_BOT_TOKEN": DISCORD,
    "ANTHROPIC_API_KEY": ANTHROPIC,
    "PALAVER_ADMIN_TOKEN": ADMIN,
}
ALICE = 111_111_111_111_111_111
ANN = 4242

# discord.py has no base URL setting: point its two class attributes at the fake
# (what FakeDiscord.patch_discord does in-process), then run Palaver's entry point.
LAUNCH = """
import os, sys, yarl
from discord.gateway import DiscordWebSocket
from discord.http import Route
Route.BASE = os.environ["FAKE_DISCORD_API"]
DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(os.environ["FAKE_DISCORD_GATEWAY"])
import run
sys.exit(run.main(sys.argv[1:]))
"""


def forms(secret: str) -> set[str]:
    """The secret as it may appear in a log line: raw, or percent-encoded in a URL."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)}


def assert_no_secret(output: str, secrets: dict[str, str]) -> None:
    for name, secret in secrets.items():
        for form in forms(secret):
            assert form not in output, f"{name} in the output as {form!r}"
        # Not even a long piece of it (a token cut in two by a line break).
        assert secret[len(secret) // 4 : -len(secret) // 4] not in output, name


class Process:
    """``run.py`` in a child process, stdout read line by line, stderr to a file."""

    def __init__(self, tmp_path: Path, env: dict[str, str]) -> None:
        self.tmp_path = tmp_path
        self.env = env
        self.stdout: list[str] = []
        self.stderr_path = tmp_path / f"stderr-{id(self)}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        config = self.tmp_path / "palaver.toml"
        config.write_text("")
        with self.stderr_path.open("wb") as stderr:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                LAUNCH,
                "--config",
                str(config),
                cwd=ROOT,
                env=self.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )

    async def line_with(self, text: str, timeout: float = 30.0) -> str:  # noqa: ASYNC109
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.proc.stdout.readline()
                if not raw:
                    raise AssertionError(f"exited before {text!r}: {self.output()[-3000:]}")
                line = raw.decode(errors="replace")
                self.stdout.append(line)
                if text in line:
                    return line

    async def finish(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            rest = await self.proc.stdout.read()
            self.stdout.append(rest.decode(errors="replace"))
            return await self.proc.wait()

    def output(self) -> str:
        return "".join(self.stdout) + self.stderr_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()


def environment(
    tmp_path: Path, tg: FakeTelegram, dc: FakeDiscord, claude: FakeAnthropic
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PALAVER_") and k not in SECRETS and k != "ANTHROPIC_BASE_URL"
    }
    env.update(SECRETS)
    env.update(
        PALAVER_PALAVER__LOG_LEVEL="DEBUG",
        PALAVER_PALAVER__DATA_DIR=str(tmp_path / "data"),
        PALAVER_PALAVER__SHUTDOWN_GRACE_S="5",
        PALAVER_TELEGRAM__BASE_URL=tg.base_url,
        PALAVER_TELEGRAM__BASE_FILE_URL=tg.base_file_url,
        PALAVER_TELEGRAM__POLL_TIMEOUT_S="1",
        PALAVER_CLAUDE__BASE_URL=claude.url,
        PALAVER_CLAUDE__MAX_RETRIES="0",
        PALAVER_CLAUDE__TIMEOUT_S="5",
        PALAVER_ACCESS__ALLOW_EVERYONE="true",
        PALAVER_DISCORD__CONNECT_TIMEOUT_S="10",
        FAKE_DISCORD_API=dc.api_base,
        FAKE_DISCORD_GATEWAY=dc.gateway_url,
    )
    return env


async def test_no_secret_at_debug_through_start_turns_failures_and_sigterm(
    tmp_path: Path,
) -> None:
    async with (
        FakeTelegram(token=TELEGRAM) as tg,
        FakeDiscord(token=DISCORD) as dc,
        FakeAnthropic(api_key=ANTHROPIC) as claude,
    ):
        process = Process(tmp_path, environment(tmp_path, tg, dc, claude))
        await process.start()
        try:
            await process.line_with("palaver: discord is up")
            # A user pastes the admin token and the API key into the chat: the model
            # call, the echoed answer and the Bot API calls are all logged at DEBUG.
            tg.user_message(ANN, f"keep these safe: {ADMIN} and {ANTHROPIC}", user_id=ANN)
            await tg.wait_for_message(ANN, timeout=20, contains="Echo:")
            await dc.user_message(None, "hello from Discord", author_id=ALICE)
            dm = dc.dm_channel(ALICE)
            await dc.wait_for(lambda: dc.channel_messages(dm), timeout=20)

            claude.fail_next(401)  # the API key rejected: logged for the operator
            tg.user_message(ANN, "are you there?", user_id=ANN)
            await tg.wait_for_message(ANN, timeout=20, contains="API key was rejected")
            claude.fail_mid_stream(after_chunks=1, how="drop")  # a stream cut midway
            tg.user_message(ANN, "tell me a long story about the sea and the ships", user_id=ANN)
            await tg.wait_for_message(ANN, timeout=20, contains="broke off")

            assert process.proc is not None
            process.proc.send_signal(signal.SIGTERM)
            assert await process.finish() == 0
        finally:
            process.kill()
    output = process.output()
    assert_no_secret(output, SECRETS)
    assert "Set Bot API URL" in output  # DEBUG reached python-telegram-bot
    assert "[TELEGRAM_BOT_TOKEN]" in output  # ...and its URL was redacted, not dropped
    assert "[PALAVER_ADMIN_TOKEN]" in output and "[ANTHROPIC_API_KEY]" in output
    assert "palaver: stopping" in output


@pytest.mark.parametrize("platform", ["telegram", "discord"])
async def test_no_secret_when_a_bot_token_is_rejected_at_start(
    tmp_path: Path, platform: str
) -> None:
    async with (
        FakeTelegram(token=TELEGRAM) as tg,
        FakeDiscord(token=DISCORD) as dc,
        FakeAnthropic(api_key=ANTHROPIC) as claude,
    ):
        env = environment(tmp_path, tg, dc, claude)
        wrong = {
            "telegram": ("TELEGRAM_BOT_TOKEN", "7009999999:AAHwrongSecretToken-rejected_42"),
            "discord": ("DISCORD_BOT_TOKEN", "OTk5OTk5OTk5.wrongSecretDiscord.rejected-42"),
        }[platform]
        env[wrong[0]] = wrong[1]
        if platform == "discord":
            del env["TELEGRAM_BOT_TOKEN"]
        process = Process(tmp_path, env)
        await process.start()
        try:
            assert await process.finish() == 1
        finally:
            process.kill()
    output = process.output()
    assert "cannot start" in output and "rejected" in output
    assert_no_secret(output, {**SECRETS, wrong[0]: wrong[1]})


# -- the redactor on its own: every way a record carries text -------------------------------


def test_every_part_of_a_record_is_redacted_whatever_the_logger() -> None:
    redactor = Redactor({"TELEGRAM_BOT_TOKEN": TELEGRAM, "PALAVER_ADMIN_TOKEN": ADMIN})
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s %(extra_field)s"))
    root = logging.getLogger()
    lonely = logging.getLogger("test.lonely")  # propagate=False, a handler of its own
    lonely.propagate = False
    lonely_stream = io.StringIO()
    lonely.addHandler(logging.StreamHandler(lonely_stream))
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    lonely.setLevel(logging.DEBUG)
    try:
        with redactor.installed():
            url = f"https://api.telegram.org/bot{quote(TELEGRAM, safe='')}/getMe"
            logging.getLogger("telegram.ext").debug(
                "Set Bot API URL: %s", url, extra={"extra_field": f"header {TELEGRAM}"}
            )
            try:
                raise RuntimeError(f"request to /bot{TELEGRAM}/getMe failed")
            except RuntimeError:
                logging.getLogger("lib").exception("lazy %r", ADMIN, extra={"extra_field": ""})
            logging.getLogger("lib").warning(
                "stack", stack_info=True, extra={"extra_field": quote_plus(ADMIN)}
            )
            lonely.error("lonely %s", TELEGRAM)
            late = logging.getLogger("test.late")  # made after install, propagate=False
            late.propagate = False
            late.addHandler(logging.StreamHandler(lonely_stream))
            late.error("late %s", TELEGRAM)
            logging.getLogger("lib").info(  # arguments that do not fit: still logged
                "%s %s", "too few args", extra={"extra_field": ""}
            )
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        lonely.handlers.clear()
        logging.getLogger("test.late").handlers.clear()
    output = stream.getvalue() + lonely_stream.getvalue()
    assert "Set Bot API URL: https://api.telegram.org/bot[TELEGRAM_BOT_TOKEN]/getMe" in output
    assert "header [TELEGRAM_BOT_TOKEN]" in output
    assert "RuntimeError: request to /bot[TELEGRAM_BOT_TOKEN]/getMe failed" in output
    assert "lazy '[PALAVER_ADMIN_TOKEN]'" in output
    assert "lonely [TELEGRAM_BOT_TOKEN]" in output
    assert "late [TELEGRAM_BOT_TOKEN]" in output
    assert "too few args" in output
    assert_no_secret(output, {"TELEGRAM_BOT_TOKEN": TELEGRAM, "PALAVER_ADMIN_TOKEN": ADMIN})
    # Once uninstalled, records are left alone again.
    assert logging.getLogRecordFactory() is logging.LogRecord
