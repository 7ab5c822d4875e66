"""Store paths: '/'-separated, absolute within the store, UTF-8 (surrogateescape for other bytes)."""

from __future__ import annotations

import errno
import os
import posixpath

from .errors import FsError
from .types import NAME_MAX, PATH_MAX

PathLike = str | bytes | os.PathLike


def check_length(raw: bytes) -> None:
    """ENAMETOOLONG, as the kernel answers, for a path of PATH_MAX bytes or more (the
    kernel counts the final NUL) or a name in it longer than NAME_MAX bytes."""
    if len(raw) >= PATH_MAX:
        raise FsError(errno.ENAMETOOLONG, f"a path of {len(raw)} bytes (at most {PATH_MAX - 1})")
    for name in raw.split(b"/"):
        if len(name) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, f"a name of {len(name)} bytes (at most {NAME_MAX}): "
                                              f"{decode(name[:40])}...")


def to_str(path: PathLike) -> str:
    p = os.fspath(path)
    if isinstance(p, bytes):
        p = p.decode("utf-8", "surrogateescape")
    return p


def normalize(path: PathLike) -> str:
    """'/a/b' form: absolute, no '.', no '//' and no trailing '/'; '..' resolved lexically."""
    p = to_str(path)
    if "\0" in p:
        raise FsError(errno.EINVAL, "path contains a NUL byte")
    check_length(encode(p))
    p = posixpath.normpath("/" + p)
    if p.startswith("//"):
        p = "/" + p.lstrip("/")
    return p


def split(path: PathLike) -> list[bytes]:
    """Components of a normalized path as bytes (empty for the root)."""
    p = normalize(path)
    if p == "/":
        return []
    return [encode(c) for c in p[1:].split("/")]


def encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def decode(name: bytes) -> str:
    return name.decode("utf-8", "surrogateescape")


def join(parent: str, name: bytes | str) -> str:
    n = decode(name) if isinstance(name, bytes) else name
    return ("" if parent == "/" else parent) + "/" + n


def components(path: PathLike) -> tuple[list[bytes], bool]:
    """The names a path walks through, as the kernel walks them, and whether it must end at a directory.

    Unlike :func:`normalize`, nothing is resolved lexically: '.' and '..' stay
    (``/dir/file/..`` is an error, and '..' after a symlink is the parent of its
    target), and a trailing '/' means the last name must be a directory. The
    empty path names nothing (ENOENT), as for the kernel.
    """
    raw = encode(to_str(path))
    if b"\0" in raw:
        raise FsError(errno.EINVAL, "path contains a NUL byte")
    if not raw:
        raise FsError(errno.ENOENT)
    check_length(raw)
    comps = [c for c in raw.split(b"/") if c]
    return comps, raw.endswith(b"/") and bool(comps)


def shown(path: PathLike) -> str:
    """A path as the caller wrote it, for messages ('' shows as two quotes)."""
    p = to_str(path)
    return p if p else "''"
