"""The training-episode input pipeline (Grain), as one namespace: pivots -> masked documents -> padded token chunks.

The code lives in one module per subject; this facade re-exports their public names so `pipeline.X` keeps
working. New code imports from the subject modules (which never import this one):

  prepare.py   stage 1: data_section, the pool and tokenizer (load_pool_from_config, load_tokenizer), the
               prepared pivots, entities and neighbours (PreparedData, prepare_data, PreparedDataError),
               pivot_entity_leaks
  episodes.py  the episode spec (EPISODE_FIELDS, usable and skipped), one pivot slot -> one episode
               (build_episode_document, episode_from_document, TokenCounter), document_statistics
  prebuilt.py  pre-built ArrayRecord documents (documents_key, documents_dir, write_documents, open_documents)
  stream.py    stage 2: the Grain stream (make_dataset, slot_stream, host_rows, shard_options, episode_batch,
               make_iterator) and its checkpointable position (iterator_state, restore_iterator_state)
"""

from memtrain_jax.data.episodes import (
    EPISODE_FIELDS,
    SKIPPED_RECORD,
    TokenCounter,
    build_episode_document,
    document_statistics,
    episode_from_document,
)
from memtrain_jax.data.prebuilt import documents_dir, documents_key, open_documents, write_documents
from memtrain_jax.data.prepare import (
    Log,
    PreparedData,
    PreparedDataError,
    data_section,
    load_pool_from_config,
    load_tokenizer,
    pivot_entity_leaks,
    prepare_data,
)
from memtrain_jax.data.stream import (
    DOCUMENT_MODES,
    episode_batch,
    host_rows,
    iterator_state,
    make_dataset,
    make_iterator,
    restore_iterator_state,
    shard_options,
    slot_stream,
)
from memtrain_jax.tokenizer.base import tokenizer_fingerprint  # pipeline.tokenizer_fingerprint predates the split

__all__ = [
    "DOCUMENT_MODES",
    "EPISODE_FIELDS",
    "SKIPPED_RECORD",
    "Log",
    "PreparedData",
    "PreparedDataError",
    "TokenCounter",
    "build_episode_document",
    "data_section",
    "document_statistics",
    "documents_dir",
    "documents_key",
    "episode_batch",
    "episode_from_document",
    "host_rows",
    "iterator_state",
    "load_pool_from_config",
    "load_tokenizer",
    "make_dataset",
    "make_iterator",
    "open_documents",
    "pivot_entity_leaks",
    "prepare_data",
    "restore_iterator_state",
    "shard_options",
    "slot_stream",
    "tokenizer_fingerprint",
    "write_documents",
]
