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


# ------------------------------------------------------- peak RSS at the default block size
# tracemalloc sees Python's allocations only: the VFS's full-block buffers (BufferPool) are
# anonymous memory maps, and blocks above 128 KiB (the default 4 MiB among them) live there.
# So a child process streams at the default block size, and the kernel's own peak of its
# resident memory (VmHWM, reset between phases through /proc/self/clear_refs) is the measure.
def _proc_status(key: str) -> int:
    """A size from /proc/self/status (VmRSS, VmHWM), in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # VmHWM := VmRSS


def rss_child(home: str, total: str, cache_size: str, dirty_limit: str) -> None:
    """In the child process: stream ``total`` bytes in and out of a store at the default
    block size; print what the store was set to and how far its resident memory grew."""
    import json

    import nexusfs

    with nexusfs.connect(home, cache_size=int(cache_size), dirty_limit=int(dirty_limit), semantic=False,
                         background_indexing=False) as nx:
        vfs, config = nx.store.vfs, nx.store.config
        # warm up: threads, imports and the allocator's arenas exist before the measuring
        warm = stream_write(nx, "/warm", seed=0, total=16 * MiB)
        assert stream_read(nx, "/warm")[0] == warm
        out = {"block_size": vfs.block_size, "pool_keep": vfs.pool.keep, "threads": config.threads,
               "readahead_blocks": vfs.readahead_blocks, "cache_size": config.cache_size,
               "dirty_limit": config.dirty_limit}
        _reset_peak()
        out["write_base"] = _proc_status("VmRSS")
        wrote = stream_write(nx, "/big", seed=1, total=int(total))
        out["write_peak"] = _proc_status("VmHWM")
        _reset_peak()
        out["read_base"] = _proc_status("VmRSS")
        out["digests_match"] = stream_read(nx, "/big", size=MiB) == (wrote, int(total))
        out["read_peak"] = _proc_status("VmHWM")
    print(json.dumps(out))


#: how much the child streams: several times the memory bound below
RSS_STREAM = 384 * MiB
#: smaller than the defaults (512 MiB cache, 256 MiB dirty limit) so that the stream is
#: several times what the store may hold: with the defaults, buffers kept for the whole
#: stream would still fit in the promise
RSS_CACHE, RSS_DIRTY = 32 * MiB, 32 * MiB
#: Python objects, allocator arenas and page-rounding the formula below does not count
RSS_SLACK = 32 * MiB


def test_peak_rss_at_the_default_block_size_is_what_the_config_promises(tmp_path):
    import json
    import os
    import subprocess
    import sys

    from nexusfs.config import Config

    assert Config().block_size > 128 * 1024  # above malloc's mmap threshold: tracemalloc is blind
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = "import sys; from tests.test_streaming import rss_child; rss_child(*sys.argv[1:])"
    res = subprocess.run([sys.executable, "-c", child, str(tmp_path / "store"), str(RSS_STREAM),
                          str(RSS_CACHE), str(RSS_DIRTY)], capture_output=True, text=True, timeout=600,
                         cwd=root, env=dict(os.environ, PYTHONPATH=root))
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.splitlines()[-1])
    assert m["block_size"] == Config().block_size == 4 * MiB and m["digests_match"]
    assert (m["cache_size"], m["dirty_limit"]) == (RSS_CACHE, RSS_DIRTY)
    bs = m["block_size"]
    # What the store may hold at once, from its settings: the block cache (cache_size), the
    # dirty blocks waiting for upload (dirty_limit, in pool buffers), the free buffers the
    # pool keeps for reuse (pool.keep blocks), one block per I/O thread being hashed,
    # compressed or decompressed, and the blocks read ahead.
    bound = (m["cache_size"] + m["dirty_limit"] + m["pool_keep"] * bs + m["threads"] * bs
             + m["readahead_blocks"] * bs + RSS_SLACK)
    assert RSS_STREAM >= 2 * bound  # a store keeping what it streamed could not pass
    print(f"peak RSS growth: write {(m['write_peak'] - m['write_base']) // MiB} MiB, read "
          f"{(m['read_peak'] - m['read_base']) // MiB} MiB; bound {bound // MiB} MiB")
    for phase in ("write", "read"):
        grew = m[f"{phase}_peak"] - m[f"{phase}_base"]
        assert grew < bound, (f"{phase} of {RSS_STREAM // MiB} MiB at {bs // MiB} MiB blocks: resident memory "
                              f"grew {grew / MiB:.0f} MiB, over the {bound / MiB:.0f} MiB the settings allow ({m})")
