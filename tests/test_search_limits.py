"""What no query through ``.search/`` may do to the mount or to other users.

* A runaway regular expression stalls no other request, ends when its reader goes away
  (the mount can then be unmounted at once) or at ``search_timeout``, with the reason in
  the query directory's ``.error``.
* Names show only to callers who could list every directory on their path; files a
  caller cannot read are never read for them.
* Results have a size limit (``search_results_max``) and odd queries get the errno a
  name would get.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading

import pytest

from tests.conftest import _start_mount
from tests.mount_helpers import NOBODY, as_user, errno_of
from tests.mountutil import wait_until
from tests.test_search_matcher import EVIL, EVIL_LINE, matcher_children, running

pytestmark = pytest.mark.mount


def q(query: str) -> str:
    return query.replace("%", "%25").replace("/", "%2F")


def qdir(d: str, kind: str, query: str) -> str:
    return os.path.join(d, ".search", kind, q(query))


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write(path: str, data: bytes, mode: int = 0o644) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    """A mount whose queries stop after 2 s and whose results may hold 256 KiB."""
    m = _start_mount(tmp_path_factory, "limited",
                     settings={"semantic": False, "search_timeout": "2s", "search_results_max": "256KiB"})
    try:
        yield m
    finally:
        m.stop()


@pytest.fixture
def ldir(limited, request):
    path = limited.path(request.node.name[:100])
    os.mkdir(path)
    os.chmod(path, 0o777)
    return path


def test_a_runaway_regex_stalls_nobody_and_ends_with_its_reader(tmp_path_factory):
    m = _start_mount(tmp_path_factory, "runaway", settings={"semantic": False, "search_timeout": "10m"})
    try:
        d = m.path("d")
        write(os.path.join(d, "evil.txt"), EVIL_LINE)
        write(os.path.join(d, "other.txt"), b"hello\n")
        # (it changes into d before it drops privileges: pytest's temporary directories are 0700)
        reader = subprocess.Popen(["cat", os.path.join(qdir(".", "grep", EVIL), ".results")], cwd=d,
                                  user=NOBODY, group=NOBODY, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            busy = lambda: any(running(p) for p in matcher_children(m.proc.pid))  # noqa: E731
            assert wait_until(busy, 30), (reader.poll(), m.log_tail())
            # everyone else's requests are answered while it runs
            for i in range(50):
                assert sorted(os.listdir(d)) == ["evil.txt", "other.txt"]
                assert read(os.path.join(d, "other.txt")) == b"hello\n"
                write(os.path.join(d, f"new{i % 5}.txt"), b"x\n")
                os.unlink(os.path.join(d, f"new{i % 5}.txt"))
            assert read(os.path.join(qdir(d, "grep", "hel+o"), ".results")) == b"other.txt:1:hello\n"
            assert reader.poll() is None  # ... and the runaway query is still running
        finally:
            reader.kill()
            reader.wait()
        # the query ends with its reader: its worker is killed, the reason is logged
        assert wait_until(lambda: "reader went away" in m.log_tail(), 10), m.log_tail()
        assert wait_until(lambda: not busy(), 10)
        # and nothing holds the mount any more
        umount = subprocess.run(["fusermount3", "-u", m.mountpoint], capture_output=True, text=True)
        assert umount.returncode == 0, umount.stderr
        assert m.stop() == 0
    finally:
        m.stop()


def test_a_query_that_runs_out_of_time_says_so(ldir):
    write(os.path.join(ldir, "evil.txt"), EVIL_LINE)
    d = qdir(ldir, "grep", EVIL)
    assert errno_of(read, os.path.join(d, ".results")) == errno.ETIMEDOUT
    assert errno_of(os.listdir, d) == errno.ETIMEDOUT
    reason = read(os.path.join(d, ".error")).decode()
    assert "grep stopped after 2 s (search_timeout)" in reason and reason.endswith("\n")


def test_files_the_caller_cannot_read_are_not_even_read(ldir):
    """The private file would take hours to match: for a caller who may not read it, the
    query never looks at it (for root, it runs into the time limit)."""
    write(os.path.join(ldir, "private.txt"), EVIL_LINE, 0o600)
    write(os.path.join(ldir, "public.txt"), b"xyzaa\n", 0o644)
    res = as_user(read, os.path.join(qdir(".", "grep", EVIL), ".results"), cwd=ldir, timeout=120)
    assert res == b"public.txt:1:xyzaa\n"
    assert errno_of(read, os.path.join(qdir(ldir, "grep", EVIL), ".results")) == errno.ETIMEDOUT


def test_execute_only_directories_hide_their_names(ldir):
    drop = os.path.join(ldir, "dropbox")
    write(os.path.join(drop, "secret-name.txt"), b"needle one\n", 0o600)
    write(os.path.join(drop, "readable.txt"), b"needle two\n", 0o644)
    write(os.path.join(drop, "sub", "deep.txt"), b"needle three\n", 0o644)
    os.chmod(os.path.join(drop, "sub"), 0o755)
    os.chmod(drop, 0o711)
    write(os.path.join(ldir, "open", "shown.txt"), b"needle four\n", 0o644)

    def look(scope: str):
        out = {}
        for kind, query in (("glob", "**"), ("glob", "*"), ("grep", "needle"), ("grep-i", "NEEDLE")):
            d = qdir(scope, kind, query)
            out[kind, query] = (sorted(os.listdir(d)), read(os.path.join(d, ".results")).decode())
        return out

    # as nobody: from the directory above, and from inside the execute-only one
    above = as_user(look, ".", cwd=ldir)
    assert above["glob", "**"][1].splitlines() == ["dropbox", "open", "open/shown.txt"]
    assert above["glob", "*"][1].splitlines() == ["dropbox", "open"]
    assert above["grep", "needle"] == ([".results", "open%2Fshown.txt"], "open/shown.txt:1:needle four\n")
    assert above["grep-i", "NEEDLE"] == above["grep", "needle"]
    inside = as_user(look, ".", cwd=drop)
    assert all(found == ([".results"], "") for found in inside.values()), inside
    # the kernel still lets nobody open a file whose name it knows
    assert as_user(read, "dropbox/readable.txt", cwd=ldir) == b"needle two\n"
    # root sees everything
    assert read(os.path.join(qdir(drop, "grep", "needle"), ".results")).decode().splitlines() == [
        "readable.txt:1:needle two", "secret-name.txt:1:needle one", "sub/deep.txt:1:needle three"]


def test_results_have_a_size_limit(ldir):
    write(os.path.join(ldir, "big.txt"), b"".join(b"line %06d of a large file\n" % i for i in range(40000)))
    d = qdir(ldir, "grep", "line")
    assert errno_of(read, os.path.join(d, ".results")) == errno.EFBIG
    assert "search_results_max" in read(os.path.join(d, ".error")).decode()
    # under the limit, results are whole (this one spills out of memory into a temporary file)
    got = read(os.path.join(qdir(ldir, "grep", "^line 00[0-4]"), ".results"))
    assert got == b"".join(b"big.txt:%d:line %06d of a large file\n" % (i + 1, i) for i in range(5000))


@pytest.mark.parametrize("kind, name, err, reason", [
    ("grep", "(unclosed", errno.EINVAL, "missing ), unterminated subpattern"),
    ("grep", "(?:x){4294967295}", errno.EINVAL, "a repeat count is too large"),
    ("grep", "a%00b", errno.EINVAL, "cannot contain a NUL byte"),
    ("grep-i", "a{2,1}", errno.EINVAL, "min repeat greater than max repeat"),
    ("glob", "%2F", errno.EINVAL, ""),
    ("semantic", "%20%20", errno.EINVAL, "empty search query"),
])
def test_a_failed_query_gives_its_errno_and_reason(ldir, limited, kind, name, err, reason):
    d = os.path.join(ldir, ".search", kind, name)
    assert errno_of(os.listdir, d) == err
    assert errno_of(read, os.path.join(d, ".results")) == err
    text = read(os.path.join(d, ".error")).decode()
    assert reason in text and text.count("\n") == 1
    if reason:
        assert reason in limited.log_tail(200)


def test_query_names_are_names(ldir):
    grep = os.path.join(ldir, ".search", "grep")
    assert errno_of(os.listdir, os.path.join(grep, "x" * 256)) == errno.ENAMETOOLONG
    assert os.listdir(os.path.join(grep, "x" * 255)) == [".results"]


def test_search_itself_cannot_be_moved_or_removed(ldir):
    s = os.path.join(ldir, ".search")
    assert errno_of(os.rename, s, os.path.join(ldir, "x")) == errno.EROFS
    assert errno_of(os.rmdir, s) == errno.EROFS
    assert errno_of(os.rename, os.path.join(s, "grep"), os.path.join(ldir, "y")) == errno.EROFS
    assert os.listdir(ldir) == []


def test_results_are_never_missing_while_the_store_changes(ldir):
    write(os.path.join(ldir, "a.txt"), b"needle\n")
    stop = threading.Event()

    def writer():
        i = 0
        while not stop.is_set():
            write(os.path.join(ldir, "w", f"{i % 20}.txt"), b"other %d\n" % i)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(200):
            assert read(os.path.join(qdir(ldir, "grep", "needle"), ".results")) == b"a.txt:1:needle\n"
    finally:
        stop.set()
        t.join()
