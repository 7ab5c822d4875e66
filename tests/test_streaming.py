"""Streaming files larger than the block cache and the dirty limit, in bounded memory.

The ``nx`` fixture has a 1 MiB block cache and a 1 MiB dirty limit (64 KiB
blocks). Memory is measured with tracemalloc's peak: a bound on memory, not on
time.
"""

from __future__ import annotations

import hashlib
import random
import threading
import tracemalloc

import pytest

MiB = 1 << 20
SIZE = 24 * MiB
CHUNK = 256 * 1024
PEAK_LIMIT = 16 * MiB


def chunks(seed: int, total: int = SIZE, size: int = CHUNK):
    rng = random.Random(seed)
    for _ in range(total // size):
        yield rng.randbytes(size)


def expected_digest(seed: int, total: int = SIZE) -> str:
    h = hashlib.sha256()
    for c in chunks(seed, total):
        h.update(c)
    return h.hexdigest()


def stream_write(nx, path: str, seed: int, total: int = SIZE) -> str:
    h = hashlib.sha256()
    with nx.open(path, "wb") as f:
        for c in chunks(seed, total):
            f.write(c)
            h.update(c)
    return h.hexdigest()


def stream_read(nx, path: str, size: int = CHUNK) -> tuple[str, int]:
    h = hashlib.sha256()
    n = 0
    with nx.open(path, "rb") as f:
        while data := f.read(size):
            h.update(data)
            n += len(data)
    return h.hexdigest(), n


def peak_of(fn):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        result = fn()
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak


def test_streaming_write_of_24_mib_stays_in_bounded_memory(nx, store):
    assert SIZE > 16 * store.config.cache_size and SIZE > 16 * store.config.dirty_limit
    digest, peak = peak_of(lambda: stream_write(nx, "/big.bin", seed=1))
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.1f} MiB while writing {SIZE / MiB:.0f} MiB"
    assert digest == expected_digest(1)
    assert nx.stat("/big.bin").size == SIZE
    assert store.vfs.dirty.used == 0  # everything uploaded and committed
    assert store.vfs.dirty.in_flight == 0


def test_streaming_read_of_24_mib_stays_in_bounded_memory(nx, store):
    stream_write(nx, "/big.bin", seed=2)
    (digest, n), peak = peak_of(lambda: stream_read(nx, "/big.bin"))
    assert peak < PEAK_LIMIT, f"peak {peak / MiB:.1f} MiB while reading {SIZE / MiB:.0f} MiB"
    assert (digest, n) == (expected_digest(2), SIZE)
    cache = store.vfs.blocks._cache  # noqa: SLF001 - the bound is what is tested
    assert cache.currsize <= cache.maxsize


def test_streaming_read_from_a_fresh_connection(nx, store_dir):
    import nexusfs

    digest = stream_write(nx, "/big.bin", seed=3)
    # nothing cached: every block comes from the blobs (through an equally small cache)
    with nexusfs.connect(store_dir, cache_size=1 << 20, dirty_limit=1 << 20) as other:
        (got, n), peak = peak_of(lambda: stream_read(other, "/big.bin", size=1 << 20))
    assert (got, n) == (digest, SIZE)
    assert peak < PEAK_LIMIT


def test_streaming_in_odd_sized_chunks(nx):
    h = hashlib.sha256()
    rng = random.Random(4)
    total = 0
    with nx.open("/odd.bin", "wb") as f:
        while total < 6 * MiB:
            c = rng.randbytes(rng.choice([1, 333, 4096, 65535, 65537, 200_001]))
            f.write(c)
            h.update(c)
            total += len(c)
    got = hashlib.sha256()
    with nx.open("/odd.bin", "rb") as f:
        while data := f.read(rng.choice([7, 1000, 65536, 99_999])):
            got.update(data)
    assert got.hexdigest() == h.hexdigest()


def test_two_big_files_streamed_at_the_same_time(nx, store):
    results: dict[str, str] = {}
    errors: list[BaseException] = []

    def writer(name: str, seed: int) -> None:
        try:
            results[name] = stream_write(nx, name, seed, total=8 * MiB)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(f"/t{i}.bin", 10 + i)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "writers are stuck"
    assert not errors, errors
    for i in range(3):
        assert stream_read(nx, f"/t{i}.bin")[0] == results[f"/t{i}.bin"] == expected_digest(10 + i, 8 * MiB)
    assert store.vfs.dirty.used == 0


def test_writer_is_not_stuck_when_other_files_hold_the_dirty_buffer(nx, store):
    """Partly written blocks of idle open files fill the dirty buffer exactly: a writer
    that must wait for room has to go on once its own uploads are done."""
    limit = store.config.dirty_limit
    idle = [nx.open(f"/idle{i}", "wb", buffering=0) for i in range(limit // (32 * 1024))]
    try:
        for f in idle:
            f.write(b"i" * 32 * 1024)  # half a block each: nothing to upload yet
        assert store.vfs.dirty.used == limit
        done = threading.Event()
        errors: list[BaseException] = []

        def write_more() -> None:
            try:
                with nx.open("/busy", "wb", buffering=0) as f:
                    for _ in range(20):
                        f.write(b"b" * 100_000)
                done.set()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                done.set()

        t = threading.Thread(target=write_more, daemon=True)
        t.start()
        assert done.wait(timeout=120), "the writer waits forever for room in the dirty buffer"
        assert not errors, errors
    finally:
        for f in idle:
            f.close()
    assert nx.read_bytes("/busy") == b"b" * 2_000_000
    assert nx.read_bytes("/idle0") == b"i" * 32 * 1024
    assert store.vfs.dirty.used == 0


@pytest.mark.parametrize("mode", ["r+b", "ab"])
def test_appending_to_a_big_file_streams_too(nx, mode):
    first = stream_write(nx, "/grow.bin", seed=20, total=4 * MiB)
    assert first == expected_digest(20, 4 * MiB)
    h = hashlib.sha256()
    for c in chunks(20, 4 * MiB):
        h.update(c)
    with nx.open("/grow.bin", mode) as f:
        f.seek(0, 2)
        for c in chunks(21, 4 * MiB):
            f.write(c)
            h.update(c)
    assert stream_read(nx, "/grow.bin")[0] == h.hexdigest()
