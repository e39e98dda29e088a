"""What the agent asks of a policy: one batched generation call per turn."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from memtrain_jax.sampler import SampleOutput, Sampler


class Policy(Protocol):
    """Generates one reply per prompt, in one call for the whole batch.

    prompts: token-id lists; max_new_tokens: one budget per prompt (0 = the row only rides along);
    kind: "memory" / "answer" / "recall" (for accounting); seed: this call's randomness; row_ids: one int >= 0 per
    prompt (None = 0..n-1): a row's sample is a function of (seed, its row id, its prompt and budget) alone, so
    callers that key rows by episode get samples that do not depend on how the episodes were batched.
    Returns a SampleOutput of NumPy arrays [n, width]: the reply ids (a final stop token included),
    their log-probs under the policy, lengths and whether each row ended on a stop token.
    """

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        kind: str,
        seed: int,
        row_ids: Sequence[int] | None = None,
    ) -> SampleOutput: ...


@dataclasses.dataclass
class CallStats:
    """Per kind of call: calls, rows, prompt tokens, generated tokens, seconds."""

    calls: int = 0
    rows: int = 0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    seconds: float = 0.0


class SamplerPolicy:
    """The real policy: a Sampler, the current parameters and the rollout's sampling settings.

    `params` is replaced after every optimiser step; the sampler's compiled programs are reused.
    `max_rows` > 0 (the rollout micro-batch, `sampling.max_rows`): a call of more rows runs as consecutive
    sampler calls of at most that many, which bounds the KV cache and the decode's memory on the device; each
    row keeps its seed and row id, so its sample does not depend on `max_rows`.
    `kind_temperatures` overrides `temperature` for calls of those kinds (e.g. {"memory": 0.0}: greedy memories).
    """

    def __init__(
        self,
        sampler: Sampler,
        params: Any,
        stop_tokens: Sequence[int],
        *,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        max_rows: int = 0,
        kind_temperatures: Mapping[str, float] | None = None,
    ):
        if max_rows < 0:
            raise ValueError(f"sampling.max_rows must be >= 0 (0 = every row in one call), got {max_rows}.")
        self.sampler, self.params, self.stop_tokens = sampler, params, tuple(stop_tokens)
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k)
        self.max_rows = int(max_rows)
        self.kind_temperatures = {str(k): float(v) for k, v in (kind_temperatures or {}).items()}
        self.stats: dict[str, CallStats] = {}

    def update_params(self, params: Any) -> None:
        """The weights the next calls sample from (after an optimiser step, or a checkpoint's). They must have the
        current weights' tree, shapes and dtypes: the sampler's compiled programs are reused, never re-traced."""
        old, new = jax.tree.structure(self.params), jax.tree.structure(params)
        if old != new:
            raise ValueError(f"update_params: another parameter tree ({new}) than the policy's ({old}).")
        spec = lambda x: (tuple(x.shape), str(x.dtype))
        wrong = [
            f"{jax.tree_util.keystr(path)}: {spec(a)} -> {spec(b)}"
            for (path, a), b in zip(
                jax.tree_util.tree_leaves_with_path(self.params), jax.tree.leaves(params), strict=True
            )
            if spec(a) != spec(b)
        ]
        if wrong:
            raise ValueError(f"update_params: {len(wrong)} arrays change shape or dtype, e.g. {wrong[0]}.")
        self.params = params

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        kind: str,
        seed: int,
        row_ids: Sequence[int] | None = None,
    ) -> SampleOutput:
        start = time.perf_counter()
        ids = list(range(len(prompts))) if row_ids is None else [int(i) for i in row_ids]
        if len(ids) != len(prompts):
            raise ValueError(f"row_ids has {len(ids)} entries for {len(prompts)} prompts; give one per prompt.")
        temperature = self.kind_temperatures.get(kind, self.temperature)
        budgets = [int(b) for b in max_new_tokens]
        rows = list(range(len(prompts)))
        if temperature == 0:
            # A greedy reply is a function of its prompt and budget: each distinct pair is decoded once (e.g. the
            # final answers of a P-probe evaluation's trajectories, which share one memory).
            first: dict[tuple, int] = {}
            rows = [first.setdefault((tuple(p), b), i) for i, (p, b) in enumerate(zip(prompts, budgets, strict=True))]
            unique = sorted(first.values())
            position = {row: j for j, row in enumerate(unique)}
            prompts, budgets, ids = [prompts[i] for i in unique], [budgets[i] for i in unique], [ids[i] for i in unique]
            rows = [position[r] for r in rows]
        size = self.max_rows or len(prompts)
        parts = [
            self.sampler(
                self.params,
                prompts[i : i + size],
                max_new_tokens=budgets[i : i + size],
                temperature=temperature,
                top_k=self.top_k or None,
                top_p=self.top_p if self.top_p < 1.0 else None,
                stop_tokens=self.stop_tokens,
                seed=seed,
                row_ids=ids[i : i + size],
            )
            for i in range(0, len(prompts), size)
        ]
        out = parts[0] if len(parts) == 1 else _concatenate(parts)
        stats = self.stats.setdefault(kind, CallStats())  # the rows computed
        stats.calls += 1
        stats.rows += sum(b > 0 for b in budgets)
        stats.prompt_tokens += sum(len(p) for p, b in zip(prompts, budgets, strict=True) if b > 0)
        stats.generated_tokens += int(np.asarray(out.lengths).sum())
        stats.seconds += time.perf_counter() - start
        if len(rows) > len(prompts):  # the duplicates' rows, copied
            take = lambda x: np.asarray(x)[rows]
            out = SampleOutput(take(out.tokens), take(out.logprobs), take(out.lengths), take(out.stopped), out.steps)
        return out

    def reset_stats(self) -> dict[str, CallStats]:
        """The stats since the last reset (and starts new ones)."""
        stats, self.stats = self.stats, {}
        return stats


def _concatenate(parts: list[SampleOutput]) -> SampleOutput:
    """The rows of several calls as one output, each part's arrays right-padded to the widest."""
    width = max(p.tokens.shape[1] for p in parts)
    pad = lambda x: np.pad(x, ((0, 0), (0, width - x.shape[1])))
    return SampleOutput(
        tokens=np.concatenate([pad(p.tokens) for p in parts]),
        logprobs=np.concatenate([pad(p.logprobs) for p in parts]),
        lengths=np.concatenate([p.lengths for p in parts]),
        stopped=np.concatenate([p.stopped for p in parts]),
        steps=max(int(p.steps) for p in parts),
    )
