"""The virtual inodes behind ``.search/`` (no mount needed): what the kernel may forget."""

from __future__ import annotations

from mount.search_tree import RESULTS, Match, SearchTree


def make_query(tree: SearchTree, matches: list[Match]):
    root = tree.root(5, "/d")
    kind = tree.child(root, b"grep")
    return kind, tree.query_dir(kind, b"needle", matches, who=(0,))


def test_a_forgotten_result_can_be_looked_up_again():
    """The kernel forgets inodes whenever it likes and then looks the name up again: a
    .results file or a link the query directory still lists must still be there."""
    tree = SearchTree(lambda scope: (0, 0))
    _kind, qdir = make_query(tree, [Match("a.txt", "a.txt:1:needle")])
    for name in (RESULTS, b"a.txt"):
        node = tree.child(qdir, name)
        assert node is not None
        tree.looked_up(node)
        tree.forget(node.ino, 1)
        again = tree.child(qdir, name)
        assert again is not None and again.ino == node.ino
    assert tree.child(qdir, RESULTS).data == b"a.txt:1:needle\n"


def test_results_that_were_replaced_go_once_forgotten():
    tree = SearchTree(lambda scope: (0, 0))
    kind, qdir = make_query(tree, [Match("a.txt", "a.txt:1:needle")])
    old = tree.child(qdir, RESULTS)
    tree.looked_up(old)
    tree.query_dir(kind, b"needle", [Match("b.txt", "b.txt:2:needle")], who=(0,))
    new = tree.child(qdir, RESULTS)
    assert new.ino != old.ino and new.data == b"b.txt:2:needle\n"
    assert tree.get(old.ino) is old  # the kernel still holds it (an open file may read it)
    tree.forget(old.ino, 1)
    assert tree.get(old.ino) is None
    assert tree.child(qdir, b"a.txt") is None


def test_a_forgotten_query_directory_takes_its_unused_entries():
    tree = SearchTree(lambda scope: (0, 0))
    _kind, qdir = make_query(tree, [Match("a.txt", "a.txt:1:needle")])
    tree.looked_up(qdir)
    res = tree.child(qdir, RESULTS)
    tree.forget(qdir.ino, 1)
    assert tree.get(qdir.ino) is None
    assert tree.get(res.ino) is None
