"""Copying files and trees between a store and the local disk (``nexus get`` / ``nexus put``).

Both directions follow ``cp -R --preserve=timestamps,links`` (and ``rsync -a``)
on what they copy, and ``cp`` on what they find in the way:

* A symlink is copied as a symlink, also when it is the source itself (``-L``
  follows it instead). Fifos, sockets and device nodes are recreated as such;
  hard links between copied files stay hard links. New entries get the source's
  mode and times; an existing regular file is written in place (its inode,
  its other links and its mode are kept) and gets the source's times.
* Writing a file where something already is: a symlink is followed (a dangling
  one is refused, as cp refuses it); a fifo or a device node is opened and
  written to, as cp does, never removed (a full device ends in ENOSPC); a
  socket is refused; a read-only file is refused with EACCES unless ``force``,
  which replaces it; a directory is refused.
* A symlink, special file or second hard link where a file or symlink is gets
  that entry replaced, as cp does; a fifo, socket or device node in the way of
  anything but file content is never removed (the copy is refused instead).
* A directory where a non-directory is (or the reverse) is refused.

Each refusal is one error, reported through ``report`` while the rest of the
tree is still copied (cp goes on too); the caller exits non-zero at the end.
"""

from __future__ import annotations

import errno
import os
import stat
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from . import paths
from .errors import FsError

CHUNK = 1 << 20

#: what an error becomes: printed by the CLI, which goes on with the next entry
Report = Callable[[BaseException], None]

_KINDS = {
    stat.S_IFDIR: "directory",
    stat.S_IFREG: "regular file",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
}
_SPECIAL = (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)


def kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "file of unknown type")


def copy_stream(read: Callable[[int], bytes], write: Callable[[bytes], Any],
                progress: Callable[[int], Any] | None = None) -> int:
    """Copy ``read(CHUNK)`` to ``write`` until the end; return the bytes copied."""
    done = 0
    while chunk := read(CHUNK):
        write(chunk)
        done += len(chunk)
        if progress is not None:
            progress(len(chunk))
    return done


class NamedSink:
    """A binary stream whose write errors name it ('out.jsonl: No space left on device').

    For standard output (``pipe_quiet``) a closed pipe stays an unnamed EPIPE,
    which the CLI takes as its reader having gone away.
    """

    def __init__(self, stream: IO[bytes], name: str, *, pipe_quiet: bool = False) -> None:
        self.stream = stream
        self.name = name
        self.pipe_quiet = pipe_quiet

    def write(self, data: bytes) -> int:
        try:
            return self.stream.write(data)
        except OSError as exc:
            raise self._named(exc) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise self._named(exc) from None

    def close(self) -> None:
        try:
            self.stream.close()
        except OSError as exc:
            raise self._named(exc) from None

    def _named(self, exc: OSError) -> OSError:
        if exc.filename is not None or isinstance(exc, FsError) or (self.pipe_quiet and exc.errno == errno.EPIPE):
            return exc
        return OSError(exc.errno, exc.strerror, self.name)

    def __enter__(self) -> NamedSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read_only(mode: int, uid: int, gid: int) -> bool:
    """Whether a file may not be written by this process; for root (who may write anything), by anybody.

    cp as root overwrites a read-only file without a word; here it takes --force.
    """
    if os.geteuid() == 0:
        return not mode & 0o222
    if uid == os.geteuid():
        return not mode & stat.S_IWUSR
    if gid == os.getegid() or gid in os.getgroups():
        return not mode & stat.S_IWGRP
    return not mode & stat.S_IWOTH


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


# ------------------------------------------------------------ local side
def open_local_for_write(path: str, *, force: bool = False, mode: int = 0o600) -> tuple[NamedSink, bool]:
    """Open ``path`` on the local disk for a file's content, as cp would; (sink, whether it was created).

    A new file is created with ``mode`` (the caller sets the final mode once the
    content is written, so a private file is never readable half-way).
    """
    st = _lstat(path)
    if st is not None and stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise FsError(errno.ENOENT, f"not writing through dangling symlink {path}") from None
    if st is None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        return NamedSink(os.fdopen(fd, "wb", buffering=CHUNK), path), True
    fmt = stat.S_IFMT(st.st_mode)
    if fmt == stat.S_IFDIR:
        raise FsError(errno.EISDIR, f"cannot overwrite directory {path} with a file")
    if fmt == stat.S_IFSOCK:
        raise FsError(errno.ENXIO, f"cannot write to socket {path}")
    if fmt == stat.S_IFREG and _read_only(st.st_mode, st.st_uid, st.st_gid):
        if not force:
            raise FsError(errno.EACCES, f"{path}: Permission denied (read-only; --force replaces it)")
        os.unlink(path)
        return open_local_for_write(path, mode=mode)
    flags = os.O_WRONLY | os.O_CLOEXEC | (os.O_TRUNC if fmt == stat.S_IFREG else 0)
    fd = os.open(path, flags)  # a fifo waits here for its reader, as it does for cp
    return NamedSink(os.fdopen(fd, "wb", buffering=CHUNK), path), False


@dataclass
class _TreeCopy(ABC):
    """Walks a source tree parents first and copies each entry; subclasses say how, for one side each.

    ``_entry`` copies one entry (True: a directory to go into), ``_children``
    lists a directory's (source, target) pairs, ``_finish_dir`` sets a copied
    directory's mode and times once everything is in it.
    """

    nx: Any
    report: Report
    force: bool = False
    progress: Callable[[int], Any] | None = None
    #: (target directory, its source, whether it was created) to finish at the end
    dirs: list[tuple[str, Any, bool]] = field(default_factory=list)

    def copy(self, source: Any, target: str) -> None:
        """Copy ``source`` (and what is below it) to ``target``; each failure is reported, the rest goes on."""
        try:
            if not self._entry(source, target):
                return
        except OSError as exc:
            self.report(exc)
            return
        stack = [(source, target)]
        while stack:
            directory, dtarget = stack.pop()
            try:
                children = self._children(directory, dtarget)
            except OSError as exc:
                self.report(exc)
                continue
            subdirs = []
            for child, ctarget in children:
                try:
                    if self._entry(child, ctarget):
                        subdirs.append((child, ctarget))
                except OSError as exc:
                    self.report(exc)
            stack.extend(reversed(subdirs))

    def finish(self) -> None:
        """Directory modes and times, deepest first (writing into them changed their times)."""
        for d, source, created in reversed(self.dirs):
            try:
                self._finish_dir(d, source, created)
            except OSError as exc:
                self.report(exc)
        self.dirs.clear()

    @abstractmethod
    def _entry(self, source: Any, target: str) -> bool:
        """Copy one entry; True if it is a directory whose entries are to be copied."""

    @abstractmethod
    def _children(self, source: Any, target: str) -> list[tuple[Any, str]]:
        """(source, target) of each entry of directory ``source``, in name order."""

    @abstractmethod
    def _finish_dir(self, target: str, source: Any, created: bool) -> None:
        """Give a copied directory its times (and, if it was created, its mode)."""


@dataclass
class Getter(_TreeCopy):
    """Copies entries of a store (FileInfo) to the local disk (``nexus get``)."""

    #: store inode -> local path written for it (hard links)
    links: dict[int, str] = field(default_factory=dict)

    def _children(self, info: Any, target: str) -> list[tuple[Any, str]]:
        return [(e, os.path.join(target, os.fsdecode(paths.encode(e.path.rsplit("/", 1)[-1]))))
                for e in sorted(self.nx.list(info.path, attrs=True), key=lambda e: e.path)]

    def _finish_dir(self, target: str, info: Any, created: bool) -> None:
        if created:
            os.chmod(target, info.permissions)
        os.utime(target, ns=(info.atime_ns, info.mtime_ns))

    def _entry(self, e: Any, target: str) -> bool:
        """Copy one entry; True if it is a directory whose entries are to be copied."""
        st = _lstat(target)
        if e.is_dir:
            if st is None:
                os.mkdir(target, 0o700)
            elif not stat.S_ISDIR(st.st_mode):
                raise FsError(errno.ENOTDIR, f"cannot overwrite non-directory {target} with directory {e.path}")
            self.dirs.append((target, e, st is None))
            return True
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise FsError(errno.EISDIR, f"cannot overwrite directory {target} with non-directory {e.path}")
        if e.is_file:
            first = self.links.get(e.ino) if e.nlink > 1 else None
            if first is not None:
                self._replace(target, st, e, lambda: os.link(first, target))
            else:
                self._file(e, target)
                if e.nlink > 1:
                    self.links[e.ino] = target
        elif e.type == "symlink":
            if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(target) == e.target:
                return False
            self._replace(target, st, e, lambda: os.symlink(e.target, target))
            os.utime(target, ns=(e.atime_ns, e.mtime_ns), follow_symlinks=False)
        else:
            fmt = stat.S_IFMT(e.mode)
            same = st is not None and stat.S_IFMT(st.st_mode) == fmt and st.st_rdev == e.rdev
            if not same:
                self._replace(target, st, e, lambda: _mknod(target, fmt | 0o600, e.rdev))
                os.chmod(target, e.permissions)
            os.utime(target, ns=(e.atime_ns, e.mtime_ns))
        return False

    def _replace(self, target: str, st: os.stat_result | None, e: Any, make: Callable[[], None]) -> None:
        """Make ``target`` anew; a file or symlink in the way goes (as cp does), a special file stays."""
        if st is not None:
            if stat.S_IFMT(st.st_mode) in _SPECIAL:
                raise FsError(errno.EEXIST, f"not replacing {kind(st.st_mode)} {target} with {kind(e.mode)} "
                                             f"{e.path} (remove it first)")
            if stat.S_ISREG(st.st_mode) and self.links.get(e.ino) is not None and \
                    os.path.samestat(st, os.stat(self.links[e.ino])):
                return  # already that hard link
            os.unlink(target)
        make()

    def _file(self, e: Any, target: str) -> None:
        sink, created = open_local_for_write(target, force=self.force)
        with sink, self.nx.open(e.path, "rb") as f:
            copy_stream(f.read, sink.write, self.progress)
        if created:
            os.chmod(target, e.permissions)
        if created or stat.S_ISREG(os.stat(target).st_mode):
            os.utime(target, ns=(e.atime_ns, e.mtime_ns))


def _mknod(path: str, mode: int, rdev: int) -> None:
    try:
        os.mknod(path, mode, rdev)
    except PermissionError:
        raise FsError(errno.EPERM, f"cannot create {kind(mode)} {path}: Operation not permitted "
                                    "(device nodes need root)") from None


# ------------------------------------------------------------ store side
def local_tree_bytes(top: str) -> int:
    """The bytes of the regular files below ``top`` on the local disk (symlinks not followed)."""
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


@dataclass
class Putter(_TreeCopy):
    """Copies entries of the local disk, given as (path, lstat), into a store (``nexus put``)."""

    #: (st_dev, st_ino) of a local file -> store path written for it (hard links)
    links: dict[tuple[int, int], str] = field(default_factory=dict)

    def _children(self, source: tuple[str, os.stat_result], target: str) -> list[tuple[Any, str]]:
        with os.scandir(source[0]) as it:
            entries = sorted(it, key=lambda e: e.name)
        return [((e.path, e.stat(follow_symlinks=False)), paths.join(target, e.name)) for e in entries]

    def _finish_dir(self, target: str, source: tuple[str, os.stat_result], created: bool) -> None:
        st = source[1]
        if created:
            self.nx.chmod(target, stat.S_IMODE(st.st_mode))
        self.nx.utime(target, (st.st_atime_ns, st.st_mtime_ns))

    def _existing(self, target: str) -> Any:
        try:
            return self.nx.stat(target, follow_symlinks=False)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def _entry(self, source: tuple[str, os.stat_result], target: str) -> bool:
        local, st = source
        fi = self._existing(target)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            if fi is None:
                self.nx.mkdir(target, mode=0o700)
            elif not fi.is_dir:
                raise FsError(errno.ENOTDIR, f"cannot overwrite non-directory {target} with directory {local}")
            self.dirs.append((target, source, fi is None))
            return True
        if fi is not None and fi.is_dir:
            raise FsError(errno.EISDIR, f"cannot overwrite directory {target} with non-directory {local}")
        if fmt == stat.S_IFREG:
            key = (st.st_dev, st.st_ino)
            first = self.links.get(key) if st.st_nlink > 1 else None
            if first is not None:
                if fi is None or fi.ino != self.nx.stat(first).ino:
                    self._replace(target, fi, st, lambda: self.nx.link(first, target))
            else:
                self._file(local, st, target, fi)
                if st.st_nlink > 1:
                    self.links[key] = target
        elif fmt == stat.S_IFLNK:
            link_target = os.readlink(local)
            if fi is None or fi.type != "symlink" or fi.target != link_target:
                self._replace(target, fi, st, lambda: self.nx.symlink(link_target, target))
        else:
            same = fi is not None and fi.mode & 0o170000 == fmt and fi.rdev == st.st_rdev
            if not same:
                self._replace(target, fi, st, lambda: self.nx.mknod(target, fmt | 0o600, st.st_rdev))
                self.nx.chmod(target, stat.S_IMODE(st.st_mode))
            self.nx.utime(target, (st.st_atime_ns, st.st_mtime_ns))
        return False

    def _replace(self, target: str, fi: Any, st: os.stat_result, make: Callable[[], None]) -> None:
        if fi is not None:
            if stat.S_IFMT(fi.mode) in _SPECIAL:
                raise FsError(errno.EEXIST, f"not replacing {kind(fi.mode)} {target} with {kind(st.st_mode)} "
                                             f"(remove it first)")
            self.nx.delete(target)
        make()

    def _file(self, local: str, st: os.stat_result, target: str, fi: Any) -> None:
        """Write the content of ``local`` to ``target``: in place if a regular file is there."""
        if fi is not None and fi.type == "symlink":
            try:
                fi = self.nx.stat(target)
            except FsError as exc:
                if exc.errno != errno.ENOENT:
                    raise
                raise FsError(errno.ENOENT, f"not writing through dangling symlink {target}") from None
            if fi.is_dir:
                raise FsError(errno.EISDIR, f"cannot overwrite directory {target} with non-directory {local}")
        if fi is not None and stat.S_IFMT(fi.mode) in _SPECIAL:
            raise FsError(errno.EINVAL, f"cannot write into {kind(fi.mode)} {target} (a store keeps no data there)")
        if fi is not None and _read_only(fi.mode, fi.uid, fi.gid):
            if not self.force:
                raise FsError(errno.EACCES, f"{target}: Permission denied (read-only; --force replaces it)")
            self.nx.delete(target)
            fi = None
        with open(local, "rb") as src, self.nx.open(target, "wb", mode_bits=0o600) as dst:
            copy_stream(src.read, dst.write, self.progress)
        if fi is None:
            self.nx.chmod(target, stat.S_IMODE(st.st_mode))
        self.nx.utime(target, (st.st_atime_ns, st.st_mtime_ns))
