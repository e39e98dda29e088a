"""Print one training document the way the pipeline builds it, and its chunks as the agent reads them.

    python -m memtrain_jax.tools.preview --config configs/data.py:cpu --index 0
    python -m memtrain_jax.tools.preview --config configs/data.py:cpu --index 3 --epoch 1 --probe_step 4

`--index` is a pivot slot (0 .. num_pivots-1), `--epoch` the epoch (documents are redrawn each
epoch). Builds the caches first when `prepare` has not run yet.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from memtrain_jax.data import prepare
from memtrain_jax.data.chunking import chunk_document
from memtrain_jax.data.documents import entity_leaks
from memtrain_jax.data.episodes import build_episode_document
from memtrain_jax.data.probes import make_probe, probe_rng

_CONFIG = config_flags.DEFINE_config_file("config", None, "Data config, e.g. configs/data.py:cpu.", lock_config=True)
_INDEX = flags.DEFINE_integer("index", 0, "Pivot slot to show.")
_EPOCH = flags.DEFINE_integer("epoch", 0, "Epoch (the document of a slot changes between epochs).")
_MAX_CHARS = flags.DEFINE_integer("max_chars", 0, "Cut the printed document/chunks to this many characters (0 = all).")
_PROBE_STEP = flags.DEFINE_integer("probe_step", 0, "Also show the recall probe at this step (0 = none).")


def _cut(text: str) -> str:
    n = _MAX_CHARS.value
    return text if n <= 0 or len(text) <= n else text[:n] + f" [... {len(text) - n} more characters]"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("Pass --config, e.g. --config configs/data.py:cpu")
    data = prepare.data_section(_CONFIG.value)
    pool = prepare.load_pool_from_config(data)
    tokenizer = prepare.load_tokenizer(data, pool)
    prepared = prepare.prepare_data(data, pool=pool, build=True)
    slot = _INDEX.value
    if not 0 <= slot < prepared.num_pivots:
        raise app.UsageError(f"--index={slot} must be in [0, {prepared.num_pivots}) (the number of pivots).")
    if _EPOCH.value < 0:
        raise app.UsageError(f"--epoch must be >= 0, got {_EPOCH.value}.")
    episode_id = _EPOCH.value * prepared.num_pivots + slot
    doc = build_episode_document(prepared, slot, episode_id, data, tokenizer)
    similar = set(doc.similar_indices)
    roles = [
        "pivot" if i == doc.pivot_index else "similar" if i in similar else "random" for i in doc.paragraph_indices
    ]

    print(f"=== episode {episode_id} (slot {slot}, epoch {_EPOCH.value}, seed {data.seed}) ===")
    print(f"pivot: {doc.pivot_id!r} (pool index {doc.pivot_index})")
    print(f"gold answer: {doc.gold!r}   mask token: {data.document.mask_token!r} x {doc.mask_count}")
    leaks = entity_leaks(doc.text, doc.gold)
    print(f"gold still readable in the masked text (leak, e.g. inside a longer word): {leaks}")
    print(
        f"paragraphs: {len(doc.paragraph_ids)} (similar {len(similar)}), estimated tokens {doc.estimated_tokens}, "
        f"in range: {doc.in_token_range}"
    )
    for position, (pid, role) in enumerate(zip(doc.paragraph_ids, roles, strict=True)):
        print(f"  Document {position + 1}: {role:7s} {pid}")
    print("\n=== document ===")
    print(_cut(doc.text))

    chunks = chunk_document(doc.text, tokenizer, data.chunking.chunk_size, data.chunking.max_chunks)
    kept = sum(text.count(data.document.mask_token) for text in chunks.texts)
    print(
        f"\n=== {chunks.num_chunks} chunks of <= {data.chunking.chunk_size} tokens "
        f"({chunks.num_tokens} tokens, {chunks.num_dropped} dropped from the middle; {kept} masks kept"
        + (": SKIPPED by the pipeline, nothing to reconstruct" if kept == 0 else "")
        + ") ==="
    )
    for i, (ids, text) in enumerate(zip(chunks.tokens, chunks.texts, strict=True)):
        print(f"\n--- chunk {i}: {len(ids)} tokens, {text.count(data.document.mask_token)} masks ---")
        print(_cut(text))

    if _PROBE_STEP.value:
        from memtrain_jax.data.entities import make_extractor

        extractor = make_extractor(
            data.entities.extractor, max_occurrences=data.entities.max_occurrences, max_words=data.entities.max_words
        )
        probe = make_probe(
            list(chunks.texts),
            _PROBE_STEP.value,
            probe_rng(data.seed, episode_id, _PROBE_STEP.value),
            extractor=extractor,
            mode=data.probes.mode,
            target_token=data.probes.target_token,
            max_occurrences=data.entities.max_occurrences,
            max_words=data.entities.max_words,
        )
        print(f"\n=== recall probe at step {_PROBE_STEP.value} (mode {data.probes.mode!r}) ===")
        if probe is None:
            print("no candidate chunk has a valid entity: no probe")
        else:
            print(f"chunk {probe.chunk_index}, gold {probe.gold!r}, {probe.mask_count} x {data.probes.target_token}")
            print(_cut(probe.masked_chunk))


if __name__ == "__main__":
    app.run(main)
