"""Accounting for dirty (written but not yet uploaded) block data.

Writers add bytes as their buffers grow; staging releases them once a block is
uploaded. When the total passes the limit, writers stage their own dirty
blocks and then wait here until uploads bring it back under the limit, so
memory never grows without bound however fast data arrives.
"""

from __future__ import annotations

import mmap
import threading


class DirtyBuffer:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        #: the part of ``used`` handed to uploads that have not finished yet
        self.in_flight = 0
        self._cond = threading.Condition()

    def add(self, n: int) -> None:
        if n:
            with self._cond:
                self.used += n

    def release(self, n: int) -> None:
        if n:
            with self._cond:
                self.used -= n
                if self.used < self.limit:
                    self._cond.notify_all()

    def start_upload(self, n: int) -> None:
        """``n`` dirty bytes were handed to an upload; :meth:`finish_upload` when it ends."""
        with self._cond:
            self.in_flight += n

    def finish_upload(self, n: int) -> None:
        with self._cond:
            self.in_flight -= n
            self.used -= n
            self._cond.notify_all()

    def has_room(self, n: int = 0) -> bool:
        return self.used + n <= self.limit

    def wait_for_room(self, timeout: float | None = None) -> bool:
        """Block until usage is under the limit, or no upload is left to finish; False on timeout.

        With nothing in flight, what fills the buffer is partly written blocks of
        other open files, which no upload will free: waiting longer cannot help.
        """
        with self._cond:
            return self._cond.wait_for(lambda: self.used < self.limit or self.in_flight <= 0, timeout)


#: a dirty block that never grows past this stays a plain, exactly sized buffer;
#: larger ones move into a full-block buffer from the pool
SMALL_BLOCK = 128 * 1024


class BufferPool:
    """Reusable full-block buffers.

    Filling memory the process already touched is many times faster than fresh
    memory (which the kernel must fault in page by page), and sequential writes
    would otherwise allocate a new block-sized buffer for every block. The buffers
    are anonymous memory maps, so page-aligned: a local blob store writes them to
    disk with O_DIRECT without copying them first.
    """

    def __init__(self, block_size: int, keep: int) -> None:
        self.block_size = block_size
        self.keep = keep
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def get(self) -> mmap.mmap:
        with self._lock:
            if self._free:
                return self._free.pop()
        return mmap.mmap(-1, self.block_size)

    def put(self, buf: bytearray | mmap.mmap) -> None:
        if not isinstance(buf, mmap.mmap) or len(buf) != self.block_size:
            return
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)


class DirtyBlock:
    """A block being written: ``buf[:length]`` is its content from the block's start.

    Bytes of ``buf`` past ``length`` are left over from earlier use and never shown.
    """

    __slots__ = ("buf", "length")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        #: a plain bytearray while small, then a full-block buffer from the pool
        self.buf: bytearray | mmap.mmap = bytearray(data)
        self.length = len(self.buf)

    @property
    def pooled(self) -> bool:
        return isinstance(self.buf, mmap.mmap)

    @property
    def capacity(self) -> int:
        return len(self.buf)

    def view(self, length: int | None = None) -> memoryview:
        return memoryview(self.buf)[: self.length if length is None else min(length, self.length)]

    def write(self, start: int, data: memoryview, pool: BufferPool, zeros: memoryview) -> int:
        """Copy ``data`` in at ``start`` (zero-filling any gap); returns the capacity added."""
        end = start + len(data)
        grown = 0
        if end > len(self.buf):
            grown = self._grow(end, pool)
        mv = memoryview(self.buf)
        if start > self.length:
            mv[self.length : start] = zeros[: start - self.length]
        mv[start:end] = data
        if end > self.length:
            self.length = end
        return grown

    def _grow(self, need: int, pool: BufferPool) -> int:
        old = len(self.buf)
        if need <= SMALL_BLOCK and not self.pooled:
            self.buf.extend(bytes(min(max(need, 2 * old), SMALL_BLOCK) - old))
        else:
            big = pool.get()
            big[: self.length] = memoryview(self.buf)[: self.length]
            self.buf = big
        return len(self.buf) - old
