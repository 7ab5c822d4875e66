"""The Python API: path-based access to a store.

>>> import nexusfs
>>> with nexusfs.connect() as nx:
...     nx.write_bytes("/notes/todo.txt", b"buy milk\\n", parents=True)
...     nx.read_bytes("/notes/todo.txt")
b'buy milk\\n'

Thread-safe: one ``Nexus`` object may be shared by many threads.
"""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Literal, overload

from . import paths
from .config import Config
from .errors import ConfigError, FsError, NexusError, StoreError
from .meta.engine import ObjectRef
from .paths import PathLike
from .search.grep import GrepMatch, GrepOptions, compile_pattern
from .search.index import EmbedderRecord, IndexStatus
from .search.indexer import wait_for_index
from .search.pattern import compile_glob
from .search.service import SearchResults, check_query
from .store import Store
from .types import ROOT_INODE, TIME_NOW, Attr, StoreInfo

MAX_SYMLINKS = 40

#: last names that are no entry of their directory: '.', '..', and b'/' for the root itself
_DOTS = (b".", b"..", b"/")

_TYPE_NAMES = {
    stat.S_IFREG: "file",
    stat.S_IFDIR: "dir",
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "char",
    stat.S_IFBLK: "block",
}


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What ``stat`` says about one path."""

    path: str
    type: str  # file, dir, symlink, fifo, socket, char, block
    size: int
    mode: int  # full st_mode
    uid: int
    gid: int
    nlink: int
    ino: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    btime_ns: int
    blocks: int  # st_blocks (512-byte units stored)
    rdev: int = 0
    target: str | None = None  # symlinks

    @property
    def is_dir(self) -> bool:
        return self.type == "dir"

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9

    @property
    def permissions(self) -> int:
        return stat.S_IMODE(self.mode)


def _info(path: str, attr: Attr, target: bytes | None = None) -> FileInfo:
    return FileInfo(
        path=path,
        type=_TYPE_NAMES.get(stat.S_IFMT(attr.mode), "unknown"),
        size=attr.size,
        mode=attr.mode,
        uid=attr.uid,
        gid=attr.gid,
        nlink=attr.nlink,
        ino=attr.ino,
        atime_ns=attr.atime_ns,
        mtime_ns=attr.mtime_ns,
        ctime_ns=attr.ctime_ns,
        btime_ns=attr.btime_ns,
        blocks=attr.blocks,
        rdev=attr.rdev,
        target=paths.decode(target) if target is not None else None,
    )


def _restated(exc: FsError, shown: str) -> FsError:
    """``exc`` about the caller's whole path: '<path>: <what went wrong>'.

    The engine names an inode or a single name ('x: No such file or directory',
    'inode 12 is a directory'); those give way to the plain errno text. A
    sentence of its own ('cannot move a directory into itself ...') is kept.
    """
    text = os.strerror(exc.errno)
    msg = exc.message
    plain = msg == text or msg.endswith(": " + text) or msg.startswith("inode ")
    out = FsError(exc.errno, f"{shown}: {text if plain else msg}")
    out.filename = shown
    return out


@contextmanager
def _about(path: PathLike, *, text: str | None = None) -> Iterator[None]:
    """Restate an FsError raised inside in terms of ``path`` (or ``text``), unless it names its path already."""
    try:
        yield
    except FsError as exc:
        if exc.filename is not None:
            raise
        raise _restated(exc, text if text is not None else paths.shown(path)) from None


class Nexus:
    """A connection to a store. Use as a context manager, or call :meth:`close`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.vfs = store.vfs
        self.meta = store.meta
        self.config = store.config
        mask = os.umask(0)
        os.umask(mask)
        self.umask = mask
        self.uid = os.getuid()
        self.gid = os.getgid()

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Nexus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def sync(self) -> None:
        """Commit all open files and make every change durable."""
        self.vfs.sync()

    # ------------------------------------------------------------ resolving
    # Paths are walked the way the kernel walks them (see paths.components): '..' is
    # the physical parent, a trailing '/' needs a directory, and a symlink is followed
    # wherever the kernel follows one. Errors carry no path here: every public method
    # restates them with the whole path its caller gave (see _about).

    def _resolve(self, path: PathLike, *, follow: bool = True) -> Attr:
        comps, trailing = paths.components(path)
        return self._walk(comps, follow, trailing=trailing)

    def _walk(self, comps: list[bytes], follow: bool, depth: int = 0, start: int = ROOT_INODE,
              trailing: bool = False) -> Attr:
        attr = self.meta.getattr(start)
        last = len(comps) - 1
        for i, name in enumerate(comps):
            if not attr.is_dir:
                raise FsError(errno.ENOTDIR)
            if name == b".":
                continue
            if name == b"..":
                attr = self.meta.getattr(self.meta.parent_of(attr.ino))
                continue
            parent = attr
            attr = self.vfs.lookup(parent.ino, name)
            if attr.is_symlink and (follow or trailing or i < last):
                target, base = self._link_target(attr, parent, depth)
                tcomps, ttrailing = paths.components(target)
                attr = self._walk(tcomps, True, depth + 1, base, ttrailing)
        if trailing and not attr.is_dir:
            raise FsError(errno.ENOTDIR)
        return attr

    def _link_target(self, link: Attr, parent: Attr, depth: int) -> tuple[bytes, int]:
        """(target, inode the target is walked from) of symlink ``link``, a name in ``parent``."""
        if depth >= MAX_SYMLINKS:
            raise FsError(errno.ELOOP)
        target = self.meta.readlink(link.ino)
        return target, ROOT_INODE if target.startswith(b"/") else parent.ino

    def _parent(self, path: PathLike) -> tuple[Attr, bytes, bool]:
        """(directory, last name, trailing '/') of a path that an operation creates or removes.

        The last name may be '.' or '..', or ``b'/'`` for the root itself (see
        ``_DOTS``): each operation answers those the way the kernel does.
        """
        comps, trailing = paths.components(path)
        if not comps:
            return self.meta.getattr(ROOT_INODE), b"/", True
        return self._walk(comps[:-1], True, trailing=True), comps[-1], trailing

    def _lookup(self, parent: Attr, name: bytes) -> Attr | None:
        """The entry ``name`` of ``parent`` (a symlink is not followed), None if there is none."""
        try:
            return self.vfs.lookup(parent.ino, name)
        except FsError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise

    def _new_name(self, path: PathLike) -> tuple[Attr, bytes]:
        """(directory, name) where symlink() or link() makes a new entry, refused like the kernel refuses."""
        parent, name, trailing = self._parent(path)
        if name in _DOTS:
            raise FsError(errno.EEXIST)
        if trailing:  # 'new/' names a directory, which a link never is
            raise FsError(errno.EEXIST if self._lookup(parent, name) is not None else errno.ENOENT)
        return parent, name

    def _open_target(self, comps: list[bytes], trailing: bool, exclusive: bool, depth: int = 0,
                     start: int = ROOT_INODE) -> tuple[Attr, bytes, Attr | None]:
        """(directory, name, existing entry or None) that open(O_CREAT) opens or creates.

        A final symlink is followed (a dangling one creates its target), except with
        O_EXCL; a trailing '/' or a last name '.' or '..' is EISDIR, as for the kernel.
        """
        if comps:
            parent, name = self._walk(comps[:-1], True, depth, start, trailing=True), comps[-1]
        else:
            parent, name = self.meta.getattr(start), b"/"
        if trailing or name in _DOTS:
            raise FsError(errno.EISDIR)
        attr = self._lookup(parent, name)
        if attr is not None and attr.is_symlink and not exclusive:
            target, base = self._link_target(attr, parent, depth)
            tcomps, ttrailing = paths.components(target)
            return self._open_target(tcomps, ttrailing, exclusive, depth + 1, base)
        return parent, name, attr

    def _shown_path(self, path: PathLike, attr: Attr) -> str:
        """The path to report for ``path`` once resolved to ``attr``: normalized, or the real one after '..'."""
        if b".." in paths.components(path)[0]:
            return paths.decode(self.meta.path_of(attr.ino))
        return paths.normalize(path)

    # ------------------------------------------------------------------ stat
    def exists(self, path: PathLike) -> bool:
        try:
            self._resolve(path)
            return True
        except FsError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False
            raise

    def stat(self, path: PathLike, *, follow_symlinks: bool = True) -> FileInfo:
        with _about(path):
            attr = self._resolve(path, follow=follow_symlinks)
            target = self.meta.readlink(attr.ino) if attr.is_symlink else None
            return _info(self._shown_path(path, attr), attr, target)

    def is_dir(self, path: PathLike) -> bool:
        try:
            return self._resolve(path).is_dir
        except FsError:
            return False

    def is_file(self, path: PathLike) -> bool:
        try:
            return self._resolve(path).is_reg
        except FsError:
            return False

    # ------------------------------------------------------------- contents
    def read_bytes(self, path: PathLike) -> bytes:
        with self.open(path, "rb") as f:
            return f.read()

    def read_text(self, path: PathLike, encoding: str = "utf-8") -> str:
        return self.read_bytes(path).decode(encoding)

    def write_bytes(self, path: PathLike, data: bytes | bytearray | memoryview, *, parents: bool = False,
                    mode: int = 0o644) -> int:
        with self.open(path, "wb", mode_bits=mode, parents=parents) as f:
            return f.write(data)

    def write_text(self, path: PathLike, text: str, encoding: str = "utf-8", *, parents: bool = False) -> int:
        return self.write_bytes(path, text.encode(encoding), parents=parents)

    def append_bytes(self, path: PathLike, data: bytes) -> int:
        with self.open(path, "ab") as f:
            return f.write(data)

    @overload
    def open(self, path: PathLike, mode: Literal["rb", "wb", "ab", "xb", "r+b", "w+b", "a+b", "rb+", "wb+", "ab+"] = "rb", *,
             buffering: int = -1, mode_bits: int = 0o644, parents: bool = False) -> BinaryIO: ...
    @overload
    def open(self, path: PathLike, mode: str, *, buffering: int = -1, encoding: str | None = None,
             mode_bits: int = 0o644, parents: bool = False) -> IO[Any]: ...

    def open(self, path: PathLike, mode: str = "rb", *, buffering: int = -1, encoding: str | None = None,
             mode_bits: int = 0o644, parents: bool = False) -> IO[Any]:
        """Open a file as a streaming file object (``rb``, ``wb``, ``ab``, ``xb``, ``r+b``, text modes too).

        Data is streamed block by block: a file of any size needs only the
        block cache and the dirty buffer in memory. Closing (or ``flush()``)
        commits what was written; a binary file's ``fsync()`` also makes it
        durable (text files: ``f.flush(); f.buffer.fsync()``). ``parents`` creates missing directories
        above a file that is created.
        """
        flags, readable, writable, binary = _parse_mode(mode)
        if parents and flags & os.O_CREAT:
            with _about(path):
                self._make_parents(paths.components(path)[0], 0o755)
        fh = self._open_fh(path, flags, mode_bits)
        raw = NexusFile(self, fh, paths.normalize(path), readable, writable, bool(flags & os.O_APPEND))
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered text I/O is not possible")
            return raw  # type: ignore[return-value]
        size = self.vfs.block_size if buffering in (-1, 1) else buffering
        buffered: BinaryIO
        if readable and writable:
            buffered = _BufferedRandom(raw, size)  # type: ignore[assignment]
        elif writable:
            buffered = _BufferedWriter(raw, size)  # type: ignore[assignment]
        else:
            buffered = io.BufferedReader(raw, size)  # type: ignore[assignment]
        if binary:
            return buffered
        return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", line_buffering=buffering == 1)

    def _open_fh(self, path: PathLike, flags: int, mode_bits: int) -> int:
        with _about(path):
            if flags & os.O_CREAT:
                attr = self._create_file(path, mode_bits, exclusive=bool(flags & os.O_EXCL))
            else:
                attr = self._resolve(path)
            if attr.is_dir:
                raise FsError(errno.EISDIR)
            if not attr.is_reg:
                raise FsError(errno.EINVAL, "not a regular file")
            return self.vfs.open(attr.ino, flags)

    def _create_file(self, path: PathLike, mode_bits: int, *, exclusive: bool = False,
                     umask: int | None = None) -> Attr:
        """The file open(O_CREAT) opens: the existing one (through a final symlink), or a new one."""
        umask = self.umask if umask is None else umask
        comps, trailing = paths.components(path)
        parent, name, attr = self._open_target(comps, trailing, exclusive)
        if attr is not None:
            if exclusive:
                raise FsError(errno.EEXIST)
            return attr
        try:
            return self.vfs.create_node(parent.ino, name, stat.S_IFREG | (mode_bits & ~umask & 0o7777),
                                        self.uid, self.gid)
        except FsError as exc:
            if exc.errno != errno.EEXIST or exclusive:
                raise
            return self.vfs.lookup(parent.ino, name)  # another writer created it just now

    # ------------------------------------------------------------ namespace
    def mkdir(self, path: PathLike, *, parents: bool = False, exist_ok: bool = False, mode: int = 0o755) -> None:
        with _about(path):
            if parents:
                self._make_parents(paths.components(path)[0], mode)
            self._mkdir(path, exist_ok or parents, mode)

    def _make_parents(self, comps: list[bytes], mode: int) -> None:
        """Create the missing directories above the last of ``comps`` (as ``mkdir -p`` does).

        A name in the way that is not a directory is left for the caller's own
        step to report (ENOTDIR, about the whole path).
        """
        for i in range(1, len(comps)):
            try:
                self._mkdir(b"/" + b"/".join(comps[:i]), True, mode)
            except FsError as exc:
                if exc.errno != errno.EEXIST:
                    raise

    def _mkdir(self, path: PathLike, exist_ok: bool, mode: int) -> None:
        parent, name, _trailing = self._parent(path)
        try:
            if name in _DOTS:
                raise FsError(errno.EEXIST)
            self.vfs.create_node(parent.ino, name, stat.S_IFDIR | (mode & ~self.umask & 0o7777), self.uid, self.gid)
        except FsError as exc:
            if exc.errno == errno.EEXIST and exist_ok and self.is_dir(path):
                return
            raise

    def rmdir(self, path: PathLike) -> None:
        with _about(path):
            parent, name, _trailing = self._parent(path)
            if name == b"/":
                raise FsError(errno.EBUSY)
            self.vfs.rmdir(parent.ino, name)  # the engine answers '.' (EINVAL) and '..' (ENOTEMPTY)

    def delete(self, path: PathLike, *, recursive: bool = False, missing_ok: bool = False) -> None:
        """Remove a file, symlink or (with ``recursive``) a whole directory tree.

        Like unlink(2) and ``rm``: a symlink is removed, not what it points to;
        ``name/`` must be a directory; '.' and '..' are refused.
        """
        with _about(path):
            try:
                parent, name, trailing = self._parent(path)
                attr = None if name in _DOTS else self._lookup(parent, name)
            except FsError as exc:
                if missing_ok and exc.errno == errno.ENOENT:
                    return
                raise
            if name == b"/":
                if not recursive:
                    raise FsError(errno.EISDIR)
                self._delete_tree(ROOT_INODE)
                return
            if name in _DOTS:
                raise FsError(errno.EINVAL, "refusing to remove '.' or '..'") if recursive else FsError(errno.EISDIR)
            if attr is None:
                if missing_ok:
                    return
                raise FsError(errno.ENOENT)
            if trailing and not attr.is_dir:
                raise FsError(errno.ENOTDIR)
            if not attr.is_dir:
                self.vfs.unlink(parent.ino, name)
                return
            if not recursive:
                raise FsError(errno.EISDIR, "Is a directory (use recursive=True)")
            self._delete_tree(attr.ino)
            self.vfs.rmdir(parent.ino, name)

    remove = delete

    def _delete_tree(self, ino: int) -> None:
        for name, child, mode in self.meta.list_names(ino):
            if stat.S_ISDIR(mode):
                self._delete_tree(child)
                self.vfs.rmdir(ino, name)
            else:
                self.vfs.unlink(ino, name)

    def rename(self, src: PathLike, dst: PathLike, *, overwrite: bool = True) -> None:
        from .types import RENAME_NOREPLACE

        with _about(src):
            sp, sn, strailing = self._parent(src)
            moved = None if sn in _DOTS else self._lookup(sp, sn)
            if moved is None and sn not in _DOTS:
                raise FsError(errno.ENOENT)
        with _about(dst):
            dp, dn, dtrailing = self._parent(dst)
        with _about(src, text=f"rename {paths.shown(src)} -> {paths.shown(dst)}"):
            if sn in _DOTS or dn in _DOTS:
                raise FsError(errno.EBUSY)
            if (strailing or dtrailing) and moved is not None and not moved.is_dir:
                raise FsError(errno.ENOTDIR)
            self.vfs.rename(sp.ino, sn, dp.ino, dn, 0 if overwrite else RENAME_NOREPLACE)

    move = rename

    def copy(self, src: PathLike, dst: PathLike, *, recursive: bool = True) -> None:
        """Copy a file (metadata only: blocks are shared by reference) or a directory tree."""
        with _about(src):
            sattr = self._resolve(src)
        if sattr.is_dir:
            if not recursive:
                raise _restated(FsError(errno.EISDIR), paths.shown(src))
            dst_n = paths.normalize(dst)
            src_n = paths.normalize(src)
            if dst_n == src_n or dst_n.startswith(src_n.rstrip("/") + "/"):
                raise _restated(FsError(errno.EINVAL, f"cannot copy {src_n} into itself"), paths.shown(dst))
            self.mkdir(dst, mode=stat.S_IMODE(sattr.mode), exist_ok=True)
            for name, child, mode in self.meta.list_names(sattr.ino):
                cs = paths.join(src_n, name)
                cd = paths.join(dst_n, name)
                if stat.S_ISLNK(mode):
                    self.symlink(paths.decode(self.meta.readlink(child)), cd)
                elif stat.S_ISDIR(mode) or stat.S_ISREG(mode):
                    self.copy(cs, cd)
            return
        if not sattr.is_reg:
            raise _restated(FsError(errno.EINVAL, "only files and directories can be copied"), paths.shown(src))
        # commit the source first so the clone sees everything written to it
        oi = self.vfs._open.get(sattr.ino)  # noqa: SLF001 - same package
        if oi is not None:
            self.vfs._commit(oi)  # noqa: SLF001
        with _about(dst):
            if self.is_dir(dst):
                dst = paths.join(paths.normalize(dst), paths.decode(paths.components(src)[0][-1]))
            dattr = self._create_file(dst, stat.S_IMODE(sattr.mode), umask=0)
            if dattr.is_dir:
                raise FsError(errno.EISDIR)
            if not dattr.is_reg:
                raise FsError(errno.EINVAL, "not a regular file")
        if dattr.ino == sattr.ino:
            raise FsError(errno.EINVAL, f"{paths.normalize(src)} and {paths.normalize(dst)} are the same file")
        if dattr.ino in self.vfs._open:  # noqa: SLF001
            fh = self.vfs.open(dattr.ino, os.O_WRONLY | os.O_TRUNC)
            self.vfs.release(fh)
        self.meta.clone_content(sattr.ino, dattr.ino)

    def symlink(self, target: PathLike, path: PathLike) -> None:
        with _about(path):
            parent, name = self._new_name(path)
            self.vfs.create_node(parent.ino, name, stat.S_IFLNK | 0o777, self.uid, self.gid,
                                 target=paths.encode(paths.to_str(target)))

    def mknod(self, path: PathLike, mode: int, rdev: int = 0) -> None:
        """Create a fifo, socket or device node (``mode`` holds the type and permission bits)."""
        with _about(path):
            if stat.S_IFMT(mode) not in (stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
                raise FsError(errno.EINVAL, "mknod makes fifos, sockets and device nodes only")
            parent, name = self._new_name(path)
            self.vfs.create_node(parent.ino, name, stat.S_IFMT(mode) | (mode & ~self.umask & 0o7777),
                                 self.uid, self.gid, rdev=rdev)

    def readlink(self, path: PathLike) -> str:
        with _about(path):
            attr = self._resolve(path, follow=False)
            if not attr.is_symlink:
                raise FsError(errno.EINVAL, "not a symbolic link")
            return paths.decode(self.meta.readlink(attr.ino))

    def link(self, src: PathLike, dst: PathLike) -> None:
        with _about(src):
            attr = self._resolve(src, follow=False)
        with _about(dst):
            parent, name = self._new_name(dst)
            self.vfs.link(attr.ino, parent.ino, name)

    def chmod(self, path: PathLike, mode: int) -> None:
        with _about(path):
            self.vfs.setattr(self._resolve(path).ino, mode=mode)

    def chown(self, path: PathLike, uid: int = -1, gid: int = -1) -> None:
        with _about(path):
            self.vfs.setattr(self._resolve(path).ino, uid=uid, gid=gid)

    def utime(self, path: PathLike, times_ns: tuple[int, int] | None = None) -> None:
        """Set (atime_ns, mtime_ns); None means now."""
        at, mt = times_ns if times_ns is not None else (TIME_NOW, TIME_NOW)
        with _about(path):
            self.vfs.setattr(self._resolve(path).ino, atime_ns=at, mtime_ns=mt)

    def truncate(self, path: PathLike, size: int) -> None:
        with _about(path):
            self.vfs.truncate(self._resolve(path).ino, size)

    def getxattr(self, path: PathLike, name: str) -> bytes:
        with _about(path):
            return self.meta.getxattr(self._resolve(path).ino, paths.encode(name))

    def setxattr(self, path: PathLike, name: str, value: bytes, flags: int = 0) -> None:
        with _about(path):
            self.meta.setxattr(self._resolve(path).ino, paths.encode(name), value, flags)

    def listxattr(self, path: PathLike) -> list[str]:
        with _about(path):
            return [paths.decode(n) for n in self.meta.listxattr(self._resolve(path).ino)]

    def removexattr(self, path: PathLike, name: str) -> None:
        with _about(path):
            self.meta.removexattr(self._resolve(path).ino, paths.encode(name))

    # ------------------------------------------------------------- listing
    def listdir(self, path: PathLike = "/") -> list[str]:
        """Names in a directory, in creation order."""
        attr = self._dir(path)
        return [paths.decode(n) for n, _i, _m in self.meta.list_names(attr.ino)]

    def _dir(self, path: PathLike) -> Attr:
        with _about(path):
            attr = self._resolve(path)
            if not attr.is_dir:
                raise FsError(errno.ENOTDIR)
            return attr

    @overload
    def list(self, path: PathLike = "/", *, recursive: bool = False, attrs: Literal[False] = False) -> list[str]: ...
    @overload
    def list(self, path: PathLike = "/", *, recursive: bool = False, attrs: Literal[True]) -> list[FileInfo]: ...

    def list(self, path: PathLike = "/", *, recursive: bool = False, attrs: bool = False) -> list[str] | list[FileInfo]:
        """Paths under a directory (sorted), optionally recursive and with their attributes."""
        out = list(self.walk(path, recursive=recursive, attrs=attrs))
        out.sort(key=lambda x: x.path if isinstance(x, FileInfo) else x)
        return out

    def walk(self, path: PathLike = "/", *, recursive: bool = True, attrs: bool = False) -> Iterator[Any]:
        """Yield every path below ``path`` (depth first, unsorted), as str or FileInfo."""
        top = self._dir(path)
        base = self._shown_path(path, top)
        stack = [(base, top.ino)]
        while stack:
            dpath, dino = stack.pop()
            after = 2
            while True:
                entries = self.vfs.readdir(dino, after, 1000)
                if not entries:
                    break
                for e in entries:
                    p = paths.join(dpath, e.name)
                    if attrs:
                        target = self.meta.readlink(e.attr.ino) if e.attr.is_symlink else None
                        yield _info(p, e.attr, target)
                    else:
                        yield p
                    if recursive and e.attr.is_dir:
                        stack.append((p, e.attr.ino))
                after = entries[-1].cookie

    # ------------------------------------------------------------- batches
    def write_many(self, files: Mapping[str, bytes], *, parents: bool = True) -> None:
        """Write many files in one transaction: all appear together, or none do."""
        bs = self.vfs.block_size
        staged: dict[str, tuple[int, dict[int, Future[ObjectRef | None]] | None, bytes | None]] = {}
        try:
            for p, data in files.items():
                data = bytes(data)
                if len(data) <= self.vfs.inline_max:
                    staged[p] = (len(data), None, data)
                else:
                    futs = {i // bs: self.vfs.blocks.submit_stage(data[i : i + bs]) for i in range(0, len(data), bs)}
                    staged[p] = (len(data), futs, None)
            refs = {p: ({i: f.result() for i, f in futs.items()} if futs is not None else None)
                    for p, (_n, futs, _d) in staged.items()}
        except BaseException:
            for _n, futs, _d in staged.values():
                for f in (futs or {}).values():
                    f.cancel()
            raise
        touched: list[int] = []
        with self.meta.db.transaction():
            for p, (size, _futs, inline) in staged.items():
                with _about(p):
                    if parents:
                        self._make_parents(paths.components(p)[0], 0o755)
                    attr = self._create_file(p, 0o666)
                    if not attr.is_reg:
                        raise FsError(errno.EISDIR if attr.is_dir else errno.EINVAL)
                blocks = refs[p]
                changed = {} if blocks is None else {i: (r.id if r else None) for i, r in blocks.items()}
                t = _now()
                self.meta.commit_content(
                    attr.ino, size=size, changed=changed, keep_blocks=len(changed), inline=inline,
                    mtime_ns=t, ctime_ns=t,
                )
                touched.append(attr.ino)
        self._refresh_open(touched)

    def _refresh_open(self, inos: Iterable[int]) -> None:
        for ino in inos:
            oi = self.vfs._open.get(ino)  # noqa: SLF001
            if oi is not None and not (oi.modified or oi.dirty or oi.pending):
                self.vfs._reload(oi, self.meta.getattr(ino))  # noqa: SLF001

    def read_many(self, paths_: Iterable[PathLike]) -> dict[str, bytes]:
        return {paths.normalize(p): self.read_bytes(p) for p in paths_}

    def delete_many(self, paths_: Iterable[PathLike], *, recursive: bool = False, missing_ok: bool = False) -> None:
        """Delete many paths in one transaction: all go, or none do."""
        with self.meta.db.transaction():
            for p in paths_:
                self.delete(p, recursive=recursive, missing_ok=missing_ok)

    # -------------------------------------------------------------- search
    def glob(self, pattern: str, root: PathLike = "/", *, attrs: bool = False) -> list[str] | list[FileInfo]:
        """Paths under ``root`` matching a glob (``*``, ``?``, ``[...]``, ``**``), sorted."""
        try:
            g = compile_glob(pattern)
        except ValueError as exc:
            raise FsError(errno.EINVAL, str(exc)) from None
        base = paths.normalize(root)
        start = base
        for comp in g.literal_prefix:
            start = paths.join(start, comp)
        try:
            top = self._resolve(start)
        except FsError:
            return []
        if not top.is_dir:
            return []
        found = self.store.searcher.glob_walk(g, base, start, top.ino)
        if attrs:
            return [_info(p, self.vfs.getattr(ino)) for p, ino in found]
        return [p for p, _ino in found]

    def grep(
        self,
        pattern: str,
        root: PathLike = "/",
        *,
        ignore_case: bool = False,
        word: bool = False,
        fixed: bool = False,
        invert: bool = False,
        max_count: int | None = None,
    ) -> list[GrepMatch]:
        """Lines matching a regular expression in the files under ``root`` (binary files skipped).

        Exactly what ``LC_ALL=C grep -rn`` reports over the same tree (sorted by path
        and line); the trigram index only narrows which files are read. A query stops
        with ``SearchStopped`` (ETIMEDOUT) after ``search_timeout``.
        """
        return list(self.iter_grep(pattern, root, ignore_case=ignore_case, word=word, fixed=fixed,
                                   invert=invert, max_count=max_count))

    def iter_grep(
        self,
        pattern: str,
        root: PathLike = "/",
        *,
        ignore_case: bool = False,
        word: bool = False,
        fixed: bool = False,
        invert: bool = False,
        max_count: int | None = None,
        binary: bool = False,
    ) -> Iterator[GrepMatch]:
        """:meth:`grep`'s matches as they are found (memory stays bounded however many).
        ``binary``: also the matching lines of binary files, as ``GrepMatch(binary=True)``
        without text (what ``grep -c`` and ``grep -l`` count)."""
        opts = GrepOptions(ignore_case=ignore_case, word=word, fixed=fixed, invert=invert)
        try:
            compile_pattern(pattern, opts)
        except ValueError as exc:
            raise FsError(errno.EINVAL, str(exc)) from None
        with _about(root):
            attr = self._resolve(root)
        self.vfs.sync_open_files()
        return self.store.searcher.iter_grep(pattern, attr.ino, self._shown_path(root, attr), opts,
                                             max_count=max_count, binary=binary)

    def search(self, query: str, root: PathLike = "/", *, k: int = 10) -> SearchResults:
        """Files (and line ranges) under ``root`` ranked by meaning and wording for ``query``.

        One hit per piece of a distinct content: ``hit.paths`` lists every file under
        ``root`` with that content (copies, hard links), ``hit.path`` is the first.
        ``results.pending`` counts files whose latest content is not indexed yet;
        ``results.note`` says why the configured embedder is not the one used, if it is not.
        """
        check_query(query)  # before the root: a blank query is the first thing wrong
        attr = self._dir(root)
        return self.store.searcher.search(query, self._shown_path(root, attr), k)

    # ---------------------------------------------------------------- index
    def index_status(self) -> IndexStatus:
        """What the index holds and what is queued (reads only)."""
        return self.store.searcher.status()

    def wait_for_index(self, timeout: float = 60.0) -> bool:
        """Block until every change so far is indexed (starts this process's indexer)."""
        self.store.start_indexer().notify()
        return wait_for_index(self.store.searcher.index, timeout)

    def reindex(self, *, rebuild: bool = False, embedder: str | None = None, progress: Any = None,
                queued_since: int = 0) -> int:
        """Index everything queued now, in this thread; returns how many files.
        ``queued_since`` (a ``time.time_ns()``) takes only the files queued since then.

        ``rebuild`` first forgets the index. ``embedder`` names the model: on a store that
        has another, only together with ``rebuild`` (which switches it); a store keeps its
        model otherwise, whatever the configuration says (see ``IndexStatus.note``).
        """
        from .search.indexer import Indexer

        index = self.store.searcher.index
        if embedder is not None:
            wanted = _embedder_record(embedder, index.vector_search)
            current = index.attach()
            if rebuild:
                index.rebuild(wanted)
            elif current is not None and current.name != wanted.name:
                raise StoreError(f"this store indexes with {current.name}; "
                                 f"run `nexus index --rebuild --embedder {wanted.name}` to switch")
            else:
                index.ensure_tables(wanted)
        elif rebuild:
            index.rebuild()
        ix = Indexer(self.config, self.vfs.blocks, semantic=self.config.semantic or embedder is not None,
                     embedder=embedder or self.config.embedder or None)
        try:
            return ix.run_until_idle(progress, since_ns=queued_since)
        finally:
            ix.stop()

    # --------------------------------------------------------- maintenance
    def info(self) -> StoreInfo:
        from .maintenance import store_info

        return store_info(self.store)

    def fsck(self, *, repair: bool = False, verify_data: bool = True, progress: Any = None) -> Any:
        from .fsck import Fsck

        return Fsck(self.store, progress=progress).run(repair=repair, verify_data=verify_data)

    def gc(self, *, grace: float | None = None, progress: Any = None) -> Any:
        from .maintenance import collect_garbage

        return collect_garbage(self.store, grace=self.config.gc_grace if grace is None else grace, progress=progress)


def _embedder_record(name: str, vector_search: bool) -> EmbedderRecord:
    """The model called ``name`` as a store records it; ConfigError (one line) for an
    unknown name, a missing package, or a database without vector search."""
    from .search.embed import check_name, embedder_identity

    name = check_name(name)
    if not vector_search:
        raise ConfigError("semantic search needs the sqlite-vec package (pip install sqlite-vec)")
    return EmbedderRecord(name, *embedder_identity(name))


def _now() -> int:
    import time

    return time.time_ns()


def _parse_mode(mode: str) -> tuple[int, bool, bool, bool]:
    m = set(mode)
    if not m <= set("rwaxb+t") or len(mode) != len(m) or len(m & set("rwax")) != 1:
        raise ValueError(f"invalid mode {mode!r}")
    binary = "b" in m
    plus = "+" in m
    if "r" in m:
        flags = os.O_RDWR if plus else os.O_RDONLY
        return flags, True, plus, binary
    base = os.O_RDWR if plus else os.O_WRONLY
    if "w" in m:
        return base | os.O_CREAT | os.O_TRUNC, plus, True, binary
    if "a" in m:
        return base | os.O_CREAT | os.O_APPEND, plus, True, binary
    return base | os.O_CREAT | os.O_EXCL, plus, True, binary


class NexusFile(io.RawIOBase):
    """A raw, seekable file object over one VFS handle."""

    def __init__(self, nx: Nexus, fh: int, path: str, readable: bool, writable: bool, append: bool) -> None:
        super().__init__()
        self._nx = nx
        self._vfs = nx.vfs
        self._fh = fh
        self.name = path
        self._readable = readable
        self._writable = writable
        self._append = append
        self._pos = 0
        self.mode = ("r" if readable and not writable else "a" if append else "w") + ("+" if readable and writable else "") + "b"

    def readable(self) -> bool:
        return self._readable

    def writable(self) -> bool:
        return self._writable

    def seekable(self) -> bool:
        return True

    def _size(self) -> int:
        return self._vfs.getattr(self._vfs.handle_inode(self._fh)).size

    def readinto(self, b: Any) -> int:
        self._check_closed()
        if not self._readable:
            raise io.UnsupportedOperation("not readable")
        view = memoryview(b).cast("B")
        data = self._vfs.read(self._fh, self._pos, len(view))
        n = len(data)
        view[:n] = data
        self._pos += n
        return n

    def readall(self) -> bytes:
        chunks = []
        while True:
            data = self._vfs.read(self._fh, self._pos, self._vfs.block_size)
            if not data:
                break
            self._pos += len(data)
            chunks.append(data)
        return b"".join(chunks)

    def write(self, b: Any) -> int:
        self._check_closed()
        if not self._writable:
            raise io.UnsupportedOperation("not writable")
        if self._append:
            self._pos = self._size()
        n = self._vfs.write(self._fh, self._pos, b)
        self._pos += n
        return n

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_closed()
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self._size() + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = pos
        return pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._check_closed()
        if not self._writable:
            raise io.UnsupportedOperation("not writable")
        size = self._pos if size is None else size
        self._vfs.truncate(self._vfs.handle_inode(self._fh), size)
        return size

    def flush(self) -> None:
        if not self.closed and self._writable:
            self._vfs.flush(self._fh)

    def fileno(self) -> int:
        raise io.UnsupportedOperation("nexusfs files have no OS file descriptor")

    def fsync(self) -> None:
        self._vfs.fsync(self._fh)

    def close(self) -> None:
        if self.closed:
            return
        try:
            super().close()
        finally:
            self._vfs.release(self._fh)

    def _check_closed(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed file")


class _Committing:
    """A buffered writer whose ``flush()`` also commits (io's own stops at the raw file's
    ``write``: it never calls the raw ``flush``), and which has ``fsync()``."""

    raw: NexusFile

    def flush(self) -> None:
        super().flush()  # type: ignore[misc]
        self.raw.flush()

    def fsync(self) -> None:
        self.flush()
        self.raw.fsync()


class _BufferedWriter(_Committing, io.BufferedWriter):
    pass


class _BufferedRandom(_Committing, io.BufferedRandom):
    pass


def connect(
    path: str | None = None,
    *,
    config_file: str | None = None,
    create: bool = True,
    **settings: Any,
) -> Nexus:
    """Open (and on first use create) a store.

    With no arguments the store lives in ``$NEXUS_HOME``, else in
    ``~/.local/share/nexus``. ``path`` names the store directory,
    ``config_file`` a nexus.yaml; keyword settings override either.
    """
    try:
        config = Config.load(config_file, home=path, **settings)
        return Nexus(Store.open(config, create=create))
    except NexusError:
        raise
    except OSError as exc:
        raise NexusError(f"cannot open store: {exc}") from None
