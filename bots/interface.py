"""What an interface is, to the application: something that starts and stops.

Each interface (Telegram, Discord) runs inside the one event loop that run.py owns,
beside the others and the scheduler. ``stop`` must stop taking new messages, let
turns in flight finish within ``grace`` seconds, and return; the application then
flushes memory and closes the database.
"""

from __future__ import annotations

from typing import Protocol


class Interface(Protocol):
    name: str

    async def start(self) -> None:
        """Connect and begin receiving; raise PalaverError (e.g. a bad token) to abort."""
        ...

    async def stop(self, grace: float) -> None:
        """Stop receiving, finish turns in flight (at most ``grace`` seconds), close."""
        ...
