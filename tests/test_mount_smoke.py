"""The mount comes up, serves files, and unmounts cleanly with everything written."""

import os

import nexusfs


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
