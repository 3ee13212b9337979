"""The console interface: chat in the terminal, through the same core as every bot.

The person at the console is the operator: always allowed, never rate-limited (the
access policy knows the "console" interface). At a terminal it feels like a chat
program: line editing and history (prompt_toolkit, history kept in the data dir),
a spinner while the model works, and the reply rendered from Markdown (rich). When
stdin or stdout is not a terminal it stays scriptable: plain lines in, the reply
streamed as plain text out. Log lines never interleave with the chat: in console
mode they go to ``palaver.log`` in the data dir (see run.py). ``/export`` writes
its file into ``<data dir>/exports`` and prints the path.
"""

from __future__ import annotations

import asyncio
import getpass
import shutil
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console as RichConsole
from rich.live import Live
from rich.markdown import Markdown
from rich.spinner import Spinner

from conversation.access import Actor
from conversation.dispatcher import Dispatcher
from conversation.inbound import Inbound
from conversation.outbound import Outbound, OutboundFile, ReplyStream
from memory.private_files import private_dir, private_file
from memory.types import ChatKey

KEY = ChatKey("console", "local")
PROMPT = "you> "
REPLY = "palaver> "


def operator() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "operator"
    return Actor("console", user, user)


class _PlainStream:
    """The reply streamed as plain text, for pipes and scripts."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._printed = ""
        self._started = False

    def _write(self, text: str) -> None:
        self._out.write(text)
        self._out.flush()

    async def update(self, text: str) -> None:
        if not self._started:
            self._write(REPLY)
            self._started = True
        if text.startswith(self._printed):
            self._write(text[len(self._printed) :])
            self._printed = text

    async def finish(self, text: str) -> None:
        if self._started and text.startswith(self._printed):
            self._write(text[len(self._printed) :] + "\n")
        else:  # nothing streamed, or the stream broke off: the whole text on its own line
            self._write(("\n" if self._started else "") + REPLY + text + "\n")
        self._printed = text
        self._started = False

    async def close(self) -> None:
        if self._started:
            self._write("\n")


class _LiveStream:
    """A spinner until text arrives, then the reply rendered as Markdown as it grows."""

    def __init__(self, console: RichConsole) -> None:
        self._live = Live(
            Spinner("dots", text="thinking..."), console=console, refresh_per_second=8
        )
        self._live.start()

    async def update(self, text: str) -> None:
        self._live.update(Markdown(text))

    async def finish(self, text: str) -> None:
        self._live.update(Markdown(text))
        self._live.stop()

    async def pause(self) -> None:
        """Stop redrawing, so that a question can be asked below the reply so far."""
        if self._live.is_started:
            self._live.stop()

    async def close(self) -> None:
        if self._live.is_started:
            self._live.update("")
            self._live.stop()


def _copy_private(source: Path, target: Path) -> Path:
    """Copy into a file that is 0600 before a byte is written (folder 0700)."""
    private_dir(target.parent)
    private_file(target)
    shutil.copyfile(source, target)
    return target


class ConsolePort:
    """The outbound port of the terminal (see conversation.outbound)."""

    upload_limit = 1 << 40  # a file on the local disk

    def __init__(
        self,
        out: TextIO,
        exports: Path,
        rich: RichConsole | None,
        answer: Callable[[str, Sequence[tuple[str, str]]], Coroutine[Any, Any, None]],
    ) -> None:
        self._out = out
        self._exports = exports
        self._rich = rich
        self._answer = answer
        self._asking: set[asyncio.Task[None]] = set()
        self._live: _LiveStream | None = None

    async def send(self, text: str, *, markdown: bool = False, skip: int = 0) -> None:
        if skip:  # one part, shown already
            return
        if self._rich is not None and markdown:
            self._rich.print(Markdown(text))
        elif self._rich is not None:
            self._rich.print(text, markup=False, highlight=False)
        else:
            self._out.write(text + "\n")
            self._out.flush()

    async def send_file(self, file: OutboundFile, caption: str) -> None:
        """Files land in the exports folder of the data dir, private to the operator."""
        target = await asyncio.to_thread(_copy_private, file.path, self._exports / file.name)
        await self.send(f"{caption}\nSaved to {target}")

    async def offer(self, text: str, choices: Sequence[tuple[str, str]]) -> None:
        """A question at the terminal: the operator types the first letter of a choice."""
        if self._live is not None:
            await self._live.pause()
        labels = " / ".join(f"[{label[0].lower()}]{label[1:]}" for label, _ in choices)
        await self.send(f"{text}\n{labels}?")
        task = asyncio.create_task(self._answer(text, choices))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    def stream(self) -> ReplyStream:
        if self._rich is not None:
            self._live = _LiveStream(self._rich)
            return self._live
        return _PlainStream(self._out)

    def private(self) -> Outbound | None:
        return None  # the terminal is the operator's alone

    def private_hint(self, command: str) -> str:
        return f"Run /{command} again."


class Console:
    """Reads lines and hands each to the dispatcher, one at a time."""

    name = "console"

    def __init__(
        self,
        dispatcher: Dispatcher,
        data_dir: Path,
        *,
        stdin: TextIO | None = None,
        stdout: TextIO | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.data_dir = data_dir
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.stdout
        self.actor = operator()
        self.interactive = self.stdin.isatty() and self.stdout.isatty()
        rich = RichConsole(file=self.stdout) if self.interactive else None
        self.port = ConsolePort(self.stdout, data_dir / "exports", rich, self._answer)
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._prompt: Any = None  # prompt_toolkit's session, at a terminal

    async def handle(self, text: str) -> None:
        await self.dispatcher.handle(Inbound(KEY, self.actor, text), self.port)

    async def run(self) -> None:
        if self.interactive:
            await self._run_interactive()
        else:
            await self._run_piped()

    async def _answer(self, question: str, choices: Sequence[tuple[str, str]]) -> None:
        """Read the operator's answer to an ``offer`` (the next line) for the core."""
        line = await self._read("> ")
        typed = (line or "").strip().lower()
        picked = next((data for label, data in choices if typed[:1] == label[0].lower()), None)
        if picked is None:  # no answer (end of input) or not one of them: the last choice
            picked = choices[-1][1]
        await self.port.send(self.dispatcher.choose(KEY, self.actor, picked))

    async def _read(self, prompt: str) -> str | None:
        """The next line: from prompt_toolkit at a terminal, else from stdin's thread."""
        if self._prompt is not None:
            try:
                line: str = await self._prompt.prompt_async(prompt)
                return line
            except (EOFError, KeyboardInterrupt):
                return None
        return await self._lines.get()

    async def _run_interactive(self) -> None:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        history = self.data_dir / "console_history"
        await asyncio.to_thread(history.touch, mode=0o600, exist_ok=True)
        self._prompt = PromptSession(history=FileHistory(str(history)))
        while True:
            try:
                line = await self._prompt.prompt_async(PROMPT)
            except EOFError:
                return
            except KeyboardInterrupt:
                continue
            if line.strip():
                await self.handle(line)

    async def _run_piped(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._lines

        def read() -> None:  # a daemon thread, so that quitting never waits for input
            for line in self.stdin:
                loop.call_soon_threadsafe(queue.put_nowait, line.rstrip("\n"))
            for _ in range(2):  # one for the loop, one for a question still open
                loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=read, name="console-stdin", daemon=True).start()
        while (text := await queue.get()) is not None:
            if text.strip():
                self.stdout.write(PROMPT + text + "\n")
                await self.handle(text)
