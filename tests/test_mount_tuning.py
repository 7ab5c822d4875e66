"""Process tuning the mount does before serving (mount/runner.py): splice for libfuse,
glibc keeping freed request memory."""

from __future__ import annotations

import ctypes
import os

import pytest

from mount import pipelimit, runner


@pytest.fixture
def pipe_max(tmp_path, monkeypatch):
    path = tmp_path / "pipe-max-size"
    path.write_text("1048576\n")
    monkeypatch.setattr(pipelimit, "PIPE_MAX_SIZE", str(path))
    monkeypatch.setattr(pipelimit, "STATE_DIR", str(tmp_path / "run"))
    monkeypatch.setattr(pipelimit.os, "getuid", lambda: 0)
    return path


def _pipes_limited(monkeypatch) -> list[int]:
    """Make growing a pipe fail as it does for root without CAP_SYS_RESOURCE."""
    asked: list[int] = []

    def fake_fcntl(fd, cmd, arg=0):
        if cmd == pipelimit.fcntl.F_SETPIPE_SZ:
            asked.append(arg)
            raise PermissionError(1, "Operation not permitted")
        return 0

    monkeypatch.setattr(pipelimit.fcntl, "fcntl", fake_fcntl)
    return asked


def _as_mount(monkeypatch, holder: str) -> None:
    """Act as the mount process ``holder`` ('pid:start')."""
    monkeypatch.setattr(pipelimit, "_me", lambda: holder)


def test_root_raises_a_low_pipe_limit_so_libfuse_can_splice(pipe_max, monkeypatch, caplog):
    asked = _pipes_limited(monkeypatch)
    with caplog.at_level("INFO", logger="nexusfs.mount"):
        assert pipelimit.allow_splice()
    assert asked == [pipelimit.SPLICE_PIPE_BYTES]
    assert pipe_max.read_text() == str(pipelimit.SPLICE_PIPE_BYTES)
    assert "pipe-max-size from 1048576 to 2097152" in caplog.text
    assert "the last nexusfs mount to end puts 1048576 back" in caplog.text
    with caplog.at_level("INFO", logger="nexusfs.mount"):
        pipelimit.release_splice()
    assert pipe_max.read_text() == "1048576"
    assert "put fs.pipe-max-size back to 1048576 bytes" in caplog.text
    assert not os.path.exists(pipelimit._state_path())


def test_the_limit_stays_raised_while_another_mount_relies_on_it(pipe_max, monkeypatch):
    _pipes_limited(monkeypatch)
    dead: set[str] = set()
    monkeypatch.setattr(pipelimit, "_alive", lambda h: h not in dead)
    _as_mount(monkeypatch, "101:1")
    assert pipelimit.allow_splice()  # raises it
    # a second mount starts: pipes can grow now (the limit is raised), and it relies on that
    monkeypatch.setattr(pipelimit, "_can_grow_pipe", lambda: True)
    _as_mount(monkeypatch, "102:1")
    assert pipelimit.allow_splice()
    _as_mount(monkeypatch, "101:1")
    pipelimit.release_splice()  # the first ends: the second still needs it
    assert pipe_max.read_text() == "2097152"
    _as_mount(monkeypatch, "103:1")
    assert pipelimit.allow_splice()  # a third starts, then the second crashes
    dead.add("102:1")
    pipelimit.release_splice()  # the third ends, the crashed one no longer counts
    assert pipe_max.read_text() == "1048576"


def test_a_limit_changed_by_someone_else_is_left_alone(pipe_max, monkeypatch, caplog):
    _pipes_limited(monkeypatch)
    assert pipelimit.allow_splice()
    pipe_max.write_text("4194304\n")  # an administrator's choice, after the raise
    with caplog.at_level("INFO", logger="nexusfs.mount"):
        pipelimit.release_splice()
    assert pipe_max.read_text() == "4194304\n"
    assert "left fs.pipe-max-size at 4194304 bytes" in caplog.text


def test_a_higher_pipe_limit_is_left_alone(pipe_max, monkeypatch):
    _pipes_limited(monkeypatch)
    pipe_max.write_text("8388608\n")
    assert not pipelimit.allow_splice()
    assert pipe_max.read_text() == "8388608\n"


def test_nothing_changes_when_pipes_can_grow_already(pipe_max, monkeypatch):
    monkeypatch.setattr(pipelimit.fcntl, "fcntl", lambda fd, cmd, arg=0: arg)
    assert not pipelimit.allow_splice()
    pipelimit.release_splice()
    assert pipe_max.read_text() == "1048576\n"


def test_an_ordinary_user_changes_nothing(pipe_max, monkeypatch):
    asked = _pipes_limited(monkeypatch)
    monkeypatch.setattr(pipelimit.os, "getuid", lambda: 1000)
    assert not pipelimit.allow_splice()
    assert asked == [] and pipe_max.read_text() == "1048576\n"


def test_an_unwritable_limit_is_not_an_error(pipe_max, monkeypatch):
    _pipes_limited(monkeypatch)
    missing = pipe_max.parent / "missing" / "pipe-max-size"
    monkeypatch.setattr(pipelimit, "PIPE_MAX_SIZE", str(missing))
    assert not pipelimit.allow_splice()  # logs at debug level and goes on
    assert not missing.exists()


def test_glibc_is_told_to_serve_requests_from_the_heap_and_keep_freed_memory(monkeypatch):
    calls: list[tuple[int, int]] = []

    class FakeLibc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: FakeLibc())
    runner._keep_freed_memory()
    assert calls == [(runner._M_MMAP_THRESHOLD, 8 << 20), (runner._M_TRIM_THRESHOLD, runner.KEEP_FREED_BYTES)]



@pytest.mark.mount
def test_two_mounts_at_once_put_the_host_pipe_limit_back(tmp_path):
    """On the real host: the first mount raises fs.pipe-max-size, it stays raised while any
    mount is up, and the last to end puts back what was there before."""
    from tests import needs
    from tests.mountutil import MountedStore

    needs.need_mount()
    needs.need_root("to change fs.pipe-max-size")
    with open(pipelimit.PIPE_MAX_SIZE, encoding="ascii") as f:
        found = f.read().strip()
    low = 1 << 20  # the kernel's default
    mounts = [MountedStore(str(tmp_path / f"s{i}"), str(tmp_path / f"m{i}")) for i in range(2)]
    try:
        with open(pipelimit.PIPE_MAX_SIZE, "w", encoding="ascii") as f:
            f.write(str(low))
        # root with CAP_SYS_RESOURCE grows pipes past any limit: then nothing needs raising
        raised = pipelimit.SPLICE_PIPE_BYTES if not pipelimit._can_grow_pipe() else low

        def limit() -> int:
            with open(pipelimit.PIPE_MAX_SIZE, encoding="ascii") as f:
                return int(f.read())

        mounts[0].start()
        assert limit() == raised
        if raised != low:  # this mount raised it (not another process meanwhile)
            assert f"raised fs.pipe-max-size from {low} to {raised} bytes" in mounts[0].log_tail()
        mounts[1].start()
        assert limit() == raised
        assert mounts[0].stop() == 0
        assert limit() == raised  # the second mount still relies on it
        assert mounts[1].stop() == 0
        assert limit() == low, mounts[1].log_tail()
        if raised != low:
            assert f"put fs.pipe-max-size back to {low} bytes" in mounts[1].log_tail()
    finally:
        for m in mounts:
            m.stop()
        with open(pipelimit.PIPE_MAX_SIZE, "w", encoding="ascii") as f:
            f.write(found)
