"""A scripted stand-in policy: chosen text at each turn, for tests and for dry runs of the agent loop."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from memtrain_jax.sampler import SampleOutput
from memtrain_jax.tokenizer.base import Tokenizer

# (kind, prompt ids, row index within the call) -> reply text
Script = Callable[[str, list[int], int], str]


class ScriptedPolicy:
    """Replies `script(kind, prompt, row)` encoded by `tokenizer`, ended by `stop_id`, cut at the row's budget.

    A reply longer than its budget is cut there and reported as not stopped, as the sampler does.
    Log-probs are zeros. `calls` records (kind, prompts, budgets) of every call, in order.
    """

    def __init__(self, tokenizer: Tokenizer, script: Script, stop_id: int):
        self.tokenizer, self.script, self.stop_id = tokenizer, script, int(stop_id)
        self.calls: list[tuple[str, list[list[int]], list[int]]] = []

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: Sequence[int],
        *,
        kind: str,
        seed: int,
        row_ids: Sequence[int] | None = None,
    ) -> SampleOutput:
        prompts = [list(p) for p in prompts]
        budgets = [int(b) for b in max_new_tokens]
        self.calls.append((kind, prompts, budgets))
        rows = []
        for i, (prompt, budget) in enumerate(zip(prompts, budgets, strict=True)):
            ids = [] if budget == 0 else self.tokenizer.encode(self.script(kind, prompt, i)) + [self.stop_id]
            rows.append((ids[:budget], len(ids) <= budget and budget > 0))
        width = max(1, max(len(ids) for ids, _ in rows))
        tokens = np.full((len(rows), width), self.tokenizer.pad_id, np.int32)
        for i, (ids, _) in enumerate(rows):
            tokens[i, : len(ids)] = ids
        return SampleOutput(
            tokens=tokens,
            logprobs=np.zeros(tokens.shape, np.float32),
            lengths=np.asarray([len(ids) for ids, _ in rows], np.int32),
            stopped=np.asarray([s for _, s in rows], bool),
            steps=width,
        )
