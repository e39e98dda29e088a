"""Properties of the transformer independent of Hugging Face, and the orbax parameter checkpoints.

The reference is a float64 NumPy re-implementation of the network written from the
architecture description (multi-head attention with the kv heads explicitly repeated,
rotate-half RoPE with HF's llama3 frequency formula, RMSNorm, SwiGLU).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy_reference import np_forward, np_inv_freq

from memtrain_jax.checkpoint import orbax_io
from memtrain_jax.checkpoint.orbax_io import CheckpointMismatchError, restore_params, save_params
from memtrain_jax.model.config import ModelConfig
from memtrain_jax.model.transformer import (
    apply_model,
    forward,
    init_cache,
    init_params,
    param_shardings,
    rope_frequencies,
    stack_layers,
    unstack_layers,
)
from memtrain_jax.sharding import make_mesh

SCALING = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64.0}
BASE = ModelConfig(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    rope_scaling=tuple(sorted(SCALING.items())),
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
)
TOKENS = np.random.default_rng(0).integers(0, BASE.vocab_size, size=(2, 16))


def _random_params(config: ModelConfig, seed: int = 0):
    """init_params, with norm scales and biases moved off their constant initial values."""
    params = init_params(config, jax.random.key(seed))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    rng = np.random.default_rng(seed)
    out = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        if "scale" in name:
            leaf = 1.0 + 0.2 * noise
        elif "bias" in name:
            leaf = 0.5 * noise
        elif "embedding" in name:
            leaf = np.asarray(leaf) * 0.5
        out.append(np.asarray(leaf, np.float32))
    return jax.tree_util.tree_unflatten(treedef, out)


VARIANTS = {
    "gqa_llama3_rope": BASE,
    "qkv_bias_tied": BASE.replace(qkv_bias=True, tie_embeddings=True, rope_scaling=None, family="qwen2"),
    "qk_norm_gqa4": BASE.replace(qk_norm=True, num_kv_heads=1, rope_theta=1e6, family="qwen3"),
}


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def variant(request):
    config = VARIANTS[request.param]
    return config, _random_params(config, seed=1)


def test_matches_numpy_reference(variant):
    config, params = variant
    ours = np.asarray(forward(config, params, TOKENS))
    ref = np_forward(config, params, TOKENS)
    assert np.abs(ref).max() > 1.0
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_gqa_equals_mha_with_repeated_kv_heads(variant):
    config, params = variant
    group = config.num_heads // config.num_kv_heads
    mha = config.replace(num_kv_heads=config.num_heads)
    mha_params = jax.tree.map(lambda x: x, params)
    for i in range(config.num_layers):
        attn = dict(mha_params[f"layers_{i}"]["attn"])
        for name in ("k_proj", "v_proj"):
            proj = {"kernel": np.repeat(attn[name]["kernel"], group, axis=1)}
            if config.qkv_bias:
                proj["bias"] = np.repeat(attn[name]["bias"], group, axis=0)
            attn[name] = proj
        mha_params[f"layers_{i}"] = {**mha_params[f"layers_{i}"], "attn": attn}
    np.testing.assert_allclose(
        np.asarray(forward(mha, mha_params, TOKENS)), np.asarray(forward(config, params, TOKENS)), atol=1e-5, rtol=0
    )


def test_rope_llama3_frequencies_match_numpy():
    for theta, head_dim, factor in ((500_000.0, 64, 32.0), (500_000.0, 128, 8.0), (10000.0, 16, 8.0)):
        old = 8192.0 if head_dim > 16 else 64.0
        scaling = {"factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
        scaling["original_max_position_embeddings"] = old
        config = BASE.replace(head_dim=head_dim, rope_theta=theta, rope_scaling=tuple(sorted(scaling.items())))
        ref = np_inv_freq(head_dim, theta, scaling)
        np.testing.assert_allclose(np.asarray(rope_frequencies(config)), ref, rtol=1e-6)
        # All three regimes (kept, smoothed, divided) occur, so each branch is checked.
        plain = np_inv_freq(head_dim, theta, None)
        assert np.any(ref == plain) and np.any(np.isclose(ref, plain / factor, rtol=1e-12))
        assert np.any((ref < plain) & ~np.isclose(ref, plain / factor, rtol=1e-12))


# ------------------------------------------------------------------------------------------------
# Layouts, remat, sharding, dtypes


@pytest.fixture(scope="module")
def base_params():
    return _random_params(BASE, seed=2)


def _loss_and_grads(config, params):
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((*TOKENS.shape, config.vocab_size)), jnp.float32)

    @jax.jit
    def run(params):
        def loss(params):
            logits = apply_model(config, params, jnp.asarray(TOKENS))[0]
            return jnp.sum(logits * weights), logits

        return jax.value_and_grad(loss, has_aux=True)(params)

    (_, logits), grads = run(params)
    return np.asarray(logits), grads


@pytest.fixture(scope="module")
def reference_grads(base_params):
    return _loss_and_grads(BASE, base_params)


@pytest.mark.parametrize("scan, remat", [(True, "none"), (True, "full"), (True, "dots"), (False, "full")])
def test_scan_and_remat_match_plain(base_params, reference_grads, scan, remat):
    config = BASE.replace(scan_layers=scan, remat=remat)
    params = stack_layers(base_params, BASE) if scan else base_params
    logits, grads = _loss_and_grads(config, params)
    ref_logits, ref_grads = reference_grads
    np.testing.assert_allclose(logits, ref_logits, atol=1e-5, rtol=0)
    if scan:
        grads = unstack_layers(grads, BASE)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5), grads, ref_grads)


def test_stack_unstack_round_trip(base_params):
    stacked = stack_layers(base_params, BASE)
    assert stacked["layers"]["attn"]["q_proj"]["kernel"].shape == (2, 64, 4, 16)
    jax.tree.map(np.testing.assert_array_equal, unstack_layers(stacked, BASE), base_params)


@pytest.mark.parametrize("mesh_shape, scan", [((2, 2, 2), False), ((1, 1, 8), True)])
def test_sharded_equals_single_device(base_params, mesh_shape, scan):
    config = BASE.replace(scan_layers=scan)
    params = stack_layers(base_params, BASE) if scan else base_params
    single = np.asarray(forward(config, params, TOKENS))
    mesh = make_mesh(mesh_shape)
    sharded_params = jax.device_put(params, param_shardings(config, mesh))
    assert any(not x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded_params))
    np.testing.assert_allclose(np.asarray(forward(config, sharded_params, TOKENS)), single, atol=1e-5, rtol=0)


def test_bfloat16_compute_close_to_float32(base_params):
    ref = np.asarray(forward(BASE, base_params, TOKENS))
    low = np.asarray(forward(BASE.replace(dtype="bfloat16"), base_params, TOKENS))
    rel = np.linalg.norm(low - ref) / np.linalg.norm(ref)
    # bfloat16 keeps 8 significant bits (unit roundoff u = 2^-8). Each of the ~10 roundings per layer
    # on the residual path contributes at most u relative error, and they add up roughly as a random
    # walk over 2 layers: a few u in all. 8u = 2^-5 bounds it with margin; a wrong cast or a bfloat16
    # softmax/norm statistic would exceed it.
    assert 0 < rel < 2.0**-5, rel
    assert np.mean(low.argmax(-1) == ref.argmax(-1)) > 0.9


def test_kv_cache_with_scanned_layers(base_params):
    config = BASE.replace(scan_layers=True)
    params = stack_layers(base_params, BASE)
    full = np.asarray(forward(config, params, TOKENS))
    step = jax.jit(functools.partial(apply_model, config))
    cache = init_cache(config, batch_size=2, max_length=16)
    logits, cache = step(params, jnp.asarray(TOKENS[:, :10]), cache=cache)
    pieces = [np.asarray(logits)]
    for t in range(10, 16):
        logits, cache = step(params, jnp.asarray(TOKENS[:, t : t + 1]), cache=cache)
        pieces.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------------
# Orbax checkpoints


def test_orbax_round_trip_sharded_and_relayout(base_params, tmp_path):
    path = tmp_path / "ckpt"
    save_params(path, base_params, BASE)
    config, restored = restore_params(path)
    assert config == BASE
    jax.tree.map(np.testing.assert_array_equal, restored, base_params)

    mesh = make_mesh((2, 2, 2))
    shardings = param_shardings(BASE, mesh)
    _, restored = restore_params(path, BASE, shardings)
    jax.tree.map(lambda x, s: x.sharding == s or pytest.fail(f"{x.sharding} != {s}"), restored, shardings)
    jax.tree.map(np.testing.assert_array_equal, restored, base_params)
    save_params(tmp_path / "from_sharded", restored, BASE)  # sharded jax.Arrays save too
    jax.tree.map(np.testing.assert_array_equal, restore_params(tmp_path / "from_sharded")[1], base_params)

    scanned = BASE.replace(scan_layers=True, param_dtype="bfloat16")
    config, restored = restore_params(path, scanned)
    assert restored["layers"]["mlp"]["up_proj"]["kernel"].dtype == jnp.bfloat16
    expected = jax.tree.map(lambda x: np.asarray(x).astype(jnp.bfloat16), stack_layers(base_params, BASE))
    jax.tree.map(np.testing.assert_array_equal, restored, expected)


def test_orbax_overwrite_is_atomic(base_params, tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    save_params(path, base_params, BASE)
    newer = jax.tree.map(lambda x: x + 1.0, base_params)
    save_params(path, newer, BASE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    jax.tree.map(np.testing.assert_array_equal, restore_params(path)[1], newer)

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(orbax_io.ocp.StandardCheckpointer, "save", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        save_params(path, base_params, BASE)
    monkeypatch.undo()
    jax.tree.map(np.testing.assert_array_equal, restore_params(path)[1], newer)
    # Interrupted between moving the old checkpoint aside and moving the new one in: the old one is found.
    path.rename(tmp_path / "ckpt.old-save")
    jax.tree.map(np.testing.assert_array_equal, restore_params(path)[1], newer)


def test_orbax_shape_mismatch_is_named(base_params, tmp_path):
    path = tmp_path / "ckpt"
    save_params(path, base_params, BASE)
    with pytest.raises(CheckpointMismatchError, match=r"layers_0/mlp/up_proj/kernel.*\(64, 96\).*\(64, 80\)"):
        restore_params(path, BASE.replace(intermediate_size=80))
    with pytest.raises(CheckpointMismatchError, match=r"lm_head/kernel.*not in the requested"):
        restore_params(path, BASE.replace(tie_embeddings=True))
    with pytest.raises(CheckpointMismatchError, match=r"embedder/embedding.*\(100, 64\).*\(128, 64\)"):
        bad = {**base_params, "embedder": {"embedding": np.zeros((100, 64), np.float32)}}
        save_params(tmp_path / "other", bad, BASE)
