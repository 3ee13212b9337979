"""Where a project's Claude Code works: a directory that must stay inside
``projects.root``.

The directory is resolved the way the operating system will resolve it when the CLI
and the commands it runs use it (every symlink followed, every ``..`` applied), and
only then compared with the root, itself resolved: a link inside the root that points
outside it is refused like a plain ``../..``. The check is made when a project is
created or changed and again before every turn, because a directory can be replaced by
a symlink between the two.
"""

from __future__ import annotations

import os
from pathlib import Path

from memory.errors import PalaverError


class WorkspaceError(PalaverError):
    """A project directory that cannot be used; the message says why, in plain words."""


def resolve_workdir(root: Path | str, workdir: Path | str, *, create: bool = False) -> Path:
    """The real path of ``workdir`` (relative paths are taken under ``root``).

    Raises ``WorkspaceError`` when it escapes ``root``, does not exist (unless
    ``create``), or is not a directory. ``create`` makes missing directories, and only
    after the escape check, so nothing is ever created outside the root.
    """
    root_path = Path(root).expanduser()
    try:
        real_root = root_path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise WorkspaceError(
            f"The projects root {root_path} does not exist; create it or set projects.root."
        ) from None
    except (OSError, RuntimeError) as error:  # RuntimeError: a symlink loop
        raise WorkspaceError(f"The projects root {root_path} cannot be used: {error}") from None
    if not real_root.is_dir():
        raise WorkspaceError(f"The projects root {root_path} is not a directory.")

    raw = str(workdir).strip()
    if not raw:
        raise WorkspaceError("A project directory is needed.")
    if "\x00" in raw:
        raise WorkspaceError("A project directory cannot contain a NUL character.")
    candidate = Path(raw).expanduser()
    if not candidate.is_absolute():
        candidate = real_root / candidate
    try:
        # strict=False: a directory still to be created resolves through its
        # existing parents, whose links are followed like the rest.
        real = candidate.resolve(strict=False)
    except (OSError, RuntimeError) as error:
        raise WorkspaceError(f"The directory {raw} cannot be resolved: {error}") from None
    if real != real_root and not real.is_relative_to(real_root):
        raise WorkspaceError(
            f"The directory {raw} is outside the projects root {real_root}: project "
            "directories must be inside it (symlinks and .. that leave it are refused)."
        )
    if real == real_root:
        raise WorkspaceError(
            f"The directory {raw} is the projects root itself; give each project a "
            "directory of its own inside it."
        )
    if not real.exists():
        if not create:
            raise WorkspaceError(f"The directory {raw} does not exist.")
        try:
            real.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise WorkspaceError(f"The directory {raw} cannot be created: {error}") from None
        # Made through links that changed meanwhile? Check what was really made.
        return resolve_workdir(real_root, real, create=False)
    if not real.is_dir():
        raise WorkspaceError(f"{raw} is not a directory.")
    if not os.access(real, os.R_OK | os.X_OK):
        raise WorkspaceError(f"The directory {raw} cannot be read by Palaver.")
    return real
