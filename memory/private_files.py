"""Files only their owner may read: the data directory, the database, exports.

Conversations are private, so the data directory is created 0700 and the files in
it 0600 whatever the umask: the umask only takes bits away (and may take the
owner's too), so each mode is set explicitly on the new file or directory. The
umask itself is never changed: it is process-wide, and every thread creating a
file meanwhile would get it.

SQLite creates a database's ``-wal`` and ``-shm`` files itself, and gives them the
database file's own mode (its unix VFS sets it on creation, umask or not), so a
database file created 0600 first is enough for all three.

What already exists is left as the operator made it, but a looser mode is
logged, one line per path with the path and its mode, when Palaver opens it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def mode_of(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def warn_if_loose(path: Path, private: int) -> bool:
    """Log one line if group or others may use ``path``; True if they may."""
    mode = mode_of(path)
    if not mode & 0o077:
        return False
    log.warning(
        "%s is open to other users (mode %04o); it holds conversations: chmod %o %s",
        path,
        mode,
        private,
        path,
    )
    return True


def private_dir(path: Path) -> Path:
    """Make the directory ``path`` 0700, one level only: its parent must exist, so
    that a mistyped path is refused instead of built somewhere on the disk. An
    existing directory is kept as it is (a looser one is logged)."""
    try:
        path.mkdir(mode=PRIVATE_DIR)
    except FileExistsError:
        if not path.is_dir():
            raise NotADirectoryError(f"{path} exists and is not a directory") from None
        warn_if_loose(path, PRIVATE_DIR)
    else:
        os.chmod(path, PRIVATE_DIR)
    return path


def private_file(path: Path) -> Path:
    """Create ``path`` empty and 0600 if it does not exist; an existing file is kept
    as it is, content and mode (a looser mode is logged). Created exclusively, so a
    file that appears meanwhile is never truncated."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
    except FileExistsError:
        warn_if_loose(path, PRIVATE_FILE)
        return path
    try:
        os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def open_private(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write ``path`` through, 0600, in place once it is complete.

    It is written under a temporary name in the same directory and renamed over
    ``path`` when the block ends without an exception (else removed): a reader
    never sees half an export, and a looser file of the same name is replaced by a
    private one. A missing parent directory is created 0700 (one level). For text,
    wrap it: ``io.TextIOWrapper(file, encoding="utf-8")``.
    """
    if not path.parent.exists():
        private_dir(path.parent)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), PRIVATE_FILE)  # mkstemp's 0600 less the umask
            yield file
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_private(path: Path, data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` whole, 0600 (see open_private)."""
    with open_private(path) as file:
        file.write(data.encode("utf-8") if isinstance(data, str) else data)
    return path
