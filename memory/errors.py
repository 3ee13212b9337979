"""Errors the memory layer raises.

Every error here carries a message that is safe to show to a chat user: it never
contains a secret, a connection string or a stack trace. Interfaces catch
``PalaverError`` and render ``str(error)``.
"""

from __future__ import annotations


class PalaverError(Exception):
    """Base class: an expected failure with a plain-words message."""


class InvalidMessage(PalaverError):
    """The message cannot be stored as given (empty, too long, not text, bad role)."""


class SessionNotFound(PalaverError):
    """No session with that id exists (it may have been cleaned up)."""


class ProjectNotFound(PalaverError):
    """No project with that name exists."""


class ProjectExists(PalaverError):
    """A project with that name exists already."""


class SessionNotOpen(PalaverError):
    """The session has ended (or expired) already: it cannot be ended or added to."""


class StoreUnavailable(PalaverError):
    """The database is locked, down or unreachable; nothing was written."""
