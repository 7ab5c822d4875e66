"""Crashes and signals: what fsync acknowledged survives a SIGKILL of the mount.

A writer process streams files and records to the mount, fsync'ing each one
and only then reporting it (through a pipe). The mount process is killed in
the middle of the stream. Afterwards the engine must find the store sound
(``fsck`` clean: interrupted uploads are garbage for gc, not damage), every
acknowledged byte must be there, and the store must mount again.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import nexusfs
from tests.mountutil import MountedStore

pytestmark = pytest.mark.mount

MiB = 1 << 20

WRITER = r"""
import hashlib, os, random, sys

d, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
MiB = 1 << 20
log = os.open(os.path.join(d, "records.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
stream = os.open(os.path.join(d, "stream.bin"), os.O_WRONLY | os.O_CREAT, 0o644)
dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
stream_hash = hashlib.sha256()
stream_len = 0
i = 0
while True:
    # a whole file: written to a temporary name, fsync'd, renamed into place, directory fsync'd
    data = rng.randbytes(rng.choice([0, 100, 5000, 9000, 70000, 300000, MiB + 3, 4 * MiB + 17]))
    name = f"f{i:05d}"
    tmp = os.path.join(d, name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
    os.close(fd)
    os.rename(tmp, os.path.join(d, name))
    os.fsync(dfd)
    # a record appended to a log
    digest = hashlib.sha256(data).hexdigest()
    os.write(log, f"record {i} {name} {digest}\n".encode())
    os.fsync(log)
    # a chunk of a stream that stays open all the time
    chunk = rng.randbytes(rng.choice([1000, 65536, 300000]))
    os.pwrite(stream, chunk, stream_len)
    os.fsync(stream)
    stream_len += len(chunk)
    stream_hash.update(chunk)
    print(i, name, digest, stream_len, stream_hash.hexdigest(), flush=True)
    i += 1
"""


def _read_acks(proc: subprocess.Popen, want: int, timeout: float) -> list[list[str]]:
    """Lines the writer printed (each one acknowledges fsync'd data); stops after ``want``."""
    acks: list[list[str]] = []
    buf = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while len(acks) < want and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            acks.append(line.decode().split())
    return acks


def _drain(proc: subprocess.Popen) -> list[list[str]]:
    out = proc.stdout.read() or b""
    return [ln.split() for ln in out.decode().splitlines() if ln.strip()]


#: (writer seed, records acknowledged before the kill); NEXUS_CRASH_CASES="seed:n,..." overrides
CRASH_CASES = [
    (int(a), int(b)) for a, _, b in
    (x.partition(":") for x in os.environ.get("NEXUS_CRASH_CASES", "21:30,22:7,23:1").split(","))
]
if not CRASH_CASES or any(after < 1 for _seed, after in CRASH_CASES):
    raise ValueError(f"NEXUS_CRASH_CASES={os.environ.get('NEXUS_CRASH_CASES')!r}: each case must wait for at "
                     "least one acknowledged record before the kill, or it checks nothing")


@pytest.mark.parametrize(("seed", "after"), CRASH_CASES)
def test_sigkill_mid_stream_loses_nothing_fsynced(mnt, seed, after):
    d = mnt.path("w")
    os.mkdir(d)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, d, str(seed)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL)
    try:
        acks = _read_acks(writer, want=after, timeout=120)
        assert len(acks) >= after, f"the writer made too little progress ({len(acks)} records)"
        mnt.kill()  # SIGKILL of the mount process, in the middle of the writer's stream
        try:
            writer.wait(timeout=60)  # its next system call on the dead mount fails
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()
        acks += _drain(writer)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
        writer.stdout.close()
    assert writer.returncode != 0, "the writer should have died with the mount"

    with nexusfs.connect(mnt.home) as nx:
        report = nx.fsck()
        assert report.clean, "fsck after a crash: " + "; ".join(map(str, report.problems))
        for _i, name, digest, _slen, _shash in acks:
            data = nx.read_bytes(f"/w/{name}")
            assert hashlib.sha256(data).hexdigest() == digest, f"{name} lost or damaged"
        log = nx.read_bytes("/w/records.log").decode()
        lines = log.splitlines()
        assert len(lines) >= len(acks)
        for (i, name, digest, _slen, _shash), line in zip(acks, lines, strict=False):
            assert line == f"record {i} {name} {digest}"
        stream = nx.read_bytes("/w/stream.bin")
        last_len, last_hash = int(acks[-1][3]), acks[-1][4]
        assert len(stream) >= last_len
        assert hashlib.sha256(stream[:last_len]).hexdigest() == last_hash
        nx.gc(grace=0)  # what the crash left (uploaded, never committed) is collected
        report = nx.fsck()
        assert report.clean, "; ".join(map(str, report.problems))

    # the same store mounts again and shows the data
    again = MountedStore(mnt.home, mnt.mountpoint)
    again.start()
    try:
        for _i, name, digest, _slen, _shash in acks:
            with open(os.path.join(d, name), "rb") as f:
                assert hashlib.sha256(f.read()).hexdigest() == digest
        names = set(os.listdir(d))
        assert {a[1] for a in acks} <= names
        with open(os.path.join(d, "after-crash"), "wb") as f:
            f.write(b"the store is writable again")
    finally:
        assert again.stop() == 0
    with nexusfs.connect(mnt.home) as nx:
        assert nx.read_bytes("/w/after-crash") == b"the store is writable again"
        assert nx.fsck().clean


def test_sigkill_while_idle_then_remount(mnt):
    """A crash with nothing in flight: everything closed before it is there, nothing is damaged."""
    os.makedirs(mnt.path("a", "b"))
    for i in range(50):
        with open(mnt.path("a", f"file{i}"), "wb") as f:
            f.write(os.urandom(i * 1000))
    os.symlink("a/file1", mnt.path("link"))
    with open(mnt.path("a", "b", "big"), "wb") as f:
        f.write(b"\x01" * (9 * MiB))
        os.fsync(f.fileno())
    mnt.kill()
    with nexusfs.connect(mnt.home) as nx:
        assert nx.fsck().clean
        assert len(nx.listdir("/a")) == 51
        assert nx.read_bytes("/a/b/big") == b"\x01" * (9 * MiB)
        assert nx.readlink("/link") == "a/file1"
    again = MountedStore(mnt.home, mnt.mountpoint).start()
    try:
        assert os.path.getsize(os.path.join(mnt.mountpoint, "a", "file49")) == 49000
    finally:
        assert again.stop() == 0


def _terminate(m: MountedStore, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
    """SIGTERM (or ``sig``) to the mount process; wait for it to finish writing out and exit."""
    return m.terminate(sig, timeout)


@pytest.mark.parametrize("cache", ["wb", "nowb"])
def test_sigterm_with_open_unflushed_file(start_mount, cache):
    m = start_mount(args=["--no-writeback-cache"] if cache == "nowb" else [])
    fds: list[int] = []
    try:
        with open(m.path("closed"), "wb") as f:
            f.write(b"closed before the signal")
        data = bytes(range(256)) * 20000  # ~5 MiB, more than one block
        fd = os.open(m.path("open"), os.O_WRONLY | os.O_CREAT, 0o644)
        fds.append(fd)
        os.write(fd, data)  # no close, no fsync
        rc = _terminate(m)
    finally:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass  # the mount is gone
    assert rc == 0, m.log_tail()
    with nexusfs.connect(m.home) as nx:
        report = nx.fsck()
        assert report.clean, "; ".join(map(str, report.problems))
        assert nx.read_bytes("/closed") == b"closed before the signal"
        assert nx.exists("/open")
        # what write() accepted is committed by the clean shutdown, also what the kernel
        # still held in its page cache (writeback cache): the mount writes it back first
        assert nx.read_bytes("/open") == data


def test_sigterm_with_unlinked_open_file(mnt):
    """A clean shutdown while a deleted file is still open leaves no orphan behind."""
    fd = os.open(mnt.path("doomed"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(5 * MiB))
        os.fsync(fd)
        os.unlink(mnt.path("doomed"))
        with open(mnt.path("kept"), "wb") as f:
            f.write(b"kept")
        rc = _terminate(mnt)
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    assert rc == 0, mnt.log_tail()
    with nexusfs.connect(mnt.home) as nx:
        report = nx.fsck()
        assert report.clean, "; ".join(map(str, report.problems))
        assert nx.listdir("/") == ["kept"]
        assert nx.info().files == 1


def test_sigkill_with_unlinked_open_file(mnt):
    """A crash leaves the deleted-but-open file behind as an orphan (the schema's one
    expected crash leftover besides unreferenced objects); the next mount removes it.
    (The unlink is made durable with an fsync of the directory: the mount commits
    namespace changes in groups, and a crash may lose the last few milliseconds of
    unsynced ones, as a journalling filesystem may.)"""
    fd = os.open(mnt.path("doomed"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, os.urandom(5 * MiB))
        os.fsync(fd)
        os.unlink(mnt.path("doomed"))
        dfd = os.open(mnt.path(""), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        mnt.kill()
    finally:
        try:
            os.close(fd)
        except OSError:
            pass
    with nexusfs.connect(mnt.home) as nx:
        report = nx.fsck()
        assert {p.check for p in report.problems} == {"orphans"}, "; ".join(map(str, report.problems))
        assert nx.listdir("/") == []
    again = MountedStore(mnt.home, mnt.mountpoint).start()
    try:
        assert os.listdir(mnt.mountpoint) == []
    finally:
        assert again.stop() == 0
    with nexusfs.connect(mnt.home) as nx:
        report = nx.fsck()
        assert report.clean, "; ".join(map(str, report.problems))
        assert nx.info().files == 0


def _claims(home: str) -> tuple[int, int]:
    """(jobs queued, jobs some indexer holds a lease on now), read beside the mount."""
    import apsw

    conn = apsw.Connection(os.path.join(home, "meta.db"), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        queued, claimed = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(claimed_until_ns > ?), 0) FROM index_jobs",
            (time.time_ns(),)).fetchone()
    finally:
        conn.close()
    return queued, claimed


@pytest.mark.parametrize("stop", ["sigterm", "sigint", "umount"])
def test_a_clean_stop_gives_back_the_index_jobs_it_claimed(mnt, stop):
    # a large text file first (indexing it takes a while), then small ones queued behind it
    with open(mnt.path("large.txt"), "wb") as f:
        for i in range(120_000):
            f.write(b"line %d of a large text that takes the indexer a while to read\n" % i)
    for i in range(12):
        with open(mnt.path(f"small{i}.txt"), "wb") as f:
            f.write(b"small file %d\n" % i)
    deadline = time.monotonic() + 60
    while _claims(mnt.home)[1] == 0:  # the indexer has taken a batch and works on it
        assert time.monotonic() < deadline, "the indexer never claimed anything"
        time.sleep(0.01)
    if stop == "umount":
        assert mnt.stop() == 0, mnt.log_tail()
    else:
        assert _terminate(mnt, signal.SIGTERM if stop == "sigterm" else signal.SIGINT) == 0, mnt.log_tail()
    queued, claimed = _claims(mnt.home)
    assert claimed == 0, f"{claimed} of {queued} queued jobs are still claimed after a clean stop"


#: the mount process, with the moment between mounting and serving stretched to a second
#: (``trio.run`` starts late), so that a signal surely lands there
_LATE_SERVING = """
import runpy, sys, time, trio
serve = trio.run
trio.run = lambda *a, **k: (time.sleep(1.0), serve(*a, **k))[1]
sys.argv = ["nexus mount", *sys.argv[1:]]
runpy.run_module("mount", run_name="__main__")
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_before_the_mount_is_served_unmounts_cleanly(tmp_path, sig):
    """Ctrl-C (or SIGTERM) that comes after the kernel has the mount but before the serving
    loop listens is acted on like any other: a clean unmount with exit status 0, not an
    interrupted process (status 130)."""
    from tests.mountutil import _is_mounted, force_unmount, log_problems, wait_until

    home, mnt = str(tmp_path / "store"), str(tmp_path / "mnt")
    os.mkdir(mnt)
    proc = subprocess.Popen([sys.executable, "-c", _LATE_SERVING, "--home", home, mnt, "--foreground"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: _is_mounted(mnt) or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(sig)
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert f"received {signal.Signals(sig).name}, unmounting" in err
        assert not log_problems(err)
        assert not _is_mounted(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        force_unmount(mnt)
