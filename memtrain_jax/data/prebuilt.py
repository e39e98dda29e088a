"""Pre-built documents (`loader.documents="array_record"`): epoch 0's document of every pivot slot, written once
(`write_documents`, by `python -m memtrain_jax.tools.prepare`) to ArrayRecord files, record i = slot i, and read by
the stream (`stream.py`) instead of building documents on the fly.

The files live under the prepared data's folder (or `loader.array_record_dir`), keyed by the prepared data,
document settings, seed and tokenizer; files written for another key raise PreparedDataError. A slot whose pivot is
skipped holds `episodes.SKIPPED_RECORD`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import numpy as np

from memtrain_jax.atomic import cache_entry, content_key, write_directory_atomically
from memtrain_jax.data.documents import NoValidEntityError
from memtrain_jax.data.episodes import SKIPPED_RECORD, TokenCounter, build_episode_document
from memtrain_jax.data.prepare import Log, PreparedData, PreparedDataError, data_section
from memtrain_jax.tokenizer.base import Tokenizer, tokenizer_fingerprint


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
                    writer.write(SKIPPED_RECORD)  # keeps slot i at record i; the stream skips it
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


def open_documents(config: Any, prepared: PreparedData, tokenizer: Tokenizer) -> Any:
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
