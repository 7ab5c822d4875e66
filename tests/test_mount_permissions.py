"""POSIX permissions on the mount, exercised as the unprivileged user ``nobody``.

The mount runs as root with ``allow_other`` and ``default_permissions``: the
kernel checks permissions from the attributes the filesystem reports, and the
filesystem must keep those attributes right (owners of new files, setgid
inheritance, suid/sgid clearing). Each check runs in a forked child that has
dropped to uid/gid 65534 with no supplementary groups (see ``as_user``); the
child changes into the test directory first, as pytest's temporary
directories above it are private to root.
"""

from __future__ import annotations

import errno
import os
import stat

import pytest

from tests import needs
from tests.mount_helpers import NOBODY, as_user, errno_as_user

pytestmark = [
    pytest.mark.mount,
    needs.root_only("switching to another user needs root"),
]


def make_file(path: str, mode: int, data: bytes = b"secret", uid: int = 0, gid: int = 0) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def mode_of(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def nobody(fn, *args, cwd: str, **kwargs):
    return as_user(lambda: fn(*args, **kwargs), cwd=cwd)


def nobody_errno(fn, *args, cwd: str, **kwargs) -> int:
    return errno_as_user(lambda: fn(*args, **kwargs), cwd=cwd)


def _sysctl(name: str) -> str:
    try:
        with open("/proc/sys/" + name, encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write(path: str, data: bytes = b"data", flags: int = os.O_WRONLY) -> None:
    fd = os.open(path, flags | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_child_really_is_nobody(mdir):
    ids = nobody(lambda: (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()), cwd=mdir)
    assert ids == (NOBODY, NOBODY, NOBODY, NOBODY, [])


def test_eacces_read_write_create(mdir):
    make_file(os.path.join(mdir, "private"), 0o600)
    make_file(os.path.join(mdir, "public"), 0o644)
    os.mkdir(os.path.join(mdir, "rootdir"), 0o755)
    os.chmod(os.path.join(mdir, "rootdir"), 0o755)
    make_file(os.path.join(mdir, "rootdir", "inner"), 0o666)
    os.mkdir(os.path.join(mdir, "closed"), 0o700)
    os.chmod(os.path.join(mdir, "closed"), 0o700)
    make_file(os.path.join(mdir, "closed", "x"), 0o644)

    assert nobody_errno(_read, "private", cwd=mdir) == errno.EACCES
    assert nobody(_read, "public", cwd=mdir) == b"secret"
    assert nobody_errno(_write, "public", cwd=mdir) == errno.EACCES
    assert nobody_errno(_write, "public", b"x", os.O_RDWR, cwd=mdir) == errno.EACCES
    assert nobody_errno(os.truncate, "public", 0, cwd=mdir) == errno.EACCES
    assert nobody_errno(_write, "rootdir/new", cwd=mdir) == errno.EACCES
    assert nobody_errno(os.mkdir, "rootdir/newdir", cwd=mdir) == errno.EACCES
    assert nobody_errno(os.symlink, "t", "rootdir/newlink", cwd=mdir) == errno.EACCES
    assert nobody_errno(os.unlink, "rootdir/inner", cwd=mdir) == errno.EACCES
    assert nobody_errno(os.rename, "rootdir/inner", "rootdir/moved", cwd=mdir) == errno.EACCES
    assert nobody_errno(os.rename, "rootdir/inner", "stolen", cwd=mdir) == errno.EACCES
    make_file(os.path.join(mdir, "nobodys"), 0o644, uid=NOBODY, gid=NOBODY)
    assert nobody_errno(os.link, "nobodys", "rootdir/hard", cwd=mdir) == errno.EACCES
    if _sysctl("fs/protected_hardlinks") == "1":  # kernel policy: no links to others' files
        assert nobody_errno(os.link, "public", "hard", cwd=mdir) == errno.EPERM
    # writing an existing world-writable file in a read-only directory is fine
    nobody(_write, "rootdir/inner", b"changed", cwd=mdir)
    assert _read(os.path.join(mdir, "rootdir", "inner")).startswith(b"change")
    # a 0700 directory can be neither listed nor traversed
    assert nobody_errno(os.listdir, "closed", cwd=mdir) == errno.EACCES
    assert nobody_errno(os.stat, "closed/x", cwd=mdir) == errno.EACCES
    assert nobody_errno(_read, "closed/x", cwd=mdir) == errno.EACCES
    # nothing was created or removed by the refused calls
    assert sorted(os.listdir(os.path.join(mdir, "rootdir"))) == ["inner"]
    assert os.path.exists(os.path.join(mdir, "public"))
    assert os.stat(os.path.join(mdir, "public")).st_size == 6


def test_eperm_chmod_chown_of_others_files(mdir):
    make_file(os.path.join(mdir, "roots"), 0o666)
    make_file(os.path.join(mdir, "mine"), 0o644, uid=NOBODY, gid=NOBODY)
    assert nobody_errno(os.chmod, "roots", 0o777, cwd=mdir) == errno.EPERM
    assert nobody_errno(os.chown, "roots", NOBODY, NOBODY, cwd=mdir) == errno.EPERM
    assert nobody_errno(os.chown, "roots", -1, NOBODY, cwd=mdir) == errno.EPERM
    assert mode_of(os.path.join(mdir, "roots")) == 0o666
    assert os.stat(os.path.join(mdir, "roots")).st_uid == 0
    # one's own file: chmod is fine, giving it away or to a foreign group is not
    nobody(os.chmod, "mine", 0o600, cwd=mdir)
    assert mode_of(os.path.join(mdir, "mine")) == 0o600
    assert nobody_errno(os.chown, "mine", 0, -1, cwd=mdir) == errno.EPERM
    assert nobody_errno(os.chown, "mine", -1, 0, cwd=mdir) == errno.EPERM
    nobody(os.chown, "mine", NOBODY, NOBODY, cwd=mdir)  # a no-op chown is allowed
    st = os.stat(os.path.join(mdir, "mine"))
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    # xattrs of a file one may not write
    os.setxattr(os.path.join(mdir, "roots"), "user.x", b"1")
    os.chmod(os.path.join(mdir, "roots"), 0o644)
    assert nobody(os.getxattr, "roots", "user.x", cwd=mdir) == b"1"
    assert nobody_errno(os.setxattr, "roots", "user.y", b"2", cwd=mdir) == errno.EACCES
    assert nobody_errno(os.removexattr, "roots", "user.x", cwd=mdir) == errno.EACCES


def test_sticky_directory(mdir):
    tmp = os.path.join(mdir, "tmp")
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    assert mode_of(tmp) == 0o1777
    make_file(os.path.join(tmp, "roots"), 0o666)
    os.mkdir(os.path.join(tmp, "rootsdir"))
    os.chmod(os.path.join(tmp, "rootsdir"), 0o777)
    assert nobody_errno(os.unlink, "tmp/roots", cwd=mdir) == errno.EPERM
    assert nobody_errno(os.rename, "tmp/roots", "tmp/renamed", cwd=mdir) == errno.EPERM
    assert nobody_errno(os.rmdir, "tmp/rootsdir", cwd=mdir) == errno.EPERM
    # nor replace it by renaming one's own file over it
    nobody(_write, "tmp/own", cwd=mdir)
    assert nobody_errno(os.rename, "tmp/own", "tmp/roots", cwd=mdir) == errno.EPERM
    # writing root's world-writable file is still allowed
    nobody(_write, "tmp/roots", b"overwrite", cwd=mdir)
    # one's own files: rename and delete
    nobody(os.rename, "tmp/own", "tmp/own2", cwd=mdir)
    nobody(os.unlink, "tmp/own2", cwd=mdir)
    nobody(os.mkdir, "tmp/owndir", cwd=mdir)
    nobody(os.rmdir, "tmp/owndir", cwd=mdir)
    assert sorted(os.listdir(tmp)) == ["roots", "rootsdir"]
    # root may delete anyone's file there
    nobody(_write, "tmp/victim", cwd=mdir)
    os.unlink(os.path.join(tmp, "victim"))


def test_setgid_directory(mdir):
    sg = os.path.join(mdir, "sg")
    os.mkdir(sg)
    os.chown(sg, 0, 100)
    os.chmod(sg, 0o2777)
    assert mode_of(sg) == 0o2777
    nobody(_write, "sg/file", cwd=mdir)
    nobody(os.mkdir, "sg/sub", 0o755, cwd=mdir)
    nobody(os.symlink, "file", "sg/link", cwd=mdir)
    fst = os.stat(os.path.join(sg, "file"))
    dst = os.stat(os.path.join(sg, "sub"))
    assert (fst.st_uid, fst.st_gid) == (NOBODY, 100), "a new file takes the setgid directory's group"
    assert (dst.st_uid, dst.st_gid) == (NOBODY, 100)
    assert dst.st_mode & stat.S_ISGID, "a new sub-directory inherits the setgid bit"
    assert not fst.st_mode & stat.S_ISGID
    assert os.lstat(os.path.join(sg, "link")).st_gid == 100
    # and the sub-directory passes both on
    nobody(_write, "sg/sub/deeper", cwd=mdir)
    assert os.stat(os.path.join(sg, "sub", "deeper")).st_gid == 100
    # a file created with the setgid bit by someone outside the group loses the bit
    def create_sgid() -> int:
        fd = os.open("sg/sgidfile", os.O_CREAT | os.O_WRONLY, 0o2755)
        os.close(fd)
        return os.stat("sg/sgidfile").st_mode

    assert not nobody(create_sgid, cwd=mdir) & stat.S_ISGID
    # outside a setgid directory, files get the creator's group
    nobody(_write, "plain", cwd=mdir)
    assert os.stat(os.path.join(mdir, "plain")).st_gid == NOBODY


def test_suid_sgid_cleared_on_write_truncate_and_chown(mdir):
    p = os.path.join(mdir, "prog")
    make_file(p, 0o6755, b"#!/bin/sh\n", uid=NOBODY, gid=NOBODY)
    assert mode_of(p) == 0o6755
    # the owner (not root) writes: suid goes, and sgid (with group execute) too
    nobody(_write, "prog", b"echo\n", cwd=mdir)
    assert mode_of(p) == 0o755, oct(mode_of(p))
    # a truncate by a non-root user clears them too
    os.chmod(p, 0o6755)
    nobody(os.truncate, "prog", 1, cwd=mdir)
    assert mode_of(p) == 0o755, oct(mode_of(p))
    # and so does open(O_TRUNC)
    os.chmod(p, 0o6755)
    nobody(_write, "prog", b"", os.O_WRONLY | os.O_TRUNC, cwd=mdir)
    assert mode_of(p) == 0o755, oct(mode_of(p))
    os.chmod(p, 0o6755)
    nobody(_write, "prog", b"new", os.O_RDWR | os.O_TRUNC, cwd=mdir)
    assert mode_of(p) == 0o755, oct(mode_of(p))
    # sgid without group execute is mandatory locking, not privilege: it stays
    os.chmod(p, 0o2644)
    nobody(_write, "prog", b"x", cwd=mdir)
    assert mode_of(p) == 0o2644, oct(mode_of(p))
    # root (CAP_FSETID) writing keeps the bits
    os.chmod(p, 0o6755)
    _write(p, b"root")
    assert mode_of(p) == 0o6755, oct(mode_of(p))
    # chown by root clears suid (and sgid with group execute)
    os.chown(p, 1000, 1000)
    assert mode_of(p) == 0o755, oct(mode_of(p))
    os.chmod(p, 0o4700)
    os.chown(p, -1, 1001)
    assert mode_of(p) == 0o700, oct(mode_of(p))
    # directories keep their setgid bit across chown
    d = os.path.join(mdir, "sgdir")
    os.mkdir(d)
    os.chmod(d, 0o2775)
    os.chown(d, 1000, 1000)
    assert mode_of(d) == 0o2775


def test_chmod_setgid_outside_group_is_cleared(mdir):
    make_file(os.path.join(mdir, "f"), 0o644, uid=NOBODY, gid=0)
    nobody(os.chmod, "f", 0o2755, cwd=mdir)
    assert mode_of(os.path.join(mdir, "f")) == 0o755, "setgid is silently dropped for a group one is not in"
    nobody(os.chmod, "f", 0o4755, cwd=mdir)
    assert mode_of(os.path.join(mdir, "f")) == 0o4755, "setuid on one's own file is fine"
    make_file(os.path.join(mdir, "g"), 0o644, uid=NOBODY, gid=NOBODY)
    nobody(os.chmod, "g", 0o2755, cwd=mdir)
    assert mode_of(os.path.join(mdir, "g")) == 0o2755, "setgid within one's own group stays"


def test_access(mdir):
    make_file(os.path.join(mdir, "r600"), 0o600)
    make_file(os.path.join(mdir, "r644"), 0o644)
    make_file(os.path.join(mdir, "r666"), 0o666)
    make_file(os.path.join(mdir, "r755"), 0o755)
    make_file(os.path.join(mdir, "n400"), 0o400, uid=NOBODY, gid=NOBODY)
    make_file(os.path.join(mdir, "g070"), 0o070, gid=NOBODY)
    os.mkdir(os.path.join(mdir, "d755"))
    os.chmod(os.path.join(mdir, "d755"), 0o755)
    os.mkdir(os.path.join(mdir, "d777"))
    os.chmod(os.path.join(mdir, "d777"), 0o777)

    def probe() -> dict[str, tuple[bool, bool, bool, bool]]:
        out = {}
        for name in ("r600", "r644", "r666", "r755", "n400", "g070", "d755", "d777", "missing"):
            out[name] = tuple(os.access(name, m) for m in (os.F_OK, os.R_OK, os.W_OK, os.X_OK))
        return out

    got = nobody(probe, cwd=mdir)
    assert got == {
        "r600": (True, False, False, False),
        "r644": (True, True, False, False),
        "r666": (True, True, True, False),
        "r755": (True, True, False, True),
        "n400": (True, True, False, False),
        "g070": (True, True, True, True),
        "d755": (True, True, False, True),
        "d777": (True, True, True, True),
        "missing": (False, False, False, False),
    }
    # root: everything except executing a file without any x bit
    assert os.access(os.path.join(mdir, "r600"), os.R_OK | os.W_OK)
    assert not os.access(os.path.join(mdir, "r644"), os.X_OK)
    assert os.access(os.path.join(mdir, "r755"), os.X_OK)


def test_nobody_creates_in_world_writable_dir(mdir):
    def create_all() -> None:
        _write("file", b"hello")
        os.mkdir("dir")
        os.symlink("file", "link")
        os.mkfifo("fifo")
        os.link("file", "hard")
        os.rename("hard", "dir/hard")

    nobody(create_all, cwd=mdir)
    for name in ("file", "dir", "fifo", "dir/hard"):
        st = os.stat(os.path.join(mdir, name))
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY), name
    assert os.lstat(os.path.join(mdir, "link")).st_uid == NOBODY
    assert mode_of(os.path.join(mdir, "file")) == 0o644 & ~_umask()
    assert nobody(_read, "dir/hard", cwd=mdir) == b"hello"
    # and can remove all of it again
    nobody(lambda: [os.unlink("dir/hard"), os.rmdir("dir"), os.unlink("link"), os.unlink("fifo"),
                    os.unlink("file")], cwd=mdir)
    assert os.listdir(mdir) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_utime_permissions(mdir):
    make_file(os.path.join(mdir, "writable"), 0o666)
    make_file(os.path.join(mdir, "readonly"), 0o644)
    make_file(os.path.join(mdir, "own"), 0o444, uid=NOBODY, gid=NOBODY)
    os.utime(os.path.join(mdir, "writable"), ns=(10**9, 10**9))
    # "now" needs only write permission
    nobody(os.utime, "writable", cwd=mdir)
    assert os.stat(os.path.join(mdir, "writable")).st_mtime_ns > 10**18
    # explicit times need ownership
    assert nobody_errno(os.utime, "writable", (1, 2), cwd=mdir) == errno.EPERM
    assert nobody_errno(os.utime, "readonly", cwd=mdir) == errno.EACCES
    assert nobody_errno(os.utime, "readonly", (1, 2), cwd=mdir) == errno.EPERM
    # the owner may set any times, even without write permission
    nobody(os.utime, "own", ns=(3_000_000_007, 4_000_000_009), cwd=mdir)
    st = os.stat(os.path.join(mdir, "own"))
    assert (st.st_atime_ns, st.st_mtime_ns) == (3_000_000_007, 4_000_000_009)
    nobody(os.utime, "own", cwd=mdir)


def test_permission_changes_take_effect(mdir):
    make_file(os.path.join(mdir, "f"), 0o600)
    assert nobody_errno(_read, "f", cwd=mdir) == errno.EACCES
    os.chmod(os.path.join(mdir, "f"), 0o644)
    assert nobody(_read, "f", cwd=mdir) == b"secret"
    os.chown(os.path.join(mdir, "f"), NOBODY, 0)
    os.chmod(os.path.join(mdir, "f"), 0o200)
    assert nobody_errno(_read, "f", cwd=mdir) == errno.EACCES
    nobody(_write, "f", b"SECRET", cwd=mdir)
    assert _read(os.path.join(mdir, "f")) == b"SECRET"
    # an fd opened before a chmod keeps its access
    os.chmod(os.path.join(mdir, "f"), 0o644)

    def open_then_revoke() -> tuple[bytes, int]:
        fd = os.open("f", os.O_RDONLY)
        try:
            os.chmod("f", 0)
            try:
                os.open("f", os.O_RDONLY)
                again = 0
            except OSError as exc:
                again = exc.errno
            return os.pread(fd, 6, 0), again
        finally:
            os.close(fd)

    assert nobody(open_then_revoke, cwd=mdir) == (b"SECRET", errno.EACCES)


def _ftruncate(name: str) -> None:
    fd = os.open(name, os.O_WRONLY)
    try:
        os.ftruncate(fd, 1)
    finally:
        os.close(fd)


_CHANGES = {
    "write": lambda name: _write(name, b"changed"),
    "ftruncate": _ftruncate,
    "truncate": lambda name: os.truncate(name, 2),
    "open-trunc": lambda name: _write(name, b"", os.O_WRONLY | os.O_TRUNC),
}


@pytest.mark.parametrize("mode", [0o2767, 0o2766, 0o4767, 0o2777, 0o6777, 0o6767], ids=lambda m: f"{m:o}")
@pytest.mark.parametrize("change", list(_CHANGES))
@pytest.mark.parametrize("member", [False, True], ids=["not-in-group", "in-group"])
def test_setuid_and_setgid_after_a_change_by_another_user_are_those_of_the_local_disk(
        mdir, public_tmp, mode, change, member):
    """Linux, without CAP_FSETID: a write or truncate always clears setuid; it clears setgid
    if group execute is set, or if the writer is not in the file's group."""
    name = f"f{mode:o}-{change}"
    got = {}
    for d in (public_tmp, mdir):  # the local disk, then the mount
        make_file(os.path.join(d, name), mode)  # root's, group root
        as_user(_CHANGES[change], name, groups=[0] if member else [], cwd=d)
        got[d] = mode_of(os.path.join(d, name))
    assert oct(got[mdir]) == oct(got[public_tmp])
