"""Accounting for dirty (written but not yet uploaded) block data.

Writers add bytes as their buffers grow; staging releases them once a block is
uploaded. When the total passes the limit, writers stage their own dirty
blocks and then wait here until uploads bring it back under the limit, so
memory never grows without bound however fast data arrives.
"""

from __future__ import annotations

import ctypes
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


#: an appending write at least this large, of immutable bytes, is kept as it is
#: (a segment) instead of being copied into the block's buffer
SEGMENT_MIN = 64 * 1024


def _address(buf: bytes | bytearray | mmap.mmap) -> int:
    if isinstance(buf, bytes):
        return ctypes.cast(buf, ctypes.c_void_p).value or 0
    c = ctypes.c_char.from_buffer(buf)
    try:
        return ctypes.addressof(c)
    finally:
        del c  # the export would pin the map


class DirtyBlock:
    """A block being written: its content from the block's start, ``length`` bytes.

    The content lives in one of two forms. Usually ``buf[:length]`` (bytes of ``buf``
    past ``length`` are left over from earlier use and never shown). But while the
    block has only been appended to by large writes of immutable ``bytes`` (the mount
    receives each 1 MiB write as one), it is the concatenation of those objects,
    kept in ``segments`` without copying them: the copy into a full-block buffer
    then happens in a worker thread when the block is staged (:meth:`gather`, which
    releases the GIL), not in the request that delivered the data. Any other write
    or a read of the block turns it into the buffer form first (:meth:`flatten`).
    """

    __slots__ = ("buf", "length", "segments")

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        #: a plain bytearray while small, then a full-block buffer from the pool
        self.buf: bytearray | mmap.mmap = bytearray(data)
        self.length = len(self.buf)
        #: (bytes, offset, size) pieces making up the content, or None in buffer form
        self.segments: list[tuple[bytes, int, int]] | None = None

    @property
    def pooled(self) -> bool:
        return isinstance(self.buf, mmap.mmap)

    @property
    def capacity(self) -> int:
        """Memory this block holds for its content (what the dirty limit counts)."""
        return self.length if self.segments is not None else len(self.buf)

    def view(self, length: int | None = None) -> memoryview:
        """The content (buffer form only: :meth:`flatten` first)."""
        assert self.segments is None, "flatten() a segmented block before viewing it"
        return memoryview(self.buf)[: self.length if length is None else min(length, self.length)]

    def write(
        self,
        start: int,
        data: memoryview,
        pool: BufferPool,
        zeros: memoryview,
        origin: tuple[bytes, int] | None = None,
    ) -> int:
        """Put ``data`` at ``start`` (zero-filling any gap); returns the capacity added.

        ``origin`` says that ``data`` is the part of an immutable ``bytes`` object
        starting at that offset: it is then kept without a copy when it appends to a
        block that is new or segmented and is at least :data:`SEGMENT_MIN` long.
        """
        before = self.capacity
        end = start + len(data)
        # a block without a buffer is new (nothing written) or segmented
        if origin is not None and start == self.length and not self.buf and len(data) >= SEGMENT_MIN:
            if self.segments is None:
                self.segments = []
            self.segments.append((origin[0], origin[1], len(data)))
            self.length = end
            return self.capacity - before
        self.flatten(pool, end)
        if end > len(self.buf):
            self._grow(end, pool)
        mv = memoryview(self.buf)
        if start > self.length:
            mv[self.length : start] = zeros[: start - self.length]
        mv[start:end] = data
        if end > self.length:
            self.length = end
        return self.capacity - before

    def flatten(self, pool: BufferPool, need: int = 0) -> None:
        """Turn a segmented block into buffer form (at least ``need`` bytes of room)."""
        if self.segments is None:
            return
        size = max(need, self.length)
        self.buf = pool.get() if size > SMALL_BLOCK else bytearray(size)
        self._copy_segments()

    def gather(self, pool: BufferPool, length: int) -> memoryview:
        """The first ``length`` bytes of the content as a view of a full-block buffer
        from the pool (for staging; a segmented block is copied with the GIL released)."""
        if self.segments is not None:
            self.buf = pool.get()
            self._copy_segments()
        return self.view(length)

    def _copy_segments(self) -> None:
        segments, self.segments = self.segments or [], None
        dst = _address(self.buf)
        pos = 0
        for obj, offset, size in segments:
            ctypes.memmove(dst + pos, _address(obj) + offset, size)
            pos += size

    def _grow(self, need: int, pool: BufferPool) -> None:
        old = len(self.buf)
        if need <= SMALL_BLOCK and not self.pooled:
            self.buf.extend(bytes(min(max(need, 2 * old), SMALL_BLOCK) - old))
        else:
            big = pool.get()
            big[: self.length] = memoryview(self.buf)[: self.length]
            self.buf = big
