"""grep gives exactly what ``LC_ALL=C grep -rnEI`` gives, whatever state the index is in.

The corpus is this machine's CPython ``Lib/`` (≈1,700 .py/.txt/.rst files), copied to
local disk and written into a store; every pattern is run through ``nx.grep`` (and
some through ``nexus grep -n``) and through GNU grep on the local copy, and the
sorted (path, line number, line) rows must be identical.

Patterns are written in the common subset of GNU ERE and Python ``re`` (the engine's
syntax is Python's: ``\\d`` and backslashes inside brackets mean different things
in the two, so they are left out).
"""

from __future__ import annotations

import os
import shutil

import pytest

from nexusfs.search.grep import GrepOptions, translate_gnu
from nexusfs.search.literals import fts5_expression, required_query
from tests.oracles import assert_fsck_clean
from tests.search_helpers import (
    Mirror,
    NexusCli,
    api_grep,
    describe_diff,
    gnu_grep,
    load_tree,
    local_files,
    materialise,
    open_store,
    parse_grep_lines,
    stdlib_files,
)

ROOT = "/lib"

#: files added to the corpus besides Lib/: each covers a case grep must treat like GNU grep
EXTRA = {
    # a NUL byte near the start: binary, skipped (as with grep -I), though it has matching text
    "zz_extra/binary.dat": b"def binary_function():\n\0\x01\x02 import os\nTODO: never shown\n" * 3,
    # not UTF-8: still text for grep (the 'nonutf8' kind: its UTF-8 parts are in the trigram index)
    "zz_extra/latin1.txt": "Caf\xe9 cr\xe8me br\xfbl\xe9e\nimport os  # d\xe9j\xe0 vu\nna\xefve TODO\n".encode("latin-1"),
    # no newline at the end
    "zz_extra/noeol.txt": b"first line\nimport os as system_module\nlast line without newline: TODO",
    "zz_extra/empty.txt": b"",
    # CRLF line ends: '\r' is an ordinary character before the newline
    "zz_extra/crlf.txt": b"def windows():\r\n    return 'crlf'\r\n\r\nTODO: crlf:\r\n",
    # identical contents (one doc in the index): both paths are reported
    "zz_extra/dup_a.py": b"# duplicated content\nUNIQUE_DUPLICATE_MARKER = 1\ndef dup(): pass\n",
    "zz_extra/dup_b.py": b"# duplicated content\nUNIQUE_DUPLICATE_MARKER = 1\ndef dup(): pass\n",
    # long lines and unusual bytes
    "zz_extra/long.txt": (b"x" * 6000 + b" needle_in_long_line " + b"y" * 6000 + b"\n") * 2,
    "zz_extra/tabs.txt": b"\tindented\twith tabs\n  \t  \nend\t\n\x7f\x1b[0m control\n",
}

#: (pattern, flags, subdirectory) — at least 25, each valid in GNU ERE and Python re
PATTERNS = [
    # literals: selective (one file or a few) and common
    ("_siftdown_max", (), "."),
    ("UNIQUE_DUPLICATE_MARKER", (), "."),
    ("needle_in_long_line", (), "."),
    ("import os", (), "."),
    ("def ", (), "email"),
    ("self", (), "json"),
    # character classes, intervals
    ("[A-Z]{3,}", (), "."),
    ("[0-9]{4}-[0-9]{2}-[0-9]{2}", (), "."),
    ("0x[0-9a-fA-F]{8}", (), "."),
    ("[[:upper:]]{2}[[:digit:]]", (), "."),
    ("[^ -~]", (), "encodings"),
    # anchors
    ("^def ", (), "."),
    (":$", (), "email"),
    ("^(class|def) [A-Z]", (), "."),
    ("^$", (), "json"),
    ("^[[:space:]]*#[[:space:]]*$", (), "."),
    ("\\s+$", (), "."),
    # alternation
    ("(import|from) os", (), "."),
    ("Guido|Tim Peters", (), "."),
    ("(raise|except) (ValueError|TypeError)", (), "."),
    # case-insensitive, whole words
    ("todo", ("-i",), "."),
    ("utf-?8", ("-i",), "."),
    ("os", ("-w",), "."),
    ("none", ("-i", "-w"), "."),
    ("\\<yield\\>", (), "."),
    ("\\bTODO\\b", (), "."),
    # fixed strings with regex metacharacters
    ("os.path.join(", ("-F",), "."),
    ("[0-9]+", ("-F",), "."),
    ("$(", ("-F",), "."),
    ("http://", ("-F", "-i"), "."),
    # -i of plain text is matched by lowering both sides: the same lines as the regex engine
    ("MockResource", ("-i",), "."),
    ("Copyright", ("-i", "-w"), "."),
    ("def __init__(self", ("-F", "-i"), "."),
    ("caf\xe9", ("-i",), "."),
    ("*args", ("-F", "-w"), "."),
    # dots and quantifiers
    ("lambda .*: None", (), "."),
    ("https?://[a-z.]+/", (), "."),
    ("e.e.e.e", (), "."),
    ("\\.\\.\\.+", (), "asyncio"),
    ("(ab)+c", (), "."),
    # nothing to narrow by in the trigram index: every file is scanned
    ("\\w+\\(\\)", (), "."),
    ("[[:alpha:]]{30,}", (), "."),
    ("..(.)\\)$", (), "concurrent"),
    # no match at all
    ("zzqx_no_such_identifier_anywhere", (), "."),
    ("^ZZZ$", (), "."),
    ("no such \\{ thing", ("-F",), "."),
    # inverted
    ("[[:alnum:]]", ("-v",), "json"),
    ("e", ("-v", "-i"), "email/mime"),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(store, local copy): Lib/ plus EXTRA, written into the store under ROOT and indexed."""
    base = tmp_path_factory.mktemp("grep-corpus")
    local = str(base / "lib")
    materialise(local, stdlib_files())
    for rel, data in EXTRA.items():
        os.makedirs(os.path.dirname(os.path.join(local, rel)), exist_ok=True)
        with open(os.path.join(local, rel), "wb") as f:
            f.write(data)
    nx = open_store(str(base / "store"))
    try:
        load_tree(nx, local, ROOT)
        assert nx.wait_for_index(300)
        yield nx, local, str(base / "store")
    finally:
        nx.close()
        shutil.rmtree(str(base), ignore_errors=True)


def _ids(p):
    pattern, flags, sub = p
    return f"{' '.join(flags)} {pattern!r} in {sub}".strip()


def test_corpus_is_large_and_indexed(corpus):
    nx, local, _home = corpus
    st = nx.index_status()
    assert st.pending == 0 and st.failing == 0
    assert st.files == len(local_files(local)) > 1000  # every file of the corpus, as copied here
    assert st.by_kind.get("text", 0) > 1000
    assert st.by_kind.get("binary") == 1
    assert st.by_kind.get("nonutf8", 0) >= 1  # latin1.txt, plus the stdlib's own test data
    # dup_a and dup_b share one doc
    assert st.docs < st.files


@pytest.mark.parametrize("case", PATTERNS, ids=[_ids(p) for p in PATTERNS])
def test_grep_equals_gnu_grep(corpus, case):
    nx, local, _home = corpus
    pattern, flags, sub = case
    theirs = gnu_grep(local, pattern, flags, sub)
    root = ROOT if sub == "." else f"{ROOT}/{sub}"
    ours = api_grep(nx, pattern, flags, root)
    assert ours == theirs, describe_diff(ours, theirs)


def test_pattern_set_is_varied(corpus):
    """The table really exercises what it claims: both selective and scanning patterns,
    matches and non-matches, and results from the special files."""
    nx, local, _home = corpus
    assert len(PATTERNS) >= 25
    scanning = [p for p, f, _s in PATTERNS
                if fts5_expression(required_query(p if "-F" in f else translate_gnu(p), fixed="-F" in f)) is None]
    assert len(scanning) >= 3
    counts = {}
    for pattern, flags, sub in PATTERNS:
        counts[(pattern, flags)] = len(gnu_grep(local, pattern, flags, sub))
    assert counts[("zzqx_no_such_identifier_anywhere", ())] == 0
    assert counts[("import os", ())] > 100
    assert sum(1 for n in counts.values() if n == 0) >= 3
    files = {r[0] for r in gnu_grep(local, "_siftdown_max")}
    assert len(files) <= 3, files


def test_selective_literal_reads_few_files(corpus):
    """A selective literal is answered from the trigram index: few candidates are read."""
    nx, local, _home = corpus
    searcher = nx.store.searcher
    attr = nx.stat(ROOT)
    cands = searcher._grep_candidates("UNIQUE_DUPLICATE_MARKER", attr.ino, ROOT, GrepOptions())
    # (the trigram index may over-select a little: every candidate is verified)
    assert {f"{ROOT}/zz_extra/dup_a.py", f"{ROOT}/zz_extra/dup_b.py"} <= {p for _i, p, _d in cands}
    assert len(cands) < 40
    # both paths of the shared content are reported
    rows = api_grep(nx, "UNIQUE_DUPLICATE_MARKER", (), ROOT)
    assert [r[0] for r in rows] == ["zz_extra/dup_a.py", "zz_extra/dup_b.py"]


def test_special_files(corpus):
    nx, local, _home = corpus
    # the binary file has 'import os' and 'TODO' but is never reported
    assert not [r for r in api_grep(nx, "import os", (), ROOT) if r[0] == "zz_extra/binary.dat"]
    assert not [r for r in api_grep(nx, "TODO", (), ROOT) if r[0] == "zz_extra/binary.dat"]
    # the latin-1 file is searched, its lines come back as their original bytes
    rows = [r for r in api_grep(nx, "cr.me|d.j.", (), f"{ROOT}/zz_extra")]
    assert rows == [("latin1.txt", 1, "Caf\xe9 cr\xe8me br\xfbl\xe9e".encode("latin-1")),
                    ("latin1.txt", 2, "import os  # d\xe9j\xe0 vu".encode("latin-1"))]
    assert rows == gnu_grep(local, "cr.me|d.j.", (), "zz_extra")
    # the last line without a newline is still a line
    assert api_grep(nx, "without newline", (), f"{ROOT}/zz_extra") == [
        ("noeol.txt", 3, b"last line without newline: TODO")]


def test_grep_on_a_single_file(corpus):
    nx, local, _home = corpus
    ms = nx.grep("^import ", f"{ROOT}/heapq.py")
    theirs = gnu_grep(local, "^import ", (), ".")
    assert [(m.line_no, m.line.encode()) for m in ms] == [(n, t) for p, n, t in theirs if p == "heapq.py"]
    assert all(m.path == f"{ROOT}/heapq.py" for m in ms)


CLI_PATTERNS = [
    ("import os", ()),
    ("^(class|def) [A-Z]", ()),
    ("\\w+\\(\\)", ()),
    ("TODO", ("-i", "-w")),
    ("os.path.join(", ("-F",)),
    ("zzqx_no_such_identifier_anywhere", ()),
    ("cr.me", ()),
]


@pytest.mark.parametrize("pattern,flags", CLI_PATTERNS, ids=[f"{' '.join(f)} {p!r}".strip() for p, f in CLI_PATTERNS])
def test_cli_grep_equals_gnu_grep(corpus, pattern, flags):
    nx, local, home = corpus
    theirs = gnu_grep(local, pattern, flags)
    result = NexusCli(home)("grep", "-n", *flags, "--", pattern, ROOT, code=0 if theirs else 1)
    ours = parse_grep_lines(result.stdout_bytes, ROOT)
    assert ours == theirs, describe_diff(ours, theirs)


# ------------------------------------------------------------ a changing tree
SMALL = 60


@pytest.fixture
def mirror(nx, tmp_path):
    """A small tree of stdlib files, on disk and in the store, fully indexed."""
    m = Mirror(nx, str(tmp_path / "local"), "/t")
    src = str(tmp_path / "src")
    rels = materialise(src, [r for r in stdlib_files() if r.startswith(("json/", "email/", "http/"))][:SMALL])
    m.write({r: open(os.path.join(src, r), "rb").read() for r in rels})
    assert nx.wait_for_index(60)
    return m


@pytest.fixture
def unindexed(store_dir, tmp_path):
    """A store without a background indexer: whatever is written stays queued."""
    nx = open_store(store_dir, background_indexing=False)
    try:
        yield Mirror(nx, str(tmp_path / "local"), "/t")
    finally:
        nx.close()


def test_query_right_after_writes_is_exact(unindexed):
    m = unindexed
    m.write({"a.py": b"import os\nprint('fresh text')\n", "sub/b.txt": b"fresh and new\n"})
    assert m.nx.index_status().pending == 2
    assert m.check("fresh") == [("a.py", 2, b"print('fresh text')"), ("sub/b.txt", 1, b"fresh and new")]
    m.check("^import")
    m.nx.reindex()
    assert m.nx.index_status().pending == 0
    # an overwrite that is not indexed yet: the new content is what counts
    m.write({"a.py": b"nothing of the sort\n"})
    assert m.nx.index_status().pending == 1
    assert m.check("fresh") == [("sub/b.txt", 1, b"fresh and new")]
    assert m.check("sort") == [("a.py", 1, b"nothing of the sort")]
    # written through a file object and not yet indexed
    m.write_one("c.md", b"a freshly streamed file\n")
    assert [r[0] for r in m.check("fresh")] == ["c.md", "sub/b.txt"]
    m.check("[a-z]+ly")
    assert_fsck_clean(m.nx)


def test_overwrite_delete_rename(mirror):
    m = mirror
    before = m.check("^import ")
    assert before
    victim = before[0][0]
    # overwrite an indexed file: its old lines vanish at once, the new ones appear
    m.write({victim: b"replaced text only\n"})
    after = m.check("^import ")
    assert victim not in {r[0] for r in after}
    assert m.check("replaced text") == [(victim, 1, b"replaced text only")]
    m.nx.wait_for_index(30)
    assert m.check("replaced text") == [(victim, 1, b"replaced text only")]
    # delete: gone immediately (no indexing in between)
    gone = after[0][0]
    m.delete(gone)
    assert gone not in {r[0] for r in m.check("^import ")}
    # rename: the new path, the same lines
    moved = m.check("^import ")[0][0]
    m.rename(moved, "moved/elsewhere.py")
    rows = m.check("^import ")
    assert moved not in {r[0] for r in rows} and "moved/elsewhere.py" in {r[0] for r in rows}
    # truncate and append
    m.truncate("moved/elsewhere.py", 10)
    m.check("^import ")
    m.append("moved/elsewhere.py", b"\nimport appended\n")
    m.check("^import ")
    m.check("appended")
    m.nx.wait_for_index(30)
    m.check("^import ")
    m.check("appended")
    assert_fsck_clean(m.nx)


def test_dedup_and_hard_links(mirror):
    m = mirror
    m.write({"x/one.txt": b"shared content marker\n", "y/two.txt": b"shared content marker\n"})
    m.link("x/one.txt", "z/hard.txt")
    # before indexing
    assert [r[0] for r in m.check("shared content")] == ["x/one.txt", "y/two.txt", "z/hard.txt"]
    m.nx.wait_for_index(30)
    assert [r[0] for r in m.check("shared content")] == ["x/one.txt", "y/two.txt", "z/hard.txt"]
    # nx.copy shares blocks (and the doc) with its source
    m.nx.copy("/t/y/two.txt", "/t/y/three.txt")
    shutil.copyfile(m.lp("y/two.txt"), m.lp("y/three.txt"))
    m.nx.wait_for_index(30)
    assert [r[0] for r in m.check("shared content")] == ["x/one.txt", "y/three.txt", "y/two.txt", "z/hard.txt"]
    # changing one name of the hard link changes both; the copy keeps its own content
    m.write({"z/hard.txt": b"different now\n"})
    assert [r[0] for r in m.check("shared content")] == ["y/three.txt", "y/two.txt"]
    assert [r[0] for r in m.check("different now")] == ["x/one.txt", "z/hard.txt"]
    m.delete("x/one.txt")
    assert [r[0] for r in m.check("different now")] == ["z/hard.txt"]
    assert_fsck_clean(m.nx)


def test_binary_and_latin1_files(unindexed):
    m = unindexed
    m.write({
        "bin/blob.dat": b"\x89PNG\r\n\x1a\n\0\0\0 matching text\n",
        "bin/late.dat": b"matching text\n" * 10 + b"\0",
        "txt/latin.txt": "matching text \xe9t\xe9\n\xff\xfe bytes\n".encode("latin-1"),
        "txt/plain.txt": b"matching text\n",
    })
    for phase in ("queued", "indexed"):
        rows = m.check("matching")
        assert {r[0] for r in rows} == {"txt/latin.txt", "txt/plain.txt"}, phase
        m.check("\xe9t\xe9".encode("latin-1").decode("utf-8", "surrogateescape"))
        m.check("MATCHING TEXT \xe9".encode("latin-1").decode("utf-8", "surrogateescape"), ("-i",))
        m.check("t.t.$")
        m.check("^..? bytes", ("-i",))
        m.nx.reindex()
    st = m.nx.index_status()
    assert st.by_kind == {"binary": 2, "nonutf8": 1, "text": 1}


def test_errors(nx):
    nx.write_bytes("/a.txt", b"x\n")
    with pytest.raises(OSError) as exc:
        nx.grep("(unclosed", "/")
    assert exc.value.errno == 22
    with pytest.raises(OSError) as exc:
        nx.grep("x", "/missing")
    assert exc.value.errno == 2
    # an invalid regex is fine as a fixed string
    assert [m.line for m in nx.grep("(unclosed", "/", fixed=True)] == []


def test_non_ascii_patterns(unindexed):
    """Patterns with characters whose lower case is longer ('İ') or that fold in the
    index but not in grep's C locale: the index must never rule out a matching file."""
    m = unindexed
    m.write({
        "tr.txt": "İstanbul şehri\nISTANBUL\n".encode(),
        "el.txt": "ΣΊΣΥΦΟΣ ΟΔΟΣ σοφός\n".encode(),
        "de.txt": "STRASSE ẞ groß\n".encode(),
        "lig.txt": "ﬁnancial ﬀ Kelvin 5 K\n".encode(),
    })
    cases = ["İstanbul", "İst", "ΣΥΦΟΣ", "ΟΔΟΣ", "σοφός", "ẞ gr", "groß", "ﬁnan", "5 K$", "Ἀθῆναι"]
    for phase in ("queued", "indexed"):
        assert (m.nx.index_status().pending == 0) == (phase == "indexed")
        for pat in cases:
            for flags in ((), ("-i",), ("-F",)):
                m.check(pat, flags)
        assert m.check("İstanbul") == [("tr.txt", 1, "İstanbul şehri".encode())]
        m.nx.reindex()
