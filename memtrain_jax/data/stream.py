"""Stage 2 of the training-episode pipeline: the Grain stream of episodes and its checkpointable iterator.

`make_dataset(config, prepared, tokenizer)`: a Grain pipeline over pivot slots
    range(P) -> shuffle(seed, reshuffled each epoch) -> repeat(num_epochs)        (the global stream)
    -> this host's rows of every global batch of `batch_size` (`host_rows`)
    -> episode (build document on the fly, or read it from pre-built ArrayRecord files, `prebuilt.py`)
    -> batch(batch_size / hosts) -> iterator (threads; or worker processes)
One element (before batching) is an episode, a dict of numpy arrays (`episodes.EPISODE_FIELDS`); `prepared` comes
from stage 1 (`prepare.py`).

Determinism: an episode's document depends only on (seed, episode_id) (`episodes.py`). Hosts split every
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
import json
from collections.abc import Callable, Sequence
from typing import Any

import grain
import numpy as np

from memtrain_jax.data.documents import Document, NoValidEntityError
from memtrain_jax.data.episodes import SKIPPED_RECORD, TokenCounter, build_episode_document, episode_from_document
from memtrain_jax.data.prebuilt import open_documents
from memtrain_jax.data.prepare import PreparedData, data_section
from memtrain_jax.tokenizer.base import Tokenizer, tokenizer_fingerprint

DOCUMENT_MODES = ("on_the_fly", "array_record")


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
            document = None if record == SKIPPED_RECORD else Document.from_json(record)
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
    records = grain.MapDataset.source(open_documents(data, prepared, tokenizer))[:num_pivots] if prebuilt else None
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
