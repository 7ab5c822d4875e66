"""Helpers for the mounted tests: raw syscalls through ctypes, running code as
another user, and snapshots of directory trees for comparison."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import pickle
import stat
import traceback
from collections.abc import Callable
from typing import Any

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2

NOBODY = 65534


def _check(ret: int, what: str, *paths: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}", *paths[:1])


def renameat2(old: str, new: str, flags: int) -> None:
    """rename(2) with flags (RENAME_NOREPLACE, RENAME_EXCHANGE); raises OSError."""
    _libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    ret = _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags)
    _check(ret, "renameat2", old)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def utimensat(path: str, atime: tuple[int, int], mtime: tuple[int, int], flags: int = 0) -> None:
    """utimensat(2); each time is (seconds, nanoseconds), nanoseconds may be UTIME_NOW/UTIME_OMIT."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _libc.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    ret = _libc.utimensat(AT_FDCWD, os.fsencode(path), ctypes.addressof(times), flags)
    _check(ret, "utimensat", path)


def errno_of(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """Run ``fn``; 0 if it succeeded, else the errno of the OSError it raised."""
    try:
        fn(*args, **kwargs)
    except OSError as exc:
        return exc.errno or -1
    return 0


# ------------------------------------------------------------ other users
def as_user(fn: Callable[..., Any], *args: Any, uid: int = NOBODY, gid: int = NOBODY,
            groups: list[int] | None = None, cwd: str | None = None, timeout: float = 60.0) -> Any:
    """Run ``fn(*args)`` in a forked child with the given credentials; return its result.

    An OSError in the child is re-raised here with the same errno. The child
    changes into ``cwd`` *before* dropping privileges, so relative paths work
    even where the user could not traverse the directories above it (pytest's
    temporary directories are 0700).
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        status = 0
        try:
            os.close(r)
            try:
                if cwd is not None:
                    os.chdir(cwd)
                os.setgroups(groups or [])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                out: tuple[str, Any] = ("ok", fn(*args))
            except OSError as exc:
                out = ("oserror", (exc.errno, str(exc)))
            except BaseException:  # noqa: BLE001 - reported to the parent
                out = ("error", traceback.format_exc())
            data = pickle.dumps(out)
            view = memoryview(data)
            while view:
                n = os.write(w, view)
                view = view[n:]
            os.close(w)
        except BaseException:  # noqa: BLE001
            status = 1
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    try:
        import select

        while True:
            ready, _, _ = select.select([r], [], [], timeout)
            if not ready:
                os.kill(pid, 9)
                raise TimeoutError(f"child running {fn.__name__} as uid {uid} timed out")
            chunk = os.read(r, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "ok":
        return value
    if kind == "oserror":
        raise OSError(value[0], value[1])
    raise AssertionError(f"child failed:\n{value}")


def errno_as_user(fn: Callable[..., Any], *args: Any, **kw: Any) -> int:
    """0 if ``fn(*args)`` succeeded as the user, else its errno."""
    return errno_of(as_user, fn, *args, **kw)


# ------------------------------------------------------------ tree snapshots
def snapshot(root: str, *, mtimes: bool = False, dir_mtimes: bool = False, xattrs: bool = False,
             owners: bool = False) -> dict[str, tuple]:
    """relative path -> (type, mode, size/target, sha256, nlink[, mtime_ns][, xattrs]) of a whole tree.

    ``mtimes`` adds the mtime of regular files, ``dir_mtimes`` that of directories, ``owners`` uid and gid; hard links of each other are
    listed as a group (inode numbers differ between file systems).
    """
    out: dict[str, tuple] = {}
    links: dict[int, list[str]] = {}

    def visit(rel: str) -> None:
        path = os.path.join(root, rel) if rel else root
        st = os.lstat(path)
        mode = stat.S_IMODE(st.st_mode)
        fmt = stat.S_IFMT(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            entry: tuple = ("link", None, os.readlink(path), None, st.st_nlink)
        elif stat.S_ISDIR(st.st_mode):
            entry = ("dir", mode, None, None, st.st_nlink)
        elif stat.S_ISREG(st.st_mode):
            h = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            entry = ("file", mode, st.st_size, h.hexdigest(), st.st_nlink)
            links.setdefault(st.st_ino, []).append(rel)
        else:
            entry = (oct(fmt), mode, None, None, st.st_nlink)
        if mtimes and stat.S_ISREG(st.st_mode):  # (rsync -H leaves fifo times alone)
            entry += (st.st_mtime_ns,)
        if dir_mtimes and stat.S_ISDIR(st.st_mode):
            entry += (st.st_mtime_ns,)
        if owners:
            entry += (st.st_uid, st.st_gid)
        if xattrs and not stat.S_ISLNK(st.st_mode):
            entry += (tuple(sorted((n, os.getxattr(path, n)) for n in os.listxattr(path))),)
        if rel:
            out[rel] = entry
        if stat.S_ISDIR(st.st_mode):
            for name in sorted(os.listdir(path)):
                visit(os.path.join(rel, name) if rel else name)

    visit("")
    # which names are hard links of each other (inode numbers differ between filesystems)
    groups = {}
    for names in links.values():
        for n in names:
            groups[n] = tuple(sorted(names))
    return {k: v + ((groups.get(k),) if k in groups else ()) for k, v in out.items()}


def diff_snapshots(a: dict[str, tuple], b: dict[str, tuple], limit: int = 20) -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            out.append(f"{k}: {a.get(k)!r} != {b.get(k)!r}")
            if len(out) >= limit:
                break
    return out


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def drop_cache(path: str) -> None:
    """Ask the kernel to forget the cached pages of a file (so the next read hits the filesystem)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


__all__ = [
    "AT_FDCWD",
    "NOBODY",
    "RENAME_EXCHANGE",
    "RENAME_NOREPLACE",
    "UTIME_NOW",
    "UTIME_OMIT",
    "as_user",
    "diff_snapshots",
    "drop_cache",
    "errno_as_user",
    "errno_of",
    "renameat2",
    "sha256_file",
    "snapshot",
    "utimensat",
]
