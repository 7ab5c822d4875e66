"""Store figures (``nexus info``) and garbage collection (``nexus gc``)."""

from __future__ import annotations

import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from .autogc import collector_pid, delete_objects, pending_garbage
from .meta.engine import parse_blob_key
from .meta.schema import OBJECT_PENDING
from .store import Store
from .types import StoreInfo

S_IFMT = 0o170000

Progress = Callable[[str, int, int | None], None]


def store_info(store: Store) -> StoreInfo:
    db = store.db
    counts = dict(
        db.query(
            "SELECT mode & ?, COUNT(*) FROM inodes GROUP BY mode & ?",
            (S_IFMT, S_IFMT),
        )
    )
    logical = db.query_value("SELECT SUM(size) FROM inodes WHERE (mode & ?) = ?", (S_IFMT, stat.S_IFREG), 0)
    referenced = db.query_value(
        "SELECT SUM(o.size) FROM blocks b JOIN objects o ON o.id = b.object", (), 0
    )
    unique = db.query_value("SELECT SUM(size) FROM objects WHERE refcount > 0", (), 0)
    stored = db.query_value("SELECT SUM(stored_size) FROM objects", (), 0)
    inline = db.query_value("SELECT SUM(LENGTH(inline)) FROM inodes WHERE inline IS NOT NULL", (), 0)
    objects = db.query_value("SELECT COUNT(*) FROM objects", (), 0)
    pending = db.query_value("SELECT COUNT(*) FROM objects WHERE state = ?", (OBJECT_PENDING,), 0)
    unref = db.query_value("SELECT COUNT(*) FROM objects WHERE refcount = 0", (), 0)
    garbage = pending_garbage(store.meta, store.config.gc_grace)
    garbage.auto, garbage.collector_pid = store.config.gc_auto, collector_pid(store.config.home)
    s = store.meta.settings
    known = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK)
    return StoreInfo(
        home=store.config.home,
        metadata=store.config.metadata,
        blobs=store.blobs.url,
        block_size=int(s["block_size"]),
        compression=s.get("compression", "zstd"),
        inline_max=int(s["inline_max"]),
        schema_version=int(s["schema_version"]),
        files=counts.get(stat.S_IFREG, 0),
        directories=counts.get(stat.S_IFDIR, 0),
        symlinks=counts.get(stat.S_IFLNK, 0),
        other_inodes=sum(v for k, v in counts.items() if k not in known),
        logical_bytes=logical,
        referenced_bytes=referenced + inline,
        unique_bytes=unique + inline,
        stored_bytes=stored + inline,
        inline_bytes=inline,
        objects=objects,
        pending_objects=pending,
        unreferenced_objects=unref,
        extra={"uuid": s.get("uuid", "")},
        garbage=garbage,
    )


@dataclass
class GcReport:
    objects_deleted: int = 0
    #: stored bytes of the objects, orphan blobs and temporary files deleted
    bytes_freed: int = 0
    orphan_blobs_deleted: int = 0
    temp_files_deleted: int = 0
    errors: int = 0
    #: the grace period used (seconds)
    grace: float = 0.0
    #: unreferenced objects kept because they are younger than the grace period
    waiting_objects: int = 0
    waiting_bytes: int = 0
    #: when gc may free the first and the last of them (ns since the epoch; 0: none wait)
    waiting_from_ns: int = 0
    waiting_until_ns: int = 0


def collect_garbage(
    store: Store, *, grace: float, scan_blobs: bool = True, progress: Progress | None = None
) -> GcReport:
    """Delete objects unreferenced for longer than ``grace`` seconds, then blobs no object
    names (as old), and temporary files of interrupted uploads (any age: no put holds them).
    The report also says what is left waiting for the grace period, and until when."""
    report = GcReport(grace=grace)
    meta, blobs = store.meta, store.blobs
    cutoff = time.time_ns() - int(grace * 1e9)
    while True:
        batch = meta.garbage_objects(cutoff, limit=1000)
        if not batch:
            break
        deleted, freed, errors = delete_objects(meta, blobs, store.vfs.blocks, batch, cutoff)
        report.objects_deleted += deleted
        report.bytes_freed += freed
        report.errors += errors
        if progress and deleted:
            progress("objects", report.objects_deleted, None)
    if scan_blobs:
        cutoff_s = time.time() - grace
        batch_keys: list[tuple[str, int, int]] = []

        def flush() -> None:
            known = meta.object_ids([oid for _k, oid, _n in batch_keys])
            for key, oid, size in batch_keys:
                if oid not in known:
                    if blobs.delete(key):
                        report.orphan_blobs_deleted += 1
                        report.bytes_freed += size
            batch_keys.clear()

        seen = 0
        for info in blobs.list():
            seen += 1
            if progress and seen % 1000 == 0:
                progress("blobs scanned", seen, None)
            parsed = parse_blob_key(info.key)
            if parsed is None or info.mtime > cutoff_s:
                continue
            batch_keys.append((info.key, parsed[1], info.size))
            if len(batch_keys) >= 500:
                flush()
        flush()
        files, size = store.remove_stale_temp_files()
        report.temp_files_deleted += files
        report.bytes_freed += size
    waiting = pending_garbage(meta, grace)
    report.waiting_objects, report.waiting_bytes = waiting.objects, waiting.bytes
    report.waiting_from_ns, report.waiting_until_ns = waiting.first_ns, waiting.last_ns
    return report
