"""The background garbage collector (nexusfs/autogc.py): space stays bounded under rewrites
without `nexus gc`, the grace period still protects readers of old versions, one collector
per store across processes, prompt and clean stop, and what `nexus info` says about garbage.

The bound the rewrite tests check: once the workload stops, every object released more than
``gc_grace`` ago is collected within ``gc_interval`` (plus the collector's quiet period), so the
blob directory comes down to the live data alone (the stored bytes of referenced objects).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
import threading

import apsw
import pytest

import nexusfs
from nexusfs import autogc
from nexusfs.errors import ConfigError
from tests.mountutil import wait_until
from tests.oracles import assert_fsck_clean
from tests.search_helpers import NexusCli

KiB = 1024
BS = 64 * KiB
#: short settings: a grace period and interval tests can wait out with a deadline
FAST = {"gc_grace": 0.3, "gc_interval": 0.2}


def blob_bytes(home: str) -> int:
    """Bytes of the blob files on disk (what `du` of the blob directory counts)."""
    total = 0
    for d, _dirs, files in os.walk(os.path.join(home, "blobs")):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


@contextlib.contextmanager
def _db(home: str):
    """The store's database beside whatever has it open (apsw, the library the store uses:
    a second SQLite library in one process breaks the other's POSIX locks)."""
    db = apsw.Connection(os.path.join(home, "meta.db"))
    db.setbusytimeout(30_000)
    try:
        with db:
            yield db
    finally:
        db.close()


def live_bytes(home: str) -> int:
    """Stored bytes of the objects files reference (read beside whatever has the store open)."""
    with _db(home) as db:
        return db.execute("SELECT COALESCE(SUM(stored_size), 0) FROM objects WHERE refcount > 0").fetchall()[0][0]


def backdate_garbage(home: str) -> set[int]:
    """Make the store's current garbage look released long ago (collectable at once);
    returns the ids of those objects."""
    with _db(home) as db:
        ids = {r[0] for r in db.execute("SELECT id FROM objects WHERE refcount = 0")}
        db.execute("UPDATE objects SET unref_ns = 1 WHERE refcount = 0")
    return ids


def existing(home: str, ids: set[int]) -> set[int]:
    with _db(home) as db:
        return {r[0] for r in db.execute("SELECT id FROM objects") if r[0] in ids}


def connect(home: str, **kw) -> nexusfs.Nexus:
    settings = dict(block_size=BS, inline_max=KiB, semantic=False, readahead_blocks=0, cache_size=0)
    settings.update(kw)
    return nexusfs.connect(home, **settings)


def make_garbage(nx: nexusfs.Nexus, name: str, n: int = 4) -> None:
    """Write a file of ``n`` blocks and replace it: its first version's objects are garbage."""
    nx.write_bytes(name, os.urandom(n * BS))
    nx.write_bytes(name, os.urandom(n * BS))


# ------------------------------------------------------------------ settings
def test_settings_are_validated_with_one_line_errors(tmp_path):
    for bad, words in (({"gc_interval": 0}, ["gc_interval", "100ms"]),
                       ({"gc_interval": "soon"}, ["gc_interval", "soon"]),
                       ({"gc_threshold": -1}, ["gc_threshold", "negative"]),
                       ({"gc_auto": "maybe"}, ["gc_auto", "maybe"])):
        with pytest.raises(ConfigError) as err:
            nexusfs.Config.from_dict(dict(bad, home=str(tmp_path)))
        msg = str(err.value)
        assert "\n" not in msg and all(w in msg for w in words), msg
    cfg = tmp_path / "nexus.yaml"
    cfg.write_text("gc_auto: off\ngc_interval: 5m\ngc_threshold: 64MiB\n")
    c = nexusfs.Config.load(str(cfg), home=str(tmp_path / "s"))
    assert (c.gc_auto, c.gc_interval, c.gc_threshold) == (False, 300.0, 64 << 20)


def test_no_collector_without_background_work_or_with_gc_auto_off(tmp_path):
    with connect(str(tmp_path / "a"), background_indexing=False) as nx:
        assert nx.store.collector is None
    with connect(str(tmp_path / "b"), gc_auto=False) as nx:
        assert nx.store.collector is None
    with connect(str(tmp_path / "c")) as nx:
        assert nx.store.collector is not None


# ----------------------------------------------------------- bounded space
def _rewrite(write, fsync, rounds: int, size: int) -> bytes:
    last = b""
    for _ in range(rounds):
        last = os.urandom(size)
        write(last)
        fsync()
    return last


def test_rewrites_through_the_api_stay_bounded_without_gc(tmp_path):
    home = str(tmp_path / "store")
    with connect(home, **FAST) as nx:
        with nx.open("/db", "w+b", buffering=0) as f:
            def write(data):
                f.seek(0)
                f.write(data)
            last = _rewrite(write, f.fsync, rounds=60, size=4 * BS)
        # 60 rewrites of 4 blocks released ~236 blocks; nobody runs gc
        assert blob_bytes(home) > 10 * 4 * BS
        assert wait_until(lambda: blob_bytes(home) <= live_bytes(home), timeout=60), \
            (blob_bytes(home), live_bytes(home))
        assert nx.store.collector.objects_deleted > 0
        assert nx.read_bytes("/db") == last
        assert_fsck_clean(nx)


# ------------------------------------------------- the grace period protects
def test_a_reader_of_an_old_version_keeps_reading_while_the_collector_runs(tmp_path):
    """Another process (here: another connection, with its own VFS) replaces a file that a
    reader holds open: the reader's block map still names the old objects, now garbage.
    The collector runs (it frees older garbage meanwhile) but leaves them alone for the
    grace period, so the reader reads its version to the end."""
    home = str(tmp_path / "store")
    old = os.urandom(8 * BS)
    with connect(home, background_indexing=False) as writer:
        writer.write_bytes("/f", old)
        with connect(home, gc_grace=60, gc_interval=0.2) as reader:
            collector = reader.store.collector
            with reader.open("/f", "rb", buffering=0) as f:
                assert f.read(BS) == old[:BS]  # the block map is loaded now
                make_garbage(writer, "/junk")
                ancient = backdate_garbage(home)
                writer.write_bytes("/f", os.urandom(8 * BS))  # the old version is garbage now
                collector.wake()
                assert ancient and wait_until(lambda: collector.objects_deleted >= len(ancient), timeout=30)
                assert not existing(home, ancient)
                assert f.read() == old[BS:]
            assert_fsck_clean(reader, verify_data=False)


# ------------------------------------------------- one collector per store
_OTHER = textwrap.dedent("""
    import sys, nexusfs
    nx = nexusfs.connect(sys.argv[1], semantic=False, gc_grace=0.3, gc_interval=0.2)
    print("open", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    nx.close()
    print("closed", flush=True)
""")


def test_two_processes_on_one_store_run_one_collector(tmp_path):
    home = str(tmp_path / "store")
    with connect(home, background_indexing=False) as nx:
        make_garbage(nx, "/junk")  # creates the store, and garbage
    other = subprocess.Popen([sys.executable, "-c", _OTHER, home], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert other.stdout.readline() == b"open\n"
        assert wait_until(lambda: autogc.collector_pid(home) == other.pid, timeout=30)
        with connect(home, **FAST) as nx:
            collector = nx.store.collector
            make_garbage(nx, "/junk2")
            ours = backdate_garbage(home)
            assert wait_until(lambda: not existing(home, ours), timeout=30)  # the other one collected
            assert autogc.collector_pid(home) == other.pid
            assert not collector.active and collector.rounds == 0 and collector.objects_deleted == 0
            other.stdin.close()
            assert other.stdout.readline() == b"closed\n"
            assert other.wait(timeout=30) == 0
            # the other process ended: ours takes over
            assert wait_until(lambda: collector.active, timeout=30)
            assert autogc.collector_pid(home) == os.getpid()
            make_garbage(nx, "/junk3")
            assert wait_until(lambda: collector.objects_deleted > 0, timeout=30)
        assert autogc.collector_pid(home) is None
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()


# ----------------------------------------------------------- stopping
def test_close_while_a_collection_runs_stops_it_cleanly_and_promptly(tmp_path, monkeypatch):
    home = str(tmp_path / "store")
    with connect(home, background_indexing=False) as nx:
        for i in range(12):
            make_garbage(nx, f"/junk{i}", n=8)  # 96 garbage objects: two batches
    garbage = backdate_garbage(home)
    started, deletes, at_stop = threading.Event(), [], []
    nx = connect(home, gc_grace=0.3, gc_interval=60)
    collector = nx.store.collector
    real_delete = collector.blobs.delete

    def slow_delete(key):
        deletes.append(key)
        started.set()
        collector._stop.wait(0.05)  # a slow blob store: the round is long
        return real_delete(key)

    monkeypatch.setattr(collector.blobs, "delete", slow_delete)
    real_stop = collector._stop.set

    def stop():
        at_stop.append(len(deletes))
        real_stop()

    monkeypatch.setattr(collector._stop, "set", stop)
    collector.wake()
    assert started.wait(30)
    nx.close()  # in the middle of the round
    assert collector._thread is None and at_stop
    # at most the object being deleted when close came was finished after it
    assert len(deletes) <= at_stop[0] + 1 < len(garbage)
    with connect(home, background_indexing=False) as again:
        assert_fsck_clean(again, verify_data=False)
        assert len(existing(home, garbage)) == len(garbage) - len(deletes)


# ---------------------------------------------------------- nexus info
def test_nexus_info_shows_pending_garbage_and_the_collector(tmp_path):
    home = str(tmp_path / "store")
    run = NexusCli(home)
    with connect(home, background_indexing=False) as nx:
        make_garbage(nx, "/junk", n=3)
    out = run("info").stdout
    assert "background gc:" in out and "none is running now" in out
    line = next(x for x in out.splitlines() if x.startswith("garbage:"))
    assert "in 3 unreferenced objects, kept 1h (the grace period): from 20" in line, line
    data = __import__("json").loads(run("info", "--json").stdout)
    g = data["garbage"]
    assert g["objects"] == 3 and g["ready_objects"] == 0 and g["grace"] == 3600 and g["auto"]
    assert 0 < g["first_ns"] <= g["last_ns"] and g["collector_pid"] is None
    backdate_garbage(home)
    assert "all collectable now (3)" in run("info").stdout
    with connect(home, **FAST) as nx:
        assert wait_until(lambda: nx.store.collector.active, timeout=30)
        out = run("info").stdout
        assert f"on (running in pid {os.getpid()}" in out
        assert wait_until(lambda: "garbage:           none" in run("info").stdout, timeout=30)
    assert "off (gc_auto: false" in run("--config", str(_yaml(tmp_path, "gc_auto: false")), "info").stdout


def _yaml(tmp_path, text: str):
    p = tmp_path / "gc.yaml"
    p.write_text(text + "\n")
    return p


# ------------------------------------------------------------- the mount
MOUNT_SETTINGS = {"block_size": "64KiB", "inline_max": "1KiB", "semantic": "false",
                  "readahead_blocks": 0, "cache_size": 0, "gc_grace": "300ms", "gc_interval": "200ms"}


@pytest.mark.mount
def test_rewrites_through_a_mount_stay_bounded_without_gc(start_mount):
    m = start_mount(settings=MOUNT_SETTINGS)
    path = m.path("db")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for _ in range(40):  # a database rewriting its pages: 4 blocks, fsync, again
            last = os.urandom(4 * BS)
            os.pwrite(fd, last, 0)
            os.fsync(fd)
    finally:
        os.close(fd)
    assert blob_bytes(m.home) > 10 * 4 * BS
    assert wait_until(lambda: blob_bytes(m.home) <= live_bytes(m.home), timeout=60), \
        (blob_bytes(m.home), live_bytes(m.home))
    assert autogc.collector_pid(m.home) == m.proc.pid
    with open(path, "rb") as f:
        assert f.read() == last


@pytest.mark.mount
def test_a_mount_reader_of_a_version_replaced_by_another_process_keeps_reading(start_mount):
    """The mount holds a file open for reading; the API (another VFS: another process's
    view) replaces its content. The mount's collector runs, and frees older garbage, but the
    reader, whose block map names the old objects, reads its version to the end."""
    m = start_mount(settings=dict(MOUNT_SETTINGS, gc_grace="60s"))
    old = os.urandom(16 * BS)
    with open(m.path("f"), "wb") as f:
        f.write(old)
    fd = os.open(m.path("f"), os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 0) == old[:4096]
        with nexusfs.connect(m.home, create=False, background_indexing=False) as nx:
            make_garbage(nx, "/junk")
            ancient = backdate_garbage(m.home)
            nx.write_bytes("/f", os.urandom(16 * BS))
        assert ancient and wait_until(lambda: not existing(m.home, ancient), timeout=30)
        half = 8 * BS  # beyond what the kernel read ahead
        assert os.pread(fd, len(old) - half, half) == old[half:]
    finally:
        os.close(fd)
