"""The async store: every SQL statement Palaver runs, one repository per concern.

Core statements over the tables of memory.models, returning the plain data of
memory.types. Every write to a session bumps its ``version`` inside the same
transaction that locks the row (``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE`` on
PostgreSQL), so a process can tell when another one changed a session and never
trusts a stale copy: that, not process memory, is what keeps several processes safe.

Only ``memory.manager.SessionManager`` uses the store; everything else goes through it.
"""

from __future__ import annotations

from memory.database import Database
from memory.store.admin import Admin
from memory.store.attachments import Attachments
from memory.store.events import Events
from memory.store.jobs import JobRuns
from memory.store.messages import Messages
from memory.store.projects import Projects
from memory.store.rows import (
    AppendOutcome,
    NewMessage,
    SessionDelta,
    Snapshot,
    tail_after,
    utcnow,
)
from memory.store.sessions import Sessions
from memory.store.summaries import Summaries
from memory.store.usage import UsageLedger

__all__ = [
    "AppendOutcome",
    "NewMessage",
    "SessionDelta",
    "Snapshot",
    "Store",
    "tail_after",
    "utcnow",
]


class Store:
    """The repositories of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.projects = Projects(db)
        self.sessions = Sessions(db)
        self.messages = Messages(db)
        self.summaries = Summaries(db)
        self.events = Events(db)
        self.usage = UsageLedger(db)
        self.jobs = JobRuns(db)
        self.admin = Admin(db)
        self.attachments = Attachments(db)
