"""glob gives what Python's ``glob.glob(pattern, root_dir=D, recursive=True)`` gives.

A tree of a few hundred stdlib files plus hidden files and directories, odd names,
empty directories and a symlink, on local disk and in a store (and, at the end,
behind a real mount's ``.search/glob/``). Python returns directories matched by a
pattern ending in '/' (or by 'a/**') with a trailing '/'; that is removed before comparing.
"""

from __future__ import annotations

import errno
import os
import shutil

import pytest

from tests.search_helpers import (
    load_tree,
    materialise,
    open_store,
    py_glob,
    rel_paths,
    stdlib_files,
)

ROOT = "/g"

EXTRA_FILES = {
    ".hidden_top.txt": b"hidden at the top\n",
    ".hidden_dir/inside.py": b"print('hidden dir')\n",
    ".hidden_dir/sub/deeper.txt": b"deeper\n",
    "email/.secret.txt": b"a hidden file in email\n",
    "json/.cache/data.json": b"{}\n",
    "a[1].txt": b"brackets in the name\n",
    "b?c.txt": b"question mark in the name\n",
    "weird name.py": b"spaces\n",
    "dash-name.TXT": b"upper case suffix\n",
    "deep/a/b/c/leaf.txt": b"leaf\n",
    "deep/a/x.py": b"x\n",
    "deep/a/b/.dot/hid.txt": b"hidden under deep\n",
}
EMPTY_DIRS = ["empty", "deep/a/b/empty2"]

#: at least 25 patterns: *, ?, [...], [!...], **, hidden files, trailing '/', literals
PATTERNS = [
    "*",
    "*.txt",
    "*.py",
    "**",
    "**/*.py",
    "**/__init__.py",
    "**/*.json",
    "email/**",
    "email/**/*.py",
    "**/mime/*",
    "*/*.py",
    "*/*/*.py",
    "?????.py",
    "????.*",
    "[a-c]*",
    "[!a-m]*.py",
    "**/[!_]*.txt",
    "[!.]*",
    "*[0-9]*",
    "*[[]*",
    "b[?]c.txt",
    ".*",
    "**/.*",
    ".hidden_dir/*",
    ".hidden_dir/**",
    "*/.cache/*",
    "deep/**/.dot/*",
    "**/",
    "*/",
    "email/*/",
    "deep/**/",
    "json/*.py",
    "email/mime/text.py",
    "deep/**/leaf.txt",
    "**/c",
    "**/b/**",
    "*/**/*.json",
    "weird name*",
    "*.TXT",
    "*.txt/",
    "nonexistent/*",
    "**/*.nothing",
    "**/**/leaf.txt",
    "deep/a/*/c/*",
    # wildcards in directory components before a '**' (the walk prunes by them)
    "*/a/**/*.txt",
    "d*/?/**",
    "[de]*/**/*.py",
    "*/.dot/*",
    "deep/*/b/**/",
    ".*/**/*.txt",
    "[!e]*/**/*.json",
]

SCOPED = [
    ("email", "*.py"),
    ("email", "**/*.py"),
    ("email", "mime/*"),
    ("email", ".*"),
    ("json", "**"),
    ("deep", "**/"),
    ("deep/a", "b/**"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("glob-tree")
    local = str(base / "local")
    rels = [r for r in stdlib_files() if r.startswith(("email/", "json/", "asyncio/", "concurrent/", "wsgiref/"))
            or "/" not in r]
    materialise(local, rels)
    for rel, data in EXTRA_FILES.items():
        os.makedirs(os.path.dirname(os.path.join(local, rel)) or local, exist_ok=True)
        with open(os.path.join(local, rel), "wb") as f:
            f.write(data)
    for d in EMPTY_DIRS:
        os.makedirs(os.path.join(local, d), exist_ok=True)
    nx = open_store(str(base / "store"), background_indexing=False)
    try:
        load_tree(nx, local, ROOT)
        for d in EMPTY_DIRS:
            nx.mkdir(f"{ROOT}/{d}", parents=True)
        # a symlink to a file is matched by name, like any entry
        os.symlink("json/__init__.py", os.path.join(local, "link_to_json.py"))
        nx.symlink("json/__init__.py", f"{ROOT}/link_to_json.py")
        yield nx, local, str(base / "store")
    finally:
        nx.close()
        shutil.rmtree(str(base), ignore_errors=True)


def test_tree_is_big_enough(tree):
    nx, local, _home = tree
    assert len(py_glob(local, "**")) > 250
    assert len(PATTERNS) >= 25


@pytest.mark.parametrize("pattern", PATTERNS)
def test_glob_equals_python_glob(tree, pattern):
    nx, local, _home = tree
    theirs = py_glob(local, pattern)
    ours = rel_paths(nx.glob(pattern, ROOT), ROOT)
    assert ours == theirs, (sorted(set(ours) - set(theirs))[:10], sorted(set(theirs) - set(ours))[:10])


@pytest.mark.parametrize("sub,pattern", SCOPED)
def test_glob_scoped_to_a_directory(tree, sub, pattern):
    nx, local, _home = tree
    theirs = py_glob(os.path.join(local, sub), pattern)
    root = f"{ROOT}/{sub}"
    found = nx.glob(pattern, root)
    assert all(p.startswith(root + "/") for p in found)
    assert rel_paths(found, root) == theirs


def test_glob_nonempty_results(tree):
    """The table is not trivially passing: most patterns find something, some nothing."""
    nx, local, _home = tree
    sizes = {p: len(py_glob(local, p)) for p in PATTERNS}
    assert sum(1 for n in sizes.values() if n) >= 35
    assert sizes["nonexistent/*"] == 0 and sizes["**/*.nothing"] == 0
    assert sizes[".*"] >= 2 and sizes["**/"] >= 10


def test_glob_attrs_and_errors(tree):
    nx, local, _home = tree
    infos = nx.glob("deep/**", ROOT, attrs=True)
    kinds = {i.path[len(ROOT) + 1:]: i.type for i in infos}
    assert kinds["deep/a/b/c/leaf.txt"] == "file" and kinds["deep/a/b"] == "dir"
    assert nx.glob("*", f"{ROOT}/missing") == []
    assert nx.glob("*", f"{ROOT}/email/mime/text.py") == []  # a file is not a directory to search
    with pytest.raises(OSError) as exc:
        nx.glob("", ROOT)
    assert exc.value.errno == 22


def test_glob_follows_changes(nx):
    nx.write_many({"/w/a.py": b"", "/w/b.txt": b"", "/w/s/c.py": b""})
    assert nx.glob("**/*.py", "/w") == ["/w/a.py", "/w/s/c.py"]
    nx.rename("/w/a.py", "/w/s/a2.py")
    nx.delete("/w/s/c.py")
    nx.write_bytes("/w/new.py", b"x")
    assert nx.glob("**/*.py", "/w") == ["/w/new.py", "/w/s/a2.py"]
    # a '.search' name can never be created, so it never shows up
    with pytest.raises(OSError) as ei:
        nx.mkdir("/w/.search")
    assert ei.value.errno == errno.EPERM
    assert nx.glob("**/.*", "/w") == []
