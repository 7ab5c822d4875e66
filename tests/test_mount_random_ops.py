"""A randomised differential test: the same operations on the mount and on the local disk.

A seeded generator produces a sequence of file system operations over a small
pool of names (so that they often collide: replacing renames, links to renamed
files, writes to unlinked open files...). Each operation runs on a directory
of the mount and on a directory of the local disk, and every result (value or
errno) must be the same. At the end both trees must be identical, also after
the store has been unmounted and mounted again.

On failure the message names the seed and the step; rerun one seed with
``NEXUS_RANDOM_SEEDS=<seed>[:wb|:nowb[:root|:nobody]],... pytest tests/test_mount_random_ops.py``
(``NEXUS_RANDOM_STEPS`` sets the length of each sequence).
"""

from __future__ import annotations

import os
import random
import stat
from typing import Any

import pytest

import nexusfs
from tests.mount_helpers import (
    NOBODY,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    as_user,
    diff_snapshots,
    renameat2,
    snapshot,
)
from tests.mountutil import MountedStore

pytestmark = pytest.mark.mount

MiB = 1 << 20
BS = 4 * MiB
MAX_OFFSET = 3 * BS + MiB  # files stay below ~14 MiB

DIRS = ["", "d0", "d1", "d0/d2", "d1/d3"]
NAMES = ["a", "b", "c", "d", "e", "d0", "d1", "d2", "d3"]
MODES_FILE = [0o644, 0o600, 0o755, 0o666, 0o400, 0o4755, 0o2750, 0o1777, 0o000]
MODES_DIR = [0o755, 0o700, 0o777, 0o2775, 0o1777, 0o555]

#: (seed, mount option, user): "wb" with the kernel's writeback cache (the default), "nowb"
#: without it; operations run as root or as nobody. NEXUS_RANDOM_SEEDS="seed[:cache[:user]],..."
CASES = [
    (int(parts[0]), cache, user)
    for item in os.environ.get(
        "NEXUS_RANDOM_SEEDS", "101:wb:root,202:wb:root,303:nowb:root,404:wb:nobody,505:nowb:nobody"
    ).split(",")
    for parts in [item.split(":")]
    for cache in ([p for p in parts[1:2] if p] or ["wb", "nowb"])
    for user in ([p for p in parts[2:3] if p] or ["root"])
]
STEPS = int(os.environ.get("NEXUS_RANDOM_STEPS", "1500"))
if not CASES or STEPS < 1:
    raise ValueError(f"NEXUS_RANDOM_SEEDS/NEXUS_RANDOM_STEPS leave nothing to run ({len(CASES)} cases, "
                     f"{STEPS} steps): at least one case of at least one step")


class Side:
    """One of the two directories, with its open files (by slot number)."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fds: dict[int, int] = {}

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def close_all(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def _stat_tuple(st: os.stat_result) -> tuple:
    fmt = stat.S_IFMT(st.st_mode)
    size = None if stat.S_ISDIR(st.st_mode) else st.st_size  # directory sizes differ by design
    return (oct(fmt), oct(stat.S_IMODE(st.st_mode)), size, st.st_nlink)


def apply(side: Side, op: tuple) -> Any:
    """Run one operation; return a comparable result (a value, or ('errno', code))."""
    kind = op[0]
    try:
        if kind == "open":
            _, slot, rel, flags, mode = op
            fd = os.open(side.p(rel), flags | os.O_NONBLOCK, mode)  # (fifos must not block)
            side.fds[slot] = fd
            return ("fd", _stat_tuple(os.fstat(fd)))
        if kind == "close":
            os.close(side.fds.pop(op[1]))
            return None
        if kind == "pwrite":
            _, slot, off, data = op
            return os.pwrite(side.fds[slot], data, off)
        if kind == "write":  # at the file position (O_APPEND fds append)
            _, slot, data = op
            return os.write(side.fds[slot], data)
        if kind == "pread":
            _, slot, off, n = op
            return os.pread(side.fds[slot], n, off)
        if kind == "ftruncate":
            _, slot, size = op
            os.ftruncate(side.fds[slot], size)
            return None
        if kind == "fstat":
            return _stat_tuple(os.fstat(side.fds[op[1]]))
        if kind == "fsync":
            os.fsync(side.fds[op[1]])
            return None
        if kind == "write_path":  # open, write at an offset, close
            _, rel, off, data = op
            fd = os.open(side.p(rel), os.O_WRONLY | os.O_NONBLOCK)
            try:
                return os.pwrite(fd, data, off)
            finally:
                os.close(fd)
        if kind == "read_path":
            fd = os.open(side.p(op[1]), os.O_RDONLY | os.O_NONBLOCK)
            try:
                out = bytearray()
                while chunk := os.read(fd, 1 << 20):
                    out += chunk
                return bytes(out)
            finally:
                os.close(fd)
        if kind == "truncate":
            os.truncate(side.p(op[1]), op[2])
            return None
        if kind == "rename":
            os.rename(side.p(op[1]), side.p(op[2]))
            return None
        if kind == "link":
            os.link(side.p(op[1]), side.p(op[2]), follow_symlinks=False)
            return None
        if kind == "unlink":
            os.unlink(side.p(op[1]))
            return None
        if kind == "mkdir":
            os.mkdir(side.p(op[1]), op[2])
            return None
        if kind == "rmdir":
            os.rmdir(side.p(op[1]))
            return None
        if kind == "chmod":
            os.chmod(side.p(op[1]), op[2], follow_symlinks=True)
            return None
        if kind == "mkfifo":
            os.mkfifo(side.p(op[1]), 0o644)
            return None
        if kind == "symlink":
            os.symlink(op[1], side.p(op[2]))
            return None
        if kind == "readlink":
            return os.readlink(side.p(op[1]))
        if kind == "stat":
            return _stat_tuple(os.stat(side.p(op[1])))
        if kind == "lstat":
            return _stat_tuple(os.lstat(side.p(op[1])))
        if kind == "renameat2":
            renameat2(side.p(op[1]), side.p(op[2]), op[3])
            return None
        if kind == "utime":  # explicit times; the mtime that results
            os.utime(side.p(op[1]), ns=(op[2], op[3]), follow_symlinks=False)
            return os.lstat(side.p(op[1])).st_mtime_ns
        if kind == "chown":
            os.chown(side.p(op[1]), op[2], op[3], follow_symlinks=op[4])
            return _stat_tuple(os.lstat(side.p(op[1])))
        if kind == "setxattr":
            os.setxattr(side.p(op[1]), op[2], op[3], op[4])
            return None
        if kind == "getxattr":
            return os.getxattr(side.p(op[1]), op[2])
        if kind == "listxattr":
            return sorted(os.listxattr(side.p(op[1])))
        if kind == "removexattr":
            os.removexattr(side.p(op[1]), op[2])
            return None
        if kind == "listdir":
            return sorted(os.listdir(side.p(op[1])))
    except OSError as exc:
        return ("errno", exc.errno)
    raise AssertionError(f"unknown operation {op!r}")


def _entries(root: str) -> list[tuple[str, str]]:
    """(relative path, 'file'|'dir'|'link'|'other') of everything below ``root``."""
    out: list[tuple[str, str]] = []

    def visit(rel: str) -> None:
        try:
            it = os.scandir(os.path.join(root, rel) if rel else root)
        except PermissionError:
            return  # (running as nobody: a directory we made unreadable)
        with it:
            for e in sorted(it, key=lambda e: e.name):
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_symlink():
                    out.append((r, "link"))
                elif e.is_dir(follow_symlinks=False):
                    out.append((r, "dir"))
                    visit(r)
                elif e.is_file(follow_symlinks=False):
                    out.append((r, "file"))
                else:
                    out.append((r, "other"))

    visit("")
    return out


class Generator:
    """Operations chosen by a seeded generator, mostly on names that exist (in the local tree)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.next_slot = 0
        self.entries: list[tuple[str, str]] = []

    def random_path(self) -> str:
        d = self.rng.choice(DIRS)
        n = self.rng.choice(NAMES)
        return f"{d}/{n}" if d else n

    def existing(self, *kinds: str) -> str:
        pool = [p for p, k in self.entries if not kinds or k in kinds]
        return self.rng.choice(pool) if pool else self.random_path()

    def new_path(self) -> str:
        """A name in an existing directory (often free, sometimes taken)."""
        dirs = [""] + [p for p, k in self.entries if k == "dir" and p.count("/") < 3]
        d = self.rng.choice(dirs)
        n = self.rng.choice(NAMES)
        return f"{d}/{n}" if d else n

    def path(self, *kinds: str, p_existing: float = 0.7) -> str:
        r = self.rng.random()
        if r < p_existing:
            return self.existing(*kinds)
        if r < p_existing + (1 - p_existing) * 0.8:
            return self.new_path()
        return self.random_path()

    def data(self) -> bytes:
        r = self.rng.random()
        if r < 0.75:
            n = self.rng.randrange(1, 9000)
        elif r < 0.97:
            n = self.rng.randrange(9000, 300_000)
        else:
            n = self.rng.randrange(MiB, 2 * MiB)
        if self.rng.random() < 0.3:
            return bytes([self.rng.randrange(256)]) * n  # compressible, dedup-able
        return self.rng.randbytes(n)

    def offset(self) -> int:
        r = self.rng.random()
        if r < 0.35:
            return self.rng.randrange(0, 20000)
        if r < 0.7:  # around a block boundary
            return max(0, self.rng.randrange(1, 4) * BS + self.rng.randrange(-5000, 5000))
        return self.rng.randrange(0, MAX_OFFSET)

    def op(self, slots: list[int], local_root: str) -> tuple:
        rng = self.rng
        self.entries = _entries(local_root)
        r = rng.random()
        if slots and r < 0.40:
            slot = rng.choice(slots)
            k = rng.random()
            if k < 0.40:
                return ("pwrite", slot, self.offset(), self.data())
            if k < 0.50:
                return ("write", slot, self.data())
            if k < 0.70:
                return ("pread", slot, self.offset(), rng.choice([1, 100, 5000, MiB, 3 * MiB]))
            if k < 0.77:
                return ("ftruncate", slot, rng.choice([0, 1, 4095, BS - 1, BS, BS + 1]) if rng.random() < 0.4
                        else self.offset())
            if k < 0.87:
                return ("fstat", slot)
            if k < 0.90:
                return ("fsync", slot)
            return ("close", slot)
        r = rng.random()
        if r < 0.14:
            if len(slots) >= 8:
                return ("close", rng.choice(slots))
            flags = rng.choice([os.O_RDWR, os.O_RDWR, os.O_WRONLY, os.O_RDONLY])
            if rng.random() < 0.6:
                flags |= os.O_CREAT
            if rng.random() < 0.15:
                flags |= os.O_EXCL
            if rng.random() < 0.15:
                flags |= os.O_TRUNC
            if rng.random() < 0.10:
                flags |= os.O_APPEND
            slot = self.next_slot
            self.next_slot += 1
            return ("open", slot, self.path("file", p_existing=0.6), flags, rng.choice([0o644, 0o600, 0o755]))
        if r < 0.24:
            return ("write_path", self.path("file", p_existing=0.85), self.offset(), self.data())
        if r < 0.32:
            return ("read_path", self.path("file", p_existing=0.85))
        if r < 0.37:
            size = self.offset() if rng.random() < 0.6 else rng.randrange(0, 9000)
            return ("truncate", self.path("file", p_existing=0.85), size)
        if r < 0.50:
            src = self.path()
            kind = next((k for p, k in self.entries if p == src), None)
            if kind and rng.random() < 0.4:  # onto an existing entry of the same kind: replace it
                return ("rename", src, self.existing(kind))
            return ("rename", src, self.path(p_existing=0.2))
        if r < 0.56:
            return ("link", self.path("file", "link"), self.path(p_existing=0.2))
        if r < 0.63:
            return ("unlink", self.path("file", "link", "other"))
        if r < 0.70:
            return ("mkdir", self.path(p_existing=0.15), rng.choice(MODES_DIR))
        if r < 0.74:
            return ("rmdir", self.path("dir"))
        if r < 0.78:
            p = self.path()
            return ("chmod", p, rng.choice(MODES_DIR if rng.random() < 0.3 else MODES_FILE))
        if r < 0.81:
            return ("mkfifo", self.path(p_existing=0.2))
        if r < 0.86:
            # relative targets only, never leaving the test directory
            target = rng.choice(["a", "b", "d0", "d0/a", "d1/d3/b", "nowhere", "d2/c", "e"])
            return ("symlink", target, self.path(p_existing=0.2))
        if r < 0.88:
            return ("readlink", self.path("link"))
        if r < 0.95:
            return self.rare_op()
        if r < 0.98:
            return ("stat" if rng.random() < 0.5 else "lstat", self.path())
        return ("listdir", self.path("dir", p_existing=0.9))

    def rare_op(self) -> tuple:
        rng = self.rng
        k = rng.random()
        if k < 0.25:
            flags = rng.choice([RENAME_EXCHANGE, RENAME_EXCHANGE, RENAME_NOREPLACE])
            return ("renameat2", self.path(), self.path(p_existing=0.8 if flags == RENAME_EXCHANGE else 0.3), flags)
        if k < 0.35:
            ids = [-1, 0, 1000, NOBODY]
            return ("chown", self.path(), rng.choice(ids), rng.choice(ids), rng.random() < 0.7)
        if k < 0.45:
            t = rng.randrange(0, 2 * 10**18)
            return ("utime", self.path("file", "dir"), t + 17, t + rng.randrange(-(10**15), 10**15))
        name = rng.choice(["user.a", "user.b", "user.long" + "x" * 100])
        if k < 0.70:
            flags = rng.choice([0, 0, os.XATTR_CREATE, os.XATTR_REPLACE])
            return ("setxattr", self.path("file", "dir"), name, rng.randbytes(rng.randrange(0, 300)), flags)
        if k < 0.82:
            return ("getxattr", self.path("file", "dir"), name)
        if k < 0.92:
            return ("listxattr", self.path("file", "dir"))
        return ("removexattr", self.path("file", "dir"), name)


def _describe(op: tuple) -> str:
    parts = []
    for x in op:
        if isinstance(x, bytes | bytearray):
            parts.append(f"<{len(x)} bytes>")
        elif isinstance(x, int) and op[0] == "open" and x == op[3]:
            parts.append(f"flags={x:#o}")
        else:
            parts.append(repr(x))
    return "(" + ", ".join(parts) + ")"


def _short(result: Any) -> str:
    if isinstance(result, bytes):
        return f"<{len(result)} bytes, sha {hash(result) & 0xffffffff:08x}>"
    return repr(result)


def _first_difference(a: bytes, b: bytes) -> str:
    if len(a) != len(b):
        where = f"lengths {len(a)} != {len(b)}"
    else:
        where = ""
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return f"{where} first differing byte at {i}".strip()
    return where


def run_sequence(seed: int, label: str, mine_root: str, theirs_root: str) -> str | None:
    """Apply the seed's operations to both directories; None, or what went wrong."""
    mine, theirs = Side(mine_root), Side(theirs_root)
    gen = Generator(seed)
    history: list[str] = []
    try:
        for step in range(STEPS):
            op = gen.op(sorted(theirs.fds), theirs.root)
            expect = apply(theirs, op)
            got = apply(mine, op)
            history.append(f"{step}: {_describe(op)} -> {_short(expect)}")
            if got != expect:
                detail = ""
                if isinstance(got, bytes) and isinstance(expect, bytes):
                    detail = " (" + _first_difference(got, expect) + ")"
                return (
                    f"seed {seed} ({label}), step {step}: {_describe(op)}\n"
                    f"  local disk: {_short(expect)}\n  mount:      {_short(got)}{detail}\n"
                    "last operations:\n  " + "\n  ".join(history[-25:])
                )
    finally:
        mine.close_all()
        theirs.close_all()
    return None


@pytest.mark.parametrize(("seed", "cache", "user"), CASES, ids=[f"{s}-{c}-{u}" for s, c, u in CASES])
def test_random_operations_match_local_disk(seed, cache, user, tmp_path_factory):
    base = tmp_path_factory.mktemp(f"random{seed}")
    args = ["--no-writeback-cache"] if cache == "nowb" else []
    local = base / "local"
    local.mkdir()
    home, mountpoint = str(base / "store"), str(base / "mnt")
    old_umask = os.umask(0o022)
    mounted = MountedStore(home, mountpoint, args=args)
    mounted.start()
    remounted = None
    label = f"{cache}, as {user}"
    try:
        os.mkdir(mounted.path("t"))
        if user == "root":
            failure = run_sequence(seed, label, mounted.path("t"), str(local))
        else:
            # the same, as an unprivileged user: permission checks are compared too
            os.chmod(base, 0o755)
            for d in (mounted.path("t"), str(local)):
                os.chown(d, NOBODY, NOBODY)
            failure = as_user(run_sequence, seed, label, "mnt/t", "local", cwd=str(base), timeout=600)
        if failure:
            pytest.fail(failure)
        owners = True
        want = snapshot(str(local), xattrs=True, owners=owners)
        have = snapshot(mounted.path("t"), xattrs=True, owners=owners)
        assert have == want, f"seed {seed}: trees differ:\n" + "\n".join(diff_snapshots(have, want))
        # everything survives an unmount and a new mount of the same store
        assert mounted.stop() == 0
        with nexusfs.connect(home) as nx:
            report = nx.fsck()
            assert report.clean, f"seed {seed}: fsck: " + "; ".join(map(str, report.problems))
        remounted = MountedStore(home, mountpoint, args=args).start()
        have = snapshot(remounted.path("t"), xattrs=True, owners=owners)
        assert have == want, f"seed {seed}: trees differ after remount:\n" + "\n".join(diff_snapshots(have, want))
    finally:
        os.umask(old_umask)
        if remounted is not None:
            remounted.stop()
        mounted.stop()
