"""The pyfuse3 Operations class: kernel requests translated onto the nexusfs VFS.

This module holds no SQL and does no blob I/O of its own. Metadata requests
are answered on the trio thread (a SQLite transaction takes tens of
microseconds, less than a hop to a worker thread). Data requests are tried on
the trio thread with ``wait=False`` and, when they would need I/O (a block
fetch, an upload, back-pressure), are re-run in a worker thread, so the event
loop keeps answering other requests meanwhile.

Every engine error becomes a FUSEError with its errno; anything unexpected is
logged with its traceback and answered with EIO, so one bad request never
takes the filesystem down.

With NEXUSFS_COUNT_REQUESTS=1 in its environment the mount counts the requests it
answers, by kind, and returns the counts (JSON) as the root's
``user.nexusfs.requests`` attribute (tests/test_mount_requests.py uses it).
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pyfuse3
import trio

from nexusfs.blocks import Buffer, WouldBlock
from nexusfs.errors import FsError, NexusError
from nexusfs.types import Attr, Caller
from nexusfs.vfs import VFS

from .runner import CACHE_TIMEOUT_S
from .search_ops import RESULTS_MAX, SEARCH_DIR, SearchDirs

log = logging.getLogger("nexusfs.mount")

T = TypeVar("T")

#: st_blksize reported to programs (the I/O size cp and friends use)
IO_BLKSIZE = 128 * 1024


def _translate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Map engine errors to FUSEError; log and EIO anything unexpected."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except FsError as exc:
            raise pyfuse3.FUSEError(exc.errno) from None
        except NexusError as exc:
            log.error("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except OSError as exc:
            log.error("%s: %s", fn.__name__, exc)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


#: xattr namespaces the engine stores (it refuses setxattr of any other, e.g. system.*)
_XATTR_NAMESPACES = frozenset((b"user", b"trusted", b"security"))
_SELINUX = b"security.selinux"
#: whether this host runs SELinux (then every file is expected to have a label)
_SELINUX_ON = os.path.exists("/sys/fs/selinux/enforce")

#: environment variable that turns on counting of kernel requests (for tests and profiling)
COUNT_ENV = "NEXUSFS_COUNT_REQUESTS"
#: xattr of the root directory that reads the counts (JSON), only while counting is on
COUNTS_XATTR = b"user.nexusfs.requests"
#: the request handlers that count (every pyfuse3 handler the kernel can reach)
COUNTED = (
    "access", "create", "flush", "forget", "fsync", "fsyncdir", "getattr", "getxattr", "link",
    "listxattr", "lookup", "mkdir", "mknod", "open", "opendir", "read", "readdir", "readlink",
    "release", "releasedir", "removexattr", "rename", "rmdir", "setattr", "setxattr", "statfs",
    "symlink", "unlink", "write",
)


def _counting(counts: dict[str, int], name: str, fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """``fn`` that first counts one request of its kind (getxattr also by attribute name)."""
    if name == "getxattr":

        async def counted_xattr(inode: int, xname: bytes, ctx: Any) -> T:
            if xname != COUNTS_XATTR:
                counts[name] = counts.get(name, 0) + 1
                key = "getxattr " + xname.decode(errors="replace")
                counts[key] = counts.get(key, 0) + 1
            return await fn(inode, xname, ctx)

        return counted_xattr

    async def counted(*args: Any, **kwargs: Any) -> T:
        counts[name] = counts.get(name, 0) + 1
        return await fn(*args, **kwargs)

    return counted


async def _in_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


class NexusOperations(pyfuse3.Operations):
    """Kernel requests -> VFS calls. Inode numbers are the engine's inode numbers."""

    supports_dot_lookup = True
    enable_acl = False

    def __init__(
        self,
        vfs: VFS,
        *,
        attr_timeout: float = CACHE_TIMEOUT_S,
        entry_timeout: float = CACHE_TIMEOUT_S,
        negative_timeout: float = CACHE_TIMEOUT_S,
        writeback_cache: bool = True,
        searcher: Any = None,
        search_spill_dir: str | None = None,
        search_results_max: int = RESULTS_MAX,
    ) -> None:
        super().__init__()
        self.vfs = vfs
        # what a program reads stays in the kernel's page cache: no second copy here
        vfs.drop_behind = True
        #: the virtual .search/ directories (None: searching through the mount is off)
        self.search = SearchDirs(vfs, searcher, spill_dir=search_spill_dir,
                                 results_max=search_results_max) if searcher is not None else None
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.negative_timeout = negative_timeout
        self.enable_writeback_cache = writeback_cache
        #: data_version of each file as of the kernel's page cache (for keep_cache)
        self._cached_version: dict[int, int] = {}
        #: a trio.Event the runner sets up inside trio.run, set once the kernel's INIT is answered
        self.handshake: Any = None
        #: kernel requests answered, by kind (None: not counting; see COUNT_ENV). Counting
        #: wraps the handlers of this instance only, so it costs nothing when off.
        self.request_counts: dict[str, int] | None = None
        if os.environ.get(COUNT_ENV, "") not in ("", "0"):
            self.request_counts = {}
            for name in COUNTED:
                setattr(self, name, _counting(self.request_counts, name, getattr(self, name)))

    # ------------------------------------------------------------ helpers
    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.generation = 0
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = IO_BLKSIZE
        e.st_blocks = attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        return e

    def _virtual_entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """An entry of the .search tree: never cached by the kernel, so every path walk asks
        again and each caller gets their own, current (permission-filtered) results."""
        e = self._entry(attr)
        e.entry_timeout = 0
        e.attr_timeout = 0
        return e

    def _virtual(self, ino: int) -> bool:
        return self.search is not None and self.search.is_virtual(ino)

    def _read_only(self, *inos: int) -> None:
        """Nothing can be created, changed or removed inside .search/."""
        if any(self._virtual(i) for i in inos):
            raise pyfuse3.FUSEError(errno.EROFS)

    @staticmethod
    def _caller(ctx: pyfuse3.RequestContext) -> Caller:
        """The process behind a request (its groups are read only if a check needs them)."""
        return Caller(ctx.uid, ctx.gid, pid=ctx.pid, lookup_groups=lambda: _groups(ctx))

    def _not_search(self, name: bytes) -> None:
        """``.search`` itself cannot be removed, renamed or linked away."""
        if self.search is not None and name == SEARCH_DIR:
            raise pyfuse3.FUSEError(errno.EROFS)

    def _looked_up(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """An entry reply: the kernel now holds one more reference to the inode."""
        self.vfs.pin(attr.ino)
        return self._entry(attr)

    def _new_mode(self, parent: int, mode: int, ctx: pyfuse3.RequestContext) -> int:
        """Drop setgid on a new file in a setgid directory unless the caller is in that group."""
        if mode & stat.S_ISGID and not stat.S_ISDIR(mode) and ctx.uid != 0:
            pattr = self.vfs.getattr(parent)
            if pattr.mode & stat.S_ISGID and pattr.gid != ctx.gid:
                try:
                    groups = pyfuse3.get_sup_groups(ctx.pid)
                except (OSError, ValueError):
                    groups = set()
                if pattr.gid not in groups:
                    mode &= ~stat.S_ISGID
        return mode

    # ------------------------------------------------------------ lifecycle
    def init(self) -> None:
        # called while pyfuse3 answers the kernel's INIT request: the reply goes out
        # before this task yields again, so whoever awaits ``handshake`` runs after it
        log.info("filesystem ready")
        if self.handshake is not None:
            self.handshake.set()

    # ------------------------------------------------------------ namespace
    @_translate
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self.search is not None:
            if self.search.is_virtual(parent_inode):
                node = await self.search.lookup(parent_inode, name, self._caller(ctx))
                return self._virtual_entry(self.search.tree.attr(node))
            if name == SEARCH_DIR:
                return self._virtual_entry(self.search.tree.attr(self.search.lookup_search_dir(parent_inode)))
        try:
            attr = self.vfs.lookup(parent_inode, name)
        except FsError as exc:
            if exc.errno == errno.ENOENT and self.negative_timeout > 0:
                e = pyfuse3.EntryAttributes()
                e.st_ino = 0  # a negative entry the kernel may cache
                e.entry_timeout = self.negative_timeout
                return e
            raise
        return self._looked_up(attr)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        if self.search is not None:
            for ino, n in inode_list:
                if self.search.is_virtual(ino):
                    self.search.forget(ino, n)
            inode_list = [(i, n) for i, n in inode_list if not self.search.is_virtual(i)]
        try:
            self.vfs.unpin_many(inode_list)
        except Exception:  # noqa: BLE001 - forget has no way to report errors
            log.exception("forgetting %d inodes failed", len(inode_list))
        for ino, _n in inode_list:
            self._cached_version.pop(ino, None)

    @_translate
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._virtual(inode):
            return self._virtual_entry(self.search.attr(inode))
        return self._entry(self.vfs.getattr(inode))

    @_translate
    async def setattr(
        self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._read_only(inode)
        kwargs: dict[str, int] = {}
        if fields.update_mode:
            kwargs["mode"] = attr.st_mode
        if fields.update_uid:
            kwargs["uid"] = attr.st_uid
        if fields.update_gid:
            kwargs["gid"] = attr.st_gid
        if fields.update_atime:
            kwargs["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            kwargs["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            kwargs["ctime_ns"] = attr.st_ctime_ns
        if fields.update_size:
            result = await _in_thread(self.vfs.setattr, inode, size=attr.st_size, writer=self._writer(ctx),
                                      **kwargs)
            self._cached_version[inode] = self.vfs.data_version(inode)
        else:
            result = self.vfs.setattr(inode, **kwargs)
        return self._entry(result)

    @_translate
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        if self._virtual(inode):
            return self.search.readlink(inode)
        return self.vfs.readlink(inode)

    @_translate
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._read_only(parent_inode)
        mode = self._new_mode(parent_inode, mode, ctx)
        attr = self.vfs.create_node(parent_inode, name, mode, ctx.uid, ctx.gid, rdev=rdev)
        return self._looked_up(attr)

    @_translate
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._read_only(parent_inode)
        attr = self.vfs.create_node(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx.uid, ctx.gid)
        return self._looked_up(attr)

    @_translate
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._read_only(parent_inode)
        attr = self.vfs.create_node(parent_inode, name, stat.S_IFLNK | 0o777, ctx.uid, ctx.gid, target=target)
        return self._looked_up(attr)

    @_translate
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if self._virtual(inode):
            raise pyfuse3.FUSEError(errno.EXDEV)
        self._read_only(new_parent_inode)
        return self._looked_up(self.vfs.link(inode, new_parent_inode, new_name))

    @_translate
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._read_only(parent_inode)
        self._not_search(name)
        self.vfs.unlink(parent_inode, name)

    @_translate
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._read_only(parent_inode)
        self._not_search(name)
        self.vfs.rmdir(parent_inode, name)

    @_translate
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes,
                     flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._read_only(parent_inode_old, parent_inode_new)
        self._not_search(name_old)
        self.vfs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    # ------------------------------------------------------------ files
    def _open_flags(self, flags: int) -> int:
        """Open flags as the VFS must see them.

        With the writeback cache the kernel places appends itself and writes pages
        back through any writable handle, with explicit offsets (O_APPEND must not
        move them), and it reads pages through write-only handles to fill partly
        written pages (so those handles must be readable; the kernel has already
        checked permissions).
        """
        if not self.enable_writeback_cache:
            return flags
        flags &= ~os.O_APPEND
        if flags & os.O_ACCMODE == os.O_WRONLY:
            flags = (flags & ~os.O_ACCMODE) | os.O_RDWR
        return flags

    def _writer(self, ctx: pyfuse3.RequestContext) -> Caller:
        """The process behind a request that changes a file's content. The kernel clears
        setuid, and setgid with group execute, before such a change, but not setgid
        without group execute when the writer is not in the file's group, nor anything
        for open(O_TRUNC) (with atomic_o_trunc it leaves that to us): the VFS applies
        Linux's whole rule (groups are looked up only when a file has setgid)."""
        return self._caller(ctx)

    def _file_info(self, ino: int, fh: int) -> pyfuse3.FileInfo:
        version = self.vfs.data_version(ino)
        keep = self._cached_version.get(ino) == version
        self._cached_version[ino] = version
        return pyfuse3.FileInfo(fh=fh, keep_cache=keep)

    @_translate
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        if self._virtual(inode):
            return pyfuse3.FileInfo(fh=self.search.open(inode, flags), keep_cache=False)
        reading = flags & os.O_ACCMODE != os.O_WRONLY  # (for atime: before _open_flags)
        flags = self._open_flags(flags)
        writer = self._writer(ctx)
        if flags & os.O_TRUNC:
            fh = await _in_thread(self.vfs.open, inode, flags, update_atime=reading, writer=writer)
        else:
            fh = self.vfs.open(inode, flags, update_atime=reading, writer=writer)
        return self._file_info(inode, fh)

    @_translate
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._read_only(parent_inode)
        mode = self._new_mode(parent_inode, mode, ctx)
        attr = self.vfs.create_node(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx.uid, ctx.gid)
        fh = self.vfs.open(attr.ino, self._open_flags(flags) & ~os.O_TRUNC, update_atime=False, attr=attr,
                           writer=self._writer(ctx))
        entry = self._looked_up(attr)
        return self._file_info(attr.ino, fh), entry

    @_translate
    async def read(self, fh: int, off: int, size: int) -> Buffer:
        if self.search is not None and self.search.is_virtual_fh(fh):
            return self.search.read(fh, off, size)
        try:
            return self.vfs.read_buffer(fh, off, size, wait=False)
        except WouldBlock:
            return await _in_thread(self.vfs.read_buffer, fh, off, size)

    @_translate
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if self.search is not None and self.search.is_virtual_fh(fh):
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            return self.vfs.write(fh, off, buf, wait=False)
        except WouldBlock:
            return await _in_thread(self.vfs.write, fh, off, buf)

    def _after_commit(self, fh: int) -> None:
        # our own writes went through the kernel's page cache: it is current
        try:
            ino = self.vfs.handle_inode(fh)
        except FsError:
            return
        self._cached_version[ino] = self.vfs.data_version(ino)

    @_translate
    async def flush(self, fh: int) -> None:
        if self.search is not None and self.search.is_virtual_fh(fh):
            return
        if self.vfs.needs_commit(fh):
            await _in_thread(self.vfs.flush, fh)
            self._after_commit(fh)

    @_translate
    async def fsync(self, fh: int, datasync: bool) -> None:
        if self.search is not None and self.search.is_virtual_fh(fh):
            return
        await _in_thread(self.vfs.fsync, fh, datasync)
        self._after_commit(fh)

    @_translate
    async def release(self, fh: int) -> None:
        if self.search is not None and self.search.is_virtual_fh(fh):
            self.search.release(fh)
            return
        if self.vfs.needs_commit(fh):
            await _in_thread(self.vfs.flush, fh)
            self._after_commit(fh)
        self.vfs.release(fh)

    # ------------------------------------------------------------ directories
    @_translate
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self._virtual(inode):
            return await self.search.opendir(inode, self._caller(ctx))
        attr = self.vfs.getattr(inode)
        if not attr.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_translate
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if self._virtual(fh):
            for cookie, (name, node) in enumerate(self.search.listing(fh), 1):
                if cookie <= start_id:
                    continue
                if not pyfuse3.readdir_reply(token, name, self._virtual_entry(self.search.tree.attr(node)), cookie):
                    return
                self.search.tree.looked_up(node)
            return
        after = start_id
        while True:
            entries = self.vfs.readdir(fh, after, 256)
            if not entries:
                return
            for e in entries:
                if not pyfuse3.readdir_reply(token, e.name, self._entry(e.attr), e.cookie):
                    return
                if e.name not in (b".", b".."):
                    self.vfs.pin(e.attr.ino)  # readdirplus: the kernel took a reference
            after = entries[-1].cookie

    async def releasedir(self, fh: int) -> None:
        return None

    @_translate
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        await _in_thread(self.vfs.meta.db.make_durable)

    # ------------------------------------------------------------ misc
    @_translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = self.vfs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = s.block_size
        out.f_frsize = s.block_size
        out.f_blocks = s.total_blocks
        out.f_bfree = s.free_blocks
        out.f_bavail = s.avail_blocks
        out.f_files = s.total_inodes
        out.f_ffree = s.free_inodes
        out.f_favail = s.free_inodes
        out.f_namemax = s.name_max
        return out

    @_translate
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._read_only(inode)
        self.vfs.meta.setxattr(inode, name, value)

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name.split(b".", 1)[0] not in _XATTR_NAMESPACES:
            # system.posix_acl_* and other names setxattr refuses: none can exist, and
            # "not supported" (not ENODATA) lets ls -l stop asking for each file
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if name == COUNTS_XATTR and self.request_counts is not None and inode == pyfuse3.ROOT_INODE:
            return json.dumps(self.request_counts, sort_keys=True).encode()
        if self._virtual(inode):
            raise pyfuse3.FUSEError(errno.ENODATA)
        try:
            return self.vfs.meta.getxattr(inode, name)
        except FsError as exc:
            if exc.errno == errno.ENODATA and name == _SELINUX and not _SELINUX_ON:
                # no label here, and none expected: the host does not run SELinux. Saying
                # "not supported" lets ls -l stop asking for each file (as it does on
                # filesystems without labels); a label someone stored is still returned.
                raise pyfuse3.FUSEError(errno.EOPNOTSUPP) from None
            raise

    @_translate
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        if self._virtual(inode):
            return []
        return self.vfs.meta.listxattr(inode)

    @_translate
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._read_only(inode)
        self.vfs.meta.removexattr(inode, name)

    @_translate
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        if self._virtual(inode):
            return not mode & os.W_OK
        return self.vfs.access(inode, mode, ctx.uid, ctx.gid, _groups(ctx))


def _groups(ctx: pyfuse3.RequestContext) -> set[int]:
    try:
        return set(pyfuse3.get_sup_groups(ctx.pid))
    except (OSError, ValueError):
        return {ctx.gid}


__all__ = ["NexusOperations"]
