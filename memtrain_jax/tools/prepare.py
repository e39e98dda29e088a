"""Build the data pipeline's caches once: tokenizer (if trained), retrieval index, pivots and
their neighbours, and optionally the pre-built ArrayRecord documents.

    python -m memtrain_jax.tools.prepare --config configs/data.py:cpu
    python -m memtrain_jax.tools.prepare --config configs/data.py:cpu --config.retrieval.name=dense
    python -m memtrain_jax.tools.prepare --config configs/data.py:cpu --config.loader.documents=array_record

`--config` is a data preset or a full training config with a `data` section. Everything is
cached under `data.cache_dir` by content keys, so rerunning is cheap and a changed pool or
setting gets its own cache; `--config.retrieval.rebuild=True` forces a rebuild.
"""

from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

from memtrain_jax.data import prepare
from memtrain_jax.data.episodes import document_statistics
from memtrain_jax.data.prebuilt import write_documents

_CONFIG = config_flags.DEFINE_config_file("config", None, "Data config, e.g. configs/data.py:cpu.", lock_config=True)
_SCAN_DOCUMENTS = flags.DEFINE_integer(
    "scan_documents", 64, "Build this many documents and count leaks and skipped ones (0 = do not scan)."
)
_WRITE_DOCUMENTS = flags.DEFINE_bool(
    "write_documents", False, "Also write pre-built ArrayRecord documents (implied by loader.documents=array_record)."
)


def _log(message: str) -> None:
    print(message, flush=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("Pass --config, e.g. --config configs/data.py:cpu")
    data = prepare.data_section(_CONFIG.value)
    start = time.perf_counter()
    pool = prepare.load_pool_from_config(data)
    _log(f"[prepare] pool {data.pool.source!r}: {len(pool)} paragraphs ({time.perf_counter() - start:.1f}s)")
    tokenizer = prepare.load_tokenizer(data, pool, log=_log)
    _log(f"[prepare] tokenizer: {tokenizer!r}")
    prepared = prepare.prepare_data(data, pool=pool, build=True, log=_log)
    for key, value in prepared.stats.items():
        _log(f"[prepare]   {key}: {value}")
    leaking, total = prepare.pivot_entity_leaks(prepared, data.document.mask_token)
    _log(
        f"[prepare]   pivot/entity pairs whose entity leaks through word-boundary masking: {leaking}/{total} "
        f"({100 * leaking / max(total, 1):.1f}%); document.skip_leaking_entities={data.document.skip_leaking_entities}"
    )
    if _SCAN_DOCUMENTS.value:
        stats = document_statistics(data, prepared, tokenizer, _SCAN_DOCUMENTS.value)
        _log(f"[prepare]   first {stats['documents']} documents: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    if _WRITE_DOCUMENTS.value or data.loader.documents == "array_record":
        paths = write_documents(data, prepared, tokenizer, log=_log)
        _log(
            f"[prepare] {prepared.num_pivots} documents in {len(paths)} ArrayRecord files "
            f"under {os.path.dirname(paths[0])}"
        )
    _log(f"[prepare] done in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    app.run(main)
