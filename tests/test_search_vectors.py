"""The query-side machinery of semantic search: the in-memory vector copy, BM25 query words,
and the WordLlama pooling.

The in-memory copy (``VectorMatrix``) must rank exactly as sqlite-vec does over the same
vectors, follow additions and removals made by an indexer on another connection, and step
aside (sqlite-vec answers) when it would not fit its memory limit.
"""

from __future__ import annotations

import numpy as np
import pytest

import nexusfs
from nexusfs.search.service import STOPWORDS, bm25_words
from nexusfs.search.vectors import VectorMatrix
from tests.search_helpers import STORE_SETTINGS, indexed_semantic_store, semantic_stack  # noqa: F401  (autouse: every test here needs the semantic stack)

SETTINGS = {**STORE_SETTINGS, "semantic": True, "background_indexing": False}

TOPICS = [
    "Bees build hexagonal wax comb and store honey for the winter.",
    "A mortgage with a fixed rate keeps the monthly repayment the same.",
    "Tune the guitar strings to E A D G B E with an electronic tuner.",
    "Glaciers retreat as the climate warms and meltwater swells rivers.",
    "Sourdough needs a lively starter, a long rise and a very hot oven.",
    "Replace a flat tyre: loosen the nuts, jack up the car, fit the spare.",
    "Compile the C program with make and link it against the math library.",
    "The kitten learns to use the litter tray within a few days.",
]


def doc(i: int) -> bytes:
    topic = TOPICS[i % len(TOPICS)]
    return "\n".join(f"{topic} (note {i}, paragraph {p})" for p in range(12)).encode()


@pytest.fixture
def store(store_dir):
    with indexed_semantic_store(store_dir, {f"/v/doc{i:02d}.txt": doc(i) for i in range(16)}) as nx:
        yield nx


def searcher(nx: nexusfs.Nexus):
    s = nx.store.searcher
    s.prepare()
    return s


def query_vector(nx: nexusfs.Nexus, text: str) -> np.ndarray:
    return searcher(nx)._embedder().embed([text])[0]


def sqlite_vec_ids(nx: nexusfs.Nexus, qv: np.ndarray, k: int) -> list[int]:
    return [cid for cid, _d in searcher(nx).index.nearest_chunks(qv.tobytes(), k)]


def test_matrix_ranks_like_sqlite_vec(store):
    s = searcher(store)
    total = store.index_status().chunks
    for text in ("honey and wax", "car wheel puncture", "building software", "cat toilet training"):
        qv = query_vector(store, text)
        ours = s.vectors.nearest(qv, 10)
        assert ours is not None and s.vectors.rows == total
        assert [c for c, _s in ours] == sqlite_vec_ids(store, qv, 10)
        sims = [sim for _c, sim in ours]
        assert sims == sorted(sims, reverse=True) and 0.0 < sims[0] <= 1.0 + 1e-6
    # k above the number of rows: every row, best first
    assert len(s.vectors.nearest(query_vector(store, "bees"), total + 50)) == total


def test_matrix_follows_additions_and_removals(store):
    s = searcher(store)
    qv = query_vector(store, "volcano erupting lava")
    before = s.vectors.nearest(qv, 5)
    rows = s.vectors.rows
    store.write_bytes("/v/volcano.txt", b"The volcano erupted; lava and ash poured down the mountain.\n" * 3)
    store.reindex()
    after = s.vectors.nearest(qv, 5)
    assert s.vectors.rows > rows
    assert after[0][0] not in {c for c, _s in before}
    assert store.search("volcano erupting lava", "/v", k=1)[0].path == "/v/volcano.txt"
    # removal: the vectors of content no file has any more leave the copy
    store.delete("/v/volcano.txt")
    for i in range(4):
        store.delete(f"/v/doc{i:02d}.txt")
    store.reindex()
    live = set(searcher(store).index.chunk_ids())
    got = s.vectors.nearest(qv, 1000)
    assert {c for c, _s in got} == live
    assert s.vectors.rows == len(live) == store.index_status().chunks
    assert [c for c, _s in got[:10]] == sqlite_vec_ids(store, qv, 10)
    assert all(h.path != "/v/volcano.txt" for h in store.search("volcano erupting lava", "/v", k=20))


def test_changes_by_another_connection_are_seen(store, store_dir):
    s = searcher(store)
    qv = query_vector(store, "quantum entanglement of photons")
    s.vectors.nearest(qv, 3)
    other = nexusfs.connect(store_dir, **SETTINGS)
    try:
        other.write_bytes("/v/physics.txt", b"Entangled photons share one quantum state across distance.\n" * 3)
        other.reindex()
    finally:
        other.close()
    hits = store.search("quantum entanglement of photons", "/v", k=3)
    assert hits[0].path == "/v/physics.txt"


def test_over_the_memory_limit_sqlite_vec_answers(store):
    s = searcher(store)
    dim = s.index.vector_dim
    small = VectorMatrix(s.index, memory_limit=dim * 4 * 3)  # room for three vectors
    qv = query_vector(store, "honey bees")
    assert small.nearest(qv, 5) is None
    assert small.rows == 0
    # the searcher falls back the same way and still finds the file
    s.vectors = small
    assert "honey" in store.search("honey bees", "/v", k=1)[0].snippet.lower()
    # once the store fits, the copy is used again
    roomy = VectorMatrix(s.index, memory_limit=1 << 30)
    assert roomy.nearest(qv, 5) is not None


def test_bm25_words():
    assert bm25_words("How do I read rows from a CSV file?") == ["read", "rows", "csv", "file"]
    # repeated words once, case folded
    assert bm25_words("Parse parse PARSE options") == ["parse", "options"]
    # a query of stopwords only keeps them: better than searching for nothing
    assert bm25_words("to be or not to be") == ["to", "be", "or", "not"]
    assert bm25_words("") == []
    assert {"the", "and", "of", "with"} <= STOPWORDS


def test_common_words_of_the_corpus_leave_the_bm25_query(store):
    s = searcher(store)
    # "note" and "paragraph" are in every chunk of this corpus; "honey" in a few
    expr = s._bm25_expression("honey note paragraph")
    assert expr == '"honey"'
    # only common words: the rarest one stays
    assert s._bm25_expression("note paragraph") in ('"note"', '"paragraph"')


def test_wordllama_pooling_equals_the_reference():
    """Our pooling (each text's own tokens summed, then normalised) gives the vectors of
    wordllama's own padded, masked average."""
    from pathlib import Path

    import wordllama
    from wordllama import WordLlama

    from nexusfs.search.embed import WordLlamaEmbedder, _normalise

    texts = [TOPICS[0], "x", "", "def f(x):\n    return x * 2\n" * 40, "ünïcödé text — with dashes", TOPICS[3]]
    ours = WordLlamaEmbedder().embed(texts)
    ref_model = WordLlama.load(config="l2_supercat", dim=256, cache_dir=Path(wordllama.__file__).parent,
                               disable_download=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ref = _normalise(np.asarray(ref_model.embed(texts, norm=False, batch_size=64)))
    assert ours.shape == (len(texts), 256) and ours.dtype == np.float32
    assert np.allclose(ours, ref, atol=1e-5)
    assert not ours[2].any()  # no tokens: a zero row
    assert np.allclose(np.linalg.norm(ours[[0, 1, 3, 4, 5]], axis=1), 1.0, atol=1e-5)


def test_bm25_words_are_kept_rarest_first_within_the_postings_budget(store, monkeypatch):
    import nexusfs.search.service as service

    s = searcher(store)
    counts = s.index.term_doc_counts(["honey", "guitar", "note"])
    assert 0 < counts["honey"] < counts["note"] and 0 < counts["guitar"] < counts["note"]
    # a budget that holds the two rare words but not the common one
    monkeypatch.setattr(service, "BM25_MAX_DOC_SHARE", 1.0)
    monkeypatch.setattr(service, "BM25_POSTINGS", counts["honey"] + counts["guitar"])
    assert s._bm25_expression("note guitar honey") == '"guitar" OR "honey"'
    # a budget below the rarest word's own count: the rarest word alone
    monkeypatch.setattr(service, "BM25_POSTINGS", 1)
    # (on equal counts the word that comes first in the query)
    rarest = "guitar" if counts["guitar"] <= counts["honey"] else "honey"
    assert s._bm25_expression("note guitar honey") == f'"{rarest}"'
    # the search still answers
    assert store.search("honey bees comb", "/v", k=1)[0].path.startswith("/v/doc")
