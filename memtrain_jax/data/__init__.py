"""memtrain_jax.data: the corpus, MemTrain's documents and the Grain input pipeline; no model code.

Subject modules (one concept each; the arrows run prepare <- episodes <- prebuilt <- stream):
  sources, types        paragraph pools (Wikipedia, shipped files) and the records they are made of
  entities, masking     entity extraction and word-boundary masking
  retrieval             BM25 / dense retrievers, index caches, neighbour tables
  documents, chunking   one masked document from a pivot and its neighbours; token chunks
  prepare               stage 1: pool, tokenizer, prepared pivots/entities/neighbours (PreparedData)
  episodes              the episode spec (EPISODE_FIELDS) and one pivot slot -> one episode
  prebuilt              pre-built ArrayRecord documents
  stream                stage 2: the Grain stream of episodes, per-host rows, iterator state
  probes, qa            recall probes; QA files and long-context test sets
  pipeline              a facade re-exporting prepare/episodes/prebuilt/stream (older imports)

Main public names, importable from this package (lazily):
  data_section, load_pool_from_config, load_tokenizer, PreparedData, PreparedDataError, prepare_data
  EPISODE_FIELDS, build_episode_document, episode_from_document, document_statistics
  write_documents
  make_dataset, make_iterator, slot_stream, episode_batch, iterator_state, restore_iterator_state
"""

# Lazy (PEP 562): Grain worker processes import single data modules, and `import memtrain_jax.data` should load
# neither Grain nor the retrievers until a name is used.
_API = {
    "data_section": "memtrain_jax.data.prepare",
    "load_pool_from_config": "memtrain_jax.data.prepare",
    "load_tokenizer": "memtrain_jax.data.prepare",
    "PreparedData": "memtrain_jax.data.prepare",
    "PreparedDataError": "memtrain_jax.data.prepare",
    "prepare_data": "memtrain_jax.data.prepare",
    "EPISODE_FIELDS": "memtrain_jax.data.episodes",
    "build_episode_document": "memtrain_jax.data.episodes",
    "episode_from_document": "memtrain_jax.data.episodes",
    "document_statistics": "memtrain_jax.data.episodes",
    "write_documents": "memtrain_jax.data.prebuilt",
    "make_dataset": "memtrain_jax.data.stream",
    "make_iterator": "memtrain_jax.data.stream",
    "slot_stream": "memtrain_jax.data.stream",
    "episode_batch": "memtrain_jax.data.stream",
    "iterator_state": "memtrain_jax.data.stream",
    "restore_iterator_state": "memtrain_jax.data.stream",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    # An unknown name raises AttributeError, which also lets `from memtrain_jax.data import <submodule>` import it.
    if name not in _API:
        raise AttributeError(f"module 'memtrain_jax.data' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
