"""The packaging pieces: `nexus mount -d`/`nexus umount`, the mount(8) helper, refusals."""

from __future__ import annotations

import os
import subprocess

import pytest

import nexusfs
from tests import needs
from tests.mountutil import assert_clean_log, force_unmount
from tests.oracles import nexus_bin

pytestmark = pytest.mark.mount

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(REPO, "packaging", "mount.fuse.nexus")


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([nexus_bin(), *args], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def paths(tmp_path):
    home, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    yield str(home), str(mnt)
    force_unmount(str(mnt))
    assert_clean_log(str(home / "mount.log"))  # the background mounts' log


def mounted(mnt: str) -> bool:
    with open("/proc/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == mnt for line in f)


def test_background_mount_then_umount_writes_everything_out(paths):
    home, mnt = paths
    r = run("--home", home, "mount", "-d", mnt)
    assert r.returncode == 0, r.stderr
    assert mounted(mnt)
    with open(os.path.join(mnt, "f.txt"), "w") as f:
        f.write("written through the mount\n")
    r = run("umount", mnt)
    assert r.returncode == 0, r.stderr
    assert not mounted(mnt)
    # umount waited for the mount process: the store is free and holds the data
    with nexusfs.connect(home) as nx:
        assert nx.read_text("/f.txt") == "written through the mount\n"
        assert nx.fsck().clean


def test_mount_refuses_with_one_line(paths, tmp_path):
    home, mnt = paths
    missing = str(tmp_path / "nope")
    r = run("--home", home, "mount", "-d", missing)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    r = run("--home", home, "mount", "-d", str(full))
    assert r.returncode != 0 and "not empty" in r.stderr and "Traceback" not in r.stderr
    # a store that is already mounted
    assert run("--home", home, "mount", "-d", mnt).returncode == 0
    other = tmp_path / "other"
    other.mkdir()
    try:
        r = run("--home", home, "mount", "-d", str(other))
        assert r.returncode != 0 and "already mounted" in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1
        r = run("umount", str(other))
        assert r.returncode != 0 and "not mounted" in r.stderr
    finally:
        run("umount", mnt)


def test_cli_sees_what_the_mount_flushed(paths):
    home, mnt = paths
    assert run("--home", home, "mount", "-d", mnt).returncode == 0
    try:
        with open(os.path.join(mnt, "a.txt"), "w") as f:
            f.write("hello\n")
        r = run("--home", home, "cat", "/a.txt")
        assert r.returncode == 0 and r.stdout == "hello\n", r.stderr
        r = run("--home", home, "ls", "/")
        assert "a.txt" in r.stdout.split()
    finally:
        assert run("umount", mnt).returncode == 0


@needs.root_only("mount(8) with a helper needs root")
def test_fstab_helper_mounts_like_mount_t_fuse_nexus(paths):
    """mount(8) runs /sbin/mount.fuse.nexus SOURCE MNT -o OPTS: call it the same way."""
    home, mnt = paths
    env = dict(os.environ, NEXUS_BIN=nexus_bin())
    r = subprocess.run([HELPER, home, mnt, "-o", "rw,_netdev,allow_other,nofail"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    try:
        assert mounted(mnt)
        with open("/proc/mounts", encoding="utf-8") as f:
            line = next(ln for ln in f if ln.split()[1] == mnt)
        assert line.split()[2] == "fuse.nexus" and "allow_other" in line
        with open(os.path.join(mnt, "x"), "w") as f:
            f.write("via fstab helper")
    finally:
        assert run("umount", mnt).returncode == 0
    with nexusfs.connect(home) as nx:
        assert nx.read_text("/x") == "via fstab helper"


def test_fstab_helper_rejects_unknown_options(paths):
    home, mnt = paths
    env = dict(os.environ, NEXUS_BIN=nexus_bin())
    r = subprocess.run([HELPER, home, mnt, "-o", "bogus_option"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "unknown mount option" in r.stderr
    assert not mounted(mnt)
