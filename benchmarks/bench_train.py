"""Training-step throughput: our GRPO update vs google-tunix's, MFU, rollout/update split, recompilations.

One process measures everything side by side, so the ratios hold even on a shared, noisy CPU:

* the machine's float32 matmul peak, measured here with jax on SmolLM2's update matmuls (MLP
  [4096, 576] x [576, 1536], head [1024, 576] x [576, 49152]) and a square 2048 one; the best is the peak;
* the share of a whole MemTrain training step spent in rollout vs update, from a few GRPO steps of
  `Trainer(configs/memtrain.py:tiny).train()` (its metrics.jsonl: rollout_s, update_s, step_s), and
  the compilations after the first step (must not grow); `--workdir DIR` prints the same split from an
  existing run's metrics.jsonl (e.g. runs/memtrain-cpu_long);
* per model (tiny; SmolLM2-135M's shapes) and sequence length L at micro-batch B = 8: one GRPO
  optimiser step of ours (`Learner.update`: accumulate over the packed micro-batch -> AdamW; full
  fine-tuning) and of google-tunix on the same shapes, timed back to back (alternating; median of the
  timed steps after a warm-up step that compiles), as tokens/s, MFU and the tunix/ours time ratio, with
  the XLA compilations each side made during its timed steps (must be 0).

What is timed. The batch: B rows of exactly L tokens (no padding), a prompt of L - R tokens and a
response of R = L/4 tokens, every response token in the loss; advantages ~ N(0, 1), old log-probs near
-log V (importance ratios near 1). Both sides: sequence-mean aggregation (tunix:
"sequence-mean-token-mean"), clip 0.2/0.2, KL off (beta = kl_coef = 0, the CPU configs' setting, so no
reference model), AdamW (lr 1e-6, b 0.9/0.999, eps 1e-8, weight decay 0.01) after global-norm clipping
at 1.0, float32 weights and compute, no rematerialisation, random weights, no rollout. Ours: the
micro-batch packed by `train.batching.pack` from `TrainingSequences`, then `Learner.update` (placement,
the jitted accumulate with a donated gradient buffer, the jitted AdamW apply, metrics to the host).
tunix: its RL actor trainer's jitted step (`rl.trainer.Trainer` = `PeftTrainer._train_step` under
`nnx.jit`: `nnx.value_and_grad` of `algo_core.grpo_loss_fn`, wired as `GRPOLearner` wires it, then
`nnx.Optimizer.update`) on its own Llama3 nnx model of the same shape, fed a `TrainExample` (prompt
ids, completion ids and mask, advantages, old per-token log-probs), as `PeftTrainer.train` calls it
once per step. SmolLM2 runs its first 6 of 30 layers by default (`--smollm2-layers`): every layer and
the head keep their shapes, but the full model at B x L = 8 x 512 needs ~15 GiB and minutes a step on
a 2-core machine; the head is then a larger share of the work than in the full model.

Model FLOPs of one update, both sides credited the same count (so the MFU ratio is the speed ratio):
6 x (matmul parameters of the layers) x B x L + 6 x (head H x V) x B x R (the head where the loss
scores, "MFU") or x B x L (at every position, "MFU6NT") + causal attention 3 x 2 x N x D x L x (L + 1)
per layer and row (QK and PV, forward and twice that backward). Embedding look-ups, norms, softmaxes
and recomputation (ours recomputes each head block in the backward pass) are not counted.

google-tunix's dependencies would change jax/flax here, so install it beside them, without dependencies:

    pip install --no-deps --target /tmp/tunix_site google-tunix google-metrax clu perfetto \\
        jaxtyping wadler-lindig pillow pandas python-dateutil
    python benchmarks/bench_train.py --quick --tunix-path /tmp/tunix_site     # tiny only, ~1-2 min
    python benchmarks/bench_train.py --tunix-path /tmp/tunix_site             # + SmolLM2, ~10-15 min on 2 cores
    python benchmarks/bench_train.py --no-update --train-steps 0 --workdir runs/memtrain-cpu_long   # a run's split

Timings on a shared CPU are noisy: take them as rough figures, the ratios as the better ones.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from common import best_time, layer_matmul_params, tunix_shape

from memtrain_jax import sharding
from memtrain_jax.agent.credit import TrainingSequences
from memtrain_jax.config import load_config
from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.rl.loss import LossConfig, aggregation_weights
from memtrain_jax.train.batching import LengthBuckets, pack
from memtrain_jax.train.learner import Learner, OptimConfig
from memtrain_jax.train.metrics import read_metrics

MODELS = {name: ModelConfig.from_dict(load_config(f"configs/models.py:{name}")) for name in ("tiny", "smollm2-135m")}
PAD_ID = 0
LEARNING_RATE = 1e-6
CLIP = 0.2
# tunix materialises [B, L, V] float32 logits (and their gradient) and [B, N, L, L] attention scores for every
# layer; shapes whose estimate exceeds this share of the free memory are skipped for it (ours runs them).
TUNIX_MEMORY_SHARE = 0.9


# ------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------


class CompileCounter:
    """Counts XLA backend compilations in this process (jax.monitoring events), whoever triggers them."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, name: str, _seconds: float, **_) -> None:
        if name == self.EVENT:
            self.count += 1


def matmul_peaks(shapes: list[tuple[int, int, int]], runs: int = 5) -> dict[str, float]:
    """Float32 jax matmul FLOP/s of [m, k] x [k, n] for each (m, k, n)."""
    rng = np.random.default_rng(0)
    mm = jax.jit(lambda x, y: x @ y)
    peaks = {}
    for m, k, n in shapes:
        a = jnp.asarray(rng.standard_normal((m, k), np.float32))
        b = jnp.asarray(rng.standard_normal((k, n), np.float32))
        run = lambda a=a, b=b: mm(a, b).block_until_ready()
        peaks[f"[{m},{k}]x[{k},{n}]"] = 2 * m * k * n / best_time(run, runs)
    return peaks


def update_flops(config: ModelConfig, batch: int, length: int, scored: int) -> tuple[float, float]:
    """Model FLOPs of one full update (forward + backward) of `batch` rows of `length` tokens, of which the loss
    scores `scored` per row: (the head applied to the scored positions only, the head applied to all positions)."""
    layers = 6 * layer_matmul_params(config) * batch * length
    attention = 3 * config.num_layers * 2 * config.num_heads * config.head_dim * length * (length + 1) * batch
    head = 6 * config.hidden_size * config.vocab_size * batch
    return float(layers + attention + head * scored), float(layers + attention + head * length)


def free_memory_bytes() -> float:
    """MemAvailable of /proc/meminfo (inf where unknown), after handing this process's freed heap back."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # XLA:CPU buffers come from malloc; glibc keeps freed ones
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def tunix_memory_estimate(config: ModelConfig, batch: int, length: int) -> float:
    """Rough bytes tunix's step keeps alive: logits, log-softmax, softmax and their cotangents ([B, L, V] float32,
    ~6 copies), attention scores and probabilities of every layer ([B, N, L, L] float32, 2 per layer), weights,
    gradients and Adam moments (4 copies)."""
    logits = 6 * 4 * batch * length * config.vocab_size
    scores = 2 * 4 * config.num_layers * batch * config.num_heads * length * length
    return logits + scores + 4 * 4 * config.num_params()


# ------------------------------------------------------------------------------------------------
# The batch
# ------------------------------------------------------------------------------------------------


def make_batch(config: ModelConfig, batch: int, length: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """B rows of exactly L tokens: prompt [B, L - R], response [B, R] (R = L / 4), old log-probs [B, R],
    advantages [B]."""
    response = response_length(length)
    tokens = rng.integers(3, config.vocab_size, size=(batch, length)).astype(np.int32)  # never PAD_ID
    old_logp = (-np.log(config.vocab_size) + 0.1 * rng.standard_normal((batch, response))).astype(np.float32)
    advantages = rng.standard_normal(batch).astype(np.float32)
    return {"tokens": tokens, "prompt_length": length - response, "old_logp": old_logp, "advantages": advantages}


def response_length(length: int) -> int:
    return max(length // 4, 1)


def our_micro_batches(data: dict, length: int, micro_batch: int) -> list:
    """The batch as our trainer packs it: TrainingSequences -> sequence-mean weights -> `pack`."""
    tokens, p = data["tokens"], data["prompt_length"]
    n = len(tokens)
    sequences = TrainingSequences(
        prompts=[row[:p] for row in tokens],
        responses=[row[p:] for row in tokens],
        logprobs=list(data["old_logp"]),
        loss_masks=[np.ones(length - p, bool) for _ in range(n)],
        advantages=data["advantages"],
        rewards=np.zeros(n, np.float32),
        episode_ids=np.zeros(n, np.int64),
        trajectories=np.arange(n),
        conversations=np.arange(n),
        groups=np.zeros(n, np.int64),
        turns=np.zeros(n, np.int64),
        kinds=np.zeros(n, np.int64),
    )
    weights, counts = aggregation_weights("sequence_mean", np.full(n, length - p), sequences.conversations)
    buckets = LengthBuckets(min(128, length), length)
    return pack(sequences, weights, counts, buckets, micro_batch, PAD_ID, window=length - p)


# ------------------------------------------------------------------------------------------------
# The two updates: each returns a function running one synchronous optimiser step
# ------------------------------------------------------------------------------------------------


class Ours:
    """Our Learner on a one-device mesh, full fine-tuning, KL off."""

    def __init__(self, config: ModelConfig, trainable_layers: int = 0):
        mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
        optim = OptimConfig(learning_rate=LEARNING_RATE, warmup_steps=0, weight_decay=0.01, clip_norm=1.0)
        loss = LossConfig(clip_low=CLIP, clip_high=CLIP, kl_coef=0.0, aggregation="sequence_mean")
        self.learner = Learner(
            config, mesh, sharding.DEFAULT_RULES, optim, loss, logprob_chunk=256, trainable_layers=trainable_layers
        )
        self.state = self.learner.init_state(init_params(config, jax.random.key(0)))

    def step_fn(self, data: dict, length: int, micro_batch: int) -> Callable[[], None]:
        micro = our_micro_batches(data, length, micro_batch)

        def step() -> None:
            self.state, metrics = self.learner.update(self.state, micro, "grpo")  # returns host floats: synchronous
            assert np.isfinite(metrics["loss"]), metrics

        return step


class Tunix:
    """google-tunix's RL actor trainer on its Llama3 nnx model of the same shape, wired as GRPOLearner wires it."""

    def __init__(self, config: ModelConfig):
        import optax
        from flax import nnx
        from tunix.models.llama3 import model as tunix_model
        from tunix.rl import algo_core, function_registry  # noqa: F401  (algo_core registers the "grpo" loss)
        from tunix.rl import trainer as rl_trainer
        from tunix.rl.grpo import grpo_learner
        from tunix.sft import peft_trainer

        if config.family != "llama":
            raise NotImplementedError(f"only Llama-family shapes are wired for tunix here, not {config.family}")
        tconfig = tunix_model.ModelConfig(**tunix_shape(config), weight_tying=config.tie_embeddings)
        self.nnx = nnx
        self.model = tunix_model.Llama3(tconfig, rngs=nnx.Rngs(0))
        optimizer = optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.adamw(LEARNING_RATE, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01),
        )
        self.trainer = rl_trainer.Trainer(
            self.model,
            optimizer,
            peft_trainer.TrainingConfig(eval_every_n_steps=1 << 30),
            custom_checkpoint_metadata_fn=lambda: {},
        )
        algo = grpo_learner.GRPOConfig(
            num_generations=2, beta=0.0, epsilon=CLIP, loss_agg_mode="sequence-mean-token-mean"
        )
        algo.temperature = 1.0  # GRPOLearner copies the rollout temperature here
        policy_loss = function_registry.get_policy_loss_fn(algo.policy_loss_fn)
        self.trainer.with_loss_fn(
            lambda model, train_example, algo_config: policy_loss(
                model, train_example, algo_config=algo, pad_id=PAD_ID, eos_id=1
            ),
            has_aux=True,
        )
        self.trainer.with_gen_model_input_fn(lambda x: {"train_example": x, "algo_config": algo})
        self.train_step, _ = self.trainer.jit_train_and_eval_step(cache_nnx_graph=True)
        self.example_class = grpo_learner.TrainExample

    def step_fn(self, data: dict, length: int, micro_batch: int) -> Callable[[], None]:
        tokens, p = data["tokens"], data["prompt_length"]
        if len(tokens) != micro_batch:
            raise ValueError("tunix is timed on exactly one micro-batch per optimiser step")
        prompt, completion = jnp.asarray(tokens[:, :p]), jnp.asarray(tokens[:, p:])
        example = self.example_class(
            prompt_ids=prompt,
            prompt_mask=prompt != PAD_ID,
            completion_ids=completion,
            completion_mask=jnp.ones(completion.shape, jnp.int32),
            advantages=jnp.asarray(data["advantages"]),
            ref_per_token_logps=None,
            old_per_token_logps=jnp.asarray(data["old_logp"]),
        )

        def step() -> None:
            loss, _, grad_norm = self.train_step(example)
            jax.block_until_ready((loss, grad_norm, self.nnx.state(self.model, self.nnx.Param)))
            assert np.isfinite(float(loss)), loss

        return step


# ------------------------------------------------------------------------------------------------
# One model
# ------------------------------------------------------------------------------------------------


def bench_model(label: str, config: ModelConfig, lengths: list[int], args, repeats: int, counter, peak: float):
    micro = args.micro_batch
    print(
        f"== {label}: {config.num_params() / 1e6:.1f}M params ({layer_matmul_params(config) / 1e6:.1f}M in layer "
        f"matmuls + {config.hidden_size * config.vocab_size / 1e6:.1f}M head), micro-batch {micro}, "
        f"response = L/4, full fine-tuning, KL off =="
    )
    sides: dict[str, object] = {}
    start = time.perf_counter()
    sides["ours"] = Ours(config)
    print(f"  ours: Learner + state built in {time.perf_counter() - start:.1f} s")
    tunix_note = args.tunix_error
    if tunix_note is None:
        try:
            start = time.perf_counter()
            sides["tunix"] = Tunix(config)
            print(f"  tunix: Llama3 model + rl.trainer.Trainer built in {time.perf_counter() - start:.1f} s")
        except Exception as e:  # report and go on with our figures
            tunix_note = f"set-up failed: {type(e).__name__}: {str(e)[:300]}"
            print(f"  tunix: {tunix_note}")
    rng = np.random.default_rng(0)
    side = f"{'s/step':>7} {'+-':>4} {'tok/s':>6} {'MFU':>6} {'MFU6NT':>6} {'first s':>7} {'recomp':>6}"
    header = f"  {'L':>5} {'tokens':>6} | ours   {side} | tunix  {side} | {'tunix/ours time':>15}"
    width = len(side) + 7
    for length in lengths:
        data = make_batch(config, micro, length, rng)
        tokens = micro * length
        useful, full = update_flops(config, micro, length, response_length(length))
        steps: dict[str, Callable[[], None]] = {"ours": sides["ours"].step_fn(data, length, micro)}
        skip = None
        if "tunix" in sides:
            need, free = tunix_memory_estimate(config, micro, length), free_memory_bytes()
            if need > TUNIX_MEMORY_SHARE * free:
                skip = f"skipped: ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} free"
            else:
                steps["tunix"] = sides["tunix"].step_fn(data, length, micro)
        first, times, recompiled, failed = {}, {k: [] for k in steps}, {k: 0 for k in steps}, {}
        for key, step in list(steps.items()):  # warm-up: compiles this shape
            start = time.perf_counter()
            try:
                step()
            except Exception as e:  # report and go on with the other figures
                failed[key] = f"failed: {type(e).__name__}: {e}"
                print(f"  {key} at L={length}: {failed[key][:400]}")
                del steps[key]
            first[key] = time.perf_counter() - start
        traced = sides["ours"].learner.compile_count
        for _ in range(repeats):  # alternate the sides so a drifting load hits both alike
            for key, step in steps.items():
                before = counter.count
                start = time.perf_counter()
                step()
                times[key].append(time.perf_counter() - start)
                recompiled[key] += counter.count - before
        if "ours" in steps:  # a retrace of our programs counts even where XLA's cache would answer it
            recompiled["ours"] += sides["ours"].learner.compile_count - traced
        cells, median = {}, {}
        for key in ("ours", "tunix"):
            if key not in steps:
                note = failed.get(key) or skip or tunix_note or "-"
                cells[key], median[key] = f"{note[: width - 1]:>{width}}", None
                continue
            t = median[key] = statistics.median(times[key])
            spread = (max(times[key]) - min(times[key])) / 2 / t
            cells[key] = (
                f"{'':6} {t:7.2f} {spread:4.0%} {tokens / t:6.0f} {useful / t / peak:6.1%} {full / t / peak:6.1%} "
                f"{first[key]:7.1f} {recompiled[key]:6d}"
            )
        ours_cells, t_ours = cells["ours"], median["ours"]
        tunix_cells, t_tunix = cells["tunix"], median["tunix"]
        ratio = f"{t_tunix / t_ours:14.2f}x" if t_ours and t_tunix else f"{'-':>15}"
        if length == lengths[0]:
            print(header)
        print(f"  {length:5d} {tokens:6d} | {ours_cells} | {tunix_cells} | {ratio}", flush=True)
    print(
        f"  s/step: median of {repeats} alternating timed step(s) after a warm-up step (first s, compilation "
        "included), +- half their range;\n  tok/s = B x L / (s/step); recomp: XLA compilations (and, for ours, "
        "Learner retraces) during the timed steps, must be 0;\n  MFU: model FLOPs with the head on the scored "
        "(response) positions only, MFU6NT: with the head on every position, both over the measured peak "
        f"{peak / 1e9:.0f} GFLOP/s\n"
    )


# ------------------------------------------------------------------------------------------------
# Rollout vs update within a training step
# ------------------------------------------------------------------------------------------------


def print_split(records: list[dict], source: str) -> None:
    """Per step: phase, rollout / update / other seconds, rollout share, compilations; then the totals."""
    print(f"== rollout vs update per training step: {source} ==")
    if not records:
        print("  no step records\n")
        return
    print(
        f"  {'step':>4} {'phase':>6} {'step s':>8} {'rollout s':>9} {'update s':>8} {'other s':>7} "
        f"{'rollout%':>8} {'update%':>7} {'compilations':>12}"
    )
    for m in records:
        step_s = float(m.get("step_s", 0.0))
        rollout = float(m.get("rollout_s", 0.0))
        update = float(m.get("update_s", 0.0))
        other = step_s - rollout - update
        print(
            f"  {m['step']:4d} {m.get('phase', '?'):>6} {step_s:8.2f} {rollout:9.2f} {update:8.2f} {other:7.2f} "
            f"{rollout / max(step_s, 1e-9):8.1%} {update / max(step_s, 1e-9):7.1%} {m.get('compilations', '-'):>12}"
        )
    later = records[1:]
    for phase in sorted({m.get("phase", "?") for m in later}):
        steps = [m for m in later if m.get("phase", "?") == phase]
        total = sum(float(m.get("step_s", 0.0)) for m in steps)
        rollout = sum(float(m.get("rollout_s", 0.0)) for m in steps)
        update = sum(float(m.get("update_s", 0.0)) for m in steps)
        print(
            f"  {phase} steps after the first ({len(steps)}): rollout {rollout / max(total, 1e-9):.1%}, "
            f"update {update / max(total, 1e-9):.1%}, other {(total - rollout - update) / max(total, 1e-9):.1%} "
            f"of {total:.1f} s"
        )
    counts = [m["compilations"] for m in records if "compilations" in m]
    if counts:
        grown = counts[-1] - counts[0]
        verdict = "OK" if grown == 0 else "GREW (new programs after the first step)"
        print(f"  compilations: {counts[0]} after the first step, {counts[-1]} at the last: +{grown} ({verdict})")
    print()


def step_records(workdir: str) -> list[dict]:
    """The step records of a run's metrics.jsonl (a resumed run may rewrite a step: keep the last)."""
    return list({r["step"]: r for r in read_metrics(workdir) if "step_s" in r}.values())


def tiny_training_split(steps: int) -> None:
    """A few GRPO steps of configs/memtrain.py:tiny (no evaluation, no format warm-up, no DAPO filter)."""
    from memtrain_jax.train.trainer import Trainer

    config = load_config("memtrain.py:tiny")
    with tempfile.TemporaryDirectory() as directory:
        config.data.cache_dir = os.path.join(directory, "data")
        config.model.cache_dir = os.path.join(directory, "models")
        config.train.steps = steps
        config.train.format_steps = 0
        config.train.eval_every = 0
        config.train.checkpoint_every = 1 << 30  # only the final save
        config.rl.dapo_filter = False
        workdir = os.path.join(directory, "run")
        start = time.perf_counter()
        trainer = Trainer(config, workdir, log=lambda _: None)
        built = time.perf_counter() - start
        start = time.perf_counter()
        trainer.train()
        source = (
            f"configs/memtrain.py:tiny, {steps} GRPO steps (set-up {built:.1f} s, training "
            f"{time.perf_counter() - start:.1f} s; micro-batch {config.train.micro_batch_size}, KL {config.rl.kl_coef})"
        )
        print_split(step_records(workdir), source)


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model only, L = 128 and 256; 3 training steps")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=None)
    parser.add_argument("--lengths", nargs="+", type=int, default=None, help="tiny model: sequence lengths")
    parser.add_argument("--smollm2-lengths", nargs="+", type=int, default=None, help="SmolLM2: sequence lengths")
    parser.add_argument(
        "--smollm2-layers", type=int, default=6, help="SmolLM2 layers timed (of 30; 30 needs ~15 GiB at L = 512)"
    )
    parser.add_argument("--micro-batch", type=int, default=8, help="rows per update (one micro-batch)")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per side and shape (median)")
    parser.add_argument("--train-steps", type=int, default=None, help="steps of the tiny training run (0 = skip)")
    parser.add_argument("--workdir", default=None, help="also print the split of this run's metrics.jsonl")
    parser.add_argument("--no-update", action="store_true", help="skip the update benchmark")
    parser.add_argument("--no-tunix", action="store_true", help="skip google-tunix")
    parser.add_argument("--tunix-path", default=None, help="directory holding an installed google-tunix")
    parser.add_argument("--matmul-precision", default="highest", help="jax_default_matmul_precision")
    parser.add_argument("--attention", default=None, help="ModelConfig.attention of ours (e.g. reference, blocked)")
    args = parser.parse_args(argv)
    jax.config.update("jax_default_matmul_precision", args.matmul_precision)
    counter = CompileCounter()

    models = args.models or (["tiny"] if args.quick else ["tiny", "smollm2-135m"])
    smollm2 = MODELS["smollm2-135m"]
    configs = {
        "tiny": ("tiny", MODELS["tiny"], args.lengths or ([128, 256] if args.quick else [256, 512, 1024]), 3),
        "smollm2-135m": (
            f"smollm2-135m shapes, {args.smollm2_layers} of {smollm2.num_layers} layers",
            smollm2.replace(
                num_layers=args.smollm2_layers, **({"attention": args.attention} if args.attention else {})
            ),
            args.smollm2_lengths or ([128] if args.quick else [256, 512]),
            3,
        ),
    }
    train_steps = args.train_steps if args.train_steps is not None else (3 if args.quick else 5)

    args.tunix_error = None
    if args.no_tunix:
        args.tunix_error = "skipped (--no-tunix)"
    elif not args.no_update:
        if args.tunix_path:
            sys.path.insert(0, args.tunix_path)
        try:
            import tunix.rl.grpo.grpo_learner  # noqa: F401
            import tunix.rl.trainer  # noqa: F401
        except Exception as e:  # report why, keep benchmarking the rest
            args.tunix_error = f"cannot import tunix: {type(e).__name__}: {e}"

    print(f"jax {jax.__version__} backend={jax.default_backend()} devices={jax.devices()}; cpu cores={os.cpu_count()}")
    peak = float("nan")
    if not args.no_update:
        # SmolLM2's MLP and head matmuls at B x L = 4096 / 1024 rows, and a square one; the best is the peak
        # (the tiny model's 64-wide matmuls stay in cache and say little about the machine).
        h = smollm2.hidden_size
        peaks = matmul_peaks([(4096, h, smollm2.intermediate_size), (1024, h, smollm2.vocab_size), (2048, 2048, 2048)])
        peak = max(peaks.values())
        print("float32 matmul (jax): " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()) + " GFLOP/s")
        print(f"peak = the best: {peak / 1e9:.0f} GFLOP/s; matmul precision {args.matmul_precision}")
        if args.tunix_error:
            print(f"tunix: {args.tunix_error}")
        else:
            import importlib.metadata

            try:
                version = importlib.metadata.version("google-tunix")
            except importlib.metadata.PackageNotFoundError:
                version = "?"
            print(f"tunix {version} from {os.path.dirname(os.path.dirname(sys.modules['tunix'].__file__))}")
        print(flush=True)
    # The short training run first: a shape that runs out of memory below must not take its figures along.
    if train_steps > 0:
        tiny_training_split(train_steps)
    if args.workdir:
        print_split(step_records(args.workdir), args.workdir)
    if not args.no_update:
        for name in models:
            label, config, lengths, repeats = configs[name]
            bench_model(label, config, lengths, args, args.repeats or repeats, counter, peak)


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()  # as `memtrain` does (memtrain_jax/host_memory.py)
    main()
