#!/usr/bin/env python3
"""Benchmark of the engine through its Python API (no FUSE).

Workloads:

* sequential write of one ``--size-mib`` MiB file of random (incompressible,
  never repeating) data in 1 MiB writes, store with the default 4 MiB blocks;
  the time includes close(), i.e. hashing, upload and commit;
* sequential read of that file in 1 MiB reads, warm (same connection, right after
  the write: written blocks are not kept in the block cache and went to disk with
  O_DIRECT, so they are read back from the disk) and cold (a new connection: empty block cache; the OS page
  cache is dropped too when running as root);
* create / stat / delete of ``--files`` small files (100 bytes, inline) in one
  directory, each phase timed on its own, plus the same creates as one
  ``write_many`` batch;
* parallelism of hashing and compression: the write of compressible data with
  ``threads=1`` and ``threads=8`` (blob fsync off, so the figure is CPU bound),
  and BLAKE3 hashing of 4 MiB blocks alone on 1 and 8 threads. A speed-up above
  1 shows hashing and compression are not serialized on one core (the ceiling is
  the number of CPUs).

Usage::

    python3 tests/bench/bench_api.py [--size-mib 256] [--files 2000] [--repeat 1]
        [--out DIR] [--tmp DIR]

Prints a markdown table and writes it to ``OUT/bench_api.md``. Figures are the
median of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import nexusfs  # noqa: E402
from nexusfs.blocks import digest  # noqa: E402

MiB = 1 << 20
CHUNK = MiB


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def drop_page_cache() -> bool:
    """Flush and drop the OS page cache (root only); True if it was done."""
    if os.geteuid() != 0:
        return False
    try:
        subprocess.run(["sync"], check=False)
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.size = args.size_mib * MiB
        self.tmp = tempfile.mkdtemp(prefix="nexus-bench-api-", dir=args.tmp)
        self.results: dict[str, list[float]] = {}
        self.notes: list[str] = []

    def record(self, key: str, value: float) -> None:
        self.results.setdefault(key, []).append(value)

    def fresh_home(self, name: str) -> str:
        home = os.path.join(self.tmp, name)
        shutil.rmtree(home, ignore_errors=True)
        return home

    # ----------------------------------------------------------- big file
    def big_file(self, rep: int) -> None:
        log(f"[{rep}] writing a {self.args.size_mib} MiB file of random data")
        data = os.urandom(self.size)  # unique: no block deduplicates, none compresses
        view = memoryview(data)
        home = self.fresh_home("big")
        nx = nexusfs.connect(home)
        try:
            def write() -> None:
                with nx.open("/big.bin", "wb") as f:
                    for off in range(0, self.size, CHUNK):
                        f.write(view[off : off + CHUNK])

            secs = timed(write)
            self.record("write_mibs", self.size / MiB / secs)

            def read() -> None:
                with nx.open("/big.bin", "rb") as f:
                    while f.read(CHUNK):
                        pass

            self.record("read_warm_mibs", self.size / MiB / timed(read))
        finally:
            nx.close()
        dropped = drop_page_cache()
        if rep == 0:
            self.notes.append(
                "cold read: new connection (empty block cache); OS page cache "
                + ("dropped" if dropped else "NOT dropped (not root): blobs may come from memory")
            )
        nx = nexusfs.connect(home)
        try:
            h_ok = []

            def read_cold() -> None:
                pos = 0
                with nx.open("/big.bin", "rb") as f:
                    while chunk := f.read(CHUNK):
                        # bytes == bytes is a memcmp; comparing with a memoryview goes
                        # byte by byte and used to dominate the timing
                        h_ok.append(chunk == data[pos : pos + len(chunk)])
                        pos += len(chunk)

            secs = timed(read_cold)
            if not all(h_ok):
                raise SystemExit("read back data differs from what was written")
            self.record("read_cold_mibs", self.size / MiB / secs)
        finally:
            nx.close()
        shutil.rmtree(home, ignore_errors=True)

    # --------------------------------------------------------- small files
    def small_files(self, rep: int) -> None:
        n = self.args.files
        log(f"[{rep}] create/stat/delete of {n} small files")
        home = self.fresh_home("small")
        payload = b"x" * 100
        with nexusfs.connect(home) as nx:
            nx.mkdir("/d")
            paths = [f"/d/file{i:06d}" for i in range(n)]

            def create() -> None:
                for p in paths:
                    nx.write_bytes(p, payload)

            def stat() -> None:
                for p in paths:
                    nx.stat(p)

            def delete() -> None:
                for p in paths:
                    nx.delete(p)

            def batch() -> None:
                nx.write_many({p: payload for p in paths})

            self.record("create_ops", n / timed(create))
            self.record("stat_ops", n / timed(stat))
            self.record("delete_ops", n / timed(delete))
            self.record("batch_create_ops", n / timed(batch))
        shutil.rmtree(home, ignore_errors=True)

    # -------------------------------------------------------- parallelism
    def parallelism(self, rep: int) -> None:
        size = max(32 * MiB, self.size // 2)
        log(f"[{rep}] hashing/compression with 1 and 8 threads ({size // MiB} MiB)")
        # compressible but not repeating: zstd works on every block, no block deduplicates
        text = b"".join(f"{i:012d} the quick brown fox jumps over the lazy dog\n".encode()
                        for i in range(size // 57 + 1))[:size]
        view = memoryview(text)
        for threads in (1, 8):
            home = self.fresh_home(f"threads{threads}")
            with nexusfs.connect(home, threads=threads, fsync_blobs=False) as nx:
                def write() -> None:
                    with nx.open("/text.log", "wb") as f:
                        for off in range(0, size, CHUNK):
                            f.write(view[off : off + CHUNK])

                self.record(f"compress_write_t{threads}_mibs", size / MiB / timed(write))
            shutil.rmtree(home, ignore_errors=True)
        blocks = [os.urandom(4 * MiB) for _ in range(8)]
        rounds = max(1, size // (len(blocks) * 4 * MiB))
        for threads in (1, 8):
            with ThreadPoolExecutor(threads) as pool:
                def hash_all() -> None:
                    for _ in range(rounds):
                        list(pool.map(digest, blocks))

                secs = timed(hash_all)
            self.record(f"hash_t{threads}_mibs", rounds * len(blocks) * 4 / secs)

    # ------------------------------------------------------------- report
    def median(self, key: str) -> float:
        return statistics.median(self.results[key])

    def table(self) -> str:
        a = self.args
        rows = [
            ("sequential write, random data (incl. close)", "write_mibs", "MiB/s"),
            ("sequential read, warm (same connection)", "read_warm_mibs", "MiB/s"),
            ("sequential read, cold (new connection)", "read_cold_mibs", "MiB/s"),
            (f"create {a.files} small files (write_bytes)", "create_ops", "files/s"),
            (f"stat {a.files} files", "stat_ops", "files/s"),
            (f"delete {a.files} files", "delete_ops", "files/s"),
            (f"create {a.files} small files (one write_many)", "batch_create_ops", "files/s"),
            ("write of compressible data, threads=1", "compress_write_t1_mibs", "MiB/s"),
            ("write of compressible data, threads=8", "compress_write_t8_mibs", "MiB/s"),
            ("BLAKE3 hashing of 4 MiB blocks, 1 thread", "hash_t1_mibs", "MiB/s"),
            ("BLAKE3 hashing of 4 MiB blocks, 8 threads", "hash_t8_mibs", "MiB/s"),
        ]
        lines = [
            f"nexusfs {nexusfs.__version__} API benchmark — {a.size_mib} MiB file, {a.files} small files, "
            f"{a.repeat} run(s) (median), 4 MiB blocks, zstd; {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}, {platform.machine()}",
            "",
            "| workload | result | unit |",
            "|---|---:|---|",
        ]
        for label, key, unit in rows:
            if key in self.results:
                v = self.median(key)
                lines.append(f"| {label} | {v:,.0f} | {unit} |")
        if "compress_write_t1_mibs" in self.results:
            s1 = self.median("compress_write_t8_mibs") / self.median("compress_write_t1_mibs")
            s2 = self.median("hash_t8_mibs") / self.median("hash_t1_mibs")
            lines.append(f"| speed-up threads=8 / threads=1: write+compress | {s1:.2f} | × |")
            lines.append(f"| speed-up 8 / 1 threads: hashing alone | {s2:.2f} | × |")
        lines += ["", *[f"* {n}" for n in self.notes]]
        lines.append(f"* parallel speed-up is capped by the {os.cpu_count()} CPUs of this machine")
        return "\n".join(lines) + "\n"

    def run(self) -> str:
        try:
            for rep in range(self.args.repeat):
                self.big_file(rep)
                self.small_files(rep)
                self.parallelism(rep)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return self.table()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Benchmark the nexusfs Python API.")
    ap.add_argument("--size-mib", type=int, default=256, help="size of the big file (default 256)")
    ap.add_argument("--files", type=int, default=2000, help="number of small files (default 2000)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per workload; the median is shown")
    ap.add_argument("--out", default=os.path.join(REPO, "bench-results"),
                    help="directory for bench_api.md (default bench-results/)")
    ap.add_argument("--tmp", default=None, help="where the scratch stores go (default: system temp)")
    args = ap.parse_args(argv)
    if args.size_mib < 1 or args.files < 1 or args.repeat < 1:
        ap.error("--size-mib, --files and --repeat must be positive")
    table = Bench(args).run()
    print(table)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "bench_api.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(table)
    log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
