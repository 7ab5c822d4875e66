"""Process tuning the mount does before serving (mount/runner.py): splice for libfuse,
glibc keeping freed request memory."""

from __future__ import annotations

import ctypes

import pytest

from mount import runner


@pytest.fixture
def pipe_max(tmp_path, monkeypatch):
    path = tmp_path / "pipe-max-size"
    path.write_text("1048576\n")
    monkeypatch.setattr(runner, "PIPE_MAX_SIZE", str(path))
    monkeypatch.setattr(runner.os, "getuid", lambda: 0)
    return path


def _pipes_limited(monkeypatch) -> list[int]:
    """Make growing a pipe fail as it does for root without CAP_SYS_RESOURCE."""
    asked: list[int] = []

    def fake_fcntl(fd, cmd, arg=0):
        if cmd == runner.fcntl.F_SETPIPE_SZ:
            asked.append(arg)
            raise PermissionError(1, "Operation not permitted")
        return 0

    monkeypatch.setattr(runner.fcntl, "fcntl", fake_fcntl)
    return asked


def test_root_raises_a_low_pipe_limit_so_libfuse_can_splice(pipe_max, monkeypatch, caplog):
    asked = _pipes_limited(monkeypatch)
    with caplog.at_level("INFO", logger="nexusfs.mount"):
        runner._allow_splice()
    assert asked == [runner.SPLICE_PIPE_BYTES]
    assert pipe_max.read_text() == str(runner.SPLICE_PIPE_BYTES)
    assert "pipe-max-size from 1048576 to 2097152" in caplog.text


def test_a_higher_pipe_limit_is_left_alone(pipe_max, monkeypatch):
    _pipes_limited(monkeypatch)
    pipe_max.write_text("8388608\n")
    runner._allow_splice()
    assert pipe_max.read_text() == "8388608\n"


def test_nothing_changes_when_pipes_can_grow_already(pipe_max, monkeypatch):
    monkeypatch.setattr(runner.fcntl, "fcntl", lambda fd, cmd, arg=0: arg)
    runner._allow_splice()
    assert pipe_max.read_text() == "1048576\n"


def test_an_ordinary_user_changes_nothing(pipe_max, monkeypatch):
    asked = _pipes_limited(monkeypatch)
    monkeypatch.setattr(runner.os, "getuid", lambda: 1000)
    runner._allow_splice()
    assert asked == [] and pipe_max.read_text() == "1048576\n"


def test_an_unwritable_limit_is_not_an_error(pipe_max, monkeypatch):
    _pipes_limited(monkeypatch)
    missing = pipe_max.parent / "missing" / "pipe-max-size"
    monkeypatch.setattr(runner, "PIPE_MAX_SIZE", str(missing))
    runner._allow_splice()  # logs at debug level and goes on
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

