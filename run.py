"""Palaver's entry point.

python run.py [--config FILE]               start what is configured (the console
                                             when no bot token is set)
python run.py [--config FILE] console       chat in the terminal
python run.py [--config FILE] check-config  print the effective configuration
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bots.app import Palaver
from bots.config import Config, ConfigError, load_config, render_config
from bots.console import Console
from memory.errors import PalaverError


async def serve(config: Config, *, console_only: bool) -> int:
    app = Palaver(config)
    try:
        await app.start()
    except PalaverError as error:
        print(f"palaver: cannot start: {error}", file=sys.stderr)
        return 1
    try:
        print(app.startup_hint(), flush=True)
        await Console(app.turn, app.commands).run()
    finally:
        await app.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="palaver", description="A chat-bot host for Claude.")
    parser.add_argument("--config", type=Path, help="configuration file (default: config.toml)")
    parser.add_argument(
        "command", nargs="?", default="run", choices=["run", "console", "check-config"]
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"palaver: {error}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.palaver.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "check-config":
        print(render_config(config))
        return 0
    try:
        return asyncio.run(serve(config, console_only=args.command == "console"))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
