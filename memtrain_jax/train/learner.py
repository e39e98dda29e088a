"""The update: jitted, mesh-sharded gradient accumulation and Optax steps, and teacher-forced scoring.

Three programs, each `jax.jit` with explicit shardings from the config's logical-axis rules:

  accumulate(params, lora, grads, micro_batch) -> (grads + d loss_sum / d trained, metric sums)
      in:  params (rules), lora (LoRA's factors and W0, or None), grads (= the trained leaves' shardings,
           DONATED), micro-batch rows over the batch axes
      out: grads (in place), metric sums (replicated)
  apply(state, grads, count) -> (state', stats)
      in:  state (params + optimizer state, rules; DONATED), grads, count (replicated)
      out: state with params <- AdamW(grads / count)
  score(params, tokens, attention_mask) -> log-probs [M, L-1]   (reference / recomputed old log-probs)

Accumulate and score exist for MicroBatches (whole sequences) and SharedPromptBatches (k responses to a prompt
that is computed once: the G2 recall samples of a probe; memtrain_jax.train.batching).

Gradients of the loss *sum* are accumulated over micro-batches and divided by the total count c
once per optimiser step, so any split into micro-batches gives the full-batch gradient (see
memtrain_jax.rl.loss). One program per (micro-batch length bucket); `compile_count` counts traces.

Objectives: "grpo" (the clipped surrogate + KL of rl.loss) and "sft" (cross-entropy on the masked
tokens, the format warm-up), chosen per call; both go through the same accumulate/apply step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, ClassVar

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from memtrain_jax import sharding
from memtrain_jax.config import section_values
from memtrain_jax.model import ModelConfig, param_shardings, token_logprobs_and_entropy
from memtrain_jax.model.logprobs import shared_prompt_logprobs_and_entropy
from memtrain_jax.rl.config import RLConfig
from memtrain_jax.rl.loss import LossConfig, aggregate, grpo_token_loss
from memtrain_jax.train import lora
from memtrain_jax.train.batching import MicroBatch, SharedPromptBatch

OBJECTIVES = ("grpo", "sft")


def trainable_mask(config: ModelConfig, params: Any, trainable_layers: int = 0) -> Any:
    """A tree of bools matching `params`: True for the parameters an update changes.

    trainable_layers 0 trains everything (the paper). N > 0 trains only the last N decoder layers and
    the final norm (embeddings and lower layers frozen): the backward pass then stops at layer L-N,
    which makes updates of a 135M model affordable on a laptop CPU.
    """
    if trainable_layers == 0:
        return jax.tree.map(lambda _: True, params)
    if not 0 < trainable_layers <= config.num_layers:
        raise ValueError(f"train.trainable_layers must be in [0, {config.num_layers}], got {trainable_layers}.")
    if config.scan_layers:
        raise ValueError("train.trainable_layers > 0 needs unrolled layers (scan_layers=False).")
    first = config.num_layers - trainable_layers
    trainable = {f"layers_{i}" for i in range(first, config.num_layers)} | {"final_norm"}
    return {name: jax.tree.map(lambda _, t=name in trainable: t, sub) for name, sub in params.items()}


def select(tree: Any, mask: Any) -> Any:
    """The leaves of `tree` where `mask` is True (None elsewhere: an empty subtree)."""
    return jax.tree.map(lambda m, x: x if m else None, mask, tree)


def merge(mask: Any, selected: Any, full: Any) -> Any:
    """`full` with the leaves where `mask` is True taken from `selected` (the inverse of `select`)."""
    return jax.tree.map(lambda m, s, f: s if m else f, mask, selected, full, is_leaf=lambda x: x is None)


METRIC_SUMS = ("loss", "tokens", "entropy", "kl", "clip", "ratio", "pg")


@flax.struct.dataclass
class TrainState:
    """step: optimiser steps taken; params: the policy's parameters (with LoRA, the merged W0 + scale A B);
    ref_params: the frozen KL reference (None without KL); adapters, base: LoRA's factors {"a", "b"} and the
    adapted kernels' W0 (None without LoRA; memtrain_jax.train.lora)."""

    step: jax.Array
    params: Any
    opt_state: Any
    ref_params: Any = None
    adapters: Any = None
    base: Any = None
    # Stored in a checkpoint only where set: checkpoints written before LoRA existed restore unchanged.
    STORED_WHEN_SET: ClassVar[tuple[str, ...]] = ("adapters", "base")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up to a constant lr and global-norm clipping (the paper's numbers by default).

    With `format_steps` > 0 the first optimiser steps (the format warm-up of tasks/format.py) use the
    constant `format_learning_rate`; the GRPO schedule (warm-up, then constant) starts after them.
    """

    learning_rate: float = 1e-6
    warmup_steps: int = 20
    format_learning_rate: float = 1e-4
    format_steps: int = 0
    weight_decay: float = 0.01
    clip_norm: float = 1.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    @classmethod
    def from_config(cls, section: Any) -> OptimConfig:
        return cls(**section_values(cls, section, "optim"))

    def schedule(self) -> optax.Schedule:
        """Learning rate by optimiser step: format lr, then linear warm-up to the GRPO lr, then constant."""
        warmup = max(self.warmup_steps, 0)
        schedules = [
            optax.linear_schedule(self.learning_rate / max(warmup, 1), self.learning_rate, warmup),
            optax.constant_schedule(self.learning_rate),
        ]
        boundaries = [warmup]
        if self.format_steps > 0:
            schedules.insert(0, optax.constant_schedule(self.format_learning_rate))
            boundaries = [self.format_steps, self.format_steps + warmup]
        return optax.join_schedules(schedules, boundaries)

    def optimizer(self) -> optax.GradientTransformation:
        schedule = self.schedule()
        return optax.chain(
            optax.clip_by_global_norm(self.clip_norm),
            optax.adamw(schedule, b1=self.b1, b2=self.b2, eps=self.eps, weight_decay=self.weight_decay),
        )


def loss_config_from(rl: ml_collections.ConfigDict) -> LossConfig:
    """The loss settings of a config's `rl` section (RLConfig, the section typed once)."""
    return RLConfig.from_config(rl).loss


def batch_logprobs(
    model_config: ModelConfig, params: Any, batch: MicroBatch | SharedPromptBatch, chunk: int, temperature: float
) -> tuple[jax.Array, jax.Array]:
    """(log-probs, entropies) [M, W] of a micro-batch's response window (M rows; a SharedPromptBatch's M = G * k)."""
    if isinstance(batch, SharedPromptBatch):
        return shared_prompt_logprobs_and_entropy(
            model_config, params, batch.prefix, batch.prefix_mask, batch.suffix, batch.suffix_mask,
            chunk_size=chunk, temperature=temperature,
        )  # fmt: skip
    return token_logprobs_and_entropy(
        model_config,
        params,
        batch.tokens,
        batch.attention_mask,
        chunk_size=chunk,
        start=batch.response_start,
        window=batch.loss_mask.shape[1],
        temperature=temperature,
    )


def loss_sums(
    params: Any,
    batch: MicroBatch | SharedPromptBatch,
    model_config: ModelConfig,
    loss_config: LossConfig,
    objective: str,
    logprob_chunk: int,
    use_ref: bool,
    temperature: float = 1.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(sum_i w_i sum_t m_it l_it, metric sums) of one micro-batch; see memtrain_jax.rl.loss.

    GRPO scores tokens under softmax(logits / temperature), the rollouts' sampling distribution (as the sampler's
    log-probs, the "old" policy, are); the supervised objective under the model's own distribution."""
    logp, entropy = batch_logprobs(
        model_config, params, batch, logprob_chunk, 1.0 if objective == "sft" else temperature
    )
    mask = batch.loss_mask
    if objective == "sft":
        per_token = -logp
        diag = {"ratio": jnp.ones_like(logp), "clipped": jnp.zeros_like(logp), "kl": jnp.zeros_like(logp), "pg": -logp}
    else:
        per_token, diag = grpo_token_loss(
            logp, batch.old_logp, batch.ref_logp if use_ref else None, batch.advantages, loss_config
        )
    total = aggregate(per_token, mask, batch.weights)
    sums = {
        "loss": total,
        "tokens": jnp.sum(mask),
        "entropy": jnp.sum(entropy * mask),
        "kl": jnp.sum(diag["kl"] * mask),
        "clip": jnp.sum(diag["clipped"] * mask),
        "ratio": jnp.sum(diag["ratio"] * mask),
        "pg": jnp.sum(diag["pg"] * mask),
        "ratio_max": jnp.max(jnp.where(mask > 0, diag["ratio"], 0.0)),
        "count": jnp.sum(batch.counts),
    }
    return total, sums


def _laid_out(tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `tree`'s leaves with the matching shardings (abstract arguments for lowering)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


class Learner:
    """Owns the mesh placement and the compiled update programs of one model (no global caches)."""

    def __init__(
        self,
        model_config: ModelConfig,
        mesh: Mesh,
        rules: tuple,
        optim: OptimConfig,
        loss_config: LossConfig,
        *,
        logprob_chunk: int = 256,
        trainable_layers: int = 0,
        temperature: float = 1.0,
        lora_rank: int = 0,
        lora_alpha: float = 32.0,
    ):
        self.model_config, self.mesh, self.rules = model_config, mesh, tuple(rules)
        if lora_rank < 0:
            raise ValueError(f"train.lora_rank must be >= 0 (0: no adapters), got {lora_rank}.")
        if lora_rank and model_config.scan_layers:
            raise ValueError("train.lora_rank > 0 needs unrolled layers (scan_layers=False).")
        # With LoRA the optimiser trains low-rank factors of the trainable kernels (memtrain_jax.train.lora).
        self.lora_rank, self.lora_scale = int(lora_rank), float(lora_alpha) / max(int(lora_rank), 1)
        # The rollouts' sampling temperature (> 0): GRPO's log-probs, new, old and reference, are the tempered ones.
        self.temperature = float(temperature) if temperature > 0 else 1.0
        self.loss_config, self.logprob_chunk = loss_config, logprob_chunk  # positions per vocabulary block
        self.use_ref = loss_config.kl_coef > 0
        self.optimizer = optim.optimizer()
        self.compile_count = 0
        self.param_shardings = param_shardings(model_config, mesh, self.rules)
        replicated = NamedSharding(mesh, PartitionSpec())
        self.replicated = replicated
        rows = sharding.batch_axes(mesh, self.rules) or None
        self._row = lambda *rest: NamedSharding(mesh, PartitionSpec(rows, *rest))
        self.batch_multiple = sharding.batch_axis_size(mesh, self.rules)
        from memtrain_jax.model import param_logical_specs, param_shapes

        shapes = param_shapes(model_config)
        self.mask = trainable_mask(model_config, shapes, trainable_layers)
        self.specs = param_logical_specs(model_config)
        if self.lora_rank:
            self.adapted = lora.adapted_mask(self.mask)
            adapters = jax.eval_shape(self.init_adapters, jax.random.key(0), shapes)
            self.grad_shardings = jax.tree.map(lambda _: replicated, adapters)  # r x (I + O) per kernel: small
            base_shardings = select(self.param_shardings, self.adapted)
        else:
            self.adapted, adapters, base_shardings = None, None, None
            self.grad_shardings = select(self.param_shardings, self.mask)
        opt_shapes = jax.eval_shape(self.optimizer.init, adapters if self.lora_rank else select(shapes, self.mask))
        self.opt_shardings = optax.tree_map_params(
            self.optimizer,
            lambda _, s: s,
            opt_shapes,
            self.grad_shardings,
            transform_non_params=lambda _: replicated,
            is_leaf=lambda x: isinstance(x, NamedSharding),
        )
        self.state_shardings = TrainState(
            replicated,
            self.param_shardings,
            self.opt_shardings,
            self.param_shardings if self.use_ref else None,
            self.grad_shardings if self.lora_rank else None,
            base_shardings,
        )
        self.lora_shardings = {"adapters": self.grad_shardings, "base": base_shardings} if self.lora_rank else None
        mb = MicroBatch(
            self._row(None),
            self._row(None),
            self._row(),
            self._row(None),
            self._row(None),
            self._row(None),
            self._row(),
            self._row(),
            self._row(),
        )
        self.batch_shardings = mb
        # SharedPromptBatch: prompts [G, P] and responses [G * k, S] both split over the batch axes.
        shared = SharedPromptBatch(*([self._row(None)] * 7), *([self._row()] * 3))
        self._accumulate, self._score = {}, {}
        for kind, layout in ((MicroBatch, mb), (SharedPromptBatch, shared)):
            self._accumulate[kind] = {
                objective: jax.jit(
                    functools.partial(self._accumulate_fn, objective=objective),
                    in_shardings=(self.param_shardings, self.lora_shardings, self.grad_shardings, layout),
                    out_shardings=(self.grad_shardings, replicated),
                    donate_argnums=2,
                )
                for objective in OBJECTIVES
            }
            self._score[kind] = jax.jit(
                self._score_fn, in_shardings=(self.param_shardings, layout), out_shardings=self._row(None)
            )
        self._layouts = {MicroBatch: mb, SharedPromptBatch: shared}
        self._apply = jax.jit(
            self._apply_fn,
            in_shardings=(self.state_shardings, self.grad_shardings, replicated),
            out_shardings=(self.state_shardings, replicated),
            donate_argnums=0,
        )
        self._zeros = jax.jit(
            lambda state: jax.tree.map(jnp.zeros_like, self._trainable(state.params, self._lora(state))),
            in_shardings=(self.state_shardings,),
            out_shardings=self.grad_shardings,
        )

    @classmethod
    def from_config(
        cls,
        config: ml_collections.ConfigDict,
        model_config: ModelConfig,
        mesh: Mesh,
        rules: tuple,
        *,
        optim: OptimConfig | None = None,
        temperature: float | None = None,
    ) -> Learner:
        """The run's Learner from its config's optim, rl, train and sampling sections (training and `memtrain plan`
        build it here); `optim` and `temperature` replace the sections' own where given."""
        train = config.train
        return cls(
            model_config,
            mesh,
            rules,
            OptimConfig.from_config(config.optim) if optim is None else optim,
            loss_config_from(config.rl),
            logprob_chunk=int(train.logprob_chunk),
            trainable_layers=int(train.trainable_layers),
            temperature=float(config.sampling.temperature if temperature is None else temperature),
            lora_rank=int(train.lora_rank),
            lora_alpha=float(train.lora_alpha),
        )

    # --- the trained variables: the trainable leaves of the parameters, or LoRA's factors ------------

    def init_adapters(self, key: jax.Array, params: Any) -> Any:
        """LoRA's factors for the adapted kernels of `params` (B = 0: the merged policy equals `params`)."""
        return lora.init_adapters(key, self.adapted, params, self.specs, self.lora_rank)

    def _lora(self, state: TrainState) -> dict[str, Any] | None:
        return {"adapters": state.adapters, "base": state.base} if self.lora_rank else None

    def _trainable(self, params: Any, lora_state: dict[str, Any] | None) -> Any:
        """The tree the optimiser updates: LoRA's factors, or the trainable leaves of `params`."""
        return lora_state["adapters"] if lora_state is not None else select(params, self.mask)

    def _policy(self, params: Any, lora_state: dict[str, Any] | None, trainable: Any) -> Any:
        """The policy's parameters with `trainable` in place (LoRA: the adapted kernels W0 + scale A B)."""
        if lora_state is None:
            return merge(self.mask, trainable, params)
        kernels = lora.merge_adapters(lora_state["base"], trainable, self.lora_scale)
        return merge(self.adapted, kernels, params)

    # --- traced bodies (compile_count += 1 runs only while tracing) --------------------------------

    def _accumulate_fn(self, params, lora_state, grads, batch: MicroBatch, objective: str):
        self.compile_count += 1

        # Differentiating only the trainable leaves lets XLA drop the backward pass below them.
        def loss(trainable):
            return loss_sums(
                self._policy(params, lora_state, trainable),
                batch,
                self.model_config,
                self.loss_config,
                objective,
                self.logprob_chunk,
                self.use_ref,
                self.temperature,
            )

        new, sums = jax.grad(loss, has_aux=True)(self._trainable(params, lora_state))
        return jax.tree.map(jnp.add, grads, new), sums

    def _apply_fn(self, state: TrainState, grads, count):
        self.compile_count += 1
        grads = jax.tree.map(lambda g: g / jnp.maximum(count, 1e-9), grads)
        lora_state = self._lora(state)
        trainable = self._trainable(state.params, lora_state)
        updates, opt_state = self.optimizer.update(grads, state.opt_state, trainable)
        trained = optax.apply_updates(trainable, updates)
        params = self._policy(state.params, lora_state, trained)
        stats = {"grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates)}
        state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        if lora_state is not None:
            state = state.replace(adapters=trained)
        return state, stats

    def _score_fn(self, params, batch: MicroBatch | SharedPromptBatch):
        self.compile_count += 1
        return batch_logprobs(self.model_config, params, batch, self.logprob_chunk, self.temperature)[0]

    # --- host API -------------------------------------------------------------------------------

    def lower_programs(self, rows: int, length: int, window: int, objective: str = "grpo") -> dict[str, Any]:
        """The update's programs for micro-batches of `rows` sequences of `length` tokens scoring `window`
        response positions, lowered ahead of time on abstract arguments (`memtrain plan` compiles them for a
        TPU topology): accumulate (forward + backward of one micro-batch), apply (the AdamW step) and, with
        KL on, score (the reference log-probs)."""
        state = self.abstract_state()
        params, grads = state.params, self.abstract_grads()
        spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)
        example = MicroBatch(
            spec((rows, length), np.int32), spec((rows, length), bool), spec((rows,), np.int32),
            spec((rows, window), np.float32), spec((rows, window), np.float32), spec((rows, window), np.float32),
            spec((rows,), np.float32), spec((rows,), np.float32), spec((rows,), np.float32),
        )  # fmt: skip
        batch = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), example, self.batch_shardings
        )
        count = jax.ShapeDtypeStruct((), np.float32, sharding=self.replicated)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            programs = {
                "accumulate": self._accumulate[MicroBatch][objective].lower(params, self._lora(state), grads, batch),
                "apply": self._apply.lower(state, grads, count),
            }
            if self.use_ref:
                programs["score"] = self._score[MicroBatch].lower(params, batch)
        return programs

    def abstract_state(self) -> TrainState:
        """The train state as ShapeDtypeStructs laid out by `state_shardings` (no device memory)."""
        from memtrain_jax.model import param_shapes

        def build(params):
            lora_state = (
                {"adapters": self.init_adapters(jax.random.key(0), params), "base": select(params, self.adapted)}
                if self.lora_rank
                else None
            )
            opt_state = self.optimizer.init(self._trainable(params, lora_state))
            return TrainState(
                jnp.zeros((), jnp.int32),
                params,
                opt_state,
                params if self.use_ref else None,
                lora_state and lora_state["adapters"],
                lora_state and lora_state["base"],
            )

        shapes = jax.eval_shape(build, param_shapes(self.model_config))
        return jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), shapes, self.state_shardings
        )

    def abstract_grads(self) -> Any:
        """The gradient accumulator (the trainable leaves) as ShapeDtypeStructs laid out by `grad_shardings`."""
        state = self.abstract_state()
        return _laid_out(self._trainable(state.params, self._lora(state)), self.grad_shardings)

    def init_state(self, params: Any, *, with_ref: bool | None = None, key: jax.Array | None = None) -> TrainState:
        """A fresh state: step 0, AdamW state created sharded, the reference a copy of `params` when KL is on; with
        LoRA, factors drawn from `key` (B = 0) and W0 the adapted kernels of `params`."""
        with_ref = self.use_ref if with_ref is None else with_ref
        # A copy: the state is donated to every update, the caller's arrays must survive it.
        copy = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=self.param_shardings)
        params = copy(params)
        adapters = base = None
        if self.lora_rank:
            key = jax.random.key(0) if key is None else key
            adapters = jax.jit(self.init_adapters, out_shardings=self.grad_shardings)(key, params)
            base = jax.jit(
                lambda p: jax.tree.map(jnp.copy, select(p, self.adapted)), out_shardings=self.lora_shardings["base"]
            )(params)
        opt_state = jax.jit(
            lambda p, a: self.optimizer.init(a if self.lora_rank else select(p, self.mask)),
            out_shardings=self.opt_shardings,
        )(params, adapters)
        ref = copy(params) if with_ref else None
        step = sharding.to_global(np.zeros((), np.int32), self.replicated)
        return TrainState(step, params, opt_state, ref, adapters, base)

    def set_reference(self, state: TrainState) -> TrainState:
        """The current parameters become the KL reference (e.g. after the format warm-up)."""
        if not self.use_ref:
            return state
        return state.replace(ref_params=jax.tree.map(jnp.copy, state.params))

    def _place(self, batch: MicroBatch | SharedPromptBatch) -> MicroBatch | SharedPromptBatch:
        return sharding.to_global(batch, self._layouts[type(batch)])

    def score(self, params: Any, batch: MicroBatch | SharedPromptBatch) -> jax.Array:
        """Log-probs [M, W] of the response window under `params` (reference and recomputed old log-probs)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return self._score[type(batch)](params, self._place(batch))

    def _accumulated(self, state: TrainState, micro_batches: list[MicroBatch], objective: str):
        """(summed gradients, summed metrics) over the micro-batches; call under the mesh and rules."""
        if objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {objective!r}; choose one of {OBJECTIVES}.")
        if not micro_batches:
            raise ValueError("an update needs at least one micro-batch.")
        grads = self._zeros(state)
        lora_state = self._lora(state)
        per_batch = []  # device scalars, fetched once after the loop: no host sync between micro-batches
        for mb in micro_batches:
            rows = mb.prefix.shape[0] if isinstance(mb, SharedPromptBatch) else mb.tokens.shape[0]
            if rows % self.batch_multiple:
                raise ValueError(
                    f"Micro-batch of {rows} rows (prompts) does not split over the batch axes "
                    f"({self.batch_multiple} shards); use a multiple for train.micro_batch_size."
                )
            kind = type(mb)
            mb = self._place(mb)
            if objective == "grpo" and self.use_ref:
                mb = mb.replace(ref_logp=self._score[kind](state.ref_params, mb))
            grads, sums = self._accumulate[kind][objective](state.params, lora_state, grads, mb)
            per_batch.append(sums)
        totals: dict[str, float] = {}
        for sums in jax.device_get(per_batch):
            for key, value in sums.items():
                value = float(value)
                totals[key] = max(totals.get(key, 0.0), value) if key == "ratio_max" else totals.get(key, 0.0) + value
        return grads, totals

    def gradients(
        self, state: TrainState, micro_batches: list[MicroBatch | SharedPromptBatch], objective: str = "grpo"
    ) -> tuple[Any, float]:
        """(d loss / d params, loss) of the whole batch: summed over micro-batches, divided by the total count."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            grads, totals = self._accumulated(state, micro_batches, objective)
        count = max(totals["count"], 1e-9)
        return jax.tree.map(lambda g: g / count, grads), totals["loss"] / count

    def update(
        self, state: TrainState, micro_batches: list[MicroBatch | SharedPromptBatch], objective: str = "grpo"
    ) -> tuple[TrainState, dict[str, float]]:
        """One optimiser step over `micro_batches` (gradients accumulated, divided by the summed count)."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            grads, totals = self._accumulated(state, micro_batches, objective)
            count = totals["count"]
            state, stats = self._apply(state, grads, sharding.to_global(np.float32(count), self.replicated))
        tokens = max(totals["tokens"], 1.0)
        metrics = {
            "loss": totals["loss"] / max(count, 1e-9),
            "entropy": totals["entropy"] / tokens,
            "kl": totals["kl"] / tokens,
            "clip_fraction": totals["clip"] / tokens,
            "ratio_mean": totals["ratio"] / tokens,
            "ratio_max": totals["ratio_max"],
            "pg_loss": totals["pg"] / tokens,
            "loss_tokens": totals["tokens"],
            **{k: float(v) for k, v in jax.device_get(stats).items()},
        }
        return state, metrics
