"""The background garbage collector (nexusfs/autogc.py): space stays bounded under rewrites
without `nexus gc`, the grace period still protects readers of old versions, one collector
per store across processes, prompt and clean stop, and what `nexus info` says about garbage.

The bound the rewrite tests check: once the workload stops, every object released more than
``gc_grace`` ago is collected within ``gc_interval`` (plus the collector's quiet period), so the
blob directory comes down to the live data alone (the stored bytes of referenced objects).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

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


def _db(home: str) -> sqlite3.Connection:
    return sqlite3.connect(os.path.join(home, "meta.db"), timeout=30)


def live_bytes(home: str) -> int:
    """Stored bytes of the objects files reference (read beside whatever has the store open)."""
    with _db(home) as db:
        return db.execute("SELECT COALESCE(SUM(stored_size), 0) FROM objects WHERE refcount > 0").fetchone()[0]


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
