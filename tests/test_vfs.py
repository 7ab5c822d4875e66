"""File data semantics through VFS handles and the path API.

The ``nx`` fixture's store has 64 KiB blocks and keeps files up to 1 KiB inline.
"""

from __future__ import annotations

import errno
import os
import random

import pytest

import nexusfs
from nexusfs.errors import FsError
from nexusfs.types import ROOT_INODE
from tests.oracles import assert_fsck_clean, pattern

BS = 64 * 1024
INLINE_MAX = 1024


# ------------------------------------------------------------------ helpers
def ino_of(nx, path: str) -> int:
    return nx.stat(path).ino


def touch(nx, path: str) -> int:
    nx.write_bytes(path, b"")
    return ino_of(nx, path)


def live_objects(store) -> set[int]:
    """Objects some committed file references."""
    return {r[0] for r in store.db.query("SELECT id FROM objects WHERE refcount > 0")}


def objects_of(store, ino: int) -> set[int]:
    return {ref.id for ref in store.meta.block_map(ino).values()}


class H:
    """A VFS handle with read/write helpers."""

    def __init__(self, vfs, ino: int, flags: int) -> None:
        self.vfs = vfs
        self.ino = ino
        self.fh = vfs.open(ino, flags)

    def write(self, offset: int, data: bytes) -> int:
        return self.vfs.write(self.fh, offset, data)

    def read(self, offset: int = 0, size: int = 1 << 30) -> bytes:
        return self.vfs.read(self.fh, offset, size)

    def flush(self) -> None:
        self.vfs.flush(self.fh)

    def close(self) -> None:
        self.vfs.release(self.fh)

    def __enter__(self) -> H:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------ basic I/O
@pytest.mark.parametrize("size", [0, 1, INLINE_MAX, INLINE_MAX + 1, BS - 1, BS, BS + 1, 3 * BS + 17])
def test_write_then_read_round_trips_at_interesting_sizes(nx, size):
    data = pattern(size, size)
    nx.write_bytes("/f", data)
    assert nx.read_bytes("/f") == data
    assert nx.stat("/f").size == size


def test_write_and_read_across_block_boundaries(nx, store):
    ino = touch(nx, "/f")
    data = pattern(5 * BS + 1234)
    with H(store.vfs, ino, os.O_RDWR) as h:
        # writes of odd sizes that straddle block boundaries
        pos = 0
        step = BS // 3 + 7
        while pos < len(data):
            h.write(pos, data[pos : pos + step])
            pos += step
        for off, n in [(0, 10), (BS - 5, 10), (2 * BS - 1, BS + 2), (4 * BS, 2 * BS), (len(data) - 3, 100)]:
            assert h.read(off, n) == data[off : off + n]
    assert nx.read_bytes("/f") == data
    # and after the cache is gone: a new connection reads from the blobs
    nx2 = nexusfs.connect(nx.config.home)
    try:
        assert nx2.read_bytes("/f") == data
    finally:
        nx2.close()


def test_read_at_or_past_the_end_returns_nothing(nx, store):
    nx.write_bytes("/f", b"0123456789")
    with H(store.vfs, ino_of(nx, "/f"), os.O_RDONLY) as h:
        assert h.read(10, 5) == b""
        assert h.read(1000, 5) == b""
        assert h.read(8, 100) == b"89"
        assert h.read(0, 0) == b""


def test_overwrite_in_the_middle_keeps_the_rest(nx, store):
    data = bytearray(pattern(4 * BS))
    nx.write_bytes("/f", data)
    ino = ino_of(nx, "/f")
    patch = b"P" * (BS + 100)
    off = BS + BS // 2
    with H(store.vfs, ino, os.O_WRONLY) as h:
        h.write(off, patch)
    data[off : off + len(patch)] = patch
    assert nx.read_bytes("/f") == bytes(data)
    assert nx.stat("/f").size == 4 * BS


def test_overwrite_of_a_few_bytes_inside_a_committed_block(nx, store):
    data = bytearray(pattern(3 * BS, 1))
    nx.write_bytes("/f", data)
    ino = ino_of(nx, "/f")
    with H(store.vfs, ino, os.O_RDWR) as h:
        h.write(BS + 10, b"xyz")
        data[BS + 10 : BS + 13] = b"xyz"
        assert h.read(BS, 20) == bytes(data[BS : BS + 20])
    assert nx.read_bytes("/f") == bytes(data)


@pytest.mark.parametrize("order", ["end-of-block-first", "start-of-block-first"])
def test_rewriting_pages_of_a_block_in_place_uploads_it_once(nx, store, order):
    # a database rewrites pages anywhere; reaching a block's end is no sign that the block
    # is done (an upload then was wasted: an object no file ever referenced)
    nx.write_bytes("/db", pattern(4 * BS, 3))
    before = store.vfs.blocks.stats["uploads"]
    pages = [(BS - 4096, b"e" * 4096), (0, b"s" * 4096)]
    with nx.open("/db", "r+b") as f:
        for off, data in pages if order == "end-of-block-first" else pages[::-1]:
            f.seek(off)
            f.write(data)
    assert store.vfs.blocks.stats["uploads"] - before == 1
    expected = bytearray(pattern(4 * BS, 3))
    for off, data in pages:
        expected[off : off + len(data)] = data
    assert nx.read_bytes("/db") == bytes(expected)
    report = nx.fsck()
    assert report.clean
    assert report.garbage["unreferenced objects"][0] == 1  # the old block 0, nothing else


def test_sequential_writes_upload_each_block_as_soon_as_it_is_full(nx, store):
    data = pattern(3 * BS + 100, 4)
    with nx.open("/seq", "wb", buffering=0) as f:
        for off in range(0, len(data), 5000):  # appending in pieces that straddle blocks
            f.write(data[off : off + 5000])
        open_file = store.vfs._open[nx.stat("/seq").ino]
        assert sorted(open_file.pending) == [0, 1, 2]  # uploading before the file is closed
    assert nx.read_bytes("/seq") == data


@pytest.mark.parametrize("mode, groups, uid, left", [
    (0o2767, [], 1000, 0o767),         # setgid, not in the file's group: cleared
    (0o2767, [0], 1000, 0o2767),       # in the group (a supplementary one): kept
    (0o2777, [0], 1000, 0o777),        # with group execute: cleared even for a member
    (0o4767, [0], 1000, 0o767),        # setuid: always cleared
    (0o6767, [], 0, 0o6767),           # root (CAP_FSETID): nothing cleared
], ids=["sgid-outsider", "sgid-member", "sgid-gx", "suid", "root"])
@pytest.mark.parametrize("change", ["write", "truncate", "open-trunc"])
def test_a_change_by_another_user_clears_setuid_and_setgid_as_linux_does(nx, store, mode, groups, uid,
                                                                         left, change):
    from nexusfs.types import Caller

    nx.write_bytes("/prog", b"#!/bin/sh\n")
    ino = nx.stat("/prog").ino
    store.vfs.setattr(ino, mode=mode, uid=0, gid=0)
    writer = Caller(uid, 1000, lookup_groups=lambda: groups)
    vfs = store.vfs
    if change == "truncate":
        vfs.setattr(ino, size=3, writer=writer)
    else:
        flags = os.O_WRONLY | (os.O_TRUNC if change == "open-trunc" else 0)
        fh = vfs.open(ino, flags, writer=writer)
        try:
            if change == "write":
                vfs.write(fh, 0, b"x")
        finally:
            vfs.release(fh)
    assert oct(nx.stat("/prog").mode & 0o7777) == oct(left)


def test_write_past_the_end_leaves_a_zero_filled_gap(nx, store):
    nx.write_bytes("/f", b"head")
    with H(store.vfs, ino_of(nx, "/f"), os.O_WRONLY) as h:
        h.write(100, b"tail")
    assert nx.read_bytes("/f") == b"head" + bytes(96) + b"tail"


def test_write_on_read_only_handle_and_read_on_write_only_handle_are_ebadf(nx, store):
    import errno

    nx.write_bytes("/f", b"x")
    ino = ino_of(nx, "/f")
    with H(store.vfs, ino, os.O_RDONLY) as h:
        with pytest.raises(FsError) as ei:
            h.write(0, b"y")
        assert ei.value.errno == errno.EBADF
    with H(store.vfs, ino, os.O_WRONLY) as h:
        with pytest.raises(FsError) as ei:
            h.read(0, 1)
        assert ei.value.errno == errno.EBADF
    assert nx.read_bytes("/f") == b"x"


def test_release_of_an_unknown_handle_is_ebadf(store):
    import errno

    with pytest.raises(FsError) as ei:
        store.vfs.release(123456)
    assert ei.value.errno == errno.EBADF


def test_open_of_a_directory_is_eisdir(nx, store):
    import errno

    nx.mkdir("/d")
    with pytest.raises(FsError) as ei:
        store.vfs.open(ino_of(nx, "/d"), os.O_RDONLY)
    assert ei.value.errno == errno.EISDIR


# ------------------------------------------------------------------ sparse files
def test_sparse_file_reads_zeros_in_holes_and_stores_nothing_for_them(nx, store):
    ino = touch(nx, "/sparse")
    before = live_objects(store)
    size = 10 * BS + 1
    with H(store.vfs, ino, os.O_WRONLY) as h:
        h.write(size - 1, b"!")
    st = nx.stat("/sparse")
    assert st.size == size
    data = nx.read_bytes("/sparse")
    assert data == bytes(size - 1) + b"!"
    # only the last block holds data: one object, one block row
    assert set(store.meta.block_map(ino)) == {10}
    assert len(live_objects(store) - before) == 1
    assert store.meta.getattr(ino).alloc == 1
    assert st.blocks == 1  # st_blocks: one 512-byte unit


def test_explicit_zero_blocks_are_stored_as_holes(nx, store):
    data = bytes(4 * BS) + b"end"
    nx.write_bytes("/zeros", data)
    ino = ino_of(nx, "/zeros")
    assert nx.read_bytes("/zeros") == data
    assert set(store.meta.block_map(ino)) == {4}
    assert store.meta.getattr(ino).alloc == 3
    assert nx.info().objects == 1


def test_a_file_of_only_zeros_creates_no_objects(nx, store):
    nx.write_bytes("/z", bytes(3 * BS))
    assert nx.read_bytes("/z") == bytes(3 * BS)
    assert nx.stat("/z").size == 3 * BS
    assert nx.stat("/z").blocks == 0
    assert nx.info().objects == 0
    assert list(store.blobs.list()) == []


def test_zero_tails_of_any_length_are_holes_and_zeros_at_every_sampled_byte_are_not(nx, store):
    from nexusfs.blocks import _ZERO_SAMPLES, may_be_zeros

    # a zero-filled last block of an odd length, after many other lengths were seen
    for n in range(1, 300):
        nx.write_bytes(f"/tail{n}", pattern(BS) + bytes(n))
    assert all(set(store.meta.block_map(ino_of(nx, f"/tail{n}"))) == {0} for n in range(1, 300))
    # non-zero bytes only between the positions the quick check samples: still data
    tricky = bytearray(BS)
    step = BS // _ZERO_SAMPLES
    for i in range(1, BS - 1, step):
        tricky[i] = 7
    assert may_be_zeros(tricky)
    nx.write_bytes("/tricky", bytes(tricky))
    assert set(store.meta.block_map(ino_of(nx, "/tricky"))) == {0}
    assert nx.read_bytes("/tricky") == bytes(tricky)
    assert not may_be_zeros(pattern(BS))
    assert may_be_zeros(b"") and may_be_zeros(bytes(5)) and may_be_zeros(memoryview(bytes(BS)))


def test_overwriting_data_with_zeros_turns_the_block_into_a_hole(nx, store):
    nx.write_bytes("/f", pattern(3 * BS))
    ino = ino_of(nx, "/f")
    with H(store.vfs, ino, os.O_WRONLY) as h:
        h.write(BS, bytes(BS))
    assert set(store.meta.block_map(ino)) == {0, 2}
    assert store.meta.getattr(ino).alloc == 2 * BS
    data = nx.read_bytes("/f")
    assert data[BS : 2 * BS] == bytes(BS)
    assert nx.info().unreferenced_objects == 1


def test_alloc_counts_only_stored_bytes(nx, store):
    nx.write_bytes("/f", pattern(2 * BS + 100))
    assert store.meta.getattr(ino_of(nx, "/f")).alloc == 2 * BS + 100
    assert nx.stat("/f").blocks == (2 * BS + 100 + 511) // 512


# ------------------------------------------------------------------ truncate
def test_truncate_down_then_up_inside_a_block_reads_zeros(nx, store):
    data = pattern(3 * BS)
    nx.write_bytes("/f", data)
    cut = BS + 1000  # inside block 1
    nx.truncate("/f", cut)
    assert nx.read_bytes("/f") == data[:cut]
    nx.truncate("/f", 3 * BS)
    got = nx.read_bytes("/f")
    assert got[:cut] == data[:cut]
    assert got[cut:] == bytes(3 * BS - cut)


def test_truncate_down_then_up_at_a_block_boundary_reads_zeros(nx):
    data = pattern(3 * BS)
    nx.write_bytes("/f", data)
    nx.truncate("/f", BS)
    nx.truncate("/f", 3 * BS)
    assert nx.read_bytes("/f") == data[:BS] + bytes(2 * BS)


def test_shrink_and_grow_through_one_open_handle_leaves_no_stale_data(nx, store):
    ino = touch(nx, "/f")
    data = pattern(2 * BS + 500)
    with H(store.vfs, ino, os.O_RDWR) as h:
        h.write(0, data)
        store.vfs.truncate(ino, 100)  # inside block 0, still in the dirty buffer
        store.vfs.truncate(ino, 2 * BS + 500)
        got = h.read()
        assert got == data[:100] + bytes(len(data) - 100)
        # write beyond the shrink point: the old bytes must not come back around it
        h.write(BS + 10, b"new")
        got = h.read()
    want = bytearray(data[:100] + bytes(len(data) - 100))
    want[BS + 10 : BS + 13] = b"new"
    assert got == bytes(want)
    assert nx.read_bytes("/f") == bytes(want)


def test_shrink_inside_the_last_block_then_extend_by_writing(nx):
    data = pattern(BS + 5000)
    nx.write_bytes("/f", data)
    nx.truncate("/f", BS + 10)
    with nx.open("/f", "r+b") as f:
        f.seek(BS + 4000)
        f.write(b"Z")
    got = nx.read_bytes("/f")
    assert got == data[: BS + 10] + bytes(3990) + b"Z"


def test_truncate_releases_dropped_blocks(nx, store):
    nx.write_bytes("/f", pattern(4 * BS))
    ino = ino_of(nx, "/f")
    objs = objects_of(store, ino)
    assert len(objs) == 4
    nx.truncate("/f", BS)
    assert set(store.meta.block_map(ino)) == {0}
    assert len(live_objects(store)) == 1
    assert store.meta.getattr(ino).alloc == BS
    assert nx.info().unreferenced_objects == 3


def test_truncate_to_zero_and_grow_gives_a_sparse_file(nx, store):
    nx.write_bytes("/f", pattern(2 * BS))
    nx.truncate("/f", 0)
    nx.truncate("/f", 5 * BS)
    assert nx.read_bytes("/f") == bytes(5 * BS)
    assert nx.stat("/f").blocks == 0
    assert live_objects(store) == set()


def test_truncate_of_negative_size_is_einval(nx, store):
    import errno

    nx.write_bytes("/f", b"abc")
    with pytest.raises(FsError) as ei:
        store.vfs.truncate(ino_of(nx, "/f"), -1)
    assert ei.value.errno == errno.EINVAL
    assert nx.read_bytes("/f") == b"abc"


def test_truncate_of_a_directory_is_eisdir(nx, store):
    import errno

    nx.mkdir("/d")
    with pytest.raises(FsError) as ei:
        store.vfs.truncate(ino_of(nx, "/d"), 0)
    assert ei.value.errno == errno.EISDIR


# ------------------------------------------------------------------ O_APPEND / O_TRUNC
def test_o_append_writes_at_the_end_whatever_the_offset(nx, store):
    nx.write_bytes("/f", b"start")
    ino = ino_of(nx, "/f")
    with H(store.vfs, ino, os.O_WRONLY | os.O_APPEND) as h:
        h.write(0, b"-one")
        h.write(2, b"-two")
    assert nx.read_bytes("/f") == b"start-one-two"


def test_o_append_sees_writes_from_another_handle(nx, store):
    ino = touch(nx, "/f")
    a = H(store.vfs, ino, os.O_WRONLY | os.O_APPEND)
    b = H(store.vfs, ino, os.O_WRONLY)
    try:
        a.write(0, b"A" * 10)
        b.write(10, b"B" * (BS + 5))
        a.write(0, b"C")
    finally:
        a.close()
        b.close()
    assert nx.read_bytes("/f") == b"A" * 10 + b"B" * (BS + 5) + b"C"


def test_o_trunc_empties_the_file_and_releases_its_blocks(nx, store):
    nx.write_bytes("/f", pattern(3 * BS))
    ino = ino_of(nx, "/f")
    with H(store.vfs, ino, os.O_WRONLY | os.O_TRUNC) as h:
        assert store.vfs.getattr(ino).size == 0
        h.write(0, b"new")
    assert nx.read_bytes("/f") == b"new"
    assert store.meta.block_map(ino) == {}
    assert live_objects(store) == set()


def test_o_trunc_truncates_whatever_the_access_mode_like_linux(nx, store):
    nx.write_bytes("/f", b"gone")
    with H(store.vfs, ino_of(nx, "/f"), os.O_RDONLY | os.O_TRUNC) as h:
        assert h.read() == b""
    assert nx.read_bytes("/f") == b""


def test_o_trunc_drops_uncommitted_writes_of_another_handle(nx, store):
    ino = touch(nx, "/f")
    with H(store.vfs, ino, os.O_WRONLY) as a:
        a.write(0, pattern(BS + 10))
        assert store.meta.getattr(ino).size == 0  # nothing committed yet
        with H(store.vfs, ino, os.O_RDWR | os.O_TRUNC) as b:
            assert store.vfs.getattr(ino).size == 0
            assert b.read() == b""
    assert nx.read_bytes("/f") == b""


# ------------------------------------------------------------------ inline <-> blocks
def test_small_file_is_stored_inline_without_objects(nx, store):
    nx.write_bytes("/small", b"s" * INLINE_MAX)
    ino = ino_of(nx, "/small")
    assert store.meta.read_inline(ino) == b"s" * INLINE_MAX
    assert store.meta.block_map(ino) == {}
    assert nx.info().objects == 0


def test_inline_file_grows_into_blocks_and_shrinks_back(nx, store):
    small = pattern(500, 1)
    nx.write_bytes("/f", small)
    ino = ino_of(nx, "/f")
    assert store.meta.read_inline(ino) == small
    more = pattern(2 * BS, 2)
    nx.append_bytes("/f", more)
    assert store.meta.read_inline(ino) is None
    assert set(store.meta.block_map(ino)) == {0, 1, 2}
    assert nx.read_bytes("/f") == small + more
    nx.truncate("/f", 300)
    assert store.meta.read_inline(ino) == small[:300]
    assert store.meta.block_map(ino) == {}
    assert live_objects(store) == set()
    assert nx.read_bytes("/f") == small[:300]
    assert store.meta.getattr(ino).alloc == 300
    assert_fsck_clean(nx)


def test_inline_file_growing_by_a_write_past_its_end(nx, store):
    nx.write_bytes("/f", b"abc")
    ino = ino_of(nx, "/f")
    with H(store.vfs, ino, os.O_WRONLY) as h:
        h.write(BS + 10, b"far")
    want = b"abc" + bytes(BS + 7) + b"far"
    assert nx.read_bytes("/f") == want
    assert set(store.meta.block_map(ino)) == {0, 1}


def test_block_file_rewritten_small_becomes_inline(nx, store):
    nx.write_bytes("/f", pattern(3 * BS))
    nx.write_bytes("/f", b"tiny")
    ino = ino_of(nx, "/f")
    assert store.meta.read_inline(ino) == b"tiny"
    assert store.meta.block_map(ino) == {}
    assert nx.read_bytes("/f") == b"tiny"


def test_random_operations_match_a_byte_model(nx, store):
    """A small fuzz: writes, truncates, flushes and reopens against a bytearray."""
    rng = random.Random(1234)
    ino = touch(nx, "/fuzz")
    model = bytearray()
    h = H(store.vfs, ino, os.O_RDWR)
    try:
        for step in range(250):
            op = rng.random()
            if op < 0.55:
                off = rng.choice([0, len(model), rng.randrange(0, 6 * BS), rng.randrange(0, len(model) + 1)])
                n = rng.choice([1, 7, 100, INLINE_MAX, BS - 1, BS, BS + 3, rng.randrange(1, 2 * BS)])
                data = rng.choice([pattern(n, step), bytes(n), bytes([step % 256]) * n])
                h.write(off, data)
                if len(model) < off:
                    model.extend(bytes(off - len(model)))
                model[off : off + n] = data
            elif op < 0.7:
                size = rng.choice([0, 10, INLINE_MAX, BS, BS + 1, rng.randrange(0, 6 * BS)])
                store.vfs.truncate(ino, size)
                if size < len(model):
                    del model[size:]
                else:
                    model.extend(bytes(size - len(model)))
            elif op < 0.8:
                h.flush()
            elif op < 0.85:
                h.close()
                h = H(store.vfs, ino, os.O_RDWR)
            else:
                off = rng.randrange(0, len(model) + 10)
                n = rng.randrange(0, 3 * BS)
                assert h.read(off, n) == bytes(model[off : off + n]), step
            assert store.vfs.getattr(ino).size == len(model), step
    finally:
        h.close()
    assert nx.read_bytes("/fuzz") == bytes(model)
    assert_fsck_clean(nx)


# ------------------------------------------------------------------ unflushed writes
def test_getattr_shows_the_size_of_unflushed_writes(nx, store):
    ino = touch(nx, "/f")
    with H(store.vfs, ino, os.O_WRONLY) as h:
        h.write(0, b"x" * 100)
        assert store.vfs.getattr(ino).size == 100
        assert store.vfs.lookup(ROOT_INODE, b"f").size == 100
        h.write(5 * BS, b"y")
        assert store.vfs.getattr(ino).size == 5 * BS + 1
        entry = [e for e in store.vfs.readdir(ROOT_INODE) if e.name == b"f"][0]
        assert entry.attr.size == 5 * BS + 1
        # nothing is committed yet
        assert store.meta.getattr(ino).size == 0
    assert store.meta.getattr(ino).size == 5 * BS + 1


def test_a_second_handle_reads_unflushed_writes_of_the_first(nx, store):
    ino = touch(nx, "/f")
    data = pattern(2 * BS + 10)
    w = H(store.vfs, ino, os.O_WRONLY)
    r = H(store.vfs, ino, os.O_RDONLY)
    try:
        w.write(0, data)
        assert r.read() == data
        w.write(BS, b"changed")
        assert r.read(BS, 7) == b"changed"
    finally:
        w.close()
        r.close()


def test_api_stat_sees_the_size_while_a_file_is_being_written(nx):
    with nx.open("/f", "wb", buffering=0) as f:
        f.write(b"a" * 5000)
        assert nx.stat("/f").size == 5000
        f.write(b"b" * BS)
        assert nx.stat("/f").size == 5000 + BS
    assert nx.read_bytes("/f") == b"a" * 5000 + b"b" * BS


def test_flush_commits_without_closing(nx, store):
    ino = touch(nx, "/f")
    with H(store.vfs, ino, os.O_WRONLY) as h:
        h.write(0, b"abc" * 1000)
        h.flush()
        assert store.meta.getattr(ino).size == 3000
        nx2 = nexusfs.connect(nx.config.home)
        try:
            assert nx2.read_bytes("/f") == b"abc" * 1000
        finally:
            nx2.close()


# ------------------------------------------------------------------ unlinked while open
def test_unlinked_open_file_stays_usable_until_last_release_then_is_purged(nx, store):
    data = pattern(3 * BS, 7)
    nx.write_bytes("/f", data)
    ino = ino_of(nx, "/f")
    objs = objects_of(store, ino)
    assert len(objs) == 3
    a = H(store.vfs, ino, os.O_RDWR)
    b = H(store.vfs, ino, os.O_RDONLY)
    nx.delete("/f")
    assert not nx.exists("/f")
    assert store.vfs.getattr(ino).nlink == 0
    assert a.read() == data
    a.write(3 * BS, b"more")
    a.flush()
    assert b.read(3 * BS, 10) == b"more"
    a.close()
    assert store.meta.getattr(ino).nlink == 0  # b still has it open
    assert b.read(0, 10) == data[:10]
    b.close()
    with pytest.raises(FsError) as ei:
        store.meta.getattr(ino)
    assert ei.value.errno == errno.ENOENT
    assert live_objects(store) & objs == set()
    assert nx.info().unreferenced_objects >= 3
    assert_fsck_clean(nx)
    nx.gc(grace=0)
    assert list(store.blobs.list()) == []


def test_unlinked_open_file_written_before_any_commit_is_purged_on_release(nx, store):
    ino = touch(nx, "/f")
    h = H(store.vfs, ino, os.O_WRONLY)
    h.write(0, pattern(2 * BS))
    nx.delete("/f")
    h.close()
    with pytest.raises(FsError) as ei:
        store.meta.getattr(ino)
    assert ei.value.errno == errno.ENOENT
    assert live_objects(store) == set()
    assert_fsck_clean(nx)


def test_unlink_of_one_name_of_an_open_hard_linked_file(nx, store):
    nx.write_bytes("/a", b"content")
    nx.link("/a", "/b")
    ino = ino_of(nx, "/a")
    with H(store.vfs, ino, os.O_RDONLY) as h:
        nx.delete("/a")
        assert h.read() == b"content"
    assert nx.read_bytes("/b") == b"content"
    assert nx.stat("/b").nlink == 1


# ------------------------------------------------------------------ data_version
def test_data_version_increments_on_each_content_commit(nx, store):
    ino = touch(nx, "/f")
    v0 = store.meta.getattr(ino).data_version
    with H(store.vfs, ino, os.O_WRONLY) as h:
        h.write(0, b"one")
        assert store.meta.getattr(ino).data_version == v0  # not committed yet
        h.flush()
        v1 = store.meta.getattr(ino).data_version
        assert v1 > v0
        assert store.vfs.data_version(ino) == v1
        h.flush()  # nothing new: no new version
        assert store.meta.getattr(ino).data_version == v1
        h.write(0, b"two")
    v2 = store.meta.getattr(ino).data_version
    assert v2 > v1
    nx.truncate("/f", 1)
    assert store.meta.getattr(ino).data_version > v2


def test_data_version_does_not_change_on_metadata_only_changes(nx, store):
    nx.write_bytes("/f", b"x")
    ino = ino_of(nx, "/f")
    v = store.meta.getattr(ino).data_version
    nx.chmod("/f", 0o600)
    nx.rename("/f", "/g")
    nx.setxattr("/g", "user.k", b"v")
    nx.read_bytes("/g")
    assert store.meta.getattr(ino).data_version == v


def test_mtime_changes_on_write_and_not_on_read(nx, store):
    nx.write_bytes("/f", b"x")
    ino = ino_of(nx, "/f")
    store.meta.setattr(ino, mtime_ns=1_000_000_000)
    nx.read_bytes("/f")
    assert store.meta.getattr(ino).mtime_ns == 1_000_000_000
    nx.append_bytes("/f", b"y")
    assert store.meta.getattr(ino).mtime_ns > 1_000_000_000


# ------------------------------------------------------------------ two handles
def test_two_write_handles_on_one_file_share_one_view(nx, store):
    ino = touch(nx, "/f")
    a = H(store.vfs, ino, os.O_RDWR)
    b = H(store.vfs, ino, os.O_RDWR)
    try:
        a.write(0, b"a" * (2 * BS))
        b.write(BS - 2, b"bbbb")
        assert a.read(BS - 4, 8) == b"aabbbbaa"
        a.close()
        assert store.meta.getattr(ino).size == 2 * BS
        b.write(2 * BS, b"tail")
    finally:
        b.close()
    want = b"a" * (BS - 2) + b"bbbb" + b"a" * (BS - 2) + b"tail"
    assert nx.read_bytes("/f") == want


# ------------------------------------------------------------------ close-to-open
def test_close_to_open_a_second_connection_sees_content_after_close(nx, store_dir):
    other = nexusfs.connect(store_dir)
    try:
        nx.write_bytes("/shared", b"version 1")
        assert other.read_bytes("/shared") == b"version 1"
        data = pattern(3 * BS + 5)
        with nx.open("/shared", "wb") as f:
            f.write(data)
        assert other.read_bytes("/shared") == data
        # the other connection holding the file open does not stop it seeing a new version
        with other.open("/shared", "rb") as held:
            assert held.read(4) == data[:4]
            nx.write_bytes("/shared", b"version 3")
            assert other.read_bytes("/shared") == b"version 3"
        other.write_bytes("/shared", b"written by the other")
        assert nx.read_bytes("/shared") == b"written by the other"
    finally:
        other.close()


def test_close_to_open_sees_truncation_and_new_files(nx, store_dir):
    nx.write_bytes("/f", pattern(2 * BS))
    other = nexusfs.connect(store_dir)
    try:
        assert len(other.read_bytes("/f")) == 2 * BS
        nx.truncate("/f", 10)
        nx.write_bytes("/new", b"new file")
        assert other.read_bytes("/f") == pattern(2 * BS)[:10]
        assert other.read_bytes("/new") == b"new file"
        nx.delete("/new")
        assert not other.exists("/new")
    finally:
        other.close()


def test_reopened_store_reads_everything_back(store_dir):
    files = {f"/dir/file{i}": pattern(i * 7000, i) for i in range(12)}
    with nexusfs.connect(store_dir, block_size=BS, inline_max=INLINE_MAX) as nx:
        for p, data in files.items():
            nx.write_bytes(p, data, parents=True)
    with nexusfs.connect(store_dir) as nx:
        for p, data in files.items():
            assert nx.read_bytes(p) == data
        assert nx.meta.block_size == BS  # fixed at init


# ------------------------------------------------------------------ drop-behind
def _cached_blocks(store, ino: int) -> list[int]:
    """Indexes of the file's blocks whose objects are in the read cache."""
    refs = store.meta.block_map(ino)
    return sorted(i for i, ref in refs.items() if store.vfs.blocks.cached(ref.id) is not None)


def _fresh_reader(nx, store, path: str, nblocks: int):
    nx.write_bytes(path, pattern(nblocks * BS, 7))
    ino = ino_of(nx, path)
    store.vfs.blocks.uncache(store.meta.block_map(ino).values())
    return H(store.vfs, ino, os.O_RDONLY)


def test_drop_behind_uncaches_blocks_a_sequential_reader_has_passed(nx, store):
    store.vfs.drop_behind = True
    store.vfs.readahead_blocks = 0
    h = _fresh_reader(nx, store, "/seq", 4)
    data = pattern(4 * BS, 7)
    step = BS // 4
    got = b""
    for off in range(0, 2 * BS + step, step):  # up to the first quarter of block 2
        got += h.read(off, step)
    assert got == data[: 2 * BS + step]
    assert _cached_blocks(store, h.ino) == [2]
    # reads that straddle a block boundary: the block is dropped once a read starts past it
    assert h.read(2 * BS + step, BS) == data[2 * BS + step : 3 * BS + step]
    assert _cached_blocks(store, h.ino) == [2, 3]
    assert h.read(3 * BS + step, step) == data[3 * BS + step : 3 * BS + 2 * step]
    assert _cached_blocks(store, h.ino) == [3]
    h.close()


def test_drop_behind_keeps_blocks_for_random_reads_and_when_off(nx, store):
    store.vfs.readahead_blocks = 0
    data = pattern(3 * BS, 7)
    store.vfs.drop_behind = False
    h = _fresh_reader(nx, store, "/off", 3)
    assert h.read(0, 3 * BS) == data
    assert h.read(3 * BS, BS) == b""
    assert _cached_blocks(store, h.ino) == [0, 1, 2]
    h.close()
    store.vfs.drop_behind = True
    h = _fresh_reader(nx, store, "/random", 3)
    for off in (2 * BS, 0, BS, 0):  # never one read right after the other
        assert h.read(off, 100) == data[off : off + 100]
    assert _cached_blocks(store, h.ino) == [0, 1, 2]
    h.close()
