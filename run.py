"""Palaver's entry point.

python run.py [--config FILE]               start what is configured (the console
                                             when no bot token is set)
python run.py [--config FILE] console       chat in the terminal
python run.py [--config FILE] check-config  print the effective configuration
python run.py [--config FILE] sessions|stats|jobs ...
                                             the operator's commands (bots.admin_cli;
                                             --help lists them)
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from bots import admin_cli
from bots.app import Palaver, freeze_startup_heap
from bots.config import Config, ConfigError, load_config, render_config
from bots.console import Console
from bots.redaction import Redactor
from conversation.outbound import Interface
from memory.errors import PalaverError
from memory.private_files import private_dir, private_file

log = logging.getLogger("palaver")


def cannot_start(error: BaseException) -> str:
    """One line for a start that failed: Palaver's own errors speak plain words;
    anything else is named by its type (the traceback goes to the debug log)."""
    if isinstance(error, PalaverError):
        return str(error)
    return f"{type(error).__name__}: {error}"


async def serve(config: Config, *, console_only: bool) -> int:
    """Start the application and its interfaces in this loop; stop on SIGINT/SIGTERM.

    Shutdown: the interfaces stop taking events, the core lets the turns in flight
    finish for ``shutdown_grace_s`` (then cancels them; their messages are kept and
    answered after the restart), the interfaces close, and memory is flushed.

    Every way out (a signal, a start that fails midway, an error while serving)
    goes through the same shutdown: whatever was opened is closed, an interface
    that failed half-way through its start included. A start that fails prints
    one line and returns 1; a signal during the start stops it there.
    """
    redactor = Redactor.for_config(config)
    app = Palaver(config)
    started: list[Interface] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)

    async def bring_up() -> None:
        await app.start()
        interfaces: list[Interface] = [] if console_only else app.build_interfaces()
        for interface in interfaces:
            started.append(interface)  # stopped at the end even if its start fails
            await interface.start()
            print(f"palaver: {interface.name} is up", flush=True)
        freeze_startup_heap()
        await app.resume(started)
        await app.start_jobs()

    try:
        starting = asyncio.create_task(bring_up(), name="palaver-start")
        stopped = asyncio.create_task(stop.wait(), name="palaver-stop-signal")
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not starting.done():  # a signal while starting: stop there
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            print("palaver: stopping", flush=True)
            return 0
        error = starting.exception()
        if error is not None:
            log.debug("start failed", exc_info=error)
            print(f"palaver: cannot start: {redactor.redact(cannot_start(error))}", file=sys.stderr)
            return 1
        if not [i for i in started if i.name != "api"]:  # no bot: the console (beside the API)
            print(app.startup_hint(), flush=True)
            console = Console(app.dispatcher, config.palaver.data_dir)
            chatting = asyncio.create_task(console.run())
            waiter = asyncio.create_task(stop.wait())
            await asyncio.wait({chatting, waiter}, return_when=asyncio.FIRST_COMPLETED)
            for task in (chatting, waiter):
                task.cancel()
        else:
            await stop.wait()
            print("palaver: stopping", flush=True)
    finally:
        try:
            await app.close_interfaces(started, config.palaver.shutdown_grace_s)
        finally:
            try:
                await app.stop()
            finally:
                for signum in signals:
                    loop.remove_signal_handler(signum)
    return 0


def configure_logging(config: Config, *, console: bool) -> None:
    """Log lines to stderr; in console mode to ``palaver.log`` in the data dir instead,
    so that they never interleave with the chat at the terminal."""
    formatter = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    # APScheduler logs every firing at INFO; the job runner logs what a run did.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    if not console:
        logging.basicConfig(level=config.palaver.log_level, format=formatter, stream=sys.stderr)
        return
    private_dir(config.palaver.data_dir)
    path = private_file(config.palaver.data_dir / "palaver.log")
    logging.basicConfig(level=config.palaver.log_level, format=formatter, filename=path)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if admin_cli.handles(arguments):  # sessions ..., stats: the operator's commands
        return admin_cli.main(arguments)
    parser = argparse.ArgumentParser(
        prog="palaver",
        description="A chat-bot host for Claude.",
        epilog=admin_cli.overview(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="configuration file (default: config.toml)")
    parser.add_argument(
        "command",
        nargs="?",
        default="run",
        choices=["run", "console", "check-config"],
        help="run: start what is configured (default); console: chat in the terminal; "
        "check-config: print the effective configuration",
    )
    args = parser.parse_args(arguments)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        # Secrets come only from the environment: redacted from a bad
        # configuration's own lines too.
        admin_cli.report_config_error(error)
        return 2
    secrets = config.secrets
    console = args.command == "console" or not (
        secrets.telegram_bot_token or secrets.discord_bot_token
    )
    if args.command != "check-config":
        configure_logging(config, console=console)
    redactor = Redactor.for_config(config)
    with redactor.installed():
        for note in config.notes:
            log.warning("config: %s", note)
        if args.command == "check-config":
            print(redactor.redact(render_config(config)))
            return 0
        try:
            return asyncio.run(serve(config, console_only=args.command == "console"))
        except KeyboardInterrupt:
            return 130
        except Exception:
            # Logged, not left to the interpreter to print: the record is redacted.
            log.critical("palaver stopped by an unexpected error", exc_info=True)
            return 1


if __name__ == "__main__":
    sys.exit(main())
