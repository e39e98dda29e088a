"""The training-episode input pipeline (Grain): pivots -> masked documents -> padded token chunks.

Two stages:

1. `prepare_data(config)` (run once, by `python -m memtrain_jax.tools.prepare`, or lazily on
   first use): loads the pool, builds or loads the retrieval index, picks the usable pivots
   (paragraphs with a valid entity; the others are skipped and counted) and stores each pivot's
   entities and `num_similar` retrieval neighbours under `cache_dir/episodes-<key>/`. The key
   hashes the pool contents, retriever settings, extractor and selection settings; a cache that
   does not match or cannot be read raises PreparedDataError.
2. `make_dataset(config, prepared, tokenizer)`: a Grain pipeline over pivot slots
       range(P) -> shuffle(seed, reshuffled each epoch) -> repeat(num_epochs)        (the global stream)
       -> this host's rows of every global batch of `batch_size` (`host_rows`)
       -> episode (build document on the fly, or read it from pre-built ArrayRecord files)
       -> batch(batch_size / hosts) -> iterator (threads; or worker processes)
   One element (before batching) is an episode, a dict of numpy arrays (EPISODE_FIELDS):
       tokens         [max_chunks, chunk_size] int32  document chunks, pad_id-padded
       chunk_lengths  [max_chunks] int32              tokens in each chunk (0 = no chunk)
       num_chunks     [] int32
       num_tokens     [] int32   document tokens before centre truncation
       answer         [] str     the gold entity (the reward compares text)
       answer_ids     [max_answer_tokens] int32       encode(answer), pad_id-padded, cut at max
       answer_length  [] int32   min(len(encode(answer)), max_answer_tokens)
       mask_count     [] int32   "[MASK]" occurrences in the document
       masks_kept     [] int32   "[MASK]" occurrences in what the agent reads (after centre truncation)
       tokenizer_id   [] str     tokenizer_fingerprint of the tokenizer the chunks are in
       usable         [] bool    False: skipped, never trained on (see below); then num_chunks = 0
       pivot_index    [] int32   pool index of the pivot
       episode_id     [] int64   epoch * num_pivots + pivot slot: unique over hosts and epochs
       epoch          [] int32
       seed           [] int64   the global data seed (probes: probe_rng(seed, episode_id, step))

Never trained on: a document whose centre truncation dropped every mask (nothing left to
reconstruct), and, with `document.skip_leaking_entities`, a pivot whose every entity leaks. Such
an episode stays in the stream with `usable` False (and no chunks), so every host keeps the same
number of steps and the same pivot coverage; the agent leaves it out of its rollouts and counts
it. `document_statistics` counts both (and the leaks the default keeps) for `prepare`/`preview`.

Determinism: the document of an episode is drawn from `document_rng(seed, episode_id)`, so it
does not depend on the host count, worker count or position in the stream. Hosts split every
global batch, not the slots: host h of H builds rows [h*b, (h+1)*b) (b = batch_size / H) of each
batch, and the trainer gathers the rows of all hosts (`sharding.gather_host_rows`), so a run
sees the same batches, in the same order, on one host or sixty-four; epoch e covers each pivot
slot exactly once. The iterator's position counts global batches on every host, so the
`get_state()` / `set_state()` of one host (`iterator_state` / `restore_iterator_state`) resumes
every host, whatever the host count.

Worker processes (`loader.worker_count > 0`) use `mp_prefetch`, which starts processes with
the "spawn" method: the script that builds the iterator must guard its entry point with
`if __name__ == "__main__":`, and the dataset (pool texts included) is pickled to each worker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from memtrain_jax.atomic import cache_entry, content_key, write_directory_atomically
from memtrain_jax.data import retrieval
from memtrain_jax.data.chunking import chunk_document, pad_chunks
from memtrain_jax.data.documents import (
    Document,
    DocumentConfig,
    NoValidEntityError,
    PivotSelection,
    PoolTooSmallError,
    build_document,
    document_rng,
    entity_leaks,
    select_pivots,
)
from memtrain_jax.data.masking import mask_entity
from memtrain_jax.data.types import Paragraph
from memtrain_jax.tokenizer.base import Tokenizer, tokenizer_fingerprint

Log = Callable[[str], None]
_PREPARED_FORMAT = 1
DOCUMENT_MODES = ("on_the_fly", "array_record")
_SKIPPED_RECORD = b"null"  # a pre-built slot whose document is skipped


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


# --- episodes ---------------------------------------------------------------------------------


class TokenCounter:
    """`len(tokenizer.encode(text))`, memoised per text (pool paragraphs recur across documents;
    the memo is bounded by the pool size); picklable for worker processes."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer = tokenizer
        self._counts: dict[str, int] = {}

    def __call__(self, text: str) -> int:
        n = self._counts.get(text)
        if n is None:
            n = self._counts[text] = len(self.tokenizer.encode(text))
        return n

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer, "_counts": {}}  # do not ship the memo to workers


def build_episode_document(
    prepared: PreparedData,
    slot: int,
    episode_id: int,
    config: Any,
    tokenizer: Tokenizer,
    *,
    count_tokens: TokenCounter | None = None,
) -> Document:
    """The document of pivot slot `slot` in episode `episode_id` (deterministic in the data seed).

    `count_tokens` (optional) is a reusable TokenCounter for `tokenizer`, to share its memo."""
    data = data_section(config)
    doc_cfg = DocumentConfig.from_config(data.document)
    if doc_cfg.token_range_active and count_tokens is None:
        count_tokens = TokenCounter(tokenizer)
    return build_document(
        prepared.pool,
        int(prepared.pivots[slot]),
        prepared.neighbours[slot],
        document_rng(data.seed, episode_id),
        doc_cfg,
        entities=prepared.entities[slot],
        count_tokens=count_tokens if doc_cfg.token_range_active else None,
    )


# The episode schema (module docstring): name -> (shape in terms of the config, dtype). Every episode, usable or
# skipped, is made by `_episode`, which checks the names and casts the dtypes.
EPISODE_FIELDS: dict[str, tuple[str, Any]] = {
    "tokens": ("[max_chunks, chunk_size]", np.int32),
    "chunk_lengths": ("[max_chunks]", np.int32),
    "num_chunks": ("[]", np.int32),
    "num_tokens": ("[]", np.int32),
    "answer": ("[]", np.str_),
    "answer_ids": ("[max_answer_tokens]", np.int32),
    "answer_length": ("[]", np.int32),
    "mask_count": ("[]", np.int32),
    "masks_kept": ("[]", np.int32),
    "tokenizer_id": ("[]", np.str_),
    "usable": ("[]", np.bool_),
    "pivot_index": ("[]", np.int32),
    "episode_id": ("[]", np.int64),
    "epoch": ("[]", np.int32),
    "seed": ("[]", np.int64),
}


def _episode(**values: Any) -> dict[str, np.ndarray]:
    """An episode dict in EPISODE_FIELDS' order and dtypes; a missing or unknown field is a bug."""
    if set(values) != set(EPISODE_FIELDS):
        raise AssertionError(f"episode fields {sorted(values)} differ from EPISODE_FIELDS {sorted(EPISODE_FIELDS)}")
    return {
        name: np.asarray(values[name], dtype) if shape != "[]" else dtype(values[name])
        for name, (shape, dtype) in EPISODE_FIELDS.items()
    }


def episode_from_document(
    document: Document | None,
    tokenizer: Tokenizer,
    *,
    chunk_size: int,
    max_chunks: int,
    max_answer_tokens: int,
    episode_id: int,
    epoch: int,
    seed: int,
    mask_token: str = "[MASK]",
    tokenizer_id: str | None = None,
    pivot_index: int = -1,
) -> dict[str, np.ndarray]:
    """Tokenises, truncates, chunks and pads one document into an episode dict (EPISODE_FIELDS).

    `document` None (its pivot was skipped) or a document whose every mask was truncated away gives an
    episode with `usable` False and no chunks (same fields and shapes). `tokenizer_id`:
    `tokenizer_fingerprint(tokenizer)` when the caller has it already; `pivot_index`: recorded for a skipped
    document."""
    usable = document is not None
    if usable:
        chunks = chunk_document(document.text, tokenizer, chunk_size, max_chunks, decode=False)
        kept = document.text if not chunks.num_dropped else tokenizer.decode(np.concatenate(chunks.tokens).tolist())
        masks_kept = kept.count(mask_token)
        usable = masks_kept > 0
    pad = tokenizer.pad_id
    common = dict(
        answer=document.gold if document is not None else "",
        mask_count=document.mask_count if document is not None else 0,
        tokenizer_id=tokenizer_id or tokenizer_fingerprint(tokenizer),
        usable=usable,
        pivot_index=document.pivot_index if document is not None else pivot_index,
        episode_id=episode_id,
        epoch=epoch,
        seed=seed,
    )
    if not usable:
        return _episode(
            tokens=np.full((max_chunks, chunk_size), pad),
            chunk_lengths=np.zeros((max_chunks,)),
            num_chunks=0,
            num_tokens=0,
            answer_ids=np.full((max_answer_tokens,), pad),
            answer_length=0,
            masks_kept=0,
            **common,
        )
    tokens, lengths = pad_chunks(chunks.tokens, max_chunks, chunk_size, pad)
    answer = np.asarray(tokenizer.encode(document.gold), dtype=np.int32)
    answer_ids = np.full((max_answer_tokens,), pad, dtype=np.int32)
    n_answer = min(len(answer), max_answer_tokens)
    answer_ids[:n_answer] = answer[:n_answer]
    return _episode(
        tokens=tokens,
        chunk_lengths=lengths,
        num_chunks=chunks.num_chunks,
        num_tokens=chunks.num_tokens,
        answer_ids=answer_ids,
        answer_length=n_answer,
        masks_kept=masks_kept,
        **common,
    )


class _EpisodeMap:
    """(stream index, slot or pre-built record) -> episode dict; picklable for worker processes."""

    def __init__(self, prepared: PreparedData, tokenizer: Tokenizer, config: Any, slots_per_epoch: int, prebuilt: bool):
        data = data_section(config)
        self.prepared, self.tokenizer, self.config = prepared, tokenizer, data
        self.slots_per_epoch, self.prebuilt = slots_per_epoch, prebuilt
        self.count_tokens = TokenCounter(tokenizer)
        self.tokenizer_id = tokenizer_fingerprint(tokenizer)

    def __call__(self, index: int, item: tuple[int, Any]) -> dict[str, np.ndarray]:
        slot, record = item
        epoch = int(index) // self.slots_per_epoch
        episode_id = epoch * self.prepared.num_pivots + int(slot)
        document = None
        if self.prebuilt:
            document = None if record == _SKIPPED_RECORD else Document.from_json(record)
        else:
            with contextlib.suppress(NoValidEntityError):  # every entity leaks: a skipped episode
                document = build_episode_document(
                    self.prepared, int(slot), episode_id, self.config, self.tokenizer, count_tokens=self.count_tokens
                )
        return episode_from_document(
            document,
            self.tokenizer,
            chunk_size=self.config.chunking.chunk_size,
            max_chunks=self.config.chunking.max_chunks,
            max_answer_tokens=self.config.loader.max_answer_tokens,
            episode_id=episode_id,
            epoch=epoch,
            seed=self.config.seed,
            mask_token=self.config.document.mask_token,
            tokenizer_id=self.tokenizer_id,
            pivot_index=int(self.prepared.pivots[int(slot)]),
        )


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


def document_statistics(
    config: Any, prepared: PreparedData, tokenizer: Tokenizer, num_documents: int, epoch: int = 0
) -> dict[str, int]:
    """Builds the first `num_documents` episodes of `epoch` (slot order) and counts what the stream skips
    or keeps: documents whose gold leaks, whose truncation dropped every mask, whose pivot had only leaking
    entities (with `document.skip_leaking_entities`), and those used."""
    data = data_section(config)
    counter = TokenCounter(tokenizer)
    stats = {"documents": 0, "gold_leaks": 0, "skipped_all_masks_truncated": 0, "skipped_every_entity_leaks": 0}
    for slot in range(min(num_documents, prepared.num_pivots)):
        stats["documents"] += 1
        episode_id = epoch * prepared.num_pivots + slot
        try:
            document = build_episode_document(prepared, slot, episode_id, data, tokenizer, count_tokens=counter)
        except NoValidEntityError:
            stats["skipped_every_entity_leaks"] += 1
            continue
        stats["gold_leaks"] += entity_leaks(document.text, document.gold)
        episode = episode_from_document(
            document,
            tokenizer,
            chunk_size=data.chunking.chunk_size,
            max_chunks=data.chunking.max_chunks,
            max_answer_tokens=data.loader.max_answer_tokens,
            episode_id=episode_id,
            epoch=epoch,
            seed=data.seed,
            mask_token=data.document.mask_token,
        )
        stats["skipped_all_masks_truncated"] += int(not episode["usable"])
    stats["used"] = stats["documents"] - stats["skipped_all_masks_truncated"] - stats["skipped_every_entity_leaks"]
    return stats


# --- pre-built documents (ArrayRecord) -----------------------------------------------------------


def documents_key(config: Any, prepared: PreparedData, tokenizer: Tokenizer) -> str:
    """Key of the pre-built documents: prepared data, document settings, seed and tokenizer."""
    data = data_section(config)
    return content_key(
        {
            "prepared": prepared.key,
            "document": data.document.to_dict() if hasattr(data.document, "to_dict") else dict(data.document),
            "seed": data.seed,
            "tokenizer": tokenizer_fingerprint(tokenizer),
        }
    )


def documents_dir(config: Any, prepared: PreparedData, tokenizer: Tokenizer) -> str:
    """Folder of the pre-built ArrayRecord documents (`loader.array_record_dir` or under the cache)."""
    data = data_section(config)
    return data.loader.array_record_dir or cache_entry(
        prepared.directory, "documents", documents_key(data, prepared, tokenizer)
    )


def write_documents(config: Any, prepared: PreparedData, tokenizer: Tokenizer, *, log: Log | None = print) -> list[str]:
    """Builds epoch 0's document of every pivot slot (episode id = slot, as on the fly) and writes
    them, in slot order, to `loader.array_record_shards` ArrayRecord files; returns the paths.

    Pre-built documents do not change between epochs (on-the-fly ones are redrawn each epoch).
    """
    from array_record.python.array_record_module import ArrayRecordWriter

    data = data_section(config)
    directory = documents_dir(data, prepared, tokenizer)
    num_shards = max(1, min(data.loader.array_record_shards, prepared.num_pivots))
    bounds = np.linspace(0, prepared.num_pivots, num_shards + 1).astype(int)
    names = [f"documents-{i:05d}-of-{num_shards:05d}.array_record" for i in range(num_shards)]

    counter = TokenCounter(tokenizer)

    def write(tmp: str) -> None:
        for shard, name in enumerate(names):
            writer = ArrayRecordWriter(os.path.join(tmp, name), "group_size:1")
            for slot in range(bounds[shard], bounds[shard + 1]):
                try:
                    document = build_episode_document(prepared, slot, slot, data, tokenizer, count_tokens=counter)
                    writer.write(document.to_json())
                except NoValidEntityError:
                    writer.write(_SKIPPED_RECORD)  # keeps slot i at record i; the stream skips it
            writer.close()
            if log:
                log(f"[documents] wrote {bounds[shard + 1]}/{prepared.num_pivots} documents")
        with open(os.path.join(tmp, "meta.json"), "w", encoding="utf-8") as f:
            json.dump(
                {"key": documents_key(data, prepared, tokenizer), "num_documents": prepared.num_pivots, "files": names},
                f,
            )

    write_directory_atomically(directory, write)
    return [os.path.join(directory, n) for n in names]


def _open_documents(config: Any, prepared: PreparedData, tokenizer: Tokenizer) -> Any:
    """ArrayRecordDataSource over the pre-built documents, after checking they match this config."""
    data = data_section(config)
    directory = documents_dir(data, prepared, tokenizer)
    try:
        with open(os.path.join(directory, "meta.json"), encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise PreparedDataError(
            f"No readable pre-built documents at {directory!r} ({e}); run prepare with "
            "--config.loader.documents=array_record to write them."
        ) from e
    expected = documents_key(data, prepared, tokenizer)
    if meta.get("key") != expected or meta.get("num_documents") != prepared.num_pivots:
        raise PreparedDataError(
            f"Pre-built documents at {directory!r} were written for another pool/config/tokenizer "
            f"(key {meta.get('key')!r}, expected {expected!r}); rerun prepare to rewrite them."
        )
    source = grain.sources.ArrayRecordDataSource([os.path.join(directory, n) for n in meta["files"]])
    if len(source) != prepared.num_pivots:
        raise PreparedDataError(
            f"Pre-built documents at {directory!r} hold {len(source)} records, expected {prepared.num_pivots}."
        )
    return source


# --- the Grain dataset ---------------------------------------------------------------------------


class _HostRow:
    """Local position -> the element of the global stream it stands for (picklable for worker processes)."""

    def __init__(self, stream: grain.MapDataset, batch_size: int, offset: int, rows: int):
        self.stream, self.batch_size, self.offset, self.rows = stream, batch_size, offset, rows

    def __call__(self, position: int) -> Any:
        batch, row = divmod(int(position), self.rows)
        return self.stream[batch * self.batch_size + self.offset + row]


def host_rows(stream: grain.MapDataset, batch_size: int, shard: grain.sharding.ShardOptions) -> grain.MapDataset:
    """This host's rows of every global batch of `stream`: local position i*b + r is global element
    i*batch_size + shard_index*b + r, b = batch_size / shard_count (an incomplete last batch is dropped)."""
    if batch_size % shard.shard_count:
        raise ValueError(
            f"data.loader.batch_size={batch_size} must be a multiple of the host count {shard.shard_count}: "
            "every host builds an equal share of each global batch."
        )
    rows = batch_size // shard.shard_count
    batches = len(stream) // batch_size
    return grain.MapDataset.range(batches * rows).map(_HostRow(stream, batch_size, shard.shard_index * rows, rows))


def shard_options(
    config: Any, shard_index: int | None = None, shard_count: int | None = None
) -> grain.sharding.ShardOptions:
    """This host's share of every batch (see `host_rows`): explicit arguments, else
    `loader.shard_index/shard_count` when >= 0, else jax.process_index()/jax.process_count()."""
    loader = data_section(config).loader
    index = shard_index if shard_index is not None else loader.shard_index
    count = shard_count if shard_count is not None else loader.shard_count
    if index < 0 or count < 0:
        import jax

        index = jax.process_index() if index < 0 else index
        count = jax.process_count() if count < 0 else count
    if not 0 <= index < count:
        raise ValueError(f"shard_index={index} must be in [0, shard_count={count}).")
    return grain.sharding.ShardOptions(shard_index=index, shard_count=count, drop_remainder=True)


def make_dataset(
    config: Any,
    prepared: PreparedData,
    tokenizer: Tokenizer,
    *,
    shard_index: int | None = None,
    shard_count: int | None = None,
    batch: bool = True,
    num_slots: int | None = None,
) -> grain.IterDataset:
    """This host's rows of the episode stream (see the module docstring); batched `[batch_size / hosts, ...]`
    if `batch`.

    `num_slots` keeps only the first pivot slots (a trainer holds the last ones out for evaluation)."""
    data = data_section(config)
    if data.loader.documents not in DOCUMENT_MODES:
        raise ValueError(f"Unknown data.loader.documents={data.loader.documents!r}; choose one of {DOCUMENT_MODES}.")
    num_pivots = prepared.num_pivots if num_slots is None else min(num_slots, prepared.num_pivots)
    if num_pivots < 1:
        raise ValueError(f"No pivot slots to stream (num_slots={num_slots}, {prepared.num_pivots} pivots prepared).")
    prebuilt = data.loader.documents == "array_record"
    records = grain.MapDataset.source(_open_documents(data, prepared, tokenizer))[:num_pivots] if prebuilt else None
    element = _EpisodeMap(prepared, tokenizer, data, num_pivots, prebuilt)
    return slot_stream(
        data, num_pivots, element, records=records, batch=batch, shard_index=shard_index, shard_count=shard_count
    )


def slot_stream(
    config: Any,
    num_slots: int,
    element: Callable[[int, tuple[int, Any]], dict[str, Any]],
    *,
    records: grain.MapDataset | None = None,
    batch: bool = True,
    shard_index: int | None = None,
    shard_count: int | None = None,
) -> grain.IterDataset:
    """The one Grain wiring of every training stream (MemTrain documents, QA records): slots 0..num_slots-1
    (zipped with `records` when given), shuffled by `data.seed` (`loader.shuffle`), repeated `loader.num_epochs`
    times (0 = forever), `element(position, (slot, record or None))` at each position of the stream, this host's
    rows of every batch, batched `[batch_size / hosts, ...]` if `batch`, read ahead (and in worker processes
    with `loader.worker_count`)."""
    data = data_section(config)
    loader = data.loader
    if loader.batch_size < 1:
        raise ValueError(f"data.loader.batch_size must be >= 1, got {loader.batch_size}.")
    if loader.num_epochs < 0:
        raise ValueError(f"data.loader.num_epochs must be >= 0 (0 = repeat forever), got {loader.num_epochs}.")
    shard = shard_options(data, shard_index, shard_count)
    slots = grain.MapDataset.range(num_slots)
    if records is not None:
        ds = grain.experimental.ZipMapDataset(parents=[slots, records])
    else:
        ds = slots.map(lambda slot: (slot, None))
    if loader.shuffle:
        ds = ds.shuffle(seed=int(data.seed) % 2**32)
    ds = ds.repeat(loader.num_epochs or None)
    ds = ds.map_with_index(element)
    ds = host_rows(ds, int(loader.batch_size), shard)
    if batch:
        ds = ds.batch(loader.batch_size // shard.shard_count, drop_remainder=True)
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=loader.read_threads, prefetch_buffer_size=loader.prefetch_buffer_size)
    )
    if loader.worker_count > 0:
        from absl import flags

        # Grain reads its absl flags when starting workers; outside an absl app (pytest, notebooks)
        # nothing parsed them, so take their defaults instead of failing.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=loader.worker_count, per_worker_buffer_size=loader.worker_buffer_size
            )
        )
    return it_ds


def episode_batch(
    config: Any, prepared: PreparedData, tokenizer: Tokenizer, slots: Sequence[int]
) -> dict[str, np.ndarray]:
    """The epoch-0 episodes of pivot `slots` (episode id = slot), stacked like a pipeline batch: a fixed set,
    e.g. the held-out evaluation episodes."""
    if not len(slots):
        raise ValueError("episode_batch needs at least one slot.")
    episode_map = _EpisodeMap(prepared, tokenizer, config, prepared.num_pivots, prebuilt=False)
    episodes = [episode_map(int(slot), (int(slot), None)) for slot in slots]
    return {key: np.stack([e[key] for e in episodes]) for key in episodes[0]}


def make_iterator(config: Any, prepared: PreparedData, tokenizer: Tokenizer, **kw: Any) -> grain.DatasetIterator:
    """`iter(make_dataset(...))`: a checkpointable iterator (get_state/set_state)."""
    return iter(make_dataset(config, prepared, tokenizer, **kw))


def iterator_state(iterator: grain.DatasetIterator) -> str:
    """The iterator's position as JSON text (what grain.checkpoint.CheckpointHandler writes)."""
    return json.dumps(iterator.get_state())


def restore_iterator_state(iterator: grain.DatasetIterator, state: str) -> None:
    """Moves a fresh iterator of the same pipeline to a position saved by `iterator_state`."""
    iterator.set_state(json.loads(state))
