"""A project's directory must resolve inside projects.root: real symlinks, real ``..``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agents.workspace import WorkspaceError, resolve_workdir
from memory.errors import PalaverError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "projects" / "app").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    return tmp_path / "projects"


def test_a_directory_inside_the_root(root: Path) -> None:
    assert resolve_workdir(root, "app") == (root / "app").resolve()
    assert resolve_workdir(root, root / "app") == (root / "app").resolve()
    assert resolve_workdir(root, "app/../app") == (root / "app").resolve()


def test_escapes_are_refused(root: Path, tmp_path: Path) -> None:
    for escape in ("../outside", str(tmp_path / "outside"), "app/../../outside", "/etc"):
        with pytest.raises(WorkspaceError, match="outside the projects root"):
            resolve_workdir(root, escape)
    with pytest.raises(WorkspaceError, match="projects root itself"):
        resolve_workdir(root, ".")


def test_symlinks_are_followed_before_the_check(root: Path, tmp_path: Path) -> None:
    os.symlink(tmp_path / "outside", root / "sneaky")
    with pytest.raises(WorkspaceError, match="outside the projects root"):
        resolve_workdir(root, "sneaky")
    # A link through a parent directory is caught too, even for a directory to create.
    with pytest.raises(WorkspaceError, match="outside the projects root"):
        resolve_workdir(root, "sneaky/new", create=True)
    assert not (tmp_path / "outside" / "new").exists()
    # A link that stays inside the root is fine: it is where the CLI will really work.
    os.symlink(root / "app", root / "alias")
    assert resolve_workdir(root, "alias") == (root / "app").resolve()
    # A root reached through a symlink compares by its real path.
    os.symlink(root, tmp_path / "root-link")
    assert resolve_workdir(tmp_path / "root-link", "app") == (root / "app").resolve()


def test_missing_directories_are_created_only_on_request(root: Path) -> None:
    with pytest.raises(WorkspaceError, match="does not exist"):
        resolve_workdir(root, "new/deep")
    made = resolve_workdir(root, "new/deep", create=True)
    assert made.is_dir() and made == (root / "new" / "deep").resolve()


def test_bad_input_gets_a_plain_error(root: Path, tmp_path: Path) -> None:
    (root / "file.txt").write_text("x")
    cases = {
        "": "directory is needed",
        "  ": "directory is needed",
        "a\x00b": "NUL",
        "file.txt": "not a directory",
    }
    for workdir, message in cases.items():
        with pytest.raises(WorkspaceError, match=message):
            resolve_workdir(root, workdir)
    with pytest.raises(WorkspaceError, match="does not exist"):
        resolve_workdir(tmp_path / "no-root", "app")
    assert issubclass(WorkspaceError, PalaverError)
