"""Deduplication, refcounts, garbage collection and compression (default 4 MiB blocks)."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

import nexusfs
from nexusfs.meta.schema import CODEC_NONE, CODEC_ZSTD

MiB = 1 << 20
BLOCK = 4 * MiB


@pytest.fixture
def big(tmp_path):
    nx = nexusfs.connect(str(tmp_path / "store"), block_size=BLOCK, cache_size=32 * MiB, dirty_limit=32 * MiB)
    try:
        yield nx
    finally:
        nx.close()


def blob_dir(nx) -> str:
    return os.path.join(nx.config.home, "blobs")


def blob_bytes(nx) -> int:
    """Sum of the sizes of the blob files on disk."""
    total = 0
    for d, _dirs, files in os.walk(blob_dir(nx)):
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


def blob_count(nx) -> int:
    return sum(len(files) for _d, _dirs, files in os.walk(blob_dir(nx)))


def random_chunks(total: int, seed: int, chunk: int = MiB):
    rng = random.Random(seed)
    for _ in range(total // chunk):
        yield rng.randbytes(chunk)


def write_stream(nx, path: str, chunks) -> str:
    h = hashlib.sha256()
    with nx.open(path, "wb") as f:
        for c in chunks:
            f.write(c)
            h.update(c)
    return h.hexdigest()


def read_hash(nx, path: str) -> str:
    h = hashlib.sha256()
    with nx.open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
    return h.hexdigest()


def refcounts(nx) -> dict[int, int]:
    return dict(nx.store.db.query("SELECT id, refcount FROM objects"))


# ------------------------------------------------------------------ dedup across files
def test_same_64_mib_under_two_names_grows_the_store_by_less_than_one_percent(big):
    size = 64 * MiB
    digest = write_stream(big, "/first.bin", random_chunks(size, 1))
    disk1, stored1 = blob_bytes(big), big.info().stored_bytes
    assert disk1 >= size  # random data: stored raw
    assert stored1 >= size
    big.mkdir("/copies")
    assert write_stream(big, "/copies/second.bin", random_chunks(size, 1)) == digest
    disk2, stored2 = blob_bytes(big), big.info().stored_bytes
    assert disk2 - disk1 < 0.01 * disk1
    assert stored2 - stored1 < 0.01 * stored1
    info = big.info()
    assert info.logical_bytes == 2 * size
    assert info.referenced_bytes == 2 * size
    assert info.unique_bytes == size
    assert info.dedup_ratio == pytest.approx(2.0)
    assert read_hash(big, "/first.bin") == digest
    assert read_hash(big, "/copies/second.bin") == digest
    assert set(refcounts(big).values()) == {2}


def test_identical_blocks_inside_one_file_are_stored_once(big):
    a = random.Random(1).randbytes(BLOCK)
    b = random.Random(2).randbytes(BLOCK)
    content = [a, a, b, a, a, b]
    write_stream(big, "/repeats", content)
    assert big.info().objects == 2
    assert blob_count(big) == 2
    assert blob_bytes(big) < 2 * BLOCK + 4096
    assert sorted(refcounts(big).values()) == [2, 4]
    assert read_hash(big, "/repeats") == hashlib.sha256(b"".join(content)).hexdigest()


def test_two_files_written_at_the_same_time_share_their_uploads(big):
    chunks = list(random_chunks(8 * MiB, 4))
    a = big.open("/a", "wb", buffering=0)
    b = big.open("/b", "wb", buffering=0)
    for c in chunks:  # interleaved: neither file is committed while the other writes
        a.write(c)
        b.write(c)
    a.close()
    b.close()
    assert big.info().objects == 2
    assert blob_count(big) == 2
    assert set(refcounts(big).values()) == {2}
    assert big.read_bytes("/a") == big.read_bytes("/b") == b"".join(chunks)


def test_a_file_differing_in_one_block_adds_one_object(big):
    blocks = [random.Random(i).randbytes(BLOCK) for i in range(5)]
    write_stream(big, "/v1", blocks)
    before = big.info().objects
    blocks[3] = random.Random(99).randbytes(BLOCK)
    write_stream(big, "/v2", blocks)
    assert big.info().objects == before + 1


def test_rewriting_deleted_content_reuses_the_uncollected_object(big):
    digest = write_stream(big, "/a", random_chunks(8 * MiB, 3))
    keys = sorted(i.key for i in big.store.blobs.list())
    big.delete("/a")
    assert big.info().unreferenced_objects == 2
    assert write_stream(big, "/b", random_chunks(8 * MiB, 3)) == digest
    assert sorted(i.key for i in big.store.blobs.list()) == keys  # no upload
    assert big.info().unreferenced_objects == 0
    assert read_hash(big, "/b") == digest


# ------------------------------------------------------------------ refcounts & gc
def test_refcounts_drop_and_gc_reclaims_after_deleting_both_copies(big):
    size = 16 * MiB
    write_stream(big, "/one", random_chunks(size, 7))
    write_stream(big, "/two", random_chunks(size, 7))
    assert set(refcounts(big).values()) == {2}
    disk = blob_bytes(big)

    big.delete("/one")
    assert set(refcounts(big).values()) == {1}
    report = big.gc(grace=0)
    assert report.objects_deleted == 0  # still used by /two
    assert blob_bytes(big) == disk

    big.delete("/two")
    assert set(refcounts(big).values()) == {0}
    assert big.info().unreferenced_objects == size // BLOCK
    report = big.gc(grace=0)
    assert report.objects_deleted == size // BLOCK
    assert report.bytes_freed == disk
    assert blob_bytes(big) == 0
    assert big.info().objects == 0 and big.info().stored_bytes == 0
    fsck = big.fsck()
    assert fsck.clean, [str(p) for p in fsck.problems]


def test_gc_with_a_grace_period_keeps_recent_garbage(big):
    write_stream(big, "/f", random_chunks(8 * MiB, 8))
    big.delete("/f")
    disk = blob_bytes(big)
    report = big.gc(grace=3600)
    assert report.objects_deleted == 0
    assert blob_bytes(big) == disk
    assert big.gc(grace=0).objects_deleted == 2
    assert blob_bytes(big) == 0


def test_overwriting_a_file_releases_its_old_blocks(big):
    write_stream(big, "/f", random_chunks(8 * MiB, 10))
    old = set(refcounts(big))
    write_stream(big, "/f", random_chunks(8 * MiB, 11))
    rc = refcounts(big)
    assert all(rc[o] == 0 for o in old)
    big.gc(grace=0)
    assert set(refcounts(big)) == set(rc) - old
    assert blob_count(big) == 2


# ------------------------------------------------------------------ compression
def test_compressible_data_is_stored_smaller(big):
    line = b"the quick brown fox jumps over the lazy dog 0123456789\n"
    data = line * (10 * MiB // len(line))
    big.write_bytes("/text.log", data)
    codecs = {c for (c,) in big.store.db.query("SELECT codec FROM objects")}
    assert codecs == {CODEC_ZSTD}
    assert blob_bytes(big) < len(data) // 10
    info = big.info()
    assert info.stored_bytes < len(data) // 10
    assert info.compression_ratio > 10
    assert big.read_bytes("/text.log") == data
    # and from the blobs, not the cache
    with nexusfs.connect(big.config.home) as other:
        assert other.read_bytes("/text.log") == data


def test_incompressible_data_is_stored_raw(big):
    data = random.Random(5).randbytes(2 * BLOCK + 12345)
    big.write_bytes("/random.bin", data)
    rows = big.store.db.query("SELECT codec, size, stored_size FROM objects")
    assert len(rows) == 3
    assert all(codec == CODEC_NONE and size == stored for codec, size, stored in rows)
    assert blob_bytes(big) == len(data)
    with nexusfs.connect(big.config.home) as other:
        assert other.read_bytes("/random.bin") == data


def test_store_without_compression_keeps_compressible_data_raw(tmp_path):
    with nexusfs.connect(str(tmp_path / "raw"), compression="none", block_size=BLOCK) as nx:
        data = b"a" * (3 * MiB)
        nx.write_bytes("/a", data)
        assert blob_bytes(nx) == len(data)
        assert nx.read_bytes("/a") == data
