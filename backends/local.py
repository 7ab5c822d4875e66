"""A blob store in a local directory.

Layout: ``ROOT/ab/cd/KEY`` where ``abcd`` are the first four characters of the
key, so that millions of blobs spread over 65,536 directories. Writes go to a
temporary file in the same directory, are fsync'd, then renamed over the final
name, so a reader or a crash sees either the whole blob or none of it.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator

from .base import BlobInfo, BlobNotFound, BlobStore, BlobStoreError, check_key

_TMP_PREFIX = ".tmp-"


class LocalBlobStore(BlobStore):
    def __init__(self, root: str, *, fsync: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root
        self.fsync = fsync
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise BlobStoreError(f"cannot create blob directory {self.root}: {exc.strerror}") from exc
        self._made_dirs: set[str] = set()

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
            os.makedirs(d, exist_ok=True)
            self._made_dirs.add(d)
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=d)
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                view = memoryview(data)
                while view:
                    n = f.write(view)
                    view = view[n:]
                if self.fsync:
                    os.fsync(f.fileno())
            os.rename(tmp, os.path.join(d, key))
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        if self.fsync:
            # make the rename itself durable
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

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
        """Paths of temporary files left by interrupted puts (for fsck/gc)."""
        for top in _sorted_dirs(self.root):
            for sub in _sorted_dirs(os.path.join(self.root, top)):
                d = os.path.join(self.root, top, sub)
                for name in os.listdir(d):
                    if name.startswith(_TMP_PREFIX):
                        yield os.path.join(d, name)

    def capacity(self) -> tuple[int, int] | None:
        try:
            st = os.statvfs(self.root)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return None
            raise
        return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def _sorted_dirs(path: str) -> list[str]:
    try:
        with os.scandir(path) as it:
            return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
