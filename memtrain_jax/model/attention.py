"""Causal grouped-query attention over a KV cache, with backends chosen by name.

Every backend computes the same function. The T new tokens occupy cache slots
q_start..q_start+T-1; query t may attend slot s iff `key_valid[b, s]` and s <= q_start + t.
Keys and values are heads-major, the cache's layout. Softmax statistics are float32.

Backends (`ModelConfig.attention`):
  reference  the dense formula: float32 scores [B, K, G, T, S] over every slot. Small shapes only.
  blocked    flash-style online softmax in plain JAX: loops over query blocks and, inside, over
             the key blocks a block can see (causally, and never past the last slot in use), so
             it never holds more than one [B, K, G * block_q, block_kv] score block and a decode
             step reads only the cache slots in use. Differentiable (custom VJP, blockwise
             recompute). The CPU path and the fallback of the others.
  splash     TPU: the Pallas splash-attention kernel shipped with JAX, for self-attention of the
             new tokens from slot 0 (training, prefill); anything else (decode) uses `blocked`.
  cudnn      GPU: `jax.nn.dot_product_attention(implementation="cudnn")`, same scope as splash.
  auto       splash on TPU, cudnn on GPU, blocked elsewhere.

Shapes: B batch, T new tokens (queries), S slots (keys), N query heads, K kv heads, G = N // K,
D head dim, M = block_q * G query rows of one block.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from memtrain_jax.model.config import ATTENTION_BACKENDS as BACKENDS

MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)  # finite: a fully masked row stays NaN-free


def resolve_backend(name: str, platform: str | None = None) -> str:
    """The backend `name` stands for on `platform` (default: JAX's default backend)."""
    if name not in BACKENDS:
        raise ValueError(f"Unknown attention backend {name!r}; choose one of {BACKENDS}.")
    if name != "auto":
        return name
    platform = platform or jax.default_backend()
    return {"tpu": "splash", "gpu": "cudnn", "cuda": "cudnn", "rocm": "cudnn"}.get(platform, "blocked")


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
    scores = jnp.where(mask[:, None, None, :, :], scores / math.sqrt(d), MASK_VALUE)
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
    block_q: int = 512,
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
        return splash_attention(q, k, v, key_valid, block_q=block_q, block_kv=block_kv)
    if backend == "cudnn" and from_zero:
        return cudnn_attention(q, k, v, key_valid)
    return blocked_attention(q, k, v, key_valid, jnp.asarray(q_start, jnp.int32), block_q, block_kv)


# --------------------------------------------------------------------------------------------------
# Blocked (flash-style) attention in plain JAX.
# --------------------------------------------------------------------------------------------------


def _blocks(t: int, s: int, block_q: int, block_kv: int) -> tuple[int, int, int, int]:
    """(bq, number of query blocks, bk, number of key blocks); T is padded up to a multiple of bq."""
    bq, bk = min(block_q, t), min(block_kv, s)
    return bq, -(-t // bq), bk, -(-s // bk)


def _group_queries(x: jax.Array, kv_heads: int, bq: int, nq: int) -> jax.Array:
    """[B, T, N, D] -> [B, K, nq * bq, G, D], zero rows appended up to a whole number of blocks."""
    b, t, n, d = x.shape
    x = x.reshape(b, t, kv_heads, n // kv_heads, d).transpose(0, 2, 1, 3, 4)
    return jnp.pad(x, ((0, 0), (0, 0), (0, nq * bq - t), (0, 0), (0, 0))) if nq * bq > t else x


def _ungroup_queries(x: jax.Array, t: int) -> jax.Array:
    """[B, K, T', G, D] -> [B, T, N, D] (the first t rows)."""
    b, kh, _, g, d = x.shape
    return x[:, :, :t].transpose(0, 2, 1, 3, 4).reshape(b, t, kh * g, d)


class _Block:
    """Index arithmetic shared by the forward and backward loops (all traced int32)."""

    def __init__(self, q_start, i, j, bq, bk, g, s):
        self.q0 = i * bq  # first query row (of the padded T) of block i
        # Key block j starts at j * bk; the last one is moved back to end at slot S (it may overlap
        # the previous one, whose slots `fresh` then excludes) so every block has static size bk.
        self.k0 = jnp.minimum(j * bk, s - bk)
        slots = self.k0 + jnp.arange(bk)
        row_slots = q_start + self.q0 + jnp.arange(bq * g) // g  # query rows (t, g) of the block
        self.causal = (slots[None, :] <= row_slots[:, None]) & (slots >= j * bk)[None, :]  # [M, bk]


def _num_key_blocks(q_start, i, bq, bk, nk):
    """Key blocks query block i can see: those up to its last query's slot (a traced count)."""
    return jnp.minimum((q_start + (i + 1) * bq - 1) // bk + 1, nk)


def _scores(qb, kb, valid, causal, scale):
    """Masked scores [B, K, M, bk] float32 of query rows qb: [B, K, M, D] against keys kb: [B, K, bk, D]."""
    s = jnp.einsum("bkmd,bksd->bkms", qb, kb.astype(qb.dtype), preferred_element_type=jnp.float32) * scale
    return jnp.where(valid[:, None, None, :] & causal[None, None], s, MASK_VALUE)


def _blocked_forward(q, k, v, key_valid, q_start, block_q, block_kv):
    """Returns (out [B, T, N, D], logsumexp [B, K, T', G] float32 of each query row)."""
    b, t, n, d = q.shape
    kh, s = k.shape[1], k.shape[2]
    g = n // kh
    bq, nq, bk, nk = _blocks(t, s, block_q, block_kv)
    scale = 1.0 / math.sqrt(d)
    qg = _group_queries(q, kh, bq, nq)

    def query_block(i, carry):
        out, lse = carry
        qb = jax.lax.dynamic_slice_in_dim(qg, i * bq, bq, axis=2).reshape(b, kh, bq * g, d)

        def key_block(j, state):
            m, denom, acc = state
            blk = _Block(q_start, i, j, bq, bk, g, s)
            kb = jax.lax.dynamic_slice_in_dim(k, blk.k0, bk, axis=2)
            vb = jax.lax.dynamic_slice_in_dim(v, blk.k0, bk, axis=2)
            valid = jax.lax.dynamic_slice_in_dim(key_valid, blk.k0, bk, axis=1)
            sc = _scores(qb, kb, valid, blk.causal, scale)
            m_new = jnp.maximum(m, sc.max(axis=-1))
            p = jnp.exp(sc - m_new[..., None])
            # Rows with only masked slots so far carry m = MASK_VALUE; the first real slot makes
            # their correction exp(MASK_VALUE - m_new) exactly 0, erasing the masked slots' weight.
            correction = jnp.exp(m - m_new)
            pv = jnp.einsum(
                "bkms,bksd->bkmd", p.astype(q.dtype), vb.astype(q.dtype), preferred_element_type=jnp.float32
            )
            return m_new, denom * correction + p.sum(axis=-1), acc * correction[..., None] + pv

        init = (
            jnp.full((b, kh, bq * g), MASK_VALUE, jnp.float32),
            jnp.zeros((b, kh, bq * g), jnp.float32),
            jnp.zeros((b, kh, bq * g, d), jnp.float32),
        )
        m, denom, acc = jax.lax.fori_loop(0, _num_key_blocks(q_start, i, bq, bk, nk), key_block, init)
        block_out = (acc / denom[..., None]).astype(q.dtype).reshape(b, kh, bq, g, d)
        block_lse = (m + jnp.log(denom)).reshape(b, kh, bq, g)
        out = jax.lax.dynamic_update_slice_in_dim(out, block_out, i * bq, axis=2)
        lse = jax.lax.dynamic_update_slice_in_dim(lse, block_lse, i * bq, axis=2)
        return out, lse

    out = jnp.zeros((b, kh, nq * bq, g, d), q.dtype)
    lse = jnp.zeros((b, kh, nq * bq, g), jnp.float32)
    out, lse = jax.lax.fori_loop(0, nq, query_block, (out, lse))
    return _ungroup_queries(out, t), lse


def _blocked_backward(q, k, v, key_valid, q_start, out, lse, dout, block_q, block_kv):
    """Flash-attention backward: recomputes each score block from q, k and the saved logsumexp."""
    b, t, n, d = q.shape
    kh, s = k.shape[1], k.shape[2]
    g = n // kh
    bq, nq, bk, nk = _blocks(t, s, block_q, block_kv)
    scale = 1.0 / math.sqrt(d)
    qg = _group_queries(q, kh, bq, nq)
    dog = _group_queries(dout, kh, bq, nq)  # padded query rows get zero cotangents: they add nothing
    delta = jnp.sum(dog.astype(jnp.float32) * _group_queries(out, kh, bq, nq).astype(jnp.float32), axis=-1)

    def query_block(i, carry):
        dq, dk, dv = carry
        rows = lambda x: jax.lax.dynamic_slice_in_dim(x, i * bq, bq, axis=2).reshape(b, kh, bq * g, *x.shape[4:])
        qb, dob, lse_b, delta_b = rows(qg), rows(dog), rows(lse), rows(delta)

        def key_block(j, state):
            dq_b, dk, dv = state
            blk = _Block(q_start, i, j, bq, bk, g, s)
            kb = jax.lax.dynamic_slice_in_dim(k, blk.k0, bk, axis=2)
            vb = jax.lax.dynamic_slice_in_dim(v, blk.k0, bk, axis=2)
            valid = jax.lax.dynamic_slice_in_dim(key_valid, blk.k0, bk, axis=1)
            # Masked slots get p = exp(MASK_VALUE - lse) = 0 in every row that has a real slot.
            p = jnp.exp(_scores(qb, kb, valid, blk.causal, scale) - lse_b[..., None])
            dp = jnp.einsum("bkmd,bksd->bkms", dob.astype(jnp.float32), vb.astype(jnp.float32))
            ds = p * (dp - delta_b[..., None]) * scale
            dq_b = dq_b + jnp.einsum("bkms,bksd->bkmd", ds, kb.astype(jnp.float32))
            dk_b = jnp.einsum("bkms,bkmd->bksd", ds, qb.astype(jnp.float32))
            dv_b = jnp.einsum("bkms,bkmd->bksd", p, dob.astype(jnp.float32))
            # The last key block may overlap the previous one: add only its fresh slots.
            fresh = (jnp.arange(bk) + blk.k0 >= j * bk)[None, None, :, None]
            add = lambda acc, x: jax.lax.dynamic_update_slice_in_dim(
                acc, jax.lax.dynamic_slice_in_dim(acc, blk.k0, bk, axis=2) + jnp.where(fresh, x, 0.0), blk.k0, axis=2
            )
            return dq_b, add(dk, dk_b), add(dv, dv_b)

        init = (jnp.zeros((b, kh, bq * g, d), jnp.float32), dk, dv)
        dq_b, dk, dv = jax.lax.fori_loop(0, _num_key_blocks(q_start, i, bq, bk, nk), key_block, init)
        dq = jax.lax.dynamic_update_slice_in_dim(dq, dq_b.reshape(b, kh, bq, g, d), i * bq, axis=2)
        return dq, dk, dv

    zeros = lambda shape: jnp.zeros(shape, jnp.float32)
    dq, dk, dv = jax.lax.fori_loop(
        0, nq, query_block, (zeros((b, kh, nq * bq, g, d)), zeros(k.shape), zeros(v.shape))
    )
    return _ungroup_queries(dq, t).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


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

    def per_shard(q, k, v, key_valid):
        heads = q.shape[2]
        mask = masks.MultiHeadMask([masks.CausalMask((t, t)) for _ in range(heads)])
        kernel = splash.make_splash_mha(
            mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret
        )
        segments = key_valid.astype(jnp.int32)
        qh = jnp.swapaxes(q * (1.0 / math.sqrt(d)), 1, 2).astype(q.dtype)  # [B, N, T, D]
        run = lambda q, k, v, seg: kernel(q, k, v, segment_ids=splash.SegmentIds(q=seg, kv=seg))
        return jnp.swapaxes(jax.vmap(run)(qh, k.astype(q.dtype), v.astype(q.dtype), segments), 1, 2)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.size == 1:
        return per_shard(q, k, v, key_valid)
    batch_axes, head_axes = _shard_axes(mesh)
    P = jax.sharding.PartitionSpec
    return jax.shard_map(
        per_shard,
        mesh=mesh,
        in_specs=(P(batch_axes, None, head_axes), P(batch_axes, head_axes), P(batch_axes, head_axes), P(batch_axes)),
        out_specs=P(batch_axes, None, head_axes),
        check_vma=False,
    )(q, k, v, key_valid)


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
