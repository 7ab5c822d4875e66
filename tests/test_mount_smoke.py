"""The mount comes up, serves files, and unmounts cleanly with everything written."""

import os

import pytest

import nexusfs
from tests import needs

pytestmark = pytest.mark.mount


def test_mount_serves_and_unmount_flushes(mnt):
    p = mnt.path("hello.txt")
    with open(p, "wb") as f:
        f.write(b"hello world\n" * 1000)
    os.mkdir(mnt.path("sub"))
    assert sorted(os.listdir(mnt.mountpoint)) == ["hello.txt", "sub"]
    assert os.path.getsize(p) == 12000
    assert mnt.stop() == 0
    with nexusfs.connect(mnt.home) as nx:
        assert nx.read_bytes("/hello.txt") == b"hello world\n" * 1000
        assert nx.is_dir("/sub")
        assert nx.fsck().clean


def test_readahead_is_raised_before_the_mount_reports_ready(mnt):
    """As root the mount asks for 1 MiB read-ahead (1 MiB read requests instead of 128 KiB);
    that is only possible after the FUSE handshake, and must be done by the time the
    mount says it is ready, or the first reads after a mount are the slow kind."""
    from mount.runner import READ_AHEAD_KB

    needs.need_root("only root may change a mount's read-ahead")
    device = None
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if fields[4] == mnt.mountpoint:
                device = fields[2]
    assert device is not None
    with open(f"/sys/class/bdi/{device}/read_ahead_kb", encoding="ascii") as f:
        assert int(f.read()) == READ_AHEAD_KB
