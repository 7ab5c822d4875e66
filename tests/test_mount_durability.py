"""The durability contract through the mount, seen in a syscall trace of the mount process.

``strace -f`` attached to the running mount records (with wall-clock timestamps, and the path
of every descriptor) the blob writes, renames, directory creations and syncs, and SQLite's
writes to its log. The test process, not traced, notes the wall clock around each of its own
calls. For each call the contract covers (README, "the durability contract"):

* fsync of a file: every blob the mount wrote for the file is fsync'd, renamed into place,
  its directory fsync'd (and a new blob directory's parent fsync'd), all before the last
  write to the metadata log; then the log is fsync'd — all before the client's fsync returned;
* fsync of a directory after a rename in it: the rename's commit is written to the log and
  the log fsync'd before the client's fsync returned;
* close after writing without fsync: the blobs are durable (as above) before the commit,
  and the commit is written before close returned (visible to other processes at once; the
  log is synced by the next fsync, sync or unmount).

Only syscalls are looked at, not the product's functions, so a new write path (slices
instead of blocks) keeps these checks meaningful.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from dataclasses import dataclass

import pytest

from tests.mountutil import MountedStore
from tests.needs import need_mount, need_tool

pytestmark = pytest.mark.mount

BLOCK = 64 * 1024
BIG = os.urandom(3 * BLOCK + 5000)  # four blocks zstd cannot shrink
SYSCALLS = "fsync,fdatasync,rename,renameat,renameat2,mkdir,mkdirat,pwrite64,write"

# 1700000000.123456 fsync(7</path/x>) = 0 <0.000123>   (-ff: one file per thread, no pid column)
_LINE = re.compile(r"^(\d+\.\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+).*<(\d+\.\d+)>\s*$")
_FD = re.compile(r"^-?\d+<([^>]*)>")
_STR = re.compile(r'"((?:[^"\\]|\\.)*)"')


@dataclass
class Call:
    ts: float  # when the call began
    end: float  # when it returned
    name: str  # "fsync" (fdatasync too), "rename", "mkdir", "write"
    path: str  # fsync/write: the descriptor's path; rename: the new name; mkdir: the directory
    src: str = ""  # rename: the old name


def parse_trace(prefix: str) -> list[Call]:
    """The calls in ``prefix.TID`` files (strace -ff), in the order they began."""
    calls = []
    d, base = os.path.split(prefix)
    for fname in os.listdir(d):
        if not fname.startswith(base + "."):
            continue
        with open(os.path.join(d, fname), encoding="utf-8", errors="replace") as f:
            for line in f:
                m = _LINE.match(line)
                if m is None or int(m.group(4)) < 0:
                    continue  # a failed call, or one the trace ended in
                ts, name, args = float(m.group(1)), m.group(2), m.group(3)
                end = ts + float(m.group(5))
                if name in ("fsync", "fdatasync", "pwrite64", "write"):
                    fd = _FD.match(args)
                    if fd:
                        calls.append(Call(ts, end, "fsync" if name.endswith("sync") else "write", fd.group(1)))
                elif name.startswith("rename"):
                    names = _STR.findall(args)
                    if len(names) == 2:
                        calls.append(Call(ts, end, "rename", names[1], names[0]))
                elif name.startswith("mkdir"):
                    names = _STR.findall(args)
                    if names:
                        calls.append(Call(ts, end, "mkdir", names[0]))
    calls.sort(key=lambda c: c.ts)
    return calls


class Traced:
    """A mount with strace attached to all its threads; the trace is read with ``calls()``."""

    def __init__(self, tmp_path) -> None:
        need_mount()
        self.strace = need_tool("strace")
        self.mount = MountedStore(str(tmp_path / "store"), str(tmp_path / "mnt"),
                                  settings=dict(block_size=BLOCK, semantic="false", background_indexing="false"))
        self.trace = str(tmp_path / "mount.strace")
        self.tracer: subprocess.Popen | None = None

    def start(self) -> Traced:
        self.mount.start()
        pid = self.mount.proc.pid
        self.tracer = subprocess.Popen(
            [self.strace, "-f", "-ff", "-ttt", "-T", "-y", "-qq", "-s", "0", "-e", "signal=none", "-e", f"trace={SYSCALLS}",
             "-o", self.trace, "-p", str(pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not self._all_traced(pid):  # every thread the mount has now is attached
            assert self.tracer.poll() is None, f"strace failed: {self.tracer.stderr.read().decode()}"
            assert time.monotonic() < deadline, "strace did not attach to the mount within 30 s"
            time.sleep(0.05)
        return self

    @staticmethod
    def _all_traced(pid: int) -> bool:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/status") as f:
                    tracer = next(ln for ln in f if ln.startswith("TracerPid:")).split()[1]
            except (FileNotFoundError, StopIteration):
                continue
            if tracer == "0":
                return False
        return True

    def calls(self) -> list[Call]:
        """Everything traced so far (strace writes each line as the syscall returns)."""
        return parse_trace(self.trace)

    def stop(self) -> int:
        try:
            if self.tracer is not None and self.tracer.poll() is None:
                self.tracer.terminate()  # detaches from the mount, which goes on
                self.tracer.wait(timeout=30)
        finally:
            rc = self.mount.stop()
        return rc


@pytest.fixture
def traced(tmp_path):
    t = Traced(tmp_path)
    try:
        yield t.start()
    finally:
        t.stop()


def client_call(fn) -> tuple[float, float]:
    """Run ``fn``; the wall clock just before it and just after it returned."""
    t0 = time.time()
    fn()
    return t0, time.time()


def traced_until(t: Traced, t1: float) -> list[Call]:
    """The mount's calls that began by ``t1``. All that returned before the client's call did
    are in the trace already: strace writes a call's line when it stops the thread at the
    call's exit, before the thread goes on to answer the client."""
    return [c for c in t.calls() if c.ts <= t1]


def is_log(path: str) -> bool:
    return path.endswith("-wal") or path.endswith("-journal") or path.endswith(".db")


def check_blobs_before_commit(calls: list[Call], t0: float, t1: float, blob_root: str) -> int:
    """Blobs renamed into place in [t0, t1]: each fsync'd before its rename, its directory
    fsync'd after it, new blob directories synced in their parents, all before the last
    metadata write in the window. Returns the index of that write."""
    window = [c for c in calls if t0 <= c.ts <= t1]
    renames = [(i, c) for i, c in enumerate(window) if c.name == "rename" and c.path.startswith(blob_root + "/")]
    assert renames, "no blob was written during the call: the test does not exercise the blob path"
    log_writes = [i for i, c in enumerate(window) if c.name == "write" and is_log(c.path)]
    assert log_writes, "the mount wrote no metadata during the call"
    last_commit = log_writes[-1]
    for i, c in renames:
        synced = [d for d in window[:i] if d.name == "fsync" and d.path == c.src and d.end <= c.ts]
        assert synced, f"blob {os.path.basename(c.path)} was renamed into place without an fsync of its data"
        d = next((j for j in range(i + 1, len(window)) if window[j].name == "fsync"
                  and window[j].path == os.path.dirname(c.path)), None)
        assert d is not None, f"the directory of blob {os.path.basename(c.path)} was not fsync'd after its rename"
        assert window[d].end <= window[last_commit].ts, \
            f"blob {os.path.basename(c.path)} became durable only after the metadata commit"
    for i, c in enumerate(window):
        if c.name == "mkdir" and c.path.startswith(blob_root + "/"):
            p = next((j for j in range(i + 1, len(window)) if window[j].name == "fsync"
                      and window[j].path == os.path.dirname(c.path)), None)
            assert p is not None, f"new blob directory {c.path} was not made durable in its parent"
            assert window[p].end <= window[last_commit].ts, \
                f"new blob directory {c.path} became durable only after the commit"
    return last_commit


def check_log_synced(calls: list[Call], t0: float, t1: float) -> None:
    """Every metadata write in [t0, t1] is followed by a sync of that file before t1."""
    window = [c for c in calls if t0 <= c.ts <= t1]
    writes = [i for i, c in enumerate(window) if c.name == "write" and is_log(c.path)]
    assert writes, "the mount wrote no metadata during the call"
    for i in writes:
        path = window[i].path
        assert any(c.name == "fsync" and c.path == path and c.ts >= window[i].end for c in window[i + 1:]), \
            f"metadata written to {os.path.basename(path)} was not synced before the client's call returned"


def blob_root(t: Traced) -> str:
    return os.path.join(t.mount.home, "blobs")


def test_file_fsync_through_the_mount(traced):
    fd = os.open(traced.mount.path("big"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        t0 = time.time()
        os.write(fd, BIG)
        _, t1 = client_call(lambda: os.fsync(fd))
    finally:
        os.close(fd)
    calls = traced_until(traced, t1)
    check_blobs_before_commit(calls, t0, t1, blob_root(traced))
    check_log_synced(calls, t0, t1)


def test_directory_fsync_through_the_mount(traced):
    os.mkdir(traced.mount.path("d"))
    with open(traced.mount.path("d", "tmp"), "wb") as f:
        f.write(b"small")
        f.flush()
        os.fsync(f.fileno())
    t0 = time.time()
    os.rename(traced.mount.path("d", "tmp"), traced.mount.path("d", "final"))
    dfd = os.open(traced.mount.path("d"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        _, t1 = client_call(lambda: os.fsync(dfd))
    finally:
        os.close(dfd)
    check_log_synced(traced_until(traced, t1), t0, t1)


def test_close_without_fsync_through_the_mount(traced):
    t0 = time.time()
    fd = os.open(traced.mount.path("closed"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, BIG)
    _, t1 = client_call(lambda: os.close(fd))
    check_blobs_before_commit(traced_until(traced, t1), t0, t1, blob_root(traced))
