"""The background indexer yields to the store's own work, and SQLite lock waits are short.

No timing asserts: the tests check what happens (a job stays queued while the store is
busy, is done once it is quiet, is done anyway under work that never pauses), with
generous margins.
"""

from __future__ import annotations

import threading
import time

import apsw
import pytest

import nexusfs
from nexusfs.meta.db import SQLiteDatabase
from nexusfs.search import indexer as indexer_mod
from tests.mountutil import wait_until
from tests.search_helpers import STORE_SETTINGS


class Clock:
    """A stand-in for the store's last-activity time: busy (now) or quiet (long ago)."""

    def __init__(self) -> None:
        self.busy = True

    def __call__(self) -> float:
        return time.monotonic() if self.busy else 0.0


@pytest.fixture
def store(store_dir):
    nx = nexusfs.connect(store_dir, **{**STORE_SETTINGS, "background_indexing": False})
    yield nx
    nx.close()


def start_indexer(nx: nexusfs.Nexus, clock: Clock) -> indexer_mod.Indexer:
    st = nx.store
    ix = indexer_mod.Indexer(st.config, st.vfs.blocks, semantic=False, last_activity=clock)
    st.meta.on_index_enqueued = ix.notify
    ix.start()
    return ix


def test_waits_while_the_store_is_busy(store, monkeypatch):
    monkeypatch.setattr(indexer_mod, "DEFER_MAX_S", 600.0)
    clock = Clock()
    ix = start_indexer(store, clock)
    try:
        store.write_bytes("/a.txt", b"needle in a haystack\n")
        time.sleep(4 * indexer_mod.QUIET_S)  # four quiet periods: would have been indexed by now if quiet
        assert store.index_status().pending == 1
        assert ix.indexed == 0
        clock.busy = False
        assert wait_until(lambda: store.index_status().pending == 0, timeout=30)
        assert [m.path for m in store.grep("needle")] == ["/a.txt"]
    finally:
        ix.stop()


def test_indexes_anyway_under_work_that_never_pauses(store, monkeypatch):
    monkeypatch.setattr(indexer_mod, "DEFER_MAX_S", 0.2)
    clock = Clock()
    ix = start_indexer(store, clock)
    try:
        store.write_many({f"/d/f{i}.txt": f"file {i}\n".encode() for i in range(5)})
        assert wait_until(lambda: store.index_status().pending == 0, timeout=30)
        assert ix.indexed == 5
    finally:
        ix.stop()


def claimed_jobs(nx: nexusfs.Nexus) -> int:
    """Jobs some indexer holds a lease on now."""
    return nx.meta.db.query_value("SELECT COUNT(*) FROM index_jobs WHERE claimed_until_ns > ?",
                                  (time.time_ns(),), 0)


def test_stopping_gives_back_the_claims_it_did_not_work_through(store, monkeypatch):
    store.write_many({f"/d/f{i}.txt": f"file {i}\n".encode() for i in range(5)})
    inside, go_on = threading.Event(), threading.Event()
    real_index_file = indexer_mod.Indexer.index_file

    def index_file(self, ino):  # the first file takes long: stop() comes in the middle of it
        inside.set()
        go_on.wait(30)
        return real_index_file(self, ino)

    monkeypatch.setattr(indexer_mod.Indexer, "index_file", index_file)
    clock = Clock()
    clock.busy = False
    ix = start_indexer(store, clock)
    assert inside.wait(30)
    assert claimed_jobs(store) == 5  # one batch holds them all
    stopper = threading.Thread(target=ix.stop)
    stopper.start()
    assert wait_until(ix._stop.is_set, timeout=30)
    go_on.set()
    stopper.join(60)
    assert store.index_status().pending == 4  # the one under way was finished
    assert claimed_jobs(store) == 0  # the others are free for the next indexer at once


def test_foreground_reindex_never_waits(store):
    clock = Clock()  # busy forever
    st = store.store
    ix = indexer_mod.Indexer(st.config, st.vfs.blocks, semantic=False, last_activity=clock)
    try:
        store.write_bytes("/b.txt", b"hello\n")
        assert ix.run_until_idle() == 1
        assert store.index_status().pending == 0
    finally:
        ix.stop()


def test_store_activity_is_recorded(store):
    db = store.store.db
    before = db.last_write
    store.write_bytes("/c.txt", b"x" * 10)
    assert db.last_write > before
    vfs = store.store.vfs
    before = vfs.last_use
    store.write_bytes("/big.bin", b"y" * 300_000)
    assert store.read_bytes("/big.bin") == b"y" * 300_000
    assert vfs.last_use > before


def test_busy_database_waits_then_succeeds_or_times_out(tmp_path):
    path = str(tmp_path / "x.db")
    a = SQLiteDatabase(path)
    b = SQLiteDatabase(path, busy_timeout_ms=20_000)
    with a.transaction():
        a.execute("CREATE TABLE t (v INTEGER)")
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with a.transaction():
            a.execute("INSERT INTO t VALUES (1)")
            held.set()
            release.wait(10)

    th = threading.Thread(target=hold)
    th.start()
    try:
        assert held.wait(10)
        threading.Timer(0.3, release.set).start()
        with b.transaction():  # waits for a's transaction, then goes through
            b.execute("INSERT INTO t VALUES (2)")
    finally:
        release.set()
        th.join()
    assert sorted(r[0] for r in b.query("SELECT v FROM t")) == [1, 2]

    impatient = SQLiteDatabase(path, busy_timeout_ms=100)
    held.clear()
    release.clear()
    th = threading.Thread(target=hold)
    th.start()
    try:
        assert held.wait(10)
        with pytest.raises(apsw.BusyError):
            with impatient.transaction():
                impatient.execute("INSERT INTO t VALUES (3)")
    finally:
        release.set()
        th.join()
    for db in (a, b, impatient):
        db.close()


def test_a_claim_outlives_the_waits_of_its_batch():
    """Claimed jobs stay claimed while the background loop waits for quiet before each of
    them; otherwise another indexer would take the same files over."""
    from nexusfs.search.index import LEASE_S

    worst = indexer_mod.BACKGROUND_BATCH * (indexer_mod.DEFER_MAX_S + indexer_mod.INDEX_SLICE_S)
    assert worst < LEASE_S


def test_model_is_not_loaded_for_an_empty_queue_or_for_grep(store_dir, monkeypatch):
    """Loading the embedding model costs a second of CPU: a mount with nothing to index,
    a binary file and a grep must not pay it; the first text to embed (or a semantic
    search) does."""
    from nexusfs.search import service as service_mod

    loads: list[str] = []

    def fake_load(name):
        loads.append(name or "default")
        return None, "model loading disabled in this test"

    monkeypatch.setattr(indexer_mod, "load_embedder", fake_load)
    monkeypatch.setattr(service_mod, "load_embedder", fake_load)
    nx = nexusfs.connect(store_dir, **{**STORE_SETTINGS, "semantic": True, "background_indexing": False})
    try:
        nx.write_bytes("/a.txt", b"alpha beta\n")
        assert nx.reindex() == 1  # a first indexing run creates the tables (and loads the model)
        loads.clear()

        st = nx.store
        ix = indexer_mod.Indexer(st.config, st.vfs.blocks, semantic=True, last_activity=lambda: 0.0)
        try:
            assert ix.run_batch(8, background=True) == 0
            assert loads == []
            assert [m.path for m in nx.grep("alpha")] == ["/a.txt"]
            assert loads == []
            nx.write_bytes("/blob.bin", bytes(range(256)) * 64)  # binary: nothing to embed
            assert ix.run_batch(8, background=True) == 1
            assert loads == []
            nx.write_bytes("/b.txt", b"alpha gamma\n")
            assert ix.run_batch(8, background=True) == 1
            assert loads == ["wordllama"]  # the store's model, by the name it records
        finally:
            ix.stop()
        assert [m.path for m in nx.grep("gamma")] == ["/b.txt"]
        nx.search("alpha")
        assert loads == ["wordllama", "wordllama"]
    finally:
        nx.close()
