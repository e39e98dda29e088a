"""Everything a memory-agent job needs, built once from a training config (configs/memtrain.py).

`AgentSetup.build(config)` makes the mesh, loads the policy and its tokenizer (then the parameters
of another run's checkpoint when `init_from` names one), builds the prompt builder, the sampler and the
entity extractor for recall probes, builds the task named by `config.task` (tasks/<name>.py, which prepares
its data), and checks that every turn fits the model's window, all before any rollout is computed.
The task methods (items, stream, rollout, lengths) forward to the task; `rollout_step` runs one rollout and
assigns credit, one credit path for every task.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from memtrain_jax import compile_cache, sharding
from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import TrainingSequences, assign_credit
from memtrain_jax.agent.policy import SamplerPolicy
from memtrain_jax.agent.prompts import PromptBuilder, PromptConfig
from memtrain_jax.agent.rollout import RolloutBatch
from memtrain_jax.checkpoint.orbax_io import restore_run_params
from memtrain_jax.checkpoint.policy import LoadedPolicy, load_policy
from memtrain_jax.config import split_run_step
from memtrain_jax.data import prepare
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.sampler import Buckets, Sampler
from memtrain_jax.tasks.base import Task, process_0_first, task_type
from memtrain_jax.tokenizer.chat import ChatFormat, get_chat_format

Log = Callable[[str], None]


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
    extractor: Any
    task_impl: Task  # the task's module (tasks/<name>.py) with its data
    init_step: int | None = None  # the step of the `init_from` checkpoint, when one was loaded

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, *, log: Log | None = print) -> AgentSetup:
        log = log or (lambda _: None)
        compile_cache.enable(config.get("compilation_cache", ""))  # before anything compiles
        task_cls = task_type(config.get("task", "memtrain"))
        agent = AgentConfig.from_config(config)  # validates the agent's settings first
        prompt_config = PromptConfig.from_config(config.prompts)
        mesh = sharding.make_mesh(tuple(config.mesh_shape))
        rules = sharding.rules_from_config(config.axis_rules)
        data = config.data
        pool = prepare.load_pool_from_config(data)
        start = time.perf_counter()
        # A fresh model reads the data pipeline's own tokenizer; a checkpoint brings its tokenizer.
        data_tokenizer = (
            process_0_first(lambda: prepare.load_tokenizer(data, pool, log=log))
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
            workdir, step = split_run_step(config.init_from, "init_from")
            init_step, policy.params = restore_run_params(workdir, abstract, step)
            policy.description += f", parameters of {config.init_from} step {init_step}"
            log(f"[setup] parameters from {config.init_from} (checkpoint step {init_step})")
        chat = get_chat_format(config.chat_format or policy.chat_format)
        builder = PromptBuilder(
            policy.tokenizer, chat, prompt_config, mask_token=agent.mask_token, target_token=agent.target_token
        )
        task_impl = task_cls.build(config, pool, agent, log=log)
        sampler = Sampler(policy.model_config, mesh, rules, Buckets.from_config(config), pad_id=policy.tokenizer.pad_id)
        sampler_policy = SamplerPolicy(
            sampler,
            policy.params,
            chat.stop_tokens(policy.tokenizer),
            temperature=agent.temperature,
            top_p=agent.top_p,
            top_k=agent.top_k,
            max_rows=int(config.sampling.get("max_rows", 0)),
            kind_temperatures={"memory": 0.0} if agent.greedy_memory else None,
        )
        extractor = None
        if agent.imr:
            extractor = make_extractor(
                agent.probe_extractor, max_occurrences=agent.probe_max_occurrences, max_words=agent.max_words
            )
        setup = cls(
            config, mesh, rules, policy, chat, builder, agent, sampler, sampler_policy, extractor, task_impl, init_step
        )
        window = policy.model_config.max_position_embeddings  # the one check of every task's turns
        too_long = {k: v for k, v in setup.sequence_lengths().items() if v > window}
        if too_long:
            raise ValueError(
                f"{setup.task} turns do not fit the model's window of {window} positions: {too_long} tokens (prompt "
                f"+ reply; longest question {setup.max_problem_tokens()} tokens). Lower data.chunking.chunk_size, "
                "the agent's token budgets or search.information_tokens, or use a model with a longer window."
            )
        return setup

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    @property
    def task(self) -> str:
        """The task's name (`config.task`)."""
        return self.task_impl.name

    @property
    def prepared(self) -> prepare.PreparedData | None:
        """MemTrain's prepared pivots (None for the QA tasks)."""
        return getattr(self.task_impl, "prepared", None)

    @property
    def qa(self) -> Any:
        """A QA task's records (QATaskData; None for MemTrain)."""
        return getattr(self.task_impl, "qa", None)

    @property
    def search(self) -> Any:
        """The search task's settings (SearchConfig; None for the other tasks)."""
        return getattr(self.task_impl, "settings", None)

    # ----------------------------------------------------------------------- the task's items, stream and turns

    @property
    def num_items(self) -> int:
        """Pivot slots (memtrain) or QA records (training + dev) of the task."""
        return self.task_impl.num_items()

    def split_items(self, eval_episodes: int) -> tuple[int, list[int]]:
        """(training slots: the first items, held-out evaluation slots), as the task splits them."""
        return self.task_impl.split_items(self, eval_episodes)

    def dataset(self, **kw: Any) -> grain.IterDataset:
        """This host's stream of the task's training batches."""
        return self.task_impl.dataset(self, **kw)

    def eval_batch(self, slots: Any) -> dict[str, np.ndarray]:
        """The fixed batch of items `slots` (epoch 0), e.g. the held-out evaluation episodes."""
        return self.task_impl.eval_batch(self, slots)

    def episodes(self, batch: Mapping[str, np.ndarray]) -> tuple[list, int]:
        """(usable episodes, number skipped) of a batch of a memory-agent task (memtrain, long_qa)."""
        return self.task_impl.episodes(self, batch)

    def rollout(
        self, batch: Mapping[str, np.ndarray], step: int, policy: Any = None, agent: AgentConfig | None = None
    ) -> RolloutBatch | None:
        """One rollout of a batch with the current parameters (or another `policy`, or agent settings such as
        evaluation's one greedy trajectory); None when no episode of the batch is usable."""
        return self.task_impl.rollout(self, batch, step, policy or self.sampler_policy, agent or self.agent)

    def max_problem_tokens(self) -> int:
        """The longest question in tokens (memtrain: its one problem)."""
        return self.task_impl.max_problem_tokens(self)

    def reply_budgets(self) -> list[int]:
        """The reply budget of each kind of turn."""
        budgets = [self.agent.memory_tokens, self.agent.answer_tokens, self.agent.recall_tokens]
        return budgets + ([self.search.turn_tokens] if self.search else [])

    def reply_tokens(self) -> int:
        """The longest reply budget of any turn."""
        return max(self.reply_budgets())

    def sequence_lengths(self) -> dict[str, int]:
        """The longest prompt + reply of each kind of turn of the task, in tokens."""
        return self.task_impl.sequence_lengths(self)

    def rollout_step(
        self, batch: Mapping[str, np.ndarray], step: int
    ) -> tuple[RolloutBatch, TrainingSequences, dict[str, Any]] | None:
        """Rollout + credit of one pipeline batch: (rollout, training sequences, metrics); None as `rollout`."""
        result = self.rollout(batch, step)
        if result is None:
            return None
        sequences, metrics = assign_credit(result, self.agent)
        return result, sequences, metrics
