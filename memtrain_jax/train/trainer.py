"""MemTrain's training loop: rollouts -> rewards -> advantages -> update -> metrics -> checkpoint.

    ---------------------------------------------------------------- set-up (before any compute)
    AgentSetup.build(config)     mesh, policy + tokenizer (or init_from a run's parameters), the task's data
                                 (memtrain: masked-Wikipedia episodes; long_qa / search_qa: QA records),
                                 prompts, sampler; every turn checked against the model's window
    lock_workdir, record_start   one writer per workdir (an OS lock); a resume with other settings than the
                                 run's is refused before any model loads; each start is added to the history
    check_workdir                a workdir of another model or tokenizer is refused
    Learner                      jitted accumulate / apply / score programs with the config's shardings
    RunCheckpointer.restore      the latest readable checkpoint: state, data position, phase
    ---------------------------------------------------------------- one step
    format steps (train.format_steps)    answer/memory-format examples of the batch (tasks/format.py), cross-entropy
    GRPO steps                           rollout (agent) -> credit (agent.credit) -> for each of
                                         rl.updates_per_batch mini-batches: pack into length buckets ->
                                         accumulate gradients -> one AdamW step
    metrics                              metrics.jsonl, TensorBoard, console; sample memories every N steps
    checkpoint                           every N steps (async), at the end, and on SIGTERM (preemption)
    evaluation                           greedy, on held-out episodes, every N steps and before/after

Determinism: rollout randomness comes from (seed, step, call), the data order from the Grain
iterator (checkpointed), the initialisation from the seed; a resumed run continues the same stream.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np

from memtrain_jax import sharding
from memtrain_jax.agent import AgentConfig, SamplerPolicy, TrainingSequences, assign_credit, trajectory_rewards
from memtrain_jax.config import MODEL_RUN_CHOICES, UsageError, section_values
from memtrain_jax.rl.config import RLConfig
from memtrain_jax.rl.loss import aggregation_weights
from memtrain_jax.tasks import MEMORY_TARGETS, AgentSetup
from memtrain_jax.tokenizer.base import tokenizer_fingerprint
from memtrain_jax.train.batching import (
    LengthBuckets,
    MicroBatch,
    SharedPromptBatch,
    pack,
    pack_shared,
    shared_prompt_groups,
)
from memtrain_jax.train.checkpoints import RunCheckpointer, check_workdir
from memtrain_jax.train.learner import Learner, OptimConfig, TrainState
from memtrain_jax.train.metrics import MetricWriter
from memtrain_jax.train.workdir import CONFIG_FILE, WriteFailedError, check_config, lock_workdir, record_start

__all__ = ["CONFIG_FILE", "EVAL_KEYS", "STEP_KEYS", "TrainConfig", "Trainer", "run_identity"]

Log = Callable[[str], None]
# Every record of metrics.jsonl has these keys (null where a step has no such figure, e.g. no rollout in
# the format warm-up, no loss when the DAPO filter dropped every trained group).
STEP_KEYS = (
    "step",
    "phase",
    "reward_e2e",
    "acc_e2e",
    "reward_recall",
    "acc_recall",
    "loss",
    "kl",
    "clip_fraction",
    "entropy",
    "rollout_s",
    "update_s",
    "step_s",
)
EVAL_SEED_STEP = 2**31 - 1  # the rollout step that seeds sampled evaluations (training steps never reach it)
EVAL_KEYS = ("acc_e2e", "reward_e2e", "acc_recall", "reward_recall", "missing_box_answer", "missing_box_recall")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The `train` config section (see configs/memtrain.py for what each field means)."""

    steps: int = 300
    format_steps: int = 0
    format_memory: str = "masked_first"
    format_recall_entities: int = 1
    micro_batch_size: int = 8
    length_block: int = 256
    logprob_chunk: int = 256
    trainable_layers: int = 0
    lora_rank: int = 0
    lora_alpha: float = 32.0
    share_prompts: bool = True
    log_every: int = 1
    sample_every: int = 10
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    eval_every: int = 50
    eval_episodes: int = 16
    eval_before: bool = True
    # Per held-out episode: 1 = one greedy trajectory and recall answer; K > 1 = K trajectories and K recall answers
    # sampled at the rollout temperature, each episode's figures their mean (avg@K: what GRPO optimises, with less
    # noise per episode than one greedy sample).
    eval_samples: int = 1
    # Per held-out episode, greedy: P > 1 recall probes (trajectory k's probe, k < P) answered from memories and a
    # final answer decoded once; each episode's recall its mean over the P probes (more probes, less noise per
    # episode; probe 0 is the one-probe evaluation's). Not with eval_samples > 1.
    eval_probes: int = 1

    @classmethod
    def from_config(cls, section: Any) -> TrainConfig:
        config = cls(**section_values(cls, section, "train"))
        for name in (
            "steps",
            "micro_batch_size",
            "length_block",
            "logprob_chunk",
            "log_every",
            "format_recall_entities",
            "eval_samples",
            "eval_probes",
        ):
            if getattr(config, name) < 1:
                raise UsageError(f"train.{name} must be >= 1, got {getattr(config, name)}.")
        if config.lora_rank < 0 or (config.lora_rank and config.lora_alpha <= 0):
            raise UsageError(
                f"train.lora_rank must be >= 0 (0: no adapters) and train.lora_alpha > 0, got {config.lora_rank} "
                f"and {config.lora_alpha}."
            )
        if config.checkpoint_every < 0:
            raise UsageError(f"train.checkpoint_every must be >= 1 (0: no checkpoints), got {config.checkpoint_every}.")
        if config.checkpoint_every and config.keep_checkpoints < 1:
            raise UsageError(
                f"train.keep_checkpoints={config.keep_checkpoints} would keep no checkpoint of this run: keep at "
                "least 1, or turn checkpointing off explicitly with train.checkpoint_every=0."
            )
        if config.format_memory not in MEMORY_TARGETS:
            raise UsageError(f"Unknown train.format_memory {config.format_memory!r}; choose one of {MEMORY_TARGETS}.")
        check_eval_kind(config.eval_samples, config.eval_probes)
        if not 0 <= config.format_steps <= config.steps:
            raise ValueError(
                f"train.format_steps must be in [0, train.steps={config.steps}], got {config.format_steps}."
            )
        return config


def run_identity(setup: AgentSetup) -> dict[str, Any]:
    """What a workdir trains: the model's shapes, the tokenizer and the seed (checked on every restart).

    The run choices (attention backend and blocks, dtypes, remat, scanned layers) are left out: they change how,
    not what, the model computes.
    """
    model = setup.policy.model_config.to_dict()
    for key in MODEL_RUN_CHOICES:
        model.pop(key, None)
    return {
        "model_config": model,
        "tokenizer": tokenizer_fingerprint(setup.tokenizer),
        "seed": int(setup.config.seed),
    }


class Trainer:
    """Builds a run from a config and a workdir; `train()` runs (or resumes) it to `train.steps`.

    A writer (the default) holds the workdir's lock from construction to the end of `train()` (or `close()`),
    and records the start in the config history; a resume whose settings differ from the run's is refused
    unless `allow_config_change`. Readers (`writer=False`: eval, export) neither lock nor write.
    """

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        workdir: str,
        *,
        log: Log = print,
        allow_config_change: bool = False,
        writer: bool = True,
    ):
        self.config, self.workdir, self.log = config, workdir, log
        self.lock = None
        self.train_config = TrainConfig.from_config(config.train)  # the cheap checks first
        if writer:
            self.lock = lock_workdir(workdir)
        try:
            changes = check_config(workdir, config, allow_changes=allow_config_change) if writer else {}
            self._build(config, workdir, log, writer)
            if writer:
                record_start(workdir, config, changes)
                if changes:
                    log(f"[train] settings changed since the last start: {', '.join(changes)}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Releases the workdir's lock (idempotent)."""
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def _build(self, config: ml_collections.ConfigDict, workdir: str, log: Log, writer: bool) -> None:
        self.optim = dataclasses.replace(
            OptimConfig.from_config(config.optim), format_steps=self.train_config.format_steps
        )
        self.rl = RLConfig.from_config(config.rl)
        self.loss_config = self.rl.loss
        if writer:
            AgentConfig.from_config(config).check_trains()  # before the model loads
        self.setup = AgentSetup.build(config, log=log)
        check_workdir(workdir, run_identity(self.setup), write=writer)
        setup = self.setup
        if self.train_config.format_steps and not setup.task_impl.has_format_warmup:
            raise ValueError(
                f"train.format_steps={self.train_config.format_steps}: the format warm-up builds MemTrain's "
                f"masked-entity examples (memtrain) or MEM1's search turns (search_qa), none for task {setup.task!r}; "
                "set it to 0."
            )
        lengths = setup.sequence_lengths()
        block = self.train_config.length_block
        self.buckets = LengthBuckets(block, -(-max(lengths.values()) // block) * block)
        # Responses are scored over a fixed window per micro-batch: the smallest reply budget (in multiples of 8)
        # that holds its longest response, so recall answers do not pay for the memory's window.
        self.windows = tuple(sorted({-(-b // 8) * 8 for b in setup.reply_budgets()}))
        self.window = self.windows[-1]
        self.learner = Learner.from_config(
            config,
            setup.policy.model_config,
            setup.mesh,
            setup.rules,
            optim=self.optim,
            temperature=setup.agent.temperature,  # the rollouts' own (one source: AgentConfig)
        )
        micro = self.train_config.micro_batch_size
        if micro % self.learner.batch_multiple:
            raise ValueError(
                f"train.micro_batch_size={micro} must be a multiple of the batch shards "
                f"({self.learner.batch_multiple}) of the mesh."
            )
        self.train_slots, self.eval_slots = setup.split_items(self.train_config.eval_episodes)
        batch = int(config.data.loader.batch_size)
        if self.train_slots < batch:
            raise UsageError(
                f"train.eval_episodes={self.train_config.eval_episodes} leaves {self.train_slots} of the task's "
                f"{setup.num_items} items for training, fewer than the {batch} a step needs (data.loader.batch_size): "
                "lower train.eval_episodes or add data (data.num_documents, qa.num_train)."
            )
        # greedy; calls of at most sampling.max_rows rows, as the rollouts' (a P-probe evaluation has P x the rows)
        self.eval_policy = SamplerPolicy(
            setup.sampler,
            setup.policy.params,
            setup.chat.stop_tokens(setup.tokenizer),
            temperature=0.0,
            max_rows=setup.sampler_policy.max_rows,
        )
        self.checkpointer = RunCheckpointer(
            workdir,
            max_to_keep=max(1, self.train_config.keep_checkpoints),
            keep_steps=(self.train_config.format_steps,) if self.train_config.format_steps else (),
            asynchronous=self.train_config.async_checkpoints,
        )
        self.stop_id = setup.chat.stop_tokens(setup.tokenizer)[0]
        self._sigterm = False  # set by the handler, never cleared; the loop acts on the hosts' agreed value
        self.last_eval_sample = ""

    # ------------------------------------------------------------------------------- state

    def initial_state(self) -> TrainState:
        # LoRA's factors are drawn from the seed (a stream of their own, apart from the rollouts').
        key = jax.random.fold_in(jax.random.key(int(self.config.seed)), 17)
        return self.learner.init_state(self.setup.policy.params, key=key)

    def restore(
        self, iterator: Any, step: int | None = None, like: TrainState | None = None
    ) -> tuple[int, TrainState, dict] | None:
        """(step, state, meta) of checkpoint `step` (else the latest readable one), `iterator` moved to its data
        position; None when the run has no checkpoint. `like`: a state of the run's shapes and shardings (default
        `initial_state()`)."""
        like = self.initial_state() if like is None else like
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), like)
        return self.checkpointer.restore(abstract, iterator, step)

    def restore_or_init(self, iterator: Any) -> tuple[int, TrainState]:
        """(steps done, state): the latest readable checkpoint (iterator moved to its position), or a fresh state."""
        state = self.initial_state()
        restored = self.restore(iterator, like=state)
        if restored is None:
            return 0, state
        step, state, meta = restored
        self.log(f"[train] resumed from step {step} of {self.checkpointer.directory} (phase {meta.get('phase')})")
        return step, state

    # ------------------------------------------------------------------------------- steps

    def _updates(self, state: TrainState, sequences: TrainingSequences, objective: str, step: int):
        """rl.updates_per_batch optimiser steps over mini-batches of `sequences`; returns (state, metrics)."""
        rl = self.rl
        aggregation = self.loss_config.aggregation if objective == "grpo" else "token_mean"
        lengths = np.asarray([m.sum() for m in sequences.loss_masks])
        constant = self.setup.reply_tokens()
        weights, counts = aggregation_weights(aggregation, lengths, sequences.conversations, constant)
        order = np.random.default_rng([int(self.config.seed), step, 11]).permutation(len(sequences))
        parts = np.array_split(order, min(int(rl.updates_per_batch), len(sequences)))
        metrics: list[dict[str, float]] = []
        shared = 0  # sequences scored against a prompt computed once (train.share_prompts)
        for part in parts:
            micro = self._pack(sequences, weights, counts, part)
            shared += sum(int(mb.suffix_mask[:, 0].sum()) for mb in micro if isinstance(mb, SharedPromptBatch))
            if objective == "grpo" and bool(rl.recompute_old_logprobs):
                micro = [mb.replace(old_logp=sharding.to_host(self.learner.score(state.params, mb))) for mb in micro]
            state, m = self.learner.update(state, micro, objective)
            metrics.append(m)
        merged = {k: float(np.mean([m[k] for m in metrics])) for k in metrics[0]}
        merged["ratio_max"] = max(m["ratio_max"] for m in metrics)
        merged["optimizer_steps"] = len(metrics)
        merged["shared_prompt_sequences"] = shared
        return state, merged

    def _pack(
        self, sequences: TrainingSequences, weights: np.ndarray, counts: np.ndarray, part: np.ndarray
    ) -> list[MicroBatch | SharedPromptBatch]:
        """Micro-batches of the sequences `part` indexes: with train.share_prompts, the groups of G2 recall samples
        that share a prompt in SharedPromptBatches (the prompt computed once), the rest in MicroBatches."""
        k = int(self.setup.agent.recall_group_size)
        groups = shared_prompt_groups(sequences, part, k) if self.train_config.share_prompts and k > 1 else []
        grouped = {i for g in groups for i in g}
        rest = np.asarray([i for i in part if int(i) not in grouped], np.int64)
        micro, pad = self.train_config.micro_batch_size, self.setup.tokenizer.pad_id
        multiple = self.learner.batch_multiple
        per_batch = -(-max(1, micro // k) // multiple) * multiple  # prompt groups a micro-batch, split over shards
        out: list[MicroBatch | SharedPromptBatch] = pack_shared(
            sequences, weights, counts, groups, self.buckets, per_batch, pad, self.windows
        )
        if len(rest):
            out += pack(sequences, weights, counts, self.buckets, micro, pad, self.windows, rest)
        return out

    def format_step(self, state: TrainState, batch: dict, step: int) -> tuple[TrainState, dict[str, Any]]:
        examples, used, skipped = self.setup.task_impl.format_examples(
            self.setup,
            batch,
            np.random.default_rng([int(self.config.seed), step, 13]),
            stop_id=self.stop_id,
            max_target=self.window,
            memory_target=self.train_config.format_memory,
            recall_entities=self.train_config.format_recall_entities,
        )
        metrics: dict[str, Any] = {"phase": "format", "episodes": used, "episodes_skipped": skipped}
        if not len(examples):
            return state, {**metrics, "skipped_update": 1}
        start = time.perf_counter()
        state, update = self._updates(state, examples, "sft", step)
        metrics.update(update, sequences=len(examples), update_s=time.perf_counter() - start)
        return state, metrics

    def grpo_step(self, state: TrainState, batch: dict, step: int) -> tuple[TrainState, dict[str, Any], Any]:
        setup = self.setup
        setup.sampler_policy.update_params(state.params)
        setup.sampler_policy.reset_stats()
        start = time.perf_counter()
        result = setup.rollout(batch, step)
        rollout_s = time.perf_counter() - start
        if result is None:
            self.log(f"[train] WARNING step {step}: every episode of the batch was skipped by the pipeline; no update")
            return state, {"phase": "grpo", "skipped_update": 1, "rollout_s": rollout_s}, None
        sequences, metrics = assign_credit(result, setup.agent)
        metrics.update(setup.task_impl.rollout_metrics(result))
        stats = setup.sampler_policy.reset_stats()
        rollout_tokens = sum(s.prompt_tokens + s.generated_tokens for s in stats.values())
        metrics.update(
            phase="grpo",
            rollout_s=rollout_s,
            rollout_tokens_per_s=rollout_tokens / max(rollout_s, 1e-9),
            generated_tokens_per_s=sum(s.generated_tokens for s in stats.values()) / max(rollout_s, 1e-9),
            **{f"{kind}_s": s.seconds for kind, s in stats.items()},
        )
        if not len(sequences):
            self.log(
                f"[train] WARNING step {step}: the DAPO filter dropped every trained group (all rewards equal); "
                "no update"
            )
            return state, {**metrics, "skipped_update": 1, "update_s": 0.0}, result
        start = time.perf_counter()
        state, update = self._updates(state, sequences, "grpo", step)
        update_s = time.perf_counter() - start
        tokens = sum(len(p) + len(r) for p, r in zip(sequences.prompts, sequences.responses, strict=True))
        metrics.update(update, update_s=update_s, update_tokens_per_s=tokens / max(update_s, 1e-9), skipped_update=0)
        return state, metrics, result

    # ------------------------------------------------------------------------------- evaluation

    def eval_agent(self, k: int, probes: int = 1) -> AgentConfig:
        """The agent of an evaluation with K sampled trajectories per episode, or greedy with P probes each. Its probes
        are drawn per trajectory and from the chunk alone whatever `data.probes.shared` and `data.probes.in_memory`
        (training choices) say, so runs trained with and without them are scored on the same held-out probes
        (greedy, K = P = 1, draws trajectory 0's either way). With P > 1 the memories are decoded once per episode
        (`greedy_memory`) and its P trajectories differ only in their probes."""
        agent = dataclasses.replace(
            self.setup.agent,
            group_size=k,
            recall_group_size=k,
            dapo_filter=False,
            probe_shared=False,
            probe_in_memory=False,
        )
        if probes > 1:
            agent = dataclasses.replace(
                agent, group_size=probes, recall_group_size=1, greedy_memory=True, train_memory_turns=False
            )
        return agent

    def evaluate(
        self, params: Any, step: int = 0, samples: int | None = None, probes: int | None = None
    ) -> dict[str, Any]:
        """Rollouts of the held-out episodes: one greedy trajectory and recall answer each; with `samples` K > 1
        (default train.eval_samples) K of each sampled at the rollout temperature, from the same seeds at every
        evaluation (so two checkpoints are compared on the same random numbers); with `probes` P > 1 (default
        train.eval_probes) greedy, P recall probes each. Returns the means of EVAL_KEYS, and under "items" each
        episode's figures (`eval_items`, the mean of its trajectories) for intervals and paired comparisons. The
        text of the first episode is kept in `self.last_eval_sample`."""
        setup = self.setup
        if not self.eval_slots:
            return {}
        k = self.train_config.eval_samples if samples is None else samples
        p = self.train_config.eval_probes if probes is None else probes
        check_eval_kind(k, p)
        agent = self.eval_agent(k, p)
        policy = self.eval_policy if k == 1 else setup.sampler_policy
        policy.update_params(params)
        kind = "greedy" if k == 1 else f"{k} sampled trajectories each at T {agent.temperature:g}"
        kind += f", {p} recall probes each" if p > 1 else ""
        self.log(f"[eval] step {step}: {len(self.eval_slots)} held-out episodes, {kind} ...")
        start = time.perf_counter()
        # greedy: the step only seeds the (unused) sampling; sampled: one fixed stream for every evaluation
        result = setup.rollout(setup.eval_batch(self.eval_slots), 0 if k == 1 else EVAL_SEED_STEP, policy, agent)
        if result is None:
            return {}
        _, metrics = assign_credit(result, agent)
        self.last_eval_sample = self._sample_text(result)
        out: dict[str, Any] = {key: float(metrics[key]) for key in EVAL_KEYS}
        out.update(setup.task_impl.rollout_metrics(result))  # search: the action-format failures and turns
        out.update(episodes=len(result.episodes), samples=k, eval_s=time.perf_counter() - start)
        if k > 1:
            out["temperature"] = float(agent.temperature)
        if p > 1:
            out["probes"] = p
        out["items"] = eval_items(result, agent)
        return out

    # ------------------------------------------------------------------------------- the loop

    def _on_sigterm(self, signum, frame) -> None:
        self._sigterm = True
        self.log("[train] SIGTERM: saving a checkpoint after this step, then stopping")

    def _sample_text(self, result: Any) -> str:
        decode = self.setup.tokenizer.decode
        traj = result.trajectories[0]
        lines = [f"gold: {result.episodes[traj.episode].answer}"]
        lines += [f"memory {t + 1}: {decode(r.content.tolist())}" for t, r in enumerate(traj.memory_turns)]
        lines.append(f"answer: {traj.answer_text}")
        if traj.probe is not None:
            lines.append(
                f"recall probe (memory of step {traj.probe.step}): gold {traj.probe.gold}, "
                f"answers {traj.recall_predictions}"
            )
        return "\n".join(lines)

    def _save(self, step: int, state: TrainState, iterator: Any, meta: dict[str, Any], *, force: bool) -> None:
        """A checkpoint of `step`; a failed write (a full disk) becomes one WriteFailedError line. The previous
        checkpoint stays restorable: Orbax publishes a checkpoint only once it is complete."""
        try:
            self.checkpointer.save(step, state, iterator, meta, force=force)
        except Exception as e:
            raise WriteFailedError.of(f"the checkpoint of step {step} in", self.checkpointer.directory, e) from e

    def train(self) -> dict[str, Any]:
        """Runs (or resumes) to train.steps; returns {"before": eval, "after": eval, "steps": n, "preempted": bool,
        "checkpoint_step": the last step saved by this run or restored (None: none), ...}. Releases the lock."""
        try:
            return self._train()
        finally:
            self.close()

    def _train(self) -> dict[str, Any]:
        tc = self.train_config
        iterator = iter(self.setup.dataset(num_slots=self.train_slots))
        step, state = self.restore_or_init(iterator)
        writer = MetricWriter(self.workdir, resume_step=step)
        previous = signal.signal(signal.SIGTERM, self._on_sigterm) if _main_thread() else None
        summary: dict[str, Any] = {"workdir": self.workdir, "start_step": step, "checkpoint_step": step or None}
        try:
            if step == 0 and tc.eval_every > 0 and tc.eval_before:
                summary["before"] = self.evaluate(state.params, 0)
                writer.write(0, summary["before"], prefix="eval")
                writer.write_text(0, "eval/memories", self.last_eval_sample)
                self.log(f"[eval] step 0 (before training): {_format(summary['before'])}")
            progress = _progress(step, tc.steps)
            preempted = sharding.any_process(self._sigterm)  # a SIGTERM during restore or the first evaluation
            while step < tc.steps and not preempted:
                # This host built its rows of the batch; every host continues with all of them.
                batch = sharding.gather_host_rows(next(iterator))
                start = time.perf_counter()
                if step < tc.format_steps:
                    state, metrics = self.format_step(state, batch, step)
                    result = None
                else:
                    if step == tc.format_steps and tc.format_steps > 0:
                        state = self.learner.set_reference(state)  # KL to the warmed-up policy
                    state, metrics, result = self.grpo_step(state, batch, step)
                step += 1
                metrics["episode_ids"] = [int(i) for i in batch["episode_id"]]  # the data order, for audits
                metrics["step_s"] = time.perf_counter() - start
                metrics = {**dict.fromkeys(STEP_KEYS[1:], float("nan")), **metrics}  # STEP_KEYS[0] is "step"
                metrics["compilations"] = self.learner.compile_count + self.setup.sampler.compile_count
                writer.write(step, metrics)
                if result is not None and tc.sample_every and step % tc.sample_every == 0:
                    writer.write_text(step, "rollout/memories", self._sample_text(result))
                progress(step, metrics)
                # Every host stops at the same step: SIGTERM may reach the hosts of a pod at different steps. The
                # flag is read once before the collective: a signal that lands during it is agreed on next step
                # (writing the collective's result back into the flag would erase it on this host only).
                preempted = sharding.any_process(self._sigterm)
                last = step == tc.steps or preempted
                if tc.checkpoint_every and (step % tc.checkpoint_every == 0 or last):
                    self._save(step, state, iterator, {"phase": metrics["phase"]}, force=last)
                    summary["checkpoint_step"] = step
                # The end of the format warm-up is always evaluated: by determinism it is the warm-up-only control
                # arm, so after - warm-up on the same episodes is GRPO's own effect.
                if tc.eval_every > 0 and (step % tc.eval_every == 0 or step in (tc.format_steps, tc.steps)):
                    evaluation = self.evaluate(state.params, step)
                    writer.write(step, evaluation, prefix="eval")
                    writer.write_text(step, "eval/memories", self.last_eval_sample)
                    self.log(f"[eval] step {step}: {_format(evaluation)}")
                    if step == tc.format_steps:
                        summary["warmup"] = evaluation
                    if step == tc.steps:
                        summary["after"] = evaluation
            self.setup.sampler_policy.update_params(state.params)
            summary.update(steps=step, preempted=preempted, state=state)
            return summary
        finally:
            try:
                self.checkpointer.wait()
            except Exception as e:  # an asynchronous save that failed (e.g. a full disk)
                if sys.exc_info()[0] is None:
                    raise WriteFailedError.of("a checkpoint in", self.checkpointer.directory, e) from e
            writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


EVAL_ITEMS = ("episode_id", "acc_e2e", "reward_e2e", "acc_recall", "answer_found", "recall_found")


def check_eval_kind(samples: int, probes: int) -> None:
    """Refuses an evaluation both sampled (K > 1) and multi-probe (P > 1): P probes are answered from one greedy
    memory per episode."""
    if samples < 1 or probes < 1:
        raise UsageError(
            f"an evaluation needs samples >= 1 and probes >= 1 (--samples / --probes, train.eval_samples / "
            f"train.eval_probes), got {samples} and {probes}."
        )
    if samples > 1 and probes > 1:
        raise UsageError(
            f"evaluate with samples={samples} (sampled trajectories) or probes={probes} (greedy, several recall "
            "probes an episode), not both: set one of train.eval_samples / train.eval_probes (--samples / --probes) "
            "to 1."
        )


def eval_items(result: Any, agent: AgentConfig) -> dict[str, list]:
    """Per held-out episode, in episode-id order: {"episode_id", "acc_e2e" (EM), "reward_e2e" (R_E), "acc_recall"
    (None without a probe), "answer_found" (1 when the extractor found a final answer), "recall_found" (the share
    of recall answers found, None without a probe)}; each the mean over the episode's trajectories (one when
    greedy: 0/1 accuracies), a trajectory's recall figures the mean over its recall answers. The items two
    checkpoints are paired on."""
    r_e, r_i, _ = trajectory_rewards(result, agent)
    rows: dict[int, list[tuple]] = {}
    for t, r, i in zip(result.trajectories, r_e, r_i, strict=True):
        found = [p is not None for p in t.recall_predictions]
        rows.setdefault(int(result.episodes[t.episode].episode_id), []).append(
            (
                float(t.correct),
                float(r),
                float(i.mean()) if i.size else None,
                float(t.prediction is not None),
                float(np.mean(found)) if found else None,
            )
        )

    def mean(values: list) -> float | None:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else None

    items: dict[str, list] = {k: [] for k in EVAL_ITEMS}
    for episode_id in sorted(rows):
        items["episode_id"].append(episode_id)
        for j, key in enumerate(EVAL_ITEMS[1:]):
            items[key].append(mean([row[j] for row in rows[episode_id]]))
    return items


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _format(metrics: dict[str, Any]) -> str:
    shown = {k: v for k, v in metrics.items() if k != "items"}
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())


def _progress(start: int, total: int) -> Callable[[int, dict[str, Any]], None]:
    """A console progress bar (tqdm) with the key figures of the latest step."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, disable=jax.process_index() != 0)

    def update(step: int, m: dict[str, Any]) -> None:
        keys = ("reward_e2e", "acc_e2e", "acc_recall", "loss", "kl", "step_s")
        bar.set_postfix({k: f"{m[k]:.3g}" for k in keys if isinstance(m.get(k), float) and math.isfinite(m[k])})
        bar.update(step - bar.n)
        if step == total:
            bar.close()

    return update
