"""Everything a memory-agent job needs, built once from a training config (configs/memtrain.py).

`AgentSetup.build(config)` makes the mesh, loads the policy and its tokenizer (then the parameters
of another run's checkpoint when `init_from` names one), prepares the task's data, builds the prompt
builder, the sampler and the entity extractor for recall probes, and checks that every turn fits
the model's window, all before any rollout is computed. `rollout_step` runs one rollout and
assigns credit.

Tasks (`config.task`), one rollout and credit path for all of them:
- "memtrain": masked-Wikipedia documents (the data pipeline), memory agent + recall probes;
- "long_qa": QA records read in long contexts of `qa.train_num_docs` documents by the memory agent;
- "search_qa": multi-objective QA records answered by the search agent over the pool (BM25 or dense).
A QA task's stream is a Grain dataset of record slots: batches {"episode_id": [B] int64, "record": [B]
int32}; its items are the training records followed by the held-out dev records.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from memtrain_jax import compile_cache, sharding
from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import TrainingSequences, assign_credit
from memtrain_jax.agent.policy import SamplerPolicy
from memtrain_jax.agent.prompts import PromptBuilder, PromptConfig
from memtrain_jax.agent.qa import qa_episode
from memtrain_jax.agent.rollout import Episode, RolloutBatch, episodes_from_batch, rollout
from memtrain_jax.agent.search import SearchConfig, search_rollout
from memtrain_jax.checkpoint.orbax_io import restore_run_params
from memtrain_jax.checkpoint.policy import LoadedPolicy, load_policy
from memtrain_jax.data import pipeline, retrieval
from memtrain_jax.data import qa as qa_data
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.sampler import Sampler
from memtrain_jax.tokenizer.chat import ChatFormat, get_chat_format

Log = Callable[[str], None]
TASKS = ("memtrain", "long_qa", "search_qa")


@dataclasses.dataclass
class QATaskData:
    """A QA task's records (train, dev), the distractor paragraphs and, for search, the corpus and retriever."""

    train: list[qa_data.QARecord]
    dev: list[qa_data.QARecord]
    distractors: list[tuple[str, str]]
    corpus: list[tuple[str, str]]
    retriever: retrieval.Retriever | None = None

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, pool: list, *, search: bool, log: Log) -> QATaskData:
        """The `qa` section's files ("" = the sets prepared from the pool by the documented rule)."""
        qa, data = config.qa, config.data
        prepared = None
        if not qa.file or not qa.train_file:
            prepared = qa_data.prepare_qa_sets(
                pool, int(qa.num_dev), int(qa.num_train), int(data.seed), os.path.join(data.cache_dir, "qa"), log=log
            )
        dev = qa_data.load_qa_file(qa.file or prepared["dev"], qa.format)
        train = qa_data.load_qa_file(qa.train_file or prepared["train"], qa.format)
        if qa.limit > 0:
            dev = dev[: int(qa.limit)]
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
        return cls(train, dev, qa_data.distractor_pool(pool, [*train, *dev]), corpus, retriever)


def _process_0_first(build: Callable[[], Any]) -> Any:
    """`build()` (which writes the shared data caches when they are missing) on process 0, then on the other
    processes once it is done: one process writes a cache, every process reads it."""
    if jax.process_count() == 1:
        return build()
    result = build() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("memtrain: data caches ready")
    return result if jax.process_index() == 0 else build()


@dataclasses.dataclass
class AgentSetup:
    """The built pieces of a memory-agent job (see the module docstring)."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    rules: tuple
    policy: LoadedPolicy
    chat: ChatFormat
    builder: PromptBuilder
    agent: AgentConfig
    sampler: Sampler
    sampler_policy: SamplerPolicy
    prepared: pipeline.PreparedData | None
    extractor: Any
    task: str = "memtrain"
    qa: QATaskData | None = None
    search: SearchConfig | None = None
    init_step: int | None = None  # the step of the `init_from` checkpoint, when one was loaded

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, *, log: Log | None = print) -> AgentSetup:
        log = log or (lambda _: None)
        compile_cache.enable(config.get("compilation_cache", ""))  # before anything compiles
        task = config.get("task", "memtrain")
        if task not in TASKS:
            raise ValueError(f"config.task={task!r}; choose one of {TASKS}.")
        agent = AgentConfig.from_config(config)  # validates the agent's settings first
        search = SearchConfig.from_config(config.search, agent.group_size) if task == "search_qa" else None
        prompt_config = PromptConfig.from_config(config.prompts)
        mesh = sharding.make_mesh(tuple(config.mesh_shape))
        rules = sharding.rules_from_config(config.axis_rules)
        data = config.data
        pool = pipeline.load_pool_from_config(data)
        start = time.perf_counter()
        # A fresh model reads the data pipeline's own tokenizer; a checkpoint brings its tokenizer.
        data_tokenizer = (
            _process_0_first(lambda: pipeline.load_tokenizer(data, pool, log=log))
            if config.model.source == "init"
            else None
        )
        policy = load_policy(config.model, mesh, rules, seed=config.seed, tokenizer=data_tokenizer)
        log(
            f"[setup] policy: {policy.description}, {policy.model_config.num_params() / 1e6:.1f}M parameters, "
            f"loaded in {time.perf_counter() - start:.1f}s; mesh {dict(mesh.shape)}"
        )
        init_step = None
        if config.get("init_from"):
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), policy.params
            )
            init_step, policy.params = restore_run_params(config.init_from, abstract)
            policy.description += f", parameters of {config.init_from} step {init_step}"
            log(f"[setup] parameters from {config.init_from} (checkpoint step {init_step})")
        chat = get_chat_format(config.chat_format or policy.chat_format)
        builder = PromptBuilder(
            policy.tokenizer, chat, prompt_config, mask_token=agent.mask_token, target_token=agent.target_token
        )
        if task == "memtrain":
            prepared, qa = _process_0_first(lambda: pipeline.prepare_data(data, pool=pool, log=log)), None
        else:
            prepared = None
            qa = _process_0_first(lambda: QATaskData.build(config, pool, search=task == "search_qa", log=log))
        sampler = Sampler(policy.model_config, mesh, rules, pad_id=policy.tokenizer.pad_id)
        sampler_policy = SamplerPolicy(
            sampler,
            policy.params,
            chat.stop_tokens(policy.tokenizer),
            temperature=agent.temperature,
            top_p=agent.top_p,
            top_k=agent.top_k,
            max_rows=int(config.sampling.get("max_rows", 0)),
        )
        extractor = None
        if agent.imr:
            extractor = make_extractor(
                agent.probe_extractor, max_occurrences=agent.max_occurrences, max_words=agent.max_words
            )
        setup = cls(
            config,
            mesh,
            rules,
            policy,
            chat,
            builder,
            agent,
            sampler,
            sampler_policy,
            prepared,
            extractor,
            task,
            qa,
            search,
            init_step,
        )
        window = policy.model_config.max_position_embeddings  # the one check of every task's turns
        too_long = {k: v for k, v in setup.sequence_lengths().items() if v > window}
        if too_long:
            raise ValueError(
                f"{task} turns do not fit the model's window of {window} positions: {too_long} tokens (prompt + "
                f"reply; longest question {setup.max_problem_tokens()} tokens). Lower data.chunking.chunk_size, the "
                "agent's token budgets or search.information_tokens, or use a model with a longer window."
            )
        return setup

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    # ----------------------------------------------------------------------- the task's items and stream

    def _qa_records(self) -> list[qa_data.QARecord]:
        """A QA task's items: the training records, then the dev records (held out by the trainer)."""
        assert self.qa is not None
        return [*self.qa.train, *self.qa.dev]

    @property
    def num_items(self) -> int:
        """Pivot slots (memtrain) or QA records (training + dev) of the task."""
        return self.prepared.num_pivots if self.task == "memtrain" else len(self._qa_records())

    def split_items(self, eval_episodes: int) -> tuple[int, list[int]]:
        """(training slots: the first items, held-out evaluation slots). memtrain: the last pivots whose episodes
        are usable, `eval_episodes` of them (an episode whose every mask falls beyond `max_chunks` is skipped by
        the rollout, so it would not be evaluated) or as many as there are while at least one pivot trains; QA:
        every training record trains, the first dev records are held out."""
        if self.task == "memtrain":
            wanted, first, slots = max(0, eval_episodes), self.num_items, []
            while len(slots) < wanted and first > 1:
                block = list(range(max(1, first - (wanted - len(slots))), first))
                usable = self.eval_batch(block)["usable"]
                slots += [s for s, ok in zip(block, usable, strict=True) if ok][::-1][: wanted - len(slots)]
                first = block[0] if len(slots) < wanted else min(slots)
            return first, sorted(slots)
        train = len(self.qa.train)
        return train, list(range(train, train + max(0, min(eval_episodes, len(self.qa.dev)))))

    def dataset(self, **kw: Any) -> grain.IterDataset:
        """This host's episode stream (memtrain: chunks cut in the policy's tokenizer; QA: record slots), through
        the pipeline's one stream wiring."""
        if self.task == "memtrain":
            return pipeline.make_dataset(self.config.data, self.prepared, self.tokenizer, **kw)
        num_slots = kw.pop("num_slots", None) or self.num_items
        return pipeline.slot_stream(self.config.data, num_slots, _RecordSlot(num_slots, self.num_items), **kw)

    def eval_batch(self, slots: Any) -> dict[str, np.ndarray]:
        """The fixed batch of items `slots` (epoch 0), e.g. the held-out evaluation episodes."""
        if self.task == "memtrain":
            return pipeline.episode_batch(self.config.data, self.prepared, self.tokenizer, slots)
        slots = np.asarray(slots, np.int64)
        return {"episode_id": slots, "record": slots.astype(np.int32)}

    def episodes(self, batch: Mapping[str, np.ndarray]) -> tuple[list[Episode], int]:
        """(usable episodes, number skipped) of a batch of the task's stream (the long-text QA contexts are
        built here: `qa.train_num_docs` documents, distractors drawn by the episode's epoch)."""
        if self.task == "memtrain":
            return episodes_from_batch(batch, self.tokenizer)
        records = self._qa_records()
        episodes = []
        for episode_id, slot in zip(batch["episode_id"], batch["record"], strict=True):
            epoch = int(episode_id) // self.num_items
            context = qa_data.build_context(
                records[int(slot)],
                self.qa.distractors,
                int(self.config.data.seed) + epoch,
                num_docs=int(self.config.qa.train_num_docs),
                header=self.config.data.document.header,
            )
            episodes.append(qa_episode(context, int(episode_id), self.builder, self.agent.chunk_size))
        return episodes, 0

    def records(self, batch: Mapping[str, np.ndarray]) -> list[qa_data.QARecord]:
        """A QA task's records of a batch of its stream."""
        records = self._qa_records()
        return [records[int(i)] for i in batch["record"]]

    def rollout(
        self, batch: Mapping[str, np.ndarray], step: int, policy: Any = None, agent: AgentConfig | None = None
    ) -> RolloutBatch | None:
        """One rollout of a batch with the current parameters (or another `policy`, or agent settings such as
        evaluation's one greedy trajectory); None when no episode of the batch is usable."""
        agent = agent or self.agent
        if self.task == "search_qa":
            return search_rollout(
                policy or self.sampler_policy,
                self.records(batch),
                self.builder,
                self.tokenizer,
                self.qa.retriever,
                self.qa.corpus,
                dataclasses.replace(self.search, group_size=agent.group_size),
                seed=self.config.seed,
                step=step,
                episode_ids=[int(i) for i in batch["episode_id"]],
            )
        episodes, skipped = self.episodes(batch)
        if not episodes:
            return None
        return rollout(
            policy or self.sampler_policy,
            episodes,
            self.builder,
            self.tokenizer,
            agent,
            seed=self.config.seed,
            step=step,
            extractor=self.extractor,
            window=self.policy.model_config.max_position_embeddings,
            episodes_skipped=skipped,
        )

    # ----------------------------------------------------------------------- sizes

    def max_problem_tokens(self) -> int:
        """The longest question in tokens (memtrain: its one problem)."""
        if self.task == "memtrain":
            return len(self.builder.problem_ids)
        return max(len(self.builder.encode_problem(r.question)) for r in self._qa_records())

    def reply_tokens(self) -> int:
        """The longest reply budget of any turn."""
        budgets = [self.agent.memory_tokens, self.agent.answer_tokens, self.agent.recall_tokens]
        return max(budgets + ([self.search.turn_tokens] if self.search else []))

    def sequence_lengths(self) -> dict[str, int]:
        """The longest prompt + reply of each kind of turn of the task, in tokens."""
        problem, no_memory = self.max_problem_tokens(), len(self.builder.no_memory_ids)
        if self.task == "search_qa":
            s = self.search
            return {
                "search": self.builder.overhead("search")
                + problem
                + max(s.turn_tokens, no_memory)
                + s.information_tokens
                + s.turn_tokens
            }
        overhead = {name: self.builder.overhead(name) for name in ("memory", "final", "recall")}
        lengths = self.agent.prompt_lengths(overhead, problem, no_memory)
        if not self.agent.imr:
            lengths.pop("recall")
        return lengths

    def rollout_step(
        self, batch: Mapping[str, np.ndarray], step: int
    ) -> tuple[RolloutBatch, TrainingSequences, dict[str, Any]] | None:
        """Rollout + credit of one pipeline batch: (rollout, training sequences, metrics); None as `rollout`."""
        result = self.rollout(batch, step)
        if result is None:
            return None
        sequences, metrics = assign_credit(result, self.agent)
        return result, sequences, metrics


class _RecordSlot:
    """A QA stream's element: the record at a slot, its episode id unique across epochs (epoch * items + slot)."""

    def __init__(self, num_slots: int, total: int):
        self.num_slots, self.total = num_slots, total

    def __call__(self, index: int, item: tuple[int, Any]) -> dict[str, np.ndarray]:
        slot = int(item[0])
        return {"episode_id": np.int64((index // self.num_slots) * self.total + slot), "record": np.int32(slot)}
