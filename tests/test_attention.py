"""Attention backends against today's dense reference (float32, 1e-5): left padding, GQA, KV cache.

The blocked backend runs everywhere; splash runs here in Pallas interpret mode and the cuDNN path
with XLA's implementation of the same call (their kernels themselves need a TPU / GPU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax.model import ModelConfig, apply_model, init_cache, init_params, prefill, stack_layers
from memtrain_jax.model import attention as attn

ATOL = 1e-5


def _inputs(b, t, s, n, kh, d, q_start, first_valid, seed=0):
    """Random q [B, T, N, D], k, v [B, K, S, D] and key_valid [B, S]: row i's slots first_valid[i]
    .. q_start + T - 1 hold real tokens (left padding before them, unused slots after)."""
    rng = np.random.default_rng(seed)
    q = jnp.asarray(rng.standard_normal((b, t, n, d)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((b, kh, s, d)), jnp.float32)
    v = jnp.asarray(rng.standard_normal((b, kh, s, d)), jnp.float32)
    valid = np.zeros((b, s), bool)
    for i, first in enumerate(first_valid):
        valid[i, first : q_start + t] = True
    return q, k, v, jnp.asarray(valid)


def _reference(q, k, v, valid, q_start):
    return attn.reference_attention(q, k, v, attn.attention_mask(valid, q_start, q.shape[1]))


def _seen(valid, q_start, t):
    """[B, T] query rows with at least one visible key (padding queries' outputs are unspecified)."""
    return np.asarray(attn.attention_mask(valid, q_start, t).any(-1))


# (batch, T, S, heads, kv heads, head dim, q_start, block_q, block_kv, first valid slot per row)
CASES = {
    "self_from_zero_gqa": (3, 16, 16, 4, 2, 8, 0, 4, 4, [0, 5, 11]),
    "ragged_blocks": (2, 16, 16, 4, 2, 8, 0, 5, 3, [0, 7]),
    "prefill_into_longer_cache": (2, 12, 40, 4, 2, 8, 0, 8, 16, [3, 0]),
    "chunk_after_cache_mqa": (2, 10, 33, 6, 1, 8, 9, 4, 8, [2, 6]),
    "decode_step": (3, 1, 37, 6, 2, 8, 20, 4, 8, [0, 3, 15]),
    "mha_single_block": (2, 7, 7, 3, 3, 16, 0, 512, 512, [0, 2]),
}


@pytest.fixture(params=[False, True], ids=["rows_together", "row_per_block"])
def row_grouping(request, monkeypatch):
    """Runs each case with the batch in one score block and with one row per block."""
    if request.param:
        monkeypatch.setattr(attn, "SCORE_BLOCK_BYTES", 1)
    return request.param


@pytest.mark.parametrize("case", sorted(CASES))
def test_blocked_matches_reference(case, row_grouping):
    b, t, s, n, kh, d, q_start, bq, bk, first = CASES[case]
    q, k, v, valid = _inputs(b, t, s, n, kh, d, q_start, first)
    ref = np.asarray(_reference(q, k, v, valid, q_start))
    seen = _seen(valid, q_start, t)
    out = jax.jit(functools.partial(attn.blocked_attention, block_q=bq, block_kv=bk))(
        q, k, v, valid, jnp.int32(q_start)
    )
    assert np.isfinite(np.asarray(out)).all()
    np.testing.assert_allclose(np.asarray(out)[seen], ref[seen], atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["self_from_zero_gqa", "ragged_blocks", "chunk_after_cache_mqa", "decode_step"])
def test_blocked_gradients_match_reference(case, row_grouping):
    b, t, s, n, kh, d, q_start, bq, bk, first = CASES[case]
    q, k, v, valid = _inputs(b, t, s, n, kh, d, q_start, first)
    seen = jnp.asarray(_seen(valid, q_start, t))[..., None, None]
    weights = jnp.asarray(np.random.default_rng(1).standard_normal(q.shape), jnp.float32) * seen

    def grads(fn):
        return jax.jit(jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v) * weights), argnums=(0, 1, 2)))(q, k, v)

    expected = grads(lambda q, k, v: _reference(q, k, v, valid, q_start))
    got = grads(lambda q, k, v: attn.blocked_attention(q, k, v, valid, jnp.int32(q_start), bq, bk))
    for name, g, e in zip("qkv", got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), atol=ATOL, rtol=0, err_msg=f"d{name}")


def test_decode_reads_only_blocks_in_use():
    """Key blocks after the last query and before every row's first real slot are never read:
    NaN there leaves the result finite and equal to the clean cache's."""
    b, s, n, kh, d, q_start, bk = 2, 64, 4, 2, 8, 30, 8
    q, k, v, valid = _inputs(b, 1, s, n, kh, d, q_start, [17, 20])
    ref = np.asarray(_reference(q, k, v, valid, q_start))
    poison = np.zeros((s,), bool)
    poison[:16] = poison[32:] = True  # blocks 0-1 (before both rows' first slot) and 4-7 (unused)
    dirty = lambda x: jnp.where(jnp.asarray(poison)[None, None, :, None], jnp.nan, x)
    out = np.asarray(attn.blocked_attention(q, dirty(k), dirty(v), valid, jnp.int32(q_start), 4, bk))
    np.testing.assert_allclose(out, ref, atol=ATOL, rtol=0)


def test_splash_kernel_matches_reference():
    b, t, n, kh, d = 2, 256, 4, 2, 64
    q, k, v, valid = _inputs(b, t, t, n, kh, d, 0, [0, 37])
    seen = _seen(valid, 0, t)
    ref = np.asarray(_reference(q, k, v, valid, 0))
    out = attn.splash_attention(q, k, v, valid, block_q=128, block_kv=128, interpret=True)
    np.testing.assert_allclose(np.asarray(out)[seen], ref[seen], atol=ATOL, rtol=0)


def test_cudnn_call_matches_reference():
    """Left padding rotated into cuDNN's right-padded sequence lengths and back (XLA implementation)."""
    b, t, n, kh, d = 3, 24, 6, 2, 16
    q, k, v, valid = _inputs(b, t, t, n, kh, d, 0, [0, 9, 23])
    seen = _seen(valid, 0, t)
    ref = np.asarray(_reference(q, k, v, valid, 0))
    out = np.asarray(attn.cudnn_attention(q, k, v, valid, implementation="xla"))
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[seen], ref[seen], atol=ATOL, rtol=0)


def test_backend_selection():
    assert attn.resolve_backend("auto", "cpu") == "blocked"
    assert attn.resolve_backend("auto", "tpu") == "splash"
    assert attn.resolve_backend("auto", "gpu") == "cudnn"
    assert attn.resolve_backend("reference", "tpu") == "reference"
    with pytest.raises(ValueError, match="'flash'"):
        attn.resolve_backend("flash")
    # A platform kernel off its platform is emulated with a warning; `auto` never picks one here.
    q, k, v, valid = _inputs(1, 128, 128, 2, 1, 8, 0, [0])
    with pytest.warns(UserWarning, match="interpret mode"):
        attn.attention(q, k, v, valid, 0, backend="splash", block_q=128, block_kv=128)
    # Not self-attention from slot 0 (a decode step): splash falls back to blocked, silently.
    q1, k1, v1, valid1 = _inputs(1, 1, 16, 2, 1, 8, 5, [0])
    out = attn.attention(q1, k1, v1, valid1, jnp.int32(5), backend="splash", block_q=4, block_kv=4)
    np.testing.assert_allclose(np.asarray(out), np.asarray(_reference(q1, k1, v1, valid1, 5)), atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "field, value, message",
    [("attention", "flash", "'flash'"), ("attention_block_q", 0, "got 0"), ("attention_block_kv", 2.5, "got 2.5")],
)
def test_config_rejects_bad_attention_fields(field, value, message):
    base = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2)
    with pytest.raises(ValueError, match=message):
        ModelConfig(**base, head_dim=8, **{field: value})
    config = ModelConfig(**base, head_dim=8, attention="blocked", attention_block_q=64)
    assert ModelConfig.from_dict(config.to_dict()) == config


# ------------------------------------------------------------------------------------------------
# The model with each backend: forward with left padding, prefill + decode through the KV cache.

CONFIG = ModelConfig(
    vocab_size=128, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16
)
BACKENDS = {
    "blocked_small_blocks": dict(attention="blocked", attention_block_q=4, attention_block_kv=8),
    "blocked_default_blocks": dict(attention="blocked"),
    "splash_interpret": dict(attention="splash", attention_block_q=128, attention_block_kv=128),
    "cudnn_as_xla": dict(attention="cudnn"),
}


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


def _batch(t=128, pads=(0, 19, 77)):
    tokens = np.random.default_rng(2).integers(1, CONFIG.vocab_size, (len(pads), t)).astype(np.int32)
    mask = np.arange(t)[None, :] >= np.asarray(pads)[:, None]
    return jnp.asarray(tokens), jnp.asarray(mask)


@pytest.mark.filterwarnings("ignore:attention=:UserWarning")
@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_model_forward_matches_reference_backend(params, backend):
    tokens, mask = _batch()
    ref = np.asarray(apply_model(CONFIG.replace(attention="reference"), params, tokens, attention_mask=mask)[0])
    out = np.asarray(jax.jit(functools.partial(apply_model, CONFIG.replace(**BACKENDS[backend])))(
        params, tokens, attention_mask=mask
    )[0])  # fmt: skip
    real = np.asarray(mask)
    np.testing.assert_allclose(out[real], ref[real], atol=ATOL, rtol=0)


@pytest.mark.filterwarnings("ignore:attention=:UserWarning")
@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("backend", ["blocked_small_blocks", "splash_interpret"])
def test_prefill_then_decode_matches_full_reference(params, backend, scan):
    """prefill() of a left-padded batch, then its cache copied into a longer one and extended token by
    token: logits equal the reference backend's full forward, and the cache equals apply_model's."""
    config = CONFIG.replace(scan_layers=scan, **BACKENDS[backend])
    p = stack_layers(params, CONFIG) if scan else params
    tokens, mask = _batch(t=136)
    full = np.asarray(apply_model(CONFIG.replace(attention="reference"), params, tokens, attention_mask=mask)[0])

    logits, prompt_cache = jax.jit(functools.partial(prefill, config, last_only=False))(
        p, tokens[:, :128], attention_mask=mask[:, :128]
    )
    empty = init_cache(config, 3, 128)
    _, ref_cache = apply_model(config, p, tokens[:, :128], attention_mask=mask[:, :128], cache=empty)
    np.testing.assert_array_equal(prompt_cache["mask"], ref_cache["mask"])
    assert int(prompt_cache["index"]) == int(ref_cache["index"]) == 128
    real = np.asarray(mask[:, :128])[:, None, :, None]  # [B, 1, S, 1]; padding slots hold unspecified values
    kv = lambda cache: jax.tree.leaves((cache["k"], cache["v"]))  # [B, K, S, D] or [L, B, K, S, D] leaves
    for a, b in zip(kv(prompt_cache), kv(ref_cache), strict=True):
        np.testing.assert_allclose(np.where(real, a, 0), np.where(real, b, 0), atol=ATOL, rtol=0)

    cache = init_cache(config, 3, 140)
    grow = lambda buf, new: jax.lax.dynamic_update_slice(buf, new, (0,) * buf.ndim)
    cache = {
        "k": jax.tree.map(grow, cache["k"], prompt_cache["k"]),
        "v": jax.tree.map(grow, cache["v"], prompt_cache["v"]),
        "mask": grow(cache["mask"], prompt_cache["mask"]),
        "index": prompt_cache["index"],
    }
    pieces = [np.asarray(logits)]
    step = jax.jit(functools.partial(apply_model, config))
    for t in range(128, 136):
        out, cache = step(p, tokens[:, t : t + 1], cache=cache)
        pieces.append(np.asarray(out))
    real = np.asarray(mask)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1)[real], full[real], atol=ATOL, rtol=0)


@pytest.mark.parametrize("with_cache", [False, True])
def test_last_only_equals_last_position_of_full_logits(params, with_cache):
    """last_only runs the last layer's query, attention output and MLP for the last token alone:
    the same logits, and the same cache, as the full computation."""
    tokens, mask = _batch(t=40, pads=(0, 9, 31))
    cache = init_cache(CONFIG, 3, 48) if with_cache else None
    full, full_cache = apply_model(CONFIG, params, tokens, attention_mask=mask, cache=cache)
    last, last_cache = apply_model(CONFIG, params, tokens, attention_mask=mask, cache=cache, last_only=True)
    np.testing.assert_allclose(np.asarray(last), np.asarray(full)[:, -1:], atol=ATOL, rtol=0)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=ATOL, rtol=0), last_cache, full_cache)


def test_masked_bias_equals_where_exactly():
    """The added mask bias is the `where` it replaces, bit for bit, for any score a model can produce."""
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.standard_normal(1000) * 10.0 ** rng.integers(-3, 7, 1000), [0.0, -0.0, 1e9, -1e9]])
    scores = jnp.asarray(scores, jnp.float32)
    allowed = jnp.asarray(rng.random(scores.shape) < 0.5)
    got = np.asarray(jax.jit(attn.masked)(scores, allowed))
    want = np.where(np.asarray(allowed), np.asarray(scores), np.float32(attn.MASK_VALUE))
    np.testing.assert_array_equal(got, want)
