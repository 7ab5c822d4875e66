"""Conformance of the metadata engine with POSIX namespace rules.

Every test goes through :class:`MetadataEngine` / :class:`VFS` methods only (no
SQL), so the same suite runs against every SQL dialect: the ``env`` fixture is
parametrized by dialect (only SQLite exists today; PostgreSQL adds a param).
After each test the store must pass fsck.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nexusfs.config import Config
from nexusfs.errors import FsError
from nexusfs.fsck import Fsck
from nexusfs.meta.engine import MetadataEngine
from nexusfs.store import Store
from nexusfs.types import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INODE,
    TIME_NOW,
    TIME_NS_MAX,
    TIME_NS_MIN,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
)
from nexusfs.vfs import VFS

UID, GID = 1000, 1000
OLD_NS = 1_000_000_000  # 1970-01-01T00:00:01: any change to "now" moves a time past this

REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


# ------------------------------------------------------------------ fixture
def _metadata_url(dialect: str, home: str) -> str:
    if dialect == "sqlite":
        return "sqlite://" + os.path.join(home, "meta.db")
    raise NotImplementedError(dialect)  # e.g. "postgresql": a scratch database per test


@dataclass
class Env:
    """The engine under test plus a few helpers that keep the tests short."""

    store: Store

    @property
    def meta(self) -> MetadataEngine:
        return self.store.meta

    @property
    def vfs(self) -> VFS:
        return self.store.vfs

    def pinned(self, ino: int) -> bool:
        return self.vfs.is_pinned(ino)

    # namespace
    def mk(self, parent: int, name: bytes, mode: int = REG, **kw) -> Attr:
        return self.meta.create(parent, name, mode, UID, GID, **kw)

    def mkdir(self, parent: int, name: bytes, mode: int = DIR) -> Attr:
        return self.meta.create(parent, name, stat.S_IFDIR | (mode & 0o7777), UID, GID)

    def symlink(self, parent: int, name: bytes, target: bytes) -> Attr:
        return self.meta.create(parent, name, stat.S_IFLNK | 0o777, UID, GID, target=target)

    def unlink(self, parent: int, name: bytes) -> int:
        return self.meta.unlink(parent, name, self.pinned)

    def rmdir(self, parent: int, name: bytes) -> int:
        return self.meta.rmdir(parent, name, self.pinned)

    def rename(self, op: int, on: bytes, np: int, nn: bytes, flags: int = 0) -> int | None:
        return self.meta.rename(op, on, np, nn, flags, self.pinned)

    def attr(self, ino: int) -> Attr:
        return self.meta.getattr(ino)

    def nlink(self, ino: int) -> int:
        return self.meta.getattr(ino).nlink

    def ino_of(self, parent: int, name: bytes) -> int:
        return self.meta.lookup(parent, name).ino

    def exists(self, ino: int) -> bool:
        try:
            self.meta.getattr(ino)
            return True
        except FsError as exc:
            assert exc.errno == errno.ENOENT
            return False

    def names(self, d: int) -> list[bytes]:
        return [e.name for e in self.meta.readdir(d) if e.name not in (b".", b"..")]

    # content
    def write(self, ino: int, data: bytes, offset: int = 0) -> None:
        fh = self.vfs.open(ino, os.O_WRONLY)
        try:
            self.vfs.write(fh, offset, data)
        finally:
            self.vfs.release(fh)

    def read(self, ino: int) -> bytes:
        fh = self.vfs.open(ino, os.O_RDONLY)
        try:
            return self.vfs.read(fh, 0, 1 << 30)
        finally:
            self.vfs.release(fh)

    def age(self, ino: int) -> None:
        """Set every time of ``ino`` far in the past, so that any update is visible."""
        self.meta.setattr(ino, atime_ns=OLD_NS, mtime_ns=OLD_NS, ctime_ns=OLD_NS)


DIALECTS = ["sqlite"]


@pytest.fixture(params=DIALECTS)
def env(request, tmp_path) -> Iterator[Env]:
    home = str(tmp_path / f"store-{request.param}")
    config = Config.load(
        home=home,
        metadata=_metadata_url(request.param, home),
        block_size=64 * 1024,
        inline_max=1024,
        cache_size=1 << 20,
        dirty_limit=1 << 20,
    )
    store = Store.open(config)
    e = Env(store)
    try:
        yield e
        report = Fsck(e.store).run(verify_data=True)
        assert report.clean, [str(p) for p in report.problems]
    finally:
        e.store.close()


def err(excinfo) -> int:
    return excinfo.value.errno


# ------------------------------------------------------------------ root & lookup
def test_fresh_store_has_an_empty_root_directory_with_nlink_2(env):
    root = env.attr(ROOT_INODE)
    assert root.is_dir
    assert root.nlink == 2
    assert env.names(ROOT_INODE) == []


def test_lookup_finds_a_created_name(env):
    a = env.mk(ROOT_INODE, b"file")
    got = env.meta.lookup(ROOT_INODE, b"file")
    assert got.ino == a.ino and got.is_reg


def test_lookup_of_dot_and_dotdot(env):
    d = env.mkdir(ROOT_INODE, b"d")
    sub = env.mkdir(d.ino, b"sub")
    assert env.meta.lookup(sub.ino, b".").ino == sub.ino
    assert env.meta.lookup(sub.ino, b"..").ino == d.ino
    assert env.meta.lookup(ROOT_INODE, b"..").ino == ROOT_INODE


def test_lookup_of_missing_name_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.meta.lookup(ROOT_INODE, b"missing")
    assert err(ei) == errno.ENOENT


def test_lookup_inside_a_file_fails(env):
    # Callers (the kernel, the path API) check the type before a lookup, so the
    # engine's negative lookup may skip that check: either answer is an error.
    f = env.mk(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.meta.lookup(f.ino, b"x")
    assert err(ei) in (errno.ENOTDIR, errno.ENOENT)


def test_lookup_of_overlong_name_is_enametoolong(env):
    with pytest.raises(FsError) as ei:
        env.meta.lookup(ROOT_INODE, b"n" * 256)
    assert err(ei) == errno.ENAMETOOLONG


def test_getattr_of_unknown_inode_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.attr(987654)
    assert err(ei) == errno.ENOENT


def test_names_are_raw_bytes_and_case_sensitive(env):
    a = env.mk(ROOT_INODE, b"Name")
    b = env.mk(ROOT_INODE, b"name")
    c = env.mk(ROOT_INODE, b"\xff\xfe-not-utf8")
    assert len({a.ino, b.ino, c.ino}) == 3
    assert env.ino_of(ROOT_INODE, b"\xff\xfe-not-utf8") == c.ino
    assert sorted(env.names(ROOT_INODE)) == sorted([b"Name", b"name", b"\xff\xfe-not-utf8"])


# ------------------------------------------------------------------ create
@pytest.mark.parametrize(
    "fmt",
    [stat.S_IFREG, stat.S_IFDIR, stat.S_IFIFO, stat.S_IFSOCK],
    ids=["file", "dir", "fifo", "socket"],
)
def test_create_each_simple_type(env, fmt):
    a = env.mk(ROOT_INODE, b"node", fmt | 0o640)
    got = env.attr(a.ino)
    assert stat.S_IFMT(got.mode) == fmt
    assert stat.S_IMODE(got.mode) == 0o640
    assert (got.uid, got.gid) == (UID, GID)
    assert got.size == 0 and got.rdev == 0
    assert got.nlink == (2 if fmt == stat.S_IFDIR else 1)
    assert got == a  # what create returns is what is stored
    assert env.meta.lookup(ROOT_INODE, b"node").ino == a.ino


@pytest.mark.parametrize("fmt", [stat.S_IFCHR, stat.S_IFBLK], ids=["char", "block"])
def test_create_device_nodes_keeps_rdev(env, fmt):
    rdev = os.makedev(8, 17)
    a = env.mk(ROOT_INODE, b"dev", fmt | 0o600, rdev=rdev)
    got = env.attr(a.ino)
    assert stat.S_IFMT(got.mode) == fmt
    assert got.rdev == rdev
    assert (os.major(got.rdev), os.minor(got.rdev)) == (8, 17)


def test_rdev_is_ignored_for_non_device_types(env):
    a = env.mk(ROOT_INODE, b"f", REG, rdev=os.makedev(1, 3))
    assert env.attr(a.ino).rdev == 0


def test_create_without_type_bits_makes_a_regular_file(env):
    a = env.mk(ROOT_INODE, b"f", 0o600)
    assert stat.S_ISREG(env.attr(a.ino).mode)
    assert stat.S_IMODE(env.attr(a.ino).mode) == 0o600


def test_create_with_an_unknown_file_type_is_einval(env):
    with pytest.raises(FsError) as ei:
        env.mk(ROOT_INODE, b"weird", 0o170000 | 0o644)
    assert err(ei) == errno.EINVAL
    assert env.names(ROOT_INODE) == []


def test_create_sets_all_times_and_btime_to_now(env):
    before = time.time_ns()
    a = env.mk(ROOT_INODE, b"f")
    after = time.time_ns()
    got = env.attr(a.ino)
    for t in (got.atime_ns, got.mtime_ns, got.ctime_ns, got.btime_ns):
        assert before <= t <= after


def test_inode_numbers_are_never_reused(env):
    a = env.mk(ROOT_INODE, b"a")
    env.unlink(ROOT_INODE, b"a")
    b = env.mk(ROOT_INODE, b"a")
    assert b.ino != a.ino
    assert b.ino > a.ino


def test_create_existing_name_is_eexist_for_any_type(env):
    env.mk(ROOT_INODE, b"x")
    for mode in (REG, DIR, stat.S_IFIFO | 0o644):
        with pytest.raises(FsError) as ei:
            env.mk(ROOT_INODE, b"x", mode)
        assert err(ei) == errno.EEXIST
    with pytest.raises(FsError) as ei:
        env.symlink(ROOT_INODE, b"x", b"target")
    assert err(ei) == errno.EEXIST
    assert env.names(ROOT_INODE) == [b"x"]
    assert env.nlink(ROOT_INODE) == 2


def test_create_in_missing_parent_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.mk(424242, b"f")
    assert err(ei) == errno.ENOENT


def test_create_inside_a_file_is_enotdir(env):
    f = env.mk(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.mk(f.ino, b"child")
    assert err(ei) == errno.ENOTDIR


def test_create_in_a_removed_but_open_directory_is_enoent(env):
    d = env.mkdir(ROOT_INODE, b"d")
    env.vfs.pin(d.ino)
    env.rmdir(ROOT_INODE, b"d")
    assert env.nlink(d.ino) == 0
    with pytest.raises(FsError) as ei:
        env.mk(d.ino, b"late")
    assert err(ei) == errno.ENOENT
    env.vfs.unpin(d.ino)
    assert not env.exists(d.ino)


# ------------------------------------------------------------------ names
def test_name_of_255_bytes_is_accepted(env):
    name = b"n" * 255
    a = env.mk(ROOT_INODE, name)
    assert env.ino_of(ROOT_INODE, name) == a.ino


def test_name_of_255_multibyte_bytes_is_accepted_and_256_is_not(env):
    ok = "é".encode() * 127 + b"x"  # 255 bytes, 128 characters
    env.mk(ROOT_INODE, ok)
    with pytest.raises(FsError) as ei:
        env.mk(ROOT_INODE, "é".encode() * 128)  # 256 bytes
    assert err(ei) == errno.ENAMETOOLONG


@pytest.mark.parametrize("op", ["create", "mkdir", "symlink", "link", "rename"])
def test_name_longer_than_255_bytes_is_enametoolong(env, op):
    f = env.mk(ROOT_INODE, b"src")
    long = b"L" * 256
    with pytest.raises(FsError) as ei:
        if op == "create":
            env.mk(ROOT_INODE, long)
        elif op == "mkdir":
            env.mkdir(ROOT_INODE, long)
        elif op == "symlink":
            env.symlink(ROOT_INODE, long, b"t")
        elif op == "link":
            env.meta.link(f.ino, ROOT_INODE, long)
        else:
            env.rename(ROOT_INODE, b"src", ROOT_INODE, long)
    assert err(ei) == errno.ENAMETOOLONG
    assert env.names(ROOT_INODE) == [b"src"]


@pytest.mark.parametrize("name", [b"a/b", b"/", b"nul\0byte", b"\0", b""])
@pytest.mark.parametrize("op", ["create", "mkdir", "link", "rename"])
def test_name_with_slash_or_nul_or_empty_is_einval(env, op, name):
    f = env.mk(ROOT_INODE, b"src")
    with pytest.raises(FsError) as ei:
        if op == "create":
            env.mk(ROOT_INODE, name)
        elif op == "mkdir":
            env.mkdir(ROOT_INODE, name)
        elif op == "link":
            env.meta.link(f.ino, ROOT_INODE, name)
        else:
            env.rename(ROOT_INODE, b"src", ROOT_INODE, name)
    assert err(ei) == errno.EINVAL
    assert env.names(ROOT_INODE) == [b"src"]


@pytest.mark.parametrize("name", [b".", b".."])
def test_dot_and_dotdot_cannot_be_created(env, name):
    with pytest.raises(FsError) as ei:
        env.mk(ROOT_INODE, name)
    assert err(ei) in (errno.EINVAL, errno.EEXIST)
    assert env.names(ROOT_INODE) == []


# ------------------------------------------------------------------ mkdir & nlink
def test_mkdir_new_directory_has_nlink_2_and_parent_gains_one(env):
    d = env.mkdir(ROOT_INODE, b"d")
    assert env.nlink(d.ino) == 2
    assert env.nlink(ROOT_INODE) == 3


def test_directory_nlink_is_2_plus_subdirectories(env):
    d = env.mkdir(ROOT_INODE, b"d")
    for i in range(5):
        env.mkdir(d.ino, b"sub%d" % i)
    for i in range(4):
        env.mk(d.ino, b"file%d" % i)  # files do not count
    env.symlink(d.ino, b"link", b"sub0")  # nor do symlinks
    assert env.nlink(d.ino) == 2 + 5
    env.rmdir(d.ino, b"sub3")
    assert env.nlink(d.ino) == 2 + 4
    env.unlink(d.ino, b"file0")
    assert env.nlink(d.ino) == 2 + 4


def test_mkdir_mode_and_owner(env):
    d = env.mkdir(ROOT_INODE, b"d", 0o1750)
    got = env.attr(d.ino)
    assert got.is_dir
    assert stat.S_IMODE(got.mode) == 0o1750
    assert (got.uid, got.gid) == (UID, GID)


# ------------------------------------------------------------------ symlinks
def test_symlink_stores_target_and_size(env):
    target = b"../some/where/\xff raw"
    s = env.symlink(ROOT_INODE, b"s", target)
    got = env.attr(s.ino)
    assert got.is_symlink
    assert stat.S_IMODE(got.mode) == 0o777
    assert got.size == len(target)
    assert env.meta.readlink(s.ino) == target


def test_symlink_mode_is_always_0777(env):
    s = env.meta.create(ROOT_INODE, b"s", stat.S_IFLNK | 0o600, UID, GID, target=b"t")
    assert stat.S_IMODE(env.attr(s.ino).mode) == 0o777


def test_symlink_target_may_dangle(env):
    s = env.symlink(ROOT_INODE, b"s", b"/does/not/exist")
    assert env.meta.readlink(s.ino) == b"/does/not/exist"


def test_symlink_with_empty_target_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.symlink(ROOT_INODE, b"s", b"")
    assert err(ei) == errno.ENOENT
    assert env.names(ROOT_INODE) == []


def test_symlink_target_longer_than_4095_is_enametoolong(env):
    env.symlink(ROOT_INODE, b"ok", b"t" * 4095)
    with pytest.raises(FsError) as ei:
        env.symlink(ROOT_INODE, b"long", b"t" * 4096)
    assert err(ei) == errno.ENAMETOOLONG
    assert env.names(ROOT_INODE) == [b"ok"]


def test_readlink_of_a_non_symlink_is_einval(env):
    f = env.mk(ROOT_INODE, b"f")
    d = env.mkdir(ROOT_INODE, b"d")
    for ino in (f.ino, d.ino):
        with pytest.raises(FsError) as ei:
            env.meta.readlink(ino)
        assert err(ei) == errno.EINVAL


def test_unlink_of_a_symlink_removes_the_link_not_the_target(env):
    f = env.mk(ROOT_INODE, b"f")
    env.symlink(ROOT_INODE, b"s", b"f")
    env.unlink(ROOT_INODE, b"s")
    assert env.names(ROOT_INODE) == [b"f"]
    assert env.exists(f.ino)


# ------------------------------------------------------------------ link
def test_link_adds_a_name_and_counts_it(env):
    f = env.mk(ROOT_INODE, b"f")
    d = env.mkdir(ROOT_INODE, b"d")
    got = env.meta.link(f.ino, d.ino, b"g")
    assert got.ino == f.ino and got.nlink == 2
    assert env.nlink(f.ino) == 2
    assert env.ino_of(d.ino, b"g") == f.ino
    env.meta.link(f.ino, ROOT_INODE, b"h")
    assert env.nlink(f.ino) == 3


def test_hard_links_share_content(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.link(f.ino, ROOT_INODE, b"g")
    env.write(env.ino_of(ROOT_INODE, b"g"), b"shared content")
    assert env.read(env.ino_of(ROOT_INODE, b"f")) == b"shared content"


def test_link_to_a_directory_is_eperm(env):
    d = env.mkdir(ROOT_INODE, b"d")
    with pytest.raises(FsError) as ei:
        env.meta.link(d.ino, ROOT_INODE, b"d2")
    assert err(ei) == errno.EPERM
    assert env.nlink(d.ino) == 2
    assert env.names(ROOT_INODE) == [b"d"]


def test_link_onto_existing_name_is_eexist(env):
    f = env.mk(ROOT_INODE, b"f")
    env.mk(ROOT_INODE, b"g")
    with pytest.raises(FsError) as ei:
        env.meta.link(f.ino, ROOT_INODE, b"g")
    assert err(ei) == errno.EEXIST
    assert env.nlink(f.ino) == 1


def test_link_into_a_file_is_enotdir(env):
    f = env.mk(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.meta.link(f.ino, f.ino, b"x")
    assert err(ei) == errno.ENOTDIR


def test_link_of_a_symlink_links_the_symlink_itself(env):
    s = env.symlink(ROOT_INODE, b"s", b"target")
    env.meta.link(s.ino, ROOT_INODE, b"s2")
    assert env.ino_of(ROOT_INODE, b"s2") == s.ino
    assert env.nlink(s.ino) == 2
    assert env.meta.readlink(s.ino) == b"target"


def test_link_of_an_unlinked_open_file_is_enoent(env):
    f = env.mk(ROOT_INODE, b"f")
    env.vfs.pin(f.ino)
    env.unlink(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.meta.link(f.ino, ROOT_INODE, b"back")
    assert err(ei) == errno.ENOENT
    env.vfs.unpin(f.ino)


def test_link_updates_ctime_of_inode_and_times_of_new_parent(env):
    f = env.mk(ROOT_INODE, b"f")
    d = env.mkdir(ROOT_INODE, b"d")
    env.age(f.ino)
    env.age(d.ino)
    env.meta.link(f.ino, d.ino, b"g")
    fa, da = env.attr(f.ino), env.attr(d.ino)
    assert fa.ctime_ns > OLD_NS
    assert fa.mtime_ns == OLD_NS  # content did not change
    assert da.mtime_ns > OLD_NS and da.ctime_ns > OLD_NS


# ------------------------------------------------------------------ unlink
def test_unlink_removes_the_name_and_the_inode(env):
    f = env.mk(ROOT_INODE, b"f")
    assert env.unlink(ROOT_INODE, b"f") == f.ino
    assert env.names(ROOT_INODE) == []
    assert not env.exists(f.ino)


def test_unlink_of_one_hard_link_keeps_the_others(env):
    f = env.mk(ROOT_INODE, b"f")
    env.write(f.ino, b"data" * 1000)
    env.meta.link(f.ino, ROOT_INODE, b"g")
    env.unlink(ROOT_INODE, b"f")
    assert env.nlink(f.ino) == 1
    assert env.read(f.ino) == b"data" * 1000
    env.unlink(ROOT_INODE, b"g")
    assert not env.exists(f.ino)


def test_unlink_of_a_directory_is_eisdir(env):
    env.mkdir(ROOT_INODE, b"d")
    with pytest.raises(FsError) as ei:
        env.unlink(ROOT_INODE, b"d")
    assert err(ei) == errno.EISDIR
    assert env.names(ROOT_INODE) == [b"d"]


def test_unlink_of_missing_name_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.unlink(ROOT_INODE, b"nope")
    assert err(ei) == errno.ENOENT


def test_unlink_inside_a_file_is_enotdir(env):
    f = env.mk(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.unlink(f.ino, b"x")
    assert err(ei) == errno.ENOTDIR


@pytest.mark.parametrize("fmt", [stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK])
def test_unlink_removes_special_files(env, fmt):
    a = env.mk(ROOT_INODE, b"n", fmt | 0o600, rdev=os.makedev(1, 1))
    env.unlink(ROOT_INODE, b"n")
    assert not env.exists(a.ino)


def test_unlink_updates_parent_times_and_ctime_of_remaining_inode(env):
    d = env.mkdir(ROOT_INODE, b"d")
    f = env.mk(d.ino, b"f")
    env.meta.link(f.ino, ROOT_INODE, b"keep")
    env.age(d.ino)
    env.age(f.ino)
    env.unlink(d.ino, b"f")
    da, fa = env.attr(d.ino), env.attr(f.ino)
    assert da.mtime_ns > OLD_NS and da.ctime_ns > OLD_NS
    assert fa.ctime_ns > OLD_NS


# ------------------------------------------------------------------ rmdir
def test_rmdir_removes_an_empty_directory(env):
    d = env.mkdir(ROOT_INODE, b"d")
    assert env.rmdir(ROOT_INODE, b"d") == d.ino
    assert env.names(ROOT_INODE) == []
    assert env.nlink(ROOT_INODE) == 2
    assert not env.exists(d.ino)


def test_rmdir_of_non_empty_directory_is_enotempty(env):
    d = env.mkdir(ROOT_INODE, b"d")
    env.mk(d.ino, b"f")
    with pytest.raises(FsError) as ei:
        env.rmdir(ROOT_INODE, b"d")
    assert err(ei) == errno.ENOTEMPTY
    e = env.mkdir(ROOT_INODE, b"e")
    env.mkdir(e.ino, b"sub")
    with pytest.raises(FsError) as ei:
        env.rmdir(ROOT_INODE, b"e")
    assert err(ei) == errno.ENOTEMPTY
    assert sorted(env.names(ROOT_INODE)) == [b"d", b"e"]


def test_rmdir_of_a_file_is_enotdir(env):
    env.mk(ROOT_INODE, b"f")
    env.symlink(ROOT_INODE, b"s", b"f")
    for name in (b"f", b"s"):
        with pytest.raises(FsError) as ei:
            env.rmdir(ROOT_INODE, name)
        assert err(ei) == errno.ENOTDIR


def test_rmdir_of_missing_name_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.rmdir(ROOT_INODE, b"nope")
    assert err(ei) == errno.ENOENT


def test_rmdir_of_dot_is_einval_and_dotdot_is_enotempty(env):
    d = env.mkdir(ROOT_INODE, b"d")
    with pytest.raises(FsError) as ei:
        env.rmdir(d.ino, b".")
    assert err(ei) == errno.EINVAL
    with pytest.raises(FsError) as ei:
        env.rmdir(d.ino, b"..")
    assert err(ei) == errno.ENOTEMPTY
    assert env.exists(d.ino)


def test_rmdir_updates_parent_times(env):
    p = env.mkdir(ROOT_INODE, b"p")
    env.mkdir(p.ino, b"d")
    env.age(p.ino)
    env.rmdir(p.ino, b"d")
    pa = env.attr(p.ino)
    assert pa.mtime_ns > OLD_NS and pa.ctime_ns > OLD_NS
    assert pa.nlink == 2


# ------------------------------------------------------------------ rename
def test_rename_moves_a_file_within_a_directory(env):
    f = env.mk(ROOT_INODE, b"a")
    assert env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b") is None
    assert env.names(ROOT_INODE) == [b"b"]
    assert env.ino_of(ROOT_INODE, b"b") == f.ino
    assert env.nlink(f.ino) == 1


def test_rename_moves_a_file_across_directories(env):
    d1 = env.mkdir(ROOT_INODE, b"d1")
    d2 = env.mkdir(ROOT_INODE, b"d2")
    f = env.mk(d1.ino, b"f")
    env.rename(d1.ino, b"f", d2.ino, b"g")
    assert env.names(d1.ino) == []
    assert env.ino_of(d2.ino, b"g") == f.ino
    assert env.nlink(d1.ino) == 2 and env.nlink(d2.ino) == 2


def test_rename_replaces_an_existing_file(env):
    a = env.mk(ROOT_INODE, b"a")
    b = env.mk(ROOT_INODE, b"b")
    env.write(b.ino, os.urandom(200_000))
    assert env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b") == b.ino
    assert env.names(ROOT_INODE) == [b"b"]
    assert env.ino_of(ROOT_INODE, b"b") == a.ino
    assert not env.exists(b.ino)


def test_rename_replacing_a_hard_linked_file_keeps_its_other_name(env):
    a = env.mk(ROOT_INODE, b"a")
    b = env.mk(ROOT_INODE, b"b")
    env.meta.link(b.ino, ROOT_INODE, b"b2")
    env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")
    assert env.ino_of(ROOT_INODE, b"b") == a.ino
    assert env.nlink(b.ino) == 1
    assert env.ino_of(ROOT_INODE, b"b2") == b.ino


def test_rename_directory_across_parents_fixes_nlink_and_dotdot(env):
    p1 = env.mkdir(ROOT_INODE, b"p1")
    p2 = env.mkdir(ROOT_INODE, b"p2")
    d = env.mkdir(p1.ino, b"d")
    env.mkdir(d.ino, b"inner")
    env.rename(p1.ino, b"d", p2.ino, b"moved")
    assert env.nlink(p1.ino) == 2
    assert env.nlink(p2.ino) == 3
    assert env.nlink(d.ino) == 3
    assert env.meta.lookup(d.ino, b"..").ino == p2.ino
    assert env.meta.path_of(env.ino_of(d.ino, b"inner")) == b"/p2/moved/inner"


def test_rename_directory_within_parent_keeps_nlink(env):
    d = env.mkdir(ROOT_INODE, b"d")
    env.rename(ROOT_INODE, b"d", ROOT_INODE, b"e")
    assert env.nlink(ROOT_INODE) == 3
    assert env.ino_of(ROOT_INODE, b"e") == d.ino


def test_rename_replaces_an_empty_directory(env):
    p1 = env.mkdir(ROOT_INODE, b"p1")
    p2 = env.mkdir(ROOT_INODE, b"p2")
    src = env.mkdir(p1.ino, b"src")
    dst = env.mkdir(p2.ino, b"dst")
    assert env.rename(p1.ino, b"src", p2.ino, b"dst") == dst.ino
    assert env.ino_of(p2.ino, b"dst") == src.ino
    assert not env.exists(dst.ino)
    assert env.nlink(p1.ino) == 2
    assert env.nlink(p2.ino) == 3
    assert env.nlink(ROOT_INODE) == 4


def test_rename_replaces_an_empty_directory_in_the_same_parent(env):
    src = env.mkdir(ROOT_INODE, b"src")
    env.mkdir(ROOT_INODE, b"dst")
    env.rename(ROOT_INODE, b"src", ROOT_INODE, b"dst")
    assert env.names(ROOT_INODE) == [b"dst"]
    assert env.ino_of(ROOT_INODE, b"dst") == src.ino
    assert env.nlink(ROOT_INODE) == 3


def test_rename_onto_a_non_empty_directory_is_enotempty(env):
    env.mkdir(ROOT_INODE, b"src")
    dst = env.mkdir(ROOT_INODE, b"dst")
    env.mk(dst.ino, b"child")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"src", ROOT_INODE, b"dst")
    assert err(ei) == errno.ENOTEMPTY
    assert sorted(env.names(ROOT_INODE)) == [b"dst", b"src"]
    assert env.names(dst.ino) == [b"child"]


def test_rename_file_onto_directory_is_eisdir(env):
    env.mk(ROOT_INODE, b"f")
    env.mkdir(ROOT_INODE, b"d")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"f", ROOT_INODE, b"d")
    assert err(ei) == errno.EISDIR
    assert sorted(env.names(ROOT_INODE)) == [b"d", b"f"]


def test_rename_directory_onto_file_is_enotdir(env):
    env.mk(ROOT_INODE, b"f")
    env.mkdir(ROOT_INODE, b"d")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"d", ROOT_INODE, b"f")
    assert err(ei) == errno.ENOTDIR
    assert sorted(env.names(ROOT_INODE)) == [b"d", b"f"]


def test_rename_of_missing_source_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"nope", ROOT_INODE, b"x")
    assert err(ei) == errno.ENOENT


def test_rename_into_a_file_is_enotdir(env):
    f = env.mk(ROOT_INODE, b"f")
    env.mk(ROOT_INODE, b"g")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"g", f.ino, b"x")
    assert err(ei) == errno.ENOTDIR


def test_rename_noreplace_onto_existing_name_is_eexist(env):
    a = env.mk(ROOT_INODE, b"a")
    b = env.mk(ROOT_INODE, b"b")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", RENAME_NOREPLACE)
    assert err(ei) == errno.EEXIST
    assert env.ino_of(ROOT_INODE, b"a") == a.ino
    assert env.ino_of(ROOT_INODE, b"b") == b.ino


def test_rename_noreplace_onto_free_name_moves(env):
    a = env.mk(ROOT_INODE, b"a")
    env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", RENAME_NOREPLACE)
    assert env.ino_of(ROOT_INODE, b"b") == a.ino


def test_rename_with_both_noreplace_and_exchange_is_einval(env):
    env.mk(ROOT_INODE, b"a")
    env.mk(ROOT_INODE, b"b")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", RENAME_NOREPLACE | RENAME_EXCHANGE)
    assert err(ei) == errno.EINVAL


def test_rename_with_unknown_flag_is_einval(env):
    env.mk(ROOT_INODE, b"a")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", 1 << 5)
    assert err(ei) == errno.EINVAL
    assert env.names(ROOT_INODE) == [b"a"]


def test_rename_exchange_swaps_two_files(env):
    a = env.mk(ROOT_INODE, b"a")
    b = env.mk(ROOT_INODE, b"b")
    assert env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", RENAME_EXCHANGE) is None
    assert env.ino_of(ROOT_INODE, b"a") == b.ino
    assert env.ino_of(ROOT_INODE, b"b") == a.ino
    assert env.nlink(a.ino) == 1 and env.nlink(b.ino) == 1


def test_rename_exchange_file_and_directory_across_parents_fixes_nlink(env):
    p1 = env.mkdir(ROOT_INODE, b"p1")
    p2 = env.mkdir(ROOT_INODE, b"p2")
    f = env.mk(p1.ino, b"f")
    d = env.mkdir(p2.ino, b"d")
    env.mkdir(d.ino, b"inner")
    env.rename(p1.ino, b"f", p2.ino, b"d", RENAME_EXCHANGE)
    assert env.ino_of(p1.ino, b"f") == d.ino
    assert env.ino_of(p2.ino, b"d") == f.ino
    assert env.nlink(p1.ino) == 3  # now holds the directory
    assert env.nlink(p2.ino) == 2  # now holds only the file
    assert env.nlink(d.ino) == 3
    assert env.meta.lookup(d.ino, b"..").ino == p1.ino
    # and back the other way (directory as the source)
    env.rename(p1.ino, b"f", p2.ino, b"d", RENAME_EXCHANGE)
    assert env.ino_of(p2.ino, b"d") == d.ino
    assert env.nlink(p1.ino) == 2 and env.nlink(p2.ino) == 3


def test_rename_exchange_two_directories_across_parents_keeps_nlink(env):
    p1 = env.mkdir(ROOT_INODE, b"p1")
    p2 = env.mkdir(ROOT_INODE, b"p2")
    a = env.mkdir(p1.ino, b"a")
    b = env.mkdir(p2.ino, b"b")
    env.rename(p1.ino, b"a", p2.ino, b"b", RENAME_EXCHANGE)
    assert env.ino_of(p1.ino, b"a") == b.ino
    assert env.ino_of(p2.ino, b"b") == a.ino
    assert env.nlink(p1.ino) == 3 and env.nlink(p2.ino) == 3
    assert env.meta.lookup(a.ino, b"..").ino == p2.ino
    assert env.meta.lookup(b.ino, b"..").ino == p1.ino


def test_rename_exchange_with_missing_target_is_enoent(env):
    a = env.mk(ROOT_INODE, b"a")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"a", ROOT_INODE, b"missing", RENAME_EXCHANGE)
    assert err(ei) == errno.ENOENT
    assert env.names(ROOT_INODE) == [b"a"]
    assert env.ino_of(ROOT_INODE, b"a") == a.ino


def test_rename_exchange_of_a_directory_with_its_descendant_is_einval(env):
    a = env.mkdir(ROOT_INODE, b"a")
    b = env.mkdir(a.ino, b"b")
    env.mk(b.ino, b"c")
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"a", b.ino, b"c", RENAME_EXCHANGE)
    assert err(ei) == errno.EINVAL
    with pytest.raises(FsError) as ei:
        env.rename(b.ino, b"c", ROOT_INODE, b"a", RENAME_EXCHANGE)
    assert err(ei) == errno.EINVAL
    assert env.meta.path_of(b.ino) == b"/a/b"


def test_rename_exchange_updates_ctime_of_both_and_parent_times(env):
    p1 = env.mkdir(ROOT_INODE, b"p1")
    p2 = env.mkdir(ROOT_INODE, b"p2")
    a = env.mk(p1.ino, b"a")
    b = env.mk(p2.ino, b"b")
    for ino in (p1.ino, p2.ino, a.ino, b.ino):
        env.age(ino)
    env.rename(p1.ino, b"a", p2.ino, b"b", RENAME_EXCHANGE)
    for ino in (p1.ino, p2.ino):
        assert env.attr(ino).mtime_ns > OLD_NS
        assert env.attr(ino).ctime_ns > OLD_NS
    for ino in (a.ino, b.ino):
        assert env.attr(ino).ctime_ns > OLD_NS
        assert env.attr(ino).mtime_ns == OLD_NS


def test_rename_directory_into_itself_or_its_subtree_is_einval(env):
    a = env.mkdir(ROOT_INODE, b"a")
    b = env.mkdir(a.ino, b"b")
    c = env.mkdir(b.ino, b"c")
    for target in (a.ino, b.ino, c.ino):
        with pytest.raises(FsError) as ei:
            env.rename(ROOT_INODE, b"a", target, b"x")
        assert err(ei) == errno.EINVAL
    assert env.meta.path_of(c.ino) == b"/a/b/c"
    assert env.nlink(a.ino) == 3 and env.nlink(ROOT_INODE) == 3


def test_rename_onto_another_hard_link_of_the_same_inode_is_a_no_op(env):
    f = env.mk(ROOT_INODE, b"a")
    env.meta.link(f.ino, ROOT_INODE, b"b")
    assert env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b") is None
    assert sorted(env.names(ROOT_INODE)) == [b"a", b"b"]
    assert env.nlink(f.ino) == 2
    assert env.ino_of(ROOT_INODE, b"a") == env.ino_of(ROOT_INODE, b"b") == f.ino


def test_rename_onto_itself_is_a_no_op(env):
    f = env.mk(ROOT_INODE, b"a")
    d = env.mkdir(ROOT_INODE, b"d")
    env.rename(ROOT_INODE, b"a", ROOT_INODE, b"a")
    env.rename(ROOT_INODE, b"d", ROOT_INODE, b"d")
    assert env.ino_of(ROOT_INODE, b"a") == f.ino
    assert env.ino_of(ROOT_INODE, b"d") == d.ino
    assert env.nlink(ROOT_INODE) == 3


def test_rename_of_dot_or_dotdot_fails(env):
    d = env.mkdir(ROOT_INODE, b"d")
    for old, new in ((b".", b"x"), (b"..", b"x")):
        with pytest.raises(FsError) as ei:
            env.rename(d.ino, old, ROOT_INODE, new)
        assert err(ei) in (errno.EINVAL, errno.EBUSY)
    assert env.names(d.ino) == []


def test_rename_updates_times_of_both_parents_and_ctime_of_moved_inode(env):
    p1 = env.mkdir(ROOT_INODE, b"p1")
    p2 = env.mkdir(ROOT_INODE, b"p2")
    f = env.mk(p1.ino, b"f")
    for ino in (p1.ino, p2.ino, f.ino):
        env.age(ino)
    env.rename(p1.ino, b"f", p2.ino, b"f")
    for ino in (p1.ino, p2.ino):
        assert env.attr(ino).mtime_ns > OLD_NS and env.attr(ino).ctime_ns > OLD_NS
    fa = env.attr(f.ino)
    assert fa.ctime_ns > OLD_NS and fa.mtime_ns == OLD_NS


def test_rename_replacing_an_open_file_keeps_it_readable(env):
    a = env.mk(ROOT_INODE, b"a")
    b = env.mk(ROOT_INODE, b"b")
    env.write(b.ino, b"old b content")
    fh = env.vfs.open(b.ino, os.O_RDONLY)
    try:
        env.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")
        assert env.nlink(b.ino) == 0
        assert env.vfs.read(fh, 0, 100) == b"old b content"
    finally:
        env.vfs.release(fh)
    assert not env.exists(b.ino)
    assert env.ino_of(ROOT_INODE, b"b") == a.ino


# ------------------------------------------------------------------ setattr
def test_chmod_keeps_the_file_type_bits(env):
    f = env.mk(ROOT_INODE, b"f")
    d = env.mkdir(ROOT_INODE, b"d")
    got = env.meta.setattr(f.ino, mode=stat.S_IFDIR | 0o4750)
    assert got.mode == stat.S_IFREG | 0o4750
    assert env.attr(f.ino).mode == stat.S_IFREG | 0o4750
    env.meta.setattr(d.ino, mode=0o1777)
    assert env.attr(d.ino).mode == stat.S_IFDIR | 0o1777


def test_chown_changes_uid_and_gid_independently(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setattr(f.ino, uid=2000)
    assert (env.attr(f.ino).uid, env.attr(f.ino).gid) == (2000, GID)
    env.meta.setattr(f.ino, gid=3000)
    assert (env.attr(f.ino).uid, env.attr(f.ino).gid) == (2000, 3000)
    env.meta.setattr(f.ino, uid=-1, gid=4000)  # -1 leaves it unchanged, as chown(2)
    assert (env.attr(f.ino).uid, env.attr(f.ino).gid) == (2000, 4000)


def test_chown_clears_setuid_and_group_executable_setgid_on_files(env):
    f = env.mk(ROOT_INODE, b"f", stat.S_IFREG | 0o6755)
    env.meta.setattr(f.ino, uid=2000)
    assert stat.S_IMODE(env.attr(f.ino).mode) == 0o0755


def test_chown_keeps_setgid_without_group_exec(env):
    # setgid without group-execute means mandatory locking, not "run as group"
    f = env.mk(ROOT_INODE, b"f", stat.S_IFREG | 0o6744)
    env.meta.setattr(f.ino, gid=2000)
    assert stat.S_IMODE(env.attr(f.ino).mode) == 0o2744


def test_chown_keeps_setuid_setgid_on_directories(env):
    d = env.mkdir(ROOT_INODE, b"d", 0o6775)
    env.meta.setattr(d.ino, uid=2000, gid=2000)
    assert stat.S_IMODE(env.attr(d.ino).mode) == 0o6775


def test_chown_together_with_chmod_keeps_the_given_mode(env):
    f = env.mk(ROOT_INODE, b"f", stat.S_IFREG | 0o755)
    env.meta.setattr(f.ino, uid=2000, mode=0o4755)
    assert stat.S_IMODE(env.attr(f.ino).mode) == 0o4755


def test_setattr_times_have_nanosecond_precision(env):
    f = env.mk(ROOT_INODE, b"f")
    at, mt = 1_234_567_891_234_567_891, 1_700_000_000_999_999_999
    env.meta.setattr(f.ino, atime_ns=at, mtime_ns=mt)
    got = env.attr(f.ino)
    assert (got.atime_ns, got.mtime_ns) == (at, mt)


def test_setattr_accepts_times_before_the_epoch(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setattr(f.ino, mtime_ns=-5_000_000_001)
    assert env.attr(f.ino).mtime_ns == -5_000_000_001


def test_setattr_one_nanosecond_before_the_epoch_is_a_time_not_now(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setattr(f.ino, atime_ns=-1, mtime_ns=-1)
    got = env.attr(f.ino)
    assert (got.atime_ns, got.mtime_ns) == (-1, -1)


def test_setattr_clamps_times_an_inode_cannot_hold(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setattr(f.ino, atime_ns=-(2**70), mtime_ns=2**70)
    got = env.attr(f.ino)
    assert (got.atime_ns, got.mtime_ns) == (TIME_NS_MIN, TIME_NS_MAX)
    env.meta.setattr(f.ino, atime_ns=TIME_NS_MAX, mtime_ns=TIME_NS_MIN)
    got = env.attr(f.ino)
    assert (got.atime_ns, got.mtime_ns) == (TIME_NS_MAX, TIME_NS_MIN)


def test_setattr_time_now_uses_the_current_time(env):
    f = env.mk(ROOT_INODE, b"f")
    env.age(f.ino)
    before = time.time_ns()
    env.meta.setattr(f.ino, atime_ns=TIME_NOW)
    after = time.time_ns()
    got = env.attr(f.ino)
    assert before <= got.atime_ns <= after
    assert got.mtime_ns == OLD_NS
    env.meta.setattr(f.ino, mtime_ns=TIME_NOW)
    assert env.attr(f.ino).mtime_ns >= before


def test_every_setattr_updates_ctime(env):
    f = env.mk(ROOT_INODE, b"f")
    for change in ({"mode": 0o600}, {"uid": 5}, {"gid": 6}, {"atime_ns": 7}, {"mtime_ns": 8}):
        env.meta.setattr(f.ino, ctime_ns=OLD_NS)
        before = time.time_ns()
        env.meta.setattr(f.ino, **change)
        assert env.attr(f.ino).ctime_ns >= before, change


def test_setattr_of_unknown_inode_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.meta.setattr(999999, mode=0o600)
    assert err(ei) == errno.ENOENT


def test_truncate_through_vfs_setattr_changes_size_and_mtime(env):
    f = env.mk(ROOT_INODE, b"f")
    env.write(f.ino, b"x" * 5000)
    env.age(f.ino)
    got = env.vfs.setattr(f.ino, size=10)
    assert got.size == 10
    assert got.mtime_ns > OLD_NS and got.ctime_ns > OLD_NS
    assert env.read(f.ino) == b"x" * 10


# ------------------------------------------------------------------ parent times on create
@pytest.mark.parametrize("kind", ["file", "dir", "symlink", "fifo"])
def test_create_updates_parent_mtime_and_ctime(env, kind):
    d = env.mkdir(ROOT_INODE, b"d")
    env.age(d.ino)
    if kind == "file":
        env.mk(d.ino, b"x")
    elif kind == "dir":
        env.mkdir(d.ino, b"x")
    elif kind == "symlink":
        env.symlink(d.ino, b"x", b"t")
    else:
        env.mk(d.ino, b"x", stat.S_IFIFO | 0o600)
    got = env.attr(d.ino)
    assert got.mtime_ns > OLD_NS and got.ctime_ns > OLD_NS
    assert got.atime_ns == OLD_NS


def test_failed_create_leaves_parent_times_alone(env):
    d = env.mkdir(ROOT_INODE, b"d")
    env.mk(d.ino, b"x")
    env.age(d.ino)
    with pytest.raises(FsError) as ei:
        env.mk(d.ino, b"x")
    assert err(ei) == errno.EEXIST
    got = env.attr(d.ino)
    assert got.mtime_ns == OLD_NS and got.ctime_ns == OLD_NS


# ------------------------------------------------------------------ setgid directories
def test_setgid_directory_passes_its_group_to_new_entries(env):
    d = env.mkdir(ROOT_INODE, b"shared", 0o2775)
    env.meta.setattr(d.ino, gid=4242)
    f = env.meta.create(d.ino, b"f", REG, UID, GID)
    s = env.meta.create(d.ino, b"s", stat.S_IFLNK | 0o777, UID, GID, target=b"f")
    assert env.attr(f.ino).gid == 4242
    assert env.attr(s.ino).gid == 4242
    assert not env.attr(f.ino).mode & stat.S_ISGID  # files do not inherit the bit


def test_setgid_directory_subdirectories_inherit_group_and_setgid_bit(env):
    d = env.mkdir(ROOT_INODE, b"shared", 0o2775)
    env.meta.setattr(d.ino, gid=4242)
    sub = env.meta.create(d.ino, b"sub", stat.S_IFDIR | 0o755, UID, GID)
    got = env.attr(sub.ino)
    assert got.gid == 4242
    assert got.mode & stat.S_ISGID
    assert stat.S_IMODE(got.mode) == 0o2755
    subsub = env.meta.create(sub.ino, b"deeper", stat.S_IFDIR | 0o700, UID, GID)
    assert env.attr(subsub.ino).gid == 4242
    assert env.attr(subsub.ino).mode & stat.S_ISGID


def test_plain_directory_uses_the_callers_group(env):
    d = env.mkdir(ROOT_INODE, b"plain", 0o775)
    env.meta.setattr(d.ino, gid=4242)
    sub = env.meta.create(d.ino, b"sub", stat.S_IFDIR | 0o755, UID, GID)
    assert env.attr(sub.ino).gid == GID
    assert not env.attr(sub.ino).mode & stat.S_ISGID


# ------------------------------------------------------------------ xattrs
def test_xattr_set_get_list_remove(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setxattr(f.ino, b"user.b", b"2")
    env.meta.setxattr(f.ino, b"user.a", b"\x00binary\xff")
    env.meta.setxattr(f.ino, b"trusted.t", b"")
    assert env.meta.getxattr(f.ino, b"user.a") == b"\x00binary\xff"
    assert env.meta.getxattr(f.ino, b"trusted.t") == b""
    assert sorted(env.meta.listxattr(f.ino)) == [b"trusted.t", b"user.a", b"user.b"]
    env.meta.removexattr(f.ino, b"user.a")
    assert sorted(env.meta.listxattr(f.ino)) == [b"trusted.t", b"user.b"]
    with pytest.raises(FsError) as ei:
        env.meta.getxattr(f.ino, b"user.a")
    assert err(ei) == errno.ENODATA


def test_xattr_set_replaces_the_value(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setxattr(f.ino, b"user.k", b"first")
    env.meta.setxattr(f.ino, b"user.k", b"second")
    assert env.meta.getxattr(f.ino, b"user.k") == b"second"
    assert env.meta.listxattr(f.ino) == [b"user.k"]


def test_xattrs_of_different_inodes_are_separate(env):
    f = env.mk(ROOT_INODE, b"f")
    d = env.mkdir(ROOT_INODE, b"d")
    env.meta.setxattr(f.ino, b"user.k", b"file")
    env.meta.setxattr(d.ino, b"user.k", b"dir")
    assert env.meta.getxattr(f.ino, b"user.k") == b"file"
    assert env.meta.getxattr(d.ino, b"user.k") == b"dir"


def test_xattrs_are_shared_by_hard_links(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.link(f.ino, ROOT_INODE, b"g")
    env.meta.setxattr(env.ino_of(ROOT_INODE, b"g"), b"user.k", b"v")
    assert env.meta.getxattr(env.ino_of(ROOT_INODE, b"f"), b"user.k") == b"v"


def test_xattr_create_flag_on_existing_name_is_eexist(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setxattr(f.ino, b"user.k", b"v", XATTR_CREATE)
    with pytest.raises(FsError) as ei:
        env.meta.setxattr(f.ino, b"user.k", b"other", XATTR_CREATE)
    assert err(ei) == errno.EEXIST
    assert env.meta.getxattr(f.ino, b"user.k") == b"v"


def test_xattr_replace_flag_on_missing_name_is_enodata(env):
    f = env.mk(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.meta.setxattr(f.ino, b"user.k", b"v", XATTR_REPLACE)
    assert err(ei) == errno.ENODATA
    assert env.meta.listxattr(f.ino) == []
    env.meta.setxattr(f.ino, b"user.k", b"v")
    env.meta.setxattr(f.ino, b"user.k", b"w", XATTR_REPLACE)
    assert env.meta.getxattr(f.ino, b"user.k") == b"w"


def test_xattr_get_and_remove_of_missing_name_is_enodata(env):
    f = env.mk(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.meta.getxattr(f.ino, b"user.none")
    assert err(ei) == errno.ENODATA
    with pytest.raises(FsError) as ei:
        env.meta.removexattr(f.ino, b"user.none")
    assert err(ei) == errno.ENODATA


def test_xattr_name_longer_than_255_is_erange(env):
    f = env.mk(ROOT_INODE, b"f")
    ok = b"user." + b"n" * 250
    env.meta.setxattr(f.ino, ok, b"v")
    long = b"user." + b"n" * 251
    with pytest.raises(FsError) as ei:
        env.meta.setxattr(f.ino, long, b"v")
    assert err(ei) == errno.ERANGE
    with pytest.raises(FsError) as ei:
        env.meta.getxattr(f.ino, long)
    assert err(ei) == errno.ERANGE


def test_xattr_value_larger_than_64k_is_e2big(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setxattr(f.ino, b"user.max", b"v" * 65536)
    assert env.meta.getxattr(f.ino, b"user.max") == b"v" * 65536
    with pytest.raises(FsError) as ei:
        env.meta.setxattr(f.ino, b"user.big", b"v" * 65537)
    assert err(ei) == errno.E2BIG
    assert env.meta.listxattr(f.ino) == [b"user.max"]


@pytest.mark.parametrize("name", [b"system.posix_acl_access", b"nonamespace", b"other.k", b"users.k"])
def test_xattr_unsupported_namespace_is_eopnotsupp(env, name):
    f = env.mk(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.meta.setxattr(f.ino, name, b"v")
    assert err(ei) == errno.EOPNOTSUPP


def test_xattr_on_unknown_inode_is_enoent(env):
    with pytest.raises(FsError) as ei:
        env.meta.setxattr(999999, b"user.k", b"v")
    assert err(ei) == errno.ENOENT
    with pytest.raises(FsError) as ei:
        env.meta.getxattr(999999, b"user.k")
    assert err(ei) == errno.ENOENT
    with pytest.raises(FsError) as ei:
        env.meta.listxattr(999999)
    assert err(ei) == errno.ENOENT


def test_xattr_changes_update_ctime(env):
    f = env.mk(ROOT_INODE, b"f")
    env.age(f.ino)
    env.meta.setxattr(f.ino, b"user.k", b"v")
    assert env.attr(f.ino).ctime_ns > OLD_NS
    env.age(f.ino)
    env.meta.removexattr(f.ino, b"user.k")
    assert env.attr(f.ino).ctime_ns > OLD_NS
    assert env.attr(f.ino).mtime_ns == OLD_NS


def test_xattrs_go_with_their_inode(env):
    f = env.mk(ROOT_INODE, b"f")
    env.meta.setxattr(f.ino, b"user.k", b"v")
    env.unlink(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.meta.listxattr(f.ino)
    assert err(ei) == errno.ENOENT
    # (fsck in the fixture teardown checks that no xattr row is left behind)


# ------------------------------------------------------------------ readdir
def test_readdir_lists_dot_and_dotdot_first(env):
    d = env.mkdir(ROOT_INODE, b"d")
    env.mk(d.ino, b"f")
    entries = env.meta.readdir(d.ino)
    assert [e.name for e in entries[:2]] == [b".", b".."]
    assert entries[0].attr.ino == d.ino
    assert entries[1].attr.ino == ROOT_INODE
    assert [e.cookie for e in entries[:2]] == [1, 2]
    assert [e.name for e in entries[2:]] == [b"f"]


def test_readdir_of_root_has_root_as_dotdot(env):
    entries = env.meta.readdir(ROOT_INODE)
    assert [(e.name, e.attr.ino) for e in entries] == [(b".", ROOT_INODE), (b"..", ROOT_INODE)]


def test_readdir_entries_carry_attributes(env):
    d = env.mkdir(ROOT_INODE, b"d")
    f = env.mk(ROOT_INODE, b"f", REG)
    s = env.symlink(ROOT_INODE, b"s", b"f")
    got = {e.name: e.attr for e in env.meta.readdir(ROOT_INODE)}
    assert got[b"d"].ino == d.ino and got[b"d"].is_dir
    assert got[b"f"].ino == f.ino and got[b"f"].is_reg
    assert got[b"s"].ino == s.ino and got[b"s"].is_symlink


def test_readdir_of_a_file_is_enotdir(env):
    f = env.mk(ROOT_INODE, b"f")
    with pytest.raises(FsError) as ei:
        env.meta.readdir(f.ino)
    assert err(ei) == errno.ENOTDIR


def test_readdir_cookies_increase_and_resume_the_listing(env):
    d = env.mkdir(ROOT_INODE, b"d")
    names = [b"e%03d" % i for i in range(50)]
    for n in names:
        env.mk(d.ino, n)
    seen: list[bytes] = []
    cookies: list[int] = []
    after = 0
    while True:
        page = env.meta.readdir(d.ino, after, limit=7)
        if not page:
            break
        seen.extend(e.name for e in page)
        cookies.extend(e.cookie for e in page)
        after = page[-1].cookie
    assert seen == [b".", b".."] + names
    assert cookies == sorted(set(cookies))


def test_readdir_after_the_last_cookie_is_empty(env):
    d = env.mkdir(ROOT_INODE, b"d")
    env.mk(d.ino, b"f")
    last = env.meta.readdir(d.ino)[-1].cookie
    assert env.meta.readdir(d.ino, last) == []


def test_readdir_offsets_stay_valid_while_entries_change(env):
    d = env.mkdir(ROOT_INODE, b"d")
    stable = [b"stable%03d" % i for i in range(40)]
    doomed = [b"doomed%03d" % i for i in range(40)]
    for a, b in zip(stable, doomed, strict=True):
        env.mk(d.ino, a)
        env.mk(d.ino, b)
    seen: list[bytes] = []
    after = 2  # skip '.' and '..'
    added = 0
    while True:
        page = env.meta.readdir(d.ino, after, limit=5)
        if not page:
            break
        seen.extend(e.name for e in page)
        after = page[-1].cookie
        # between pages: remove entries (both already listed and not yet listed ones,
        # including the entry whose cookie we resume from) and add new ones
        for _ in range(2):
            if doomed:
                env.unlink(d.ino, doomed.pop(0 if added % 2 else -1))
        if added < 30:
            env.mk(d.ino, b"new%03d" % added)
            added += 1
        if page[-1].name.startswith(b"doomed"):
            try:
                env.unlink(d.ino, page[-1].name)
                doomed.remove(page[-1].name)
            except FsError:
                pass
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    missing = [n for n in stable if n not in seen]
    assert missing == [], "entries present during the whole listing were skipped"


def test_readdir_resumes_after_a_removed_entry(env):
    d = env.mkdir(ROOT_INODE, b"d")
    for n in (b"a", b"b", b"c", b"d"):
        env.mk(d.ino, n)
    page = env.meta.readdir(d.ino, 0, limit=2)  # ., .. and two entries
    assert [e.name for e in page] == [b".", b"..", b"a", b"b"]
    env.unlink(d.ino, b"b")
    rest = env.meta.readdir(d.ino, page[-1].cookie)
    assert [e.name for e in rest] == [b"c", b"d"]


def test_readdir_of_a_renamed_in_entry_appears_once(env):
    d = env.mkdir(ROOT_INODE, b"d")
    for n in (b"a", b"b", b"c"):
        env.mk(d.ino, n)
    page = env.meta.readdir(d.ino, 0, limit=1)  # ., .., a
    env.rename(d.ino, b"a", d.ino, b"z")  # an already listed entry changes its name
    rest = env.meta.readdir(d.ino, page[-1].cookie)
    names = [e.name for e in page] + [e.name for e in rest]
    assert names.count(b"b") == 1 and names.count(b"c") == 1
    assert len([n for n in names if n in (b"a", b"z")]) <= 2


def test_list_names_returns_name_inode_and_mode(env):
    d = env.mkdir(ROOT_INODE, b"d")
    f = env.mk(ROOT_INODE, b"f")
    got = {bytes(n): (i, m) for n, i, m in env.meta.list_names(ROOT_INODE)}
    assert got == {b"d": (d.ino, d.mode), b"f": (f.ino, f.mode)}


# ------------------------------------------------------------------ statfs
def test_statfs_reports_inodes_and_used_space(env):
    for i in range(3):
        env.mk(ROOT_INODE, b"f%d" % i)
    f = env.mk(ROOT_INODE, b"data")
    env.write(f.ino, os.urandom(300_000))
    env.vfs._statfs_cache = None  # noqa: SLF001 - statfs caches for a second
    st = env.vfs.statfs()
    used, inodes = env.meta.statfs_usage()
    assert inodes == 5  # root + 4 files
    assert used >= 300_000
    assert st.block_size == 4096
    assert st.name_max == 255
    assert st.total_blocks - st.free_blocks == (used + 4095) // 4096
    assert st.total_inodes - st.free_inodes == inodes
    assert 0 <= st.avail_blocks <= st.total_blocks


def test_statfs_usage_counts_stored_bytes_of_inline_and_block_files(env):
    base, _ = env.meta.statfs_usage()
    small = env.mk(ROOT_INODE, b"small")
    env.write(small.ino, b"s" * 100)
    used, _ = env.meta.statfs_usage()
    assert used - base == 100


# ------------------------------------------------------------------ orphans
def test_unlink_of_a_pinned_inode_keeps_it_until_unpinned(env):
    f = env.mk(ROOT_INODE, b"f")
    env.write(f.ino, b"keep me" * 20_000)
    env.vfs.pin(f.ino)
    env.unlink(ROOT_INODE, b"f")
    assert env.names(ROOT_INODE) == []
    got = env.attr(f.ino)
    assert got.nlink == 0
    assert got.size == 7 * 20_000
    assert env.meta.orphans() == [f.ino]
    assert env.read(f.ino) == b"keep me" * 20_000
    env.vfs.unpin(f.ino)
    assert not env.exists(f.ino)
    assert env.meta.orphans() == []


def test_pins_are_counted(env):
    f = env.mk(ROOT_INODE, b"f")
    env.vfs.pin(f.ino)
    env.vfs.pin(f.ino)
    env.unlink(ROOT_INODE, b"f")
    env.vfs.unpin(f.ino)
    assert env.exists(f.ino)
    env.vfs.unpin(f.ino)
    assert not env.exists(f.ino)


def test_unpin_of_an_inode_with_names_keeps_it(env):
    f = env.mk(ROOT_INODE, b"f")
    env.vfs.pin(f.ino)
    env.vfs.unpin(f.ino)
    assert env.exists(f.ino)
    assert env.ino_of(ROOT_INODE, b"f") == f.ino


def test_unlink_of_an_open_file_keeps_it_until_release(env):
    f = env.mk(ROOT_INODE, b"f")
    fh = env.vfs.open(f.ino, os.O_RDWR)
    try:
        env.vfs.write(fh, 0, b"before")
        env.unlink(ROOT_INODE, b"f")
        assert env.attr(f.ino).nlink == 0
        env.vfs.write(fh, 6, b" and after")
        assert env.vfs.read(fh, 0, 100) == b"before and after"
    finally:
        env.vfs.release(fh)
    assert not env.exists(f.ino)


def test_file_open_and_pinned_survives_until_both_let_go(env):
    f = env.mk(ROOT_INODE, b"f")
    env.vfs.pin(f.ino)
    fh = env.vfs.open(f.ino, os.O_RDONLY)
    env.unlink(ROOT_INODE, b"f")
    env.vfs.release(fh)
    assert env.exists(f.ino)  # still pinned
    env.vfs.unpin(f.ino)
    assert not env.exists(f.ino)


def test_rmdir_of_a_pinned_directory_keeps_it_until_unpinned(env):
    d = env.mkdir(ROOT_INODE, b"d")
    env.vfs.pin(d.ino)
    env.rmdir(ROOT_INODE, b"d")
    assert env.nlink(ROOT_INODE) == 2
    assert env.attr(d.ino).nlink == 0
    assert env.meta.readdir(d.ino, 2) == []
    env.vfs.unpin(d.ino)
    assert not env.exists(d.ino)


def test_orphan_left_by_a_crash_is_found_by_orphans(env):
    f = env.mk(ROOT_INODE, b"f")
    env.vfs.pin(f.ino)
    env.unlink(ROOT_INODE, b"f")
    assert env.meta.orphans() == [f.ino]
    # a crash would lose the pin: purge_if_orphan is what recovery calls
    assert env.meta.purge_if_orphan(f.ino) is True
    assert not env.exists(f.ino)
    assert env.meta.purge_if_orphan(f.ino) is False
    env.vfs.unpin(f.ino)


def test_purge_if_orphan_leaves_named_inodes_alone(env):
    f = env.mk(ROOT_INODE, b"f")
    assert env.meta.purge_if_orphan(f.ino) is False
    assert env.exists(f.ino)


def test_link_or_rename_into_a_removed_directory_is_enoent(env):
    d = env.mkdir(ROOT_INODE, b"d")
    f = env.mk(ROOT_INODE, b"f")
    env.vfs.pin(d.ino)
    env.rmdir(ROOT_INODE, b"d")
    with pytest.raises(FsError) as ei:
        env.meta.link(f.ino, d.ino, b"g")
    assert err(ei) == errno.ENOENT
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"f", d.ino, b"g")
    assert err(ei) == errno.ENOENT
    assert env.names(ROOT_INODE) == [b"f"]
    assert env.nlink(f.ino) == 1
    env.vfs.unpin(d.ino)


# ------------------------------------------------------------------ paths
def test_path_of_and_parent_of(env):
    a = env.mkdir(ROOT_INODE, b"a")
    b = env.mkdir(a.ino, b"b")
    f = env.mk(b.ino, b"f")
    assert env.meta.path_of(f.ino) == b"/a/b/f"
    assert env.meta.path_of(ROOT_INODE) == b"/"
    assert env.meta.parent_of(f.ino) == b.ino
    assert env.meta.parent_of(ROOT_INODE) == ROOT_INODE


def test_names_of_lists_every_hard_link(env):
    d = env.mkdir(ROOT_INODE, b"d")
    f = env.mk(ROOT_INODE, b"f")
    env.meta.link(f.ino, d.ino, b"g")
    assert sorted((p, bytes(n)) for p, n in env.meta.names_of(f.ino)) == sorted(
        [(ROOT_INODE, b"f"), (d.ino, b"g")]
    )


# ------------------------------------------------------------------ atomicity
def test_failed_check_changes_nothing(env):
    # a rename refused by its checks (the target is a non-empty directory) leaves no trace
    d = env.mkdir(ROOT_INODE, b"d")
    env.mk(d.ino, b"child")
    env.mkdir(ROOT_INODE, b"src")
    before = [(e.name, e.attr.ino, e.attr.nlink) for e in env.meta.readdir(ROOT_INODE)]
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"src", ROOT_INODE, b"d")
    assert err(ei) == errno.ENOTEMPTY
    after = [(e.name, e.attr.ino, e.attr.nlink) for e in env.meta.readdir(ROOT_INODE)]
    assert before == after


def test_a_rename_that_fails_halfway_changes_nothing(env, monkeypatch):
    """A rename over a file that fails after it has already written (the target's name
    deleted, its link dropped, the source moved) must be undone entirely."""
    d = env.mkdir(ROOT_INODE, b"d")
    victim = env.mk(d.ino, b"victim")
    env.write(victim.ino, b"the old contents")
    src = env.mk(ROOT_INODE, b"src")
    env.age(ROOT_INODE)
    env.age(d.ino)

    def state():
        return (
            [(e.name, e.attr.ino, e.attr.nlink) for e in env.meta.readdir(ROOT_INODE)],
            [(e.name, e.attr.ino, e.attr.nlink) for e in env.meta.readdir(d.ino)],
            [(a.nlink, a.mtime_ns, a.ctime_ns) for a in map(env.attr, (ROOT_INODE, d.ino, victim.ino, src.ino))],
        )

    before = state()
    real_touch = MetadataEngine._touch_dir
    reached = []

    def touch_then_fail(self, ino, *args, **kw):
        # halfway: the rename has already replaced the target's name in this transaction
        reached.append(self.lookup_inode(d.ino, b"victim"))
        real_touch(self, ino, *args, **kw)
        raise FsError(errno.EIO, "injected: the disk failed halfway through the rename")

    monkeypatch.setattr(MetadataEngine, "_touch_dir", touch_then_fail)
    with pytest.raises(FsError) as ei:
        env.rename(ROOT_INODE, b"src", d.ino, b"victim")
    assert err(ei) == errno.EIO
    monkeypatch.undo()
    assert reached and reached[0] != victim.ino, "the rename failed before it changed anything"
    assert state() == before
    assert env.read(victim.ino) == b"the old contents"


def test_engine_reopens_with_the_same_namespace(env, tmp_path):
    d = env.mkdir(ROOT_INODE, b"d")
    f = env.mk(d.ino, b"f")
    env.write(f.ino, b"persist")
    env.meta.setxattr(f.ino, b"user.k", b"v")
    config = env.store.config
    env.store.close()
    env.store = Store.open(config, create=False)
    assert env.meta.path_of(f.ino) == b"/d/f"
    assert env.read(f.ino) == b"persist"
    assert env.meta.getxattr(f.ino, b"user.k") == b"v"
