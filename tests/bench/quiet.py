"""Helpers the mount benchmarks share: is the machine quiet, fio's command line and its JSON
output, and how many bytes a directory stores.

Pure parts (``idle_between``, ``parse_fio``, ``tree_bytes``) are tested in
tests/test_bench_workloads.py; the rest reads /proc or runs fio.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time

MiB = 1 << 20


# --------------------------------------------------------------------- CPU idle
def cpu_times(text: str | None = None) -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat's first line (or ``text``); idle
    counts iowait too (a CPU waiting for a disk is not busy computing)."""
    if text is None:
        with open("/proc/stat", encoding="ascii") as f:
            text = f.readline()
    fields = text.split()
    if not fields or fields[0] != "cpu":
        raise ValueError(f"not /proc/stat's cpu line: {text[:60]!r}")
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    vals = [int(x) for x in fields[1:9]]
    return vals[3] + vals[4], sum(vals)


def idle_between(before: tuple[int, int], after: tuple[int, int]) -> float:
    """Share of CPU time (0..1, all CPUs) spent idle between two cpu_times() samples."""
    d_total = after[1] - before[1]
    if d_total <= 0:
        return 1.0
    return max(0.0, min(1.0, (after[0] - before[0]) / d_total))


def sample_idle(seconds: float = 1.0) -> float:
    a = cpu_times()
    time.sleep(seconds)
    return idle_between(a, cpu_times())


def loadavg() -> float:
    with open("/proc/loadavg", encoding="ascii") as f:
        return float(f.read().split()[0])


def wait_quiet(min_idle: float = 0.9, timeout: float = 60.0, window: float = 1.0) -> dict[str, float | bool]:
    """Sync, then wait until the CPUs were at least ``min_idle`` idle over ``window`` seconds
    (or ``timeout`` passed). Returns what was seen, to be recorded beside the figure it
    precedes: ``idle`` (of the last window), ``waited_s``, ``load1`` and ``quiet``."""
    t0 = time.monotonic()
    os.sync()
    idle = sample_idle(window)
    while idle < min_idle and time.monotonic() - t0 < timeout:
        idle = sample_idle(window)
    return {"idle": round(idle, 3), "waited_s": round(time.monotonic() - t0, 2), "load1": loadavg(),
            "quiet": idle >= min_idle}


# --------------------------------------------------------------------- fio
def find_fio() -> str | None:
    return shutil.which("fio")


def fio_args(path: str, rw: str, *, size: str, bs: str = "1M", refill: bool = False,
             scramble: bool = True, end_fsync: bool = True) -> list[str]:
    """fio's arguments (after the binary) for one job on ``path``, JSON output.
    ``refill``: new random data for every write (unique blocks); ``scramble=False`` with
    ``refill=False``: one buffer written again and again (identical blocks; fio's default
    scrambles a few bytes of every 512 to defeat dedup)."""
    args = [f"--name={rw}", f"--filename={path}", f"--rw={rw}", f"--bs={bs}", f"--size={size}",
            "--ioengine=psync", "--fallocate=none", "--output-format=json"]
    if rw in ("write", "randwrite"):
        if end_fsync:
            args.append("--end_fsync=1")
        if refill:
            args.append("--refill_buffers")
        elif not scramble:
            args.append("--scramble_buffers=0")
    return args


def parse_fio(text: str) -> dict[str, dict[str, float]]:
    """fio's JSON (``--output-format=json``) -> {'read'|'write': {'bytes', 'seconds', 'mibs',
    'iops'}} summed over its jobs, only the directions that moved bytes. fio may print
    notes before the JSON ('fio: ...'): they are skipped. Raises ValueError if a job failed."""
    start = text.find("{")
    if start < 0:
        raise ValueError("no JSON in fio's output")
    data = json.loads(text[start:])
    out: dict[str, dict[str, float]] = {}
    for job in data.get("jobs", []):
        if job.get("error"):
            raise ValueError(f"fio job {job.get('jobname')!r} failed with error {job['error']}")
        for rw in ("read", "write"):
            d = job.get(rw) or {}
            nbytes = int(d.get("io_bytes", 0))
            if not nbytes:
                continue
            agg = out.setdefault(rw, {"bytes": 0.0, "seconds": 0.0, "iops": 0.0})
            agg["bytes"] += nbytes
            # jobs of one run overlap in time: the slowest one's runtime (ms) is the run's
            agg["seconds"] = max(agg["seconds"], d.get("runtime", 0) / 1000.0)
            agg["iops"] += float(d.get("iops", 0.0))
    for agg in out.values():
        agg["mibs"] = agg["bytes"] / MiB / agg["seconds"] if agg["seconds"] else 0.0
    return out


def run_fio(fio: str, args: list[str], timeout: float = 900) -> tuple[dict[str, dict[str, float]], float]:
    """Run fio; (parsed result, wall seconds including fio's start-up)."""
    t0 = time.perf_counter()
    res = subprocess.run([fio, *args], capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"fio failed ({res.returncode}): {(res.stderr or res.stdout).strip()[-600:]}")
    return parse_fio(res.stdout), wall


# --------------------------------------------------------------------- bytes stored
def tree_bytes(path: str) -> int:
    """Apparent size of every regular file under ``path`` (``du -sb`` without the
    directories' own sizes); a file counts once however many links it has; 0 if missing."""
    if os.path.isfile(path):
        return os.stat(path).st_size
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total
