"""GRPO update of G2 recall samples that share a prompt: whole sequences vs the prompt computed once.

At the learning protocol's shape (SmolLM2-135M, the top 6 of 30 layers trained, recall prompts of ~190-330
tokens, answers of up to 24), a probe's G2 = 8 samples repeat one prompt. `train.share_prompts` packs them as
SharedPromptBatches (memtrain_jax.train.batching): the prompt runs once into a KV cache and each sample runs only
its answer against it. This times one optimiser step (`Learner.update`, accumulate over the micro-batches + AdamW)
of the same sequences packed both ways, alternating, best of `--repeats` after a step that compiles, and prints
each side's time, its MFU against this CPU's float32 matmul peak measured in the same process (FLOPs of the work
each side must do: a shared prompt counted once), and the flat/shared ratio. Random weights; rewards and
advantages are random (the update's cost does not depend on them).

    python benchmarks/bench_shared_prompts.py                       # 4 probes x 8 samples, prompts 264 tokens
    python benchmarks/bench_shared_prompts.py --prompt 320 --probes 8
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np
from common import layer_matmul_params, matmul_peaks

from memtrain_jax.agent.credit import TrainingSequences
from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.model.presets import preset_values
from memtrain_jax.rl.loss import LossConfig, aggregation_weights
from memtrain_jax.sharding import DEFAULT_RULES, make_mesh
from memtrain_jax.train.batching import LengthBuckets, pack, pack_shared, shared_prompt_groups
from memtrain_jax.train.learner import Learner, OptimConfig


def sequences(vocab: int, probes: int, k: int, prompt: int, answer: int, seed: int = 0) -> TrainingSequences:
    rng = np.random.default_rng(seed)
    prompts, responses = [], []
    for _ in range(probes):
        shared = rng.integers(1, vocab, prompt).astype(np.int32)
        for _ in range(k):
            prompts.append(shared)
            responses.append(rng.integers(1, vocab, int(rng.integers(answer // 2, answer + 1))).astype(np.int32))
    n = len(prompts)
    return TrainingSequences(
        prompts=prompts,
        responses=responses,
        logprobs=[np.full(len(r), -np.log(vocab), np.float32) for r in responses],
        loss_masks=[np.ones(len(r), bool) for r in responses],
        advantages=rng.normal(0, 1, n).astype(np.float32),
        rewards=np.zeros(n, np.float32),
        episode_ids=np.zeros(n, np.int64),
        trajectories=np.arange(n, dtype=np.int32),
        conversations=np.arange(n, dtype=np.int32),
        groups=np.repeat(np.arange(probes), k).astype(np.int32),
        turns=np.zeros(n, np.int32),
        kinds=np.zeros(n, np.int32),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=4, help="prompts (recall probes) in the update")
    parser.add_argument("--k", type=int, default=8, help="samples a prompt (G2)")
    parser.add_argument("--prompt", type=int, default=264, help="prompt tokens")
    parser.add_argument("--answer", type=int, default=24, help="longest answer (the scoring window)")
    parser.add_argument("--micro-batch", type=int, default=8, help="train.micro_batch_size (rows a flat micro-batch)")
    parser.add_argument("--trainable-layers", type=int, default=6)
    parser.add_argument("--block", type=int, default=64, help="train.length_block")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    config = ModelConfig(**preset_values("smollm2-135m"))
    peak = max(matmul_peaks().values())
    params = init_params(config, jax.random.key(0))
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    learner = Learner(
        config, mesh, DEFAULT_RULES, OptimConfig(learning_rate=1e-6, warmup_steps=0), LossConfig(kl_coef=0.0),
        trainable_layers=args.trainable_layers,
    )  # fmt: skip
    seqs = sequences(config.vocab_size, args.probes, args.k, args.prompt, args.answer)
    w, c = aggregation_weights("token_mean", np.asarray([m.sum() for m in seqs.loss_masks]), seqs.conversations)
    window = -(-args.answer // 8) * 8
    buckets = LengthBuckets(args.block, -(-(args.prompt + window) // args.block) * args.block)
    groups = shared_prompt_groups(seqs, range(len(seqs)), args.k)
    packed = {
        "flat": pack(seqs, w, c, buckets, args.micro_batch, 0, window),
        "shared": pack_shared(seqs, w, c, groups, buckets, max(1, args.micro_batch // args.k), 0, window),
    }
    # FLOPs each side must do: forward of every token through all layers, backward through the trained ones, the
    # head where scored (forward + backward); a shared prompt runs once.
    per_token = 2 * layer_matmul_params(config) / config.num_layers
    head = 2 * config.hidden_size * config.vocab_size
    scored = sum(len(r) for r in seqs.responses)
    tokens = {
        "flat": sum(len(p) + len(r) for p, r in zip(seqs.prompts, seqs.responses, strict=True)),
        "shared": args.probes * (args.prompt - 1) + sum(len(r) + 1 for r in seqs.responses),
    }
    flops = {
        side: per_token * (config.num_layers + 2 * args.trainable_layers) * t + 3 * head * scored
        for side, t in tokens.items()
    }
    state = learner.init_state(params)
    times: dict[str, list[float]] = {"flat": [], "shared": []}
    for repeat in range(args.repeats + 1):  # the first round compiles
        for side, micro in packed.items():
            start = time.perf_counter()
            state, _ = learner.update(state, micro)
            jax.block_until_ready(state.params)
            if repeat:
                times[side].append(time.perf_counter() - start)
        print(f"round {repeat}: " + ", ".join(f"{s} {t[-1]:.2f} s" for s, t in times.items() if t), file=sys.stderr)
    best = {side: min(t) for side, t in times.items()}
    print(
        f"{args.probes} prompts of {args.prompt} tokens x {args.k} answers of <= {args.answer}; SmolLM2-135M, top "
        f"{args.trainable_layers} of {config.num_layers} layers trained; matmul peak {peak / 1e9:.0f} GFLOP/s; "
        f"best of {args.repeats}"
    )
    print(f"{'':10}{'micro-batches':>15}{'tokens':>10}{'update (s)':>12}{'MFU':>7}")
    for side in ("flat", "shared"):
        mfu = flops[side] / best[side] / peak
        print(f"{side:10}{len(packed[side]):>15}{tokens[side]:>10}{best[side]:>12.2f}{mfu:>7.2f}")
    print(f"flat / shared time: {best['flat'] / best['shared']:.2f}x")


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()
    main()
