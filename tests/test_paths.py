"""Path resolution of the Python API, side by side with the kernel on the local disk.

The same small tree is built in a store and in a temporary directory; every
operation is then run on the same path in both, and must end the same way:
the same errno, or the same result (which entry it reached, what the tree looks
like afterwards). Trailing slashes, '.', '..' (physical, after symlinks) and
the empty path are where a lexical normalisation of the path goes wrong.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

import pytest

import nexusfs
from nexusfs.errors import FsError

#: (kind, path, content or symlink target); relative symlinks only, so both trees agree
TREE = [
    ("dir", "dir", None),
    ("file", "dir/file", b"data"),
    ("dir", "dir/sub", None),
    ("file", "dir/sub/inner", b"inner"),
    ("dir", "dir/sub/deeper", None),
    ("dir", "dir/emptydir", None),
    ("symlink", "dir/to-file", "file"),
    ("symlink", "dir/to-sub", "sub"),
    ("symlink", "dir/to-deeper", "sub/deeper"),  # to-deeper/.. is sub (physical), not dir (lexical)
    ("symlink", "dir/dangling", "nowhere"),
    ("symlink", "dir/to-file-slash", "file/"),
]

PATHS = [
    "", "/", ".", "/dir", "/dir/", "/dir/.", "/dir//file", "/dir/./file",
    "/dir/file", "/dir/file/", "/dir/file/.", "/dir/file/..", "/dir/file/x", "/dir/file/../file",
    "/dir/sub/", "/dir/sub/..", "/dir/sub/../file", "/dir/nope/..", "/dir/nope/",
    "/dir/to-file", "/dir/to-file/", "/dir/to-file/.",
    "/dir/to-sub", "/dir/to-sub/", "/dir/to-sub/..", "/dir/to-deeper/..", "/dir/to-deeper/../inner",
    "/dir/dangling", "/dir/dangling/", "/dir/to-file-slash",
    "/dir/emptydir", "/dir/emptydir/", "/dir/emptydir/.", "/dir/emptydir/..",
    "/dir/new", "/dir/new/",
]


def build_store(nx) -> None:
    for kind, rel, arg in TREE:
        if kind == "dir":
            nx.mkdir("/" + rel)
        elif kind == "file":
            nx.write_bytes("/" + rel, arg)
        else:
            nx.symlink(arg, "/" + rel)


def build_local(root: str) -> None:
    for kind, rel, arg in TREE:
        p = os.path.join(root, rel)
        if kind == "dir":
            os.mkdir(p)
        elif kind == "file":
            with open(p, "wb") as f:
                f.write(arg)
        else:
            os.symlink(arg, p)


class Local:
    """The operations on the local disk, with paths taken from the tree's root."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, p: str) -> str:
        return "" if p == "" else self.root + "/" + p

    def name_of(self, st: os.stat_result) -> str:
        """The tree entry (relative path) with the inode of ``st``."""
        if (st.st_dev, st.st_ino) == (os.stat(self.root).st_dev, os.stat(self.root).st_ino):
            return "/"
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                full = os.path.join(dirpath, n)
                if os.lstat(full).st_ino == st.st_ino:
                    return "/" + os.path.relpath(full, self.root)
        raise AssertionError("entry not in the tree")

    def tree(self) -> list[tuple[str, str]]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            for n in dirnames + filenames:
                full = os.path.join(dirpath, n)
                out.append(("/" + os.path.relpath(full, self.root), _kind(os.lstat(full).st_mode)))
        return sorted(out)


class Store:
    """The same operations through the Python API."""

    def __init__(self, nx) -> None:
        self.nx = nx

    def name_of(self, ino: int) -> str:
        if ino == 1:
            return "/"
        return next(i.path for i in self.nx.walk("/", attrs=True) if i.ino == ino)

    def tree(self) -> list[tuple[str, str]]:
        return sorted((i.path, _kind(i.mode)) for i in self.nx.walk("/", attrs=True))


def _kind(mode: int) -> str:
    return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink"}[stat.S_IFMT(mode)]


# operation name -> (on the local disk, through the API); each returns something comparable
def _local_ops(loc: Local) -> dict[str, Callable[[str], Any]]:
    def read(p: str) -> bytes:
        with open(loc.path(p), "rb") as f:
            return f.read()

    def write(p: str) -> list:
        with open(loc.path(p), "wb") as f:
            f.write(b"new")
        return loc.tree()

    return {
        "stat": lambda p: loc.name_of(os.stat(loc.path(p))),
        "lstat": lambda p: loc.name_of(os.lstat(loc.path(p))),
        "exists": lambda p: os.path.exists(loc.path(p)) if p else False,
        "read": read,
        "listdir": lambda p: sorted(os.listdir(loc.path(p))) if p else os.listdir(""),
        "write": write,
        "mkdir": lambda p: (os.mkdir(loc.path(p)), loc.tree())[1],
        "rmdir": lambda p: (os.rmdir(loc.path(p)), loc.tree())[1],
        "unlink": lambda p: (os.unlink(loc.path(p)), loc.tree())[1],
        "rename": lambda p: (os.rename(loc.path(p), loc.path("/dir/renamed")), loc.tree())[1],
        "symlink": lambda p: (os.symlink("file", loc.path(p)), loc.tree())[1],
    }


def _store_ops(st: Store) -> dict[str, Callable[[str], Any]]:
    nx = st.nx

    def write(p: str) -> list:
        nx.write_bytes(p, b"new")
        return st.tree()

    return {
        "stat": lambda p: st.name_of(nx.stat(p).ino),
        "lstat": lambda p: st.name_of(nx.stat(p, follow_symlinks=False).ino),
        "exists": nx.exists,
        "read": nx.read_bytes,
        "listdir": lambda p: sorted(nx.listdir(p)),
        "write": write,
        "mkdir": lambda p: (nx.mkdir(p), st.tree())[1],
        "rmdir": lambda p: (nx.rmdir(p), st.tree())[1],
        "unlink": lambda p: (nx.delete(p), st.tree())[1],
        "rename": lambda p: (nx.rename(p, "/dir/renamed"), st.tree())[1],
        "symlink": lambda p: (nx.symlink("file", p), st.tree())[1],
    }


def _outcome(fn: Callable[[str], Any], p: str) -> Any:
    try:
        return ("ok", fn(p))
    except OSError as exc:
        return ("errno", errno.errorcode.get(exc.errno, exc.errno))


READ_OPS = ["stat", "lstat", "exists", "read", "listdir"]
CHANGE_OPS = ["write", "mkdir", "rmdir", "unlink", "rename", "symlink"]


def _local_outcome(root: str, op: str, path: str) -> Any:
    cwd = os.getcwd()
    os.chdir(root)  # '.' on the local side is the tree's root
    try:
        local = _outcome(_local_ops(Local(root))[op], path)
    finally:
        os.chdir(cwd)
    if path == "/" and op in ("rmdir", "rename"):
        local = ("errno", "EBUSY")  # what the kernel says for the root of a file system
    return local


@pytest.fixture(scope="module")
def both_trees(tmp_path_factory):
    """One store and one local tree for the operations that change nothing."""
    base = tmp_path_factory.mktemp("paths")
    nx = nexusfs.connect(str(base / "store"), block_size=64 * 1024, semantic=False, background_indexing=False)
    try:
        build_store(nx)
        os.mkdir(base / "local")
        build_local(str(base / "local"))
        yield nx, str(base / "local")
    finally:
        nx.close()


@pytest.mark.parametrize("op", READ_OPS)
@pytest.mark.parametrize("path", PATHS)
def test_api_looks_up_paths_like_the_kernel(both_trees, op, path):
    nx, root = both_trees
    assert _outcome(_store_ops(Store(nx))[op], path) == _local_outcome(root, op, path)


@pytest.mark.parametrize("op", CHANGE_OPS)
@pytest.mark.parametrize("path", PATHS)
def test_api_changes_paths_like_the_kernel(nx, tmp_path, op, path):
    build_store(nx)
    root = str(tmp_path / "local")
    os.mkdir(root)
    build_local(root)
    assert _outcome(_store_ops(Store(nx))[op], path) == _local_outcome(root, op, path)


def test_dot_dot_of_the_root_is_the_root(nx):
    build_store(nx)
    assert nx.stat("/..").ino == nx.stat("/").ino == nx.stat("/../dir/..").ino
    assert nx.read_bytes("/../dir/file") == b"data"


@pytest.mark.parametrize("call", [
    lambda nx: nx.read_bytes("/dir/file/"),
    lambda nx: nx.listdir("/dir/file/.."),
    lambda nx: nx.stat("/dir/file/"),
    lambda nx: nx.open("/dir/file/", "rb"),
])
def test_a_file_with_a_trailing_slash_is_not_a_directory(nx, call):
    build_store(nx)
    with pytest.raises(FsError) as exc:
        call(nx)
    assert exc.value.errno == errno.ENOTDIR


def test_the_empty_path_names_nothing(nx):
    with pytest.raises(FsError) as exc:
        nx.stat("")
    assert exc.value.errno == errno.ENOENT
    assert not nx.exists("")
