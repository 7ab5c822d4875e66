"""A blob store in a local directory.

Layout: ``ROOT/ab/cd/KEY`` where ``abcd`` are the first four characters of the
key, so that millions of blobs spread over 65,536 directories. Writes go to a
temporary file in the same directory, are fsync'd, then renamed over the final
name, so a reader or a crash sees either the whole blob or none of it. The writer
holds an ``flock`` on its temporary file until it is renamed: a temporary file
nobody holds was left by a process that died mid-put, and garbage collection
removes it at once (:meth:`LocalBlobStore.remove_stale_temporary`).

Every directory and file is private to the store's owner (see :mod:`backends.private`).

Large blobs are written with ``O_DIRECT`` where the filesystem allows it: the data
goes from an aligned per-thread buffer straight to the device instead of through
the page cache. On a 2-core VM that cut the CPU cost of writing 256 MiB of blobs
from ~0.39 s to ~0.02 s (it is the page cache's allocation and copying), CPU
that the mount's own request loop needs. Filesystems without ``O_DIRECT`` (tmpfs,
some FUSE and network filesystems) get ordinary buffered writes.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import tempfile
import threading
from collections.abc import Iterator

from . import private
from .base import BlobInfo, BlobNotFound, BlobStore, BlobStoreError, check_key

_TMP_PREFIX = ".tmp-"
#: blobs at least this large are written with O_DIRECT where possible
DIRECT_MIN = 256 * 1024
#: O_DIRECT alignment of buffer address, file offset and length (covers 512-byte
#: and 4 KiB logical sectors)
_ALIGN = 4096


class LocalBlobStore(BlobStore):
    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        self.fsync = fsync
        try:
            if not os.path.isdir(self.root):
                parent = os.path.dirname(self.root)
                os.makedirs(parent, exist_ok=True)
                if private.make_dir(self.root, private.owner_for(parent)) and fsync:
                    fsync_dir(parent)  # blobs fsync'd into it must not lose it to a power cut
            #: who gets what root creates here (None: whoever creates it)
            self._owner = private.owner_for(self.root)
        except OSError as exc:
            raise BlobStoreError(f"cannot create blob directory {self.root}: {exc.strerror}") from exc
        self._made_dirs: set[str] = set()
        self._dir_lock = threading.Lock()
        #: None until the first large put finds out whether O_DIRECT works here
        self.direct: bool | None = None if hasattr(os, "O_DIRECT") else False
        self._scratch = threading.local()

    # -- paths ------------------------------------------------------------
    def _dir(self, key: str) -> str:
        k = key.ljust(4, "_")
        return os.path.join(self.root, k[0:2], k[2:4])

    def _path(self, key: str) -> str:
        return os.path.join(self._dir(check_key(key)), key)

    # -- interface --------------------------------------------------------
    def put(self, key: str, data: bytes | bytearray | memoryview) -> None:
        check_key(key)
        d = self._dir(key)
        if d not in self._made_dirs:
            self._make_dir(d)
        fd, tmp = self._temporary(d)
        try:
            try:
                if not (self.direct is not False and len(data) >= DIRECT_MIN and self._write_direct(fd, data)):
                    _write_all(fd, memoryview(data))
                if self.fsync:
                    os.fsync(fd)
                os.rename(tmp, os.path.join(d, key))  # still locked: gc keeps its hands off
            finally:
                os.close(fd)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if self.fsync:
            fsync_dir(d)  # make the rename itself durable

    def _make_dir(self, d: str) -> None:
        """Create the blob directory ``d`` and its parent if missing; with ``fsync``, make each
        new one durable in its parent (else a power cut can take a new directory away, and
        with it every blob fsync'd into it). A lock keeps other threads of this process from
        putting a blob into a directory whose creation is not durable yet."""
        with self._dir_lock:
            if d in self._made_dirs:
                return
            missing = []
            p = d
            while p != self.root and not os.path.isdir(p):
                missing.append(p)
                p = os.path.dirname(p)
            private.make_dirs(d, self.root, self._owner)
            if self.fsync:
                for new in reversed(missing):
                    fsync_dir(os.path.dirname(new))
            self._made_dirs.add(d)

    def _temporary(self, d: str) -> tuple[int, str]:
        """A new temporary file in ``d`` (0600, the owner's), locked for this put: (fd, path)."""
        while True:
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=d)  # 0600 whatever the umask
            try:
                if not _lock(fd, fcntl.LOCK_EX):
                    return fd, tmp  # no locks here: gc cannot tell, and leaves temp files alone
                # gc removes a temporary file nobody holds: this one may have gone between
                # its creation and the lock (gc unlinks before it lets go); then take another
                if os.fstat(fd).st_nlink:
                    if self._owner is not None:
                        os.fchown(fd, *self._owner)
                    return fd, tmp
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)

    def _write_direct(self, fd: int, data: bytes | bytearray | memoryview) -> bool:
        """Write ``data`` to the empty file ``fd`` bypassing the page cache. A page-aligned
        buffer (the block layer's pooled buffers are) goes out as it is; anything else,
        and the tail past the last whole page, is copied into this thread's aligned
        buffer, written padded, and the file cut back to its length. False (file
        untouched) where the filesystem refuses O_DIRECT."""
        n = len(data)
        src = memoryview(data).cast("B")
        whole = n - n % _ALIGN if _address(src) % _ALIGN == 0 else 0
        tail = n - whole
        padded = -(-tail // _ALIGN) * _ALIGN
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
            if whole:
                _write_all(fd, src[:whole])
            if tail:
                buf: mmap.mmap | None = getattr(self._scratch, "buf", None)
                if buf is None or len(buf) < padded:
                    if buf is not None:
                        buf.close()
                    buf = self._scratch.buf = mmap.mmap(-1, padded)  # anonymous maps are page-aligned
                with memoryview(buf) as view:
                    view[:tail] = src[whole:]
                    view[tail:padded] = bytes(padded - tail)
                    _write_all(fd, view[:padded])
        except OSError as exc:
            if exc.errno != errno.EINVAL or self.direct:
                raise
            self.direct = False  # the filesystem does not do O_DIRECT: buffered from now on
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
            return False
        if padded != tail:
            os.ftruncate(fd, n)
        self.direct = True
        return True

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb", buffering=0) as f:
                return f.read()
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def delete(self, key: str) -> bool:
        try:
            os.unlink(self._path(key))
            return True
        except FileNotFoundError:
            return False

    def exists(self, key: str) -> bool:
        return os.path.exists(self._path(key))

    def stat(self, key: str) -> BlobInfo:
        try:
            st = os.stat(self._path(key))
        except FileNotFoundError:
            raise BlobNotFound(key) from None
        return BlobInfo(key, st.st_size, st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[BlobInfo]:
        for top in _sorted_dirs(self.root):
            if prefix[:2] and not top.startswith(prefix[:2]):
                continue
            top_path = os.path.join(self.root, top)
            for sub in _sorted_dirs(top_path):
                if len(prefix) > 2 and not (top + sub).startswith(prefix[:4]):
                    continue
                with os.scandir(os.path.join(top_path, sub)) as it:
                    for entry in it:
                        name = entry.name
                        if name.startswith(_TMP_PREFIX) or not name.startswith(prefix):
                            continue
                        try:
                            st = entry.stat()
                        except FileNotFoundError:
                            continue
                        yield BlobInfo(name, st.st_size, st.st_mtime)

    def list_temporary(self) -> Iterator[str]:
        """Paths of every temporary file: of puts under way, and left by interrupted ones."""
        for top in _sorted_dirs(self.root):
            for sub in _sorted_dirs(os.path.join(self.root, top)):
                d = os.path.join(self.root, top, sub)
                for name in os.listdir(d):
                    if name.startswith(_TMP_PREFIX):
                        yield os.path.join(d, name)

    def stale_temporary(self) -> Iterator[tuple[str, int]]:
        """(path, size) of each temporary file no put is writing: left by a process that
        died in the middle of one. Garbage (for fsck to mention and gc to remove)."""
        for path in self.list_temporary():
            size = self._if_stale(path, remove=False)
            if size is not None:
                yield path, size

    def remove_stale_temporary(self) -> tuple[int, int]:
        """Delete the temporary files of interrupted puts; returns (files, bytes)."""
        files = nbytes = 0
        for path in self.list_temporary():
            size = self._if_stale(path, remove=True)
            if size is not None:
                files += 1
                nbytes += size
        return files, nbytes

    @staticmethod
    def _if_stale(path: str, remove: bool) -> int | None:
        """The size of temporary file ``path`` if no put holds its lock (and with
        ``remove``, delete it under the lock, so no put can take it up); else None."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except (FileNotFoundError, PermissionError):
            return None
        try:
            try:
                if not _lock(fd, (fcntl.LOCK_EX if remove else fcntl.LOCK_SH) | fcntl.LOCK_NB):
                    return None  # a filesystem without locks: no telling, so not garbage
            except BlockingIOError:
                return None  # a put is writing it
            st = os.fstat(fd)
            try:
                if os.lstat(path).st_ino != st.st_ino:
                    return None
                if remove:
                    os.unlink(path)
            except FileNotFoundError:
                return None  # renamed into place by its put a moment ago
            return st.st_size
        finally:
            os.close(fd)

    def capacity(self) -> tuple[int, int] | None:
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _address(view: memoryview) -> int:
    """Memory address of a writable buffer, or -1 (read-only buffers such as bytes)."""
    if view.readonly or not view.nbytes:
        return -1
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


#: flock() errors of filesystems that have no locks
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _lock(fd: int, how: int) -> bool:
    """flock(); False where the filesystem has no locks (BlockingIOError goes to the caller)."""
    try:
        fcntl.flock(fd, how)
    except BlockingIOError:
        raise
    except OSError as exc:
        if exc.errno in _NO_LOCKS:
            return False
        raise
    return True


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable (a new, renamed or removed name in it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _sorted_dirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
