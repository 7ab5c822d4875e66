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
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, Literal, overload

from . import paths
from .config import Config
from .errors import ConfigError, FsError, NexusError, StoreError, fs_error
from .meta.engine import ObjectRef
from .paths import PathLike
from .search.grep import GrepMatch, GrepOptions, compile_pattern
from .search.index import EmbedderRecord, IndexStatus
from .search.indexer import wait_for_index
from .search.pattern import compile_glob
from .search.service import SearchResults
from .store import Store
from .types import ROOT_INODE, TIME_NOW, Attr, StoreInfo

MAX_SYMLINKS = 40

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
    def _resolve(self, path: PathLike, *, follow: bool = True) -> Attr:
        comps = paths.split(path)
        return self._walk(comps, follow, 0)

    def _walk(self, comps: list[bytes], follow: bool, depth: int, start: int = ROOT_INODE) -> Attr:
        attr = self.meta.getattr(start)
        stack: list[int] = []  # parents, for '..' after a symlink
        for i, name in enumerate(comps):
            if not attr.is_dir:
                raise fs_error(errno.ENOTDIR, b"/".join(comps[:i]))
            if name == b"..":
                attr = self.meta.getattr(stack.pop() if stack else self.meta.parent_of(attr.ino))
                continue
            parent = attr
            attr = self.vfs.lookup(attr.ino, name)
            last = i == len(comps) - 1
            if attr.is_symlink and (follow or not last):
                if depth >= MAX_SYMLINKS:
                    raise fs_error(errno.ELOOP, b"/".join(comps[: i + 1]))
                target = self.meta.readlink(attr.ino)
                base = ROOT_INODE if target.startswith(b"/") else parent.ino
                tcomps = [c for c in target.split(b"/") if c and c != b"."]
                attr = self._walk(tcomps, True, depth + 1, base)
                stack.append(parent.ino)
            else:
                stack.append(parent.ino)
        return attr

    def _parent(self, path: PathLike) -> tuple[Attr, bytes]:
        comps = paths.split(path)
        if not comps:
            raise FsError(errno.EINVAL, "the root directory has no parent")
        parent = self._walk(comps[:-1], True, 0)
        if not parent.is_dir:
            raise fs_error(errno.ENOTDIR, paths.normalize(path).rsplit("/", 1)[0] or "/")
        return parent, comps[-1]

    def _err(self, exc: FsError, path: PathLike) -> FsError:
        """Restate an engine error in terms of the caller's path."""
        return fs_error(exc.errno, paths.normalize(path))

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
        try:
            attr = self._resolve(path, follow=follow_symlinks)
        except FsError as exc:
            raise self._err(exc, path) from None
        target = self.meta.readlink(attr.ino) if attr.is_symlink else None
        return _info(paths.normalize(path), attr, target)

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
        if parents:
            self.mkdir(paths.normalize(path).rsplit("/", 1)[0] or "/", parents=True, exist_ok=True)
        with self.open(path, "wb", mode_bits=mode) as f:
            return f.write(data)

    def write_text(self, path: PathLike, text: str, encoding: str = "utf-8", *, parents: bool = False) -> int:
        return self.write_bytes(path, text.encode(encoding), parents=parents)

    def append_bytes(self, path: PathLike, data: bytes) -> int:
        with self.open(path, "ab") as f:
            return f.write(data)

    @overload
    def open(self, path: PathLike, mode: Literal["rb", "wb", "ab", "xb", "r+b", "w+b", "a+b", "rb+", "wb+", "ab+"] = "rb", *,
             buffering: int = -1, mode_bits: int = 0o644) -> BinaryIO: ...
    @overload
    def open(self, path: PathLike, mode: str, *, buffering: int = -1, encoding: str | None = None,
             mode_bits: int = 0o644) -> IO[Any]: ...

    def open(self, path: PathLike, mode: str = "rb", *, buffering: int = -1, encoding: str | None = None,
             mode_bits: int = 0o644) -> IO[Any]:
        """Open a file as a streaming file object (``rb``, ``wb``, ``ab``, ``xb``, ``r+b``, text modes too).

        Data is streamed block by block: a file of any size needs only the
        block cache and the dirty buffer in memory. Closing (or ``flush()``)
        commits what was written.
        """
        flags, readable, writable, binary = _parse_mode(mode)
        fh = self._open_fh(path, flags, mode_bits)
        raw = NexusFile(self, fh, paths.normalize(path), readable, writable, bool(flags & os.O_APPEND))
        if buffering == 0:
            if not binary:
                raise ValueError("unbuffered text I/O is not possible")
            return raw  # type: ignore[return-value]
        size = self.vfs.block_size if buffering in (-1, 1) else buffering
        buffered: BinaryIO
        if readable and writable:
            buffered = io.BufferedRandom(raw, size)  # type: ignore[assignment]
        elif writable:
            buffered = io.BufferedWriter(raw, size)  # type: ignore[assignment]
        else:
            buffered = io.BufferedReader(raw, size)  # type: ignore[assignment]
        if binary:
            return buffered
        return io.TextIOWrapper(buffered, encoding=encoding or "utf-8", line_buffering=buffering == 1)

    def _open_fh(self, path: PathLike, flags: int, mode_bits: int) -> int:
        try:
            try:
                attr = self._resolve(path)
            except FsError as exc:
                if exc.errno != errno.ENOENT or not flags & os.O_CREAT:
                    raise
                parent, name = self._parent(path)
                try:
                    attr = self.vfs.create_node(
                        parent.ino, name, stat.S_IFREG | (mode_bits & ~self.umask & 0o7777), self.uid, self.gid
                    )
                except FsError as cexc:
                    if cexc.errno != errno.EEXIST or flags & os.O_EXCL:
                        raise
                    attr = self._resolve(path)
            else:
                if flags & os.O_CREAT and flags & os.O_EXCL:
                    raise fs_error(errno.EEXIST, paths.normalize(path))
            if attr.is_dir:
                raise fs_error(errno.EISDIR, paths.normalize(path))
            if not attr.is_reg:
                raise FsError(errno.EINVAL, f"{paths.normalize(path)}: not a regular file")
            return self.vfs.open(attr.ino, flags)
        except FsError as exc:
            raise self._err(exc, path) from None

    # ------------------------------------------------------------ namespace
    def mkdir(self, path: PathLike, *, parents: bool = False, exist_ok: bool = False, mode: int = 0o755) -> None:
        comps = paths.split(path)
        if not comps:
            if exist_ok or parents:
                return
            raise fs_error(errno.EEXIST, "/")
        if parents:
            for i in range(1, len(comps)):
                sub = "/" + "/".join(paths.decode(c) for c in comps[:i])
                try:
                    self.mkdir(sub, exist_ok=True, mode=mode)
                except FsError as exc:
                    raise self._err(exc, sub) from None
        parent, name = self._parent(path)
        try:
            self.vfs.create_node(parent.ino, name, stat.S_IFDIR | (mode & ~self.umask & 0o7777), self.uid, self.gid)
        except FsError as exc:
            if exc.errno == errno.EEXIST and (exist_ok or parents):
                if self._resolve(path).is_dir:
                    return
            raise self._err(exc, path) from None

    def rmdir(self, path: PathLike) -> None:
        parent, name = self._parent(path)
        try:
            self.vfs.rmdir(parent.ino, name)
        except FsError as exc:
            raise self._err(exc, path) from None

    def delete(self, path: PathLike, *, recursive: bool = False, missing_ok: bool = False) -> None:
        """Remove a file, symlink or (with ``recursive``) a whole directory tree."""
        try:
            attr = self._resolve(path, follow=False)
        except FsError as exc:
            if missing_ok and exc.errno == errno.ENOENT:
                return
            raise self._err(exc, path) from None
        if attr.is_dir:
            if not recursive:
                raise fs_error(errno.EISDIR, f"{paths.normalize(path)} (use recursive=True)")
            if attr.ino == ROOT_INODE:
                for name in self.listdir(path):
                    self.delete(paths.join(paths.normalize(path), name), recursive=True)
                return
            self._delete_tree(attr.ino)
            self.rmdir(path)
            return
        parent, name = self._parent(path)
        try:
            self.vfs.unlink(parent.ino, name)
        except FsError as exc:
            raise self._err(exc, path) from None

    remove = delete

    def _delete_tree(self, ino: int) -> None:
        for name, child, mode in self.meta.list_names(ino):
            if stat.S_ISDIR(mode):
                self._delete_tree(child)
                self.vfs.rmdir(ino, name)
            else:
                self.vfs.unlink(ino, name)

    def rename(self, src: PathLike, dst: PathLike, *, overwrite: bool = True) -> None:
        sp, sn = self._parent(src)
        dp, dn = self._parent(dst)
        from .types import RENAME_NOREPLACE

        try:
            self.vfs.rename(sp.ino, sn, dp.ino, dn, 0 if overwrite else RENAME_NOREPLACE)
        except FsError as exc:
            raise FsError(exc.errno, f"rename {paths.normalize(src)} -> {paths.normalize(dst)}: {os.strerror(exc.errno)}") from None

    move = rename

    def copy(self, src: PathLike, dst: PathLike, *, recursive: bool = True) -> None:
        """Copy a file (metadata only: blocks are shared by reference) or a directory tree."""
        sattr = self._resolve(src)
        if sattr.is_dir:
            if not recursive:
                raise fs_error(errno.EISDIR, paths.normalize(src))
            dst_n = paths.normalize(dst)
            src_n = paths.normalize(src)
            if dst_n == src_n or dst_n.startswith(src_n.rstrip("/") + "/"):
                raise FsError(errno.EINVAL, f"cannot copy {src_n} into itself")
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
            raise FsError(errno.EINVAL, f"{paths.normalize(src)}: only files and directories can be copied")
        # commit the source first so the clone sees everything written to it
        oi = self.vfs._open.get(sattr.ino)  # noqa: SLF001 - same package
        if oi is not None:
            self.vfs._commit(oi)  # noqa: SLF001
        try:
            dattr = self._resolve(dst)
            if dattr.is_dir:
                dst = paths.join(paths.normalize(dst), paths.split(src)[-1])
                dattr = self._resolve(dst)
        except FsError as exc:
            if exc.errno != errno.ENOENT:
                raise self._err(exc, dst) from None
            parent, name = self._parent(dst)
            dattr = self.vfs.create_node(parent.ino, name, stat.S_IFREG | stat.S_IMODE(sattr.mode), self.uid, self.gid)
        if dattr.ino == sattr.ino:
            raise FsError(errno.EINVAL, f"{paths.normalize(src)} and {paths.normalize(dst)} are the same file")
        if dattr.ino in self.vfs._open:  # noqa: SLF001
            fh = self.vfs.open(dattr.ino, os.O_WRONLY | os.O_TRUNC)
            self.vfs.release(fh)
        self.meta.clone_content(sattr.ino, dattr.ino)

    def symlink(self, target: PathLike, path: PathLike) -> None:
        parent, name = self._parent(path)
        try:
            self.vfs.create_node(parent.ino, name, stat.S_IFLNK | 0o777, self.uid, self.gid,
                                 target=paths.encode(paths.to_str(target)))
        except FsError as exc:
            raise self._err(exc, path) from None

    def readlink(self, path: PathLike) -> str:
        attr = self._resolve(path, follow=False)
        if not attr.is_symlink:
            raise FsError(errno.EINVAL, f"{paths.normalize(path)} is not a symbolic link")
        return paths.decode(self.meta.readlink(attr.ino))

    def link(self, src: PathLike, dst: PathLike) -> None:
        attr = self._resolve(src, follow=False)
        parent, name = self._parent(dst)
        try:
            self.vfs.link(attr.ino, parent.ino, name)
        except FsError as exc:
            raise self._err(exc, dst) from None

    def chmod(self, path: PathLike, mode: int) -> None:
        self.vfs.setattr(self._resolve(path).ino, mode=mode)

    def chown(self, path: PathLike, uid: int = -1, gid: int = -1) -> None:
        self.vfs.setattr(self._resolve(path).ino, uid=uid, gid=gid)

    def utime(self, path: PathLike, times_ns: tuple[int, int] | None = None) -> None:
        """Set (atime_ns, mtime_ns); None means now."""
        at, mt = times_ns if times_ns is not None else (TIME_NOW, TIME_NOW)
        self.vfs.setattr(self._resolve(path).ino, atime_ns=at, mtime_ns=mt)

    def truncate(self, path: PathLike, size: int) -> None:
        self.vfs.truncate(self._resolve(path).ino, size)

    def getxattr(self, path: PathLike, name: str) -> bytes:
        return self.meta.getxattr(self._resolve(path).ino, paths.encode(name))

    def setxattr(self, path: PathLike, name: str, value: bytes, flags: int = 0) -> None:
        self.meta.setxattr(self._resolve(path).ino, paths.encode(name), value, flags)

    def listxattr(self, path: PathLike) -> list[str]:
        return [paths.decode(n) for n in self.meta.listxattr(self._resolve(path).ino)]

    def removexattr(self, path: PathLike, name: str) -> None:
        self.meta.removexattr(self._resolve(path).ino, paths.encode(name))

    # ------------------------------------------------------------- listing
    def listdir(self, path: PathLike = "/") -> list[str]:
        """Names in a directory, in creation order."""
        attr = self._dir(path)
        return [paths.decode(n) for n, _i, _m in self.meta.list_names(attr.ino)]

    def _dir(self, path: PathLike) -> Attr:
        try:
            attr = self._resolve(path)
        except FsError as exc:
            raise self._err(exc, path) from None
        if not attr.is_dir:
            raise fs_error(errno.ENOTDIR, paths.normalize(path))
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
        base = paths.normalize(path)
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
                if parents:
                    self.mkdir(paths.normalize(p).rsplit("/", 1)[0] or "/", parents=True, exist_ok=True)
                try:
                    attr = self._resolve(p)
                except FsError as exc:
                    if exc.errno != errno.ENOENT:
                        raise
                    parent, name = self._parent(p)
                    attr = self.vfs.create_node(parent.ino, name, stat.S_IFREG | (0o666 & ~self.umask), self.uid, self.gid)
                if not attr.is_reg:
                    raise fs_error(errno.EISDIR if attr.is_dir else errno.EINVAL, paths.normalize(p))
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
        and line); the trigram index only narrows which files are read.
        """
        opts = GrepOptions(ignore_case=ignore_case, word=word, fixed=fixed, invert=invert)
        try:
            compile_pattern(pattern, opts)
        except ValueError as exc:
            raise FsError(errno.EINVAL, str(exc)) from None
        try:
            attr = self._resolve(root)
        except FsError as exc:
            raise self._err(exc, root) from None
        self.vfs.sync_open_files()
        return self.store.searcher.grep(pattern, attr.ino, paths.normalize(root), opts, max_count)

    def search(self, query: str, root: PathLike = "/", *, k: int = 10) -> SearchResults:
        """Files (and line ranges) under ``root`` ranked by meaning and wording for ``query``.

        One hit per piece of a distinct content: ``hit.paths`` lists every file under
        ``root`` with that content (copies, hard links), ``hit.path`` is the first.
        ``results.pending`` counts files whose latest content is not indexed yet;
        ``results.note`` says why the configured embedder is not the one used, if it is not.
        """
        if not query.strip():
            raise FsError(errno.EINVAL, "empty search query")
        try:
            attr = self._resolve(root)
        except FsError as exc:
            raise self._err(exc, root) from None
        if not attr.is_dir:
            raise fs_error(errno.ENOTDIR, paths.normalize(root))
        return self.store.searcher.search(query, paths.normalize(root), k)

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
