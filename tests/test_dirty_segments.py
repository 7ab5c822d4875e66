"""Dirty blocks that keep large appended ``bytes`` writes as segments instead of copying them.

The mount receives every write request as a new ``bytes`` object; a block that is only
appended to keeps those objects and copies them into a full-block buffer when it is
staged, in a worker thread. These tests check the two forms of a dirty block agree
on content whatever the sequence of writes, reads and truncations.
"""

from __future__ import annotations

import mmap
import os
import random

import pytest

import nexusfs
from nexusfs.dirty import SEGMENT_MIN, SMALL_BLOCK, BufferPool, DirtyBlock

BLOCK = 512 * 1024


@pytest.fixture
def pool() -> BufferPool:
    return BufferPool(BLOCK, keep=4)


ZEROS = memoryview(bytes(BLOCK))


def put(blk: DirtyBlock, pool: BufferPool, start: int, data: bytes, *, immutable: bool = True) -> int:
    origin = (data, 0) if immutable else None
    return blk.write(start, memoryview(data), pool, ZEROS, origin)


def content(blk: DirtyBlock, pool: BufferPool) -> bytes:
    return bytes(blk.gather(pool, blk.length))


def test_large_appends_of_bytes_are_kept_without_a_copy(pool):
    blk = DirtyBlock()
    a, b = os.urandom(SEGMENT_MIN), os.urandom(2 * SEGMENT_MIN)
    assert put(blk, pool, 0, a) == len(a)
    assert put(blk, pool, len(a), b) == len(b)
    assert blk.segments is not None
    assert [s[0] for s in blk.segments] == [a, b]  # the very objects, not copies
    assert blk.length == blk.capacity == len(a) + len(b)
    assert content(blk, pool) == a + b
    assert blk.segments is None and isinstance(blk.buf, mmap.mmap)  # gathered into a pool buffer


def test_a_segment_may_be_part_of_a_larger_bytes_object(pool):
    blk = DirtyBlock()
    data = os.urandom(3 * SEGMENT_MIN)
    view = memoryview(data)[SEGMENT_MIN:]
    blk.write(0, view, pool, ZEROS, (data, SEGMENT_MIN))
    assert blk.segments is not None
    assert content(blk, pool) == data[SEGMENT_MIN:]


@pytest.mark.parametrize(
    "why, start, size, immutable",
    [
        ("small", 0, SEGMENT_MIN - 1, True),
        ("mutable", 0, SEGMENT_MIN, False),
        ("not at the end", 5, SEGMENT_MIN, True),
    ],
)
def test_other_writes_are_copied(pool, why, start, size, immutable):
    blk = DirtyBlock()
    data = os.urandom(size)
    put(blk, pool, start, data, immutable=immutable)
    assert blk.segments is None, why
    assert bytes(blk.view()) == bytes(start) + data


def test_an_overwrite_inside_a_segmented_block_turns_it_into_a_buffer(pool):
    blk = DirtyBlock()
    a, b = os.urandom(SEGMENT_MIN), os.urandom(SEGMENT_MIN)
    put(blk, pool, 0, a)
    put(blk, pool, SEGMENT_MIN, b)
    patch = b"x" * 100
    added = put(blk, pool, SEGMENT_MIN - 50, patch)
    assert blk.segments is None
    assert added == blk.capacity - 2 * SEGMENT_MIN  # what the dirty limit must count
    expect = bytearray(a + b)
    expect[SEGMENT_MIN - 50 : SEGMENT_MIN + 50] = patch
    assert bytes(blk.view()) == bytes(expect)
    # appending to a buffer-form block copies from now on
    c = os.urandom(SEGMENT_MIN)
    put(blk, pool, blk.length, c)
    assert blk.segments is None
    assert bytes(blk.view()) == bytes(expect) + c


def test_a_gap_after_a_segmented_block_is_zero_filled(pool):
    blk = DirtyBlock()
    a = os.urandom(SEGMENT_MIN)
    put(blk, pool, 0, a)
    put(blk, pool, SEGMENT_MIN + 10, b"tail")
    assert bytes(blk.view()) == a + bytes(10) + b"tail"


def test_flatten_picks_a_small_buffer_for_small_content_and_a_pool_buffer_otherwise(pool):
    small = DirtyBlock()
    put(small, pool, 0, os.urandom(SEGMENT_MIN))
    small.flatten(pool)
    assert isinstance(small.buf, bytearray) and SEGMENT_MIN <= SMALL_BLOCK
    big = DirtyBlock()
    data = os.urandom(SMALL_BLOCK + SEGMENT_MIN)
    put(big, pool, 0, data)
    big.flatten(pool)
    assert isinstance(big.buf, mmap.mmap)
    assert bytes(big.view()) == data


def test_gather_of_a_shorter_length_cuts_the_content(pool):
    blk = DirtyBlock()
    data = os.urandom(2 * SEGMENT_MIN)
    put(blk, pool, 0, data)
    assert bytes(blk.gather(pool, 1000)) == data[:1000]


# ------------------------------------------------------------------ through the VFS
@pytest.fixture
def big_nx(store_dir):
    """A store whose blocks hold several segments (1 MiB blocks)."""
    conn = nexusfs.connect(store_dir, block_size=1 << 20, inline_max=1024, cache_size=4 << 20,
                           dirty_limit=8 << 20, semantic=False)
    try:
        yield conn
    finally:
        conn.close()


def test_streamed_writes_read_back_before_and_after_commit(big_nx):
    vfs = big_nx.store.vfs
    big_nx.write_bytes("/f", b"")
    ino = big_nx.stat("/f").ino
    fh = vfs.open(ino, os.O_RDWR)
    chunks = [os.urandom(256 * 1024) for _ in range(10)]  # 2.5 MiB: two full blocks and a partial one
    try:
        pos = 0
        for c in chunks:
            assert vfs.write(fh, pos, c) == len(c)
            pos += len(c)
        whole = b"".join(chunks)
        # the partial last block is still dirty (segmented): reading it must see it
        assert vfs.read(fh, 0, len(whole) + 10) == whole
        assert vfs.read(fh, 2 * (1 << 20) + 5, 100) == whole[2 * (1 << 20) + 5 : 2 * (1 << 20) + 105]
        vfs.flush(fh)
    finally:
        vfs.release(fh)
    assert big_nx.read_bytes("/f") == whole


def test_random_appends_overwrites_truncates_and_reads_match_a_byte_model(big_nx):
    vfs = big_nx.store.vfs
    rng = random.Random(99)
    big_nx.write_bytes("/m", b"")
    ino = big_nx.stat("/m").ino
    model = bytearray()
    fh = vfs.open(ino, os.O_RDWR)
    try:
        for step in range(300):
            op = rng.random()
            if op < 0.5:  # append a large piece, as the mount delivers it
                data = rng.randbytes(rng.choice([SEGMENT_MIN, 128 * 1024, 300 * 1024, 1 << 20]))
                vfs.write(fh, len(model), data)
                model += data
            elif op < 0.65:  # overwrite somewhere (possibly past the end)
                off = rng.randrange(0, len(model) + 1000)
                data = rng.randbytes(rng.choice([1, 4096, SEGMENT_MIN + 7]))
                vfs.write(fh, off, bytearray(data) if rng.random() < 0.5 else data)
                if len(model) < off:
                    model.extend(bytes(off - len(model)))
                model[off : off + len(data)] = data
            elif op < 0.72:
                size = rng.randrange(0, len(model) + 1)
                vfs.truncate(ino, size)
                del model[size:]
            elif op < 0.8:
                vfs.flush(fh)
            else:
                off = rng.randrange(0, len(model) + 10)
                n = rng.randrange(0, 3 << 20)
                assert vfs.read(fh, off, n) == bytes(model[off : off + n]), step
            assert vfs.getattr(ino).size == len(model), step
            if len(model) > 12 << 20:
                vfs.truncate(ino, 0)
                model.clear()
    finally:
        vfs.release(fh)
    assert big_nx.read_bytes("/m") == bytes(model)
