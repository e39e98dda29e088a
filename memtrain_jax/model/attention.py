"""Causal grouped-query attention over a KV cache, with backends chosen by name.

Every backend computes the same function. The T new tokens occupy cache slots
q_start..q_start+T-1; query t may attend slot s iff `key_valid[b, s]` and s <= q_start + t.
Keys and values are heads-major, the cache's layout. Softmax statistics are float32.

Backends (`ModelConfig.attention`):
  reference  the dense formula: float32 scores [B, K, G, T, S] over every slot. Small shapes only.
  blocked    flash-style online softmax in plain JAX: loops over query blocks and, inside, over
             the key blocks a block can see (from the rows' first valid slot to the block's last
             query: left padding and slots not yet in use are never read), so it holds one
             [rows, K, G * block_q, block_kv] score block at a time and a decode step reads only
             the cache blocks in use. Differentiable (custom VJP, blockwise recompute). The CPU
             path, and what splash/cudnn fall back to.
  splash     TPU: the Pallas splash-attention kernel shipped with JAX, for self-attention of the
             new tokens from slot 0 (training, prefill) when T is a multiple of 128; otherwise
             (decode, chunks after a cache) `blocked`. Off TPU it runs in Pallas interpret mode.
  cudnn      GPU: `jax.nn.dot_product_attention(implementation="cudnn")`, same scope as splash, for
             bfloat16/float16 (cuDNN's fused kernels take nothing else; float32 runs `blocked`).
             Off GPU it runs the same call with XLA's dense implementation.
  auto       splash on TPU, cudnn on GPU, blocked elsewhere.
The off-platform emulations are test paths (slow, with a warning), never chosen by "auto".

Shapes: B batch, T new tokens (queries), S slots (keys), N query heads, K kv heads, G = N // K,
D head dim, M = block_q * G query rows of one block.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax.model.config import ATTENTION_BACKENDS as BACKENDS

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: a fully masked row stays NaN-free


def target_platform() -> str:
    """The platform a program is built for: that of the mesh's devices when one is set (`jax.set_mesh`, as the
    Sampler and Learner do; e.g. a TPU slice's devices when `memtrain plan` compiles for it on a CPU host),
    else JAX's default backend."""
    mesh = jax.sharding.get_abstract_mesh()
    device = None if mesh.empty else getattr(mesh, "abstract_device", None)
    return device.platform if device is not None else jax.default_backend()


def resolve_backend(name: str, platform: str | None = None) -> str:
    """The backend `name` stands for on `platform` (default: `target_platform()`)."""
    if name not in BACKENDS:
        raise ValueError(f"Unknown attention backend {name!r}; choose one of {BACKENDS}.")
    if name != "auto":
        return name
    platform = platform or target_platform()
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "cudnn"}.get(platform, "blocked")


def masked(scores: jax.Array, allowed: jax.Array) -> jax.Array:
    """Scores with MASK_VALUE where `allowed` is False, as an added bias: |MASK_VALUE| is so large that
    a finite score plus it rounds to MASK_VALUE exactly, so this equals `where(allowed, scores, MASK_VALUE)`.
    Why not `where`: XLA:CPU then runs the score matmul as a kernel of its own, slow at one query per row (26 ms
    a layer for 128 rows x 352 slots of SmolLM2-135M, 787 of a decode step's 1,374 ms; fused with the bias the
    step takes 482 ms). A whole GRPO step's decode: `benchmarks/bench_step.py --against COMMIT`."""
    return scores + jnp.where(allowed, 0.0, MASK_VALUE)


def attention_mask(key_valid: jax.Array, q_start: jax.Array | int, num_queries: int) -> jax.Array:
    """Dense mask [B, T, S] (True = may attend) of the rule above."""
    slots = jnp.arange(key_valid.shape[1])
    q_slots = q_start + jnp.arange(num_queries)
    return key_valid[:, None, :] & (slots[None, None, :] <= q_slots[None, :, None])


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Dense grouped-query attention, softmax in float32.

    q: [B, T, N, D]; k, v: [B, K, S, D]; mask: [B, T, S] (True = may attend). Returns [B, T, N, D].
    """
    b, t, n, d = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(b, t, kv_heads, n // kv_heads, d)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(q.dtype), preferred_element_type=jnp.float32)
    scores = masked(scores / math.sqrt(d), mask[:, None, None, :, :])
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, v.astype(q.dtype))
    return out.reshape(b, t, n, d)


def attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array,
    q_start: jax.Array | int = 0,
    *,
    backend: str = "blocked",
    block_q: int = 256,
    block_kv: int = 512,
) -> jax.Array:
    """Causal GQA of q: [B, T, N, D] over k, v: [B, K, S, D]; key_valid: [B, S] bool. Returns [B, T, N, D].

    q_start: slot of the first query (int32 scalar; a Python 0 marks self-attention of the new
    tokens, which the splash and cudnn kernels need: k, v then hold exactly the T new tokens).
    """
    backend = resolve_backend(backend)
    t = q.shape[1]
    from_zero = isinstance(q_start, int) and q_start == 0 and k.shape[2] == t
    if backend == "reference":
        return reference_attention(q, k, v, attention_mask(key_valid, q_start, t))
    if backend == "splash" and from_zero and splash_supported(t):
        interpret = _emulated("splash", "tpu")
        return splash_attention(q, k, v, key_valid, block_q=block_q, block_kv=block_kv, interpret=interpret)
    if backend == "cudnn" and from_zero:
        emulated = _emulated("cudnn", "gpu")
        # cuDNN's fused attention takes half precision only; a float32 model runs the blocked kernel on GPU.
        if emulated or q.dtype in (jnp.bfloat16, jnp.float16):
            return cudnn_attention(q, k, v, key_valid, implementation="xla" if emulated else "cudnn")
    blocked = lambda q, k, v, key_valid, q_start: blocked_attention(q, k, v, key_valid, q_start, block_q, block_kv)
    return per_shard(blocked, q, k, v, key_valid, jnp.asarray(q_start, jnp.int32))


def per_shard(fn, q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, *scalars: jax.Array) -> jax.Array:
    """fn(q, k, v, key_valid, *scalars) run on each shard of the active mesh (batch over the `batch` axes, heads
    over the `heads` axes where they divide), or directly without a mesh. Attention never mixes rows or KV
    heads, so each chip attends over its own rows; under SPMD partitioning instead, the blocked loops' slices
    of the batch dimension made the compiler gather every row of the KV cache onto every chip."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return fn(q, k, v, key_valid, *scalars)
    batch_axes, head_axes = _shard_axes(mesh)
    ways = lambda axes: math.prod(mesh.shape[a] for a in axes) if axes else 1
    if q.shape[0] % ways(batch_axes):
        batch_axes = None
    if q.shape[2] % ways(head_axes) or k.shape[1] % ways(head_axes):
        head_axes = None
    P = jax.sharding.PartitionSpec
    return jax.shard_map(
        fn,
        mesh=mesh,
        in_specs=(P(batch_axes, None, head_axes), P(batch_axes, head_axes), P(batch_axes, head_axes), P(batch_axes))
        + tuple(P() for _ in scalars),
        out_specs=P(batch_axes, None, head_axes),
        check_vma=False,
    )(q, k, v, key_valid, *scalars)


def _emulated(backend: str, platform: str) -> bool:
    """True (with a warning) when `backend`, a `platform` kernel, must be emulated on the target platform."""
    here = target_platform()
    if here == platform:
        return False
    emulation = "Pallas interpret mode" if backend == "splash" else "XLA's dense attention"
    warnings.warn(
        f"attention={backend!r} is a {platform} kernel; on {here} it runs in {emulation}, slowly (a test "
        "path). Use attention='auto' or 'blocked' here.",
        stacklevel=3,
    )
    return True


# --------------------------------------------------------------------------------------------------
# Blocked (flash-style) attention in plain JAX.
# --------------------------------------------------------------------------------------------------


SCORE_BLOCK_BYTES = 4 << 20  # rows of the batch share a block while its float32 scores fit this (CPU caches)
# A single-step call (decode) reads the whole K/V buffer in one pass when at least this fraction of
# it is in use: on CPU a pass over the buffer runs ~2.5x faster per slot than sliced blocks (each
# slice is a copy), and the sampler's cache is its prompt bucket plus the budget, so the pass reads
# at most the budget's unused slots.
DENSE_FRACTION = 0.5
# Calls with more key blocks than this skip the mask of blocks that need none (`_Tiling.skip_masks`): at 7,168
# tokens (14 blocks of 512) one layer's causal attention took 0.7x the time (benchmarks/bench_attention.py).
SKIP_MASK_BLOCKS = 2


class _Tiling:
    """Static tiling of one call: query blocks of bq rows (T padded up to nq * bq), key blocks of bk
    slots (the last one moved back to end at slot S, see `_Step`), and rb batch rows per block, as
    many as keep a [rb, K, bq * G, bk] float32 score block within SCORE_BLOCK_BYTES (all rows for a
    decode step, one row for a long prefill)."""

    def __init__(self, q_shape: tuple[int, ...], k_shape: tuple[int, ...], block_q: int, block_kv: int):
        b, t, n, self.d = q_shape
        self.kh, s = k_shape[1], k_shape[2]
        self.g, self.t, self.s = n // self.kh, t, s
        self.bq, self.bk = min(block_q, t), min(block_kv, s)
        self.nq, self.nk = -(-t // self.bq), -(-s // self.bk)
        per_row = self.kh * self.bq * self.g * self.bk * 4
        self.rb = max((r for r in range(1, b + 1) if b % r == 0 and r * per_row <= SCORE_BLOCK_BYTES), default=1)
        self.steps = (b // self.rb) * self.nq  # (row group, query block) pairs
        self.m = self.bq * self.g  # query rows of a block
        # Key blocks wholly before a query block's first query need no causal mask; past this many key blocks (a K/V
        # buffer beyond 1,024 slots at 512-slot blocks: a long prompt, a long cache) a block's mask is skipped where
        # no slot needs it. Not below: the branch keeps XLA:CPU from fusing the masked scores into their consumers,
        # 1.1x of a GRPO step's prefill and decode time at the CPU protocol's 200-600-slot prompts
        # (benchmarks/bench_step.py), and such prompts have few unmasked blocks.
        self.skip_masks = self.nk > SKIP_MASK_BLOCKS
        # One step covering every query (a decode step, a short prompt) may read the whole buffer
        # in one pass instead (see DENSE_FRACTION) while its scores stay small.
        self.single_step = self.steps == 1 and b * per_row * self.nk <= 4 * SCORE_BLOCK_BYTES

    def query_scale(self, q: jax.Array, scale: float) -> tuple[jax.Array, float | None]:
        """(queries, the scale `_Step.scores` still applies): with `skip_masks` float32 queries are scaled once here
        (half-precision ones are not: rounding q * scale to 8 bits of mantissa would cost accuracy)."""
        if self.skip_masks and q.dtype == jnp.float32:
            return q * scale, None
        return q, scale

    def group_queries(self, x: jax.Array) -> jax.Array:
        """[B, T, N, D] -> [B, K, nq * bq, G, D], zero rows appended up to a whole number of blocks."""
        b, t, _, d = x.shape
        x = x.reshape(b, t, self.kh, self.g, d).transpose(0, 2, 1, 3, 4)
        pad = self.nq * self.bq - t
        return jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0), (0, 0))) if pad else x

    def ungroup_queries(self, x: jax.Array) -> jax.Array:
        """[B, K, T', G, ...] -> [B, T, N, ...] (the first T rows)."""
        b = x.shape[0]
        x = jnp.moveaxis(x[:, :, : self.t], 2, 1)
        return x.reshape(b, self.t, self.kh * self.g, *x.shape[4:])

    def query_rows(self, x: jax.Array, b0, q0) -> jax.Array:
        """Rows b0..b0+rb, query block at q0 of x: [B, K, T', G, ...] -> [rb, K, M, ...]."""
        starts = (b0, 0, q0) + (0,) * (x.ndim - 3)
        block = jax.lax.dynamic_slice(x, starts, (self.rb, self.kh, self.bq, *x.shape[3:]))
        return block.reshape(self.rb, self.kh, self.m, *x.shape[4:])

    def key_range(self, key_valid: jax.Array, q_start, b0, q0):
        """Key blocks [lo, hi) the block's queries can see: none before the rows' first valid slot
        (left padding), none after the last query's slot (causality, and slots not yet in use)."""
        valid = jax.lax.dynamic_slice_in_dim(key_valid, b0, self.rb, axis=0)
        first = jnp.min(jnp.where(jnp.any(valid, axis=1), jnp.argmax(valid, axis=1), self.s))
        hi = jnp.minimum((q_start + q0 + self.bq - 1) // self.bk + 1, self.nk)
        return jnp.minimum(first // self.bk, hi), hi


class _Step:
    """One (query block, key block) pair: the key slice and the causal mask [M, bk] (traced int32)."""

    def __init__(self, tiling: _Tiling, q_start, b0, q0, j, k, v, key_valid):
        bk = tiling.bk
        # The last key block is moved back to end at slot S so every block has static size bk;
        # `fresh` drops the slots it shares with the previous block.
        self.k0 = jnp.minimum(j * bk, tiling.s - bk)
        self.k = jax.lax.dynamic_slice(k, (b0, 0, self.k0, 0), (tiling.rb, tiling.kh, bk, tiling.d))
        self.v = jax.lax.dynamic_slice(v, (b0, 0, self.k0, 0), (tiling.rb, tiling.kh, bk, tiling.d))
        self.valid = jax.lax.dynamic_slice(key_valid, (b0, self.k0), (tiling.rb, bk))
        slots = self.k0 + jnp.arange(bk)
        self.fresh = slots >= j * bk
        row_slots = q_start + q0 + jnp.arange(tiling.m) // tiling.g  # query rows (t, g) of the block
        self.causal = (slots[None, :] <= row_slots[:, None]) & self.fresh[None, :]
        self.skip_masks = tiling.skip_masks
        # A block needs its mask where it holds a padded slot, a slot after the block's first query, or slots of the
        # previous block (the moved-back last one).
        self.needs_mask = ~jnp.all(self.valid) | (self.k0 + bk - 1 > q_start + q0) | (self.k0 < j * bk)

    def scores(self, qb: jax.Array, scale: float | None) -> jax.Array:
        """Masked scores [rb, K, M, bk] float32 of query rows qb: [rb, K, M, D], times `scale` (None: qb is scaled
        already, as `query_scale` does where masks are skipped: the unmasked branch is then the bare product)."""
        s = jnp.einsum("bkmd,bksd->bkms", qb, self.k.astype(qb.dtype), preferred_element_type=jnp.float32)
        s = s if scale is None else s * scale
        mask = lambda s: masked(s, self.valid[:, None, None, :] & self.causal[None, None])
        if not self.skip_masks:
            return mask(s)
        return jax.lax.cond(self.needs_mask, mask, lambda s: s, s)


def _dense_pass(qb, k, v, key_valid, row_slots, scale):
    """(max, denominator, unnormalised output) of query rows qb: [B, K, M, D] over every slot of k, v:
    the single-block case of the loop, reading the buffers in place."""
    s = jnp.einsum("bkmd,bksd->bkms", qb, k.astype(qb.dtype), preferred_element_type=jnp.float32)
    allowed = key_valid[:, None, None, :] & (jnp.arange(k.shape[2])[None, :] <= row_slots[:, None])[None, None]
    s = masked(s * scale, allowed)
    m = s.max(axis=-1)
    p = jnp.exp(s - m[..., None])
    acc = jnp.einsum("bkms,bksd->bkmd", p.astype(qb.dtype), v.astype(qb.dtype), preferred_element_type=jnp.float32)
    return m, p.sum(axis=-1), acc


def _blocked_forward(q, k, v, key_valid, q_start, block_q, block_kv):
    """Returns (out [B, T, N, D], logsumexp [B, K, T', G] float32 of each query row)."""
    tl = _Tiling(q.shape, k.shape, block_q, block_kv)
    b, rb, kh, m, d = q.shape[0], tl.rb, tl.kh, tl.m, tl.d
    scale = 1.0 / math.sqrt(d)
    qg = tl.group_queries(q)
    q_scaled, score_scale = tl.query_scale(qg, scale)

    def query_block(r, carry):
        out, lse = carry
        b0, q0 = (r // tl.nq) * rb, (r % tl.nq) * tl.bq
        qs = tl.query_rows(q_scaled, b0, q0)  # the block's queries (scaled where masks are skipped)

        def key_block(j, state):
            m_prev, denom, acc = state
            step = _Step(tl, q_start, b0, q0, j, k, v, key_valid)
            sc = step.scores(qs, score_scale)
            m_new = jnp.maximum(m_prev, sc.max(axis=-1))
            p = jnp.exp(sc - m_new[..., None])
            # Rows with only masked slots so far carry m = MASK_VALUE; the first real slot makes
            # their correction exp(MASK_VALUE - m_new) exactly 0, erasing the masked slots' weight.
            correction = jnp.exp(m_prev - m_new)
            pv = jnp.einsum(
                "bkms,bksd->bkmd", p.astype(q.dtype), step.v.astype(q.dtype), preferred_element_type=jnp.float32
            )
            return m_new, denom * correction + p.sum(axis=-1), acc * correction[..., None] + pv

        init = (
            jnp.full((rb, kh, m), MASK_VALUE, jnp.float32),
            jnp.zeros((rb, kh, m), jnp.float32),
            jnp.zeros((rb, kh, m, d), jnp.float32),
        )
        lo, hi = tl.key_range(key_valid, q_start, b0, q0)
        blocks = lambda _: jax.lax.fori_loop(lo, hi, key_block, init)
        if tl.single_step:
            dense_scale = 1.0 if score_scale is None else score_scale  # the scores the backward recomputes
            dense = lambda _: _dense_pass(qs, k, v, key_valid, q_start + q0 + jnp.arange(m) // tl.g, dense_scale)
            m_last, denom, acc = jax.lax.cond((hi - lo) * tl.bk >= DENSE_FRACTION * tl.s, dense, blocks, None)
        else:
            m_last, denom, acc = blocks(None)
        denom = jnp.where(denom > 0, denom, 1.0)  # a block of padding queries before any valid key: 0, not NaN
        block_out = (acc / denom[..., None]).astype(q.dtype).reshape(rb, kh, tl.bq, tl.g, d)
        block_lse = (m_last + jnp.log(denom)).reshape(rb, kh, tl.bq, tl.g)
        out = jax.lax.dynamic_update_slice(out, block_out, (b0, 0, q0, 0, 0))
        lse = jax.lax.dynamic_update_slice(lse, block_lse, (b0, 0, q0, 0))
        return out, lse

    out = jnp.zeros((b, kh, tl.nq * tl.bq, tl.g, d), q.dtype)
    lse = jnp.zeros((b, kh, tl.nq * tl.bq, tl.g), jnp.float32)
    out, lse = jax.lax.fori_loop(0, tl.steps, query_block, (out, lse))
    return tl.ungroup_queries(out), lse


def _blocked_backward(q, k, v, key_valid, q_start, out, lse, dout, block_q, block_kv):
    """Flash-attention backward: recomputes each score block from q, k and the saved logsumexp."""
    tl = _Tiling(q.shape, k.shape, block_q, block_kv)
    b, rb, kh, m, d = q.shape[0], tl.rb, tl.kh, tl.m, tl.d
    scale = 1.0 / math.sqrt(d)
    f32 = lambda x: x.astype(jnp.float32)
    qg, dog = tl.group_queries(q), tl.group_queries(dout)  # padded query rows: zero cotangents, add nothing
    delta = jnp.sum(f32(dog) * f32(tl.group_queries(out)), axis=-1)

    def query_block(r, carry):
        dq, dk, dv = carry
        b0, q0 = (r // tl.nq) * rb, (r % tl.nq) * tl.bq
        qb, dob = tl.query_rows(qg, b0, q0), f32(tl.query_rows(dog, b0, q0))
        lse_b, delta_b = tl.query_rows(lse, b0, q0), tl.query_rows(delta, b0, q0)
        qs, score_scale = tl.query_scale(qb, scale)  # the forward's scores

        def key_block(j, state):
            dq_b, dk, dv = state
            step = _Step(tl, q_start, b0, q0, j, k, v, key_valid)
            # Masked slots get p = exp(MASK_VALUE - lse) = 0 in every row that has a real slot.
            p = jnp.exp(step.scores(qs, score_scale) - lse_b[..., None])
            dp = jnp.einsum("bkmd,bksd->bkms", dob, f32(step.v))
            ds = p * (dp - delta_b[..., None]) * scale
            dq_b = dq_b + jnp.einsum("bkms,bksd->bkmd", ds, f32(step.k))
            fresh = step.fresh[None, None, :, None]  # the moved-back last block adds only its own slots

            def add(acc, x):
                at = (b0, 0, step.k0, 0)
                old = jax.lax.dynamic_slice(acc, at, x.shape)
                return jax.lax.dynamic_update_slice(acc, old + jnp.where(fresh, x, 0.0), at)

            dk = add(dk, jnp.einsum("bkms,bkmd->bksd", ds, f32(qb)))
            dv = add(dv, jnp.einsum("bkms,bkmd->bksd", p, dob))
            return dq_b, dk, dv

        lo, hi = tl.key_range(key_valid, q_start, b0, q0)
        dq_b, dk, dv = jax.lax.fori_loop(lo, hi, key_block, (jnp.zeros((rb, kh, m, d), jnp.float32), dk, dv))
        dq = jax.lax.dynamic_update_slice(dq, dq_b.reshape(rb, kh, tl.bq, tl.g, d), (b0, 0, q0, 0, 0))
        return dq, dk, dv

    zeros = lambda shape: jnp.zeros(shape, jnp.float32)
    init = (zeros((b, kh, tl.nq * tl.bq, tl.g, d)), zeros(k.shape), zeros(v.shape))
    dq, dk, dv = jax.lax.fori_loop(0, tl.steps, query_block, init)
    return tl.ungroup_queries(dq).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def blocked_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array,
    q_start: jax.Array,
    block_q: int = 512,
    block_kv: int = 512,
) -> jax.Array:
    """Online-softmax attention: q [B, T, N, D], k, v [B, K, S, D], key_valid [B, S], q_start int32.

    Loops run over query blocks of `block_q` and, for each, over the key blocks of `block_kv` slots
    up to its last query's slot (a traced trip count, so a decode step reads only the slots in use).
    """
    return _blocked_forward(q, k, v, key_valid, q_start, block_q, block_kv)[0]


def _blocked_fwd(q, k, v, key_valid, q_start, block_q, block_kv):
    out, lse = _blocked_forward(q, k, v, key_valid, q_start, block_q, block_kv)
    return out, (q, k, v, key_valid, q_start, out, lse)


def _blocked_bwd(block_q, block_kv, residuals, dout):
    q, k, v, key_valid, q_start, out, lse = residuals
    dq, dk, dv = _blocked_backward(q, k, v, key_valid, q_start, out, lse, dout, block_q, block_kv)
    return dq, dk, dv, None, None


blocked_attention.defvjp(_blocked_fwd, _blocked_bwd)


# --------------------------------------------------------------------------------------------------
# Accelerator kernels (self-attention of the new tokens from slot 0).
# --------------------------------------------------------------------------------------------------


def splash_supported(t: int) -> bool:
    """Splash tiles queries and keys in multiples of 128 (TPU lanes)."""
    return t % 128 == 0


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    key_valid: jax.Array,
    *,
    block_q: int = 512,
    block_kv: int = 512,
    interpret: bool = False,
) -> jax.Array:
    """Pallas splash attention (TPU): causal self-attention of q: [B, T, N, D] over k, v: [B, K, T, D].

    Left padding becomes segment ids (1 real, 0 padding): a padding query then sees only padding
    keys, never an empty row. The kernel is vmapped over the batch; under a mesh it runs per shard.
    """
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks

    b, t, n, d = q.shape
    bq, bk = math.gcd(block_q, t), math.gcd(block_kv, t)
    sizes = splash.BlockSizes(
        block_q=bq, block_kv=bk, block_kv_compute=bk,
        block_q_dkv=bq, block_kv_dkv=bk, block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk,
    )  # fmt: skip

    def one_shard(q, k, v, key_valid):
        heads = q.shape[2]
        mask = masks.MultiHeadMask([masks.CausalMask((t, t)) for _ in range(heads)])
        kernel = splash.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)
        segments = key_valid.astype(jnp.int32)
        qh = jnp.swapaxes(q * (1.0 / math.sqrt(d)), 1, 2).astype(q.dtype)  # [B, N, T, D]
        run = lambda q, k, v, seg: kernel(q, k, v, segment_ids=splash.SegmentIds(q=seg, kv=seg))
        return jnp.swapaxes(jax.vmap(run)(qh, k.astype(q.dtype), v.astype(q.dtype), segments), 1, 2)

    return per_shard(one_shard, q, k, v, key_valid)


def _shard_axes(mesh: Any) -> tuple[Any, Any]:
    """Mesh axes of the logical `batch` and `heads` axes under the active logical-axis rules."""
    from flax import linen as nn

    spec = nn.logical_to_mesh_axes(("batch", "heads"))
    present = lambda axes: (
        None if axes is None else tuple(a for a in (axes if isinstance(axes, tuple) else (axes,)) if a in mesh.shape)
    )
    batch, heads = present(spec[0]), present(spec[1])
    return batch or None, heads or None


def cudnn_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array, *, implementation: str = "cudnn"
) -> jax.Array:
    """cuDNN flash attention (GPU): causal self-attention of q: [B, T, N, D] over k, v: [B, K, T, D].

    cuDNN's padding mask is right padding (sequence lengths), so each left-padded row is rotated
    to put its real tokens first and rotated back afterwards; causality within the real tokens is
    unchanged. `implementation="xla"` runs the same plumbing on any backend (for tests).
    """
    b, t, _, _ = q.shape
    lengths = jnp.sum(key_valid.astype(jnp.int32), axis=1)
    shift = t - lengths  # padding tokens at the front of each row
    index = (jnp.arange(t)[None, :] + shift[:, None]) % t  # right-padded position i <- left-padded index
    take = lambda x: jnp.take_along_axis(x, index.reshape(b, t, *([1] * (x.ndim - 2))), axis=1)
    unrotate = (jnp.arange(t)[None, :] - shift[:, None]) % t
    qr = take(q)
    kr, vr = take(jnp.swapaxes(k, 1, 2)), take(jnp.swapaxes(v, 1, 2))  # [B, T, K, D]
    out = jax.nn.dot_product_attention(
        qr,
        kr.astype(q.dtype),
        vr.astype(q.dtype),
        is_causal=True,
        query_seq_lengths=lengths,
        key_value_seq_lengths=lengths,
        implementation=implementation,
    )
    return jnp.take_along_axis(out, unrotate.reshape(b, t, 1, 1), axis=1)
