"""token_logprobs: equal to the log-softmax of the full forward, its gradient, and the sampler's log-probs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import memtrain_jax
from memtrain_jax.model import ModelConfig, forward, init_params, token_logprobs_and_entropy
from memtrain_jax.sampler import Sampler
from memtrain_jax.sharding import make_mesh

CONFIG = ModelConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=128,
)


@pytest.fixture(scope="module")
def params():
    # Larger embeddings than init: peaked distributions make the comparison meaningful.
    p = init_params(CONFIG, jax.random.key(3))
    p["embedder"]["embedding"] = p["embedder"]["embedding"] * 3.0
    return p


def _reference(params, tokens, mask, temperature=1.0):
    """log_softmax(forward / temperature) at the next token, and the entropy, in float64 NumPy; 0 where either token
    is padding."""
    logits = np.asarray(forward(CONFIG, params, tokens, attention_mask=mask), np.float64)[:, :-1] / temperature
    logits = logits - logits.max(-1, keepdims=True)
    logp_all = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.take_along_axis(logp_all, np.asarray(tokens)[:, 1:, None], -1)[..., 0]
    entropy = -(np.exp(logp_all) * logp_all).sum(-1)
    valid = mask[:, :-1] & mask[:, 1:]
    return np.where(valid, target, 0.0), np.where(valid, entropy, 0.0)


def _left_padded(rng, lengths, width):
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for i, n in enumerate(lengths):
        tokens[i, width - n :] = rng.integers(1, CONFIG.vocab_size, n)
        mask[i, width - n :] = True
    return tokens, mask


@pytest.mark.parametrize("chunk_size, temperature", [(1, 1.0), (4, 1.0), (7, 1.0), (64, 1.0), (4, 0.7), (64, 1.6)])
def test_equals_log_softmax_of_forward(params, chunk_size, temperature):
    tokens, mask = _left_padded(np.random.default_rng(0), [19, 12, 2], 19)
    static = ("chunk_size", "temperature")
    logp, entropy = jax.jit(token_logprobs_and_entropy, static_argnums=0, static_argnames=static)(
        CONFIG, params, tokens, mask, chunk_size=chunk_size, temperature=temperature
    )
    ref_logp, ref_entropy = _reference(params, tokens, mask, temperature)
    assert np.abs(ref_logp).max() > 1.0
    np.testing.assert_allclose(np.asarray(logp), ref_logp, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(entropy), ref_entropy, rtol=0, atol=1e-5)
    public = memtrain_jax.token_logprobs(CONFIG, params, tokens, mask)
    assert public.shape == (3, 18) and public.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(public), _reference(params, tokens, mask)[0], rtol=0, atol=1e-5)


def test_gradient_equals_gradient_through_full_logits(params):
    tokens, mask = _left_padded(np.random.default_rng(1), [16, 9], 16)
    weights = jnp.asarray(np.random.default_rng(2).standard_normal((2, 15)), jnp.float32)

    def chunked(p):
        return jnp.sum(token_logprobs_and_entropy(CONFIG, p, tokens, mask, chunk_size=4)[0] * weights)

    def full(p):
        from memtrain_jax.model.transformer import apply_model, default_positions

        logits, _ = apply_model(CONFIG, p, tokens, default_positions(jnp.asarray(mask)), jnp.asarray(mask))
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), tokens[:, 1:, None], -1)[..., 0]
        return jnp.sum(jnp.where(mask[:, :-1] & mask[:, 1:], logp, 0.0) * weights)

    ours, ref = jax.grad(chunked)(params), jax.grad(full)(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5), ours, ref)


@pytest.mark.parametrize("mesh_shape, temperature", [(None, 1.0), ((2, 2, 2), 1.0), (None, 0.7)])
def test_sampler_logprobs_equal_teacher_forcing(params, mesh_shape, temperature):
    """The sampler's log-probs are those of the distribution it drew from, softmax(logits / T): the teacher-forced
    log-probs of prompt + completion at the same temperature (what GRPO's first update scores, ratio 1)."""
    mesh = make_mesh(mesh_shape) if mesh_shape else None
    sampler = Sampler(CONFIG, mesh)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(1, CONFIG.vocab_size, n).tolist() for n in (5, 11, 3)]
    out = sampler(params, prompts, max_new_tokens=[9, 6, 12], temperature=temperature, seed=7)
    for i, prompt in enumerate(prompts):
        n = int(out.lengths[i])
        seq = np.asarray([prompt + out.tokens[i, :n].tolist()], np.int32)
        logp, _ = token_logprobs_and_entropy(CONFIG, params, seq, temperature=temperature)
        np.testing.assert_allclose(out.logprobs[i, :n], np.asarray(logp)[0, len(prompt) - 1 :], rtol=0, atol=1e-5)


def _shared_prompt_batch(rng, prompt_lengths, response_lengths, width_p, width_s):
    """Prompts [G] and k responses each as the shared-prompt inputs, and the same as whole right-padded sequences."""
    g, k = len(prompt_lengths), len(response_lengths[0])
    prefix = np.zeros((g, width_p), np.int32)
    prefix_mask = np.zeros((g, width_p), bool)
    suffix = np.zeros((g * k, width_s), np.int32)
    suffix_mask = np.zeros((g * k, width_s), bool)
    whole = np.zeros((g * k, width_p + width_s), np.int32)
    whole_mask = np.zeros((g * k, width_p + width_s), bool)
    for i, p in enumerate(prompt_lengths):
        prompt = rng.integers(1, CONFIG.vocab_size, p)
        prefix[i, : p - 1], prefix_mask[i, : p - 1] = prompt[:-1], True
        for j, r in enumerate(response_lengths[i]):
            row, response = i * k + j, rng.integers(1, CONFIG.vocab_size, r)
            suffix[row, : r + 1], suffix_mask[row, : r + 1] = np.concatenate([prompt[-1:], response]), True
            whole[row, : p + r], whole_mask[row, : p + r] = np.concatenate([prompt, response]), True
    return (prefix, prefix_mask, suffix, suffix_mask), (whole, whole_mask)


@pytest.mark.parametrize("scan", [False, True])
def test_shared_prompt_scoring_equals_scoring_each_sequence(params, scan):
    """k responses scored against a prompt computed once == each prompt + response scored as one sequence (values
    and the gradient), with prompts and responses of different lengths and padding in both."""
    import dataclasses

    from memtrain_jax.model import stack_layers
    from memtrain_jax.model.logprobs import shared_prompt_logprobs_and_entropy

    config = dataclasses.replace(CONFIG, scan_layers=scan)
    p = stack_layers(params, CONFIG) if scan else params
    shared, (whole, whole_mask) = _shared_prompt_batch(np.random.default_rng(4), [9, 14], [[3, 5, 1], [6, 2, 4]], 16, 8)
    prefix, prefix_mask, suffix, suffix_mask = shared
    starts = np.asarray([9 - 1] * 3 + [14 - 1] * 3, np.int32)  # the position scoring each row's first response token

    def grouped(p_):
        return shared_prompt_logprobs_and_entropy(config, p_, prefix, prefix_mask, suffix, suffix_mask, chunk_size=4,
                                                  temperature=0.7)  # fmt: skip

    def flat(p_):
        return token_logprobs_and_entropy(config, p_, whole, whole_mask, chunk_size=4, start=starts, window=7,
                                          temperature=0.7)  # fmt: skip

    (logp, entropy), (ref_logp, ref_entropy) = jax.jit(grouped)(p), jax.jit(flat)(p)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(ref_logp), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(entropy), np.asarray(ref_entropy), rtol=1e-5, atol=1e-5)
    assert np.count_nonzero(np.asarray(ref_logp)) == 3 + 5 + 1 + 6 + 2 + 4  # every response token is scored
    weights = jnp.asarray(np.random.default_rng(5).normal(size=ref_logp.shape), jnp.float32)
    g_grouped = jax.jit(jax.grad(lambda p_: jnp.sum(grouped(p_)[0] * weights)))(p)
    g_flat = jax.jit(jax.grad(lambda p_: jnp.sum(flat(p_)[0] * weights)))(p)
    for a, b in zip(jax.tree.leaves(g_grouped), jax.tree.leaves(g_flat), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
