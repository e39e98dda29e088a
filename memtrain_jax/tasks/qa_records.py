"""What the QA tasks share: their records (training, then the held-out dev set), the distractor paragraphs and,
for search, the corpus and retriever; and the stream of record slots, a Grain dataset of batches
{"episode_id": [B] int64, "record": [B] int32} whose items are the training records followed by the dev ones."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import grain
import ml_collections
import numpy as np

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.data import qa as qa_data
from memtrain_jax.data import retrieval, stream
from memtrain_jax.tasks.base import Log, process_0_first


@dataclasses.dataclass
class QATaskData:
    """A QA task's records (train, dev), the distractor paragraphs and, for search, the corpus and retriever."""

    train: list[qa_data.QARecord]
    dev: list[qa_data.QARecord]
    distractors: list[tuple[str, str]]
    corpus: list[tuple[str, str]]
    retriever: retrieval.Retriever | None = None
    # search: the dev questions before they are joined into multi-objective ones (evaluated k at a time)
    dev_questions: list[qa_data.QARecord] = dataclasses.field(default_factory=list)

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, pool: list, *, search: bool, log: Log) -> QATaskData:
        """The `qa` section's files ("" = the sets prepared from the pool by the documented rule)."""
        qa, data = config.qa, config.data
        prepared = None
        if not qa.file or not qa.train_file:
            prepared = qa_data.prepare_qa_sets(
                pool,
                int(qa.num_dev),
                int(qa.num_train),
                int(data.seed),
                os.path.join(data.cache_dir, "qa"),
                skip=int(qa.train_skip),
                log=log,
            )
        dev = qa_data.load_qa_file(qa.file or prepared["dev"], qa.format)
        train = qa_data.load_qa_file(qa.train_file or prepared["train"], qa.format)
        if qa.limit > 0:
            dev = dev[: int(qa.limit)]
        dev_questions = dev
        if search:
            dev = qa_data.multi_objective(dev, int(qa.num_objectives), int(data.seed))
            train = qa_data.multi_objective(train, int(qa.num_objectives), int(data.seed))
        corpus = [(p.title, p.text) for p in pool]
        retriever = None
        if search:
            retriever = retrieval.retriever_from_config(data.retrieval)
            retrieval.load_or_build_index(
                retriever,
                pool,
                os.path.join(data.cache_dir, "retrieval"),
                rebuild=bool(data.retrieval.rebuild),
                log=log,
            )
        distractors = qa_data.distractor_pool(pool, [*train, *dev])
        return cls(train, dev, distractors, corpus, retriever, dev_questions)


class QARecordsTask:
    """The record-slot half of a QA task (items, split, stream, fixed batches); subclasses roll records out."""

    search: bool = False

    def __init__(self, config: ml_collections.ConfigDict, qa: QATaskData):
        self.config, self.qa = config, qa

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, pool: list, agent: AgentConfig, *, log: Log) -> Any:
        return cls(config, cls.load_records(config, pool, log))

    @classmethod
    def load_records(cls, config: ml_collections.ConfigDict, pool: list, log: Log) -> QATaskData:
        return process_0_first(lambda: QATaskData.build(config, pool, search=cls.search, log=log))

    def all_records(self) -> list[qa_data.QARecord]:
        """The items: the training records, then the dev records (held out by the trainer)."""
        return [*self.qa.train, *self.qa.dev]

    def num_items(self) -> int:
        return len(self.qa.train) + len(self.qa.dev)

    def split_items(self, setup: Any, eval_episodes: int) -> tuple[int, list[int]]:
        """Every training record trains; the first dev records are held out."""
        train = len(self.qa.train)
        return train, list(range(train, train + max(0, min(eval_episodes, len(self.qa.dev)))))

    def dataset(self, setup: Any, **kw: Any) -> grain.IterDataset:
        """Record slots, through the data stream's one wiring (`stream.slot_stream`)."""
        num_slots = kw.pop("num_slots", None) or self.num_items()
        return stream.slot_stream(self.config.data, num_slots, RecordSlot(num_slots, self.num_items()), **kw)

    def eval_batch(self, setup: Any, slots: Any) -> dict[str, np.ndarray]:
        slots = np.asarray(slots, np.int64)
        return {"episode_id": slots, "record": slots.astype(np.int32)}

    def records(self, batch: Mapping[str, np.ndarray]) -> list[qa_data.QARecord]:
        """The records of a batch of the stream."""
        records = self.all_records()
        return [records[int(i)] for i in batch["record"]]


class RecordSlot:
    """A QA stream's element: the record at a slot, its episode id unique across epochs (epoch * items + slot)."""

    def __init__(self, num_slots: int, total: int):
        self.num_slots, self.total = num_slots, total

    def __call__(self, index: int, item: tuple[int, Any]) -> dict[str, np.ndarray]:
        slot = int(item[0])
        return {"episode_id": np.int64((index // self.num_slots) * self.total + slot), "record": np.int32(slot)}
