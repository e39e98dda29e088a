"""Stage 1 of the training-episode pipeline: the paragraph pool, the tokenizer and the prepared pivots.

`prepare_data(config)` (run once, by `python -m memtrain_jax.tools.prepare`, or lazily on first use): loads the
pool, builds or loads the retrieval index, picks the usable pivots (paragraphs with a valid entity; the others are
skipped and counted) and stores each pivot's entities and `num_similar` retrieval neighbours under
`cache_dir/episodes-<key>/`. The key hashes the pool contents, retriever settings, extractor and selection
settings; a cache that does not match or cannot be read raises PreparedDataError.

What is built from a PreparedData: one episode (`episodes.py`), pre-built documents (`prebuilt.py`), the Grain
stream of episodes, stage 2 (`stream.py`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from memtrain_jax.atomic import cache_entry, content_key, write_directory_atomically
from memtrain_jax.data import retrieval
from memtrain_jax.data.documents import (
    DocumentConfig,
    PivotSelection,
    PoolTooSmallError,
    entity_leaks,
    select_pivots,
)
from memtrain_jax.data.masking import mask_entity
from memtrain_jax.data.types import Paragraph
from memtrain_jax.tokenizer.base import Tokenizer

Log = Callable[[str], None]
_PREPARED_FORMAT = 1


class PreparedDataError(RuntimeError):
    """Prepared pivots/neighbours or pre-built documents are missing, corrupt or do not match."""


def data_section(config: Any) -> Any:
    """The data section of a config: `config.data` when present (a full training config), else itself."""
    return config.data if "data" in config else config


# --- pool and tokenizer ------------------------------------------------------------------------


def load_pool_from_config(config: Any) -> list[Paragraph]:
    """The paragraph pool named by `data.pool` (source, path; max_paragraphs > 0 keeps the first ones)."""
    from memtrain_jax.data.sources import load_pool

    pool_cfg = data_section(config).pool
    pool = load_pool(pool_cfg.source, pool_cfg.path or None)
    if pool_cfg.max_paragraphs > 0:
        pool = pool[: pool_cfg.max_paragraphs]
    if not pool:
        raise ValueError(f"Pool source {pool_cfg.source!r} (path {pool_cfg.path!r}) gave no paragraphs.")
    return list(pool)


def load_tokenizer(config: Any, pool: Sequence[Paragraph] | None = None, *, log: Log | None = print) -> Tokenizer:
    """Tokenizer named by `data.tokenizer.path`, loaded by `memtrain_jax.tokenizer.load_tokenizer`
    (a sentencepiece .model, a tokenizer.json, a checkpoint folder or a .gguf). An empty path
    trains a `vocab_size` SentencePiece model on the pool once and caches it under cache_dir."""
    from memtrain_jax.tokenizer import load_tokenizer as load_tokenizer_file
    from memtrain_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece

    data = data_section(config)
    tok = data.tokenizer
    if tok.path:
        return load_tokenizer_file(tok.path)
    if pool is None:
        pool = load_pool_from_config(data)
    key = content_key({"pool": retrieval.pool_fingerprint(pool), "vocab_size": tok.vocab_size})
    directory = cache_entry(data.cache_dir, "tokenizer", key)
    model = os.path.join(directory, "spm.model")
    if not os.path.isfile(model):
        if log:
            log(f"[tokenizer] training a {tok.vocab_size}-piece SentencePiece model on {len(pool)} paragraphs")
        write_directory_atomically(
            directory,
            lambda tmp: train_sentencepiece([p.text for p in pool], os.path.join(tmp, "spm"), tok.vocab_size),
        )
    return SentencePieceTokenizer(model)


# --- prepared pivots and neighbours --------------------------------------------------------------


@dataclasses.dataclass
class PreparedData:
    """Everything document building needs besides the tokenizer.

    pivots: [P] int64 pool indices; entities[p]: maskable entities of pivot p; neighbours: [P, n1]
    int32 pool indices, best first, the pivot excluded.
    """

    pool: list[Paragraph]
    pivots: np.ndarray
    entities: tuple[tuple[str, ...], ...]
    neighbours: np.ndarray
    key: str
    directory: str
    stats: dict[str, Any]

    @property
    def num_pivots(self) -> int:
        return len(self.pivots)


def _prepared_key(data: Any, pool_fp: str, retriever: retrieval.Retriever) -> str:
    return content_key(
        {
            "format": _PREPARED_FORMAT,
            "index": retrieval.index_cache_key(pool_fp, retriever),
            "extractor": data.entities.extractor,
            "max_occurrences": data.entities.max_occurrences,
            "max_words": data.entities.max_words,
            "num_documents": data.num_documents,
            "seed": data.seed,
            "num_similar": data.document.num_similar,
            "mask_token": data.document.mask_token,
        }
    )


def _load_prepared(directory: str, key: str, pool: list[Paragraph], num_similar: int) -> PreparedData:
    try:
        with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
        pivots = np.load(os.path.join(directory, "pivots.npy"), allow_pickle=False)
        neighbours = np.load(os.path.join(directory, "neighbours.npy"), allow_pickle=False)
        with open(os.path.join(directory, "entities.json"), encoding="utf-8") as f:
            entities = tuple(tuple(e) for e in json.load(f))
    except (OSError, ValueError) as e:
        raise PreparedDataError(f"Prepared data at {directory!r} cannot be read ({type(e).__name__}: {e}).") from e
    problems = []
    if meta.get("key") != key:
        problems.append(f"key {meta.get('key')!r} != {key!r}")
    if pivots.ndim != 1 or len(entities) != len(pivots):
        problems.append(f"{len(entities)} entity lists for pivots of shape {pivots.shape}")
    if neighbours.shape != (len(pivots), num_similar):
        problems.append(f"neighbours shape {neighbours.shape} != {(len(pivots), num_similar)}")
    for name, arr in (("pivots", pivots), ("neighbours", neighbours)):
        if arr.size and (arr.min() < 0 or arr.max() >= len(pool)):
            problems.append(f"{name} hold indices outside the pool of {len(pool)}")
    if not all(entities):
        problems.append("a pivot has no entity")
    if problems:
        raise PreparedDataError(
            f"Prepared data at {directory!r} does not match: {'; '.join(problems)}. "
            "Delete the folder or rerun prepare with --config.retrieval.rebuild=True."
        )
    return PreparedData(
        pool, pivots.astype(np.int64), entities, neighbours.astype(np.int32), key, directory, meta["stats"]
    )


def prepare_data(
    config: Any, *, pool: list[Paragraph] | None = None, build: bool = True, log: Log | None = print
) -> PreparedData:
    """Loads (or with `build`, builds and caches) the pivots, their entities and neighbours."""
    data = data_section(config)
    if pool is None:
        pool = load_pool_from_config(data)
    doc_cfg = DocumentConfig.from_config(data.document)  # validate early
    if len(pool) < doc_cfg.num_paragraphs:
        raise PoolTooSmallError(
            f"The pool has {len(pool)} paragraphs but a document needs num_paragraphs={doc_cfg.num_paragraphs}; "
            "use a bigger pool (data.pool) or lower data.document.num_paragraphs."
        )
    retriever = retrieval.retriever_from_config(data.retrieval)
    pool_fp = retrieval.pool_fingerprint(pool)
    key = _prepared_key(data, pool_fp, retriever)
    directory = cache_entry(data.cache_dir, "episodes", key)
    rebuild = bool(data.retrieval.rebuild)
    if os.path.exists(directory) and not rebuild:
        prepared = _load_prepared(directory, key, pool, data.document.num_similar)
        if log:
            log(f"[prepare] loaded {prepared.num_pivots} pivots from {directory}")
        return prepared
    if not build:
        raise PreparedDataError(
            f"No prepared data at {directory!r}; run `python -m memtrain_jax.tools.prepare --config ...` first."
        )
    from memtrain_jax.data.entities import make_extractor

    index_dir = retrieval.load_or_build_index(retriever, pool, data.cache_dir, rebuild=rebuild, log=log)
    selection: PivotSelection = select_pivots(
        pool,
        make_extractor(
            data.entities.extractor, max_occurrences=data.entities.max_occurrences, max_words=data.entities.max_words
        ),
        data.num_documents,
        data.seed,
        mask_token=data.document.mask_token,
        batch_size=data.entities.batch_size,
        log=log,
    )
    if selection.indices.size == 0:
        raise PreparedDataError(f"No paragraph of the pool has a valid entity (extractor {data.entities.extractor!r}).")
    if data.num_documents and selection.indices.size < data.num_documents and log:
        log(
            f"[prepare] WARNING: only {selection.indices.size} usable pivots, "
            f"fewer than num_documents={data.num_documents}"
        )
    neighbours = retrieval.neighbour_table(
        retriever,
        selection.indices,
        data.document.num_similar,
        batch_size=data.retrieval.neighbour_batch_size,
        log=log,
    )
    stats = {
        "num_pool": len(pool),
        "num_pivots": int(selection.indices.size),
        "num_examined": selection.num_examined,
        "num_skipped_no_entity": selection.num_skipped,
        "index_dir": index_dir,
    }

    def write(tmp: str) -> None:
        np.save(os.path.join(tmp, "pivots.npy"), selection.indices)
        np.save(os.path.join(tmp, "neighbours.npy"), neighbours)
        with open(os.path.join(tmp, "entities.json"), "w", encoding="utf-8") as f:
            json.dump([list(e) for e in selection.entities], f, ensure_ascii=False)
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump({"key": key, "stats": stats}, f, indent=1)

    write_directory_atomically(directory, write)
    if log:
        log(f"[prepare] {stats['num_pivots']} pivots ({selection.num_skipped} skipped: no valid entity) -> {directory}")
    return _load_prepared(directory, key, pool, data.document.num_similar)


def pivot_entity_leaks(prepared: PreparedData, mask_token: str = "[MASK]") -> tuple[int, int]:
    """(leaking, total) pivot/entity pairs: masking the entity in its own pivot paragraph leaves it readable
    (`entity_leaks`), e.g. "Brazil" next to "Brazilian"."""
    leaking = total = 0
    for pivot, entities in zip(prepared.pivots.tolist(), prepared.entities, strict=True):
        text = prepared.pool[pivot].text
        for entity in entities:
            total += 1
            leaking += entity_leaks(mask_entity(text, entity, mask_token)[0], entity)
    return leaking, total
