"""Long-text QA evaluation throughput: the memory agent against the full-context reader as the context grows.

SmolLM2-135M (real GGUF weights), greedy, the dev questions prepared from the shipped pool
(memtrain_jax/data/qa.py), contexts of a ladder of document counts. Both readers answer the same
questions at each length through `memtrain_jax.agent.qa.evaluate_long_qa`, the code `memtrain eval-qa`
runs. Each length runs twice and the second, compiled, pass is timed. Prints per reader and length:
context tokens, seconds, questions/s and processed tokens/s; then a least-squares line of the agent's
time against context tokens (R^2), a quadratic of the full-context time, and the crossover: the first
measured length where the agent is faster, else where the fits cross (extrapolated; beyond the model's
window the full-context reader would have to cut the middle of the text).

    python benchmarks/bench_qa.py [--num-docs 10 20 40 60] [--questions 2] [--chunk 512] [--memory 64]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from memtrain_jax.agent import SamplerPolicy
from memtrain_jax.agent.qa import evaluate_long_qa
from memtrain_jax.config import load_config
from memtrain_jax.tasks import AgentSetup


def _fit(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, float]:
    coef = np.polyfit(x, y, degree)
    residual = y - np.polyval(coef, x)
    return coef, 1.0 - float((residual**2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-docs", type=int, nargs="+", default=[10, 20, 40, 60])
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--memory", type=int, default=64)
    args = parser.parse_args()
    config = load_config("memtrain.py:cpu")
    config.task = "long_qa"
    config.agent.imr = False
    config.data.chunking.chunk_size = args.chunk
    config.agent.memory_tokens = args.memory
    config.qa.limit = args.questions
    setup = AgentSetup.build(config, log=None)
    window = setup.policy.model_config.max_position_embeddings
    policy = SamplerPolicy(setup.sampler, setup.policy.params, setup.chat.stop_tokens(setup.tokenizer), temperature=0.0)
    agent = dataclasses.replace(setup.agent, answer_extractor="boxed_or_line", group_size=1)
    print(
        f"policy {setup.policy.description}; chunk {args.chunk} tokens, memory {args.memory} tokens, "
        f"{args.questions} questions per length, window {window}"
    )
    rows = []
    for n in args.num_docs:
        run = lambda n=n: evaluate_long_qa(
            policy,
            setup.qa.dev,
            setup.qa.distractors,
            [n],
            setup.builder,
            setup.tokenizer,
            agent,
            seed=0,
            batch_size=args.questions,
            readers=("memory_agent", "full_context"),
            window=window,
            log=None,
        )[0]
        run()  # compiles this length's programs
        table = run()
        for reader in ("memory_agent", "full_context"):
            r = table[reader][str(n)]
            rows.append((reader, n, r["mean_tokens"], r["seconds"], r["questions_per_s"], r["tokens_per_s"]))
    print("\n| reader | documents | context tokens | seconds | questions/s | processed tokens/s |")
    print("|---|---|---|---|---|---|")
    for reader, n, tokens, seconds, qps, tps in rows:
        print(f"| {reader} | {n} | {tokens:.0f} | {seconds:.2f} | {qps:.3f} | {tps:.0f} |")
    agent_rows = [r for r in rows if r[0] == "memory_agent"]
    full_rows = [r for r in rows if r[0] == "full_context"]
    x = np.asarray([r[2] for r in agent_rows])
    a_coef, a_r2 = _fit(x, np.asarray([r[3] for r in agent_rows]), 1)
    f_coef, f_r2 = _fit(np.asarray([r[2] for r in full_rows]), np.asarray([r[3] for r in full_rows]), 2)
    print(
        f"\nmemory agent: {1000 * a_coef[0]:.2f} s per 1,000 context tokens + {a_coef[1]:.2f} s (R^2 {a_r2:.3f}); "
        f"full context: quadratic fit R^2 {f_r2:.3f}"
    )
    faster = [a for a, f in zip(agent_rows, full_rows, strict=True) if a[3] < f[3]]
    if faster:
        print(f"crossover: the memory agent is faster from {faster[0][1]} documents ({faster[0][2]:.0f} tokens) on")
        return
    diff = np.polysub(f_coef, np.concatenate([[0.0], a_coef]))
    roots = sorted(r.real for r in np.roots(diff) if abs(r.imag) < 1e-9 and r.real > x.max())
    where = f"{roots[0]:.0f} context tokens (extrapolated" + (
        ", beyond the model's window" if roots and roots[0] > window else ""
    )
    print(f"crossover: {where})" if roots else "crossover: the fits do not cross beyond the measured lengths")


if __name__ == "__main__":
    from memtrain_jax import host_memory

    host_memory.retain_freed_memory()  # as `memtrain` does (memtrain_jax/host_memory.py)
    main()
