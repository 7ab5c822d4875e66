"""grep's matching in worker processes: a runaway pattern stalls nobody, stops at its time
limit or when its reader goes away, and never outlives the process that started it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading

import pytest

import nexusfs
from nexusfs.search.grep import GrepOptions
from nexusfs.search.matcher import MatcherPool, QueryGuard, SearchStopped, process_gone
from tests.mountutil import wait_until

#: Python's re needs ~4^(n/2) steps for this line and pattern: at 40, hours
EVIL_LINE = b"xyz" + b"a" * 40 + b"!\n"
EVIL = r"xyz(a+)+$"


def matcher_children(parent: int) -> list[int]:
    """The grep worker processes whose parent is ``parent``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2 :].split()[1])
        if ppid == parent and b"nexusfs.search.matcher" in cmd:
            out.append(int(entry))
    return out


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] == b"R"


@pytest.fixture
def pool():
    p = MatcherPool()
    try:
        yield p
    finally:
        p.close()


def test_lines_and_numbers_match_in_pieces(pool):
    units = [(b"foo\nbar\n", 1), (b"foo bar\nfoo\n", 3), (b"", 1), (b"nofoo", 1)]
    got = list(pool.match("^foo", GrepOptions(), units, QueryGuard()))
    assert got == [[(1, b"foo")], [(3, b"foo bar"), (4, b"foo")], [], []]
    # the workers are kept for the next query
    assert len(pool._idle) == pool.per_query and matcher_children(os.getpid())


def test_a_runaway_pattern_stops_at_the_time_limit_and_its_worker_is_killed(pool):
    with pytest.raises(SearchStopped) as exc:
        list(pool.match(EVIL, GrepOptions(), [(EVIL_LINE, 1)], QueryGuard(timeout=0.5, what="grep")))
    assert exc.value.errno == errno.ETIMEDOUT
    assert "stopped after 0.5 s (search_timeout)" in str(exc.value)
    # the worker that was matching is gone; the idle one stays
    assert wait_until(lambda: not any(running(p) for p in matcher_children(os.getpid())))
    assert pool._in_use == 0
    assert list(pool.match("a", GrepOptions(), [(b"a\n", 1)], QueryGuard())) == [[(1, b"a")]]


def test_a_query_ends_when_its_reader_goes_away(pool):
    reader = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    guard = QueryGuard(timeout=None, cancelled=lambda: process_gone(reader.pid))
    result: list[BaseException] = []

    def run():
        try:
            list(pool.match(EVIL, GrepOptions(), [(EVIL_LINE, 1)], guard))
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            result.append(exc)

    t = threading.Thread(target=run)
    t.start()
    assert wait_until(lambda: any(running(p) for p in matcher_children(os.getpid())))
    reader.kill()
    reader.wait()
    t.join(30)
    assert not t.is_alive()
    assert isinstance(result[0], SearchStopped) and result[0].errno == errno.EINTR


def test_matching_does_not_hold_this_process(tmp_path):
    """While a runaway pattern is matched, this process's other threads go on working:
    a thousand metadata calls finish while the grep is still running."""
    with nexusfs.connect(str(tmp_path / "s"), semantic=False, background_indexing=False) as nx:
        nx.write_bytes("/evil.txt", EVIL_LINE)
        nx.store.searcher.timeout = 120
        done = threading.Event()
        errors: list[BaseException] = []

        def grep():
            try:
                nx.grep(EVIL, "/")
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            done.set()

        t = threading.Thread(target=grep, daemon=True)
        t.start()
        assert wait_until(lambda: any(running(p) for p in matcher_children(os.getpid())), 30)
        for i in range(1000):
            nx.write_bytes(f"/f{i % 10}.txt", b"x")
            assert nx.stat(f"/f{i % 10}.txt").size == 1
        assert not done.is_set()  # the grep is still matching
        nx.store.searcher.close()  # kills its workers: the grep ends
        t.join(30)
        assert done.is_set() and isinstance(errors[0], SearchStopped)


def test_workers_die_with_their_process(tmp_path):
    """A worker busy with a runaway pattern goes when the process that started it dies
    (even by SIGKILL, with no chance to clean up)."""
    script = textwrap.dedent(f"""
        import os, sys, threading
        from nexusfs.search.matcher import MatcherPool, QueryGuard
        from nexusfs.search.grep import GrepOptions
        pool = MatcherPool(per_query=1)
        t = threading.Thread(target=lambda: list(pool.match({EVIL!r}, GrepOptions(), [({EVIL_LINE!r}, 1)],
                                                              QueryGuard())), daemon=True)
        t.start()
        print("started", flush=True)
        sys.stdin.read()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == b"started\n"
        assert wait_until(lambda: any(running(p) for p in matcher_children(proc.pid)), 30)
        workers = matcher_children(proc.pid)
        proc.kill()
        proc.wait()
        assert wait_until(lambda: all(process_gone(w) for w in workers), 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_api_grep_time_limit(tmp_path):
    with nexusfs.connect(str(tmp_path / "s"), semantic=False, background_indexing=False,
                         search_timeout="1s") as nx:
        nx.write_bytes("/evil.txt", EVIL_LINE)
        nx.write_bytes("/ok.txt", b"xyzaaa\n")
        with pytest.raises(SearchStopped) as exc:
            nx.grep(EVIL, "/")
        assert exc.value.errno == errno.ETIMEDOUT
        assert [str(m) for m in nx.grep(EVIL, "/ok.txt")] == ["/ok.txt:1:xyzaaa"]


@pytest.mark.parametrize("pattern, reason", [
    ("(?:x){4294967295}", "a repeat count is too large"),
    ("a\0b", "cannot contain a NUL byte"),
    ("(" * 1200 + ")" * 1200, "nested too deeply"),
])
def test_patterns_the_engine_cannot_compile_are_einval(nx, pattern, reason):
    nx.write_bytes("/a.txt", b"x\n")
    with pytest.raises(nexusfs.FsError) as exc:
        nx.grep(pattern, "/")
    assert exc.value.errno == errno.EINVAL
    assert reason in str(exc.value)


def test_where_no_worker_can_start_lines_are_matched_here(monkeypatch, caplog):
    """A user who cannot run this Python (an ordinary user, root's interpreter) still
    greps: in the calling process, with a warning that the time limit cannot apply."""
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    pool = MatcherPool()
    try:
        with caplog.at_level("WARNING", logger="nexusfs.search"):
            got = list(pool.match("b", GrepOptions(), [(b"a\nb\n", 1), (b"bb\n", 5)], QueryGuard()))
        assert got == [[(2, b"b")], [(5, b"bb")]]
        assert "cannot start a grep worker process (/nonexistent/python3)" in caplog.text
        assert pool._in_use == 0 and not matcher_children(os.getpid())
    finally:
        pool.close()
