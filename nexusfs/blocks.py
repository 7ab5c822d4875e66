"""The block layer: content hashing, deduplication, compression, upload, cache.

A block is staged in a worker thread: hashed (BLAKE3; the hash releases the
GIL), looked up among live objects (a hit uploads nothing), else reserved as a
pending object, compressed (zstd, which also releases the GIL) and uploaded.
The commit of the file then takes the references. Reserving and reusing both
stamp the object's ``unref_ns``, so garbage collection, which waits a grace
period after that stamp, never removes what a writer is about to commit.

Reads go through a bounded LRU cache of raw blocks; concurrent fetches of the
same object share one download.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

import blake3
import zstandard
from cachetools import LRUCache

from backends import BlobNotFound, BlobStore, retry

from .errors import CorruptionError, StoreError
from .meta import schema
from .meta.engine import MetadataEngine, ObjectRef

Buffer = bytes | bytearray | memoryview
T = TypeVar("T")

#: how many recent uploads (digests) are remembered for sharing before they are committed
_UPLOADS_KEPT = 4096


class WouldBlock(Exception):
    """The operation needs I/O and the caller asked not to wait (run it in a thread)."""


def digest(data: Buffer) -> bytes:
    return blake3.blake3(data).digest()


@functools.lru_cache(maxsize=64)
def zero_digest(n: int) -> bytes:
    """The digest of ``n`` zero bytes: a block hashing to it is a hole (no memcmp needed)."""
    return digest(bytes(n))


#: positions sampled by :func:`may_be_zeros`
_ZERO_SAMPLES = 16


def may_be_zeros(data: Buffer) -> bool:
    """False if ``data`` certainly holds a non-zero byte (a few sampled positions); True
    means "look closer". This keeps the zero-block check away from almost every block:
    it used to compare each block's hash with the digest of as many zeros, which for a
    length it had not cached meant allocating and hashing that many zero bytes (after a
    mount had seen 256 distinct tail lengths, 4 MiB blocks too: ~2 ms a block)."""
    n = len(data)
    if n == 0:
        return True
    mv = memoryview(data).cast("B") if isinstance(data, memoryview) else data
    step = max(1, n // _ZERO_SAMPLES)
    return not mv[n - 1] and not any(mv[i] for i in range(0, n, step))


class Codec:
    """Block compression. zstd level 1 by default; a block that does not shrink is stored raw."""

    def __init__(self, name: str, level: int = 1) -> None:
        if name not in ("zstd", "none"):
            raise StoreError(f"unknown compression {name!r} (use zstd or none)")
        self.name = name
        self.level = level
        self._local = threading.local()

    def _compressor(self) -> zstandard.ZstdCompressor:
        c = getattr(self._local, "c", None)
        if c is None:
            c = self._local.c = zstandard.ZstdCompressor(level=self.level)
        return c

    def _decompressor(self) -> zstandard.ZstdDecompressor:
        d = getattr(self._local, "d", None)
        if d is None:
            d = self._local.d = zstandard.ZstdDecompressor()
        return d

    #: blocks larger than this are first tried on a sample: already-compressed data
    #: (media, archives, encrypted files) then skips the full attempt
    SAMPLE = 64 * 1024
    #: ... and so does data whose sample shrinks by less than this share. zstd costs
    #: ~3 ms per MiB of a core here, so a small saving is paid for in write speed: fio's
    #: default buffers (random data, ~5-12% compressible) wrote at half the speed of
    #: incompressible ones (215 vs 468 MiB/s through the mount) to store 11% less.
    #: Text, logs, code and databases shrink by far more and stay compressed.
    SAMPLE_MIN_SAVING = 0.15

    def encode(self, data: Buffer) -> tuple[Buffer, int]:
        if self.name == "zstd" and len(data) >= 128:
            c = self._compressor()
            if len(data) > 4 * self.SAMPLE:
                mid = len(data) // 2
                sample = memoryview(data)[mid : mid + self.SAMPLE]
                if len(c.compress(sample)) > self.SAMPLE * (1 - self.SAMPLE_MIN_SAVING):
                    return data, schema.CODEC_NONE
            packed = c.compress(data)
            if len(packed) < len(data) * 0.97:
                return packed, schema.CODEC_ZSTD
        return data, schema.CODEC_NONE

    def decode(self, payload: bytes, codec: int, size: int) -> bytes:
        if codec == schema.CODEC_NONE:
            return payload
        if codec == schema.CODEC_ZSTD:
            try:
                return self._decompressor().decompress(payload, max_output_size=size)
            except zstandard.ZstdError as exc:
                raise CorruptionError(f"cannot decompress block: {exc}") from None
        raise CorruptionError(f"unknown codec {codec}")


class BlockLayer:
    def __init__(
        self,
        meta: MetadataEngine,
        store: BlobStore,
        *,
        compression: str = "zstd",
        cache_bytes: int = 512 << 20,
        threads: int = 8,
        verify_reads: bool = True,
    ) -> None:
        self.meta = meta
        self.store = store
        self.block_size = meta.block_size
        self.codec = Codec(compression)
        self.verify_reads = verify_reads
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nexus-io")
        self.cache_bytes = cache_bytes
        self._cache: LRUCache[int, Buffer] = LRUCache(maxsize=cache_bytes, getsizeof=len)
        self._cache_lock = threading.Lock()
        self._inflight: dict[int, Future[Buffer]] = {}
        #: blocks this process uploaded (or is uploading) by (digest, size): such objects
        #: stay pending until a file commits them, so take_live_object cannot find them yet
        self._uploads: OrderedDict[tuple[bytes, int], Future[ObjectRef]] = OrderedDict()
        self._uploads_lock = threading.Lock()
        self.stats = {"uploads": 0, "dedup_hits": 0, "fetches": 0, "cache_hits": 0}

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # ----------------------------------------------------------------- writing
    def stage(self, data: bytearray | bytes) -> ObjectRef | None:
        """Store one block's content; return its ObjectRef, or None for all zeros (a hole).

        ``data`` is not kept: the caller may reuse its memory once this returns.
        """
        h = digest(data)
        if may_be_zeros(data) and h == zero_digest(len(data)):
            return None
        ref = self.meta.take_live_object(h, len(data))
        if ref is not None:
            self.stats["dedup_hits"] += 1
            return ref
        # The same content may be uploading or uploaded but not yet committed (identical
        # blocks of one file, or of files written together): share that upload.
        key = (h, len(data))
        while True:
            with self._uploads_lock:
                fut = self._uploads.get(key)
                if fut is None:
                    fut = self._uploads[key] = Future()
                    while len(self._uploads) > _UPLOADS_KEPT:
                        self._uploads.popitem(last=False)
                    break  # ours to upload
                self._uploads.move_to_end(key)
            try:
                ref = fut.result()
            except Exception:  # noqa: BLE001 - that upload failed: forget it
                ref = None
            if ref is not None and self.meta.touch_object(ref.id):
                self.stats["dedup_hits"] += 1
                return ref
            with self._uploads_lock:  # failed, or collected since: forget it
                if self._uploads.get(key) is fut:
                    del self._uploads[key]
        try:
            ref = self._upload(h, data)
        except BaseException as exc:
            fut.set_exception(exc)
            with self._uploads_lock:
                if self._uploads.get(key) is fut:
                    del self._uploads[key]
            raise
        fut.set_result(ref)
        return ref

    def _upload(self, h: bytes, data: bytearray | bytes) -> ObjectRef:
        payload, codec = self.codec.encode(data)
        ref = self.meta.reserve_object(h, len(data), len(payload), codec)
        retry(lambda: self.store.put(ref.key, payload))
        self.stats["uploads"] += 1
        return ref

    def submit_stage(self, data: bytearray | bytes) -> Future[ObjectRef | None]:
        return self.pool.submit(self.stage, data)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Run ``fn`` in one of the block layer's worker threads."""
        return self.pool.submit(fn)

    # ----------------------------------------------------------------- reading
    def cached(self, oid: int) -> Buffer | None:
        with self._cache_lock:
            data = self._cache.get(oid)
        if data is not None:
            self.stats["cache_hits"] += 1
        return data

    def _cache_put(self, oid: int, data: Buffer) -> None:
        if len(data) <= self._cache.maxsize // 4:
            with self._cache_lock:
                self._cache[oid] = data

    def uncache(self, refs: Iterable[ObjectRef]) -> None:
        """Drop objects from the read cache (their memory goes once nobody views it)."""
        with self._cache_lock:
            for ref in refs:
                self._cache.pop(ref.id, None)

    def fetch(self, ref: ObjectRef) -> Buffer:
        """The raw content of an object (cache, or a download shared with concurrent callers)."""
        data = self.cached(ref.id)
        if data is not None:
            return data
        return self._fetch_future(ref).result()

    def _fetch_future(self, ref: ObjectRef) -> Future[Buffer]:
        with self._cache_lock:
            fut = self._inflight.get(ref.id)
            if fut is not None:
                return fut
            fut = Future()
            self._inflight[ref.id] = fut
        try:
            data = self._download(ref)
        except BaseException as exc:
            fut.set_exception(exc)
        else:
            fut.set_result(data)
            self._cache_put(ref.id, data)
        finally:
            with self._cache_lock:
                self._inflight.pop(ref.id, None)
        return fut

    def _download(self, ref: ObjectRef) -> bytes:
        try:
            payload = retry(lambda: self.store.get(ref.key))
        except BlobNotFound:
            raise CorruptionError(f"block {ref.key} is missing from the blob store (run nexus fsck)") from None
        self.stats["fetches"] += 1
        data = self.codec.decode(payload, ref.codec, ref.size)
        if len(data) != ref.size:
            raise CorruptionError(f"block {ref.key} has {len(data)} bytes, expected {ref.size}")
        if self.verify_reads and digest(data) != ref.hash:
            raise CorruptionError(f"block {ref.key} does not match its content hash (run nexus fsck)")
        return data

    def prefetch(self, refs: Iterable[ObjectRef]) -> None:
        """Start downloading objects that are not cached yet, in the background."""
        for ref in refs:
            with self._cache_lock:
                if ref.id in self._cache or ref.id in self._inflight:
                    continue
            self.pool.submit(self._prefetch_one, ref)

    def _prefetch_one(self, ref: ObjectRef) -> None:
        try:
            self.fetch(ref)
        except Exception:  # noqa: BLE001 - a real read will report it
            pass

    def verify_object(self, ref: ObjectRef) -> str | None:
        """None if the blob exists and matches its hash, else what is wrong (for fsck)."""
        try:
            payload = self.store.get(ref.key)
        except BlobNotFound:
            return "missing"
        if len(payload) != ref.stored_size:
            return f"stored size {len(payload)} != recorded {ref.stored_size}"
        try:
            data = self.codec.decode(payload, ref.codec, ref.size)
        except CorruptionError as exc:
            return str(exc)
        if len(data) != ref.size:
            return f"size {len(data)} != recorded {ref.size}"
        if digest(data) != ref.hash:
            return "content does not match its hash"
        return None

    def forget_cached(self, oid: int) -> None:
        with self._cache_lock:
            self._cache.pop(oid, None)
