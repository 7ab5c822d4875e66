"""The background garbage collector: frees unreferenced blobs without anyone running `nexus gc`.

A thread of the mount, and of an API process with background work on, deletes objects
that have been unreferenced for longer than the grace period (``Config.gc_grace``;
docs/DESIGN.md, "Garbage collection", says what the period protects). It

* runs every ``gc_interval`` seconds, and sooner once ``gc_threshold`` bytes of garbage are
  collectable (it looks at the pending figure every :data:`CHECK_S` seconds: one indexed query);
* deletes in batches of :data:`BATCH` objects and, between batches, yields to the store's
  foreground work as the background indexer does (waits for :data:`QUIET_S` of quiet, but
  never more than :data:`DEFER_MAX_S`, then works for :data:`SLICE_S` without waiting);
* is one per store across processes: it collects only while it holds an exclusive ``flock`` of
  ``gc.lock`` in the store directory (a mount and an API process may share a store); the
  others keep trying, so the work moves on when the holder ends;
* stops within one object's deletion of ``stop()`` (close or unmount), never raising in its thread.

It uses its own database connection, so a batch never holds the connection that serves the mount.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable

from backends import BlobStore, BlobStoreError, private

from .background import BackgroundThread, yield_to_foreground
from .blocks import BlockLayer
from .meta.engine import MetadataEngine, ObjectRef
from .types import GarbageInfo

log = logging.getLogger("nexusfs.gc")

#: objects deleted between two looks at the foreground
BATCH = 64
#: how often the collector looks at the amount of collectable garbage (seconds, at most)
CHECK_S = 1.0
#: yield to foreground work like the indexer: wait for this much quiet ...
QUIET_S = 0.25
#: ... but not longer than this; then delete for SLICE_S without waiting
DEFER_MAX_S = 5.0
SLICE_S = 0.5
#: the lock file in the store directory held by the process whose collector runs
LOCK_NAME = "gc.lock"


def ready_bytes(meta: MetadataEngine, grace: float) -> int:
    """Stored bytes of the objects collectable now."""
    return meta.collectable_summary(time.time_ns() - int(grace * 1e9))[1]


def pending_garbage(meta: MetadataEngine, grace: float, now_ns: int | None = None) -> GarbageInfo:
    """What waits for the grace period (without the collector's part)."""
    now = time.time_ns() if now_ns is None else now_ns
    g = int(grace * 1e9)
    n, size, oldest, newest = meta.unreferenced_summary()
    if not n:
        return GarbageInfo(grace=grace)
    ready_n, ready_size = meta.collectable_summary(now - g)
    return GarbageInfo(n, size, oldest + g, newest + g, ready_n, ready_size, grace)


def delete_objects(meta: MetadataEngine, blobs: BlobStore, blocks: BlockLayer | None,
                   refs: list[ObjectRef], cutoff_ns: int,
                   stop: Callable[[], bool] = lambda: False) -> tuple[int, int, int]:
    """Delete the objects of ``refs`` that are still unreferenced since before ``cutoff_ns``:
    (objects deleted, stored bytes freed, blobs that could not be deleted)."""
    deleted = freed = errors = 0
    for ref in refs:
        if stop():
            break
        # The row goes first, in a transaction that re-checks refcount = 0; a writer that
        # deduplicates onto it must have taken a reference before, so nobody can
        # reference the blob once the row is gone.
        if not meta.forget_object(ref.id, cutoff_ns):
            continue
        if blocks is not None:
            blocks.forget_cached(ref.id)
        try:
            blobs.delete(ref.key)
        except BlobStoreError as exc:
            log.warning("cannot delete blob %s: %s (nexus gc will find it)", ref.key, exc)
            errors += 1
            continue
        deleted += 1
        freed += ref.stored_size
    return deleted, freed, errors


class Collector(BackgroundThread):
    thread_name = "nexus-gc"

    def __init__(self, *, home: str, metadata: str, blobs: BlobStore, blocks: BlockLayer,
                 grace: float, interval: float, threshold: int,
                 last_activity: Callable[[], float] | None = None) -> None:
        from .meta.db import open_database

        self.home = home
        self.blobs = blobs
        self.blocks = blocks
        self.grace = grace
        self.interval = interval
        self.threshold = threshold
        self.last_activity = last_activity
        super().__init__()
        self.db = open_database(metadata)
        self.meta = MetadataEngine(self.db)
        self._lock_fd: int | None = None
        self._slice_until = 0.0
        #: figures of this collector (tests and `nexus info` of this process)
        self.rounds = 0
        self.objects_deleted = 0
        self.bytes_freed = 0

    # -------------------------------------------------------------- lifecycle
    def wake(self) -> None:
        """Collect what is collectable now (tests, and anyone who just freed a lot)."""
        self._wake.set()

    def stop(self) -> None:
        self._end_thread()
        self._release_lock()
        self.db.close()

    @property
    def active(self) -> bool:
        """This process's collector holds the store's gc lock (it is the one collecting)."""
        return self._lock_fd is not None

    # ---------------------------------------------------------------- the lock
    def _take_lock(self) -> bool:
        if self._lock_fd is not None:
            return True
        path = os.path.join(self.home, LOCK_NAME)
        fd = private.open_file(path, os.O_RDWR, private.owner_for(self.home))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"gc by pid {os.getpid()}".encode(), 0)
        self._lock_fd = fd
        return True

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ work
    def _loop(self) -> None:
        last_round = time.monotonic()
        while not self._stop.is_set():
            woken = self._wake.wait(min(CHECK_S, self.interval))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                if not self._take_lock():
                    continue
                due = woken or time.monotonic() - last_round >= self.interval
                if not due:
                    due = ready_bytes(self.meta, self.grace) >= self.threshold
                if due:
                    self.collect()
                    last_round = time.monotonic()
            except Exception:  # noqa: BLE001 - the collector must survive anything
                log.exception("background garbage collection failed; retrying later")
                self._stop.wait(min(5.0, self.interval))

    def collect(self) -> int:
        """One round: delete, in batches, every object unreferenced for longer than the grace."""
        self.rounds += 1
        total = 0
        while not self._stop.is_set():
            self._yield_to_foreground()
            # after a wait: what has passed its grace meanwhile goes in this round too
            cutoff = time.time_ns() - int(self.grace * 1e9)
            batch = self.meta.garbage_objects(cutoff, limit=BATCH)
            if not batch:
                break
            deleted, freed, _errors = delete_objects(self.meta, self.blobs, self.blocks, batch, cutoff,
                                                     self._stop.is_set)
            self.objects_deleted += deleted
            self.bytes_freed += freed
            total += deleted
        if total:
            log.info("gc: freed %d unreferenced objects", total)
        return total

    def _yield_to_foreground(self) -> None:
        self._slice_until = yield_to_foreground(self.last_activity, self._stop, self._slice_until,
                                                quiet=QUIET_S, defer_max=DEFER_MAX_S, slice_s=SLICE_S)


def collector_pid(home: str) -> int | None:
    """The process id of the process whose background collector holds the store's gc lock,
    or None if no collector runs (the lock is free: a holder that died released it)."""
    path = os.path.join(home, LOCK_NAME)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            digits = text.rsplit(" ", 1)[-1]
            return int(digits) if digits.isdigit() else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
