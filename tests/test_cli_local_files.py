"""``nexus get`` / ``put`` / ``export -o`` against what is already in the way, side by side with GNU cp.

The same source tree is copied onto the same obstacles (files, hard links,
symlinks, dangling symlinks, directories, fifos, device nodes) by
``cp -R --preserve=timestamps,links`` on the local disk and by nexus; the
resulting trees, and what lies outside them, must be identical. Where nexus
deliberately differs from cp (a read-only file as root, a special file in the
way of a symlink) it is tested on its own. Device nodes are made with mknod in
a temporary directory (major 1: 3 is null, 7 is full), never /dev itself.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import stat
import subprocess
import time

from nexusfs.localcopy import open_local_for_write
from tests import needs
from tests.mount_helpers import NOBODY, as_user
from tests.test_cli import _nexus_argv, connect, home, nexus

FIXTURES = (home, nexus)  # the store and the `nexus` runner of test_cli.py, used here as fixtures

NULL, FULL = os.makedev(1, 3), os.makedev(1, 7)
T0 = 1_500_000_000_000_000_000

needs_root = needs.root_only("mknod of a device node needs root")


def write(path, data: bytes, mode: int = 0o644) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.chmod(path, mode)


def make_source(root) -> None:
    """What is copied: one entry for each kind of obstacle below, and some that meet none."""
    os.makedirs(root / "sub")
    write(root / "file-onto-file", b"new1", 0o640)
    write(root / "file-onto-hardlinked", b"new2")
    write(root / "file-onto-link", b"new3")
    write(root / "file-onto-dangling", b"new4")
    write(root / "file-onto-dir", b"new5")
    write(root / "file-onto-device", b"new6")
    os.makedirs(root / "dir-onto-file")
    write(root / "dir-onto-file" / "x", b"x")
    os.symlink("file-onto-file", root / "link-onto-file")
    os.symlink("somewhere", root / "link-onto-link")
    os.mkfifo(root / "fifo-onto-file", 0o640)
    write(root / "hard-a", b"hard", 0o600)
    os.link(root / "hard-a", root / "hard-b")
    write(root / "sub" / "deep", b"deep")
    write(root / "fresh", b"fresh", 0o604)
    os.mkfifo(root / "fresh-fifo", 0o600)
    if os.geteuid() == 0:
        os.mknod(root / "fresh-device", stat.S_IFCHR | 0o620, NULL)
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, ns=(T0 + i, T0 + 1000 + i), follow_symlinks=False)
    os.utime(root, ns=(T0, T0))


def make_obstacles(parent, name: str) -> None:
    """What is in the way at ``parent/name``, plus a hard link and a symlink target beside it."""
    d = parent / name
    os.makedirs(d / "sub")
    os.chmod(d / "sub", 0o750)
    write(d / "file-onto-file", b"old1", 0o600)
    write(d / "file-onto-hardlinked", b"old2")
    os.link(d / "file-onto-hardlinked", parent / "outside-hardlink")
    write(parent / "link-target", b"old3")
    os.symlink("../link-target", d / "file-onto-link")
    os.symlink("nowhere", d / "file-onto-dangling")
    os.makedirs(d / "file-onto-dir")
    write(d / "file-onto-dir" / "inside", b"kept")
    write(d / "dir-onto-file", b"a file")
    write(d / "link-onto-file", b"a file")
    os.symlink("old", d / "link-onto-link")
    write(d / "fifo-onto-file", b"a file")
    if os.geteuid() == 0:
        os.mknod(d / "file-onto-device", stat.S_IFCHR | 0o666, NULL)
    else:
        write(d / "file-onto-device", b"a file")
    for i, p in enumerate(sorted(parent.rglob("*"))):  # the same times in every copy of the obstacles
        os.utime(p, ns=(T0 + 5000 + i, T0 + 6000 + i), follow_symlinks=False)


def describe_local(root) -> dict:
    """Every entry below ``root``: kind, content or target, mode, mtime, which names share an inode."""
    out = {}
    inodes: dict[int, list[str]] = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(root))
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFLNK:
            out[rel] = ("symlink", os.readlink(p))
        elif fmt == stat.S_IFREG:
            out[rel] = ("file", p.read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_nlink)
            inodes.setdefault(st.st_ino, []).append(rel)
        elif fmt == stat.S_IFDIR:
            out[rel] = ("dir", stat.S_IMODE(st.st_mode))
        else:
            out[rel] = (stat.filemode(st.st_mode), st.st_rdev, st.st_mtime_ns)
    out["hard links"] = sorted(names for names in inodes.values() if len(names) > 1)
    return out


def describe_store(home: str, top: str) -> dict:
    """The same description of a tree in the store."""
    out = {}
    inodes: dict[int, list[str]] = {}
    with connect(home) as nx:
        for fi in sorted(nx.walk(top, attrs=True), key=lambda i: i.path):
            rel = fi.path[len(top) + 1:]
            if fi.type == "symlink":
                out[rel] = ("symlink", fi.target)
            elif fi.type == "file":
                out[rel] = ("file", nx.read_bytes(fi.path), fi.permissions, fi.mtime_ns, fi.nlink)
                inodes.setdefault(fi.ino, []).append(rel)
            elif fi.type == "dir":
                out[rel] = ("dir", fi.permissions)
            else:
                out[rel] = (stat.filemode(fi.mode), fi.rdev, fi.mtime_ns)
    out["hard links"] = sorted(names for names in inodes.values() if len(names) > 1)
    return out


def gnu_cp(src, dest_parent) -> subprocess.CompletedProcess:
    return subprocess.run(["cp", "-R", "--preserve=timestamps,links", str(src), str(dest_parent)],
                          capture_output=True, timeout=60)


REFUSED = ["file-onto-dangling", "file-onto-dir", "dir-onto-file"]  # cp refuses these three too


def assert_as_cp(ours: dict, theirs: dict, device_time: int, new_time: int) -> None:
    """The trees are the same, but for where nexus differs from cp on purpose.

    A device node written to keeps its times (cp's --preserve sets them). A
    file with other hard links is written in place and its links kept (cp's
    --preserve=links puts a new file in its place).
    """
    if os.geteuid() == 0:
        assert ours.pop("src/file-onto-device")[2] == device_time
        theirs.pop("src/file-onto-device")
    assert ours.pop("src/file-onto-hardlinked") == ("file", b"new2", 0o644, new_time, 2)
    assert ours.pop("outside-hardlink") == ("file", b"new2", 0o644, new_time, 2)
    ours["hard links"].remove(["outside-hardlink", "src/file-onto-hardlinked"])
    assert theirs.pop("src/file-onto-hardlinked")[1:] == (b"new2", 0o644, new_time, 1)
    assert theirs.pop("outside-hardlink")[1] == b"old2"
    assert ours == theirs


def test_get_onto_an_existing_tree_ends_as_cp_does(nexus, tmp_path):
    src = tmp_path / "src"
    make_source(src)
    nexus("put", str(src), "/")
    by_cp, by_get = tmp_path / "by-cp", tmp_path / "by-get"
    for parent in (by_cp, by_get):
        make_obstacles(parent, "src")
    device_time = os.lstat(by_get / "src" / "file-onto-device").st_mtime_ns
    new_time = os.lstat(src / "file-onto-hardlinked").st_mtime_ns
    cp = gnu_cp(src, by_cp)
    result = nexus("get", "/src", str(by_get), code=1)
    assert cp.returncode == 1 and len(cp.stderr.splitlines()) == len(REFUSED)
    assert_as_cp(describe_local(by_get), describe_local(by_cp), device_time, new_time)
    lines = result.stderr.splitlines()
    assert lines == [
        f"nexus: error: cannot overwrite non-directory {by_get}/src/dir-onto-file with directory /src/dir-onto-file",
        f"nexus: error: not writing through dangling symlink {by_get}/src/file-onto-dangling",
        f"nexus: error: cannot overwrite directory {by_get}/src/file-onto-dir with non-directory /src/file-onto-dir",
    ]
    # in place: the outside hard link sees the new content, the symlink's target was written
    assert (by_get / "outside-hardlink").read_bytes() == b"new2"
    assert (by_get / "link-target").read_bytes() == b"new3"
    assert stat.S_IMODE(os.stat(by_get / "src" / "file-onto-file").st_mode) == 0o600  # its mode kept


def test_put_onto_an_existing_tree_ends_as_cp_does(nexus, home, tmp_path):
    src = tmp_path / "src"
    make_source(src)
    by_cp, staged = tmp_path / "by-cp", tmp_path / "staged"
    make_obstacles(by_cp, "src")
    make_obstacles(staged, "src")
    nexus("put", str(staged), "/by-put")  # the same obstacles in the store
    device_time = os.lstat(staged / "src" / "file-onto-device").st_mtime_ns
    new_time = os.lstat(src / "file-onto-hardlinked").st_mtime_ns
    cp = gnu_cp(src, by_cp)
    result = nexus("put", str(src), "/by-put", code=1)
    assert cp.returncode == 1
    assert_as_cp(describe_store(home, "/by-put"), describe_local(by_cp), device_time, new_time)
    assert result.stderr.splitlines() == [
        f"nexus: error: cannot overwrite non-directory /by-put/src/dir-onto-file with directory {src}/dir-onto-file",
        "nexus: error: not writing through dangling symlink /by-put/src/file-onto-dangling",
    ] + ([  # a device node in a store is only a name: there is nothing to write to
        "nexus: error: cannot write into character device /by-put/src/file-onto-device (a store keeps no data there)",
    ] if os.geteuid() == 0 else []) + [
        f"nexus: error: cannot overwrite directory /by-put/src/file-onto-dir with non-directory {src}/file-onto-dir",
    ]


def test_get_writes_an_existing_file_in_place(nexus, tmp_path):
    nexus("write", "/f", input=b"from the store")
    local = tmp_path / "existing"
    write(local, b"old content that is longer", 0o640)
    os.link(local, tmp_path / "other-name")
    ino = os.stat(local).st_ino
    nexus("get", "/f", str(local))
    st = os.stat(local)
    assert (st.st_ino, st.st_nlink, stat.S_IMODE(st.st_mode)) == (ino, 2, 0o640)
    assert (tmp_path / "other-name").read_bytes() == b"from the store"


def test_get_follows_a_symlink_and_refuses_a_dangling_one(nexus, tmp_path):
    nexus("write", "/f", input=b"data")
    write(tmp_path / "target", b"old")
    os.symlink("target", tmp_path / "link")
    nexus("get", "/f", str(tmp_path / "link"))
    assert os.readlink(tmp_path / "link") == "target"
    assert (tmp_path / "target").read_bytes() == b"data"
    os.symlink("missing", tmp_path / "dangling")
    assert nexus.error("get", "/f", str(tmp_path / "dangling")) == \
        f"nexus: error: not writing through dangling symlink {tmp_path / 'dangling'}"
    assert not os.path.lexists(tmp_path / "missing")


@needs_root
def test_get_writes_to_a_device_node_and_never_replaces_it(nexus, tmp_path):
    nexus("write", "/f", input=os.urandom(3 * 65536))
    null, full = tmp_path / "null", tmp_path / "full"
    for node, rdev in ((null, NULL), (full, FULL)):
        os.mknod(node, stat.S_IFCHR | 0o666, rdev)
        os.chmod(node, 0o666)
    nexus("get", "/f", str(null))
    assert nexus.error("get", "/f", str(full)) == f"nexus: error: {full}: No space left on device"
    assert nexus.error("export", "-o", str(full)) == f"nexus: error: {full}: No space left on device"
    for node, rdev in ((null, NULL), (full, FULL)):
        st = os.lstat(node)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == rdev and stat.S_IMODE(st.st_mode) == 0o666


def test_get_writes_into_a_fifo_for_its_reader(nexus, tmp_path):
    payload = os.urandom(300_000)  # more than a pipe holds
    nexus("write", "/f", input=payload)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the reader is there before the writer
    proc = subprocess.Popen(_nexus_argv() + ["--home", nexus.home, "get", "/f", str(fifo)],
                            stderr=subprocess.PIPE)
    try:
        received = read_until_exit(reader, proc)
    finally:
        os.close(reader)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert (proc.returncode, proc.stderr.read()) == (0, b"")
    assert received == payload
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def read_until_exit(fd: int, proc: subprocess.Popen, timeout: float = 60) -> bytes:
    """What arrives on ``fd`` until ``proc`` has exited and nothing more comes."""
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _w, _x = select.select([fd], [], [], 0.1)
        data = os.read(fd, 1 << 16) if ready else b""
        if data:
            chunks.append(data)
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.01)  # no writer yet: a fifo without one reads as at its end
    return b"".join(chunks)


def test_get_refuses_a_socket(nexus, tmp_path):
    nexus("write", "/f", input=b"data")
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        assert nexus.error("get", "/f", str(path)) == f"nexus: error: cannot write to socket {path}"
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_a_read_only_file_is_refused_unless_force(nexus, home, tmp_path):
    nexus("write", "/f", input=b"new")
    local = tmp_path / "ro"
    write(local, b"old", 0o444)
    line = f"nexus: error: {local}: Permission denied (read-only; --force replaces it)"
    assert nexus.error("get", "/f", str(local)) == line
    assert nexus.error("export", "-o", str(local)) == line
    assert local.read_bytes() == b"old"
    nexus("get", "--force", "/f", str(local))
    assert local.read_bytes() == b"new"
    assert stat.S_IMODE(os.stat(local).st_mode) == 0o644  # a new file, with the source's mode
    # the same in the store
    with connect(home) as nx:
        nx.write_bytes("/ro", b"old")
        nx.chmod("/ro", 0o444)
    assert nexus.error("put", str(local), "/ro") == \
        "nexus: error: /ro: Permission denied (read-only; --force replaces it)"
    assert nexus("cat", "/ro").stdout_bytes == b"old"
    nexus("put", "-f", str(local), "/ro")
    assert nexus("cat", "/ro").stdout_bytes == b"new"


def test_special_files_in_the_way_are_never_removed(nexus, home, tmp_path):
    nexus("write", "/f", input=b"data")
    with connect(home) as nx:
        nx.symlink("f", "/link")
        nx.mknod("/store-fifo", stat.S_IFIFO | 0o644)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert nexus.error("get", "/link", str(fifo)) == \
        f"nexus: error: not replacing fifo {fifo} with symlink /link (remove it first)"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    write(tmp_path / "file", b"x")
    assert nexus.error("put", str(tmp_path / "file"), "/store-fifo") == \
        "nexus: error: cannot write into fifo /store-fifo (a store keeps no data there)"
    assert nexus("stat", "--json", "/store-fifo").stdout.count('"fifo"') == 1


def test_get_copies_a_symlink_and_follows_it_with_L(nexus, home, tmp_path):
    nexus("write", "/f", input=b"data")
    with connect(home) as nx:
        nx.symlink("f", "/link")
    nexus("get", "/link", str(tmp_path / "copy"))
    assert os.readlink(tmp_path / "copy") == "f"
    nexus("get", "-L", "/link", str(tmp_path / "followed"))
    assert (tmp_path / "followed").read_bytes() == b"data"


def test_export_output_follows_a_symlink_and_writes_in_place(nexus, tmp_path):
    nexus("write", "/f", input=b"data")
    write(tmp_path / "dump", b"old")
    os.symlink("dump", tmp_path / "link")
    ino = os.stat(tmp_path / "dump").st_ino
    nexus("export", "-o", str(tmp_path / "link"))
    assert os.readlink(tmp_path / "link") == "dump"
    assert os.stat(tmp_path / "dump").st_ino == ino
    assert (tmp_path / "dump").read_bytes().startswith(b'{"type":"header"')


def _try_to_write(path: str) -> str:
    """What opening ``path`` for a file's content gives (run as another user)."""
    try:
        sink, _created = open_local_for_write(path)
    except OSError as exc:
        return errno.errorcode[exc.errno]
    sink.close()
    return "written"


def test_read_only_means_not_writable_by_this_user(tmp_path):
    """As an ordinary user, a file is read-only when its mode does not let that user write it."""
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o777)
    cases = {"root-0666": (0, 0o666), "root-0644": (0, 0o644), "nobody-0644": (NOBODY, 0o644),
             "nobody-0444": (NOBODY, 0o444)}
    for name, (uid, mode) in cases.items():
        write(d / name, b"old", mode)
        os.chown(d / name, uid, uid)
    seen = {name: as_user(_try_to_write, name, cwd=str(d)) for name in cases}
    assert seen == {"root-0666": "written", "root-0644": "EACCES", "nobody-0644": "written",
                    "nobody-0444": "EACCES"}
