"""Files and directories that only their owner can use.

A store holds the content of every file in it (small files inline in its database,
the text of indexed files in its search tables, the rest in blobs), so everything
it creates is private: directories 0700, files 0600, whatever the process's umask.

Root may work on a store that belongs to another user (a mount started by root, an
administrator's repair). Whatever it creates there is then given to the store's
owner (``owner``), so the owner can still open and change every file afterwards.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator

#: a directory's mode, and a file's
DIR_MODE = 0o700
FILE_MODE = 0o600
#: the bits that give anyone but the owner access
OTHERS = 0o077

Owner = tuple[int, int]


def owner_for(path: str) -> Owner | None:
    """The (uid, gid) that what root creates below ``path`` must be given, or None when
    there is no one else to give it to (the process is not root, or root owns ``path``)."""
    if os.geteuid() != 0:
        return None
    st = os.stat(path)
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def make_dir(path: str, owner: Owner | None = None) -> bool:
    """Create directory ``path`` (mode 0700 exactly, whatever the umask); False if it exists.
    Its parent must exist."""
    try:
        os.mkdir(path, DIR_MODE)
    except FileExistsError:
        return False
    _own(path, owner)
    return True


def make_dirs(path: str, top: str, owner: Owner | None = None) -> None:
    """Create ``path`` and the missing directories between it and ``top`` (which exists),
    each private."""
    missing = []
    p = os.path.abspath(path)
    top = os.path.abspath(top)
    while p != top and not os.path.isdir(p):
        missing.append(p)
        p = os.path.dirname(p)
    for d in reversed(missing):
        make_dir(d, owner)


def create_file(path: str, owner: Owner | None = None, flags: int = os.O_RDWR) -> int:
    """Create file ``path`` (it must not exist) with mode 0600 exactly; returns an open fd."""
    fd = os.open(path, flags | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have taken bits the owner needs
        if owner is not None:
            os.fchown(fd, *owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: str, flags: int, owner: Owner | None = None) -> int:
    """Open ``path``, creating it private (see :func:`create_file`) if it does not exist."""
    try:
        return os.open(path, flags | os.O_CLOEXEC)
    except FileNotFoundError:
        pass
    try:
        return create_file(path, owner, flags)
    except FileExistsError:  # created by someone else in between
        return os.open(path, flags | os.O_CLOEXEC)


def _own(path: str, owner: Owner | None) -> None:
    os.chmod(path, DIR_MODE)
    if owner is not None:
        os.chown(path, *owner)


def exposure(st: os.stat_result, uid: int) -> str | None:
    """Why a file or directory with status ``st`` is not private to ``uid``, or None
    (a symlink's own mode means nothing: what it points to is checked where it is)."""
    if stat.S_ISLNK(st.st_mode):
        return None
    if st.st_uid != uid:
        return f"belongs to uid {st.st_uid}, not to the store's owner (uid {uid})"
    mode = stat.S_IMODE(st.st_mode)
    if mode & OTHERS:
        return f"is {mode:04o}, should be {mode & ~OTHERS:04o}"
    return None


def make_private(path: str, st: os.stat_result, uid: int, gid: int) -> None:
    """Take away what others may do with ``path`` (and give it to ``uid`` if root may)."""
    if st.st_uid != uid:
        os.chown(path, uid, gid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & OTHERS:
        os.chmod(path, mode & ~OTHERS)


def walk(top: str) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of ``top`` and of every file and directory below it (symlinks are
    not followed)."""
    stack = [top]
    try:
        yield top, os.lstat(top)
    except FileNotFoundError:
        return
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with it:
            for entry in it:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                yield entry.path, st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(entry.path)
