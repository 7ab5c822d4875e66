"""The mount's virtual ``.search/`` directories, on real mounts.

* A mount of a store pre-filled with a part of CPython's ``Lib/``: ``.results`` of
  ``.search/grep/…`` and ``.search/grep-i/…`` equal ``LC_ALL=C grep -rnI`` on the
  local copy, ``.search/glob/…`` equals Python's glob, in several directories;
  tools walking the tree (find, du, ls -a, grep -r, rsync -a) never see ``.search``.
* The shared mount of this module (default settings, semantic search on) for
  everything that writes: links to results, editing through them, read-only errors,
  permission filtering as ``nobody``, semantic results, git.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import subprocess
import time
from urllib.parse import unquote

import pytest

from tests import needs
from tests.mount_helpers import as_user, errno_of
from tests.mountutil import MountedStore, wait_until
from tests.search_helpers import (
    C_ENV,
    describe_diff,
    gnu_grep,
    load_tree,
    materialise,
    open_store,
    parse_grep_lines,
    py_glob,
    stdlib_files,
)

pytestmark = pytest.mark.mount

LIB = "lib"


def q(query: str) -> str:
    """A query as a path component: '%' and '/' escaped."""
    return query.replace("%", "%25").replace("/", "%2F")


def decode_entry(name: str) -> str:
    return unquote(name)


def results(d: str, kind: str, query: str) -> bytes:
    with open(os.path.join(d, ".search", kind, q(query), ".results"), "rb") as f:
        return f.read()


def entries(d: str, kind: str, query: str) -> list[str]:
    return sorted(os.listdir(os.path.join(d, ".search", kind, q(query))))


def matched_files(d: str, kind: str, query: str) -> list[str]:
    return sorted(decode_entry(n) for n in entries(d, kind, query) if n != ".results")


# ------------------------------------------------------------ corpus mount
EXTRA = {
    "zz/binary.dat": b"import os\0binary\n",
    "zz/latin1.txt": "import os  # d\xe9j\xe0 vu\n".encode("latin-1"),
    "zz/.hidden.py": b"import os  # a hidden file\n",
    "zz/100%.txt": b"import os  # a percent sign\n",
    "zz/url.txt": b"see https://example.org/path/to/page for import os\n",
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(mounted lib directory, local copy)."""
    base = tmp_path_factory.mktemp("search-mount")
    os.chmod(base, 0o755)
    local = str(base / "local")
    rels = [r for r in stdlib_files() if r.startswith(("email/", "json/", "http/", "asyncio/")) or "/" not in r]
    materialise(local, rels)
    for rel, data in EXTRA.items():
        os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
        with open(os.path.join(local, rel), "wb") as f:
            f.write(data)
    home = str(base / "store")
    nx = open_store(home, background_indexing=False)
    try:
        load_tree(nx, local, "/" + LIB)
        nx.reindex()
    finally:
        nx.close()
    m = MountedStore(home, str(base / "mnt"), settings={"semantic": False})
    m.start()
    try:
        yield m.path(LIB), local
    finally:
        m.stop()


GREP_CASES = [
    ("grep", "import os"),
    ("grep", "^(class|def) [A-Z]"),
    ("grep", "[A-Z]{4,}_[A-Z]+"),
    ("grep", "\\w+\\(\\)$"),
    ("grep", "https?://[a-z.]+/"),
    ("grep", "d.j."),
    ("grep", "100%"),
    ("grep", "no such text anywhere at all"),
    ("grep-i", "todo"),
    ("grep-i", "JSONDecodeError"),
]


@pytest.mark.parametrize("kind,pattern", GREP_CASES)
def test_grep_results_equal_gnu_grep(corpus, kind, pattern):
    d, local = corpus
    flags = ("-i",) if kind == "grep-i" else ()
    theirs = gnu_grep(local, pattern, flags)
    data = results(d, kind, pattern)
    ours = parse_grep_lines(data, "")
    assert ours == theirs, describe_diff(ours, theirs)
    # one link per matching file, named by its path (with '/' as %2F), plus .results
    assert matched_files(d, kind, pattern) == sorted({r[0] for r in theirs})


@pytest.mark.parametrize("sub,pattern", [("email", "^def "), ("json", "import"), ("email/mime", "class"),
                                         ("zz", "import os")])
def test_grep_scoped_to_its_directory(corpus, sub, pattern):
    d, local = corpus
    theirs = gnu_grep(local, pattern, (), sub)
    ours = parse_grep_lines(results(os.path.join(d, sub), "grep", pattern), "")
    assert ours == theirs, describe_diff(ours, theirs)


@pytest.mark.parametrize("sub,pattern", [
    ("", "*"), ("", "*.py"), ("", "**/*.json"), ("", "email/**/*.py"), ("", "**/mime/*"),
    ("", "*/"), ("", "zz/.*"), ("", "zz/*"), ("", "zz/100%*"), ("", "**/*%*"), ("email", "**"),
    ("email/mime", "*.py"), ("json", "[!_]*"),
])
def test_glob_results_equal_python_glob(corpus, sub, pattern):
    d, local = corpus
    scope = os.path.join(d, sub) if sub else d
    theirs = py_glob(os.path.join(local, sub) if sub else local, pattern)
    assert results(scope, "glob", pattern).decode().splitlines() == theirs
    assert matched_files(scope, "glob", pattern) == theirs


def test_entry_names_are_encoded(corpus):
    d, _local = corpus
    names = entries(os.path.join(d, "zz"), "grep", "import os")
    assert names == sorted([".results", "%2Ehidden.py", "100%25.txt", "latin1.txt", "url.txt"])
    names = entries(d, "glob", "zz/*.py")
    assert names == [".results"]  # '*' does not match a leading '.'
    names = entries(d, "glob", "zz/.*")
    assert names == [".results", "zz%2F.hidden.py"]  # only a leading "." of the whole name is encoded


def test_links_lead_to_the_real_files(corpus):
    d, local = corpus
    qdir = os.path.join(d, ".search", "grep", q("^class JSONDecoder"))
    names = sorted(os.listdir(qdir))
    assert names == [".results", "json%2Fdecoder.py"]
    link = os.path.join(qdir, "json%2Fdecoder.py")
    assert os.path.islink(link)
    assert os.readlink(link) == "../../../json/decoder.py"
    assert os.path.realpath(link) == os.path.realpath(os.path.join(d, "json", "decoder.py"))
    with open(link, "rb") as f, open(os.path.join(local, "json", "decoder.py"), "rb") as g:
        assert f.read() == g.read()
    st = os.stat(os.path.join(qdir, ".results"))
    assert st.st_mode & 0o777 == 0o444 and st.st_size > 0


def test_search_dir_in_every_directory(corpus):
    d, local = corpus
    mnt = os.path.dirname(d)
    for sub in ("", "email", "email/mime", "json", "zz"):
        scope = os.path.join(d, sub) if sub else d
        st = os.stat(os.path.join(scope, ".search"))
        assert st.st_mode & 0o170000 == 0o040000
        assert sorted(os.listdir(os.path.join(scope, ".search"))) == ["glob", "grep", "grep-i", "semantic"]
        want = py_glob(os.path.join(local, sub) if sub else local, "*")
        assert matched_files(scope, "glob", "*") == want
    # the mount's root too: paths relative to it
    assert matched_files(mnt, "glob", "*") == [LIB]
    assert "lib/json/decoder.py" in matched_files(mnt, "grep", "^class JSONDecoder")
    # not under a file
    assert errno_of(os.stat, os.path.join(d, "json", "decoder.py", ".search")) == errno.ENOTDIR
    # unknown kinds and the '.' / '..' names
    assert errno_of(os.listdir, os.path.join(d, ".search", "nosuchkind")) == errno.ENOENT
    assert errno_of(os.listdir, os.path.join(d, ".search", "grep", "x", "no-such-entry")) == errno.ENOENT


def test_invalid_queries(corpus):
    d, _local = corpus
    assert errno_of(os.listdir, os.path.join(d, ".search", "grep", "(unclosed")) == errno.EINVAL
    assert errno_of(os.listdir, os.path.join(d, ".search", "grep-i", "a{2,1}")) == errno.EINVAL
    assert errno_of(os.listdir, os.path.join(d, ".search", "glob", q("/"))) == errno.EINVAL


def _find(path: str) -> list[str]:
    return sorted(subprocess.run(["find", "."], cwd=path, capture_output=True, text=True, check=True).stdout.split("\n"))


def test_tools_never_enter_search(corpus, tmp_path):
    d, local = corpus
    find_before = _find(d)
    du_before = subprocess.run(["du", "-sk", "."], cwd=d, capture_output=True, text=True, check=True).stdout
    # run several queries (the kernel now knows .search entries in several directories)
    for sub in ("", "email", "json"):
        scope = os.path.join(d, sub) if sub else d
        results(scope, "grep", "import")
        results(scope, "glob", "**")
        os.listdir(os.path.join(scope, ".search", "grep", "def"))
    find_after = _find(d)
    assert find_after == find_before
    assert not [p for p in find_after if ".search" in p]
    assert find_after == _find(local)
    du_after = subprocess.run(["du", "-sk", "."], cwd=d, capture_output=True, text=True, check=True).stdout
    assert du_after == du_before
    du_all = subprocess.run(["du", "-a", "."], cwd=d, capture_output=True, text=True, check=True).stdout
    assert ".search" not in du_all
    ls = subprocess.run(["ls", "-a", os.path.join(d, "email")], capture_output=True, text=True, check=True).stdout
    assert ".search" not in ls.split()
    assert ".search" not in os.listdir(d)
    # grep -r over the mount = grep -r over the local copy
    for pattern in ("JSONDecodeError", "^import (os|sys)$"):
        theirs = gnu_grep(local, pattern)
        over_mount = gnu_grep(d, pattern)
        assert over_mount == theirs, describe_diff(over_mount, theirs)
    # rsync -a copies the tree and nothing else
    rsync = needs.need_tool("rsync")
    dst = str(tmp_path / "copy")
    subprocess.run([rsync, "-a", os.path.join(d, "email") + "/", dst + "/"], check=True, capture_output=True)
    assert _find(dst) == _find(os.path.join(local, "email"))


def test_directory_listings_are_unchanged(corpus):
    d, _local = corpus
    before = sorted(os.listdir(os.path.join(d, "json")))
    os.listdir(os.path.join(d, "json", ".search", "grep", "import"))
    with os.scandir(os.path.join(d, "json")) as it:
        assert sorted(e.name for e in it) == before
    res = subprocess.run(["ls", "-laR", os.path.join(d, "json")], capture_output=True, text=True, check=True)
    assert ".search" not in res.stdout


# ------------------------------------------------------------ shared mount
def write(path: str, data: bytes, mode: int | None = None) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if mode is not None:
        os.chmod(path, mode)


def search_entries(mdir: str) -> tuple[str, str, str, str]:
    """a.txt holding 'findme' in ``mdir``, and the .search entries that find it:
    (.search, the query directory, the result link, .results)."""
    write(os.path.join(mdir, "a.txt"), b"findme\n")
    s = os.path.join(mdir, ".search")
    qdir = os.path.join(s, "grep", "findme")
    assert sorted(os.listdir(qdir)) == [".results", "a.txt"]
    return s, qdir, os.path.join(qdir, "a.txt"), os.path.join(qdir, ".results")


def test_read_only(mdir):
    s, qdir, link, res = search_entries(mdir)
    assert errno_of(os.mkdir, os.path.join(mdir, ".search")) == errno.EEXIST
    assert errno_of(os.mkdir, os.path.join(s, "mine")) == errno.EROFS
    assert errno_of(os.mkdir, os.path.join(qdir, "sub")) == errno.EROFS
    assert errno_of(lambda: open(os.path.join(qdir, "new.txt"), "wb")) == errno.EROFS
    # every name under a kind directory is a query: a directory
    assert errno_of(lambda: open(os.path.join(s, "grep", "new.txt"), "wb")) == errno.EISDIR
    assert errno_of(lambda: open(os.path.join(s, "new.txt"), "wb")) == errno.EROFS
    assert errno_of(lambda: open(res, "wb")) == errno.EROFS
    assert errno_of(lambda: open(res, "r+b")) == errno.EROFS
    assert errno_of(os.unlink, res) == errno.EROFS
    assert errno_of(os.unlink, link) == errno.EROFS
    assert errno_of(os.rename, link, os.path.join(qdir, "b.txt")) == errno.EROFS
    assert errno_of(os.rename, link, os.path.join(mdir, "stolen.txt")) == errno.EROFS
    assert errno_of(os.rename, os.path.join(mdir, "a.txt"), os.path.join(qdir, "x.txt")) == errno.EROFS
    assert errno_of(os.rmdir, qdir) == errno.EROFS
    assert errno_of(os.rmdir, s) == errno.EROFS
    assert errno_of(os.symlink, "a.txt", os.path.join(qdir, "ln")) == errno.EROFS
    assert errno_of(os.link, os.path.join(mdir, "a.txt"), os.path.join(qdir, "hl")) == errno.EROFS
    assert errno_of(os.chmod, res, 0o666) == errno.EROFS
    assert errno_of(os.truncate, res, 0) == errno.EROFS
    assert errno_of(os.rename, os.path.join(mdir, "a.txt"), os.path.join(mdir, ".search")) in (
        errno.EROFS, errno.EEXIST, errno.EPERM, errno.EISDIR)
    # nothing changed in the real directory
    assert sorted(os.listdir(mdir)) == ["a.txt"]
    with open(os.path.join(mdir, "a.txt"), "rb") as f:
        assert f.read() == b"findme\n"


def test_read_only_attributes_times_owners_and_nodes(mdir):
    """What .search refuses beyond names: extended attributes, times, owners, device nodes
    (EROFS, as for everything that would change it), on each kind of entry."""
    s, qdir, link, res = search_entries(mdir)
    for path in (s, os.path.join(s, "grep"), qdir, res):
        assert errno_of(os.setxattr, path, "user.k", b"v") == errno.EROFS, path
        assert errno_of(os.removexattr, path, "user.k") == errno.EROFS, path
        assert errno_of(os.utime, path, ns=(1, 1)) == errno.EROFS, path
        assert errno_of(os.utime, path) == errno.EROFS, path
        assert errno_of(os.chown, path, 0, 0) == errno.EROFS, path
    assert errno_of(os.utime, link, ns=(1, 1), follow_symlinks=False) == errno.EROFS
    assert errno_of(os.chown, link, 0, 0, follow_symlinks=False) == errno.EROFS
    assert errno_of(os.mknod, os.path.join(qdir, "fifo"), 0o600 | stat.S_IFIFO) == errno.EROFS
    assert errno_of(os.mknod, os.path.join(s, "fifo"), 0o600 | stat.S_IFIFO) == errno.EROFS
    # nothing changed in the real directory, nor on the file the result links to
    assert sorted(os.listdir(mdir)) == ["a.txt"]
    assert os.listxattr(os.path.join(mdir, "a.txt")) == []


def test_virtual_entries_have_no_extended_attributes(mdir):
    """getxattr/listxattr on .search entries: none there (ENODATA, an empty list), and the
    real file a result links to keeps its own."""
    s, qdir, link, res = search_entries(mdir)
    os.setxattr(os.path.join(mdir, "a.txt"), "user.colour", b"blue")
    for path in (s, os.path.join(s, "grep"), qdir, res):
        assert os.listxattr(path) == [], path
        assert errno_of(os.getxattr, path, "user.colour") == errno.ENODATA, path
    # through the result link: the real file's
    assert os.getxattr(link, "user.colour") == b"blue"
    assert os.listxattr(link) == ["user.colour"]


def test_results_follow_writes_through_the_mount(mdir):
    write(os.path.join(mdir, "one.txt"), b"alpha marker_x1\n")
    write(os.path.join(mdir, "sub/two.txt"), b"beta\nmarker_x1 again\n")
    assert results(mdir, "grep", "marker_x1") == b"one.txt:1:alpha marker_x1\nsub/two.txt:2:marker_x1 again\n"
    assert matched_files(mdir, "grep", "marker_x1") == ["one.txt", "sub/two.txt"]
    # change the files (written and closed), then ask again: new query names show the new state
    write(os.path.join(mdir, "one.txt"), b"alpha only\n")
    with open(os.path.join(mdir, "sub/two.txt"), "ab") as f:
        f.write(b"third marker_x2 line\n")
    os.rename(os.path.join(mdir, "sub/two.txt"), os.path.join(mdir, "sub/renamed.txt"))
    assert results(mdir, "grep", "marker_x[12]") == (
        b"sub/renamed.txt:2:marker_x1 again\nsub/renamed.txt:3:third marker_x2 line\n")
    assert matched_files(os.path.join(mdir, "sub"), "grep-i", "MARKER_X2") == ["renamed.txt"]
    os.unlink(os.path.join(mdir, "sub/renamed.txt"))
    assert results(mdir, "grep", "marker_x.") == b""
    assert matched_files(mdir, "glob", "**") == ["one.txt", "sub"]


def test_same_query_after_a_change(mdir):
    """Asking the very same query again after a change shows the change."""
    write(os.path.join(mdir, "f.txt"), b"state one\n")
    assert results(mdir, "grep", "state") == b"f.txt:1:state one\n"
    assert matched_files(mdir, "grep", "state") == ["f.txt"]
    write(os.path.join(mdir, "f.txt"), b"state two\n")
    write(os.path.join(mdir, "g.txt"), b"state three\n")
    assert results(mdir, "grep", "state") == b"f.txt:1:state two\ng.txt:1:state three\n"
    assert matched_files(mdir, "grep", "state") == ["f.txt", "g.txt"]
    os.unlink(os.path.join(mdir, "g.txt"))
    assert matched_files(mdir, "grep", "state") == ["f.txt"]
    assert matched_files(mdir, "glob", "*.txt") == ["f.txt"]
    write(os.path.join(mdir, "h.txt"), b"")
    assert matched_files(mdir, "glob", "*.txt") == ["f.txt", "h.txt"]


def test_edit_through_a_result_link(mdir):
    real = os.path.join(mdir, "src", "mod.py")
    write(real, b"def old_name():\n    return 1\n")
    qdir = os.path.join(mdir, ".search", "grep", "old_name")
    link = os.path.join(qdir, "src%2Fmod.py")
    assert sorted(os.listdir(qdir)) == [".results", "src%2Fmod.py"]
    # an editor opens the link and saves in place (the link is followed)
    with open(link, "r+b") as f:
        text = f.read()
        f.seek(0)
        f.truncate()
        f.write(text.replace(b"old_name", b"new_name"))
    with open(real, "rb") as f:
        assert f.read() == b"def new_name():\n    return 1\n"
    # or writes a new file next to the real one and renames it over it
    target = os.path.realpath(os.path.join(mdir, ".search", "grep", "new_name", "src%2Fmod.py"))
    assert target == os.path.realpath(real)
    tmp = target + ".swp"
    write(tmp, b"def newer_name():\n    return 2\n")
    os.rename(tmp, target)
    with open(real, "rb") as f:
        assert f.read() == b"def newer_name():\n    return 2\n"
    assert matched_files(mdir, "grep", "newer_name") == ["src/mod.py"]
    assert results(mdir, "grep", "old_name|new_name\\(") == b""


def test_permission_filtering(mdir):
    os.chmod(mdir, 0o755)
    write(os.path.join(mdir, "public.txt"), b"needle in public\n", 0o644)
    write(os.path.join(mdir, "private.txt"), b"needle in private\n", 0o600)
    os.makedirs(os.path.join(mdir, "secret"))
    write(os.path.join(mdir, "secret", "inner.txt"), b"needle in secret\n", 0o644)
    os.chmod(os.path.join(mdir, "secret"), 0o700)
    write(os.path.join(mdir, "open", "deep.txt"), b"needle deep\n", 0o644)

    # root sees everything
    assert matched_files(mdir, "grep", "needle") == ["open/deep.txt", "private.txt", "public.txt",
                                                   "secret/inner.txt"]

    def as_nobody():
        out = {}
        out["grep"] = sorted(os.listdir(os.path.join(".search", "grep", "needle")))
        with open(os.path.join(".search", "grep", "needle", ".results"), "rb") as f:
            out["results"] = f.read()
        with open(os.path.join(".search", "grep-i", "NEEDLE", ".results"), "rb") as f:
            out["results-i"] = f.read()
        with open(os.path.join(".search", "glob", "**", ".results"), "rb") as f:
            out["glob"] = f.read()
        out["glob-secret"] = sorted(os.listdir(os.path.join(".search", "glob", "secret%2F*")))
        try:
            os.listdir(os.path.join("secret", ".search", "grep", "needle"))
            out["inside"] = "listed"
        except OSError as exc:
            out["inside"] = exc.errno
        return out

    seen = as_user(as_nobody, cwd=mdir)
    assert seen["grep"] == [".results", "open%2Fdeep.txt", "public.txt"]
    assert seen["results"] == b"open/deep.txt:1:needle deep\npublic.txt:1:needle in public\n"
    assert seen["results-i"] == seen["results"]
    assert b"secret" not in seen["results"] and b"private" not in seen["results"]
    # names: the 0700 directory's entries are hidden; a 0600 file's name is visible (ls shows it)
    assert seen["glob"].decode().splitlines() == ["open", "open/deep.txt", "private.txt", "public.txt", "secret"]
    assert seen["glob-secret"] == [".results"]
    assert seen["inside"] == errno.EACCES
    # root still sees them, in the same directory, right after
    assert b"secret/inner.txt:1:needle in secret" in results(mdir, "grep", "needle")
    assert b"private.txt:1:needle in private" in results(mdir, "grep-i", "NEEDLE")


def test_semantic_results(mdir):
    needs.need_semantic()
    docs = {
        "notes/bread.md": "# Bread\n\nKnead the dough, let it rise, and bake it in a hot oven until golden.\n",
        "notes/bikes.md": "# Bicycles\n\nPump the tyres, oil the chain and check the brake pads before a ride.\n",
        "notes/stars.md": "# Stars\n\nA telescope on a dark night shows nebulae, clusters and distant galaxies.\n",
        "other/taxes.md": "# Taxes\n\nFile the annual return before the deadline and keep receipts.\n",
    }
    for p, t in docs.items():
        write(os.path.join(mdir, p), t.encode())
    query = "looking at the night sky through a lens"

    def ready() -> bool:
        return not results(mdir, "semantic", query + " " * int(time.monotonic() * 10 % 7)).startswith(b"#")

    assert wait_until(ready, timeout=60, interval=0.3), "the mount's indexer did not catch up"
    data = results(mdir, "semantic", query).decode()
    lines = data.splitlines()
    assert lines, "the mount's semantic search found nothing: its indexer made no chunks (see the mount log)"
    line = re.compile(r"^(\d\.\d{3}) (\S+):(\d+)-(\d+)  (.+)$")
    parsed = [line.match(ln) for ln in lines]
    assert all(parsed), lines
    assert parsed[0].group(2) == "notes/stars.md"
    assert parsed[0].group(5).startswith("A telescope on a dark night")
    assert 1 <= int(parsed[0].group(3)) <= int(parsed[0].group(4)) <= 3
    assert "notes%2Fstars.md" in os.listdir(os.path.join(mdir, ".search", "semantic", q(query)))
    # scoped
    scoped = results(os.path.join(mdir, "other"), "semantic", query).decode().splitlines()
    assert scoped and all(ln.split(" ")[1].startswith("taxes.md:") for ln in scoped)


def test_git_does_not_see_search(mdir):
    needs.need_tool("git")
    env = dict(C_ENV, HOME=mdir, GIT_CONFIG_NOSYSTEM="1", GIT_AUTHOR_NAME="T", GIT_AUTHOR_EMAIL="t@e",
               GIT_COMMITTER_NAME="T", GIT_COMMITTER_EMAIL="t@e")
    repo = os.path.join(mdir, "repo")
    write(os.path.join(repo, "a.py"), b"print('hello')\n")
    write(os.path.join(repo, "pkg", "b.py"), b"import os\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=True).stdout

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    for d in (repo, os.path.join(repo, "pkg")):
        results(d, "grep", "import|print")
        results(d, "glob", "**")
    assert git("status", "--porcelain", "--ignored") == ""
    assert git("ls-files") == "a.py\npkg/b.py\n"
    git("add", "-A")
    assert git("status", "--porcelain") == ""
    assert "import os" in git("grep", "-n", "import")
