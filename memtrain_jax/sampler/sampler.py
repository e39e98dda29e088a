"""Batched autoregressive sampling with a KV cache, as jitted, mesh-sharded programs per shape bucket.

Prompts are left padded to a common length so every row writes the cache in lockstep. Three programs
run per call (and, with compaction, below, a gather and a resume program each time the batch shrinks): a
prefill of the batch's distinct prompts (rows with identical prompts, such as the rollouts of one MemTrain
first turn or the samples of one recall probe, are prefilled once; with `Buckets.prefill_parts`, in parts of
their own length and batch buckets, each placed into the call's prefix by a copy); a small model-free program that gives
each row its prompt's cache and next-token logits; and a decode program,
a `lax.while_loop` of one-token steps that ends as soon as every row has hit a stop token or its
budget. Only the first two depend on the number of distinct prompts: the decode program, whose
trace of every layer is what a new shape costs most, is shared by calls that differ in it (recall and
answer calls vary in distinct prompts from step to step). With `Buckets.compact_rows`, a decode
whose unfinished rows fit a quarter of its batch stops early; a model-free program gathers them into
the smaller batch bucket and a resume program (the same loop on a state) goes on there, so a few long
rows do not keep a wide batch stepping (128 recall answers end within 8-12 tokens but for one or two
rows). Batch sizes, prompt and cache lengths, the decode budget and the number of stop tokens are
rounded up to buckets (see `Buckets`), so a training run compiles a handful of programs; temperature,
top-p, the per-row budgets and the stop tokens are runtime values of a compiled program, only `top_k`
(and whether top-p is on) are static.

Log-probabilities are those of the distribution each token was drawn from: log_softmax(logits / temperature)
at the sampled token, before top-k or top-p (greedy: the logits' own), the policy GRPO then optimises.

Shapes: B batch (bucketed), U distinct prompts (bucketed), P prompt slots, N decode budget
(bucketed), E stop-token slots, S cache slots, V vocab.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from memtrain_jax import host_memory, sharding
from memtrain_jax.model.config import ModelConfig
from memtrain_jax.model.transformer import (
    CACHE_LAYER_AXES,
    KVCache,
    Params,
    apply_model,
    cache_length,
    cache_shardings,
    expand_prefix,
    init_cache,
    param_shapes,
    param_shardings,
    prefill,
)

NO_STOP = -1  # fills unused stop-token slots; never equal to a sampled token id
LOOKUP_NGRAM = 2  # lookup_drafts matches the last 2 tokens of a row (else its last one) in its history
# Greedy calls of at most this many rows (batch bucket) use lookup drafts. A step of B rows x 5 positions (k = 4) costs
# 1.80x a one-token step at B = 8, 2.24x at 16, 2.35x at 32, 3.43x at 64 and 3.91x at 128 (SmolLM2-135M, 2-core CPU,
# float32: wide steps are compute-bound; benchmarks/bench_lookup.py), and greedy memory turns emit 3-4 tokens a step
# (their decode: 1.5x faster at 16 rows, 1.13x at 24 with this limit lifted).
LOOKUP_MAX_ROWS = 16
# ... and a decode budget (bucket) of at least this many tokens: short answers are not copies of the prompt (final
# and recall answers of 16 rows took 8 lookup steps for ~9 tokens a row, 1.5 s against 1.0 s in lockstep).
LOOKUP_MIN_STEPS = 64
COMPACT_FACTOR = 4  # a decode moves its unfinished rows to a smaller bucket once they fit 1/4 of it (Buckets)
# A prefill part's fixed cost in prompt slots (`split_prefill`): each part reads every weight once, is one more
# program call and one placing copy; reading SmolLM2-135M's 540 MB of weights costs about what 30 prompt slots of
# compute do on this CPU, so twice that: a split must save more than a short prompt's worth of slots.
PART_COST_SLOTS = 64


@flax.struct.dataclass
class SampleOutput:
    """What one sampling call returns (arrays; B rows, N decode slots).

    tokens: [B, N] int32 generated ids, `pad_id` after each row's length (a stop token is included).
    logprobs: [B, N] float32 log-probability of each generated token under softmax(logits / temperature), the
        distribution it was drawn from before top-k / top-p (greedy: softmax(logits)), 0 after each row's length.
    lengths: [B] int32 number of generated tokens.
    stopped: [B] bool, True if the row ended on one of its stop tokens, False if it hit its budget.
    steps: int32 scalar, number of decode steps (model calls after the prefill) the loop ran.
    """

    tokens: Any
    logprobs: Any
    lengths: Any
    stopped: Any
    steps: Any


@dataclasses.dataclass(frozen=True)
class GenerationResult:
    """One prompt's continuation: token ids, their log-probs, and whether it ended on a stop token."""

    tokens: list[int]
    logprobs: list[float]
    stopped: bool


@dataclasses.dataclass(frozen=True)
class Buckets:
    """Shape buckets. Counts (batch, decode budget, stop tokens) round up to the next power of two
    that is at least the minimum; the batch is further rounded up to a multiple of the mesh's
    data-parallel size so it always splits evenly over the data axes.

    Prompt lengths are tight: powers of two up to `length_block`, multiples of `length_block`
    beyond (a 5,200-token prompt gets 5,376 slots, not 8,192). Each multiple is another program,
    so a sampler keeps at most `max_length_buckets` distinct prompt lengths; past the cap a length
    reuses the smallest known bucket that fits, or takes a power-of-two number of blocks (at most
    log2 more buckets in all). The cache holds the prompt bucket plus the decode budget bucket.

    `compact_rows` (0 = off): a decode whose unfinished rows fall to a quarter of its batch bucket moves them
    into the bucket that fits them (and at least `compact_rows` rows), if that is smaller, and goes on there (see
    `Sampler.__call__`); the rows' tokens are those of the lockstep decode up to float rounding (a smaller batch
    may round a matmul differently and so flip a near tie). On (8) for a Sampler built without buckets; a run
    config sets it (`sampling.compact_rows`; 0 where a stored config predates the field).

    `lookup_tokens` (0 = off): greedy calls (temperature 0) of at most `lookup_max_rows` rows (LOOKUP_MAX_ROWS; a
    benchmark lifts it to measure wider steps) and a decode budget of at
    least LOOKUP_MIN_STEPS tokens (memory turns, not short answers) decode with that many
    prompt-lookup drafts a model step (`lookup_decode_loop`: the same tokens in fewer steps); their cache holds
    (lookup_tokens + 1) slots per decode step. Off for a Sampler built without buckets; a run config sets it
    (`sampling.lookup_tokens`). `lookup_sampled`: sampled calls of that shape too, checking the drafts by
    speculative sampling (`speculate_tokens`): tokens of the same distributions as the lockstep decode's, other
    draws of them (`sampling.lookup_sampled`; False where a stored config predates the field). So with it a row's
    draws depend on whether its call drafts (the call's batch bucket and budget), not only on its seed and row id:
    `sampling.max_rows` and `lookup_tokens`, which change no sample otherwise, change such a run's samples.

    `prefill_parts` (1 = one prefill a call): the distinct prompts, longest first, are prefilled in up to this many
    parts of consecutive prompts, each its own batch bucket and length bucket (`split_prefill`), and placed into the
    call's prefix where one prefill of all would have written them (the same cache up to float rounding: other
    shapes may round a matmul differently); a call's prompts of 124-208 tokens no longer all compute 256 slots.
    Used only where splitting computes fewer slots, with the length buckets the parts get, and only where the batch
    is not split over devices: placing a part at a runtime row offset of a sharded batch axis would gather the whole
    prefix onto every device. The rows and decode programs are the same; each part shape is one more prefill
    program, each (call, part) shape pair a small placing program. Off for a Sampler built without buckets; a run
    config sets it (`sampling.prefill_parts`).
    """

    min_batch: int = 1
    min_prompt_length: int = 16
    min_new_tokens: int = 16
    min_stop_tokens: int = 4
    length_block: int = 256
    max_length_buckets: int = 16
    compact_rows: int = 8
    lookup_tokens: int = 0
    lookup_max_rows: int = LOOKUP_MAX_ROWS
    lookup_sampled: bool = False
    prefill_parts: int = 1

    @classmethod
    def from_config(cls, config: Any) -> Buckets:
        """A run's buckets: `sampling.length_block`, `sampling.compact_rows`, `sampling.lookup_tokens`,
        `sampling.lookup_sampled` and `sampling.prefill_parts` of a training config (256, 0, 0, False and 1: no
        compaction, no drafts, one prefill, where a field is absent)."""
        return cls(
            length_block=int(config.sampling.get("length_block", 256)),
            compact_rows=int(config.sampling.get("compact_rows", 0)),
            lookup_tokens=int(config.sampling.get("lookup_tokens", 0)),
            lookup_sampled=bool(config.sampling.get("lookup_sampled", False)),
            prefill_parts=int(config.sampling.get("prefill_parts", 1)),
        )

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "lookup_sampled":
                if not isinstance(value, bool):
                    raise ValueError(f"Buckets.lookup_sampled must be True or False, got {value!r}.")
                continue
            least = 0 if field.name in ("compact_rows", "lookup_tokens") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"Buckets.{field.name} must be an int >= {least}, got {value!r}.")

    @staticmethod
    def round_up(n: int, minimum: int, multiple: int = 1) -> int:
        """Smallest power of two >= max(n, minimum), then rounded up to a multiple of `multiple`."""
        size = 1 << (max(n, minimum, 1) - 1).bit_length()
        return -(-size // multiple) * multiple

    def round_length(self, n: int, minimum: int) -> int:
        """Tight length bucket: a power of two (>= minimum) up to length_block, else a multiple of it."""
        if max(n, minimum) <= self.length_block:
            return self.round_up(n, minimum)
        return -(-n // self.length_block) * self.length_block

    def coarse_length(self, n: int, minimum: int) -> int:
        """Power-of-two bucket (a power-of-two number of blocks beyond length_block): the fallback past the cap."""
        if max(n, minimum) <= self.length_block:
            return self.round_up(n, minimum)
        return self.round_up(-(-n // self.length_block), 1) * self.length_block


# --------------------------------------------------------------------------------------------------
# Pure core (traceable).
# --------------------------------------------------------------------------------------------------


def next_token_logits(
    config: ModelConfig, params: Params, tokens: jax.Array, attention_mask: jax.Array, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """Writes tokens [B, T] into the cache and returns the logits [B, V] float32 after the last one.

    Only the last position goes through the lm head: a prefill needs no other logits.
    """
    logits, cache = apply_model(config, params, tokens, attention_mask=attention_mask, cache=cache, last_only=True)
    return logits[:, -1], cache


DRAW_BLOCK = 256  # tokens a block in `draw_tokens`' two-level inversion (V / 256 block sums, 256 in a block)


def draw_tokens(keys: jax.Array, logits: jax.Array) -> jax.Array:
    """One index per row of logits [B, V] drawn from softmax(logits) (-inf: never drawn), by inverting the CDF
    at two uniforms per row (keys: [B]). Returns [B] int32.

    With p = exp(logits - max) padded to blocks of DRAW_BLOCK and the block masses m_b = sum of p in b: the
    block is the b with C_{b-1} <= u1 C < C_b, C_b = m_1 + ... + m_b, C = C_last; the token in it the i with
    c_{i-1} <= u2 c < c_i over the block's own cumulative sums c. So P(i) = (m_b / C) (p_i / m_b) = p_i / C.
    Why not Gumbel-max (jax.random.categorical): it draws V uniforms and takes two logs of each, about 70 ms a
    step for 64 rows of SmolLM2's 49,152 logits on a 2-core CPU, against 2 ms for this. Two levels keep a
    cumulative sum short (float32 rounding of a long one would blur the tail); a zero-probability token or
    block never satisfies c_{i-1} <= u c < c_i, and u c rounding up to c is clamped to the last positive one.
    """
    b, v = logits.shape
    blocks = -(-v // DRAW_BLOCK)
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    p = jnp.pad(p, ((0, 0), (0, blocks * DRAW_BLOCK - v))).reshape(b, blocks, DRAW_BLOCK)
    u = jax.vmap(lambda key: jax.random.uniform(key, (2,)))(keys)  # [B, 2]

    def invert(weights: jax.Array, u: jax.Array) -> jax.Array:
        """weights [B, n] >= 0 with a positive sum, u [B] in [0, 1) -> the index i with c_{i-1} <= u c < c_i."""
        c = jnp.cumsum(weights, axis=-1)
        index = jnp.sum(c <= (u * c[:, -1])[:, None], axis=-1)
        return jnp.minimum(index, jnp.argmax(c >= c[:, -1:], axis=-1)).astype(jnp.int32)

    block = invert(p.sum(axis=-1), u[:, 0])
    inside = invert(jnp.take_along_axis(p, block[:, None, None], axis=1)[:, 0], u[:, 1])
    return block * DRAW_BLOCK + inside


def filter_logits(
    logits: jax.Array, temperature: jax.Array, top_p: jax.Array, *, top_k: int | None, use_top_p: bool
) -> tuple[jax.Array, jax.Array | None]:
    """The sampling distribution of logits [R, V] at temperature > 0, as (values [R, W], ids [R, W] int32 or None):
    token ids[r, i] (i itself where ids is None) has probability softmax(values[r])[i]. The usual order: divide by
    the temperature, keep the `top_k` largest logits (W = top_k, sorted descending), then keep the smallest prefix
    (by descending probability) whose tempered, top-k renormalised mass reaches `top_p` (-inf beyond it)."""
    scaled = logits / temperature
    if top_k is not None:
        values, ids = jax.lax.top_k(scaled, top_k)  # sorted descending
    elif use_top_p:
        iota = jnp.broadcast_to(jnp.arange(scaled.shape[-1], dtype=jnp.int32), scaled.shape)
        neg_sorted, ids = jax.lax.sort((-scaled, iota), dimension=-1, num_keys=1)
        values = -neg_sorted
    else:
        values, ids = scaled, None
    if use_top_p:
        probs = jax.nn.softmax(values, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        # The top token always survives (mass_before == 0 < top_p).
        values = jnp.where(mass_before < top_p, values, -jnp.inf)
    return values, ids


def _token_ids(ids: jax.Array | None, choice: jax.Array) -> jax.Array:
    """Token ids [R] of positions choice [R] in `filter_logits`' values."""
    return choice if ids is None else jnp.take_along_axis(ids, choice[:, None], axis=-1)[:, 0]


def choose_tokens(
    logits: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    top_k: int | None,
    use_top_p: bool,
) -> jax.Array:
    """Picks one token per row from logits [B, V]: argmax if temperature == 0, else a sample of `filter_logits`'
    distribution. keys: [B] one PRNG key per row. Returns ids [B] int32."""

    def sampled(logits):
        values, ids = filter_logits(logits, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
        return _token_ids(ids, draw_tokens(keys, values))

    greedy = lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32)
    # A real branch, so greedy decoding pays nothing for the random draws and sorts.
    return jax.lax.cond(temperature > 0, sampled, greedy, logits)


def drawn_logprobs(logits: jax.Array, tokens: jax.Array, temperature: jax.Array) -> jax.Array:
    """Log-probs [...] of tokens [...] under the distribution they were drawn from, logits [..., V]:
    log_softmax(logits / temperature) (before top-k / top-p; greedy, temperature 0: the logits' own)."""
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)
    return jnp.take_along_axis(jax.nn.log_softmax(scaled, axis=-1), tokens[..., None], axis=-1)[..., 0]


def row_keys(rng: jax.Array, row_ids: jax.Array) -> jax.Array:
    """Each row's key [B]: fold_in(rng, row_ids[i]) (row_ids [B] uint32)."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.asarray(row_ids, jnp.uint32))


def step_keys(keys: jax.Array, step: jax.Array) -> jax.Array:
    """Keys [B] of one decode step: fold_in(keys[i], step) (step an int32 scalar)."""
    return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, jnp.asarray(step).astype(jnp.uint32))


def speculate_tokens(
    logits: jax.Array,
    drafts: jax.Array,
    keys: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    top_k: int | None,
    use_top_p: bool,
) -> tuple[jax.Array, jax.Array]:
    """Checks drafts by speculative sampling with point-mass drafts (traceable). Returns (tokens [B, k + 1] int32,
    accepted [B] int32 = m): a row emits tokens[:, :m + 1], of which the first m are its drafts.

    logits: [B, k + 1, V], position j's next-token logits after the row's last token and drafts d_1..d_j;
    drafts: [B, k]; keys: [B, k + 1], one per position. With p_j position j's sampling distribution
    (`filter_logits`), draft d_{j+1} is accepted with probability p_j(d_{j+1}) (uniform u_j < p_j(d_{j+1})); the
    first rejected position j draws from p_j without d_{j+1}, renormalised; after k accepted drafts position k
    draws from p_k. So each emitted token follows its p_j exactly: P(a_j = x) = p_j(d) [x = d] + (1 - p_j(d))
    p_j(x) / (1 - p_j(d)) [x != d] = p_j(x) (speculative sampling, Leviathan et al. 2023, whose draft distribution
    here is the point mass at the lookup draft). Greedy (temperature 0): p_j is the point mass at the argmax, so the
    drafts are accepted while each equals the argmax before it and the token after them is the argmax: the
    lockstep greedy tokens."""
    b, width, v = logits.shape
    k = width - 1
    position = jnp.arange(width)[None, :]

    def sampled(logits):
        flat = logits.reshape(b * width, v)
        values, ids = filter_logits(flat, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
        draft = jnp.concatenate([drafts, jnp.zeros((b, 1), drafts.dtype)], axis=1).reshape(b * width)
        where = jnp.arange(v)[None, :] if ids is None else ids
        has_draft = jnp.broadcast_to(position < k, (b, width)).reshape(b * width, 1)  # position k has none
        is_draft = (where == draft[:, None]) & has_draft
        # p_j(d_{j+1}) in float32 (one exp a row, not V); 0 where the draft is filtered out.
        at_draft = jnp.max(jnp.where(is_draft, values, -jnp.inf), axis=-1)
        chance = jnp.exp(at_draft - jax.nn.logsumexp(values, axis=-1))
        flat_keys = keys.reshape(b * width)
        u = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, 0)))(flat_keys)
        accept = (u < chance).reshape(b, width)[:, :k]
        accepted = jnp.sum(jnp.cumprod(accept.astype(jnp.int32), axis=1), axis=1)
        residual = jnp.where(is_draft, -jnp.inf, values)  # p_j without the rejected draft
        draws = jax.vmap(lambda key: jax.random.fold_in(key, 1))(flat_keys)
        drawn = _token_ids(ids, draw_tokens(draws, residual)).reshape(b, width)
        padded = jnp.concatenate([drafts, drawn[:, k:]], axis=1)
        return jnp.where(position < accepted[:, None], padded, drawn).astype(jnp.int32), accepted

    def greedy(logits):
        tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return tokens, jnp.sum(jnp.cumprod((drafts == tokens[:, :k]).astype(jnp.int32), axis=1), axis=1)

    return jax.lax.cond(temperature > 0, sampled, greedy, logits)


def sample(
    config: ModelConfig,
    params: Params,
    cache: KVCache,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    rng: jax.Array,
    max_new: jax.Array,
    stop_tokens: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    num_steps: int,
    top_k: int | None = None,
    use_top_p: bool = False,
    pad_id: int = 0,
    row_ids: jax.Array | None = None,
) -> tuple[SampleOutput, KVCache]:
    """Prefill + decode loop (traceable; call inside jit). Returns (SampleOutput, the filled cache).

    cache: an empty cache (init_cache) with S >= P + num_steps - 1 slots.
    prompt: [B, P] int32, left padded; prompt_mask: [B, P] bool, False on padding (each row needs
        at least one real token). rng: a PRNG key; row i draws from fold_in(fold_in(rng, row_ids[i]), step)
        (row_ids: [B] uint32, None = 0..B-1; the Sampler takes ids mod 2**32), so a row's sample does not depend
        on the batch it was padded into, and with stable row ids (an episode's) not on which rows share its call.
    max_new: [B] int32 per-row budget, 0 <= max_new <= num_steps. stop_tokens: [B, E] int32 ids
        ending a row, NO_STOP (-1) in unused slots. temperature: float32 scalar (0 = greedy).
    top_p: float32 scalar in (0, 1], used when `use_top_p`. top_k: static, None = no top-k.
    num_steps: static decode budget N, the width of the outputs.
    """
    _check_cache(cache, prompt.shape[1], num_steps)
    logits, cache = next_token_logits(config, params, prompt, prompt_mask, cache)
    return decode(
        config, params, cache, logits, rng, max_new, stop_tokens, temperature, top_p,
        num_steps=num_steps, top_k=top_k, use_top_p=use_top_p, pad_id=pad_id, row_ids=row_ids,
    )  # fmt: skip


def prefill_prompts(
    config: ModelConfig, params: Params, prompt: jax.Array, prompt_mask: jax.Array
) -> tuple[jax.Array, KVCache]:
    """Runs prompts [U, P] (left padded; mask False on padding). Returns (next-token logits [U, V]
    float32, their cache of exactly P slots). Traceable."""
    logits, prefix = prefill(config, params, prompt, attention_mask=prompt_mask, last_only=True)
    return logits[:, -1], prefix


def sample_from_prefix(
    config: ModelConfig,
    params: Params,
    prefix: KVCache,
    prefix_logits: jax.Array,
    rows: jax.Array,
    cache: KVCache,
    rng: jax.Array,
    max_new: jax.Array,
    stop_tokens: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    num_steps: int,
    top_k: int | None = None,
    use_top_p: bool = False,
    pad_id: int = 0,
    row_ids: jax.Array | None = None,
) -> tuple[SampleOutput, KVCache]:
    """`sample` after a shared prefill (traceable): row i continues prompt rows[i] of `prefix`.

    prefix, prefix_logits: `prefill_prompts` of U distinct prompts ([U, V] logits, P slots).
    rows: [B] int32. cache: an empty cache of B rows and S >= P + num_steps - 1 slots. The other
    arguments are those of `sample`, per row of the B rows.
    """
    _check_cache(cache, cache_length(prefix), num_steps)
    cache, logits = rows_from_prefix(prefix, prefix_logits, rows, cache)
    return decode(
        config, params, cache, logits, rng, max_new, stop_tokens, temperature, top_p,
        num_steps=num_steps, top_k=top_k, use_top_p=use_top_p, pad_id=pad_id, row_ids=row_ids,
    )  # fmt: skip


def rows_from_prefix(
    prefix: KVCache, prefix_logits: jax.Array, rows: jax.Array, cache: KVCache
) -> tuple[KVCache, jax.Array]:
    """Row i's cache and next-token logits [B, V] from prompt rows[i] of a shared prefill (traceable, no model):
    `cache` (B rows, S >= P slots, empty) gets the prompt's P slots, as if the row had prefilled it itself."""
    return expand_prefix(prefix, rows, cache), jnp.take(prefix_logits, rows, axis=0)


def split_prefill(
    lengths: Sequence[int], max_parts: int, size: Callable[[int], int], length: Callable[[int], int]
) -> list[int]:
    """How many of `lengths` (prompt lengths, longest first) each prefill part takes: at most `max_parts` parts of
    consecutive prompts minimising sum_g size(n_g) * length(l_g) + PART_COST_SLOTS, the slots the parts compute
    (n_g prompts of which the longest has l_g tokens; `size` is a count's batch bucket, `length` a prompt length's
    bucket). Exact (dynamic programming over the split points); a tie goes to the larger first part, so one part
    unless splitting computes fewer slots. Host-side."""
    n = len(lengths)
    if any(a < b for a, b in zip(lengths, lengths[1:], strict=False)):
        raise ValueError(f"lengths must be sorted longest first, got {list(lengths)}.")
    sizes = [0] + [size(c) for c in range(1, n + 1)]
    heads = [length(x) for x in lengths]
    # tables[k][i]: (least cost of prompts i.. in at most k parts, the count of its first part)
    tables = [[(0.0, 0) if i == n else (math.inf, 0) for i in range(n + 1)]]
    for _ in range(max_parts):
        fewer, table = tables[-1], [(0.0, 0)] * (n + 1)
        for i in range(n):
            cost, count = math.inf, 0
            for j in range(n, i, -1):  # the largest first part first: a tie keeps it
                c = sizes[j - i] * heads[i] + PART_COST_SLOTS + fewer[j][0]
                if c < cost:
                    cost, count = c, j - i
            table[i] = (cost, count)
        tables.append(table)
    counts, i = [], 0
    while i < n:
        counts.append(tables[max_parts - len(counts)][i][1])
        i += counts[-1]
    return counts


def place_prefix(
    prefix: KVCache, logits: jax.Array, part: KVCache, part_logits: jax.Array, offset: jax.Array
) -> tuple[KVCache, jax.Array]:
    """A prefill part placed into a call's prefix (traceable, no model): `part` (u rows, P_g slots) and its
    logits [u, V] go to rows offset..offset+u of `prefix` (U rows, P >= P_g slots) and `logits` [U, V], in the
    part's last P_g slots, so its left padding grows by P - P_g masked slots: the cache a prefill of the
    prompt at P slots writes (rotary positions count only a prompt's real tokens)."""
    start = cache_length(prefix) - cache_length(part)

    def put(buf: jax.Array, new: jax.Array) -> jax.Array:  # [(L,) U, K, P, D] <- [(L,) u, K, P_g, D]
        lead = (0,) * (buf.ndim - 4)
        return jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (*lead, offset, 0, start, 0))

    placed = {
        "k": jax.tree.map(put, prefix["k"], part["k"]),
        "v": jax.tree.map(put, prefix["v"], part["v"]),
        "mask": jax.lax.dynamic_update_slice(prefix["mask"], part["mask"], (offset, start)),
        "index": prefix["index"],
    }
    return placed, jax.lax.dynamic_update_slice(logits, part_logits.astype(logits.dtype), (offset, 0))


def _check_cache(cache: KVCache, prompt_length: int, num_steps: int) -> None:
    slots = cache_length(cache)
    if slots < prompt_length + num_steps - 1:
        raise ValueError(
            f"Cache has {slots} slots but prompt {prompt_length} + {num_steps} new tokens need "
            f"{prompt_length + num_steps - 1}."
        )


def decode_loop(
    config: ModelConfig,
    params: Params,
    state: dict,
    rng: jax.Array,
    row_ids: jax.Array,
    max_new: jax.Array,
    stop_tokens: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    min_active: jax.Array | int = 0,
    *,
    top_k: int | None = None,
    use_top_p: bool = False,
    pad_id: int = 0,
    logits: jax.Array | None = None,
) -> dict:
    """The decode loop (traceable) on a decode state (`decode`'s): one token per model step while a row is
    unfinished, the budget of N steps is not spent and more than `min_active` rows are unfinished (an int32
    scalar; 0 = until every row is done). With `logits` [B, V] (the prompts') the first token is drawn from them
    first. Row i draws step t's token from fold_in(fold_in(rng, row_ids[i]), t), so a state whose rows were
    gathered into a smaller batch (with their ids, budgets and stop tokens) continues exactly as it would have.

    state: tokens [B, N] int32, logprobs [B, N] float32, lengths [B] int32, stopped [B] bool, done [B] bool,
    last [B] int32 (the last token drawn), step int32 scalar (the next column), cache (the rows' KV cache).
    """
    b, num_steps = state["tokens"].shape
    if stop_tokens.ndim != 2 or stop_tokens.shape[0] != b:
        raise ValueError(f"stop_tokens must be [batch={b}, E], got shape {stop_tokens.shape}.")
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    keyed = row_keys(rng, row_ids)

    def record(state: dict, logits: jax.Array) -> dict:
        """Samples the next token of every row from logits [B, V] and books it at column `step`."""
        step = state["step"]
        keys = step_keys(keyed, step)
        token = choose_tokens(logits, keys, temperature, top_p, top_k=top_k, use_top_p=use_top_p)
        logprob = drawn_logprobs(logits, token, temperature)
        active = ~state["done"]
        lengths = state["lengths"] + active.astype(jnp.int32)
        hit_stop = active & jnp.any(token[:, None] == stop_tokens, axis=-1)
        return {
            **state,
            "tokens": state["tokens"].at[:, step].set(jnp.where(active, token, pad_id)),
            "logprobs": state["logprobs"].at[:, step].set(jnp.where(active, logprob, 0.0)),
            "lengths": lengths,
            "stopped": state["stopped"] | hit_stop,
            "done": state["done"] | hit_stop | (lengths >= max_new),
            "last": token,
            "step": step + 1,
        }

    if logits is not None:
        state = record(state, logits)

    def keep_going(state):
        return (state["step"] < num_steps) & (jnp.sum(~state["done"]) > min_active)

    def step(state):
        ones = jnp.ones((b, 1), bool)
        logits, cache = next_token_logits(config, params, state["last"][:, None], ones, state["cache"])
        return record({**state, "cache": cache}, logits)

    return jax.lax.while_loop(keep_going, step, state)


def decode_state(cache: KVCache, max_new: jax.Array, num_steps: int, pad_id: int = 0) -> dict:
    """The state `decode_loop` starts from: nothing drawn yet (rows of budget 0 are done), over `cache`."""
    b = max_new.shape[0]
    return {
        "tokens": jnp.full((b, num_steps), pad_id, jnp.int32),
        "logprobs": jnp.zeros((b, num_steps), jnp.float32),
        "lengths": jnp.zeros((b,), jnp.int32),
        "stopped": jnp.zeros((b,), bool),
        "done": max_new <= 0,
        "last": jnp.zeros((b,), jnp.int32),
        "step": jnp.zeros((), jnp.int32),
        "cache": cache,
    }


def lookup_drafts(history: jax.Array, known: jax.Array, num_drafts: int, ngram: int = LOOKUP_NGRAM) -> jax.Array:
    """Prompt-lookup drafts (traceable): for each row of history [B, H], whose first known[b] tokens are its
    prompt (no padding) and the tokens drawn so far, the `num_drafts` tokens that followed the latest earlier
    occurrence of its last n tokens, for the largest n <= `ngram` that occurs earlier (history[j + n + i] for
    i < num_drafts, j the occurrence's start; read no further than known[b] - 1, the last known token repeated
    beyond). A row with no earlier occurrence even of its last token drafts its last token. Returns [B, num_drafts]
    int32. A memory turn mostly copies its old memory and the chunk it reads, so its next tokens usually follow
    a recent n-gram of its own prompt; a wrong draft costs only its slot (`lookup_decode_loop` checks it)."""
    b, h = history.shape
    slots = jnp.arange(h)
    last = known - 1
    chosen = jnp.full((b,), -1, jnp.int32)  # the start j + n of the continuation, -1 while none found
    for n in range(ngram, 0, -1):
        # match[b, j]: history[j : j + n] equals the row's last n tokens, strictly before them (j + n <= last)
        match = jnp.ones((b, h), bool)
        for i in range(n):
            tail = jnp.take_along_axis(history, jnp.clip(known - n + i, 0, h - 1)[:, None], axis=1)  # [B, 1]
            shifted = jnp.roll(history, -i, axis=1)  # shifted[:, j] = history[:, j + i]
            match &= shifted == tail
        match &= (slots[None, :] + n <= last[:, None]) & (known[:, None] >= n)
        start = jnp.max(jnp.where(match, slots[None, :] + n, -1), axis=1)
        chosen = jnp.where(chosen >= 0, chosen, start)
    at = jnp.where(chosen >= 0, chosen, last)[:, None] + jnp.arange(num_drafts)[None, :]
    return jnp.take_along_axis(history, jnp.minimum(at, last[:, None]), axis=1).astype(jnp.int32)


def lookup_decode_loop(
    config: ModelConfig,
    params: Params,
    state: dict,
    max_new: jax.Array,
    stop_tokens: jax.Array,
    logits: jax.Array,
    *,
    num_drafts: int,
    rng: jax.Array | None = None,
    row_ids: jax.Array | None = None,
    temperature: jax.Array | float = 0.0,
    top_p: jax.Array | float = 1.0,
    top_k: int | None = None,
    use_top_p: bool = False,
) -> dict:
    """Decoding with prompt-lookup drafts (traceable): at temperature 0 the tokens of `decode_loop`, sampled
    tokens from the same distributions as `decode_loop`'s, in fewer model steps. Each step feeds [last token,
    d_1..d_k] (k = `num_drafts`, `lookup_drafts`) through the model at once and checks the drafts
    (`speculate_tokens`: greedy, they are kept while each equals the argmax before it; sampled, by speculative
    sampling); it emits the m kept drafts and the token after them, each checked for a stop token and the row's
    budget as the lockstep loop would. The k - m rejected drafts' cache slots are masked out (the rotary positions
    count only valid slots), so the cache needs up to (k + 1) slots per step. Log-probs: log_softmax(logits /
    temperature) at each emitted token (greedy: the logits' own), as `decode_loop` books them.

    state: `decode_state`'s, plus history [B, H] int32 (each row's prompt, unpadded, from column 0; H >= its
    length + the budget N) and known [B] int32 (the prompt lengths); logits [B, V]: the prompts' next-token
    logits. `step` counts model steps (plus one for the first token, drawn from `logits`), so the output's steps
    are the model steps taken. Sampled: the first token is `decode_loop`'s (key fold_in(fold_in(rng, row_ids[i]),
    0)); position j of model step t draws with fold_in(fold_in(fold_in(rng, row_ids[i]), t), j), so a row's tokens
    depend on its id, not on the rows beside it. The sampled tokens differ from `decode_loop`'s (other draws of
    the same distributions); greedy ones are the same.
    """
    b, num_steps = state["tokens"].shape
    k = int(num_drafts)
    rng = jax.random.key(0) if rng is None else rng
    row_ids = jnp.arange(b, dtype=jnp.uint32) if row_ids is None else jnp.asarray(row_ids, jnp.uint32)
    temperature = jnp.asarray(temperature, jnp.float32)
    top_p = jnp.asarray(top_p, jnp.float32)
    keyed = row_keys(rng, row_ids)
    sampling = dict(top_k=top_k, use_top_p=use_top_p)

    def book(state: dict, token: jax.Array, logprob: jax.Array, ok: jax.Array) -> dict:
        """Appends token [B] (log-prob [B]) to the rows where ok [B] and the row is not done."""
        ok = ok & ~state["done"]

        def put(buf: jax.Array, at: jax.Array, value: jax.Array) -> jax.Array:  # buf[b, at[b]] = value[b] where ok
            # An elementwise select, not a scatter: the rows stay on their batch shards.
            hit = ok[:, None] & (jnp.arange(buf.shape[1])[None, :] == at[:, None])
            return jnp.where(hit, value[:, None].astype(buf.dtype), buf)

        column, slot = state["lengths"], state["known"]  # < N and < H while the row is not done
        lengths = state["lengths"] + ok.astype(jnp.int32)
        hit_stop = ok & jnp.any(token[:, None] == stop_tokens, axis=-1)
        return {
            **state,
            "tokens": put(state["tokens"], column, token),
            "logprobs": put(state["logprobs"], column, logprob),
            "history": put(state["history"], slot, token),
            "known": state["known"] + ok.astype(jnp.int32),
            "lengths": lengths,
            "stopped": state["stopped"] | hit_stop,
            "done": state["done"] | hit_stop | (lengths >= max_new),
            "last": jnp.where(ok, token, state["last"]),
        }

    token = choose_tokens(logits, step_keys(keyed, 0), temperature, top_p, **sampling)
    state = book(state, token, drawn_logprobs(logits, token, temperature), jnp.ones((b,), bool))
    state = {**state, "step": state["step"] + 1}

    def keep_going(state):
        room = state["cache"]["index"] + k + 1 <= cache_length(state["cache"])
        return (state["step"] < num_steps) & jnp.any(~state["done"]) & room

    def step(state):
        drafts = lookup_drafts(state["history"], state["known"], k)
        fed = jnp.concatenate([state["last"][:, None], drafts], axis=1)  # [B, k + 1]
        index = state["cache"]["index"]
        logits, cache = apply_model(config, params, fed, attention_mask=jnp.ones(fed.shape, bool), cache=state["cache"])
        now = step_keys(keyed, state["step"])
        keys = jnp.stack([step_keys(now, j) for j in range(k + 1)], axis=1)  # [B, k + 1]: position j's
        tokens, accepted = speculate_tokens(logits, drafts, keys, temperature, top_p, **sampling)
        logprobs = drawn_logprobs(logits, tokens, temperature)  # [B, k + 1]
        # Fed position j holds a real token iff j <= m (the last token and the accepted drafts).
        valid = jnp.arange(k + 1)[None, :] <= accepted[:, None]
        mask = jax.lax.dynamic_update_slice(cache["mask"], valid & ~state["done"][:, None], (0, index))
        state = {**state, "cache": {**cache, "mask": mask}}
        for j in range(k + 1):  # emit a_0..a_m, stopping where the lockstep loop would
            state = book(state, tokens[:, j], logprobs[:, j], j <= accepted)
        return {**state, "step": state["step"] + 1}

    return jax.lax.while_loop(keep_going, step, state)


def compact_state(state: dict, index: jax.Array, real: jax.Array) -> dict:
    """Rows `index` [B'] of a decode state (traceable, no model): a state of B' rows whose row j is row
    index[j]; rows with real[j] False are padding and done."""

    def take(x: jax.Array) -> jax.Array:  # rows index of x [B, ...]
        return jnp.take(x, index, axis=0)

    def take_layer(buf: jax.Array) -> jax.Array:  # [B, K, S, D] -> [B', K, S, D], sharded like the cache's rows
        return nn.with_logical_constraint(take(buf), CACHE_LAYER_AXES)

    def take_stacked(buf: jax.Array) -> jax.Array:  # [L, B, K, S, D] (scan_layers) -> [L, B', K, S, D]
        # One layer at a time, as expand_prefix: gathering rows across batch shards all-gathers the operand, so
        # one layer's rows are gathered, not every layer's at once.
        def one(layer: jax.Array, out: jax.Array) -> jax.Array:
            rows = take_layer(jax.lax.dynamic_index_in_dim(buf, layer, 0, keepdims=False))
            return jax.lax.dynamic_update_slice(out, rows[None], (layer, 0, 0, 0, 0))

        out = jnp.zeros((buf.shape[0], index.shape[0], *buf.shape[2:]), buf.dtype)
        out = nn.with_logical_constraint(out, ("layers", *CACHE_LAYER_AXES))
        return jax.lax.fori_loop(0, buf.shape[0], one, out)

    cache = state["cache"]
    rows = {name: take(state[name]) for name in ("tokens", "logprobs", "lengths", "stopped", "done", "last")}
    rows["done"] = rows["done"] | ~real
    take_kv = take_layer if isinstance(cache["k"], tuple) else take_stacked
    new_cache = {
        "k": jax.tree.map(take_kv, cache["k"]),
        "v": jax.tree.map(take_kv, cache["v"]),
        "mask": take(cache["mask"]),
        "index": cache["index"],
    }
    return {**rows, "step": state["step"], "cache": new_cache}


def decode(
    config: ModelConfig,
    params: Params,
    cache: KVCache,
    logits: jax.Array,
    rng: jax.Array,
    max_new: jax.Array,
    stop_tokens: jax.Array,
    temperature: jax.Array,
    top_p: jax.Array,
    *,
    num_steps: int,
    top_k: int | None = None,
    use_top_p: bool = False,
    pad_id: int = 0,
    row_ids: jax.Array | None = None,
) -> tuple[SampleOutput, KVCache]:
    """The decode loop (traceable): samples the first token from logits [B, V] (the prompt's), then one
    token per model step until every row is done. cache holds the prompts; see `sample` for the rest."""
    b = logits.shape[0]
    row_ids = jnp.arange(b, dtype=jnp.uint32) if row_ids is None else jnp.asarray(row_ids, jnp.uint32)
    state = decode_loop(
        config, params, decode_state(cache, max_new, num_steps, pad_id), rng, row_ids, max_new, stop_tokens,
        temperature, top_p, top_k=top_k, use_top_p=use_top_p, pad_id=pad_id, logits=logits,
    )  # fmt: skip
    output = SampleOutput(
        tokens=state["tokens"],
        logprobs=state["logprobs"],
        lengths=state["lengths"],
        stopped=state["stopped"],
        steps=state["step"] - 1,
    )
    return output, state["cache"]


# --------------------------------------------------------------------------------------------------
# Sampler: bucketing, shardings, compiled programs.
# --------------------------------------------------------------------------------------------------


class Sampler:
    """Holds a model config, a mesh and the compiled sampling programs for it.

    Call it with a list of token-id prompts; it pads them into buckets, prefills the distinct
    prompts, runs the decode program (each compiled once per bucket and static setting) and returns
    trimmed NumPy results. `compile_count` counts compilations (prefill, rows, decode, compact, resume,
    cache-allocation and, with prefill parts, empty-prefix and placing programs); `compile_seconds` maps each
    compiled program's name to its trace + compile time. `share_prefixes`: prefill identical prompts once (the
    default; a call may override it). The results are those of prefilling every row. `record_timings`: wait for
    each program and keep the prefill's and the decode's wall times (without compilation) in `last_timings` (for
    benchmarks; it costs a host round trip a program).
    """

    def __init__(
        self,
        config: ModelConfig,
        mesh: Mesh | None = None,
        rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
        buckets: Buckets | None = None,
        pad_id: int = 0,
        cache_dtype: Any = None,
        share_prefixes: bool = True,
        record_timings: bool = False,
    ):
        if not 0 <= pad_id < config.vocab_size:
            raise ValueError(f"pad_id={pad_id} is outside the vocabulary [0, {config.vocab_size}).")
        self.config = config
        # Default: this process's first device (every process may sample on its own, e.g. `generate`).
        self.mesh = mesh if mesh is not None else sharding.make_mesh((1, 1, 1), devices=jax.local_devices()[:1])
        self.rules = tuple(rules)
        self.buckets = buckets or Buckets()
        self.pad_id = pad_id
        self.cache_dtype = cache_dtype
        self.share_prefixes = bool(share_prefixes)
        self.record_timings = bool(record_timings)
        self.last_timings: dict[str, float] = {}
        self.compile_count = 0
        self.compile_seconds: dict[str, float] = {}
        self.batch_multiple = sharding.batch_axis_size(self.mesh, self.rules)

        self.param_shardings = param_shardings(config, self.mesh, self.rules)
        self._param_structure = jax.tree.structure(param_shapes(config))
        batch_axes = sharding.batch_axes(self.mesh, self.rules) or None
        batch = lambda *rest: NamedSharding(self.mesh, PartitionSpec(batch_axes, *rest))
        probe = jax.eval_shape(lambda: init_cache(config, self.batch_multiple, 1, cache_dtype))
        self.cache_shardings = cache_shardings(config, probe, self.mesh, self.rules)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        # prefill: (params, prompt, prompt_mask) -> (logits, prefix cache)
        self._prefill_shardings = (
            (self.param_shardings, batch(None), batch(None)),
            (batch(None), self.cache_shardings),
        )
        # rows: (prefix, prefix_logits, rows) -> (the rows' cache, their next-token logits)
        self._rows_shardings = (
            (self.cache_shardings, batch(None), batch()),
            (self.cache_shardings, batch(None)),
        )
        # A decode state (decode_loop's).
        state = {
            "tokens": batch(None),
            "logprobs": batch(None),
            "lengths": batch(),
            "stopped": batch(),
            "done": batch(),
            "last": batch(),
            "step": replicated,
            "cache": self.cache_shardings,
        }
        # The per-row and scalar sampling arguments: (rng, row_ids, max_new, stop_tokens, temperature, top_p,
        # min_active).
        sampling_args = (replicated, batch(), batch(), batch(None), replicated, replicated, replicated)
        # decode: (params, cache, logits, *sampling_args) -> state
        self._decode_shardings = ((self.param_shardings, self.cache_shardings, batch(None), *sampling_args), state)
        # resume: (params, state, *sampling_args) -> state; compact: (state, index, real) -> state
        self._resume_shardings = ((self.param_shardings, state, *sampling_args), state)
        # lookup: (params, cache, logits, history, known, max_new, stop_tokens, rng, row_ids, temperature, top_p)
        # -> a lookup state
        lookup_state = {**state, "history": batch(None), "known": batch()}
        lookup_args = (batch(None), batch(), batch(), batch(None), replicated, batch(), replicated, replicated)
        self._lookup_shardings = ((self.param_shardings, self.cache_shardings, batch(None), *lookup_args), lookup_state)
        self._compact_shardings = ((state, batch(), batch()), state)
        # place: (prefix, logits, part, part_logits, offset) -> (prefix, logits)
        self._place_shardings = (
            (self.cache_shardings, batch(None), self.cache_shardings, batch(None), replicated),
            (self.cache_shardings, batch(None)),
        )
        self._executables: dict[tuple, Any] = {}
        self._prompt_lengths: set[int] = set()

    def _prefill_fn(self, params, prompt, prompt_mask):
        """The prefill program's body: (params, prompt [U, P], prompt_mask [U, P]) -> (logits, prefix cache)."""
        return prefill_prompts(self.config, params, prompt, prompt_mask)

    def _rows_fn(self, slots: int):
        """The rows program's body: (prefix, prefix_logits [U, V], rows [B]) -> (a cache of B rows and `slots`
        slots holding each row's prompt, logits [B, V])."""

        def run_rows(prefix, prefix_logits, rows):
            cache = init_cache(self.config, rows.shape[0], slots, self.cache_dtype)
            return rows_from_prefix(prefix, prefix_logits, rows, cache)

        return run_rows

    def _decode_fn(self, num_steps: int, top_k: int | None, use_top_p: bool):
        """The decode program's body for static settings: (params, cache, logits [B, V], rng, row_ids, max_new,
        stop_tokens, temperature, top_p, min_active) -> the decode state after `decode_loop`."""

        def run_decode(params, cache, logits, rng, row_ids, max_new, *args):
            state = decode_state(cache, max_new, num_steps, self.pad_id)
            return decode_loop(
                self.config, params, state, rng, row_ids, max_new, *args, top_k=top_k, use_top_p=use_top_p,
                pad_id=self.pad_id, logits=logits,
            )  # fmt: skip

        return run_decode

    def _lookup_fn(self, num_steps: int, num_drafts: int, top_k: int | None, use_top_p: bool):
        """The lookup decode's body: (params, cache, logits [B, V], history [B, H], known [B], max_new,
        stop_tokens, rng, row_ids, temperature, top_p) -> the state after `lookup_decode_loop`."""

        def run_lookup(params, cache, logits, history, known, max_new, stop_tokens, rng, row_ids, temperature, top_p):
            state = {**decode_state(cache, max_new, num_steps, self.pad_id), "history": history, "known": known}
            return lookup_decode_loop(
                self.config, params, state, max_new, stop_tokens, logits, num_drafts=num_drafts, rng=rng,
                row_ids=row_ids, temperature=temperature, top_p=top_p, top_k=top_k, use_top_p=use_top_p,
            )  # fmt: skip

        return run_lookup

    def _resume_fn(self, top_k: int | None, use_top_p: bool):
        """The resume program's body: (params, state, rng, row_ids, max_new, stop_tokens, temperature, top_p,
        min_active) -> the state after `decode_loop`, for a state `compact_state` gathered."""

        def run_resume(params, state, *args):
            return decode_loop(self.config, params, state, *args, top_k=top_k, use_top_p=use_top_p, pad_id=self.pad_id)

        return run_resume

    def lower_programs(
        self, rows: int, distinct: int, prompt_length: int, num_steps: int, stop_width: int | None = None,
        top_k: int | None = None, use_top_p: bool = False,
    ) -> dict[str, jax.stages.Lowered]:  # fmt: skip
        """The prefill, rows and decode programs this sampler runs for a call of `rows` rows, `distinct`
        distinct prompts of `prompt_length` bucketed tokens and `num_steps` decode steps, lowered ahead of
        time on abstract arguments (no device memory; `memtrain plan` compiles them for a TPU topology).
        `distinct` and `rows` must be multiples of the batch shards."""
        for name, n in (("rows", rows), ("distinct", distinct)):
            if n % self.batch_multiple:
                raise ValueError(f"{name}={n} must be a multiple of the batch shards ({self.batch_multiple}).")
        e = stop_width or self.buckets.min_stop_tokens
        slots = prompt_length + num_steps
        spec = lambda shape, dtype, sh: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
        params = jax.tree.map(lambda x, sh: spec(x.shape, x.dtype, sh), param_shapes(self.config), self.param_shardings)
        (_, prompt_sh, mask_sh), (logits_sh, cache_sh) = self._prefill_shardings
        prompt = spec((distinct, prompt_length), np.int32, prompt_sh)
        mask = spec((distinct, prompt_length), np.bool_, mask_sh)
        prefill = self._lowered(self._prefill_fn, self._prefill_shardings, (), params, prompt, mask)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            logits, prefix = jax.eval_shape(self._prefill_fn, params, prompt, mask)
            cache = jax.eval_shape(lambda: init_cache(self.config, rows, slots, self.cache_dtype))
            ins = self._rows_shardings[0]
            rows_args = (
                jax.tree.map(lambda x, sh: spec(x.shape, x.dtype, sh), prefix, ins[0]),
                spec(logits.shape, logits.dtype, ins[1]),
                spec((rows,), np.int32, ins[2]),
            )
            ins = self._decode_shardings[0]
            args = (
                params,
                jax.tree.map(lambda x, sh: spec(x.shape, x.dtype, sh), cache, ins[1]),
                spec((rows, logits.shape[1]), logits.dtype, ins[2]),
                jax.eval_shape(lambda: jax.random.key(0)),
                spec((rows,), np.uint32, ins[4]),
                spec((rows,), np.int32, ins[5]),
                spec((rows, e), np.int32, ins[6]),
                spec((), np.float32, ins[7]),
                spec((), np.float32, ins[8]),
                spec((), np.int32, ins[9]),
            )
        expand = self._lowered(self._rows_fn(slots), self._rows_shardings, (), *rows_args)
        decode = self._lowered(self._decode_fn(num_steps, top_k, use_top_p), self._decode_shardings, (1,), *args)
        return {"prefill": prefill, "rows": expand, "decode": decode}

    def _lowered(self, fn, shardings, donate: tuple[int, ...], *args) -> jax.stages.Lowered:
        """`fn` jitted with (in, out) `shardings` and `donate`, lowered on `args` (arrays or abstract values)."""
        jitted = jax.jit(fn, in_shardings=shardings[0], out_shardings=shardings[1], donate_argnums=donate)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
            return jitted.lower(*args)

    def _compiled(self, key: tuple, name: str, fn, shardings, donate: tuple[int, ...], *args):
        """The AOT-compiled program for `key` (static settings and shapes), compiled on first use."""
        if key not in self._executables:
            start = time.perf_counter()
            self._executables[key] = self._lowered(fn, shardings, donate, *args).compile()
            self.compile_count += 1
            self.compile_seconds[name] = time.perf_counter() - start
        return self._executables[key]

    def _length_bucket(self, n: int, minimum: int) -> int:
        """Tight prompt-length bucket for `n` tokens, within the cap on distinct lengths (see Buckets)."""
        bk, seen = self.buckets, self._prompt_lengths
        tight = bk.round_length(n, minimum)
        if tight in seen or len(seen) < bk.max_length_buckets:
            seen.add(tight)
            return tight
        fits = [size for size in seen if size >= tight]
        size = min(fits) if fits else bk.coarse_length(n, minimum)
        seen.add(size)
        return size

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty cache of batch_size rows and max_length slots, created sharded on the mesh."""

        def allocate():
            return init_cache(self.config, batch_size, max_length, self.cache_dtype)

        name = f"cache B={batch_size} S={max_length}"
        program = self._compiled(("cache", batch_size, max_length), name, allocate, ((), self.cache_shardings), ())
        with jax.set_mesh(self.mesh):
            return program()

    def place_params(self, params: Params) -> Params:
        """Puts params on this sampler's mesh layout (a no-op for leaves already laid out so)."""
        expected = self._param_structure
        if jax.tree.structure(params) != expected:
            raise ValueError(
                "params do not match the model config's parameter tree; got "
                f"{jax.tree.structure(params)}, expected {expected} (scan_layers={self.config.scan_layers})."
            )
        return sharding.to_global(params, self.param_shardings)

    def prepare(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int | Sequence[int],
        stop_tokens: Sequence[int] | Sequence[Sequence[int]] = (),
        share_prefixes: bool | None = None,
    ) -> dict[str, np.ndarray]:
        """Pads a batch into its buckets. Returns host arrays: prompt [U, P] and prompt_mask [U, P] of
        the distinct prompts (every row's own prompt without sharing), rows [B] (the prompt of each
        row), max_new [B], stop_tokens [B, E], and parts [G, 3]: (first row, rows, slots) of each prefill
        part (`Buckets.prefill_parts`; one part [0, U, P] unless splitting computes fewer slots). A part's
        prompts are its rows' last `slots` columns; with several, the distinct prompts are longest first.

        Padding rows (beyond len(prompts)) have a budget of 0, so they finish at once; padding
        prompts hold one pad token.
        """
        n = len(prompts)
        if n == 0:
            raise ValueError("prompts is empty; pass at least one prompt (a list of token ids).")
        prompts = [tuple(map(int, p)) for p in prompts]
        vocab = self.config.vocab_size
        for i, prompt in enumerate(prompts):
            if not prompt:
                raise ValueError(f"Prompt {i} is empty; every prompt needs at least one token (e.g. BOS).")
            if min(prompt) < 0 or max(prompt) >= vocab:
                raise ValueError(
                    f"Prompt {i} has token ids outside [0, {vocab}): min {min(prompt)}, max {max(prompt)}."
                )
        budgets = np.broadcast_to(np.asarray(max_new_tokens, np.int64), (n,)) if np.ndim(max_new_tokens) == 0 else None
        if budgets is None:
            budgets = np.asarray(max_new_tokens, np.int64)
            if budgets.shape != (n,):
                raise ValueError(
                    f"max_new_tokens has {budgets.shape[0]} entries for {n} prompts; give one int or one per prompt."
                )
        if (budgets < 0).any():
            raise ValueError(f"max_new_tokens must be >= 0, got {budgets.tolist()}.")
        longest = max(len(p) + int(b) for p, b in zip(prompts, budgets, strict=True))
        if longest > self.config.max_position_embeddings:
            raise ValueError(
                f"A prompt plus its max_new_tokens reaches {longest} tokens, beyond the model's "
                f"max_position_embeddings={self.config.max_position_embeddings}; shorten the prompt or the budget."
            )
        stop_rows = _stop_rows(stop_tokens, n, vocab)

        share = self.share_prefixes if share_prefixes is None else bool(share_prefixes)
        if share:
            index: dict[tuple[int, ...], int] = {}
            row_prompt = [index.setdefault(q, len(index)) for q in prompts]
            distinct = list(index)
        else:
            row_prompt, distinct = list(range(n)), prompts

        bk = self.buckets
        b = bk.round_up(n, bk.min_batch, self.batch_multiple)
        u = bk.round_up(len(distinct), bk.min_batch, self.batch_multiple)
        p = self._length_bucket(max(len(q) for q in distinct), bk.min_prompt_length)
        e = bk.round_up(max(len(s) for s in stop_rows), bk.min_stop_tokens)
        place, parts = self._split(distinct, u, p)  # the prefix row of each distinct prompt; the prefill parts
        prompt = np.full((u, p), self.pad_id, np.int32)
        mask = np.zeros((u, p), bool)
        mask[:, -1] = True  # padding prompts: one pad token
        for i, q in zip(place, distinct, strict=True):
            prompt[i, p - len(q) :] = q
            mask[i, p - len(q) :] = True
        rows = np.zeros((b,), np.int32)
        rows[:n] = place[row_prompt]
        stops = np.full((b, e), NO_STOP, np.int32)
        max_new = np.zeros((b,), np.int32)
        max_new[:n] = budgets
        for i, s in enumerate(stop_rows):
            stops[i, : len(s)] = s
        return {
            "prompt": prompt, "prompt_mask": mask, "rows": rows, "max_new": max_new, "stop_tokens": stops,
            "parts": np.asarray(parts, np.int32),
        }  # fmt: skip

    def _split(self, distinct: list[tuple[int, ...]], u: int, p: int) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        """(the prefix row of each distinct prompt, the prefill parts (first row, rows, slots)) of a call of U rows and
        P slots: the cheapest `split_prefill` into at most `prefill_parts` parts whose batch buckets fit the U rows
        (fewer parts where more do not fit), if it computes fewer slots than one prefill with the length buckets the
        parts get (past `max_length_buckets` a part's may be coarser than the split assumed); else one part. Always one
        part on a mesh that splits the batch (see Buckets)."""
        bk = self.buckets
        whole = (np.arange(len(distinct)), [(0, u, p)])
        if bk.prefill_parts == 1 or len(distinct) == 1 or self.batch_multiple > 1:
            return whole
        order = sorted(range(len(distinct)), key=lambda i: -len(distinct[i]))
        lengths = [len(distinct[i]) for i in order]
        size = lambda count: bk.round_up(count, bk.min_batch, self.batch_multiple)
        length = lambda tokens: bk.round_length(tokens, bk.min_prompt_length)
        for most in range(bk.prefill_parts, 1, -1):
            counts = split_prefill(lengths, most, size, length)
            if sum(map(size, counts)) <= u:
                break
        else:
            return whole
        if len(counts) == 1:
            return whole
        place, parts, first, taken = np.zeros(len(distinct), np.int64), [], 0, 0
        for count in counts:
            place[order[taken : taken + count]] = first + np.arange(count)
            parts.append((first, size(count), self._length_bucket(lengths[taken], bk.min_prompt_length)))
            first, taken = first + size(count), taken + count
        if sum(rows * slots + PART_COST_SLOTS for _, rows, slots in parts) >= u * p + PART_COST_SLOTS:
            return whole
        return place, parts

    def __call__(
        self,
        params: Params,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int | Sequence[int],
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        stop_tokens: Sequence[int] | Sequence[Sequence[int]] = (),
        seed: int | jax.Array = 0,
        row_ids: Sequence[int] | None = None,
        share_prefixes: bool | None = None,
    ) -> SampleOutput:
        """Samples continuations of `prompts` (lists of token ids). Returns a SampleOutput of NumPy arrays.

        Arrays are trimmed to [len(prompts), max(max_new_tokens)]. `max_new_tokens` is one int or one
        per prompt; `stop_tokens` is one list of ids shared by every row or one list per row.
        temperature 0 is greedy; top_p None or 1.0 disables top-p. `seed` is an int or a PRNG key.
        `row_ids` (ints >= 0, one per prompt, taken mod 2**32; None = 0..n-1): row i's draws are a function of
        (seed, row_ids[i]) alone, so a caller that keys rows by episode gets the same samples however it batches them
        (with `Buckets.lookup_sampled`: however it batches them into calls that all draft or all do not).
        `share_prefixes` overrides the sampler's setting for this call (None keeps it).
        """
        temperature = float(temperature)
        if not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}.")
        if top_k is not None and not (isinstance(top_k, int) and 1 <= top_k <= self.config.vocab_size):
            raise ValueError(f"top_k must be None or an int in [1, {self.config.vocab_size}], got {top_k!r}.")
        if top_p is not None and not 0.0 < float(top_p) <= 1.0:
            raise ValueError(f"top_p must be None or in (0, 1], got {top_p}.")
        if row_ids is not None and (
            len(row_ids) != len(prompts) or not all(isinstance(i, (int, np.integer)) and i >= 0 for i in row_ids)
        ):
            raise ValueError(f"row_ids must be {len(prompts)} ints >= 0 (one per prompt), got {list(row_ids)!r}.")
        use_top_p = top_p is not None and float(top_p) < 1.0
        batch = self.prepare(prompts, max_new_tokens, stop_tokens, share_prefixes)
        u, p = batch["prompt"].shape
        b, e = batch["stop_tokens"].shape
        num_steps = self.buckets.round_up(int(batch["max_new"].max()), self.buckets.min_new_tokens)
        # Drafts pay only while a step of B x (k + 1) positions is memory-bound, and where the tokens copy the prompt.
        checked = temperature == 0 or self.buckets.lookup_sampled  # greedy: by the argmax; sampled: speculatively
        eligible = checked and b <= self.buckets.lookup_max_rows and num_steps >= LOOKUP_MIN_STEPS
        lookup = self.buckets.lookup_tokens if eligible else 0
        # The decode reads only the slots in use: a bigger cache would only cost memory. A lookup step writes its
        # drafts' slots too, accepted or not.
        slots = p + (lookup + 1) * num_steps
        rng = jax.random.key(int(seed)) if isinstance(seed, (int, np.integer)) else seed
        params = self.place_params(params)

        prefix_logits, prefix = self._prefill(params, batch)

        rows = sharding.to_global(batch["rows"], self._rows_shardings[0][2])
        rows_program = self._compiled(
            ("rows", b, u, p, slots), f"rows B={b} U={u} P={p} S={slots}", self._rows_fn(slots),
            self._rows_shardings, (), prefix, prefix_logits, rows,
        )  # fmt: skip
        (cache, logits), rows_s = self._run(rows_program, prefix, prefix_logits, rows)
        del prefix, prefix_logits  # only the rows' copies are decoded from

        ids = np.arange(b, dtype=np.uint32)  # padding rows keep theirs: they draw nothing that is kept
        if row_ids is not None:
            ids[: len(prompts)] = [int(i) % 2**32 for i in row_ids]
        scalars = (np.float32(temperature), np.float32(1.0 if top_p is None else top_p))
        row_args = (ids, batch["max_new"], batch["stop_tokens"])
        if lookup:
            # Each row's prompt without its padding, from column 0, then room for its tokens: what drafts are read from.
            history = np.full((b, p + num_steps), self.pad_id, np.int32)
            known = batch["prompt_mask"].sum(axis=1)[batch["rows"]].astype(np.int32)
            for i, u_i in enumerate(batch["rows"]):
                history[i, : known[i]] = batch["prompt"][u_i, p - known[i] :]
            host_args = (history, known, batch["max_new"], batch["stop_tokens"], rng, ids, *scalars)
            args = (params, cache, logits, *sharding.to_global(host_args, self._lookup_shardings[0][3:]))
            decode_program = self._compiled(
                ("lookup", b, slots, e, num_steps, lookup, top_k, use_top_p),
                f"lookup B={b} S={slots} N={num_steps} K={lookup}",
                self._lookup_fn(num_steps, lookup, top_k, use_top_p), self._lookup_shardings, (1,), *args,
            )  # fmt: skip
        else:
            host_args = (rng, *row_args, *scalars, np.int32(self._compact_at(b)))
            args = (params, cache, logits, *sharding.to_global(host_args, self._decode_shardings[0][3:]))
            # Keyed without the distinct prompts (and with the prompt length only through the cache slots).
            decode_program = self._compiled(
                ("decode", b, slots, e, num_steps, top_k, use_top_p),
                f"decode B={b} S={slots} N={num_steps}",
                self._decode_fn(num_steps, top_k, use_top_p), self._decode_shardings, (1,), *args,
            )  # fmt: skip
        decode_s, start = rows_s, time.perf_counter()  # the rows' copy counts as decode (part of the decode program)
        with jax.set_mesh(self.mesh):
            state = decode_program(*args)
        del args, cache, logits
        n = len(prompts)
        result = {
            "tokens": np.full((n, num_steps), self.pad_id, np.int32),
            "logprobs": np.zeros((n, num_steps), np.float32),
            "lengths": np.zeros((n,), np.int32),
            "stopped": np.zeros((n,), bool),
        }
        origin = np.where(np.arange(b) < n, np.arange(b), -1)  # the prompt of each state row; -1: padding
        while True:
            # Book the rows that are done; move the others into the smallest bucket that holds them (the decode
            # stopped early only if they fit a quarter of its rows) and go on there.
            host = {key: sharding.to_host(state[key]) for key in (*result, "done")}
            unfinished = host["done"] == 0
            if lookup and unfinished[origin >= 0].any():  # each lookup step emits a token a row: it cannot happen
                raise RuntimeError(f"A lookup decode ended with unfinished rows ({num_steps} steps, {slots} slots).")
            if int(sharding.to_host(state["step"])) >= num_steps:
                unfinished[:] = False
            finished = (origin >= 0) & ~unfinished
            for key, values in result.items():
                values[origin[finished]] = host[key][finished]
            active = np.flatnonzero((origin >= 0) & unfinished)
            if active.size == 0:
                break
            smallest = max(active.size, self.buckets.compact_rows)
            rows_before, b = b, self.buckets.round_up(smallest, self.buckets.min_batch, self.batch_multiple)
            index = np.zeros((b,), np.int32)
            index[: active.size] = active
            real = np.arange(b) < active.size
            origin = np.where(real, origin[index], -1)
            ids, max_new, stops = (values[index] for values in row_args)
            row_args = (ids, np.where(real, max_new, 0), stops)  # padding rows: no budget
            compact_args = (state, *sharding.to_global((index, real), self._compact_shardings[0][1:]))
            decode_s += time.perf_counter() - start  # compiling a program is not decode time
            compact_program = self._compiled(
                ("compact", rows_before, b, slots, num_steps), f"compact B={rows_before}->{b} S={slots} N={num_steps}",
                compact_state, self._compact_shardings, (), *compact_args,
            )  # fmt: skip
            start = time.perf_counter()
            with jax.set_mesh(self.mesh):
                state = compact_program(*compact_args)
            del compact_args  # the whole batch's state: freed before the resume allocates its own
            host_args = (rng, *row_args, *scalars, np.int32(self._compact_at(b)))
            args = (params, state, *sharding.to_global(host_args, self._resume_shardings[0][2:]))
            if self.record_timings:
                jax.block_until_ready(state)
            decode_s += time.perf_counter() - start
            resume_program = self._compiled(
                ("resume", b, slots, e, num_steps, top_k, use_top_p),
                f"resume B={b} S={slots} N={num_steps}",
                self._resume_fn(top_k, use_top_p), self._resume_shardings, (1,), *args,
            )  # fmt: skip
            start = time.perf_counter()
            with jax.set_mesh(self.mesh):
                state = resume_program(*args)
            del args
        if self.record_timings:
            self.last_timings["decode_s"] = decode_s + time.perf_counter() - start
        width = int(batch["max_new"].max())
        output = SampleOutput(
            tokens=result["tokens"][:, :width],
            logprobs=result["logprobs"][:, :width],
            lengths=result["lengths"],
            stopped=result["stopped"],
            steps=int(sharding.to_host(state["step"])) - 1,
        )
        del state  # this call's device buffers, before the heap is trimmed
        host_memory.release_if_above()
        return output

    def _prefill(self, params: Params, batch: dict[str, np.ndarray]) -> tuple[jax.Array, KVCache]:
        """The call's prefix and next-token logits [U, V]: a prefill of each part of `batch` (`prepare`'s), placed
        into an empty prefix of U rows and P slots where there are several. With `record_timings`, the
        programs' wall time (not their compilation) is `last_timings["prefill_s"]`."""
        u, p = batch["prompt"].shape
        seconds, prefix, prefix_logits = 0.0, None, None
        for first, rows, slots in batch["parts"].tolist():
            # Host batches -> global arrays: each process places the shards its devices hold.
            window = (slice(first, first + rows), slice(p - slots, p))  # the part's rows, its last `slots` columns
            host = tuple(np.ascontiguousarray(batch[key][window]) for key in ("prompt", "prompt_mask"))
            args = (params, *sharding.to_global(host, self._prefill_shardings[0][1:]))
            program = self._compiled(
                ("prefill", rows, slots), f"prefill U={rows} P={slots}", self._prefill_fn, self._prefill_shardings, (),
                *args,
            )  # fmt: skip
            (logits, part), took = self._run(program, *args)
            seconds += took
            if (rows, slots) == (u, p):  # one part: the call's prefill
                prefix, prefix_logits = part, logits
                continue
            if prefix is None:
                empty = self._compiled(
                    ("prefix", u, p), f"prefix U={u} P={p}", self._empty_prefix_fn(u, p),
                    ((), self._place_shardings[1]), (),
                )  # fmt: skip
                (prefix, prefix_logits), took = self._run(empty)
                seconds += took
            offset = sharding.to_global(np.int32(first), self._place_shardings[0][4])
            args = (prefix, prefix_logits, part, logits, offset)
            program = self._compiled(
                ("place", u, p, rows, slots), f"place U={u} P={p} <- U={rows} P={slots}", place_prefix,
                self._place_shardings, (0, 1), *args,
            )  # fmt: skip
            del prefix, prefix_logits, part, logits  # the prefix and its logits are donated to the placing copy
            (prefix, prefix_logits), took = self._run(program, *args)
            seconds += took
            del args
        if self.record_timings:
            self.last_timings = {"prefill_s": seconds}
        return prefix_logits, prefix

    def _empty_prefix_fn(self, u: int, p: int):
        """The empty prefix program's body: () -> (a prefix of u rows and p slots, all masked, index p;
        logits [u, V] zeros)."""

        def empty():
            prefix = {**init_cache(self.config, u, p), "index": jnp.asarray(p, jnp.int32)}
            return prefix, jnp.zeros((u, self.config.vocab_size), jnp.float32)

        return empty

    def _run(self, program, *args) -> tuple[Any, float]:
        """(program(*args), its wall seconds): measured with `record_timings` (waiting for the result), else 0."""
        start = time.perf_counter()
        with jax.set_mesh(self.mesh):
            out = program(*args)
        if not self.record_timings:
            return out, 0.0
        jax.block_until_ready(out)
        return out, time.perf_counter() - start

    def _compact_at(self, rows: int) -> int:
        """min_active of a decode of `rows` rows: it stops when a quarter of its rows or fewer are unfinished,
        where the bucket those fit is smaller and has at least `Buckets.compact_rows` rows; else 0 (it runs to the
        end). A quarter, not a half: each smaller bucket is one more program of the whole decode loop to compile
        per cache length, and rows end in a burst (recall answers of 128 rows: nearly all within steps 8-12)."""
        bk, quarter = self.buckets, rows // COMPACT_FACTOR
        if bk.compact_rows == 0 or quarter < bk.compact_rows:
            return 0
        return quarter if bk.round_up(quarter, bk.min_batch, self.batch_multiple) < rows else 0


def _stop_rows(stop_tokens, n: int, vocab: int) -> list[list[int]]:
    """Normalises shared (list of ids) or per-row (list of lists) stop tokens to one list per row."""
    stop_tokens = list(stop_tokens)
    per_row = bool(stop_tokens) and all(isinstance(s, (list, tuple, np.ndarray)) for s in stop_tokens)
    if per_row:
        if len(stop_tokens) != n:
            raise ValueError(f"Per-row stop_tokens has {len(stop_tokens)} rows for {n} prompts.")
        rows = [[int(t) for t in s] for s in stop_tokens]
    else:
        rows = [[int(t) for t in stop_tokens]] * n
    for i, row in enumerate(rows):
        bad = [t for t in row if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"stop_tokens of row {i} has ids outside [0, {vocab}): {bad}.")
    return rows


def generate(
    model_config: ModelConfig,
    params: Params,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    stop_tokens: Sequence[int] = (),
    seed: int = 0,
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
) -> list[GenerationResult]:
    """Generates a continuation of each prompt (a list of token ids); one GenerationResult per prompt.

    Greedy when temperature == 0. Each result holds the new token ids (a final stop token included),
    their log-probs under the model's own (untempered) distribution and whether a stop token ended it.
    A one-shot convenience: it builds a `Sampler` (and compiles its programs) on every call; code that
    generates repeatedly holds a `Sampler`, which owns its compiled programs (no module-level cache).
    """
    out = Sampler(model_config, mesh, tuple(rules))(
        params,
        prompts,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        stop_tokens=stop_tokens,
        seed=seed,
    )
    return [
        GenerationResult(
            tokens=out.tokens[i, :length].tolist(),
            logprobs=out.logprobs[i, :length].tolist(),
            stopped=bool(out.stopped[i]),
        )
        for i, length in enumerate(out.lengths.tolist())
    ]
