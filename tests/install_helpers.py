"""Helpers for the tests of the front door: a fresh copy of the project, as a clone has it."""

from __future__ import annotations

import os
import shutil
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_files() -> list[str]:
    """The files a clone of this checkout holds: tracked ones and new ones not ignored,
    as they are in the working tree (so uncommitted changes are tested too)."""
    out = subprocess.run(["git", "-C", REPO, "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and os.path.lexists(os.path.join(REPO, p))]


def copy_source(dest: str) -> str:
    """Copy the project into ``dest`` (modes kept: run.sh stays executable); returns ``dest``."""
    for rel in project_files():
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(os.path.join(REPO, rel), target, follow_symlinks=False)
    return dest
