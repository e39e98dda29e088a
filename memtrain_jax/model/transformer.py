"""Decoder-only transformer (Llama 2/3, Qwen2/2.5, Qwen3) in Flax linen, with a fixed-size KV cache.

One code path serves training (full sequence, no cache), prefill and incremental
decoding. The new tokens attend causally to each other and, with a cache, to every
valid slot already in it (all of which precede them). The new keys/values are written
at slots index..index+t-1. Prompts are left padded, so every row advances through the
cache in lockstep and the rotary position of a token is the number of real tokens
before it in its row.

Cache layout, chosen so that a donated cache is updated in place and never copied: with
unrolled layers, one [B, K, S, D] buffer per layer (slicing a stacked [L, ...] buffer
inside a decode loop makes XLA materialise every layer's slice); with scanned layers, one
stacked [L, B, K, S, D] buffer carried through the scan (as the scan's input and output it
would be sliced and re-stacked, a copy every step). Each layer writes its new keys/values
into its buffer first and then attends over it, so the write never races a read of the old
value. Heads-major, so the attention matmuls read it without transposes. The attention
backend is `config.attention` (memtrain_jax/model/attention.py); the blocked one reads only
the slots the queries can see.

Shapes: B batch, T new tokens, S cache slots, L layers, H hidden, N query heads,
K kv heads, G = N // K, D head dim, M mlp, V vocab.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from memtrain_jax import sharding
from memtrain_jax.model import attention as attention_lib
from memtrain_jax.model.config import ModelConfig

# k, v: L buffers [B, K, S, D] (scan_layers: one [L, B, K, S, D]); mask: [B, S] bool; index: int32 scalar.
KVCache = dict[str, Any]
Params = dict[str, Any]


def _init(names: tuple[str | None, ...], scale_axis: int | tuple[int, ...] = 0):
    """Normal init with std 1/sqrt(fan_in), boxed with logical axis names."""
    return nn.with_logical_partitioning(
        nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", in_axis=scale_axis), names
    )


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * scale, statistics in float32 (HF convention: no +1 on scale)."""

    eps: float
    dtype: Any
    param_dtype: Any
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (x.shape[-1],),
            self.param_dtype,
        )
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
        return (normed * scale.astype(jnp.float32)).astype(self.dtype)


class Projection(nn.Module):
    """Dense layer contracting the input's trailing `in_ndim` axes into `features` (with logical names)."""

    features: tuple[int, ...]
    in_ndim: int
    names: tuple[str, ...]  # logical names of the kernel: input axes then output axes
    use_bias: bool
    dtype: Any
    param_dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[-self.in_ndim :]
        kernel = self.param(
            "kernel", _init(self.names, tuple(range(self.in_ndim))), in_shape + self.features, self.param_dtype
        )
        letters = "abcdefgh"
        lhs = "..." + letters[: self.in_ndim]
        out = letters[self.in_ndim : self.in_ndim + len(self.features)]
        y = jnp.einsum(f"{lhs},{lhs[3:]}{out}->...{out}", x, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, self.names[self.in_ndim :]),
                self.features,
                self.param_dtype,
            )
            y = y + bias.astype(self.dtype)
        return y


def rope_frequencies(config: ModelConfig) -> jax.Array:
    """Inverse frequencies [D/2], with Llama-3 style scaling when `config.rope_scaling` is set."""
    d = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
    if config.rope_scaling is None:
        return inv_freq
    s = dict(config.rope_scaling)
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old_len = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
    return jnp.where(is_medium, smoothed, scaled)


def rope_tables(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos, sin: [B, T, D/2] float32 for integer positions [B, T]."""
    angles = positions.astype(jnp.float32)[..., None] * rope_frequencies(config)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x: [B, T, heads, D] by the "rotate_half" convention (first half / second half)."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Dense grouped-query attention (the "reference" backend); see attention.reference_attention.

    q: [B, T, N, D]; k, v: [B, K, S, D] (heads-major, the cache's layout); mask: [B, T, S]
    (True = may attend). Returns [B, T, N, D].
    """
    return attention_lib.reference_attention(q, k, v, mask)


class Attention(nn.Module):
    config: ModelConfig
    last_only: bool = False  # only the last token's query (keys/values of every token still)

    @nn.compact
    def __call__(self, x, cos, sin, key_valid, layer_cache, cache_index, layer=None):
        """x: [B, T, H]; key_valid: [B, S] bool; layer_cache: (k, v) buffers [B, K, S, D], or with `layer`
        (an int32 scalar) the stacked buffers [L, B, K, S, D] of every layer, or None.

        With a cache, the new keys/values are first written at slots cache_index..cache_index+T-1
        (of layer `layer` in stacked buffers), then the queries attend over the layer's buffer (only
        the slots they can see, for the blocked backend). Writing before reading lets XLA update a
        donated buffer in place. Without a cache, cache_index is the Python int 0 and the tokens
        attend to each other. Returns (output [B, T, H] ([B, 1, H] with last_only), updated (k, v)
        buffers (stacked with `layer`), or the new tokens' (k, v) [B, K, T, D]).
        """
        c = self.config
        t = x.shape[1]
        proj = functools.partial(Projection, dtype=c.compute_dtype, param_dtype=c.weight_dtype)
        q_cos, q_sin, q_start = cos, sin, cache_index
        if self.last_only:
            x_q, q_cos, q_sin, q_start = x[:, -1:], cos[:, -1:], sin[:, -1:], cache_index + t - 1
        else:
            x_q = x
        q = proj((c.num_heads, c.head_dim), 1, ("embed", "heads", "head_dim"), c.qkv_bias, name="q_proj")(x_q)
        k = proj((c.num_kv_heads, c.head_dim), 1, ("embed", "kv_heads", "head_dim"), c.qkv_bias, name="k_proj")(x)
        v = proj((c.num_kv_heads, c.head_dim), 1, ("embed", "kv_heads", "head_dim"), c.qkv_bias, name="v_proj")(x)
        if c.qk_norm:
            norm = functools.partial(RMSNorm, c.rms_norm_eps, c.compute_dtype, c.weight_dtype, axis_name="head_dim")
            q, k = norm(name="q_norm")(q), norm(name="k_norm")(k)
        q, k = apply_rope(q, q_cos, q_sin), apply_rope(k, cos, sin)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)  # heads-major [B, K, T, D]
        kv = k, v
        if layer_cache is not None and layer is None:
            write = lambda buf, new: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (0, 0, cache_index, 0))
            k, v = kv = write(layer_cache[0], k), write(layer_cache[1], v)
        elif layer_cache is not None:  # the stacked buffers of a scan's carry: written in place, one layer read
            at = (layer, 0, 0, cache_index, 0)
            write = lambda buf, new: jax.lax.dynamic_update_slice(buf, new[None].astype(buf.dtype), at)
            kv = tuple(nn.with_logical_constraint(write(buf, new), ("layers", *CACHE_LAYER_AXES)) for buf, new in
                       zip(layer_cache, (k, v), strict=True))  # fmt: skip
            # the layer's buffers keep the cache's sharding: unconstrained, the compiler gathered every row of
            # them onto every chip, each layer of each decode step
            k, v = (
                nn.with_logical_constraint(
                    jax.lax.dynamic_index_in_dim(buf, layer, 0, keepdims=False), CACHE_LAYER_AXES
                )
                for buf in kv
            )
        out = attention_lib.attention(
            q,
            k,
            v,
            key_valid,
            q_start,
            backend=c.attention,
            block_q=c.attention_block_q,
            block_kv=c.attention_block_kv,
        )
        out = proj((c.hidden_size,), 2, ("heads", "head_dim", "embed"), False, name="o_proj")(out)
        return out, kv


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        proj = functools.partial(
            Projection, in_ndim=1, use_bias=False, dtype=c.compute_dtype, param_dtype=c.weight_dtype
        )
        gate = proj((c.intermediate_size,), names=("embed", "mlp"), name="gate_proj")(x)
        up = proj((c.intermediate_size,), names=("embed", "mlp"), name="up_proj")(x)
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return proj((c.hidden_size,), names=("mlp", "embed"), name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    config: ModelConfig
    # The last layer of a `last_only` call: the cache needs every token's keys/values, the logits
    # only the last token's output, so query, attention output and MLP run for that token alone.
    last_only: bool = False
    # Scanned over a stacked cache: the carry is (x, k, v) with k, v [L, B, K, S, D], the scanned input the
    # layer's index. The cache then travels in the scan's carry and is written in place; as the scan's
    # input and output ([L, ...] sliced and re-stacked) XLA would copy it every decode step.
    stacked_cache: bool = False

    @nn.compact
    def __call__(self, x, layer_cache, cos, sin, key_valid, cache_index):
        """Pre-norm block. x: [B, T, H]; layer_cache: (k, v) buffers [B, K, S, D] or None; key_valid: [B, S].
        With `stacked_cache`: x is the carry (x, k, v), layer_cache the layer index (int32 scalar).

        Returns (x ([B, 1, H] with last_only), (k, v) as Attention returns them), or with `stacked_cache`
        ((x, k, v), None). The signature fits nn.scan (carry, scanned, broadcast...).
        """
        c = self.config
        layer = None
        if self.stacked_cache:
            (x, *stacked), layer = x, layer_cache
            layer_cache = tuple(stacked)
        norm = functools.partial(RMSNorm, c.rms_norm_eps, c.compute_dtype, c.weight_dtype)
        attn = Attention(c, last_only=self.last_only, name="attn")
        attn_out, kv = attn(norm(name="input_norm")(x), cos, sin, key_valid, layer_cache, cache_index, layer)
        x = (x[:, -1:] if self.last_only else x) + attn_out
        x = x + MLP(c, name="mlp")(norm(name="post_attn_norm")(x))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        return ((x, *kv), None) if self.stacked_cache else (x, kv)


def _layer_class(config: ModelConfig):
    if config.remat == "none":
        return DecoderLayer
    policy = None if config.remat == "full" else jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
    return nn.remat(DecoderLayer, policy=policy, prevent_cse=not config.scan_layers)


class Transformer(nn.Module):
    """tokens [B, T] -> logits [B, T, V] float32, optionally reading and extending a KV cache."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens,
        positions,
        attention_mask,
        cache: KVCache | None = None,
        last_only: bool = False,
        return_kv: bool = False,
        return_hidden: bool = False,
    ):
        """positions: [B, T] rotary positions; attention_mask: [B, T] bool, False on left padding.

        With a cache, the new tokens also attend to its valid slots and the returned cache holds them
        at slots index..index+T-1. `last_only` computes logits for the last position only ([B, 1, V]):
        a prefill needs no more, and the head is the largest matmul of a small model; with unrolled
        layers the last layer's query, attention output and MLP also run for that position alone. `return_kv`
        (without a cache): also return the tokens' keys/values as a full cache of exactly T slots.
        `return_hidden` returns the final-normed hidden states [B, T, H] instead of logits, for callers
        that apply the head in pieces (memtrain_jax.model.logprobs never holds [B, T, V] logits).
        """
        c = self.config
        embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(1.0), ("vocab", "embed")),
            (c.vocab_size, c.hidden_size),
            c.weight_dtype,
        )
        x = jnp.take(embedding, tokens, axis=0).astype(c.compute_dtype)
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        cos, sin = rope_tables(c, positions)
        t = tokens.shape[1]
        if cache is None:  # self-attention from slot 0: a static start lets splash/cudnn run
            index, key_valid = 0, attention_mask
        else:  # the new tokens see the valid slots before them (the attention backend applies causality)
            index = cache["index"]
            key_valid = jax.lax.dynamic_update_slice(cache["mask"], attention_mask, (0, index))
        layer_cls = _layer_class(c)

        if c.scan_layers:
            scanned = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast),
                length=c.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            if cache is None:  # the layers' keys/values come out stacked (prefill's return_kv)
                x, (new_k, new_v) = scanned(c, name="layers")(x, None, cos, sin, key_valid, index)
            else:
                carry, layers = (x, cache["k"], cache["v"]), jnp.arange(c.num_layers, dtype=jnp.int32)
                (x, new_k, new_v), _ = scanned(c, stacked_cache=True, name="layers")(
                    carry, layers, cos, sin, key_valid, index
                )
        else:
            new_k, new_v = [], []
            for i in range(c.num_layers):
                layer_cache = None if cache is None else (cache["k"][i], cache["v"][i])
                last = last_only and i == c.num_layers - 1
                x, (k, v) = layer_cls(c, last_only=last, name=f"layers_{i}")(x, layer_cache, cos, sin, key_valid, index)
                new_k.append(k)
                new_v.append(v)
            new_k, new_v = tuple(new_k), tuple(new_v)

        if last_only:
            x = x[:, -1:]
        x = RMSNorm(c.rms_norm_eps, c.compute_dtype, c.weight_dtype, name="final_norm")(x)
        if return_hidden:
            return x, None
        if c.tie_embeddings:  # contract with the [V, H] table directly: a transpose would copy it every call
            logits = jnp.einsum("bth,vh->btv", x, embedding.astype(c.compute_dtype), preferred_element_type=jnp.float32)
        else:
            head = self.param("lm_head", _init(("embed", "vocab")), (c.hidden_size, c.vocab_size), c.weight_dtype)
            logits = jnp.einsum("bth,hv->btv", x, head.astype(c.compute_dtype), preferred_element_type=jnp.float32)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        if cache is None and not return_kv:
            return logits, None
        new_cache = {"k": new_k, "v": new_v, "mask": key_valid, "index": jnp.asarray(index + t, jnp.int32)}
        return logits, new_cache


# The contract's parameter tree puts the embedding under "embedder" and the head under "lm_head/kernel";
# linen's compact params above are flat, so the public tree is mapped to and from it here.
def _to_module_tree(params: Params) -> Params:
    tree = {k: v for k, v in params.items() if k not in ("embedder", "lm_head")}
    tree["embedding"] = params["embedder"]["embedding"]
    if "lm_head" in params:
        tree["lm_head"] = params["lm_head"]["kernel"]
    return tree


def _from_module_tree(tree: Params) -> Params:
    params = {k: v for k, v in tree.items() if k not in ("embedding", "lm_head")}
    params["embedder"] = {"embedding": tree["embedding"]}
    if "lm_head" in tree:
        params["lm_head"] = {"kernel": tree["lm_head"]}
    return params


def _dummy_inputs(config: ModelConfig):
    tokens = jnp.zeros((1, 1), jnp.int32)
    return tokens, tokens, jnp.ones((1, 1), bool)


def _boxed_init(config: ModelConfig, rng: jax.Array):
    return Transformer(config).init(rng, *_dummy_inputs(config))["params"]


def param_logical_specs(config: ModelConfig) -> Params:
    """PartitionSpecs of logical axis names, with the same structure as `init_params`' tree."""
    boxed = jax.eval_shape(functools.partial(_boxed_init, config), jax.random.key(0))
    return _from_module_tree(nn.get_partition_spec(boxed))


def param_shapes(config: ModelConfig) -> Params:
    """ShapeDtypeStructs of the parameter tree, without allocating it."""
    boxed = jax.eval_shape(functools.partial(_boxed_init, config), jax.random.key(0))
    return _from_module_tree(nn.meta.unbox(boxed))


def param_shardings(config: ModelConfig, mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES) -> Params:
    """NamedShardings of the parameter tree on `mesh` by the logical-axis `rules`."""
    return sharding.tree_shardings(mesh, param_logical_specs(config), rules, shapes=param_shapes(config))


def cache_shardings(config: ModelConfig, cache: KVCache, mesh: jax.sharding.Mesh, rules=sharding.DEFAULT_RULES):
    """NamedShardings of a KV cache on `mesh`: batch over the data axes, kv heads over tensor."""
    return sharding.tree_shardings(mesh, cache_logical_specs(config), rules, shapes=cache)


def init_params(config: ModelConfig, rng: jax.Array, shardings: Params | None = None) -> Params:
    """Random parameters; with `shardings` (see sharding.tree_shardings) they are created sharded."""
    fn = lambda key: _from_module_tree(nn.meta.unbox(_boxed_init(config, key)))
    return jax.jit(fn, out_shardings=shardings)(rng)


def stack_layers(params: Params, config: ModelConfig) -> Params:
    """Non-scanned tree (layers_0..layers_{L-1}) -> scanned tree ('layers' with a leading [L] axis)."""
    layers = [params[f"layers_{i}"] for i in range(config.num_layers)]
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    return out


def unstack_layers(params: Params, config: ModelConfig) -> Params:
    """Scanned tree -> non-scanned tree; inverse of `stack_layers`."""
    out = {k: v for k, v in params.items() if k != "layers"}
    for i in range(config.num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


def default_positions(attention_mask: jax.Array) -> jax.Array:
    """Rotary positions of left-padded rows: number of real tokens before each token ([B, T] int32)."""
    return jnp.maximum(jnp.cumsum(attention_mask.astype(jnp.int32), axis=-1) - 1, 0)


def apply_model(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    cache: KVCache | None = None,
    last_only: bool = False,
    return_hidden: bool = False,
) -> tuple[jax.Array, KVCache | None]:
    """Runs the model (traceable; call inside jit). Returns (logits [B, T, V] float32, new cache or None).

    tokens: [B, T] int32. attention_mask: [B, T] bool, False on left padding. positions: [B, T]
    rotary positions; by default derived from the mask (and, with a cache, from the real tokens
    already in it). With a cache, the tokens are written at slots index..index+T-1.
    `last_only`: logits of the last position only, [B, 1, V]. `return_hidden`: the final-normed hidden states
    [B, T, H] in place of the logits, and no cache (the new tokens' keys/values are not returned).
    """
    if cache is not None and tokens.shape[1] > cache_length(cache):
        raise ValueError(f"{tokens.shape[1]} new tokens do not fit a KV cache of {cache_length(cache)} slots.")
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    attention_mask = attention_mask.astype(bool)
    if positions is None:
        positions = default_positions(attention_mask)
        if cache is not None:  # continue after the real tokens already cached in each row
            positions = positions + jnp.sum(cache["mask"].astype(jnp.int32), axis=-1, keepdims=True)
    module_params = _to_module_tree(params)
    return Transformer(config).apply(
        {"params": module_params}, tokens, positions, attention_mask, cache, last_only, return_hidden=return_hidden
    )


def prefill(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
    last_only: bool = True,
) -> tuple[jax.Array, KVCache]:
    """Runs tokens [B, T] from an empty context (traceable). Returns (logits, a cache of exactly T slots).

    The same computation as `apply_model` with an empty cache of T slots, but the attention is
    the tokens' self-attention from slot 0, which every backend (splash, cudnn) runs, and no
    cache buffer is written: the cache's k/v are the layers' own outputs. index = T.
    `last_only` (default): logits [B, 1, V] of the last position only.
    """
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    attention_mask = attention_mask.astype(bool)
    if positions is None:
        positions = default_positions(attention_mask)
    module_params = _to_module_tree(params)
    return Transformer(config).apply(
        {"params": module_params}, tokens, positions, attention_mask, None, last_only, return_kv=True
    )


@functools.partial(jax.jit, static_argnums=0)
def _forward_jit(config, params, tokens, positions, attention_mask):
    return apply_model(config, params, tokens, positions, attention_mask)[0]


def forward(
    config: ModelConfig,
    params: Params,
    tokens: jax.Array,
    positions: jax.Array | None = None,
    attention_mask: jax.Array | None = None,
) -> jax.Array:
    """Full-sequence logits [B, T, V] float32 for tokens [B, T] int32 (jitted; follows params' shardings)."""
    tokens = jnp.asarray(tokens, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones(tokens.shape, bool)
    if positions is None:
        positions = default_positions(jnp.asarray(attention_mask))
    return _forward_jit(config, params, tokens, positions, attention_mask)


def init_cache(config: ModelConfig, batch_size: int, max_length: int, dtype: Any = None) -> KVCache:
    """An empty cache: k, v zeros (L buffers [B, K, S, D], or one [L, B, K, S, D] with scan_layers),
    mask [B, S] False, index 0.

    The caller keeps index + new tokens <= max_length: past the end, XLA clamps the write position
    and the last slots would be overwritten (the sampler sizes its cache from the prompt and budget).
    """
    dtype = dtype or config.compute_dtype
    layer_shape = (batch_size, config.num_kv_heads, max_length, config.head_dim)
    if config.scan_layers:
        k = v = jnp.zeros((config.num_layers, *layer_shape), dtype)
    else:
        k = tuple(jnp.zeros(layer_shape, dtype) for _ in range(config.num_layers))
        v = tuple(jnp.zeros(layer_shape, dtype) for _ in range(config.num_layers))
    return {"k": k, "v": v, "mask": jnp.zeros((batch_size, max_length), bool), "index": jnp.zeros((), jnp.int32)}


def expand_prefix(prefix: KVCache, rows: jax.Array, cache: KVCache) -> KVCache:
    """Copies prompt caches into a row cache: row i of `cache` gets `prefix` row rows[i] in its first
    P slots. prefix: U rows, P slots; rows: [B] int32 in [0, U); cache: B rows, S >= P slots (empty).
    Rows sharing a prompt share its prefill; the copy is what each row would have computed itself. Traceable and
    differentiable (the training update's shared prompts, memtrain_jax.model.logprobs, use it too)."""

    def take(new: jax.Array, buf: jax.Array) -> jax.Array:  # [U, K, P, D] -> rows [B, K, P, D], as buf's
        # Sharded like the cache's rows: else the compiler may write the gathered rows into a gathered copy
        # of the whole buffer (every row of a layer on every chip) and slice it back.
        return nn.with_logical_constraint(jnp.take(new, rows, axis=0).astype(buf.dtype), CACHE_LAYER_AXES)

    def fill(buf: jax.Array, new: jax.Array) -> jax.Array:  # buf [B, K, S, D], new [U, K, P, D]
        return jax.lax.dynamic_update_slice(buf, take(new, buf), (0,) * buf.ndim)

    def fill_layer(layer: jax.Array, kv: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        # buffers [L, B, K, S, D] from prefix [L, U, K, P, D], one layer at a time: gathering rows across
        # batch shards all-gathers its operand, so one layer's prefix is gathered, not every layer's at once.
        def one(buf, new):
            new = take(jax.lax.dynamic_index_in_dim(new, layer, 0, keepdims=False), buf)
            return jax.lax.dynamic_update_slice(buf, new[None], (layer, 0, 0, 0, 0))

        return one(kv[0], prefix["k"]), one(kv[1], prefix["v"])

    mask = jax.lax.dynamic_update_slice(cache["mask"], jnp.take(prefix["mask"], rows, axis=0), (0, 0))
    if isinstance(cache["k"], tuple):  # a buffer per layer
        k, v = jax.tree.map(fill, cache["k"], prefix["k"]), jax.tree.map(fill, cache["v"], prefix["v"])
    else:
        k, v = jax.lax.fori_loop(0, cache["k"].shape[0], fill_layer, (cache["k"], cache["v"]))
    return {
        "k": k,
        "v": v,
        "mask": mask,
        "index": jnp.asarray(prefix["index"], jnp.int32),
    }


def cache_length(cache: KVCache) -> int:
    """Number of slots S of a cache."""
    return jax.tree.leaves(cache["k"])[0].shape[-2]


CACHE_LAYER_AXES = ("batch", "kv_heads", "cache_length", "head_dim")  # one layer's k or v buffer


def cache_logical_specs(config: ModelConfig) -> dict[str, Any]:
    """PartitionSpecs of logical axis names with the structure of `init_cache(config, ...)`."""
    P = jax.sharding.PartitionSpec
    if config.scan_layers:
        kv = P("layers", *CACHE_LAYER_AXES)
    else:
        kv = tuple(P(*CACHE_LAYER_AXES) for _ in range(config.num_layers))
    return {"k": kv, "v": kv, "mask": P("batch", "cache_length"), "index": P()}
