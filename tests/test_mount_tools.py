"""Everyday tools on the mount: git, tar, rsync, cp -a, sed -i, editors, sqlite, make.

Each test runs a real program against a directory of the shared mount and
checks the result with the program's own verification where it has one
(``git fsck``, ``PRAGMA integrity_check``) and by comparing trees otherwise.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import stat
import subprocess
import time

import pytest

from tests import needs
from tests.mount_helpers import diff_snapshots, drop_cache, snapshot

pytestmark = pytest.mark.mount

MiB = 1 << 20


def need(*tools: str) -> None:
    needs.need_tool(*tools)


def run(cmd: list[str], cwd: str | None = None, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, **kw)
    if os.environ.get("NEXUS_TIME_TOOLS"):  # with pytest -s: how long each tool took
        print(f"{time.monotonic() - t0:6.2f}s {' '.join(cmd)[:100]}")
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed with {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return res


def make_tree(root: str, rng: random.Random, nfiles: int = 120, *, specials: bool = True) -> None:
    """A varied tree: nested dirs, text and binary files, a big file, modes, symlinks, hard links."""
    os.makedirs(root, exist_ok=True)
    dirs = [root]
    for i in range(12):
        d = os.path.join(rng.choice(dirs), f"dir{i}")
        os.mkdir(d)
        dirs.append(d)
    os.mkdir(os.path.join(root, "empty"))
    files = []
    for i in range(nfiles):
        p = os.path.join(rng.choice(dirs), f"file{i}.{rng.choice(['txt', 'bin', 'py'])}")
        if p.endswith(".bin"):
            data = rng.randbytes(rng.randrange(0, 200_000))
        else:
            data = "".join(f"line {j} of {i}: {rng.random()}\n" for j in range(rng.randrange(0, 300))).encode()
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, rng.choice([0o644, 0o600, 0o755, 0o640]))
        files.append(p)
    with open(os.path.join(root, "big.dat"), "wb") as f:
        f.write(rng.randbytes(5 * MiB + 12345))
    if specials:
        os.symlink("big.dat", os.path.join(root, "link-to-big"))
        os.symlink("dir0", os.path.join(root, "link-to-dir"))
        os.symlink("../nowhere", os.path.join(root, "dir0", "dangling"))
        os.link(files[0], os.path.join(root, "hardlink-of-file0"))
        os.mkfifo(os.path.join(root, "fifo"))
    os.chmod(dirs[2], 0o750)
    # distinct, sub-second mtimes
    for i, p in enumerate(files):
        os.utime(p, ns=(1_600_000_000_000_000_000 + i * 1_000_001, 1_600_000_000_000_000_000 + i * 1_000_003))


def tree_without(snap: dict, prefix: str) -> dict:
    return {k: v for k, v in snap.items() if not (k == prefix or k.startswith(prefix + "/"))}


# ===================================================================== git
@pytest.fixture
def git_env(tmp_path):
    home = tmp_path / "githome"
    home.mkdir()
    return dict(
        os.environ,
        HOME=str(home),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="Test",
        GIT_AUTHOR_EMAIL="test@example.com",
        GIT_COMMITTER_NAME="Test",
        GIT_COMMITTER_EMAIL="test@example.com",
        GIT_TERMINAL_PROMPT="0",
    )


def test_git(mdir, git_env):
    need("git")
    repo = os.path.join(mdir, "repo")
    rng = random.Random(11)
    make_tree(repo, rng, nfiles=300, specials=False)
    os.symlink("big.dat", os.path.join(repo, "link"))
    env = git_env
    run(["git", "init", "-q", "-b", "main", repo], env=env)
    run(["git", "add", "-A"], cwd=repo, env=env)
    run(["git", "commit", "-q", "-m", "initial"], cwd=repo, env=env)
    # several more commits: edits, new files, deletions, renames, mode changes
    all_files = sorted(
        os.path.relpath(os.path.join(d, f), repo)
        for d, _, fs in os.walk(repo) if ".git" not in d for f in fs
        if not os.path.islink(os.path.join(d, f))
    )
    for c in range(4):
        for rel in rng.sample(all_files, 25):
            p = os.path.join(repo, rel)
            if os.path.exists(p):
                with open(p, "ab") as f:
                    f.write(f"change {c}\n".encode())
        for i in range(10):
            with open(os.path.join(repo, f"new-{c}-{i}.txt"), "w") as f:
                f.write(f"new file {c} {i}\n" * 50)
        victim = os.path.join(repo, all_files[c])
        if os.path.exists(victim):
            run(["git", "rm", "-q", "-f", all_files[c]], cwd=repo, env=env)
        run(["git", "add", "-A"], cwd=repo, env=env)
        run(["git", "mv", f"new-{c}-0.txt", f"renamed-{c}.txt"], cwd=repo, env=env)
        os.chmod(os.path.join(repo, f"new-{c}-1.txt"), 0o755)
        run(["git", "add", "-A"], cwd=repo, env=env)
        run(["git", "commit", "-q", "-m", f"commit {c}"], cwd=repo, env=env)
    assert run(["git", "status", "--porcelain"], cwd=repo, env=env).stdout == ""
    assert run(["git", "rev-list", "--count", "HEAD"], cwd=repo, env=env).stdout.strip() == "5"
    run(["git", "fsck", "--full", "--strict"], cwd=repo, env=env)
    # clone (the local clone hard-links objects) and a copying clone
    clone = os.path.join(mdir, "clone")
    copy = os.path.join(mdir, "copy")
    run(["git", "clone", "-q", repo, clone], env=env)
    run(["git", "clone", "-q", "--no-hardlinks", repo, copy], env=env)
    for c in (clone, copy):
        run(["git", "fsck", "--full"], cwd=c, env=env)
        assert run(["git", "status", "--porcelain"], cwd=c, env=env).stdout == ""
        assert (run(["git", "rev-parse", "HEAD"], cwd=c, env=env).stdout
                == run(["git", "rev-parse", "HEAD"], cwd=repo, env=env).stdout)
        want = _as_git_sees_it(snapshot(repo))
        have = _as_git_sees_it(snapshot(c))
        assert have == want, "\n".join(diff_snapshots(have, want))
    # work in the clone and pull it back
    with open(os.path.join(clone, "from-clone.txt"), "w") as f:
        f.write("hello from the clone\n")
    run(["git", "add", "from-clone.txt"], cwd=clone, env=env)
    run(["git", "commit", "-q", "-m", "from clone"], cwd=clone, env=env)
    run(["git", "pull", "-q", "--no-rebase", clone, "main"], cwd=repo, env=env)
    assert os.path.exists(os.path.join(repo, "from-clone.txt"))
    # gc repacks everything and removes loose objects; the repository stays sound
    run(["git", "gc", "-q", "--prune=now"], cwd=repo, env=env)
    run(["git", "fsck", "--full", "--strict"], cwd=repo, env=env)
    assert run(["git", "status", "--porcelain"], cwd=repo, env=env).stdout == ""
    assert run(["git", "count-objects", "-v"], cwd=repo, env=env).stdout.splitlines()[0] == "count: 0"
    # a fresh checkout of an old commit and back
    run(["git", "checkout", "-q", "HEAD~3"], cwd=repo, env=env)
    assert run(["git", "status", "--porcelain"], cwd=repo, env=env).stdout == ""
    run(["git", "checkout", "-q", "main"], cwd=repo, env=env)
    run(["git", "fsck", "--full"], cwd=clone, env=env)
    # `git status` after the index was written notices a changed file
    with open(os.path.join(repo, "renamed-0.txt"), "a") as f:
        f.write("dirty\n")
    assert run(["git", "status", "--porcelain"], cwd=repo, env=env).stdout.strip() == "M renamed-0.txt"


def _as_git_sees_it(snap: dict) -> dict:
    """What a checkout reproduces: files, symlinks, contents and the executable bit."""
    out = {}
    for k, v in tree_without(snap, ".git").items():
        kind, mode, size, digest = v[:4]
        if kind == "dir":
            continue
        out[k] = (kind, size, digest, bool(mode & 0o100) if kind == "file" else None)
    return out


# ==================================================================== tar
def test_tar_round_trip(mdir, tmp_path):
    need("tar")
    rng = random.Random(12)
    src = os.path.join(mdir, "src")
    make_tree(src, rng)
    # a sparse file too
    with open(os.path.join(src, "sparse"), "wb") as f:
        f.seek(20 * MiB)
        f.write(b"end")
    archive = os.path.join(mdir, "archive.tar")
    run(["tar", "--format=posix", "--xattrs", "-cpf", archive, "-C", src, "."])
    out = os.path.join(mdir, "out")
    os.mkdir(out)
    run(["tar", "--xattrs", "-xpf", archive, "-C", out])
    want = snapshot(src, mtimes=True)
    have = snapshot(out, mtimes=True)
    assert have == want, "\n".join(diff_snapshots(have, want))
    # compressed, from the mount to the local disk and back onto the mount
    tgz = str(tmp_path / "a.tgz")
    run(["tar", "--format=posix", "-czpf", tgz, "-C", src, "."])
    local = tmp_path / "local"
    local.mkdir()
    run(["tar", "-xzpf", tgz, "-C", str(local)])
    assert snapshot(str(local), mtimes=True) == want
    back = os.path.join(mdir, "back")
    os.mkdir(back)
    run(["tar", "-xzpf", tgz, "-C", back])
    assert snapshot(back, mtimes=True) == want
    # the archive read back from the filesystem lists every entry
    listing = run(["tar", "-tf", archive]).stdout.splitlines()
    assert len([x for x in listing if x not in ("./",)]) == len(want)


# ================================================================== rsync
def test_rsync_to_mount_and_back(mdir, tmp_path):
    need("rsync")
    rng = random.Random(13)
    local = str(tmp_path / "local")
    make_tree(local, rng)
    dst = os.path.join(mdir, "dst")
    run(["rsync", "-a", "-H", local + "/", dst + "/"])
    want = snapshot(local, mtimes=True)
    have = snapshot(dst, mtimes=True)
    assert have == want, "\n".join(diff_snapshots(have, want))
    # nothing to do a second time: sizes and mtimes round-trip exactly
    again = run(["rsync", "-a", "-H", "-i", local + "/", dst + "/"]).stdout
    assert again.strip() == "", f"rsync found differences after a full copy:\n{again}"
    # change some files on the local side; rsync's delta transfer updates them in place
    big = os.path.join(local, "big.dat")
    with open(big, "r+b") as f:
        f.seek(3 * MiB)
        f.write(b"CHANGED IN THE MIDDLE")
    # rsync's quick check compares sizes and whole seconds of mtime: move it on for sure
    st = os.stat(big)
    os.utime(big, ns=(st.st_atime_ns, st.st_mtime_ns + 5 * 10**9))
    os.unlink(os.path.join(local, "hardlink-of-file0"))
    with open(os.path.join(local, "added.txt"), "w") as f:
        f.write("added\n")
    run(["rsync", "-a", "-H", "--delete", "--no-whole-file", local + "/", dst + "/"])
    run(["rsync", "-a", "-H", "--delete", "--inplace", "--no-whole-file", local + "/", dst + "/"])
    assert snapshot(dst, mtimes=True) == snapshot(local, mtimes=True)
    # and back from the mount to the local disk
    back = str(tmp_path / "back")
    run(["rsync", "-a", "-H", dst + "/", back + "/"])
    want = snapshot(local, mtimes=True)
    have = snapshot(back, mtimes=True)
    assert have == want, "\n".join(diff_snapshots(have, want))
    assert run(["rsync", "-a", "-i", "-c", dst + "/", back + "/"]).stdout.strip() == ""


# ================================================================= cp -a
def test_cp_a_preserves_xattrs(mdir, tmp_path):
    need("cp", "setfattr", "getfattr")
    rng = random.Random(14)
    src = os.path.join(mdir, "src")
    make_tree(src, rng, nfiles=40)
    files = [os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs
             if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f))]
    for i, p in enumerate(files[:15]):
        run(["setfattr", "-n", "user.tag", "-v", f"value-{i}", p])
        os.setxattr(p, "user.binary", bytes(range(i, i + 40)))
    os.setxattr(os.path.join(src, "dir0"), "user.on-dir", b"yes")
    dst = os.path.join(mdir, "dst")
    run(["cp", "-a", src, dst])
    want = snapshot(src, mtimes=True, xattrs=True)
    have = snapshot(dst, mtimes=True, xattrs=True)
    assert have == want, "\n".join(diff_snapshots(have, want))
    out = run(["getfattr", "-d", "-m", "user.", os.path.join(dst, os.path.relpath(files[3], src))]).stdout
    assert 'user.tag="value-3"' in out
    # to the local disk and back
    local = str(tmp_path / "local")
    run(["cp", "-a", src, local])
    back = os.path.join(mdir, "back")
    run(["cp", "-a", local, back])
    assert snapshot(back, mtimes=True, xattrs=True) == want
    # cp --reflink=auto and sparse copies behave
    run(["cp", "--sparse=always", os.path.join(src, "big.dat"), os.path.join(mdir, "copy.dat")])
    with open(os.path.join(src, "big.dat"), "rb") as a, open(os.path.join(mdir, "copy.dat"), "rb") as b:
        assert a.read() == b.read()


# ================================================================= sed -i
def test_sed_in_place(mdir):
    need("sed")
    p = os.path.join(mdir, "config.ini")
    lines = [f"key{i} = foo value {i}\n" for i in range(5000)]
    with open(p, "w") as f:
        f.writelines(lines)
    os.chmod(p, 0o640)
    old_ino = os.stat(p).st_ino
    run(["sed", "-i", "s/foo/bar/g; /key13 /d", p])
    with open(p) as f:
        got = f.read()
    want = "".join(ln.replace("foo", "bar") for ln in lines if not ln.startswith("key13 "))
    assert got == want
    st = os.stat(p)
    assert st.st_ino != old_ino, "sed -i writes a new file and renames it over the old one"
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert [n for n in os.listdir(mdir) if n != "config.ini"] == [], "no temporary files left"
    # with a backup suffix
    run(["sed", "-i.bak", "s/bar/baz/", p])
    assert os.path.exists(p + ".bak")
    with open(p + ".bak") as f:
        assert f.read() == want
    drop_cache(p)
    with open(p) as f:
        assert f.readline() == "key0 = baz value 0\n"


# ====================================================== editor-style saves
def test_editor_save_by_rename(mdir):
    p = os.path.join(mdir, "document.txt")
    with open(p, "w") as f:
        f.write("version 1\n" * 1000)
    os.chmod(p, 0o600)
    os.setxattr(p, "user.note", b"old")
    old_ino = os.stat(p).st_ino
    reader = os.open(p, os.O_RDONLY)  # somebody still has the old version open
    try:
        # write the new version to a temporary file, fsync it, rename it over the original
        tmp = os.path.join(mdir, ".document.txt.swp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"version 2\n" * 2000)
            os.fsync(fd)
        finally:
            os.close(fd)
        dfd = os.open(mdir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.rename(tmp, p)
            os.fsync(dfd)  # make the rename durable, as careful editors do
        finally:
            os.close(dfd)
        st = os.stat(p)
        assert st.st_ino != old_ino
        assert os.fstat(reader).st_nlink == 0, "the old inode has no names left"
        assert os.pread(reader, 10, 0) == b"version 1\n", "the old version stays readable while open"
    finally:
        os.close(reader)
    with open(p, "rb") as f:
        assert f.read() == b"version 2\n" * 2000
    assert sorted(os.listdir(mdir)) == ["document.txt"]
    assert os.listxattr(p) == []
    # vim's default: rename the original to a backup, write a new file, delete the backup
    os.rename(p, p + "~")
    with open(p, "w") as f:
        f.write("version 3\n")
    shutil.copymode(p + "~", p)
    os.unlink(p + "~")
    with open(p) as f:
        assert f.read() == "version 3\n"
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
    assert sorted(os.listdir(mdir)) == ["document.txt"]
    # and writing in place (truncate + write), the other common way
    with open(p, "r+") as f:
        f.truncate(0)
        f.write("version 4\n")
        f.flush()
        os.fsync(f.fileno())
    drop_cache(p)
    with open(p) as f:
        assert f.read() == "version 4\n"


# ================================================================= sqlite
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite(mdir, journal):
    path = os.path.join(mdir, "test.db")
    db = sqlite3.connect(path, isolation_level=None)
    try:
        mode = db.execute(f"PRAGMA journal_mode={journal}").fetchone()[0]
        assert mode == journal
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, payload BLOB, n INTEGER)")
        db.execute("CREATE INDEX t_name ON t(name)")
        rng = random.Random(15)
        expected: dict[int, tuple[str, int]] = {}
        next_id = 1
        for txn in range(200):
            saved = dict(expected)
            db.execute("BEGIN")
            for _ in range(10):
                name = f"name-{rng.randrange(1000)}"
                db.execute("INSERT INTO t (id, name, payload, n) VALUES (?, ?, ?, ?)",
                           (next_id, name, rng.randbytes(rng.randrange(10, 3000)), 0))
                expected[next_id] = (name, 0)
                next_id += 1
            if txn % 5 == 4:
                victims = rng.sample(sorted(expected), 8)
                for v in victims[:4]:
                    db.execute("UPDATE t SET n = n + 1 WHERE id = ?", (v,))
                    expected[v] = (expected[v][0], expected[v][1] + 1)
                for v in victims[4:]:
                    db.execute("DELETE FROM t WHERE id = ?", (v,))
                    del expected[v]
            if txn % 50 == 49:
                db.execute("ROLLBACK")  # a rolled-back transaction leaves nothing behind
                expected = saved
            else:
                db.execute("COMMIT")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = {r[0]: (r[1], r[2]) for r in db.execute("SELECT id, name, n FROM t")}
        assert rows == expected
        if journal == "wal":
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.execute("VACUUM")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    # reopened (the page cache dropped), the data is all there
    for name in os.listdir(mdir):
        drop_cache(os.path.join(mdir, name))
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM t").fetchone()[0] == len(expected)
        assert db.execute("SELECT SUM(n) FROM t").fetchone()[0] == sum(v[1] for v in expected.values())
    finally:
        db.close()


def test_sqlite_concurrent_connections(mdir):
    """Two connections (one writer, one reader) use POSIX locks through the mount."""
    path = os.path.join(mdir, "shared.db")
    w = sqlite3.connect(path, isolation_level=None, timeout=30)
    r = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        w.execute("PRAGMA journal_mode=wal")
        w.execute("CREATE TABLE kv (k INTEGER PRIMARY KEY, v TEXT)")
        for i in range(300):
            w.execute("INSERT INTO kv VALUES (?, ?)", (i, f"v{i}"))
            if i % 50 == 0:
                assert r.execute("SELECT COUNT(*) FROM kv").fetchone()[0] == i + 1
        assert r.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        w.close()
        r.close()


# =================================================================== make
MAKEFILE = """\
CC ?= cc
CFLAGS ?= -O1 -Wall
OBJS = main.o util.o

prog: $(OBJS)
\t$(CC) $(CFLAGS) -o $@ $(OBJS)

%.o: %.c util.h
\t$(CC) $(CFLAGS) -c -o $@ $<

clean:
\trm -f prog $(OBJS)
"""

MAIN_C = """\
#include <stdio.h>
#include "util.h"
int main(void) { printf("%d %s\\n", add(40, 2), greeting()); return 0; }
"""

UTIL_H = "int add(int a, int b);\nconst char *greeting(void);\n"

UTIL_C = """\
#include "util.h"
int add(int a, int b) { return a + b; }
const char *greeting(void) { return "%s"; }
"""


def test_make_builds_and_rebuilds_incrementally(mdir):
    need("make", "cc")
    files = {"Makefile": MAKEFILE, "main.c": MAIN_C, "util.h": UTIL_H, "util.c": UTIL_C % "hello"}
    for name, text in files.items():
        with open(os.path.join(mdir, name), "w") as f:
            f.write(text)
    out = run(["make"], cwd=mdir).stdout
    assert "main.o" in out and "util.o" in out
    prog = os.path.join(mdir, "prog")
    assert os.access(prog, os.X_OK)
    assert run([prog]).stdout == "42 hello\n"
    assert "up to date" in run(["make"], cwd=mdir).stdout
    # change one source: only it is recompiled, then linked
    time.sleep(0.05)
    with open(os.path.join(mdir, "util.c"), "w") as f:
        f.write(UTIL_C % "rebuilt")
    out = run(["make"], cwd=mdir).stdout
    compiled = [ln for ln in out.splitlines() if " -c " in ln]
    assert len(compiled) == 1 and "util.c" in compiled[0], out
    assert run([prog]).stdout == "42 rebuilt\n"
    # touch alone is enough to trigger a rebuild
    time.sleep(0.05)
    run(["touch", os.path.join(mdir, "main.c")])
    out = run(["make"], cwd=mdir).stdout
    compiled = [ln for ln in out.splitlines() if " -c " in ln]
    assert len(compiled) == 1 and "main.c" in compiled[0], out
    run(["make", "clean"], cwd=mdir)
    assert not os.path.exists(prog)


# ===================================================== find, grep, du, ls
def test_find_grep_du(mdir, tmp_path):
    need("grep", "find", "du")
    make_tree(os.path.join(mdir, "t"), random.Random(16), nfiles=80)
    for dirpath, _dirs, names in os.walk(os.path.join(mdir, "t")):  # grep reads what was stored
        for name in names:
            if stat.S_ISREG(os.lstat(os.path.join(dirpath, name)).st_mode):
                drop_cache(os.path.join(dirpath, name))
    # the same tree on the local disk is the oracle for find and grep
    local = str(tmp_path / "t")
    make_tree(local, random.Random(16), nfiles=80)

    def found(root: str, *cmd: str) -> list[str]:
        return sorted(run(list(cmd), cwd=root).stdout.splitlines())

    want = found(local, "find", ".", "-not", "-type", "d")
    assert len(want) == 80 + 1 + 5  # files, big.dat, the specials
    assert found(os.path.join(mdir, "t"), "find", ".", "-not", "-type", "d") == want
    # run() requires exit 0: grep exits 1 when nothing matched
    hits = found(local, "grep", "-rn", "line 7 of 1[0-9]:", ".")
    assert hits, "the pattern must match something in the tree, or this compares nothing"
    assert found(os.path.join(mdir, "t"), "grep", "-rn", "line 7 of 1[0-9]:", ".") == hits
    du = run(["du", "-sk", os.path.join(mdir, "t")]).stdout.split()[0]
    assert int(du) >= 5 * 1024, "du counts the stored blocks"
    ls = run(["ls", "-laR", os.path.join(mdir, "t")]).stdout
    assert "link-to-big -> big.dat" in ls
