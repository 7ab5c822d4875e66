"""The virtual inodes behind ``.search/`` (no mount needed): what the kernel may forget,
and when a query's results are freed."""

from __future__ import annotations

import errno

import pytest

from mount.search_tree import ERROR, RESULTS, ResultsFile, SearchTree, decode_query
from nexusfs.errors import FsError


def results_of(text: bytes, limit: int = 1 << 20, memory_max: int = 1 << 20, spill_dir=None) -> ResultsFile:
    r = ResultsFile(spill_dir, limit, memory_max)
    r.write(text)
    return r


def make_query(tree: SearchTree, rels: list[str], text: bytes, generation: tuple = (1,)):
    root = tree.root(5, "/d")
    kind = tree.child(root, b"grep")
    qdir = tree.query_node(kind, b"needle", (0,))  # one reference, as the kernel's lookup takes
    return kind, tree.fill(qdir, rels, results_of(text), generation)


def read_all(node) -> bytes:
    return node.results.read(0, node.results.size)


def test_a_forgotten_result_can_be_looked_up_again():
    """The kernel forgets inodes whenever it likes and then looks the name up again: a
    .results file or a link the query directory still lists must still be there."""
    tree = SearchTree(lambda scope: (0, 0))
    _kind, qdir = make_query(tree, ["a.txt"], b"a.txt:1:needle\n")
    for name in (RESULTS, b"a.txt"):
        node = tree.child(qdir, name)
        assert node is not None
        tree.looked_up(node)
        tree.forget(node.ino, 1)
        again = tree.child(qdir, name)
        assert again is not None and again.ino == node.ino
    assert read_all(tree.child(qdir, RESULTS)) == b"a.txt:1:needle\n"


def test_results_that_were_replaced_go_once_forgotten():
    tree = SearchTree(lambda scope: (0, 0))
    _kind, qdir = make_query(tree, ["a.txt"], b"a.txt:1:needle\n")
    old = tree.child(qdir, RESULTS)
    tree.looked_up(old)
    tree.fill(qdir, ["b.txt"], results_of(b"b.txt:2:needle\n"))
    new = tree.child(qdir, RESULTS)
    assert new.ino != old.ino and read_all(new) == b"b.txt:2:needle\n"
    assert tree.get(old.ino) is old  # the kernel still holds it (an open file may read it)
    tree.forget(old.ino, 1)
    assert tree.get(old.ino) is None
    assert tree.child(qdir, b"a.txt") is None


def test_a_forgotten_query_directory_takes_its_unused_entries():
    tree = SearchTree(lambda scope: (0, 0))
    _kind, qdir = make_query(tree, ["a.txt"], b"a.txt:1:needle\n")
    res = tree.child(qdir, RESULTS)
    tree.forget(qdir.ino, 1)
    assert tree.get(qdir.ino) is None
    assert tree.get(res.ino) is None
    assert res.results is None  # freed with it


def test_the_last_reader_frees_the_results_and_the_query_runs_again():
    tree = SearchTree(lambda scope: (0, 0))
    _kind, qdir = make_query(tree, ["a.txt"], b"a.txt:1:needle\n")
    gen = qdir.generation
    res = tree.child(qdir, RESULTS)
    assert tree.current(qdir, gen)  # recent, nothing changed: reused
    assert not tree.current(qdir, (2,))  # the store changed: run again
    first, second = tree.opened(res), tree.opened(res)
    assert first is second
    tree.closed(res)
    assert res.results is not None  # one reader left
    assert first.read(0, 100) == b"a.txt:1:needle\n"
    tree.closed(res)
    assert res.results is None
    assert not tree.current(qdir, gen)  # freed: run it again
    with pytest.raises(FsError) as exc:
        tree.opened(res)
    assert exc.value.errno == errno.ESTALE


def test_looking_up_a_query_takes_the_kernels_reference_at_once():
    """A FORGET of an earlier lookup, processed while a worker thread runs the query,
    must not drop the directory the new lookup returns (its next lookup inside would
    fail with ENOENT)."""
    tree = SearchTree(lambda scope: (0, 0))
    kind, qdir = make_query(tree, ["a.txt"], b"a.txt:1:needle\n")
    tree.looked_up(qdir)  # an earlier lookup
    again = tree.query_node(kind, b"needle", (0,))  # a new one
    tree.forget(qdir.ino, 1)  # the kernel forgets the earlier one
    assert again is qdir and tree.get(qdir.ino) is qdir
    assert tree.child(qdir, RESULTS) is not None
    assert tree.query_node(kind, b"needle", (1,)) is not qdir  # another caller's own


def test_a_failed_query_has_only_its_reason():
    tree = SearchTree(lambda scope: (0, 0))
    kind = tree.child(tree.root(5, "/d"), b"grep")
    qdir = tree.fail(tree.query_node(kind, b"a(", (0,)), errno.EINVAL, "invalid regular expression 'a('")
    err = tree.child(qdir, ERROR)
    assert err.message == b"invalid regular expression 'a('\n"
    assert tree.attr(err).size == len(err.message)
    with pytest.raises(FsError) as exc:
        tree.child(qdir, RESULTS)
    assert exc.value.errno == errno.EINVAL


def test_results_spill_to_an_unnamed_file_and_stop_at_their_limit(tmp_path):
    r = ResultsFile(str(tmp_path), limit=300, memory_max=100)
    for i in range(5):
        r.write(b"%02d:" % i + b"x" * 47 + b"\n")
    assert r.size == 255
    assert list(tmp_path.iterdir()) == []  # the temporary file has no name
    assert r.read(0, 4) == b"00:x" and r.read(204, 4) == b"04:x"
    with pytest.raises(FsError) as exc:
        r.write(b"y" * 50)
    assert exc.value.errno == errno.EFBIG
    r.close()
    with pytest.raises(FsError) as exc:
        r.read(0, 1)
    assert exc.value.errno == errno.ESTALE


def test_a_query_cannot_hold_a_nul():
    with pytest.raises(FsError) as exc:
        decode_query(b"a%00b")
    assert exc.value.errno == errno.EINVAL
    assert decode_query(b"a%2Fb%25") == "a/b%"
