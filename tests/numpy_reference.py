"""A float64 NumPy re-implementation of the decoder, written from the architecture description.

Multi-head attention with the kv heads explicitly repeated, rotate-half RoPE with transformers'
llama3 frequency formula, RMSNorm, SwiGLU; every step in float64, so it is the exact-arithmetic
reference for our float32 model (transformers' "float64" model still computes RMSNorm in float32).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from memtrain_jax.model.config import ModelConfig


def np_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> np.ndarray:
    """transformers' default / llama3 RoPE inverse frequencies, re-implemented in float64."""
    inv = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if scaling is None:
        return inv
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    old = scaling["original_max_position_embeddings"]
    out = np.empty_like(inv)
    for i, f in enumerate(inv):
        wavelen = 2 * math.pi / f
        if wavelen < old / high:
            out[i] = f
        elif wavelen > old / low:
            out[i] = f / factor
        else:
            smooth = (old / wavelen - low) / (high - low)
            out[i] = (1 - smooth) * f / factor + smooth * f
    return out


def np_forward(config: ModelConfig, params, tokens: np.ndarray) -> np.ndarray:
    """Logits [B, T, V] of unpadded rows, float64."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    eps, d = config.rms_norm_eps, config.head_dim
    group = config.num_heads // config.num_kv_heads

    def rms(x, scale):
        return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * scale

    scaling = None if config.rope_scaling is None else dict(config.rope_scaling)
    angles = np.arange(tokens.shape[1])[:, None] * np_inv_freq(d, config.rope_theta, scaling)[None]
    cos = np.concatenate([np.cos(angles)] * 2, -1)[None, :, None]
    sin = np.concatenate([np.sin(angles)] * 2, -1)[None, :, None]

    def rope(x):
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    t = tokens.shape[1]
    causal = np.tril(np.ones((t, t), bool))
    x = p["embedder"]["embedding"][tokens]
    for i in range(config.num_layers):
        lp = p[f"layers_{i}"]
        a = lp["attn"]
        h = rms(x, lp["input_norm"]["scale"])
        q, k, v = (np.einsum("bth,hnd->btnd", h, a[n]["kernel"]) for n in ("q_proj", "k_proj", "v_proj"))
        if config.qkv_bias:
            q, k, v = q + a["q_proj"]["bias"], k + a["k_proj"]["bias"], v + a["v_proj"]["bias"]
        if config.qk_norm:
            q, k = rms(q, a["q_norm"]["scale"]), rms(k, a["k_norm"]["scale"])
        q, k = rope(q), rope(k)
        # Multi-head attention: query head n reads kv head n // group.
        k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
        scores = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(d)
        scores = np.where(causal, scores, -np.inf)
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        x = x + np.einsum("btnd,ndh->bth", np.einsum("bnts,bsnd->btnd", probs, v), a["o_proj"]["kernel"])
        h = rms(x, lp["post_attn_norm"]["scale"])
        m = lp["mlp"]
        gate, up = h @ m["gate_proj"]["kernel"], h @ m["up_proj"]["kernel"]
        x = x + (gate / (1 + np.exp(-gate)) * up) @ m["down_proj"]["kernel"]
    x = rms(x, p["final_norm"]["scale"])
    head = p["embedder"]["embedding"].T if config.tie_embeddings else p["lm_head"]["kernel"]
    return x @ head
