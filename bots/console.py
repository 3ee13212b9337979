"""The console interface: chat in the terminal through the same turn and commands.

stdin is read by a daemon thread, so that quitting never waits for a keypress.
"""

from __future__ import annotations

import asyncio
import getpass
import sys
import threading
from typing import TextIO

from bots.access import Actor
from bots.commands import Commands, parse_command
from bots.turn import Incoming, Turn
from memory.types import ChatKey

KEY = ChatKey("console", "local")


def _reader(
    loop: asyncio.AbstractEventLoop, stream: TextIO, queue: asyncio.Queue[str | None]
) -> None:
    for line in stream:
        loop.call_soon_threadsafe(queue.put_nowait, line)
    loop.call_soon_threadsafe(queue.put_nowait, None)


class Console:
    def __init__(
        self,
        turn: Turn,
        commands: Commands,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self.turn = turn
        self.commands = commands
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "operator"
        self.actor = Actor("console", user, user)

    def _write(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    async def run(self) -> None:
        queue: asyncio.Queue[str | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=_reader, args=(loop, self.stdin, queue), name="console-stdin", daemon=True
        ).start()
        self._write("you> ")
        while (line := await queue.get()) is not None:
            text = line.rstrip("\n")
            if text.strip():
                await self.handle(text)
            self._write("you> ")
        self._write("\n")

    async def handle(self, text: str) -> None:
        command = parse_command(text)
        if command is not None:
            reply = await self.commands.run(*command, KEY, self.actor)
            self._write(reply.text + "\n")
            return
        streamed = ""
        self._write("palaver> ")

        async def progress(so_far: str) -> None:
            nonlocal streamed
            self._write(so_far[len(streamed) :])
            streamed = so_far

        result = await self.turn.handle(Incoming(KEY, self.actor, text), on_progress=progress)
        if result.text.startswith(streamed):
            self._write(result.text[len(streamed) :] + "\n")
        else:  # the stream broke off: say what happened on a line of its own
            self._write("\n" + result.text + "\n")
