"""Exact nearest-neighbour search over the chunk vectors, in memory, with numpy.

The vectors live in sqlite-vec's ``search_vectors`` table (the durable copy, and the
fallback). sqlite-vec's ``vec0`` answers a k-nearest query by scanning every vector
through SQLite's blob I/O: measured here, 23–34 ms for 45k vectors of 256 floats. One
matrix product over the same vectors in memory takes 2.5 ms, so a query process keeps a
copy, loaded on its first semantic query and brought up to date before each query:

* chunk ids only grow (``AUTOINCREMENT``), so rows with an id above the largest one held
  are the new ones: one indexed range query finds them (none, usually);
* removals bump the ``search_vector_epoch`` setting (see ``SearchIndex``); when it moved,
  the ids still present are read and the rows of removed chunks dropped.

Hits are always resolved through ``search_chunks`` afterwards, so even a row that is one
query out of date can never show content that is gone. Above ``memory_limit`` bytes the
copy is not kept and queries go to sqlite-vec.
"""

from __future__ import annotations

import threading

import numpy as np

from .index import SearchIndex

#: default bound of the in-memory copy (512 MiB: two million 256-float vectors)
DEFAULT_MEMORY_LIMIT = 512 << 20


class VectorMatrix:
    def __init__(self, index: SearchIndex, memory_limit: int = DEFAULT_MEMORY_LIMIT) -> None:
        self.index = index
        self.memory_limit = memory_limit
        self._lock = threading.Lock()
        self._model: str | None = None
        self._epoch: str | None = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._mat = np.zeros((0, 0), dtype=np.float32)
        self._n = 0
        self._max_id = 0
        self._too_big = False

    @property
    def rows(self) -> int:
        return self._n

    def nearest(self, vector: np.ndarray, k: int) -> list[tuple[int, float]] | None:
        """The ``k`` chunks most similar to ``vector`` (unit length) as (chunk id, cosine),
        best first; None when the copy would exceed the memory limit (ask sqlite-vec)."""
        if not self.sync():
            return None
        return self.rank(vector, k)

    def sync(self) -> bool:
        """Bring the copy up to date with the database; False if it is over the memory limit."""
        with self._lock:
            return self._refresh()

    def rank(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """``nearest`` over the copy as it is (no database access: safe beside other queries)."""
        with self._lock:
            n = self._n
            if n == 0 or k <= 0:
                return []
            sims = self._mat[:n] @ vector.astype(np.float32, copy=False)
            if k < n:
                top = np.argpartition(-sims, k)[:k]
                top = top[np.argsort(-sims[top], kind="stable")]
            else:
                top = np.argsort(-sims, kind="stable")
            ids = self._ids[top]
            return [(int(i), float(s)) for i, s in zip(ids, sims[top], strict=True)]

    # ---------------------------------------------------------------- sync
    def _refresh(self) -> bool:
        dim = self.index.vector_dim
        model = self.index.setting("search_embedder")
        if dim is None or model is None:
            self._reset(None, 0)
            return True
        if model != self._model or self._mat.shape[1] != dim:
            self._reset(model, dim)
        epoch = self.index.setting("search_vector_epoch") or "0"
        if epoch != self._epoch:
            self._drop_removed()
            self._epoch = epoch
        if self._too_big:
            return False
        rows = self.index.vectors_after(self._max_id)
        if rows and not self._append(rows, dim):
            self._reset(model, dim, too_big=True)
            self._epoch = epoch
            return False
        return True

    def _reset(self, model: str | None, dim: int, too_big: bool = False) -> None:
        self._model = model
        self._epoch = None
        self._ids = np.zeros(0, dtype=np.int64)
        self._mat = np.zeros((0, dim), dtype=np.float32)
        self._n = 0
        self._max_id = 0
        self._too_big = too_big

    def _append(self, rows: list[tuple[int, bytes]], dim: int) -> bool:
        """Add (chunk id, vector) rows; False if they do not fit in the memory limit."""
        need = self._n + len(rows)
        if need > len(self._ids):
            if need * dim * 4 > self.memory_limit:
                return False
            cap = min(max(1024, need + need // 2), self.memory_limit // (dim * 4))
            mat = np.empty((cap, dim), dtype=np.float32)
            mat[: self._n] = self._mat[: self._n]
            ids = np.empty(cap, dtype=np.int64)
            ids[: self._n] = self._ids[: self._n]
            self._mat, self._ids = mat, ids
        self._mat[self._n : need] = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(-1, dim)
        self._ids[self._n : need] = [r[0] for r in rows]
        self._n = need
        self._max_id = max(self._max_id, rows[-1][0])
        return True

    def _drop_removed(self) -> None:
        if self._too_big:
            # the store may have shrunk below the limit: try again from scratch
            self._reset(self._model, self._mat.shape[1])
            return
        if self._n == 0:
            return
        live = np.fromiter(self.index.chunk_ids(), dtype=np.int64)
        keep = np.isin(self._ids[: self._n], live, assume_unique=True)
        kept = int(keep.sum())
        if kept == self._n:
            return
        self._mat[:kept] = self._mat[: self._n][keep]
        self._ids[:kept] = self._ids[: self._n][keep]
        self._n = kept
