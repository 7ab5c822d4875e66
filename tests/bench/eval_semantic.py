#!/usr/bin/env python3
"""Measure the semantic-search building blocks on a small hand-written corpus.

For each embedder (``nexusfs.search.embed``) and each chunking setting, the documents in
``tests/bench/semantic_corpus/docs`` are extracted, chunked and embedded; every query in
``queries.jsonl`` is then ranked three ways:

* ``vector`` — cosine similarity of the query with every chunk;
* ``bm25`` — SQLite FTS5 ``bm25()`` (apsw, in memory, ``porter unicode61`` tokenizer, the
  query's words OR-ed together);
* ``hybrid`` — reciprocal rank fusion of the two chunk rankings, 1/(60 + rank) summed.

A file ranks where its best chunk ranks. Reported per ranking: recall@1 (an expected file comes
first), recall@5, MRR, and for the queries that name a line range, ``chunk@1``: the first
chunk is in the expected file and overlaps that range. Per embedder: model load time (a fresh
process: import + load), indexing speed (chunks/s over the corpus's chunks, repeated for at
least two seconds), median query latency (embedding one query and scoring all chunks).

Usage: python tests/bench/eval_semantic.py [--embedders wordllama,minilm] [--quick]
       [--out bench-results/semantic.md]
Prints markdown tables; ``--quick`` runs only the default chunking.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "semantic_corpus")
sys.path.insert(0, REPO)

from nexusfs.errors import ConfigError  # noqa: E402
from nexusfs.search import chunk as chunkmod  # noqa: E402
from nexusfs.search.chunk import Chunk, chunk_text  # noqa: E402
from nexusfs.search.embed import embedder_names, get_embedder  # noqa: E402
from nexusfs.search.extract import extract_text  # noqa: E402

RRF_K = 60

#: (label, max_chars, target_chars, overlap_lines, section breaks); None: one chunk per file
CHUNKINGS = [
    ("400/600", 600, 400, 0, True),
    ("600/1000", 1000, 600, 0, True),
    ("600/1000 no sections", 1000, 600, 0, False),
    ("600/1000 +2 lines", 1000, 600, 2, True),
    ("800/1500", 1500, 800, 0, True),
    ("800/1500 no sections", 1500, 800, 0, False),
    ("1200/2000", 2000, 1200, 0, True),
    ("whole file", None, None, 0, True),
]
DEFAULT_CHUNKING = f"{chunkmod.TARGET_CHARS}/{chunkmod.MAX_CHARS}" + (
    f" +{chunkmod.OVERLAP_LINES} lines" if chunkmod.OVERLAP_LINES else ""
)


@dataclass
class Query:
    text: str
    files: list[str]
    lines: tuple[int, int] | None


def load_corpus() -> tuple[dict[str, str], list[Query]]:
    docs: dict[str, str] = {}
    root = os.path.join(CORPUS, "docs")
    for dirpath, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                got = extract_text(f.read(), name)
            if got is not None:
                docs[os.path.relpath(path, root)] = got.text
    queries = []
    with open(os.path.join(CORPUS, "queries.jsonl"), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                lines = tuple(d["lines"]) if d.get("lines") else None
                queries.append(Query(d["query"], d["files"], lines))
    return docs, queries


def make_chunks(
    docs: dict[str, str], max_chars, target_chars, overlap, sections=True
) -> list[tuple[str, Chunk]]:
    out = []
    for path, text in sorted(docs.items()):
        if max_chars is None:
            n = text.count("\n") + (0 if text.endswith("\n") else 1)
            out.append((path, Chunk(0, 1, n, text)))
        else:
            got = chunk_text(text, max_chars, target_chars, overlap, sections)
            out.extend((path, c) for c in got)
    return out


# ------------------------------------------------------------------ rankings


class BM25Index:
    """FTS5 over the chunks, in memory."""

    def __init__(self, chunks: list[tuple[str, Chunk]]) -> None:
        import apsw

        self.db = apsw.Connection(":memory:")
        self.db.execute("CREATE VIRTUAL TABLE c USING fts5(body, tokenize='porter unicode61')")
        with self.db:
            for i, (_, ch) in enumerate(chunks):
                self.db.execute("INSERT INTO c(rowid, body) VALUES (?, ?)", (i, ch.text))

    def rank(self, query: str, limit: int = 100) -> list[int]:
        words = re.findall(r"\w+", query.lower())
        if not words:
            return []
        match = " OR ".join(f'"{w}"' for w in words)
        rows = self.db.execute(
            "SELECT rowid FROM c WHERE c MATCH ? ORDER BY bm25(c) LIMIT ?", (match, limit)
        )
        return [r[0] for r in rows]


def rrf(*rankings: list[int], k: int = RRF_K) -> list[int]:
    score: dict[int, float] = {}
    for ranking in rankings:
        for r, i in enumerate(ranking, 1):
            score[i] = score.get(i, 0.0) + 1.0 / (k + r)
    return sorted(score, key=lambda i: -score[i])


@dataclass
class Metrics:
    r1: float
    r5: float
    mrr: float
    chunk1: float  # over the queries with a line range
    n: int


def evaluate(rankings: list[list[int]], queries: list[Query], chunks) -> Metrics:
    r1 = r5 = mrr = 0.0
    c1 = 0
    nlines = 0
    for ranking, q in zip(rankings, queries, strict=True):
        files: list[str] = []
        for i in ranking:
            p = chunks[i][0]
            if p not in files:
                files.append(p)
        rank = next((n for n, p in enumerate(files, 1) if p in q.files), None)
        if rank is not None:
            r1 += rank == 1
            r5 += rank <= 5
            mrr += 1.0 / rank
        if q.lines:
            nlines += 1
            if ranking:
                path, ch = chunks[ranking[0]]
                lo, hi = q.lines
                if path in q.files and ch.start_line <= hi and ch.end_line >= lo:
                    c1 += 1
    n = len(queries)
    return Metrics(r1 / n, r5 / n, mrr / n, c1 / nlines if nlines else float("nan"), n)


# ------------------------------------------------------------------ timing


def load_time(name: str) -> float:
    """Seconds to import and load the embedder in a fresh process (median of 3)."""
    code = (
        "import time; t = time.perf_counter(); "
        "from nexusfs.search.embed import get_embedder; "
        f"get_embedder({name!r}).embed(['warm up']); print(time.perf_counter() - t)"
    )
    times = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
        )
        times.append(float(out.stdout.strip().splitlines()[-1]))
    return statistics.median(times)


def index_speed(embedder, texts: list[str], min_seconds: float = 2.0) -> tuple[float, float]:
    """(chunks per wall-clock second, CPU milliseconds per chunk) embedding ``texts``."""
    done = 0
    t0 = time.perf_counter()
    c0 = time.process_time()
    while True:
        embedder.embed(texts)
        done += len(texts)
        elapsed = time.perf_counter() - t0
        if elapsed >= min_seconds:
            return done / elapsed, (time.process_time() - c0) * 1000 / done


def two_stage(cheap, strong, chunks, queries: list[Query], depths=(10, 20)) -> list[str]:
    texts = [c.text for _, c in chunks]
    vecs = cheap.embed(texts)
    bm25 = BM25Index(chunks)
    rows = []
    for depth in depths:
        rankings = []
        lat = []
        for q in queries:
            t0 = time.perf_counter()
            qv = cheap.embed([q.text])[0]
            hybrid = rrf(list(np.argsort(-(vecs @ qv))[:100]), bm25.rank(q.text))
            top = hybrid[:depth]
            sv = strong.embed([q.text] + [texts[i] for i in top])
            order = np.argsort(-(sv[1:] @ sv[0]), kind="stable")
            rankings.append([top[i] for i in order] + hybrid[depth:])
            lat.append((time.perf_counter() - t0) * 1000)
        m = evaluate(rankings, queries, chunks)
        rows.append(f"| {cheap.name} + bm25 | {depth} | {fmt(m)} | {statistics.median(lat):.0f} |")
    return rows


def pipeline(root: str, embedders: dict, max_bytes: int, sample: dict[str, int]) -> list[str]:
    """Extract + chunk real files under ``root``; project embedding time per GiB of text."""
    files = []
    for dirpath, dirnames, names in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "__pycache__"))
        for name in sorted(names):
            if name.endswith((".py", ".txt", ".rst", ".md")):
                files.append(os.path.join(dirpath, name))
    datas, total = [], 0
    for path in files:
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        datas.append((os.path.basename(path), data))
        total += len(data)
        if total >= max_bytes:
            break
    t0 = time.perf_counter()
    texts = [got.text for name, data in datas if (got := extract_text(data, name)) is not None]
    t_extract = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunks = [c.text for text in texts for c in chunk_text(text)]
    t_chunk = time.perf_counter() - t0
    mib = total / 2**20
    per_gib = len(chunks) / mib * 1024
    rows = [
        f"{len(datas)} files, {mib:.1f} MiB from `{root}`: extract_text {mib / t_extract:.0f} "
        f"MiB/s, chunk_text {mib / t_chunk:.1f} MiB/s, {len(chunks):,} chunks (mean "
        f"{statistics.mean(map(len, chunks)):.0f} chars), so ~{per_gib:,.0f} chunks per GiB of "
        "source.\n",
        "| embedder | sample chunks | chunks/s | CPU ms/chunk | projected CPU hours per GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    rng = np.random.default_rng(0)
    for name, emb in embedders.items():
        n = min(sample.get(name, 200), len(chunks))
        pick = [chunks[i] for i in rng.choice(len(chunks), n, replace=False)]
        cps, cpu_ms = index_speed(emb, pick, min_seconds=3.0)
        rows.append(
            f"| {name} | {n} | {cps:,.1f} | {cpu_ms:.2f} | {per_gib * cpu_ms / 1000 / 3600:,.2f} |"
        )
    return rows


# ------------------------------------------------------------------ main


def fmt(m: Metrics) -> str:
    return f"{m.r1:.2f} | {m.r5:.2f} | {m.mrr:.3f} | {m.chunk1:.2f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--embedders", default=",".join(embedder_names()))
    ap.add_argument("--quick", action="store_true", help="only the default chunking")
    ap.add_argument("--no-load-time", action="store_true")
    ap.add_argument("--out", help="also write the report to this markdown file")
    ap.add_argument(
        "--pipeline-dir",
        default=sysconfig.get_paths()["stdlib"],
        help="real files for the extract/chunk/embed cost projection "
        "(default: Python's standard library; '' to skip)",
    )
    ap.add_argument("--pipeline-mib", type=float, default=16)
    args = ap.parse_args(argv)

    docs, queries = load_corpus()
    chunkings = CHUNKINGS
    if args.quick:
        chunkings = [c for c in CHUNKINGS if c[0] == DEFAULT_CHUNKING] or CHUNKINGS[1:2]
    report: list[str] = []

    def out(line: str = "") -> None:
        print(line, flush=True)
        report.append(line)

    nlines = sum(1 for q in queries if q.lines)
    out(
        f"# Semantic search evaluation\n\n{len(docs)} documents, {len(queries)} queries "
        f"({nlines} with a line range); {os.cpu_count()} CPUs; default chunking "
        f"{DEFAULT_CHUNKING} (target/max chars).\n"
    )

    embedders = {}
    for name in args.embedders.split(","):
        try:
            embedders[name] = get_embedder(name)
        except ConfigError as exc:
            out(f"- skipped: {exc}")
    quality = [
        "| embedder | chunking (target/max) | chunks | ranking | R@1 | R@5 | MRR | chunk@1 |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    speed = [
        "| embedder | dims | load s (fresh process) | index chunks/s | CPU ms/chunk "
        "| query ms (median) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    bm25_done: set[str] = set()
    for label, mx, tg, ov, sections in chunkings:
        chunks = make_chunks(docs, mx, tg, ov, sections)
        texts = [c.text for _, c in chunks]
        bm25 = BM25Index(chunks)
        bm25_rank = [bm25.rank(q.text) for q in queries]
        if label not in bm25_done:
            bm25_done.add(label)
            quality.append(
                f"| (none) | {label} | {len(chunks)} | bm25 | "
                f"{fmt(evaluate(bm25_rank, queries, chunks))} |"
            )
        for name, emb in embedders.items():
            vecs = emb.embed(texts)
            vec_rank = []
            for q in queries:
                qv = emb.embed([q.text])[0]
                vec_rank.append(list(np.argsort(-(vecs @ qv), kind="stable")[:100]))
            hyb_rank = [rrf(v, b) for v, b in zip(vec_rank, bm25_rank, strict=True)]
            quality.append(
                f"| {name} | {label} | {len(chunks)} | vector | "
                f"{fmt(evaluate(vec_rank, queries, chunks))} |"
            )
            quality.append(
                f"| {name} | {label} | {len(chunks)} | hybrid | "
                f"{fmt(evaluate(hyb_rank, queries, chunks))} |"
            )
            print(f"  done {name} {label}", file=sys.stderr, flush=True)

    default_chunks = make_chunks(
        docs, chunkmod.MAX_CHARS, chunkmod.TARGET_CHARS, chunkmod.OVERLAP_LINES
    )
    texts = [c.text for _, c in default_chunks]
    mean_len = statistics.mean(len(t) for t in texts)
    for name, emb in embedders.items():
        speed_cps, cpu_ms = index_speed(emb, texts)
        lat = []
        vecs = emb.embed(texts)
        for q in queries:
            t0 = time.perf_counter()
            qv = emb.embed([q.text])[0]
            np.argsort(-(vecs @ qv))[:10]
            lat.append((time.perf_counter() - t0) * 1000)
        load = "-" if args.no_load_time else f"{load_time(name):.2f}"
        speed.append(
            f"| {name} ({emb.model_id}) | {emb.dim} | {load} | {speed_cps:,.1f} | "
            f"{cpu_ms:.2f} | {statistics.median(lat):.1f} |"
        )

    rerank = []
    first, second = "wordllama", "minilm"
    if first in embedders and second in embedders:
        rerank = two_stage(embedders[first], embedders[second], default_chunks, queries)

    out("## Quality\n")
    out(
        "R@1/R@5: an expected file is first / in the first five; MRR: mean of 1/rank of the "
        f"first expected file; chunk@1: of the {nlines} queries with a line range, the first "
        "chunk is in the right file and overlaps the range.\n"
    )
    for line in quality:
        out(line)
    out("\n## Speed\n")
    out(
        f"Indexing speed over the {len(texts)} chunks of the default chunking "
        f"(mean {mean_len:.0f} chars).\n"
    )
    for line in speed:
        out(line)
    if rerank:
        out("\n## Two stages: cheap index, MiniLM re-ranks the top chunks at query time\n")
        out(
            f"First stage: hybrid of {first} vectors and BM25 over the default chunking. "
            f"Second stage: {second} embeds the query and the first stage's top N chunks "
            "(no cache: the worst case) and orders them by cosine. Latency per query, "
            "median.\n"
        )
        out("| first stage | re-rank top N | R@1 | R@5 | MRR | chunk@1 | query ms |")
        out("|---|---:|---:|---:|---:|---:|---:|")
        for line in rerank:
            out(line)
    if args.pipeline_dir:
        out("\n## Cost on real files (extract, chunk, embed)\n")
        for line in pipeline(
            args.pipeline_dir,
            embedders,
            int(args.pipeline_mib * 2**20),
            {"wordllama": 2000, "minilm": 60},
        ):
            out(line)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
