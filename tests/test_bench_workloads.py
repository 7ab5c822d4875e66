"""The pure parts of the real-workload benchmark (tests/bench/bench_workloads.py and
tests/bench/quiet.py): reading fio's JSON, CPU idle from /proc/stat lines, the bytes each
target stores, fio's command lines and the ratio column. No mount, no fio, no JuiceFS, no
timing: the benchmark itself runs with ./run.sh bench."""

from __future__ import annotations

import json
import os

import pytest

from tests.bench import bench_workloads as bw
from tests.bench import quiet

MiB = 1 << 20


def fio_json(write_bytes: int = 256 * MiB, write_ms: int = 250, read_bytes: int = 0, read_ms: int = 0,
             error: int = 0, jobs: int = 1) -> str:
    """fio 3.33's --output-format=json, trimmed to the fields fio always writes and we read."""
    job = {"jobname": "write", "groupid": 0, "error": error,
           "read": {"io_bytes": read_bytes, "io_kbytes": read_bytes // 1024, "bw_bytes": 0, "iops": 0.0,
                    "runtime": read_ms},
           "write": {"io_bytes": write_bytes, "io_kbytes": write_bytes // 1024, "bw_bytes": 0, "iops": 256.0,
                     "runtime": write_ms},
           "trim": {"io_bytes": 0, "runtime": 0}}
    return json.dumps({"fio version": "fio-3.33", "jobs": [job] * jobs, "disk_util": []}, indent=2)


def test_parse_fio_write():
    out = quiet.parse_fio(fio_json(256 * MiB, 250))
    assert set(out) == {"write"}  # read moved no bytes
    assert out["write"]["bytes"] == 256 * MiB
    assert out["write"]["seconds"] == pytest.approx(0.25)
    assert out["write"]["mibs"] == pytest.approx(1024.0)


def test_parse_fio_read_after_notes():
    # fio prints notes such as a failed fallocate before its JSON
    text = "fio: native_fallocate call failed: Operation not supported\n" + fio_json(0, 0, 64 * MiB, 500)
    out = quiet.parse_fio(text)
    assert set(out) == {"read"}
    assert out["read"]["mibs"] == pytest.approx(128.0)


def test_parse_fio_jobs_of_one_run_add_bytes_not_time():
    out = quiet.parse_fio(fio_json(100 * MiB, 1000, jobs=2))
    assert out["write"]["bytes"] == 200 * MiB
    assert out["write"]["mibs"] == pytest.approx(200.0)


def test_parse_fio_failed_job_and_garbage():
    with pytest.raises(ValueError, match="error 5"):
        quiet.parse_fio(fio_json(error=5))
    with pytest.raises(ValueError):
        quiet.parse_fio("fio: no such file\n")


def test_fio_args_buffers():
    unique = quiet.fio_args("/m/f", "write", size="256M", refill=True)
    default = quiet.fio_args("/m/f", "write", size="256M")
    repeat = quiet.fio_args("/m/f", "write", size="256M", scramble=False)
    read = quiet.fio_args("/m/f", "read", size="256M")
    assert "--refill_buffers" in unique and "--scramble_buffers=0" not in unique
    assert "--refill_buffers" not in default and "--scramble_buffers=0" not in default
    assert "--scramble_buffers=0" in repeat and "--refill_buffers" not in repeat
    for args in (unique, default, repeat):
        assert "--end_fsync=1" in args and "--output-format=json" in args and "--bs=1M" in args
    assert "--end_fsync=1" not in read and "--rw=read" in read
    # a FUSE mount without fallocate would make fio write zeros first (glibc's fallback)
    assert all("--fallocate=none" in a for a in (unique, read))
    assert "--bs=4k" in quiet.fio_args("/m/f", "write", size="64M", bs="4k")


def test_idle_from_proc_stat_lines():
    # user nice system idle iowait irq softirq steal guest guest_nice
    a = quiet.cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\n")
    b = quiet.cpu_times("cpu  400 0 150 1100 50 0 0 0 0 0\n")
    assert a == (850, 1000)
    assert quiet.idle_between(a, b) == pytest.approx(300 / 700)
    # iowait counts as idle; no time passed: idle
    c = quiet.cpu_times("cpu  400 0 150 1100 150 0 0 0 0 0\n")
    assert quiet.idle_between(b, c) == pytest.approx(1.0)
    assert quiet.idle_between(b, b) == 1.0
    with pytest.raises(ValueError):
        quiet.cpu_times("cpu0 1 2 3 4 5 6 7 8\n")


def write(path, size: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x" * size)


def test_tree_bytes_counts_files_once(tmp_path):
    write(tmp_path / "a" / "one", 1000)
    write(tmp_path / "a" / "b" / "two", 234)
    os.link(tmp_path / "a" / "one", tmp_path / "a" / "b" / "hard")  # same file: once
    os.symlink(tmp_path / "a" / "one", tmp_path / "a" / "sym")        # not a file stored
    assert quiet.tree_bytes(str(tmp_path / "a")) == 1234
    assert quiet.tree_bytes(str(tmp_path / "a" / "one")) == 1000
    assert quiet.tree_bytes(str(tmp_path / "missing")) == 0


def test_stored_bytes_nexusfs(tmp_path):
    base = tmp_path / "nexusfs"
    write(base / "home" / "blobs" / "ab" / "abcdef", 4 * MiB)
    write(base / "home" / "blobs" / "cd" / "cdef01", MiB)
    write(base / "home" / "meta.db", 4096)
    write(base / "home" / "meta.db-wal", 1000)
    write(base / "home" / "mount.lock", 7)
    write(base / "mnt" / "ignored", 10)  # the (unmounted) mount point
    assert bw.stored_bytes("nexusfs", str(base)) == (5 * MiB, 5096)


def test_stored_bytes_juicefs_counts_chunks_only(tmp_path):
    base = tmp_path / "juicefs"
    write(base / "bucket" / "bench" / "chunks" / "0" / "0" / "1_0_4194304", 4 * MiB)
    write(base / "bucket" / "bench" / "chunks" / "0" / "0" / "2_0_1024", 1024)
    write(base / "bucket" / "bench" / "juicefs_uuid", 36)
    write(base / "bucket" / "bench" / "meta" / "dump-2026-12-07.json.gz", 5000)
    write(base / "cache" / "raw" / "chunks" / "x", 999)  # JuiceFS's local cache is not the store
    write(base / "meta.db", 8192)
    assert bw.stored_bytes("juicefs", str(base)) == (4 * MiB + 1024, 8192)


def test_stored_bytes_local(tmp_path):
    write(tmp_path / "data" / "app.log", 3_500_000)
    assert bw.stored_bytes("local", str(tmp_path), str(tmp_path / "data" / "app.log")) == (3_500_000, 0)
    assert bw.stored_bytes("local", str(tmp_path), "") == (0, 0)


def test_ratio_cell_direction_and_goal():
    res = {"nexusfs": {"append_s": [2.0, 1.9, 2.1], "fio_write_unique_mibs": [600.0],
                       "ls_s": [0.3], "append_stored": [670.0]},
           "juicefs": {"append_s": [0.25, 0.2, 0.22], "fio_write_unique_mibs": [1200.0],
                       "ls_s": [1.0], "append_stored": [10.0]}}
    slow = bw.ratio_cell("append_s", res)        # seconds: 2.0 / 0.22 — slower, goal missed
    assert slow.startswith("9.09") and slow.endswith("✗")
    half = bw.ratio_cell("fio_write_unique_mibs", res)  # MiB/s: 0.5 of JuiceFS's speed
    assert half.startswith("0.50 (0.50×") and half.endswith("✗")
    fast = bw.ratio_cell("ls_s", res)            # 3.3× as fast: meets the 2× goal
    assert fast.startswith("0.30 (3.33× as fast") and fast.endswith("✓")
    assert bw.ratio_cell("append_stored", res) == "67.00"  # bytes: a plain ratio, no goal
    assert bw.ratio_cell("sqlite_wal_s", res) == "–"
    # files nexusfs keeps inline in its metadata count: the ratio of bytes stored is of both
    res = {"nexusfs": {"small_stored": [0.0], "small_meta": [1.5]},
           "juicefs": {"small_stored": [1.0], "small_meta": [1.0]}}
    assert bw.ratio_cell("small_stored", res) == "0.75"


def test_render_has_every_measured_row():
    data = {"params": {"quick": False, "repeat": 3, "appends": 200, "line": 45, "base_mb": "3.5", "tx": 300,
                       "rows": 100, "ls": "10,000", "small": "10,000", "small_kib": "1", "fio": 256,
                       "fio4k": 64, "git_desc": "x", "min_idle": 0.9, "quiet_timeout": 60},
            "targets": ["nexusfs", "juicefs", "local"],
            "results": {"nexusfs": {"append_s": [1.0, 2.0, 3.0], "append_stored": [600.0],
                                    "append_meta": [0.5]},
                        "juicefs": {"append_s": [0.2]}, "local": {"append_s": [0.04]}},
            "quiet": {"append_s": [{"idle": 0.95, "waited_s": 1.0, "load1": 0.1, "quiet": True}]},
            "notes": ["n1"]}
    text = bw.render(data)
    lines = [ln for ln in text.splitlines() if ln.startswith("| ")]
    assert lines[0] == "| workload | unit | nexusfs | JuiceFS | local | nexusfs ÷ JuiceFS |"
    assert lines[1].startswith("| 200 × (append 45-byte line + fsync) to a 3.5 MB file | s | 2.00 (1.00–3.00) "
                               "| 0.20 | 0.04 | 10.00")
    assert lines[2].startswith("|   bytes stored after it | MiB | 600 + 0.50 meta | – | – |")
    assert len(lines) == 3 and "note: n1" in text and "median 95%" in text
    # 3.5 MB + 200 × 45 bytes written = 3.3465 MiB
    assert "nexusfs stores 179.29× the bytes written in blobs, 179.44× with its metadata" in text
