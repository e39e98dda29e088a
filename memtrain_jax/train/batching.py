"""Training sequences -> fixed-shape micro-batches, padded into a few length buckets.

A sequence is its prompt followed by its response, right padded. Only the response is scored:
the response tokens y_0..y_{R-1} (at positions P..P+R-1) are predicted at positions P-1..P+R-2,
so each row records `response_start` = P-1 and its per-token arrays cover a fixed window of W
positions from there: `loss_mask` is 1 on the first R, and `old_logp` holds the sampler's log-probs. The
vocabulary projection then runs on W positions per row instead of L (memory turns are mostly prompt). W is
the smallest of a few fixed windows (each reply budget, in multiples of 8) that holds the micro-batch's longest
response, so a micro-batch of 16-token recall answers does not pay for 96-token memories.

Each micro-batch has `micro_batch_size` rows of one bucket length; sequences are sorted by
length so short ones share short buckets, and a bucket's last micro-batch is filled with empty
rows (zero weight, zero mask). Buckets are multiples of `block` up to `max_length`, so a run
compiles at most max_length / block training programs.

Shapes: M rows per micro-batch, L bucket length, W response window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import flax
import numpy as np

from memtrain_jax.agent.credit import TrainingSequences

Windows = int | Sequence[int]  # one response window, or several: a micro-batch takes the smallest that fits


@flax.struct.dataclass
class MicroBatch:
    """One micro-batch (NumPy on the host, sharded over the batch axes on the mesh).

    tokens: [M, L] int32, right padded; attention_mask: [M, L] bool; response_start: [M] int32, the position
    scoring the first response token; loss_mask: [M, W] float32; old_logp, ref_logp: [M, W] float32;
    advantages, weights (w_i), counts (c_i): [M] float32.
    """

    tokens: np.ndarray
    attention_mask: np.ndarray
    response_start: np.ndarray
    loss_mask: np.ndarray
    old_logp: np.ndarray
    ref_logp: np.ndarray
    advantages: np.ndarray
    weights: np.ndarray
    counts: np.ndarray

    @property
    def length(self) -> int:
        return self.tokens.shape[1]


@dataclasses.dataclass(frozen=True)
class LengthBuckets:
    """Bucket lengths: multiples of `block`, capped at `max_length` (itself a bucket)."""

    block: int
    max_length: int

    def __post_init__(self):
        if self.block < 2 or self.max_length < 2:
            raise ValueError(
                f"Length buckets need block >= 2 and max_length >= 2, got {self.block}, {self.max_length}."
            )

    def bucket(self, length: int) -> int:
        if length > self.max_length:
            raise ValueError(
                f"A training sequence of {length} tokens exceeds the longest bucket ({self.max_length}); raise "
                "train.max_length (it must cover the longest prompt + reply of a turn)."
            )
        return min(-(-length // self.block) * self.block, self.max_length)

    @property
    def num_buckets(self) -> int:
        return len({self.bucket(n) for n in range(2, self.max_length + 1)})


def pack(
    sequences: TrainingSequences,
    weights: np.ndarray,
    counts: np.ndarray,
    buckets: LengthBuckets,
    micro_batch_size: int,
    pad_id: int,
    window: Windows,
    order: Sequence[int] | None = None,
) -> list[MicroBatch]:
    """Micro-batches of `sequences` (all of them, or those in `order`), with per-sequence weights and counts;
    responses are scored over the smallest of the windows `window` that holds each micro-batch's longest response
    (a response longer than all of them is an error)."""
    index = np.arange(len(sequences)) if order is None else np.asarray(order)
    lengths = np.asarray([len(sequences.prompts[i]) + len(sequences.responses[i]) for i in index])
    index = index[np.argsort(-lengths, kind="stable")]
    out: list[MicroBatch] = []
    for start in range(0, len(index), micro_batch_size):
        rows = index[start : start + micro_batch_size]
        length = max(buckets.bucket(len(sequences.prompts[i]) + len(sequences.responses[i])) for i in rows)
        fit = fit_window(window, max(len(sequences.responses[i]) for i in rows))
        out.append(_micro_batch(sequences, weights, counts, rows, length, micro_batch_size, pad_id, fit))
    return out


def fit_window(windows: Windows, longest: int) -> int:
    """The smallest of `windows` that holds a response of `longest` tokens; an error when none does."""
    sizes = sorted([windows] if isinstance(windows, int) else windows)
    for size in sizes:
        if longest <= size:
            return int(size)
    raise ValueError(f"A response of {longest} tokens does not fit the scoring window of {sizes[-1]} positions.")


def _micro_batch(
    sequences: TrainingSequences,
    weights: np.ndarray,
    counts: np.ndarray,
    rows: np.ndarray,
    length: int,
    size: int,
    pad_id: int,
    window: int,
) -> MicroBatch:
    tokens = np.full((size, length), pad_id, np.int32)
    attention = np.zeros((size, length), bool)
    attention[:, 0] = True  # empty rows hold one token, so no row attends to nothing
    start = np.zeros(size, np.int32)
    loss_mask = np.zeros((size, window), np.float32)
    old_logp = np.zeros((size, window), np.float32)
    adv, w, c = np.zeros(size, np.float32), np.zeros(size, np.float32), np.zeros(size, np.float32)
    for r, i in enumerate(rows.tolist()):
        prompt, response = sequences.prompts[i], sequences.responses[i]
        p, n = len(prompt), len(response)
        tokens[r, :p], tokens[r, p : p + n] = prompt, response
        attention[r, : p + n] = True
        start[r] = p - 1
        loss_mask[r, :n] = sequences.loss_masks[i]
        old_logp[r, :n] = sequences.logprobs[i]
        adv[r], w[r], c[r] = sequences.advantages[i], weights[i], counts[i]
    return MicroBatch(tokens, attention, start, loss_mask, old_logp, np.zeros_like(old_logp), adv, w, c)


@flax.struct.dataclass
class SharedPromptBatch:
    """k responses to each of G prompts, each prompt computed once (memtrain_jax.model.logprobs'
    `shared_prompt_logprobs_and_entropy`): the G2 recall samples of a probe share their prompt.

    prefix: [G, P] int32, each prompt but its last token, right padded; prefix_mask: [G, P] bool; suffix: [G*k, S]
    int32, a row's prompt's last token then its response, right padded (S = W + 1); suffix_mask: [G*k, S] bool;
    loss_mask, old_logp, ref_logp: [G*k, W] float32 (position j scores response token j); advantages, weights,
    counts: [G*k] float32. Rows of filler groups have zero weight and mask.
    """

    prefix: np.ndarray
    prefix_mask: np.ndarray
    suffix: np.ndarray
    suffix_mask: np.ndarray
    loss_mask: np.ndarray
    old_logp: np.ndarray
    ref_logp: np.ndarray
    advantages: np.ndarray
    weights: np.ndarray
    counts: np.ndarray


def shared_prompt_groups(sequences: TrainingSequences, index: Sequence[int], group_size: int) -> list[list[int]]:
    """Groups of `group_size` sequences of `index` that share their prompt (of at least 2 tokens), in order of first
    appearance: the sequences of one prompt, cut into consecutive groups (two G1 trajectories can draw the same
    probe); the last len % group_size of them, and every other sequence, are in no group."""
    by_prompt: dict[bytes, list[int]] = {}
    for i in index:
        prompt = np.asarray(sequences.prompts[i], np.int32)
        if len(prompt) >= 2:
            by_prompt.setdefault(prompt.tobytes(), []).append(int(i))
    return [
        rows[j : j + group_size]
        for rows in by_prompt.values()
        for j in range(0, len(rows) - len(rows) % group_size, group_size)
    ]


def pack_shared(
    sequences: TrainingSequences,
    weights: np.ndarray,
    counts: np.ndarray,
    groups: list[list[int]],
    buckets: LengthBuckets,
    groups_per_batch: int,
    pad_id: int,
    window: Windows,
) -> list[SharedPromptBatch]:
    """Micro-batches of `groups_per_batch` prompt groups (each of k sequences sharing their prompt), longest prompts
    first; prompts padded to their bucket, responses to the smallest of the windows `window` that holds the
    micro-batch's longest (+ the prompt's last token)."""
    if not groups:
        return []
    k = len(groups[0])
    lengths = np.asarray([len(sequences.prompts[g[0]]) for g in groups])
    order = np.argsort(-lengths, kind="stable")
    out = []
    for start in range(0, len(order), groups_per_batch):
        chosen = [groups[j] for j in order[start : start + groups_per_batch]]
        width = max(buckets.bucket(len(sequences.prompts[g[0]]) - 1) for g in chosen)
        fit = fit_window(window, max(len(sequences.responses[i]) for g in chosen for i in g))
        prefix = np.full((groups_per_batch, width), pad_id, np.int32)
        prefix_mask = np.zeros((groups_per_batch, width), bool)
        prefix_mask[:, 0] = True  # filler groups hold one token, so no prompt attends to nothing
        rows = groups_per_batch * k
        suffix = np.full((rows, fit + 1), pad_id, np.int32)
        suffix_mask = np.zeros((rows, fit + 1), bool)
        loss_mask, old_logp = np.zeros((rows, fit), np.float32), np.zeros((rows, fit), np.float32)
        adv, w, c = np.zeros(rows, np.float32), np.zeros(rows, np.float32), np.zeros(rows, np.float32)
        for gi, group in enumerate(chosen):
            prompt = sequences.prompts[group[0]]
            prefix[gi, : len(prompt) - 1], prefix_mask[gi, : len(prompt) - 1] = prompt[:-1], True
            for j, i in enumerate(group):
                r, response = gi * k + j, sequences.responses[i]
                n = len(response)
                suffix[r, 0], suffix[r, 1 : n + 1] = prompt[-1], response
                suffix_mask[r, : n + 1] = True
                loss_mask[r, :n], old_logp[r, :n] = sequences.loss_masks[i], sequences.logprobs[i]
                adv[r], w[r], c[r] = sequences.advantages[i], weights[i], counts[i]
        out.append(
            SharedPromptBatch(
                prefix, prefix_mask, suffix, suffix_mask, loss_mask, old_logp, np.zeros_like(old_logp), adv, w, c
            )
        )
    return out
