"""The durability contract through the Python API, seen at the operating-system level.

README: "fsync returns only when both are durable (each blob is fsync'd before it is
referenced; the metadata log is fsync'd)"; a metadata operation through the API is durable
"against power loss once any fsync, sync or unmount has followed"; close commits at once.

A spy records, in the order they happen, every ``os.fsync``/``os.fdatasync`` of the process
(with what the descriptor is: path, inode, and for a directory the names in it at that
moment) and every write and sync SQLite makes through its VFS (an apsw VFS shim made the
default before the store opens). It does not look at the engine's own method names, so a
redesign of the write path (blocks into slices) keeps these tests meaningful.

What each call must have done when it returns (checked on the events from the first write
of the data — a full block starts uploading during write() — to the call's return):

* every blob file created is fsync'd (its inode), then its directory is fsync'd with the
  blob's name in it, and every directory created for it is fsync'd in its parent;
* all of that before the metadata commit that references it — the last WAL commit frame
  (reservations may commit earlier; the content commit comes after the uploads);
* for fsync, sync and close of the store (not for close of a file, which commits but does
  not sync): everything SQLite wrote since the change began (WAL or database file) is synced
  afterwards, by SQLite's xSync or an fsync of that file.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import apsw
import pytest

import nexusfs

SETTINGS = dict(block_size=64 * 1024, inline_max=1024, cache_size=1 << 20, dirty_limit=1 << 20,
                semantic=False, background_indexing=False)
#: more than three blocks of data that zstd cannot shrink
BIG = os.urandom(3 * 64 * 1024 + 5000)
#: a WAL frame header: 24 bytes; bytes 4..8 are the database size after a commit (0: not a commit)
WAL_FRAME_HEADER = 24


@dataclass
class Event:
    kind: str  # "fsync" (the process's own), "sql-write", "sql-sync"
    path: str
    key: tuple[int, int] | None = None  # (st_dev, st_ino) of an fsync'd descriptor
    names: frozenset[str] | None = None  # a directory's entries when it was fsync'd
    commit: bool = False  # a WAL commit frame's header


@dataclass
class Spy:
    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, ev: Event) -> None:
        with self.lock:
            self.events.append(ev)

    def mark(self) -> int:
        with self.lock:
            return len(self.events)

    def since(self, start: int) -> list[Event]:
        with self.lock:
            return list(self.events[start:])


class _SpyFile(apsw.VFSFile):
    def __init__(self, spy: Spy, name, flags) -> None:
        self._spy = spy
        self._name = name if isinstance(name, str) or name is None else name.filename()
        super().__init__("unix", name, flags)

    def xWrite(self, data, offset):  # noqa: N802 - apsw's name
        commit = (self._name or "").endswith("-wal") and len(data) == WAL_FRAME_HEADER \
            and bytes(data[4:8]) != b"\0\0\0\0"
        self._spy.add(Event("sql-write", self._name or "", commit=commit))
        return super().xWrite(data, offset)

    def xSync(self, flags):  # noqa: N802 - apsw's name
        self._spy.add(Event("sql-sync", self._name or ""))
        return super().xSync(flags)


class _SpyVFS(apsw.VFS):
    def __init__(self, spy: Spy) -> None:
        self._spy = spy
        super().__init__("nexus-durable-spy", "unix", makedefault=True)

    def xOpen(self, name, flags):  # noqa: N802 - apsw's name
        return _SpyFile(self._spy, name, flags)


@pytest.fixture
def spy(monkeypatch):
    s = Spy()
    real = {"fsync": os.fsync, "fdatasync": os.fdatasync}

    def spying(call):
        def sync(fd):
            fd = fd if isinstance(fd, int) else fd.fileno()
            path = os.readlink(f"/proc/self/fd/{fd}")
            st = os.fstat(fd)
            names = frozenset(os.listdir(path)) if os.path.isdir(path) else None
            s.add(Event("fsync", path, (st.st_dev, st.st_ino), names))
            return real[call](fd)
        return sync

    monkeypatch.setattr(os, "fsync", spying("fsync"))
    monkeypatch.setattr(os, "fdatasync", spying("fdatasync"))
    vfs = _SpyVFS(s)
    try:
        yield s
    finally:
        vfs.unregister()


@pytest.fixture
def snx(spy, tmp_path):
    """A store opened after the spy is in place (its SQLite connection goes through the shim)."""
    conn = nexusfs.connect(str(tmp_path / "store"), **SETTINGS)
    try:
        yield conn
    finally:
        conn.close()


def blob_tree(root: str) -> tuple[set[str], set[str]]:
    """(blob files, directories) under the blob store's root, temporary files left out."""
    files, dirs = set(), set()
    for d, subdirs, names in os.walk(root):
        dirs.update(os.path.join(d, s) for s in subdirs)
        files.update(os.path.join(d, n) for n in names if not n.startswith(".tmp-"))
    return files, dirs


def key_of(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def first(events: list[Event], after: int, pred) -> int | None:
    return next((i for i in range(after + 1, len(events)) if pred(events[i])), None)


def dir_synced_with(events: list[Event], after: int, path: str) -> int | None:
    """Index of the first fsync after ``after`` of ``path``'s directory with ``path`` in it."""
    parent, name = os.path.split(path)
    return first(events, after, lambda e: e.kind == "fsync" and e.path == parent
                 and e.names is not None and name in e.names)


def check_blobs_durable_before_commit(events: list[Event], new_files: set[str], new_dirs: set[str]) -> None:
    assert new_files, "the call wrote no blob: the test does not exercise the blob path"
    commits = [i for i, e in enumerate(events) if e.kind == "sql-write" and e.commit]
    assert commits, "no metadata commit (WAL commit frame) during the call"
    last_commit = commits[-1]
    for p in sorted(new_files):
        i_file = first(events, -1, lambda e, k=key_of(p): e.kind == "fsync" and e.key == k)
        assert i_file is not None, f"blob file {p} was never fsync'd"
        i_dir = dir_synced_with(events, i_file, p)
        assert i_dir is not None, f"the directory of blob {p} was not fsync'd (with its name in it) after the blob"
        assert i_dir < last_commit, f"blob {p} became durable only after the metadata commit referencing it"
    for d in sorted(new_dirs):
        i = dir_synced_with(events, -1, d)
        assert i is not None, f"new blob directory {d} was never made durable in its parent (fsync of the parent)"
        assert i < last_commit, f"new blob directory {d} became durable only after the metadata commit"


def check_metadata_synced(events: list[Event]) -> None:
    """Everything SQLite wrote in ``events`` (from before the changes to the end of the call
    that must make them durable) is synced before that call returns."""
    writes = [i for i, e in enumerate(events) if e.kind == "sql-write"]
    assert writes, "SQLite wrote nothing: the test made no change to make durable"
    for i in writes:
        path = events[i].path
        j = first(events, i, lambda e, p=path: e.kind in ("sql-sync", "fsync") and e.path == p)
        assert j is not None, f"metadata written to {os.path.basename(path)} was not synced before the call returned"


def blob_root(nx) -> str:
    return os.path.join(nx.config.home, "blobs")


def test_fsync_syncs_new_blobs_their_directories_then_the_metadata(snx, spy):
    root = blob_root(snx)
    files0, dirs0 = blob_tree(root)
    with snx.open("/big", "wb", buffering=0) as f:  # the raw file object has fsync()
        begin = spy.mark()  # a full block starts uploading during write()
        f.write(BIG)
        f.fsync()
        files1, dirs1 = blob_tree(root)
        check_blobs_durable_before_commit(spy.since(begin), files1 - files0, dirs1 - dirs0)
        check_metadata_synced(spy.since(begin))


def test_fsync_of_an_inline_file_syncs_the_metadata(snx, spy):
    begin = spy.mark()
    with snx.open("/small", "wb", buffering=0) as f:
        f.write(b"a few bytes, stored inline in the metadata")
        f.fsync()
        check_metadata_synced(spy.since(begin))


def test_fsync_after_an_overwrite_syncs_the_new_blobs(snx, spy):
    snx.write_bytes("/f", BIG)
    snx.sync()
    root = blob_root(snx)
    files0, dirs0 = blob_tree(root)
    with snx.open("/f", "r+b", buffering=0) as f:
        begin = spy.mark()
        f.seek(70_000)
        f.write(os.urandom(3000))
        f.fsync()
        files1, dirs1 = blob_tree(root)
        check_blobs_durable_before_commit(spy.since(begin), files1 - files0, dirs1 - dirs0)
        check_metadata_synced(spy.since(begin))


def test_close_makes_blobs_durable_before_committing_them(snx, spy):
    # close promises a commit (safe against a crash of the process), not a synced log; but the
    # metadata it commits must never point at a blob a power cut could take away
    root = blob_root(snx)
    files0, dirs0 = blob_tree(root)
    begin = spy.mark()  # a full block starts uploading during write(), before the close
    f = snx.open("/closed", "wb")
    f.write(BIG)
    f.close()
    events = spy.since(begin)
    files1, dirs1 = blob_tree(root)
    check_blobs_durable_before_commit(events, files1 - files0, dirs1 - dirs0)


def test_write_bytes_makes_blobs_durable_before_committing_them(snx, spy):
    root = blob_root(snx)
    files0, dirs0 = blob_tree(root)
    start = spy.mark()
    snx.write_bytes("/wb", BIG)
    events = spy.since(start)
    files1, dirs1 = blob_tree(root)
    check_blobs_durable_before_commit(events, files1 - files0, dirs1 - dirs0)


def test_sync_makes_namespace_changes_durable(snx, spy):
    begin = spy.mark()  # the API commits each change when it returns; sync makes them durable
    snx.mkdir("/d")
    snx.write_bytes("/d/a", b"x")
    snx.rename("/d/a", "/d/b")
    snx.delete("/d/b")
    snx.sync()
    check_metadata_synced(spy.since(begin))


def test_sync_commits_open_files_durably(snx, spy):
    root = blob_root(snx)
    files0, dirs0 = blob_tree(root)
    f = snx.open("/open", "wb")
    try:
        begin = spy.mark()
        f.write(BIG)
        snx.sync()
        events = spy.since(begin)
        files1, dirs1 = blob_tree(root)
        check_blobs_durable_before_commit(events, files1 - files0, dirs1 - dirs0)
        check_metadata_synced(events)
    finally:
        f.close()


def test_closing_the_store_syncs_the_metadata(spy, tmp_path):
    nx = nexusfs.connect(str(tmp_path / "store"), **SETTINGS)
    begin = spy.mark()
    try:
        nx.mkdir("/d")
        nx.write_bytes("/d/a", b"namespace change, not yet synced")
    finally:
        nx.close()
    check_metadata_synced(spy.since(begin))
