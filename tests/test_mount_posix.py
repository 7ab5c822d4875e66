"""POSIX behaviour of the mounted filesystem, one system call family at a time.

Every failure case checks its errno. Most tests share one mount per module
(``mdir``: a fresh directory on it); tests that need to look at the store after
unmounting use their own mount (``mnt``).
"""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

import nexusfs
from mount.runner import CACHE_TIMEOUT_S
from nexusfs.vfs import STATFS_CACHE_S
from tests import needs
from tests.mount_helpers import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    UTIME_NOW,
    UTIME_OMIT,
    drop_cache,
    renameat2,
    sha256_file,
    utimensat,
)
from tests.mountutil import MountedStore, wait_until

pytestmark = pytest.mark.mount
needs_root = needs.root_only("device nodes, chown")

MiB = 1 << 20
BS = 4 * MiB  # the store's block size (the default)


@pytest.fixture(scope="module")
def nowb_mount(tmp_path_factory):
    """A second mount without the kernel's writeback cache (every write reaches the VFS as sent)."""
    base = tmp_path_factory.mktemp("nowb")
    with MountedStore(str(base / "store"), str(base / "mnt"), args=["--no-writeback-cache"]) as m:
        yield m


@pytest.fixture(params=["writeback", "no-writeback"])
def iodir(request):
    """A fresh directory on a mount with, and on one without, the writeback cache."""
    if request.param == "writeback":
        return request.getfixturevalue("mdir")
    m = request.getfixturevalue("nowb_mount")
    path = m.path(request.node.name.replace("/", "_").replace("[", "_").replace("]", "")[:200])
    os.mkdir(path)
    return path


def raises_errno(code: int, fn, *args, **kwargs) -> OSError:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value!r}"
    return info.value


def write_file(path: str, data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def pause() -> None:
    """Let the clock move on (the kernel stamps some times with a coarse clock)."""
    time.sleep(0.03)


# ====================================================================== errors
def test_enoent(mdir):
    missing = os.path.join(mdir, "missing")
    raises_errno(errno.ENOENT, os.stat, missing)
    raises_errno(errno.ENOENT, os.lstat, missing)
    raises_errno(errno.ENOENT, os.open, missing, os.O_RDONLY)
    raises_errno(errno.ENOENT, os.unlink, missing)
    raises_errno(errno.ENOENT, os.rmdir, missing)
    raises_errno(errno.ENOENT, os.readlink, missing)
    raises_errno(errno.ENOENT, os.rename, missing, os.path.join(mdir, "x"))
    raises_errno(errno.ENOENT, os.link, missing, os.path.join(mdir, "x"))
    raises_errno(errno.ENOENT, os.chmod, missing, 0o600)
    raises_errno(errno.ENOENT, os.open, os.path.join(missing, "f"), os.O_WRONLY | os.O_CREAT)
    raises_errno(errno.ENOENT, os.mkdir, os.path.join(missing, "d"))
    raises_errno(errno.ENOENT, os.listdir, missing)
    # a dangling symlink is ENOENT when followed
    os.symlink("nowhere", os.path.join(mdir, "dangling"))
    raises_errno(errno.ENOENT, os.stat, os.path.join(mdir, "dangling"))
    raises_errno(errno.ENOENT, open, os.path.join(mdir, "dangling"), "rb")
    # RENAME_EXCHANGE needs both names
    write_file(os.path.join(mdir, "f"), b"x")
    raises_errno(errno.ENOENT, renameat2, os.path.join(mdir, "f"), missing, RENAME_EXCHANGE)


def test_eexist(mdir):
    f = os.path.join(mdir, "f")
    d = os.path.join(mdir, "d")
    write_file(f, b"x")
    os.mkdir(d)
    raises_errno(errno.EEXIST, os.mkdir, d)
    raises_errno(errno.EEXIST, os.mkdir, f)
    raises_errno(errno.EEXIST, os.open, f, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    raises_errno(errno.EEXIST, os.open, d, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    raises_errno(errno.EEXIST, os.link, f, d)
    raises_errno(errno.EEXIST, os.link, f, f)
    raises_errno(errno.EEXIST, os.symlink, "t", f)
    raises_errno(errno.EEXIST, os.mkfifo, f)
    raises_errno(errno.EEXIST, os.mknod, f, stat.S_IFREG | 0o644)
    g = os.path.join(mdir, "g")
    write_file(g, b"y")
    raises_errno(errno.EEXIST, renameat2, f, g, RENAME_NOREPLACE)
    assert read_file(f) == b"x" and read_file(g) == b"y"


def test_enotempty(mdir):
    d = os.path.join(mdir, "d")
    e = os.path.join(mdir, "e")
    os.makedirs(os.path.join(d, "sub"))
    os.mkdir(e)
    write_file(os.path.join(e, "f"), b"x")
    raises_errno(errno.ENOTEMPTY, os.rmdir, d)
    raises_errno(errno.ENOTEMPTY, os.rmdir, e)
    raises_errno(errno.ENOTEMPTY, os.rename, d, e)
    os.mkdir(os.path.join(mdir, "empty"))
    raises_errno(errno.ENOTEMPTY, os.rename, os.path.join(mdir, "empty"), e)
    assert os.listdir(e) == ["f"]
    os.rmdir(os.path.join(d, "sub"))
    os.rmdir(d)
    assert not os.path.exists(d)


def test_enotdir(mdir):
    f = os.path.join(mdir, "f")
    d = os.path.join(mdir, "d")
    write_file(f, b"x")
    os.mkdir(d)
    raises_errno(errno.ENOTDIR, os.listdir, f)
    raises_errno(errno.ENOTDIR, os.stat, os.path.join(f, "x"))
    raises_errno(errno.ENOTDIR, os.mkdir, os.path.join(f, "x"))
    raises_errno(errno.ENOTDIR, os.open, os.path.join(f, "x"), os.O_CREAT | os.O_WRONLY)
    raises_errno(errno.ENOTDIR, os.rmdir, f)
    raises_errno(errno.ENOTDIR, os.rename, d, f)
    raises_errno(errno.ENOTDIR, os.open, f, os.O_RDONLY | os.O_DIRECTORY)
    raises_errno(errno.ENOTDIR, os.stat, f + "/")


def test_eisdir(mdir):
    f = os.path.join(mdir, "f")
    d = os.path.join(mdir, "d")
    write_file(f, b"x")
    os.mkdir(d)
    raises_errno(errno.EISDIR, os.open, d, os.O_WRONLY)
    raises_errno(errno.EISDIR, os.open, d, os.O_RDWR)
    raises_errno(errno.EISDIR, os.unlink, d)
    raises_errno(errno.EISDIR, os.rename, f, d)
    fd = os.open(d, os.O_RDONLY)
    try:
        raises_errno(errno.EISDIR, os.read, fd, 10)
    finally:
        os.close(fd)


def test_enametoolong(mdir):
    ok = os.path.join(mdir, "a" * 255)
    bad = os.path.join(mdir, "b" * 256)
    write_file(ok, b"fine")
    assert read_file(ok) == b"fine"
    assert "a" * 255 in os.listdir(mdir)
    os.mkdir(os.path.join(mdir, "d" * 255))
    os.symlink("t", os.path.join(mdir, "s" * 255))
    raises_errno(errno.ENAMETOOLONG, os.open, bad, os.O_WRONLY | os.O_CREAT)
    raises_errno(errno.ENAMETOOLONG, os.stat, bad)
    raises_errno(errno.ENAMETOOLONG, os.mkdir, bad)
    raises_errno(errno.ENAMETOOLONG, os.symlink, "t", bad)
    raises_errno(errno.ENAMETOOLONG, os.link, ok, bad)
    raises_errno(errno.ENAMETOOLONG, os.rename, ok, bad)
    raises_errno(errno.ENAMETOOLONG, os.mkfifo, bad)
    assert os.path.exists(ok)
    assert os.statvfs(mdir).f_namemax == 255


def test_eloop(mdir):
    a = os.path.join(mdir, "a")
    b = os.path.join(mdir, "b")
    os.symlink("b", a)
    os.symlink("a", b)
    raises_errno(errno.ELOOP, os.stat, a)
    raises_errno(errno.ELOOP, os.open, a, os.O_RDONLY)
    raises_errno(errno.ELOOP, os.open, os.path.join(a, "x"), os.O_RDONLY)
    self_loop = os.path.join(mdir, "self")
    os.symlink("self", self_loop)
    raises_errno(errno.ELOOP, os.stat, self_loop)
    # O_NOFOLLOW on a symlink (to an existing file)
    write_file(os.path.join(mdir, "target"), b"t")
    os.symlink("target", os.path.join(mdir, "link"))
    raises_errno(errno.ELOOP, os.open, os.path.join(mdir, "link"), os.O_RDONLY | os.O_NOFOLLOW)
    assert stat.S_ISLNK(os.lstat(a).st_mode)


def test_einval_dir_into_own_subtree(mdir):
    d = os.path.join(mdir, "d")
    os.makedirs(os.path.join(d, "a", "b"))
    raises_errno(errno.EINVAL, os.rename, d, os.path.join(d, "inside"))
    raises_errno(errno.EINVAL, os.rename, d, os.path.join(d, "a", "b", "inside"))
    raises_errno(errno.EINVAL, renameat2, d, os.path.join(d, "a", "x"), RENAME_NOREPLACE)
    # exchanging a directory with its own descendant
    raises_errno(errno.EINVAL, renameat2, d, os.path.join(d, "a"), RENAME_EXCHANGE)
    raises_errno(errno.EINVAL, renameat2, os.path.join(d, "a"), d, RENAME_EXCHANGE)
    assert os.path.isdir(os.path.join(d, "a", "b"))


def test_rename_noreplace(mdir):
    a = os.path.join(mdir, "a")
    b = os.path.join(mdir, "b")
    write_file(a, b"A")
    renameat2(a, b, RENAME_NOREPLACE)
    assert read_file(b) == b"A" and not os.path.exists(a)
    write_file(a, b"new")
    raises_errno(errno.EEXIST, renameat2, a, b, RENAME_NOREPLACE)
    assert read_file(a) == b"new" and read_file(b) == b"A"
    os.mkdir(os.path.join(mdir, "d1"))
    os.mkdir(os.path.join(mdir, "d2"))
    raises_errno(errno.EEXIST, renameat2, os.path.join(mdir, "d1"), os.path.join(mdir, "d2"), RENAME_NOREPLACE)


def test_rename_exchange(mdir):
    a = os.path.join(mdir, "a")
    b = os.path.join(mdir, "b")
    write_file(a, b"content A")
    write_file(b, b"content B")
    ino_a, ino_b = os.stat(a).st_ino, os.stat(b).st_ino
    renameat2(a, b, RENAME_EXCHANGE)
    assert read_file(a) == b"content B" and read_file(b) == b"content A"
    assert os.stat(a).st_ino == ino_b and os.stat(b).st_ino == ino_a
    # a file and a directory in different parents swap, and the parents' nlink follow
    p1 = os.path.join(mdir, "p1")
    p2 = os.path.join(mdir, "p2")
    os.mkdir(p1)
    os.mkdir(p2)
    os.mkdir(os.path.join(p1, "dir"))
    write_file(os.path.join(p1, "dir", "inner"), b"i")
    write_file(os.path.join(p2, "file"), b"f")
    assert os.stat(p1).st_nlink == 3 and os.stat(p2).st_nlink == 2
    renameat2(os.path.join(p1, "dir"), os.path.join(p2, "file"), RENAME_EXCHANGE)
    assert read_file(os.path.join(p1, "dir")) == b"f"
    assert read_file(os.path.join(p2, "file", "inner")) == b"i"
    assert os.stat(p1).st_nlink == 2 and os.stat(p2).st_nlink == 3
    assert os.path.dirname(os.path.realpath(os.path.join(p2, "file", ".."))) == mdir
    assert os.stat(os.path.join(p2, "file", "..")).st_ino == os.stat(p2).st_ino


def test_no_exdev_inside_one_mount(mdir):
    a = os.path.join(mdir, "a", "deep", "er")
    b = os.path.join(mdir, "b")
    os.makedirs(a)
    os.mkdir(b)
    f = os.path.join(a, "f")
    write_file(f, b"data")
    os.rename(f, os.path.join(b, "f"))
    os.link(os.path.join(b, "f"), os.path.join(a, "hard"))
    os.rename(os.path.join(mdir, "a"), os.path.join(b, "a"))
    assert read_file(os.path.join(b, "a", "deep", "er", "hard")) == b"data"
    assert os.stat(os.path.join(b, "f")).st_nlink == 2
    # also with the shell tools, which fall back to copying on EXDEV
    subprocess.run(["mv", os.path.join(b, "a"), os.path.join(mdir, "moved")], check=True)
    assert os.path.samefile(os.path.join(b, "f"), os.path.join(mdir, "moved", "deep", "er", "hard"))


# ==================================================================== timestamps
def test_times_on_create_unlink_rename_link(mdir):
    d = os.path.join(mdir, "d")
    os.mkdir(d)
    d0 = os.stat(d)
    pause()
    f = os.path.join(d, "f")
    write_file(f, b"")
    fst = os.stat(f)
    d1 = os.stat(d)
    assert d1.st_mtime_ns > d0.st_mtime_ns and d1.st_ctime_ns > d0.st_ctime_ns, "create: parent times"
    assert fst.st_ctime_ns >= fst.st_mtime_ns and abs(fst.st_mtime_ns - d1.st_mtime_ns) < 10**9
    # a new subdirectory
    pause()
    os.mkdir(os.path.join(d, "sub"))
    d2 = os.stat(d)
    assert d2.st_mtime_ns > d1.st_mtime_ns and d2.st_ctime_ns > d1.st_ctime_ns, "mkdir: parent times"
    # link: the file's ctime and the new parent's mtime/ctime
    pause()
    os.link(f, os.path.join(d, "sub", "hard"))
    f2 = os.stat(f)
    s2 = os.stat(os.path.join(d, "sub"))
    assert f2.st_ctime_ns > fst.st_ctime_ns, "link: file ctime"
    assert f2.st_mtime_ns == fst.st_mtime_ns, "link: file mtime must not change"
    assert s2.st_mtime_ns > d2.st_mtime_ns, "link: new parent mtime"
    # rename: both parents' mtime/ctime and the file's ctime; mtime unchanged
    pause()
    e = os.path.join(mdir, "e")
    os.mkdir(e)
    e0 = os.stat(e)
    d3 = os.stat(d)
    pause()
    os.rename(f, os.path.join(e, "f"))
    f3 = os.stat(os.path.join(e, "f"))
    assert os.stat(d).st_mtime_ns > d3.st_mtime_ns and os.stat(d).st_ctime_ns > d3.st_ctime_ns, "rename: old parent"
    assert os.stat(e).st_mtime_ns > e0.st_mtime_ns and os.stat(e).st_ctime_ns > e0.st_ctime_ns, "rename: new parent"
    assert f3.st_ctime_ns > f2.st_ctime_ns, "rename: file ctime"
    assert f3.st_mtime_ns == fst.st_mtime_ns, "rename: file mtime must not change"
    # unlink: parent's times, and the other link's ctime (its nlink changed)
    pause()
    e1 = os.stat(e)
    os.unlink(os.path.join(e, "f"))
    e2 = os.stat(e)
    h = os.stat(os.path.join(d, "sub", "hard"))
    assert e2.st_mtime_ns > e1.st_mtime_ns and e2.st_ctime_ns > e1.st_ctime_ns, "unlink: parent times"
    assert h.st_ctime_ns > f3.st_ctime_ns and h.st_nlink == 1, "unlink: remaining link ctime"
    # rmdir
    pause()
    os.rmdir(os.path.join(mdir, "e"))
    assert os.stat(mdir).st_mtime_ns > e2.st_mtime_ns


def test_times_on_write_truncate_chmod(mdir):
    f = os.path.join(mdir, "f")
    write_file(f, b"hello")
    s0 = os.stat(f)
    pause()
    fd = os.open(f, os.O_WRONLY)
    try:
        os.pwrite(fd, b"world", 5)
        s1 = os.fstat(fd)
    finally:
        os.close(fd)
    s1c = os.stat(f)
    assert s1.st_mtime_ns > s0.st_mtime_ns and s1.st_ctime_ns > s0.st_ctime_ns, "write: times while open"
    assert s1c.st_mtime_ns > s0.st_mtime_ns and s1c.st_ctime_ns >= s1c.st_mtime_ns, "write: times after close"
    assert s1c.st_size == 10
    pause()
    os.truncate(f, 3)
    s2 = os.stat(f)
    assert s2.st_mtime_ns > s1c.st_mtime_ns and s2.st_ctime_ns > s1c.st_ctime_ns, "truncate"
    assert s2.st_size == 3
    pause()
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 4 * MiB + 1)
        s3 = os.fstat(fd)
    finally:
        os.close(fd)
    assert s3.st_mtime_ns > s2.st_mtime_ns and s3.st_size == 4 * MiB + 1, "ftruncate"
    s3c = os.stat(f)
    pause()
    os.chmod(f, 0o600)
    s4 = os.stat(f)
    assert s4.st_ctime_ns > s3c.st_ctime_ns, "chmod: ctime"
    assert s4.st_mtime_ns == s3c.st_mtime_ns, "chmod must not change mtime"
    # O_TRUNC of a non-empty file changes mtime too
    pause()
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    os.close(fd)
    s5 = os.stat(f)
    assert s5.st_size == 0 and s5.st_mtime_ns > s4.st_mtime_ns


def test_utimens_explicit_now_omit(mdir):
    f = os.path.join(mdir, "f")
    write_file(f, b"x")
    # nanosecond precision round trip, also for times before 1970 and far ahead
    for a, m in [(1_234_567_890_123_456_789, 987_654_321_987_654_321), (1, 999_999_999), (-1_000_000_001, 5 * 10**18)]:
        os.utime(f, ns=(a, m))
        st = os.stat(f)
        assert (st.st_atime_ns, st.st_mtime_ns) == (a, m)
    # beyond what an inode holds (signed 64-bit ns, years 1677-2262): clamped, as ext4
    # clamps to its own range, instead of failing
    os.utime(f, ns=(-(2**40) * 10**9, 2**40 * 10**9))
    st = os.stat(f)
    assert (st.st_atime_ns, st.st_mtime_ns) == (-(2**63), 2**63 - 1)
    os.utime(f, ns=(1_000_000_000_000_000_001, 1_000_000_000_000_000_002))
    # UTIME_NOW for both (os.utime with no times)
    t0 = time.time_ns()
    os.utime(f)
    st = os.stat(f)
    assert abs(st.st_mtime_ns - t0) < 5 * 10**9 and abs(st.st_atime_ns - t0) < 5 * 10**9
    # UTIME_OMIT for atime, explicit mtime
    os.utime(f, ns=(111_000_000_111, 222_000_000_222))
    utimensat(f, (0, UTIME_OMIT), (333, 444))
    st = os.stat(f)
    assert st.st_atime_ns == 111_000_000_111 and st.st_mtime_ns == 333_000_000_444
    # UTIME_NOW for mtime only, atime omitted
    utimensat(f, (0, UTIME_OMIT), (0, UTIME_NOW))
    st = os.stat(f)
    assert st.st_atime_ns == 111_000_000_111 and abs(st.st_mtime_ns - time.time_ns()) < 5 * 10**9
    # both omitted: nothing changes (ctime may or may not move)
    before = os.stat(f)
    utimensat(f, (0, UTIME_OMIT), (0, UTIME_OMIT))
    after = os.stat(f)
    assert (after.st_atime_ns, after.st_mtime_ns) == (before.st_atime_ns, before.st_mtime_ns)
    # on a directory and (without following) on a symlink
    d = os.path.join(mdir, "d")
    os.mkdir(d)
    os.utime(d, ns=(5, 6))
    assert (os.stat(d).st_atime_ns, os.stat(d).st_mtime_ns) == (5, 6)
    os.symlink("f", os.path.join(mdir, "l"))
    os.utime(os.path.join(mdir, "l"), ns=(7, 8), follow_symlinks=False)
    assert os.lstat(os.path.join(mdir, "l")).st_mtime_ns == 8
    assert os.stat(f).st_mtime_ns != 8


def test_times_survive_close_and_remount(mnt):
    f = mnt.path("f")
    write_file(f, b"abc" * 1000)
    os.utime(f, ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    st = os.stat(f)
    # times the kernel stamped on writes (with the writeback cache it keeps them itself)
    g = mnt.path("g")
    write_file(g, b"x" * 100000)
    pause()
    fd = os.open(g, os.O_RDWR)
    os.pwrite(fd, b"y", 5)
    os.fsync(fd)
    pause()
    os.pwrite(fd, b"z", 6)
    os.close(fd)
    sg = os.stat(g)
    assert mnt.stop() == 0
    with nexusfs.connect(mnt.home) as nx:
        info = nx.stat("/f")
        assert (info.atime_ns, info.mtime_ns) == (st.st_atime_ns, st.st_mtime_ns)
        info = nx.stat("/g")
        assert (info.mtime_ns, info.ctime_ns, info.size) == (sg.st_mtime_ns, sg.st_ctime_ns, sg.st_size)


# ======================================================================= links
def test_hard_links_nlink(mdir):
    a = os.path.join(mdir, "a")
    write_file(a, b"shared content")
    os.mkdir(os.path.join(mdir, "sub"))
    names = [a, os.path.join(mdir, "b"), os.path.join(mdir, "sub", "c")]
    os.link(a, names[1])
    os.link(names[1], names[2])
    for n in names:
        st = os.stat(n)
        assert st.st_nlink == 3 and st.st_ino == os.stat(a).st_ino
    with open(names[2], "r+b") as f:
        f.write(b"SHARED")
    assert read_file(a) == b"SHARED content"
    os.unlink(a)
    assert os.stat(names[1]).st_nlink == 2
    assert os.stat(names[2]).st_nlink == 2
    os.rename(names[1], names[2])  # two names of one inode: nothing happens
    assert os.path.exists(names[1]) and os.stat(names[2]).st_nlink == 2
    os.unlink(names[1])
    assert os.stat(names[2]).st_nlink == 1
    assert read_file(names[2]) == b"SHARED content"
    # hard links to directories are not allowed
    raises_errno(errno.EPERM, os.link, os.path.join(mdir, "sub"), os.path.join(mdir, "dirlink"))
    # a link to a symlink links the symlink itself
    os.symlink("sub/c", os.path.join(mdir, "sym"))
    os.link(os.path.join(mdir, "sym"), os.path.join(mdir, "sym2"), follow_symlinks=False)
    assert os.lstat(os.path.join(mdir, "sym2")).st_nlink == 2
    assert os.readlink(os.path.join(mdir, "sym2")) == "sub/c"


def test_directory_nlink(mdir):
    d = os.path.join(mdir, "d")
    os.mkdir(d)
    assert os.stat(d).st_nlink == 2
    for i in range(5):
        os.mkdir(os.path.join(d, f"s{i}"))
    write_file(os.path.join(d, "file"), b"")
    os.symlink("s0", os.path.join(d, "link"))
    assert os.stat(d).st_nlink == 7
    os.rmdir(os.path.join(d, "s4"))
    assert os.stat(d).st_nlink == 6
    e = os.path.join(mdir, "e")
    os.mkdir(e)
    os.rename(os.path.join(d, "s3"), os.path.join(e, "s3"))
    assert os.stat(d).st_nlink == 5 and os.stat(e).st_nlink == 3
    # replacing an empty directory by rename
    os.rename(os.path.join(d, "s2"), os.path.join(e, "s3"))
    assert os.stat(d).st_nlink == 4 and os.stat(e).st_nlink == 3
    assert os.stat(os.path.join(d, "s0")).st_nlink == 2


# ====================================================== unlinked while open
def test_unlinked_open_file_lives_until_closed(mnt):
    p = mnt.path("victim")
    data = random.Random(1).randbytes(9 * MiB)
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        fd2 = os.open(p, os.O_RDONLY)
        os.unlink(p)
        assert not os.path.exists(p)
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 100, 4 * MiB - 50) == data[4 * MiB - 50 : 4 * MiB + 50]
        os.pwrite(fd, b"more", len(data))
        os.pwrite(fd, b"MID", 5 * MiB)
        os.fsync(fd)
        expect = data[: 5 * MiB] + b"MID" + data[5 * MiB + 3 :] + b"more"
        assert os.fstat(fd).st_size == len(expect)
        drop_cache_fd(fd)
        assert os.pread(fd2, len(expect) + 10, 0) == expect
        # a new file with the same name is a different file
        write_file(p, b"new")
        assert read_file(p) == b"new"
        assert os.pread(fd, 3, 5 * MiB) == b"MID"
        os.close(fd2)
    finally:
        os.close(fd)
    os.unlink(p)
    # a directory removed while it is somebody's cwd
    os.mkdir(mnt.path("gone"))
    dfd = os.open(mnt.path("gone"), os.O_RDONLY | os.O_DIRECTORY)
    os.rmdir(mnt.path("gone"))
    assert os.fstat(dfd).st_nlink in (0, 1)
    raises_errno(errno.ENOENT, os.open, "x", os.O_CREAT | os.O_WRONLY, dir_fd=dfd)
    os.close(dfd)
    assert mnt.stop() == 0
    with nexusfs.connect(mnt.home) as nx:
        assert nx.listdir("/") == []
        info = nx.info()
        assert info.files == 0 and info.logical_bytes == 0 and info.referenced_bytes == 0
        assert nx.fsck().clean
        nx.gc(grace=0)
        assert nx.info().stored_bytes < 64 * 1024, "the space of the deleted file is released"


def drop_cache_fd(fd: int) -> None:
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


# ==================================================================== sparse
def test_sparse_files(iodir):
    p = os.path.join(iodir, "sparse")
    far = 3 * 1024 * MiB + 12345  # 3 GiB and a bit
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.lseek(fd, far, os.SEEK_SET)
        os.write(fd, b"tail")
        os.pwrite(fd, b"middle", 2 * BS + 100)
        os.pwrite(fd, b"X", BS + 3 * MiB)  # a hole inside block 1 before it
    finally:
        os.close(fd)
    drop_cache(p)
    st = os.stat(p)
    assert st.st_size == far + 4
    assert st.st_blocks * 512 < 64 * MiB, f"a sparse file must not take space for its holes ({st.st_blocks} blocks)"
    with open(p, "rb") as f:
        assert f.read(4) == b"head"
        assert f.read(MiB) == bytes(MiB)
        f.seek(BS)
        assert f.read(3 * MiB) == bytes(3 * MiB)
        assert f.read(2) == b"X\0"
        f.seek(2 * BS + 90)
        assert f.read(20) == bytes(10) + b"middle" + bytes(4)
        f.seek(1024 * MiB)
        assert f.read(MiB) == bytes(MiB)
        f.seek(far - 3)
        assert f.read(100) == b"\0\0\0tail"
    # truncating up makes a hole too
    q = os.path.join(iodir, "grown")
    write_file(q, b"abc")
    os.truncate(q, 10 * BS)
    assert os.stat(q).st_blocks * 512 < MiB
    with open(q, "rb") as f:
        assert f.read(3) == b"abc"
        f.seek(9 * BS)
        assert f.read() == bytes(BS)


# ========================================================= special files
def test_fifo(mdir):
    p = os.path.join(mdir, "fifo")
    os.mkfifo(p, 0o644)
    assert stat.S_ISFIFO(os.stat(p).st_mode)
    payload = random.Random(2).randbytes(3 * MiB)
    got: list[bytes] = []

    def reader() -> None:
        with open(p, "rb") as f:
            got.append(f.read())

    def writer() -> None:
        with open(p, "wb") as f:
            for i in range(0, len(payload), 65536):
                f.write(payload[i : i + 65536])

    threads = [threading.Thread(target=reader), threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "fifo transfer hung"
    assert got and got[0] == payload
    assert os.stat(p).st_size == 0


def test_unix_socket(mdir):
    cwd = os.getcwd()
    os.chdir(mdir)  # socket paths are limited to 108 bytes
    try:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind("sock")
        server.listen(1)
        assert stat.S_ISSOCK(os.stat("sock").st_mode)
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect("sock")
        conn, _ = server.accept()
        client.sendall(b"ping")
        assert conn.recv(4) == b"ping"
        for s in (client, conn, server):
            s.close()
        assert stat.S_ISSOCK(os.lstat("sock").st_mode)
        os.unlink("sock")
    finally:
        os.chdir(cwd)


@needs_root
def test_device_nodes(mdir):
    c = os.path.join(mdir, "chr")
    b = os.path.join(mdir, "blk")
    os.mknod(c, stat.S_IFCHR | 0o640, os.makedev(1, 7))
    os.mknod(b, stat.S_IFBLK | 0o600, os.makedev(259, 65537))
    sc, sb = os.stat(c), os.stat(b)
    assert stat.S_ISCHR(sc.st_mode) and stat.S_IMODE(sc.st_mode) == 0o640
    assert (os.major(sc.st_rdev), os.minor(sc.st_rdev)) == (1, 7)
    assert stat.S_ISBLK(sb.st_mode) and (os.major(sb.st_rdev), os.minor(sb.st_rdev)) == (259, 65537)
    # the mount is nodev: opening the device is refused
    raises_errno(errno.EACCES, os.open, c, os.O_RDONLY)
    # a regular file made by mknod
    os.mknod(os.path.join(mdir, "reg"), stat.S_IFREG | 0o600)
    assert stat.S_ISREG(os.stat(os.path.join(mdir, "reg")).st_mode)
    assert os.stat(os.path.join(mdir, "reg")).st_rdev == 0


# ====================================================== open flags and I/O
def test_o_append_two_fds(iodir):
    p = os.path.join(iodir, "log")
    write_file(p, b"start\n")
    fd1 = os.open(p, os.O_WRONLY | os.O_APPEND)
    fd2 = os.open(p, os.O_WRONLY | os.O_APPEND)
    expect = bytearray(b"start\n")
    try:
        for i in range(300):
            rec = f"{i:04d}-{'one' if i % 2 else 'two'}\n".encode()
            os.write(fd1 if i % 2 else fd2, rec)
            expect += rec
            if i == 150:
                os.lseek(fd1, 0, os.SEEK_SET)  # O_APPEND ignores the position
        # a big append crossing a block boundary
        big = b"B" * (BS + 10)
        os.write(fd1, big)
        expect += big
        os.write(fd2, b"end")
        expect += b"end"
    finally:
        os.close(fd1)
        os.close(fd2)
    assert read_file(p) == bytes(expect)
    drop_cache(p)
    assert read_file(p) == bytes(expect)


def test_o_append_threads(iodir):
    p = os.path.join(iodir, "log")
    write_file(p, b"")

    def appender(tag: str) -> None:
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        try:
            for i in range(200):
                os.write(fd, f"{tag}{i:05d}\n".encode())
        finally:
            os.close(fd)

    threads = [threading.Thread(target=appender, args=(t,)) for t in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    lines = read_file(p).decode().splitlines()
    assert len(lines) == 800
    assert sorted(lines) == sorted(f"{t}{i:05d}" for t in "abcd" for i in range(200))
    for t in "abcd":  # each writer's records stay in order
        mine = [ln for ln in lines if ln[0] == t]
        assert mine == sorted(mine)


def test_o_trunc_and_o_excl(iodir):
    p = os.path.join(iodir, "f")
    write_file(p, b"x" * (BS + 5))
    fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"short")
    finally:
        os.close(fd)
    assert read_file(p) == b"short"
    drop_cache(p)
    assert read_file(p) == b"short"
    with open(p, "w") as f:  # O_TRUNC through Python's open
        f.write("again")
    assert read_file(p) == b"again"
    # O_EXCL
    raises_errno(errno.EEXIST, os.open, p, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    q = os.path.join(iodir, "new")
    fd = os.open(q, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    assert stat.S_IMODE(os.stat(q).st_mode) == 0o600
    # O_EXCL does not follow a (dangling) symlink
    os.symlink("nowhere", os.path.join(iodir, "dangling"))
    raises_errno(errno.EEXIST, os.open, os.path.join(iodir, "dangling"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    assert not os.path.exists(os.path.join(iodir, "nowhere"))
    # O_CREAT without O_EXCL through a dangling symlink creates its target
    fd = os.open(os.path.join(iodir, "dangling"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.close(fd)
    assert os.path.isfile(os.path.join(iodir, "nowhere"))


def test_partial_overwrite_through_write_only_fd(iodir):
    # the kernel fills a partly written page by reading it, through a write-only handle
    p = os.path.join(iodir, "f")
    content = bytearray(random.Random(10).randbytes(BS + 3 * 4096 + 100))
    write_file(p, bytes(content))
    drop_cache(p)
    fd = os.open(p, os.O_WRONLY)
    try:
        for off in (3, 4095, BS - 1, BS + 5000, len(content) - 2):
            os.pwrite(fd, b"XY", off)
            content[off : off + 2] = b"XY"
    finally:
        os.close(fd)
    assert read_file(p) == bytes(content)
    drop_cache(p)
    assert read_file(p) == bytes(content)


def test_mmap_write_and_read(iodir):
    p = os.path.join(iodir, "mapped")
    size = BS + 2 * MiB
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE) as m:
            m[0:5] = b"hello"
            m[BS - 3 : BS + 3] = b"across"
            m[size - 4 :] = b"tail"
            m.flush()
    finally:
        os.close(fd)
    drop_cache(p)
    data = read_file(p)
    assert len(data) == size
    assert data[:5] == b"hello" and data[BS - 3 : BS + 3] == b"across" and data[-4:] == b"tail"
    assert data[5 : BS - 3] == bytes(BS - 8)
    # reading a file through mmap
    q = os.path.join(iodir, "plain")
    content = random.Random(3).randbytes(BS + 12345)
    write_file(q, content)
    drop_cache(q)
    with open(q, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        assert m[:] == content
        assert m[BS - 10 : BS + 10] == content[BS - 10 : BS + 10]
    # a private mapping's writes do not reach the file
    with open(q, "r+b") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) as m:
        m[0:4] = b"PRIV"
    assert read_file(q) == content


def test_statfs_and_df(mdir, shared_mount):
    s = os.statvfs(mdir)
    assert s.f_bsize > 0 and s.f_frsize > 0
    assert s.f_blocks >= s.f_bfree >= s.f_bavail >= 0
    assert s.f_blocks > 0 and s.f_files >= s.f_ffree > 0
    assert s.f_namemax == 255
    out = subprocess.run(["df", "-P", shared_mount.mountpoint], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 2, out
    fields = lines[1].split()
    assert fields[-1] == shared_mount.mountpoint
    total, used, avail = (int(x) for x in fields[1:4])
    assert total > 0 and used >= 0 and avail >= 0 and used + avail <= total + 1
    assert fields[4].endswith("%")
    # usage grows when data is stored (statfs figures are cached for STATFS_CACHE_S)
    write_file(os.path.join(mdir, "big"), random.Random(4).randbytes(8 * MiB))
    used_before = (s.f_blocks - s.f_bfree) * s.f_frsize

    def used_now() -> int:
        s2 = os.statvfs(mdir)
        return (s2.f_blocks - s2.f_bfree) * s2.f_frsize

    assert wait_until(lambda: used_now() >= used_before + 7 * MiB, timeout=STATFS_CACHE_S + 30), used_now()
    out = subprocess.run(["df", "-i", "-P", shared_mount.mountpoint], capture_output=True, text=True, check=True).stdout
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[1].split()[-1] == shared_mount.mountpoint, out
    inodes, iused, ifree = (int(x) for x in lines[1].split()[1:4])
    assert inodes > 0 and iused >= 2 and iused + ifree == inodes, out  # at least the root and "big"


def test_xattrs(mdir):
    f = os.path.join(mdir, "f")
    d = os.path.join(mdir, "d")
    write_file(f, b"x")
    os.mkdir(d)
    for p in (f, d):
        assert os.listxattr(p) == []
        os.setxattr(p, "user.one", b"1")
        os.setxattr(p, "user.bin", bytes(range(256)))
        os.setxattr(p, "user.empty", b"")
        assert os.getxattr(p, "user.one") == b"1"
        assert os.getxattr(p, "user.bin") == bytes(range(256))
        assert os.getxattr(p, "user.empty") == b""
        assert sorted(os.listxattr(p)) == ["user.bin", "user.empty", "user.one"]
        # flags
        raises_errno(errno.EEXIST, os.setxattr, p, "user.one", b"2", os.XATTR_CREATE)
        raises_errno(errno.ENODATA, os.setxattr, p, "user.none", b"2", os.XATTR_REPLACE)
        os.setxattr(p, "user.one", b"replaced", os.XATTR_REPLACE)
        os.setxattr(p, "user.two", b"created", os.XATTR_CREATE)
        assert os.getxattr(p, "user.one") == b"replaced"
        assert os.getxattr(p, "user.two") == b"created"
        # missing
        raises_errno(errno.ENODATA, os.getxattr, p, "user.none")
        raises_errno(errno.ENODATA, os.removexattr, p, "user.none")
        os.removexattr(p, "user.one")
        raises_errno(errno.ENODATA, os.getxattr, p, "user.one")
        assert sorted(os.listxattr(p)) == ["user.bin", "user.empty", "user.two"]
    # a larger value, and the getfattr/setfattr tools
    big = random.Random(5).randbytes(60000)
    os.setxattr(f, "user.big", big)
    assert os.getxattr(f, "user.big") == big
    out = subprocess.run(["getfattr", "-n", "user.two", "--only-values", f], capture_output=True, check=True)
    assert out.stdout == b"created"
    subprocess.run(["setfattr", "-n", "user.tool", "-v", "by-setfattr", f], check=True)
    assert os.getxattr(f, "user.tool") == b"by-setfattr"
    # xattrs change ctime, not mtime
    before = os.stat(f)
    pause()
    os.setxattr(f, "user.t", b"1")
    after = os.stat(f)
    assert after.st_ctime_ns > before.st_ctime_ns and after.st_mtime_ns == before.st_mtime_ns
    # unsupported namespaces
    raises_errno(errno.EOPNOTSUPP, os.setxattr, f, "bogus.name", b"1")
    # hard links share xattrs; the xattrs go with the inode across rename
    os.link(f, os.path.join(mdir, "g"))
    os.rename(f, os.path.join(mdir, "h"))
    assert os.getxattr(os.path.join(mdir, "g"), "user.two") == b"created"


# ==================================================================== readdir
def test_readdir_while_modifying(mdir):
    d = os.path.join(mdir, "big")
    os.mkdir(d)
    initial = [f"f{i:05d}" for i in range(1500)]
    for n in initial:
        os.close(os.open(os.path.join(d, n), os.O_CREAT | os.O_WRONLY, 0o644))
    rng = random.Random(6)
    deleted: set[str] = set()
    created: list[str] = []
    seen: list[str] = []
    with os.scandir(d) as it:
        for i, entry in enumerate(it):
            seen.append(entry.name)
            if i % 97 == 0:
                # delete some names (seen or not yet seen) and create new ones
                for n in rng.sample(initial, 15):
                    if n not in deleted:
                        os.unlink(os.path.join(d, n))
                        deleted.add(n)
                for _ in range(10):
                    n = f"new{len(created):05d}"
                    os.close(os.open(os.path.join(d, n), os.O_CREAT | os.O_WRONLY, 0o644))
                    created.append(n)
    dups = {n for n in seen if seen.count(n) > 1} if len(seen) != len(set(seen)) else set()
    assert not dups, f"readdir returned duplicates: {sorted(dups)[:10]}"
    survivors = set(initial) - deleted
    missing = survivors - set(seen)
    assert not missing, f"readdir missed entries that existed all along: {sorted(missing)[:10]}"
    assert set(os.listdir(d)) == survivors | set(created)


def test_large_directory(mdir):
    d = os.path.join(mdir, "many")
    os.mkdir(d)
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(3000)}
    for n in names:
        os.close(os.open(os.path.join(d, n), os.O_CREAT | os.O_WRONLY, 0o644))
    for i in range(20):
        os.mkdir(os.path.join(d, f"subdir{i}"))
    listed = os.listdir(d)
    assert len(listed) == len(set(listed)) == 3020
    assert set(listed) == names | {f"subdir{i}" for i in range(20)}
    with os.scandir(d) as it:
        kinds = {e.name: e.is_dir(follow_symlinks=False) for e in it}
    assert sum(kinds.values()) == 20
    assert os.stat(d).st_nlink == 22
    out = subprocess.run(["ls", "-1", d], capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 3020
    out = subprocess.run(["find", d, "-type", "f"], capture_output=True, text=True, check=True).stdout.split()
    assert len(out) == 3000


# ================================================================ file content
def test_large_file_sha256(mdir):
    p = os.path.join(mdir, "large")
    h = hashlib.sha256()
    rng = random.Random(7)
    pieces = [rng.randbytes(MiB) for _ in range(16)]
    total = 300
    fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(total):
            # unique blocks (no dedup shortcuts): mix the index into a random piece
            block = i.to_bytes(8, "little") + pieces[i % 16][8:]
            os.write(fd, block)
            h.update(block)
    finally:
        os.close(fd)
    assert os.stat(p).st_size == total * MiB
    drop_cache(p)
    assert sha256_file(p) == h.hexdigest()


def test_odd_offsets_across_block_boundaries(iodir):
    p = os.path.join(iodir, "odd")
    rng = random.Random(8)
    model = bytearray()
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)

    def pwrite(off: int, data: bytes) -> None:
        assert os.pwrite(fd, data, off) == len(data)
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off : off + len(data)] = data

    try:
        pwrite(0, rng.randbytes(3 * BS + 777))
        for k in (1, 2, 3):
            for delta in (-4097, -1, 0, 1, 511):
                off = k * BS + delta
                pwrite(off, rng.randbytes(rng.choice([1, 2, 3, 4095, 4097, 65537, BS + 3])))
        for _ in range(60):
            off = rng.randrange(0, 5 * BS) | 1
            pwrite(off, rng.randbytes(rng.randrange(1, 300000)))
        for _ in range(200):
            off = rng.randrange(0, len(model) + 10)
            n = rng.randrange(1, 3 * MiB)
            assert os.pread(fd, n, off) == bytes(model[off : off + n]), f"pread({n}, {off})"
        os.fsync(fd)
    finally:
        os.close(fd)
    drop_cache(p)
    assert read_file(p) == bytes(model)
    fd = os.open(p, os.O_RDONLY)
    try:
        for k in (1, 2, 3, 4):
            for delta in (-7, -1, 1, 3):
                off = k * BS + delta
                assert os.pread(fd, 13, off) == bytes(model[off : off + 13])
    finally:
        os.close(fd)


def test_truncate_down_and_up_leaves_zeros(iodir):
    # a big file: down and up inside one block, also across a close
    p = os.path.join(iodir, "big")
    write_file(p, b"\xff" * (BS + 3 * MiB))
    fd = os.open(p, os.O_RDWR)
    try:
        os.ftruncate(fd, BS + 1000)
        os.ftruncate(fd, BS + 2 * MiB)
        assert os.pread(fd, 2000, BS) == b"\xff" * 1000 + bytes(1000)
    finally:
        os.close(fd)
    drop_cache(p)
    data = read_file(p)
    assert data == b"\xff" * (BS + 1000) + bytes(2 * MiB - 1000)
    # truncate(2) by path, after the data was committed
    os.truncate(p, 100)
    os.truncate(p, BS + 10)
    drop_cache(p)
    assert read_file(p) == b"\xff" * 100 + bytes(BS + 10 - 100)
    # a small (inline) file
    q = os.path.join(iodir, "small")
    write_file(q, b"a" * 5000)
    os.truncate(q, 10)
    os.truncate(q, 3000)
    drop_cache(q)
    assert read_file(q) == b"a" * 10 + bytes(2990)
    # down and up with dirty data not yet written out
    r = os.path.join(iodir, "dirty")
    fd = os.open(r, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"z" * (2 * MiB))
        os.ftruncate(fd, MiB + 1)
        os.ftruncate(fd, 2 * MiB)
        os.pwrite(fd, b"end", 2 * MiB)
    finally:
        os.close(fd)
    drop_cache(r)
    assert read_file(r) == b"z" * (MiB + 1) + bytes(MiB - 1) + b"end"


@needs_root
def test_chmod_chown(mdir):
    f = os.path.join(mdir, "f")
    write_file(f, b"x")
    for mode in (0o600, 0o755, 0o4755, 0o2750, 0o1777, 0o000):
        os.chmod(f, mode)
        assert stat.S_IMODE(os.stat(f).st_mode) == mode
    os.chmod(f, 0o644)
    os.chown(f, 1234, 5678)
    st = os.stat(f)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(f, -1, 42)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (1234, 42)
    d = os.path.join(mdir, "d")
    os.mkdir(d, 0o700)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o2775)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o2775
    os.chown(d, 99, 98)
    assert (os.stat(d).st_uid, os.stat(d).st_gid) == (99, 98)
    # lchown changes the symlink, not its target
    os.symlink("f", os.path.join(mdir, "l"))
    os.chown(os.path.join(mdir, "l"), 7, 8, follow_symlinks=False)
    assert (os.lstat(os.path.join(mdir, "l")).st_uid, os.lstat(os.path.join(mdir, "l")).st_gid) == (7, 8)
    assert os.stat(f).st_uid == 1234
    # a new file gets the creator's ids and the umask'd mode
    old = os.umask(0o027)
    try:
        g = os.path.join(mdir, "g")
        write_file(g, b"", mode=0o666)
    finally:
        os.umask(old)
    st = os.stat(g)
    assert stat.S_IMODE(st.st_mode) == 0o640 and (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())


def test_symlinks(mdir):
    write_file(os.path.join(mdir, "target"), b"through the link")
    os.mkdir(os.path.join(mdir, "sub"))
    os.symlink("target", os.path.join(mdir, "rel"))
    os.symlink(os.path.join(mdir, "target"), os.path.join(mdir, "abs"))
    os.symlink("../target", os.path.join(mdir, "sub", "up"))
    os.symlink("does/not/exist", os.path.join(mdir, "dangling"))
    os.symlink("sub", os.path.join(mdir, "dirlink"))
    long_target = "/".join(["x" * 200] * 20)  # ~4 KiB
    os.symlink(long_target, os.path.join(mdir, "long"))
    assert os.readlink(os.path.join(mdir, "rel")) == "target"
    assert os.readlink(os.path.join(mdir, "abs")) == os.path.join(mdir, "target")
    assert os.readlink(os.path.join(mdir, "dangling")) == "does/not/exist"
    assert os.readlink(os.path.join(mdir, "long")) == long_target
    for name in ("rel", "abs", "sub/up"):
        assert read_file(os.path.join(mdir, name)) == b"through the link"
    st = os.lstat(os.path.join(mdir, "rel"))
    assert stat.S_ISLNK(st.st_mode) and st.st_size == len("target")
    assert os.lstat(os.path.join(mdir, "long")).st_size == len(long_target)
    assert not os.path.exists(os.path.join(mdir, "dangling"))
    assert os.path.lexists(os.path.join(mdir, "dangling"))
    assert os.listdir(os.path.join(mdir, "dirlink")) == ["up"]
    raises_errno(errno.EINVAL, os.readlink, os.path.join(mdir, "target"))
    # writing through a dangling symlink creates the target
    os.symlink("made", os.path.join(mdir, "maker"))
    write_file(os.path.join(mdir, "maker"), b"made it")
    assert read_file(os.path.join(mdir, "made")) == b"made it"
    # unlinking a symlink leaves the target
    os.unlink(os.path.join(mdir, "rel"))
    assert os.path.exists(os.path.join(mdir, "target"))
    # renaming a symlink keeps its target text
    os.rename(os.path.join(mdir, "dangling"), os.path.join(mdir, "sub", "moved"))
    assert os.readlink(os.path.join(mdir, "sub", "moved")) == "does/not/exist"


# ======================================================================== CLI
def _nexus(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nexusfs.cli", *args], capture_output=True, text=True, timeout=120)


def _require_cli() -> None:
    import nexusfs.cli  # noqa: F401 - part of the package: its absence is a failure, not a skip


def test_cli_sees_what_the_mount_flushed(mnt):
    _require_cli()
    os.makedirs(mnt.path("docs", "deep"))
    write_file(mnt.path("docs", "a.txt"), b"alpha\n")
    write_file(mnt.path("docs", "deep", "b.bin"), random.Random(9).randbytes(BS + 3))
    os.symlink("a.txt", mnt.path("docs", "link"))
    # still open but fsync'd: the data is committed
    fd = os.open(mnt.path("open.txt"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"synced while open\n")
        os.fsync(fd)
        res = _nexus("--home", mnt.home, "ls", "/")
        assert res.returncode == 0, res.stderr
        assert "docs" in res.stdout and "open.txt" in res.stdout
        res = _nexus("--home", mnt.home, "ls", "/docs")
        assert res.returncode == 0, res.stderr
        assert "a.txt" in res.stdout and "deep" in res.stdout and "link" in res.stdout
        res = _nexus("--home", mnt.home, "cat", "/open.txt")
        assert res.returncode == 0 and res.stdout == "synced while open\n", res.stderr
    finally:
        os.close(fd)
    assert mnt.stop() == 0
    res = _nexus("--home", mnt.home, "cat", "/docs/a.txt")
    assert res.returncode == 0 and res.stdout == "alpha\n", res.stderr
    with nexusfs.connect(mnt.home) as nx:
        assert nx.read_bytes("/docs/deep/b.bin") == random.Random(9).randbytes(BS + 3)
        assert nx.readlink("/docs/link") == "a.txt"
        assert nx.read_bytes("/open.txt") == b"synced while open\n"
        assert nx.fsck().clean


# ============================================== times set while data is unflushed
def test_utime_after_unflushed_write(iodir):
    """cp -p / rsync --inplace order: write, set the times, then close. The times set win."""
    p = os.path.join(iodir, "f")
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"x" * (BS + 100))
        os.utime(p, ns=(1_111_111_111_222_222_222, 1_222_222_222_333_333_333))
        assert os.fstat(fd).st_mtime_ns == 1_222_222_222_333_333_333
    finally:
        os.close(fd)
    st = os.stat(p)
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_111_111_111_222_222_222, 1_222_222_222_333_333_333)
    drop_cache(p)  # (opens it for reading: atime moves on, relatime-style)
    time.sleep(CACHE_TIMEOUT_S + 0.1)  # past the attribute cache: the times come from the filesystem
    st = os.stat(p)
    assert st.st_size == BS + 100
    assert st.st_mtime_ns == 1_222_222_222_333_333_333
    # the same through futimens on the open descriptor
    fd = os.open(p, os.O_RDWR)
    try:
        os.pwrite(fd, b"y", 7)
        os.utime(fd, ns=(5_000_000_001, 6_000_000_002))
        os.pwrite(fd, b"", 0)  # an empty write changes nothing
    finally:
        os.close(fd)
    time.sleep(CACHE_TIMEOUT_S + 0.1)
    assert os.stat(p).st_mtime_ns == 6_000_000_002


# ================================ what pyfuse3 cannot offer, documented as it is
def test_operations_without_a_handler(iodir):
    """pyfuse3 has no flock, fallocate, lseek, copy_file_range or ioctl handlers, and the
    mount leaves ACLs off. This documents what programs see instead."""
    import ctypes
    import fcntl

    p = os.path.join(iodir, "f")
    write_file(p, b"a" * 10000)
    fd = os.open(p, os.O_RDWR)
    fd2 = os.open(p, os.O_RDWR)
    try:
        # flock/POSIX locks: enforced by the kernel between the processes of this machine
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        raises_errno(errno.EAGAIN, fcntl.flock, fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        fcntl.flock(fd2, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd2, fcntl.LOCK_UN)
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
        # fallocate(2) is not supported; glibc's posix_fallocate falls back to writing
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
        assert libc.fallocate(fd, 0, 0, 2 * MiB) == -1 and ctypes.get_errno() == errno.EOPNOTSUPP
        FALLOC_FL_PUNCH_HOLE_KEEP_SIZE = 0x02 | 0x01
        assert libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE_KEEP_SIZE, 0, 4096) == -1
        assert ctypes.get_errno() == errno.EOPNOTSUPP
        os.posix_fallocate(fd, 0, MiB)
        assert os.fstat(fd).st_size == MiB
        assert os.pread(fd, 10001, 0) == b"a" * 10000 + b"\0"
    finally:
        os.close(fd)
        os.close(fd2)
    # SEEK_DATA/SEEK_HOLE: the kernel's generic answer (all data, one hole at the end)
    q = os.path.join(iodir, "sparse")
    with open(q, "wb") as f:
        f.seek(2 * BS)
        f.write(b"x")
    fd = os.open(q, os.O_RDONLY)
    try:
        assert os.lseek(fd, 0, os.SEEK_DATA) == 0
        assert os.lseek(fd, 0, os.SEEK_HOLE) == 2 * BS + 1
        raises_errno(errno.ENXIO, os.lseek, fd, 2 * BS + 1, os.SEEK_DATA)
    finally:
        os.close(fd)
    # copy_file_range: the kernel copies through the page cache; reflinks are refused
    src = os.open(q, os.O_RDONLY)
    dst = os.open(os.path.join(iodir, "copy"), os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        copied = 0
        while copied < 2 * BS + 1:
            n = os.copy_file_range(src, dst, 2 * BS + 1 - copied)
            assert n > 0
            copied += n
        FICLONE = 0x40049409
        raises_errno(errno.EOPNOTSUPP, fcntl.ioctl, dst, FICLONE, src)
    finally:
        os.close(src)
        os.close(dst)
    assert read_file(os.path.join(iodir, "copy")) == read_file(q)
    subprocess.run(["cp", "--reflink=auto", q, os.path.join(iodir, "cp-copy")], check=True)
    assert read_file(os.path.join(iodir, "cp-copy")) == read_file(q)
    # POSIX ACLs are off: the mode bits are the whole story
    setfacl = needs.need_tool("setfacl")
    res = subprocess.run([setfacl, "-m", "u:1000:r", q], capture_output=True, text=True)
    assert res.returncode != 0 and "not supported" in res.stderr, res.stderr


# ============================================ another client writing while mounted
@pytest.mark.parametrize("cache", ["writeback", "no-writeback"])
def test_changes_through_the_api_while_mounted(request, cache):
    """A file changed through the Python API (another process or client) while mounted.

    Without the writeback cache the mount shows the new content and size once the
    attribute timeout (1 s) has passed. With the writeback cache the kernel keeps
    its own idea of a regular file's size (and times) for as long as the inode stays
    in its cache, whatever the filesystem reports (fuse_get_cache_mask() in the
    kernel): the new data is read, but only up to the size the kernel remembers.
    No filesystem reply can change that; use --no-writeback-cache where other
    clients write to files the mount has cached.
    """
    m = request.getfixturevalue("shared_mount" if cache == "writeback" else "nowb_mount")
    name = f"api-{cache}"
    p = m.path(name)
    write_file(p, b"old content")
    assert read_file(p) == b"old content"
    new = b"new content, longer, from the API"
    with nexusfs.connect(m.home) as nx:
        nx.write_bytes(f"/{name}", new)
        nx.write_bytes(f"/{name}-created", b"created by the API")
    # once the attribute and entry timeouts have passed, the mount shows the API's changes
    created = m.path(f"{name}-created")
    assert wait_until(lambda: os.path.exists(created), timeout=CACHE_TIMEOUT_S + 30)
    assert read_file(created) == b"created by the API"
    if cache == "no-writeback":
        assert wait_until(lambda: read_file(p) == new, timeout=CACHE_TIMEOUT_S + 30), read_file(p)
        assert os.stat(p).st_size == len(new)
    else:
        expected = (new, new[: len(b"old content")])
        assert wait_until(lambda: read_file(p) in expected, timeout=CACHE_TIMEOUT_S + 30), read_file(p)


# ====================================================================== limits
def test_limits(mdir):
    # symlink targets up to PATH_MAX - 1
    os.symlink("x" * 4095, os.path.join(mdir, "s"))
    assert len(os.readlink(os.path.join(mdir, "s"))) == 4095
    raises_errno(errno.ENAMETOOLONG, os.symlink, "x" * 4096, os.path.join(mdir, "s2"))
    # xattr values up to 64 KiB, names up to 255 bytes
    f = os.path.join(mdir, "f")
    write_file(f, b"")
    os.setxattr(f, "user.big", b"v" * 65536)
    assert os.getxattr(f, "user.big") == b"v" * 65536
    raises_errno(errno.E2BIG, os.setxattr, f, "user.big2", b"v" * 65537)
    os.setxattr(f, "user." + "n" * 250, b"1")
    raises_errno(errno.ERANGE, os.setxattr, f, "user." + "n" * 251, b"1")
    assert sorted(len(n) for n in os.listxattr(f)) == [8, 255]
    # offsets far beyond any real disk, in a sparse file
    fd = os.open(os.path.join(mdir, "huge"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"end", 2**44 + 1) == 3
        assert os.fstat(fd).st_size == 2**44 + 4
        assert os.pread(fd, 10, 2**44 - 3) == b"\0\0\0\0end"
        os.ftruncate(fd, 2**50)
        assert os.pread(fd, 4, 2**49) == bytes(4)
        raises_errno(errno.EFBIG, os.ftruncate, fd, 2**63 - 1)
    finally:
        os.close(fd)
    st = os.stat(os.path.join(mdir, "huge"))
    assert st.st_size == 2**50 and st.st_blocks < 100
    # deep directory trees
    d = os.path.join(mdir, "deep", *["d"] * 100)
    os.makedirs(d)
    raises_errno(errno.EINVAL, os.rename, os.path.join(mdir, "deep"), os.path.join(d, "x"))
    write_file(os.path.join(d, "leaf"), b"leaf")
    assert read_file(os.path.join(d, "leaf")) == b"leaf"


# ================================================================ concurrency
def test_parallel_io(iodir):
    """Threads writing their own files and disjoint regions of one shared file at once."""
    errors: list[str] = []
    shared = os.path.join(iodir, "shared")
    region = BS // 2 + 4096 + 7  # regions straddle block boundaries
    nregions = 8
    write_file(shared, b"")
    os.truncate(shared, region * nregions)

    def own_files(k: int) -> None:
        try:
            rng = random.Random(100 + k)
            for i in range(25):
                data = rng.randbytes(rng.choice([10, 5000, 100_000, BS + 5]))
                q = os.path.join(iodir, f"w{k}-{i}")
                write_file(q, data)
                assert read_file(q) == data, q
                if i % 3 == 0:
                    os.rename(q, q + ".r")
                    q += ".r"
                if i % 5 == 0:
                    os.unlink(q)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"worker {k}: {exc!r}")

    def shared_region(k: int) -> None:
        try:
            rng = random.Random(200 + k)
            data = rng.randbytes(region)
            fd = os.open(shared, os.O_WRONLY)
            try:
                for off in range(0, region, 65536):
                    os.pwrite(fd, data[off : off + 65536], k * region + off)
            finally:
                os.close(fd)
        except Exception as exc:  # noqa: BLE001
            errors.append(f"region {k}: {exc!r}")

    threads = [threading.Thread(target=own_files, args=(k,)) for k in range(6)]
    threads += [threading.Thread(target=shared_region, args=(k,)) for k in range(nregions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    assert not errors, errors
    drop_cache(shared)
    want = b"".join(random.Random(200 + k).randbytes(region) for k in range(nregions))
    assert read_file(shared) == want
    left = {n for n in os.listdir(iodir) if n.startswith("w")}
    assert left == {f"w{k}-{i}" + (".r" if i % 3 == 0 else "") for k in range(6) for i in range(25) if i % 5}
