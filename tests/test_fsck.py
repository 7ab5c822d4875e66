"""fsck: one check per invariant, detection and repair; gc with a grace period.

Damage is done the way a crash, a bug or a disk would do it: by editing the
metadata rows (portable SQL through the store's database) or the blob files.
"""

from __future__ import annotations

import fcntl
import os
import random
import threading
import time

import pytest

import nexusfs
from nexusfs.blocks import digest
from nexusfs.meta.schema import CODEC_NONE
from tests.oracles import assert_fsck_clean, pattern

BS = 64 * 1024


def fsck(nx, repair: bool = False, verify_data: bool = True):
    return nx.fsck(repair=repair, verify_data=verify_data)


def checks(report) -> set[str]:
    return {p.check for p in report.problems}


def detect_and_repair(nx, check: str, *, verify_data: bool = True):
    """The damage is found by exactly ``check``, repaired, and a second run is clean."""
    found = fsck(nx, verify_data=verify_data)
    assert checks(found) == {check}, [str(p) for p in found.problems]
    assert found.exit_code == 4
    assert all(not p.repaired for p in found.problems)
    # a read-only run changes nothing: the next one finds the same
    again = fsck(nx, verify_data=verify_data)
    assert [str(p) for p in again.problems] == [str(p) for p in found.problems]
    fixed = fsck(nx, repair=True, verify_data=verify_data)
    assert checks(fixed) == {check}
    assert all(p.repaired for p in fixed.problems), [str(p) for p in fixed.problems]
    assert fixed.exit_code == 1
    assert_fsck_clean(nx)
    return found


def blob_path(nx, key: str) -> str:
    return os.path.join(nx.config.home, "blobs", key[:2], key[2:4], key)


def object_keys_of(nx, path: str) -> dict[int, str]:
    """Block index -> blob key of a file."""
    ino = nx.stat(path).ino
    return {idx: ref.key for idx, ref in nx.meta.block_map(ino).items()}


def db(nx):
    return nx.store.db


# ------------------------------------------------------------------ clean stores
def test_fresh_store_is_clean(nx):
    report = fsck(nx)
    assert report.clean
    assert report.checked["inodes"] == 1
    assert report.checked["blobs"] == 0


def build_busy_store(nx):
    """Many kinds of entries and changes; returns a file that is open but unlinked."""
    rng = random.Random(42)
    for i in range(30):
        nx.write_bytes(f"/data/d{i % 4}/f{i}", pattern(rng.randrange(0, 4 * BS), i), parents=True)
    nx.write_bytes("/data/dup1", pattern(3 * BS, 1))
    nx.write_bytes("/data/dup2", pattern(3 * BS, 1))
    nx.write_bytes("/sparse", b"")
    with nx.open("/sparse", "r+b") as f:
        f.seek(10 * BS)
        f.write(b"end")
    nx.link("/data/dup1", "/hardlink")
    nx.symlink("/data/dup2", "/symlink")
    nx.setxattr("/data/dup1", "user.k", b"v")
    nx.copy("/data/d1", "/copy-of-d1")
    nx.rename("/data/d2", "/moved")
    nx.truncate("/data/d0/f0", 5)
    nx.delete("/data/d3", recursive=True)
    nx.mkdir("/empty/dir/tree", parents=True)
    nx.store.meta.create(1, b"fifo", 0o010644, 0, 0)
    # a file unlinked while open, still open during fsck
    nx.write_bytes("/open-unlinked", pattern(2 * BS, 9))
    held = nx.open("/open-unlinked", "rb")
    nx.delete("/open-unlinked")
    return held


def test_busy_store_is_clean(nx):
    held = build_busy_store(nx)
    report = fsck(nx)
    assert report.clean, [str(p) for p in report.problems]
    assert report.checked["objects"] > 10
    assert report.checked["blocks"] > 10
    assert held.read() == pattern(2 * BS, 9)
    held.close()
    assert_fsck_clean(nx)


def test_busy_store_is_clean_after_gc_and_reopen(nx, store_dir):
    build_busy_store(nx).close()
    nx.gc(grace=0)
    assert_fsck_clean(nx)
    nx.close()
    with nexusfs.connect(store_dir) as again:
        assert_fsck_clean(again)
        assert again.read_bytes("/hardlink") == pattern(3 * BS, 1)


def test_fsck_reports_progress(nx):
    nx.write_bytes("/f", pattern(3 * BS))
    seen = []
    nx.fsck(progress=lambda phase, n, total: seen.append(phase))
    assert "blobs" in seen and "check_link_counts" in seen


# ------------------------------------------------------------------ blobs
def test_deleted_blob_is_detected_and_repaired(nx):
    nx.write_bytes("/f", pattern(3 * BS))
    keys = object_keys_of(nx, "/f")
    os.unlink(blob_path(nx, keys[1]))
    found = detect_and_repair(nx, "blobs", verify_data=False)
    assert "missing" in found.problems[0].message
    assert "/f" in found.problems[0].message  # names the damaged file
    # the lost block now reads as zeros, the rest is intact
    with nexusfs.connect(nx.config.home) as other:
        data = other.read_bytes("/f")
    assert data == pattern(3 * BS)[:BS] + bytes(BS) + pattern(3 * BS)[2 * BS :]


def test_corrupted_blob_is_detected_and_repaired(nx):
    nx.write_bytes("/f", pattern(2 * BS, 3))
    keys = object_keys_of(nx, "/f")
    path = blob_path(nx, keys[0])
    with open(path, "r+b") as f:
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 0xFF]))
    # same size: only verifying the data finds it
    assert fsck(nx, verify_data=False).clean
    found = detect_and_repair(nx, "blobs")
    assert "hash" in found.problems[0].message
    assert not os.path.exists(path)  # the damaged blob is gone, not left as an orphan
    with nexusfs.connect(nx.config.home) as other:
        assert other.read_bytes("/f") == bytes(BS) + pattern(2 * BS, 3)[BS:]


def test_corrupted_compressed_blob_is_detected(nx):
    nx.write_bytes("/f", b"compressible " * 20000)
    keys = object_keys_of(nx, "/f")
    path = blob_path(nx, keys[0])
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        f.write(b"\xde\xad\xbe\xef")
    detect_and_repair(nx, "blobs")


def test_truncated_blob_is_found_without_verifying_data(nx):
    nx.write_bytes("/f", pattern(2 * BS, 4))
    keys = object_keys_of(nx, "/f")
    with open(blob_path(nx, keys[1]), "r+b") as f:
        f.truncate(100)
    found = detect_and_repair(nx, "blobs", verify_data=False)
    assert "size" in found.problems[0].message


def test_damaged_blob_with_an_intact_twin_is_repaired_by_the_twin(nx):
    nx.write_bytes("/f", pattern(BS, 5))
    good = object_keys_of(nx, "/f")[0]
    oid = int(good.rsplit("-", 1)[1])
    # a second object with the same content, e.g. from two writers racing
    db(nx).execute(
        "INSERT INTO objects (hash, size, stored_size, codec, refcount, state) "
        "SELECT hash, size, stored_size, codec, 0, 1 FROM objects WHERE id = ?", (oid,))
    twin = db(nx).query_value("SELECT MAX(id) FROM objects")
    twin_key = good.rsplit("-", 1)[0] + f"-{twin}"
    nx.store.blobs.put(twin_key, nx.store.blobs.get(good))
    os.unlink(blob_path(nx, good))
    found = fsck(nx, verify_data=False)
    assert checks(found) == {"blobs"}
    fsck(nx, repair=True)
    assert_fsck_clean(nx)
    with nexusfs.connect(nx.config.home) as other:
        assert other.read_bytes("/f") == pattern(BS, 5)


def test_missing_blob_of_an_unreferenced_object_is_repaired(nx):
    nx.write_bytes("/f", pattern(BS, 6))
    key = object_keys_of(nx, "/f")[0]
    nx.delete("/f")
    os.unlink(blob_path(nx, key))
    found = detect_and_repair(nx, "blobs")
    assert "unreferenced" in found.problems[0].message
    assert nx.info().objects == 0


# ------------------------------------------------------------------ refcounts
def test_wrong_refcount_is_detected_and_repaired(nx):
    nx.write_bytes("/f", pattern(2 * BS, 7))
    nx.copy("/f", "/g")
    oid = nx.meta.block_map(nx.stat("/f").ino)[0].id
    db(nx).execute("UPDATE objects SET refcount = 9 WHERE id = ?", (oid,))
    found = detect_and_repair(nx, "refcounts")
    assert "refcount 9, should be 2" in found.problems[0].message
    assert db(nx).query_value("SELECT refcount FROM objects WHERE id = ?", (oid,)) == 2


def test_too_low_refcount_is_repaired_so_gc_keeps_the_object(nx):
    nx.write_bytes("/f", pattern(BS, 8))
    oid = nx.meta.block_map(nx.stat("/f").ino)[0].id
    db(nx).execute("UPDATE objects SET refcount = 0 WHERE id = ?", (oid,))
    detect_and_repair(nx, "refcounts")
    nx.gc(grace=0)
    with nexusfs.connect(nx.config.home) as other:
        assert other.read_bytes("/f") == pattern(BS, 8)


def test_referenced_pending_object_is_marked_live(nx):
    nx.write_bytes("/f", pattern(BS, 9))
    oid = nx.meta.block_map(nx.stat("/f").ino)[0].id
    db(nx).execute("UPDATE objects SET state = 0 WHERE id = ?", (oid,))
    found = detect_and_repair(nx, "refcounts")
    assert "live" in found.problems[0].message


# ------------------------------------------------------------------ names & links
def test_dangling_dentry_is_detected_and_repaired(nx):
    nx.write_bytes("/f", b"x")
    db(nx).execute("INSERT INTO dentries (parent, name, inode) VALUES (1, ?, 99999)", (b"ghost",))
    found = detect_and_repair(nx, "names")
    assert "ghost" in found.problems[0].message and "99999" in found.problems[0].message
    assert nx.list("/") == ["/f"]


def test_dentry_inside_a_file_is_detected(nx):
    nx.write_bytes("/f", b"x")
    nx.write_bytes("/g", b"y")
    f, g = nx.stat("/f").ino, nx.stat("/g").ino
    db(nx).execute("INSERT INTO dentries (parent, name, inode) VALUES (?, ?, ?)", (f, b"inside", g))
    found = fsck(nx)
    assert "names" in checks(found)
    fsck(nx, repair=True)
    assert_fsck_clean(nx)
    assert nx.read_bytes("/g") == b"y"


def test_wrong_file_nlink_is_detected_and_repaired(nx):
    nx.write_bytes("/f", b"x")
    nx.link("/f", "/g")
    ino = nx.stat("/f").ino
    db(nx).execute("UPDATE inodes SET nlink = 7 WHERE id = ?", (ino,))
    found = detect_and_repair(nx, "link-counts")
    assert "nlink 7, should be 2" in found.problems[0].message
    assert nx.stat("/f").nlink == 2


def test_wrong_directory_nlink_is_detected_and_repaired(nx):
    nx.mkdir("/d/a", parents=True)
    nx.mkdir("/d/b")
    ino = nx.stat("/d").ino
    db(nx).execute("UPDATE inodes SET nlink = 2 WHERE id = ?", (ino,))
    db(nx).execute("UPDATE inodes SET nlink = 5 WHERE id = 1")
    found = detect_and_repair(nx, "link-counts")
    assert len(found.problems) == 2
    assert nx.stat("/d").nlink == 4
    assert nx.stat("/").nlink == 3


def test_orphan_inode_is_detected_and_purged(nx):
    nx.write_bytes("/f", pattern(2 * BS, 10))
    ino = nx.stat("/f").ino
    # what a crash leaves when a file was unlinked while open
    db(nx).execute("DELETE FROM dentries WHERE inode = ?", (ino,))
    db(nx).execute("UPDATE inodes SET nlink = 0 WHERE id = ?", (ino,))
    assert nx.meta.orphans() == [ino]
    found = detect_and_repair(nx, "orphans")
    assert str(ino) in found.problems[0].message
    assert nx.meta.orphans() == []
    # its blocks were released: they are garbage now
    assert nx.info().unreferenced_objects == 2
    assert nx.gc(grace=0).objects_deleted == 2


def test_open_unlinked_file_is_not_an_orphan(nx):
    nx.write_bytes("/f", pattern(BS, 11))
    with nx.open("/f", "rb") as f:
        nx.delete("/f")
        report = fsck(nx, repair=True)
        assert report.clean, [str(p) for p in report.problems]
        assert f.read() == pattern(BS, 11)


def test_named_nowhere_inode_with_links_goes_to_lost_and_found(nx):
    nx.write_bytes("/d/f", b"rescued", parents=True)
    ino = nx.stat("/d/f").ino
    db(nx).execute("DELETE FROM dentries WHERE inode = ?", (ino,))
    found = detect_and_repair(nx, "orphans")
    assert "no name" in found.problems[0].message
    assert nx.read_bytes(f"/lost+found/inode-{ino}") == b"rescued"


def test_detached_directory_is_reattached(nx):
    nx.write_bytes("/a/b/file", b"deep", parents=True)
    b = nx.stat("/a/b").ino
    a = nx.stat("/a").ino
    # make /a/b its own parent's child: unreachable from the root
    db(nx).execute("UPDATE dentries SET parent = ? WHERE inode = ?", (b, a))
    found = fsck(nx)
    assert "reachability" in checks(found)
    for _ in range(3):
        if fsck(nx, repair=True).clean:
            break
    assert_fsck_clean(nx)
    found_paths = nx.glob("**/file")
    assert len(found_paths) == 1 and found_paths[0].startswith("/lost+found/")


def test_symlink_without_target_is_repaired(nx):
    nx.symlink("/target", "/s")
    ino = nx.stat("/s", follow_symlinks=False).ino
    db(nx).execute("DELETE FROM symlinks WHERE inode = ?", (ino,))
    detect_and_repair(nx, "symlinks")


def test_xattrs_of_a_missing_inode_are_repaired(nx):
    db(nx).execute("INSERT INTO xattrs (inode, name, value) VALUES (4242, ?, ?)", (b"user.k", b"v"))
    detect_and_repair(nx, "xattrs")


def test_block_beyond_the_end_of_a_file_is_repaired(nx):
    nx.write_bytes("/f", pattern(3 * BS, 12))
    ino = nx.stat("/f").ino
    db(nx).execute("UPDATE inodes SET size = ? WHERE id = ?", (BS, ino))
    found = detect_and_repair(nx, "blocks")
    assert len(found.problems) == 2
    assert nx.meta.block_map(ino).keys() == {0}


def test_inline_and_blocks_together_is_repaired(nx):
    nx.write_bytes("/f", pattern(2 * BS, 13))
    ino = nx.stat("/f").ino
    db(nx).execute("UPDATE inodes SET inline = ? WHERE id = ?", (b"tiny", ino))
    found = fsck(nx)
    assert "inline" in checks(found)
    fsck(nx, repair=True)
    assert_fsck_clean(nx)


# ------------------------------------------------------------------ orphan blobs
def test_orphan_blob_is_detected_and_deleted(nx):
    nx.write_bytes("/f", pattern(BS, 14))
    key = "ab" * 32 + "-999999"  # looks like a blob key, but no object has id 999999
    nx.store.blobs.put(key, b"left over by an interrupted gc")
    found = detect_and_repair(nx, "orphan-blobs")
    assert key in found.problems[0].message
    assert not nx.store.blobs.exists(key)
    assert nx.read_bytes("/f") == pattern(BS, 14)


def test_blob_with_a_foreign_key_is_an_orphan(nx):
    nx.store.blobs.put("not-a-nexus-key", b"x")
    detect_and_repair(nx, "orphan-blobs")


def leftover_temp_file(nx) -> str:
    """A temporary file like the one a put killed between write and rename leaves."""
    nx.write_bytes("/f", pattern(BS, 15))
    key = object_keys_of(nx, "/f")[0]
    tmp = os.path.join(os.path.dirname(blob_path(nx, key)), ".tmp-interrupted")
    fd = os.open(tmp, os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"half an upload")
    os.close(fd)
    return tmp


def test_a_leftover_temp_file_is_garbage_that_gc_removes_at_once(nx):
    tmp = leftover_temp_file(nx)
    report = fsck(nx)
    assert report.clean and report.exit_code == 0, [str(p) for p in report.problems]
    assert report.garbage == {"temporary files of interrupted uploads": (1, 14)}
    assert fsck(nx, repair=True).exit_code == 0
    assert os.path.exists(tmp)  # garbage is gc's to remove, not fsck's
    gc = nx.gc()  # the default grace period (1h) is for objects: no put holds this file
    assert (gc.temp_files_deleted, gc.bytes_freed) == (1, 14)
    assert not os.path.exists(tmp)
    assert fsck(nx).garbage == {}


def test_gc_leaves_the_temp_file_of_an_upload_under_way(nx):
    tmp = leftover_temp_file(nx)
    fd = os.open(tmp, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as the put writing it does, until it renames it
    try:
        assert nx.gc(grace=0).temp_files_deleted == 0
        assert os.path.exists(tmp)
        assert fsck(nx).garbage == {}  # an upload under way is no garbage
    finally:
        os.close(fd)
    assert nx.gc().temp_files_deleted == 1


def test_a_put_whose_temp_file_gc_took_takes_another(nx, monkeypatch):
    import backends.local as local

    real_flock = local.fcntl.flock
    raced = []
    once = threading.Lock()  # the blocks upload in parallel: only the first upload races gc

    def flock(fd, op):
        if op == fcntl.LOCK_EX and once.acquire(blocking=False):  # gc runs between mkstemp and the lock
            raced.append(nx.store.remove_stale_temp_files())
        return real_flock(fd, op)

    monkeypatch.setattr(local.fcntl, "flock", flock)
    nx.write_bytes("/raced", pattern(2 * BS, 17))
    assert raced == [(1, 0)]  # gc removed the put's first, still empty, temporary file
    monkeypatch.undo()
    assert nx.read_bytes("/raced") == pattern(2 * BS, 17)
    assert nx.store.blob_temp_files() == []
    assert_fsck_clean(nx)


def test_several_problems_are_reported_by_their_own_checks(nx):
    nx.write_bytes("/f", pattern(2 * BS, 16))
    nx.write_bytes("/g", b"g")
    keys = object_keys_of(nx, "/f")
    os.unlink(blob_path(nx, keys[0]))
    db(nx).execute("UPDATE inodes SET nlink = 3 WHERE id = ?", (nx.stat("/g").ino,))
    db(nx).execute("INSERT INTO dentries (parent, name, inode) VALUES (1, ?, 77777)", (b"ghost",))
    nx.store.blobs.put("cd" * 32 + "-888888", b"orphan")
    report = fsck(nx)
    assert checks(report) == {"blobs", "link-counts", "names", "orphan-blobs"}
    assert all(str(p).startswith(f"[{p.check}]") for p in report.problems)
    fsck(nx, repair=True)
    assert_fsck_clean(nx)


# ------------------------------------------------------------------ gc
def test_gc_keeps_young_garbage_and_deletes_it_with_grace_zero(nx):
    nx.write_bytes("/f", pattern(3 * BS, 17))
    keys = set(object_keys_of(nx, "/f").values())
    nx.delete("/f")
    report = nx.gc(grace=3600)
    assert report.objects_deleted == 0
    assert {i.key for i in nx.store.blobs.list()} == keys
    report = nx.gc(grace=0)
    assert report.objects_deleted == 3
    assert report.bytes_freed == 3 * BS
    assert list(nx.store.blobs.list()) == []
    assert_fsck_clean(nx)


def test_gc_uses_the_configured_grace_by_default(tmp_path):
    with nexusfs.connect(str(tmp_path / "s"), block_size=BS, gc_grace=3600) as nx:
        nx.write_bytes("/f", pattern(BS, 18))
        nx.delete("/f")
        assert nx.gc().objects_deleted == 0
        assert nx.gc(grace=0).objects_deleted == 1


def test_gc_honours_grace_for_old_and_young_garbage(nx):
    nx.write_bytes("/old", pattern(BS, 19))
    nx.write_bytes("/young", pattern(BS, 20))
    old_id = nx.meta.block_map(nx.stat("/old").ino)[0].id
    nx.delete("/old")
    nx.delete("/young")
    # pretend /old became garbage two hours ago
    db(nx).execute("UPDATE objects SET unref_ns = ? WHERE id = ?", (time.time_ns() - 7200 * 10**9, old_id))
    report = nx.gc(grace=3600)
    assert report.objects_deleted == 1
    assert db(nx).query_value("SELECT COUNT(*) FROM objects WHERE id = ?", (old_id,)) == 0
    assert nx.info().objects == 1


def test_gc_never_deletes_referenced_objects(nx):
    nx.write_bytes("/keep", pattern(2 * BS, 21))
    nx.write_bytes("/drop", pattern(2 * BS, 22))
    nx.delete("/drop")
    nx.gc(grace=0)
    with nexusfs.connect(nx.config.home) as other:
        assert other.read_bytes("/keep") == pattern(2 * BS, 21)
    assert_fsck_clean(nx)


def test_gc_removes_orphan_blobs_only_after_grace(nx):
    # (temporary files of interrupted uploads go at once: see above)
    key = "ef" * 32 + "-777777"
    nx.store.blobs.put(key, b"orphan")
    report = nx.gc(grace=3600)
    assert report.orphan_blobs_deleted == 0
    assert nx.store.blobs.exists(key)
    past = time.time() - 10
    os.utime(blob_path(nx, key), (past, past))
    report = nx.gc(grace=0)
    assert (report.orphan_blobs_deleted, report.bytes_freed) == (1, len(b"orphan"))
    assert not nx.store.blobs.exists(key)


def test_gc_keeps_uploads_of_a_file_not_yet_committed(nx):
    f = nx.open("/f", "wb", buffering=0)
    try:
        f.write(pattern(3 * BS, 23))  # full blocks are uploaded at once, committed on close
        nx.store.vfs.blocks.pool.submit(lambda: None).result()
        nx.gc(grace=60)
    finally:
        f.close()
    with nexusfs.connect(nx.config.home) as other:
        assert other.read_bytes("/f") == pattern(3 * BS, 23)
    assert_fsck_clean(nx)


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("uploaded", [True, False], ids=["blob-uploaded", "blob-never-uploaded"])
def test_fsck_does_not_report_interrupted_uploads_as_errors(nx, verify, uploaded):
    # a pending object (reserved, maybe uploaded, never committed): garbage for gc, not damage
    data = b"0123456789" * 50
    ref = nx.meta.reserve_object(digest(data), len(data), len(data), CODEC_NONE)
    if uploaded:
        nx.store.blobs.put(ref.key, data)
    report = fsck(nx, verify_data=verify)
    assert report.clean, [str(p) for p in report.problems]
    assert report.garbage == {"unreferenced objects": (1, len(data))}
    report = fsck(nx, repair=True, verify_data=verify)
    assert report.clean
    assert nx.meta.get_object(ref.id) is not None  # left for gc (a writer may still commit it)
    nx.gc(grace=0)
    assert nx.meta.get_object(ref.id) is None
    assert list(nx.store.blobs.list()) == []
