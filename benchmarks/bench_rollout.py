"""Memory-agent rollout throughput and its linear cost, on SmolLM2-135M (real GGUF weights).

Part 1, throughput at the `cpu` config's shapes (configs/memtrain.py:cpu: G1 = G2 = 4, 3 chunks of 128
tokens, a 64-token memory): a few rollout batches of the real data pipeline with the real sampler,
after a warm-up batch that compiles every program. Prints episodes/s, prompt and generated tokens/s
by kind of turn (memory / answer / recall), and the sampler's split between prefill and decode,
estimated by replaying each call's prompts with a budget of one token.

Part 2, linear cost: one episode read by the memory agent as its document grows from 2 to 16 chunks
(greedy, memory replies forced to the full budget so every turn costs the same), beside reading the
same text in one forward pass (full context, up to the model's window). Prints wall times and tokens,
the least-squares slope and R^2 of the agent's time against the number of chunks, and where a
quadratic fit of the full-context time crosses the agent's line (extrapolated when beyond the window).

    python benchmarks/bench_rollout.py [--quick] [--batches 3] [--chunks 2 4 8 12 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from memtrain_jax.agent import SamplerPolicy, assign_credit
from memtrain_jax.agent.rollout import Episode, rollout
from memtrain_jax.config import load_config
from memtrain_jax.model import forward
from memtrain_jax.tasks import AgentSetup


class PhaseTimedPolicy(SamplerPolicy):
    """A SamplerPolicy that also replays every call with a 1-token budget to time its prefill."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.prefill_s: dict[str, float] = {}

    def generate(self, prompts, max_new_tokens, *, kind, seed, row_ids=None):
        out = super().generate(prompts, max_new_tokens, kind=kind, seed=seed, row_ids=row_ids)
        ones = [min(int(b), 1) for b in max_new_tokens]
        start = time.perf_counter()
        self.sampler(self.params, prompts, max_new_tokens=ones, temperature=self.temperature, stop_tokens=(), seed=seed)
        self.prefill_s[kind] = self.prefill_s.get(kind, 0.0) + time.perf_counter() - start
        return out


def throughput(setup: AgentSetup, batches: int) -> None:
    policy = PhaseTimedPolicy(
        setup.sampler,
        setup.policy.params,
        setup.chat.stop_tokens(setup.tokenizer),
        temperature=setup.agent.temperature,
        top_p=setup.agent.top_p,
        top_k=setup.agent.top_k,
    )
    iterator = iter(setup.dataset())
    print("warm-up batch (compiles the sampler programs) ...", flush=True)
    start = time.perf_counter()
    setup.rollout(next(iterator), 0, policy=policy)
    print(f"  warm-up: {time.perf_counter() - start:.1f}s, {setup.sampler.compile_count} programs compiled")
    policy.reset_stats()
    policy.prefill_s = {}
    compiled = setup.sampler.compile_count
    episodes = 0
    start = time.perf_counter()
    for step in range(1, batches + 1):
        result = setup.rollout(next(iterator), step, policy=policy)
        if result is not None:
            episodes += len(result.episodes)
            assign_credit(result, setup.agent)
    # The 1-token replays that time the prefill are not part of the rollout: take them out of the wall time.
    seconds = time.perf_counter() - start - sum(policy.prefill_s.values())
    stats = policy.reset_stats()
    sampled = sum(s.seconds for s in stats.values())
    print(f"\n== rollout throughput, {batches} batches of the cpu config (after warm-up) ==")
    print(
        f"episodes: {episodes} in {seconds:.1f}s = {episodes / seconds:.3f} episodes/s "
        f"({setup.agent.group_size} trajectories each, {setup.agent.recall_group_size} recall samples each)"
    )
    print(
        f"{'kind':8s} {'calls':>5s} {'rows':>5s} {'prompt tok/s':>13s} {'gen tok/s':>10s} {'seconds':>8s} "
        f"{'prefill share':>13s}"
    )
    for kind, s in stats.items():
        prefill = min(policy.prefill_s.get(kind, 0.0) / s.seconds, 1.0)  # a 1-token replay = prefill + 1 step
        print(
            f"{kind:8s} {s.calls:5d} {s.rows:5d} {s.prompt_tokens / s.seconds:13.1f} "
            f"{s.generated_tokens / s.seconds:10.1f} {s.seconds:8.1f} {prefill:13.2f}"
        )
    total_prompt = sum(s.prompt_tokens for s in stats.values())
    total_gen = sum(s.generated_tokens for s in stats.values())
    print(
        f"all: {total_prompt / sampled:.1f} prompt tok/s, {total_gen / sampled:.1f} generated tok/s; sampler "
        f"{sampled:.1f}s of {seconds:.1f}s; recompilations after warm-up: {setup.sampler.compile_count - compiled}"
    )


def _fit(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, float]:
    coefficients = np.polyfit(x, y, degree)
    residual = y - np.polyval(coefficients, x)
    r2 = 1.0 - float(residual @ residual) / float(((y - y.mean()) ** 2).sum())
    return coefficients, r2


def linear_cost(setup: AgentSetup, chunk_counts: list[int]) -> None:
    tokenizer, agent = setup.tokenizer, setup.agent
    text = "\n\n".join(p.text for p in setup.prepared.pool[:400])
    ids = np.asarray(tokenizer.encode(text), np.int32)
    size = agent.chunk_size
    # Every memory reply runs to the full budget (no stop token): each turn costs the same.
    policy = SamplerPolicy(setup.sampler, setup.policy.params, stop_tokens=(), temperature=0.0)
    greedy = dataclasses.replace(agent, group_size=1, imr=False)
    window = setup.policy.model_config.max_position_embeddings
    rows = []
    print(f"\n== linear cost: one episode of n chunks x {size} tokens, memory {agent.memory_tokens} tokens ==")
    warm = Episode(0, "x", [ids[:size], ids[size : 2 * size]])
    rollout(policy, [warm], setup.builder, tokenizer, greedy, seed=0, step=0)  # compile
    print(f"{'chunks':>6s} {'doc tokens':>10s} {'agent s':>8s} {'agent tokens':>12s} {'full-context s':>14s}")
    for n in chunk_counts:
        chunks = [ids[i * size : (i + 1) * size] for i in range(n)]
        episode = Episode(n, "x", chunks)
        policy.reset_stats()
        start = time.perf_counter()
        rollout(policy, [episode], setup.builder, tokenizer, greedy, seed=0, step=0)
        agent_s = time.perf_counter() - start
        stats = policy.reset_stats()
        agent_tokens = sum(s.prompt_tokens + s.generated_tokens for s in stats.values())
        full_s = float("nan")
        if n * size <= window:
            tokens = np.concatenate(chunks)[None]
            np.asarray(forward(setup.policy.model_config, setup.policy.params, tokens))  # compile this length
            start = time.perf_counter()
            np.asarray(forward(setup.policy.model_config, setup.policy.params, tokens))
            full_s = time.perf_counter() - start
        rows.append((n, agent_s, full_s))
        print(f"{n:6d} {n * size:10d} {agent_s:8.2f} {agent_tokens:12d} {full_s:14.2f}", flush=True)
    n = np.asarray([r[0] for r in rows], np.float64)
    agent_time = np.asarray([r[1] for r in rows])
    (slope, intercept), r2 = _fit(n, agent_time, 1)
    print(f"memory agent: {slope:.2f} s per chunk (+{intercept:.2f} s), R^2 = {r2:.4f} (target >= 0.99)")
    have = ~np.isnan([r[2] for r in rows])
    if have.sum() >= 3:
        quad, r2_full = _fit(n[have], np.asarray([r[2] for r in rows])[have], 2)
        roots = np.roots(quad - np.asarray([0.0, slope, intercept]))
        real = sorted(r.real for r in roots if abs(r.imag) < 1e-9 and r.real > 0)
        where = f"{real[0]:.0f} chunks = {real[0] * size:.0f} tokens" if real else "none (full context stays cheaper)"
        beyond = " (beyond the model's window: extrapolated)" if real and real[0] * size > window else ""
        print(f"full context: quadratic fit R^2 = {r2_full:.4f}; crossover with the agent at {where}{beyond}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 batch and 2/4/8 chunks")
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--chunks", type=int, nargs="+", default=[2, 4, 8, 12, 16])
    args = parser.parse_args()
    config = load_config("memtrain.py:cpu")
    setup = AgentSetup.build(config, log=None)
    print(f"policy {setup.policy.description}; mesh {dict(setup.mesh.shape)}")
    throughput(setup, 1 if args.quick else args.batches)
    linear_cost(setup, [2, 4, 8] if args.quick else args.chunks)


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()  # as `memtrain` does (memtrain_jax/host_memory.py)
    main()
