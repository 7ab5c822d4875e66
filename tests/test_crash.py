"""Crash consistency with real process kills.

A child process writes a sequence of files through the API and prints one line
per file once it is closed (acknowledged). The test SIGKILLs it at random
points and at chosen ones (between blob upload and metadata commit, in the
middle of a blob upload), then checks in a fresh process view of the store:

* fsck (verify_data) finds no damage: interrupted uploads, and the temporary
  file of an interrupted blob write, are garbage for gc;
* every acknowledged file has exactly its content, the file being written when
  the kill came is absent, empty or complete, and an atomically replaced file
  (write temp + rename) has its old or its new content;
* gc(grace=0) removes the leftovers, after which fsck is completely clean and
  the store keeps working.
"""

from __future__ import annotations

import hashlib
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field

import pytest

import nexusfs

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")

SETTINGS = dict(block_size=64 * 1024, inline_max=1024, cache_size=1 << 20, dirty_limit=1 << 20)

CHILD = textwrap.dedent(
    """
    import hashlib, os, random, sys, time

    import nexusfs
    from nexusfs.meta.engine import MetadataEngine

    home, run, seed, hook, nth = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
    settings = eval(sys.argv[6])

    def say(*words):
        sys.stdout.write(" ".join(str(w) for w in words) + "\\n")
        sys.stdout.flush()

    if hook == "commit":
        # stop between blob upload and metadata commit of the nth file with blocks
        orig_commit = MetadataEngine.commit_content
        seen = [0]

        def commit_content(self, ino, **kw):
            if kw.get("inline") is None and kw.get("changed"):
                seen[0] += 1
                if seen[0] == nth:
                    say("about-to-commit", ino)
                    time.sleep(600)
            return orig_commit(self, ino, **kw)

        MetadataEngine.commit_content = commit_content
    elif hook == "put":
        # stop in the middle of the nth blob upload: temp file written, not yet renamed
        orig_rename = os.rename
        puts = [0]

        def rename(src, dst, *a, **k):
            if os.path.basename(str(src)).startswith(".tmp-"):
                puts[0] += 1
                if puts[0] == nth:
                    say("mid-put")
                    time.sleep(600)
            return orig_rename(src, dst, *a, **k)

        os.rename = rename

    def content(name, size):
        rng = random.Random(name)
        kind = rng.random()
        if kind < 0.2:  # sparse: a hole, then data
            hole = size // 2
            return bytes(hole) + rng.randbytes(size - hole)
        if kind < 0.35:  # compressible
            return (name.encode() + b" line\\n") * (size // (len(name) + 6) + 1)
        return rng.randbytes(size)

    rng = random.Random(seed)
    nx = nexusfs.connect(home, **settings)
    nx.mkdir(f"/crash/{run}", parents=True, exist_ok=True)
    sizes = [0, 5, 900, 1025, 64 * 1024, 64 * 1024 + 1, 150_000, 300_000, 700_000]
    for i in range(10_000):
        path = f"/crash/{run}/f{i:04d}"
        data = content(f"{run}-{seed}-{i}", rng.choice(sizes))
        digest = hashlib.sha256(data).hexdigest()
        say("begin", path, digest)
        with nx.open(path, "wb") as f:
            for off in range(0, len(data), 50_000):
                f.write(data[off : off + 50_000])
        say("ack", path, digest)
        if i % 3 == 2:
            # replace a file atomically: write a temp file, then rename it over
            data = content(f"current-{run}-{seed}-{i}", rng.choice(sizes[3:]))
            digest = hashlib.sha256(data).hexdigest()
            say("begin-replace", "/crash/current", digest)
            nx.write_bytes(f"/crash/{run}/.tmp-current", data)
            nx.rename(f"/crash/{run}/.tmp-current", "/crash/current")
            say("ack", "/crash/current", digest)
        if i % 5 == 4:
            batch = {f"/crash/{run}/batch{i}/{k}": content(f"b-{run}-{seed}-{i}-{k}", rng.choice(sizes))
                     for k in range(3)}
            for p, d in batch.items():
                say("begin", p, hashlib.sha256(d).hexdigest())
            nx.write_many(batch)
            for p, d in batch.items():
                say("ack", p, hashlib.sha256(d).hexdigest())
    """
)


@dataclass
class Outcome:
    acked: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, str] = field(default_factory=dict)
    #: every version of /crash/current that may be there: last acked + one in progress
    current: set[str] = field(default_factory=set)
    current_acked: bool = False
    marker: str | None = None


class Child:
    def __init__(self, script: str, home: str, run: str, seed: int, hook: str = "none", nth: int = 0):
        self.proc = subprocess.Popen(
            [sys.executable, script, home, run, str(seed), hook, str(nth), repr(SETTINGS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []  # lines taken from the queue so far
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next_line(self, timeout: float = 60) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise AssertionError("the child printed nothing for a minute") from None
        if line is None:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the child exited early:\n{err}")
        self.seen.append(line)
        return line

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)

    def outcome(self, out: Outcome) -> Outcome:
        """Fold every line the child printed (until it died) into ``out``."""
        while True:
            try:
                line = self.lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
        for line in self.seen:
            words = line.split()
            if words[0] == "begin":
                out.in_flight[words[1]] = words[2]
            elif words[0] == "begin-replace":
                out.current.add(words[2])
            elif words[0] == "ack":
                if words[1] == "/crash/current":
                    out.current = {words[2]}
                    out.current_acked = True
                else:
                    out.in_flight.pop(words[1], None)
                    out.acked[words[1]] = words[2]
            else:
                out.marker = words[0]
        return out


@pytest.fixture
def child_script(tmp_path) -> str:
    path = tmp_path / "crash_child.py"
    path.write_text(CHILD)
    return str(path)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def run_until(child: Child, acks: int) -> None:
    n = 0
    while n < acks:
        if child.next_line().startswith("ack"):
            n += 1


def verify_after_crash(home: str, out: Outcome) -> dict[str, int]:
    """Check the store after the child was killed; return a few figures."""
    with nexusfs.connect(home, **SETTINGS) as nx:
        report = nx.fsck(verify_data=True)
        assert report.clean, [str(p) for p in report.problems]
        for path, digest in out.acked.items():
            assert sha(nx.read_bytes(path)) == digest, f"acknowledged {path} lost its content"
        for path, digest in out.in_flight.items():
            if nx.exists(path):
                data = nx.read_bytes(path)
                assert data == b"" or sha(data) == digest, f"{path} is torn"
        if nx.exists("/crash/current"):
            assert sha(nx.read_bytes("/crash/current")) in out.current
        else:
            assert not out.current_acked, "an acknowledged replacement was lost"
        info = nx.info()
        figures = {
            "pending": info.pending_objects,
            "unreferenced": info.unreferenced_objects,
            "temp_files": len(nx.store.blob_temp_files()),
        }
        nx.gc(grace=0)
        report = nx.fsck(verify_data=True)
        assert report.clean, [str(p) for p in report.problems]
        info = nx.info()
        assert info.pending_objects == 0 and info.unreferenced_objects == 0
        assert nx.store.blob_temp_files() == []
        # every blob on disk belongs to an object, and every object has its blob
        keys = {i.key for i in nx.store.blobs.list()}
        assert len(keys) == info.objects
        # the store still works after the crash
        nx.write_bytes("/after-crash", b"still works")
        assert nx.read_bytes("/after-crash") == b"still works"
        for path, digest in out.acked.items():
            assert sha(nx.read_bytes(path)) == digest
    return figures


# ------------------------------------------------------------------ tests
def test_kills_at_random_points(child_script, tmp_path):
    home = str(tmp_path / "store")
    rng = random.Random(20240601)
    out = Outcome()
    for run in range(5):
        child = Child(child_script, home, f"r{run}", seed=run)
        run_until(child, rng.randint(1, 12))
        time.sleep(rng.uniform(0.0, 0.3))  # then let it run on for a random moment
        child.kill()
        child.outcome(out)
        assert out.acked, "the child acknowledged nothing"
        verify_after_crash(home, out)


@pytest.mark.parametrize("nth", [1, 3, 6])
def test_kill_between_blob_upload_and_metadata_commit(child_script, tmp_path, nth):
    home = str(tmp_path / "store")
    child = Child(child_script, home, "c", seed=nth, hook="commit", nth=nth)
    while not child.next_line().startswith("about-to-commit"):
        pass
    child.kill()
    out = child.outcome(Outcome())
    figures = verify_after_crash(home, out)
    # the killed file's blocks were uploaded, never referenced: left for gc
    assert figures["pending"] + figures["unreferenced"] > 0
    with nexusfs.connect(home, **SETTINGS) as nx:
        for path in out.in_flight:
            if nx.exists(path):
                assert nx.stat(path).size == 0  # created, but its content was never committed


@pytest.mark.parametrize("nth", [1, 4])
def test_kill_in_the_middle_of_a_blob_upload(child_script, tmp_path, nth):
    home = str(tmp_path / "store")
    child = Child(child_script, home, "p", seed=10 + nth, hook="put", nth=nth)
    while not child.next_line().startswith("mid-put"):
        pass
    child.kill()
    out = child.outcome(Outcome())
    figures = verify_after_crash(home, out)
    assert figures["temp_files"] >= 1
    assert figures["pending"] >= 1  # reserved, its blob never finished


def test_repeated_crashes_on_one_store(child_script, tmp_path):
    home = str(tmp_path / "store")
    out = Outcome()
    hooks = [("commit", 2), ("none", 0), ("put", 3), ("commit", 1), ("none", 0)]
    for run, (hook, nth) in enumerate(hooks):
        child = Child(child_script, home, f"rep{run}", seed=100 + run, hook=hook, nth=nth)
        if hook == "none":
            run_until(child, 4 + run)
        else:
            marker = "about-to-commit" if hook == "commit" else "mid-put"
            while not child.next_line().startswith(marker):
                pass
        child.kill()
        child.outcome(out)
        verify_after_crash(home, out)
    assert len(out.acked) >= 5
