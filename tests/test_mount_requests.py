"""How many kernel requests everyday operations cost on the mount.

The mount counts the requests it answers, by kind, when started with
NEXUSFS_COUNT_REQUESTS=1, and returns the counts as JSON from the root's
``user.nexusfs.requests`` attribute. These tests hold the number of requests per
listed entry and per small write() to what they are now, so that a change
which adds a request per entry (an xattr the kernel or ls asks for, attributes
the kernel cannot cache) fails here instead of only in a benchmark.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess

import pytest

from tests import needs
from tests.mount_helpers import errno_of

pytestmark = pytest.mark.mount

COUNTS = "user.nexusfs.requests"
#: files in the listed directory: enough that one request per entry stands out
ENTRIES = 400


@pytest.fixture(scope="module")
def counting(tmp_path_factory):
    """A mount that counts requests; attributes and names cached for 60 s, so that what
    the tests see does not depend on how fast this (shared) machine runs them."""
    needs.need_mount()
    from tests.mountutil import MountedStore

    base = tmp_path_factory.mktemp("requests")
    m = MountedStore(str(base / "store"), str(base / "mnt"), env={"NEXUSFS_COUNT_REQUESTS": "1"},
                     args=["--attr-timeout", "60"])
    m.start()
    try:
        yield m
    finally:
        m.stop()


def counts(m) -> dict[str, int]:
    return json.loads(os.getxattr(m.mountpoint, COUNTS))


def requests_during(m, fn) -> dict[str, int]:
    """The requests (kind -> number) the mount answered while ``fn()`` ran."""
    before = counts(m)
    fn()
    after = counts(m)
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def total(c: dict[str, int]) -> int:
    """All requests (the per-name getxattr keys are a breakdown of "getxattr")."""
    return sum(v for k, v in c.items() if " " not in k)


@pytest.fixture(scope="module")
def listed_dir(counting):
    d = counting.path("many")
    os.mkdir(d)
    for i in range(ENTRIES):
        with open(os.path.join(d, f"file{i:04d}"), "wb") as f:
            f.write(b"x" * (i % 7))
    return d


def drop_kernel_caches() -> None:
    """Make the kernel forget names and attributes (root only; else the listing is warm)."""
    if os.getuid() == 0:
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], check=True)


def ls_l(d: str) -> None:
    res = subprocess.run(["ls", "-l", d], capture_output=True, text=True, check=True)
    assert len(res.stdout.splitlines()) == ENTRIES + 1  # "total" and one line per file


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_ls_l_costs_no_request_per_entry(counting, listed_dir, cache):
    needs.need_tool("ls")
    if cache == "cold":
        drop_kernel_caches()
    else:
        ls_l(listed_dir)
    c = requests_during(counting, lambda: ls_l(listed_dir))
    # readdirplus hands the kernel names with their attributes, a few hundred per request;
    # ls -l asks the filesystem once whether it has ACLs and SELinux labels and is told
    # "not supported" (asked for each file, that was 2 getxattr per entry)
    assert c.get("readdir", 0) <= ENTRIES // 20 + 2, c
    others = total(c) - c.get("readdir", 0)
    assert others <= 10, f"ls -l of {ENTRIES} files sent {others} requests besides readdir: {c}"


@pytest.mark.parametrize("cmd", [["ls", "-lR"], ["find", "-ls"], ["du", "-s"], ["tar", "cf", "/dev/null", "."]])
def test_tree_walks_cost_requests_per_directory_not_per_file(counting, cmd):
    """Recursive listings cost a few requests per directory (open, read, release; tar
    also re-reads a directory's attributes, which reading it made the kernel forget), and
    none per file."""
    needs.need_tool(cmd[0])
    tree = counting.path("tree-" + cmd[0])
    dirs, files = 20, 30
    os.mkdir(tree)
    for i in range(dirs):
        os.mkdir(os.path.join(tree, f"d{i}"))
        for j in range(files):
            with open(os.path.join(tree, f"d{i}", f"f{j}"), "wb") as f:
                f.write(b"y")
    drop_kernel_caches()
    c = requests_during(counting, lambda: subprocess.run(cmd, cwd=tree, stdout=subprocess.DEVNULL, check=True))
    assert total(c) <= 5 * (dirs + 1) + 10, f"{' '.join(cmd)} over {dirs * files} files sent {total(c)}: {c}"


def test_stat_after_listing_is_answered_by_the_kernel(counting, listed_dir):
    """Attributes from readdirplus are cached: stat of every listed entry sends nothing."""
    names = os.listdir(listed_dir)
    assert len(names) == ENTRIES
    c = requests_during(counting, lambda: [os.lstat(os.path.join(listed_dir, n)) for n in names])
    assert total(c) <= 5, c


def test_small_writes_cost_at_most_two_requests_each(counting):
    """Each 4 KiB write() is one WRITE, plus (without the writeback cache) the kernel's
    GETXATTR of security.capability, which libfuse 3.14 cannot switch off (see the
    docs): not more."""
    path = counting.path("small-writes")
    n = 64

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(n):
                assert os.write(fd, b"w" * 4096) == 4096
        finally:
            os.close(fd)

    c = requests_during(counting, write)
    assert c.get("write", 0) <= n, c
    assert total(c) <= 2 * n + 8, c
    assert os.path.getsize(path) == n * 4096


def test_unsupported_xattrs_are_not_supported_and_others_still_work(counting):
    path = counting.path("xattrs")
    with open(path, "wb"):
        pass
    # system.* can never be stored (the engine's setxattr refuses it; the kernel has
    # already refused a malformed ACL), so reading it is "not supported"
    assert errno_of(os.getxattr, path, "system.posix_acl_access") == errno.EOPNOTSUPP
    assert errno_of(os.getxattr, path, "system.posix_acl_default") == errno.EOPNOTSUPP
    if not os.path.exists("/sys/fs/selinux/enforce"):
        assert errno_of(os.getxattr, path, "security.selinux") == errno.EOPNOTSUPP
        # a label someone stored is still there to read
        os.setxattr(path, "security.selinux", b"system_u:object_r:tmp_t:s0")
        assert os.getxattr(path, "security.selinux") == b"system_u:object_r:tmp_t:s0"
        os.removexattr(path, "security.selinux")
    # other names: absent is ENODATA, present is returned
    assert errno_of(os.getxattr, path, "user.nothing") == errno.ENODATA
    assert errno_of(os.getxattr, path, "security.capability") == errno.ENODATA
    os.setxattr(path, "user.k", b"v")
    assert os.getxattr(path, "user.k") == b"v"
    assert os.listxattr(path) == ["user.k"]


#: a version-2 capability set (magic, then permitted and inheritable, low and high words)
CAPS = struct.pack("<5I", 0x02000000, 1 << 10, 0, 0, 0)


def written_after_misses(path: str) -> str:
    """A new file written twice, so the kernel has asked for its security.capability (and
    been told there is none) before each write."""
    with open(path, "wb") as f:
        f.write(b"a")
        f.flush()
        f.write(b"b")
    assert errno_of(os.getxattr, path, "security.capability") == errno.ENODATA
    return path


@needs.root_only("setting security.capability")
def test_capability_after_misses_is_seen_and_cleared_by_a_write(counting):
    """The kernel asks for security.capability before every write(); one set after many
    misses must be seen at once, and the next write() clears it (the kernel removes it,
    as on any filesystem)."""
    path = written_after_misses(counting.path("capfile"))
    caps = CAPS
    os.setxattr(path, "security.capability", caps)
    assert os.getxattr(path, "security.capability") == caps
    with open(path, "r+b") as f:
        c = requests_during(counting, lambda: f.write(b"c") and f.flush())
    assert c.get("removexattr") == 1, c
    assert errno_of(os.getxattr, path, "security.capability") == errno.ENODATA
    os.setxattr(path, "security.capability", caps)
    assert os.getxattr(path, "security.capability") == caps


def test_counting_is_off_by_default(mnt):
    assert errno_of(os.getxattr, mnt.mountpoint, COUNTS) == errno.ENODATA


@needs.root_only("setting security.capability")
def test_a_capability_set_by_another_process_is_cleared_by_a_write(counting):
    """A capability set through the API (another connection to the mounted store) after the
    mount answered misses for the file is still removed by the next write() through the
    mount: no answer about security.capability may be remembered past another writer."""
    import nexusfs

    path = written_after_misses(counting.path("capfile-api"))
    caps = CAPS
    nx = nexusfs.connect(counting.home, semantic=False, background_indexing=False)
    try:
        nx.setxattr("/capfile-api", "security.capability", caps)
    finally:
        nx.close()
    assert os.getxattr(path, "security.capability") == caps
    with open(path, "r+b") as f:
        f.write(b"c")
        f.flush()
    assert errno_of(os.getxattr, path, "security.capability") == errno.ENODATA
    nx = nexusfs.connect(counting.home, semantic=False, background_indexing=False)
    try:  # what is stored, not only what the mount says
        assert "security.capability" not in nx.listxattr("/capfile-api")
    finally:
        nx.close()
