"""Everything a memory-agent job needs, built once from a training config (configs/memtrain.py).

`AgentSetup.build(config)` makes the mesh, loads the policy and its tokenizer, prepares the
masked-Wikipedia data in the policy's tokenizer, builds the prompt builder, the sampler and the
entity extractor for recall probes, and checks that every turn fits the model's window, all
before any rollout is computed. `rollout_step` runs one rollout and assigns credit.
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

from memtrain_jax import sharding
from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import TrainingSequences, assign_credit
from memtrain_jax.agent.policy import SamplerPolicy
from memtrain_jax.agent.prompts import PromptBuilder, PromptConfig
from memtrain_jax.agent.rollout import RolloutBatch, episodes_from_batch, rollout
from memtrain_jax.checkpoint.policy import LoadedPolicy, load_policy
from memtrain_jax.data import pipeline
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.sampler import Sampler
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
    prepared: pipeline.PreparedData
    extractor: Any

    @classmethod
    def build(cls, config: ml_collections.ConfigDict, *, log: Log | None = print) -> AgentSetup:
        log = log or (lambda _: None)
        agent = AgentConfig.from_config(config)  # validates the agent's settings first
        prompt_config = PromptConfig.from_config(config.prompts)
        mesh = sharding.make_mesh(tuple(config.mesh_shape))
        rules = sharding.rules_from_config(config.axis_rules)
        data = config.data
        pool = pipeline.load_pool_from_config(data)
        start = time.perf_counter()
        # A fresh model reads the data pipeline's own tokenizer; a checkpoint brings its tokenizer.
        data_tokenizer = pipeline.load_tokenizer(data, pool, log=log) if config.model.source == "init" else None
        policy = load_policy(config.model, mesh, rules, seed=config.seed, tokenizer=data_tokenizer)
        log(
            f"[setup] policy: {policy.description}, {policy.model_config.num_params() / 1e6:.1f}M parameters, "
            f"loaded in {time.perf_counter() - start:.1f}s; mesh {dict(mesh.shape)}"
        )
        chat = get_chat_format(config.chat_format or policy.chat_format)
        builder = PromptBuilder(policy.tokenizer, chat, prompt_config, mask_token=agent.mask_token)
        overhead = {name: builder.overhead(name) for name in ("memory", "final", "recall")}
        agent.check_window(
            overhead, len(builder.problem_ids), len(builder.no_memory_ids), policy.model_config.max_position_embeddings
        )
        prepared = pipeline.prepare_data(data, pool=pool, log=log)
        sampler = Sampler(policy.model_config, mesh, rules, pad_id=policy.tokenizer.pad_id)
        sampler_policy = SamplerPolicy(
            sampler,
            policy.params,
            chat.stop_tokens(policy.tokenizer),
            temperature=agent.temperature,
            top_p=agent.top_p,
            top_k=agent.top_k,
        )
        extractor = None
        if agent.imr:
            extractor = make_extractor(
                agent.probe_extractor, max_occurrences=agent.max_occurrences, max_words=agent.max_words
            )
        return cls(config, mesh, rules, policy, chat, builder, agent, sampler, sampler_policy, prepared, extractor)

    @property
    def tokenizer(self):
        return self.policy.tokenizer

    def dataset(self, **kw: Any) -> grain.IterDataset:
        """This host's episode stream, chunks cut in the policy's tokenizer."""
        return pipeline.make_dataset(self.config.data, self.prepared, self.tokenizer, **kw)

    def rollout(self, batch: Mapping[str, np.ndarray], step: int, policy: Any = None) -> RolloutBatch | None:
        """One rollout of a pipeline batch with the current parameters (or another `policy`); None when no
        episode of the batch is usable (every one skipped by the pipeline)."""
        episodes, skipped = episodes_from_batch(batch, self.tokenizer)
        if not episodes:
            return None
        return rollout(
            policy or self.sampler_policy,
            episodes,
            self.builder,
            self.tokenizer,
            self.agent,
            seed=self.config.seed,
            step=step,
            extractor=self.extractor,
            window=self.policy.model_config.max_position_embeddings,
            episodes_skipped=skipped,
        )

    def rollout_step(
        self, batch: Mapping[str, np.ndarray], step: int
    ) -> tuple[RolloutBatch, TrainingSequences, dict[str, Any]] | None:
        """Rollout + credit of one pipeline batch: (rollout, training sequences, metrics); None as `rollout`."""
        result = self.rollout(batch, step)
        if result is None:
            return None
        sequences, metrics = assign_credit(result, self.agent)
        return result, sequences, metrics
