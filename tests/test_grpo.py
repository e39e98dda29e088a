"""GRPO loss and update: NumPy references for the loss, KL estimators and aggregations; gradients;
exact micro-batching; the sharded step equals the single-device step; no recompiles."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax.agent.credit import TrainingSequences
from memtrain_jax.model import ModelConfig, init_params, token_logprobs_and_entropy
from memtrain_jax.rl.loss import (
    LossConfig,
    aggregate,
    aggregation_weights,
    clipped_surrogate,
    grpo_token_loss,
    kl_estimate,
)
from memtrain_jax.sharding import make_mesh
from memtrain_jax.train.batching import LengthBuckets, pack
from memtrain_jax.train.learner import Learner, OptimConfig, loss_sums

# ------------------------------------------------------------------------------------ NumPy references


def np_kl(logp, ref, estimator):
    d = ref.astype(np.float64) - logp
    return {"k1": -d, "k2": 0.5 * d**2, "k3": np.exp(d) - d - 1}[estimator]


def np_token_loss(logp, old, ref, adv, clip_low, clip_high, dual, beta, estimator):
    ratio = np.exp(logp.astype(np.float64) - old)
    a = adv[:, None].astype(np.float64)
    loss = np.maximum(-a * ratio, -a * np.clip(ratio, 1 - clip_low, 1 + clip_high))
    if dual:
        loss = np.where(a < 0, np.minimum(loss, -dual * a), loss)
    return loss + beta * np_kl(logp, ref, estimator)


def np_aggregate(per_token, mask, lengths, conversations, mode, constant):
    """The loss of each aggregation, written out directly from its definition."""
    seq_sums = (per_token * mask).sum(1)
    if mode == "token_mean":
        return seq_sums.sum() / mask.sum()
    if mode == "sequence_mean":
        return np.mean(seq_sums / lengths)
    if mode == "trajectory_mean":
        means = [
            seq_sums[conversations == k].sum() / lengths[conversations == k].sum() for k in np.unique(conversations)
        ]
        return np.mean(means)
    return seq_sums.sum() / (constant * len(lengths))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("dual", [0.0, 3.0])
def test_token_loss_matches_numpy(estimator, dual):
    rng = np.random.default_rng(0)
    logp = rng.normal(-2, 1, (6, 9)).astype(np.float32)
    old = (logp + rng.normal(0, 0.4, logp.shape)).astype(np.float32)
    ref = (logp + rng.normal(0, 0.3, logp.shape)).astype(np.float32)
    adv = rng.normal(0, 1, 6).astype(np.float32)
    config = LossConfig(clip_low=0.2, clip_high=0.28, dual_clip=dual, kl_coef=0.05, kl_estimator=estimator)
    ours, diag = grpo_token_loss(jnp.asarray(logp), jnp.asarray(old), jnp.asarray(ref), jnp.asarray(adv), config)
    ref_loss = np_token_loss(logp, old, ref, adv, 0.2, 0.28, dual, 0.05, estimator)
    np.testing.assert_allclose(np.asarray(ours), ref_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(diag["kl"]), np_kl(logp, ref, estimator), rtol=1e-5, atol=1e-6)
    assert np.asarray(diag["clipped"]).any() and not np.asarray(diag["clipped"]).all()


def test_kl_estimators_are_unbiased_where_they_should_be():
    """E_pi[k1] = E_pi[k3] = KL(pi || ref) exactly, computed over a whole categorical distribution."""
    rng = np.random.default_rng(1)
    p = jax.nn.log_softmax(jnp.asarray(rng.normal(size=50)))
    q = jax.nn.log_softmax(jnp.asarray(rng.normal(size=50)))
    exact = float(jnp.sum(jnp.exp(p) * (p - q)))
    for name in ("k1", "k3"):
        assert float(jnp.sum(jnp.exp(p) * kl_estimate(p, q, name))) == pytest.approx(exact, rel=1e-5)
    assert float(jnp.min(kl_estimate(p, q, "k3"))) >= 0.0


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "trajectory_mean", "constant"])
def test_aggregations_match_their_definitions(mode):
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 9, 7)
    mask = (np.arange(9)[None, :] < lengths[:, None]).astype(np.float32)
    per_token = rng.normal(size=(7, 9)).astype(np.float32)
    conversations = np.asarray([0, 0, 0, 1, 2, 2, 3])
    w, c = aggregation_weights(mode, lengths, conversations, constant_length=12)
    ours = float(aggregate(jnp.asarray(per_token), jnp.asarray(mask), jnp.asarray(w, jnp.float32))) / c.sum()
    assert ours == pytest.approx(np_aggregate(per_token, mask, lengths, conversations, mode, 12), rel=1e-5)
    # Any split into micro-batches adds up to the same loss: (sum, count) pairs are exact.
    parts = [slice(0, 2), slice(2, 5), slice(5, 7)]
    sums = [
        float(aggregate(jnp.asarray(per_token[s]), jnp.asarray(mask[s]), jnp.asarray(w[s], jnp.float32))) for s in parts
    ]
    assert sum(sums) / sum(c[s].sum() for s in parts) == pytest.approx(ours, rel=1e-5)


def test_bad_names():
    with pytest.raises(ValueError, match="'k4'"):
        LossConfig(kl_estimator="k4")
    with pytest.raises(ValueError, match="'mean'"):
        LossConfig(aggregation="mean")
    with pytest.raises(ValueError, match="'mean'"):
        aggregation_weights("mean", np.ones(2), np.zeros(2))


def test_clipped_region_has_zero_gradient():
    config = LossConfig(clip_low=0.2, clip_high=0.2)
    old = jnp.zeros((1, 4))
    # ratios 1.5 (A > 0: clipped), 0.5 (A < 0: clipped), 1.1 and 0.9 (inside the range)
    logp = jnp.log(jnp.asarray([[1.5, 0.5, 1.1, 0.9]]))
    for adv, clipped in ((1.0, [True, False, False, False]), (-1.0, [False, True, False, False])):
        grad = jax.grad(lambda lp, a=adv: jnp.sum(clipped_surrogate(lp, old, jnp.asarray([[a]]), config)[0]))(logp)
        assert (np.asarray(grad)[0] == 0).tolist() == clipped


# ------------------------------------------------------------------------------------ the model update

CONFIG = ModelConfig(
    vocab_size=64,
    hidden_size=32,
    intermediate_size=48,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    max_position_embeddings=64,
)


def _sequences(n=8, seed=0) -> TrainingSequences:
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(1, 64, rng.integers(3, 9)).astype(np.int32) for _ in range(n)]
    responses = [rng.integers(1, 64, rng.integers(2, 7)).astype(np.int32) for _ in range(n)]
    return TrainingSequences(
        prompts=prompts,
        responses=responses,
        logprobs=[rng.normal(-3, 0.3, len(r)).astype(np.float32) for r in responses],
        loss_masks=[np.ones(len(r), bool) for r in responses],
        advantages=rng.normal(0, 1, n).astype(np.float32),
        rewards=np.zeros(n, np.float32),
        episode_ids=np.zeros(n, np.int64),
        trajectories=np.arange(n, dtype=np.int32),
        conversations=np.asarray([i // 3 for i in range(n)], np.int32),
        groups=np.zeros(n, np.int32),
        turns=np.zeros(n, np.int32),
        kinds=np.zeros(n, np.int32),
    )


def _learner(mesh_shape=(1, 1, 1), kl=0.0, **loss):
    mesh = make_mesh(mesh_shape, devices=jax.devices()[: int(np.prod(mesh_shape))])
    optim = OptimConfig(learning_rate=1e-2, warmup_steps=0)
    return Learner(
        CONFIG,
        mesh,
        (("batch", ("data", "fsdp")),) + tuple(_rules()),
        optim,
        LossConfig(kl_coef=kl, **loss),
        logprob_chunk=4,
    )


def _rules():
    from memtrain_jax.sharding import DEFAULT_RULES

    return [r for r in DEFAULT_RULES if r[0] != "batch"]


def _micro_batches(seqs, size, mode="sequence_mean"):
    w, c = aggregation_weights(mode, np.asarray([m.sum() for m in seqs.loss_masks]), seqs.conversations)
    return pack(seqs, w, c, LengthBuckets(block=8, max_length=16), size, pad_id=0, window=8)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_ratio_one_gradient_is_reinforce(temperature):
    """With old log-probs equal to the current ones and no KL, d loss_sum = -sum_i w_i A_i sum_t d log pi_T, where
    pi_T = softmax(logits / T) is the rollouts' sampling distribution (the full logits here, not the scoring path)."""
    from memtrain_jax.model.transformer import apply_model, default_positions

    params = init_params(CONFIG, jax.random.key(0))
    seqs = _sequences()
    (mb,) = _micro_batches(seqs, 8)
    window = dict(start=mb.response_start, window=mb.loss_mask.shape[1])
    current, _ = token_logprobs_and_entropy(
        CONFIG, params, mb.tokens, mb.attention_mask, **window, temperature=temperature
    )
    mb = mb.replace(old_logp=np.asarray(current))
    config = LossConfig(kl_coef=0.0)
    grpo = lambda p: loss_sums(p, mb, CONFIG, config, "grpo", 4, False, temperature)[0]
    ours = jax.jit(jax.grad(grpo))(params)
    index = np.asarray(mb.response_start)[:, None] + np.arange(mb.loss_mask.shape[1])[None]  # [B, W] positions

    def reinforce(p):
        mask = jnp.asarray(mb.attention_mask)
        logits, _ = apply_model(CONFIG, p, mb.tokens, default_positions(mask), mask)
        logp_all = jax.nn.log_softmax(logits / temperature)
        inside = index <= mb.tokens.shape[1] - 2
        safe = np.minimum(index, mb.tokens.shape[1] - 2)
        targets = np.take_along_axis(np.asarray(mb.tokens), safe + 1, axis=1)
        logp = jnp.take_along_axis(jnp.take_along_axis(logp_all, safe[..., None], 1), targets[..., None], -1)[..., 0]
        logp = jnp.where(inside, logp, 0.0)
        return -jnp.sum(mb.weights[:, None] * mb.advantages[:, None] * mb.loss_mask * logp)

    ref = jax.jit(jax.grad(reinforce))(params)
    _assert_trees_close(ours, ref, rtol=1e-4)
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(ours)) > 1e-4
    # The Learner scores (old and reference log-probs) at its temperature.
    learner = Learner(
        CONFIG, make_mesh((1, 1, 1), devices=jax.devices()[:1]), tuple(_rules()), OptimConfig(),
        LossConfig(kl_coef=0.0), logprob_chunk=4, temperature=temperature,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(learner.score(params, mb)), np.asarray(current), rtol=0, atol=1e-5)


def _assert_trees_close(a, b, rtol=1e-5):
    """Leaf-wise closeness relative to each leaf's scale (gradients span many magnitudes)."""
    for x, y in zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(y).max()))


@pytest.mark.parametrize("mode", ["token_mean", "sequence_mean", "trajectory_mean"])
def test_micro_batched_gradient_equals_full_batch(mode):
    params = init_params(CONFIG, jax.random.key(1))
    seqs = _sequences(8, seed=3)
    learner = _learner(kl=0.01, aggregation=mode)
    state = learner.init_state(params)
    full, loss_full = learner.gradients(state, _micro_batches(seqs, 8, mode))
    assert len(_micro_batches(seqs, 2, mode)) == 4
    split, loss_split = learner.gradients(state, _micro_batches(seqs, 2, mode))
    _assert_trees_close(full, split)
    assert loss_full == pytest.approx(loss_split, rel=1e-5)
    state, metrics = learner.update(state, _micro_batches(seqs, 2, mode))
    assert int(state.step) == 1 and metrics["loss"] == pytest.approx(loss_full, rel=1e-5)


def test_sharded_step_equals_single_device():
    params = init_params(CONFIG, jax.random.key(2))
    seqs = _sequences(16, seed=4)
    single, sharded = _learner((1, 1, 1), kl=0.01), _learner((2, 2, 2), kl=0.01)
    g_single, loss_single = single.gradients(single.init_state(params), _micro_batches(seqs, 8))
    g_sharded, loss_sharded = sharded.gradients(sharded.init_state(params), _micro_batches(seqs, 8))
    _assert_trees_close(g_single, g_sharded)
    assert loss_single == pytest.approx(loss_sharded, rel=1e-5)
    # The updated state stays laid out as the logical rules say (FSDP / tensor sharding on the mesh).
    state, _ = sharded.update(sharded.init_state(params), _micro_batches(seqs, 8))
    for leaf, expected in zip(jax.tree.leaves(state.params), jax.tree.leaves(sharded.param_shardings), strict=True):
        assert leaf.sharding.is_equivalent_to(expected, leaf.ndim)


def test_no_recompiles_after_warm_up():
    """One program per length bucket: once both buckets (8 and 16) have run, new batches compile nothing."""
    params = init_params(CONFIG, jax.random.key(2))
    learner = _learner((2, 2, 2), kl=0.01)
    state = learner.init_state(params)

    def batches(seed):
        seqs = _sequences(16, seed=seed)
        micro = _micro_batches(seqs, 8)
        short = seqs.select([i for i in range(16) if len(seqs.prompts[i]) + len(seqs.responses[i]) <= 8])
        return micro + (_micro_batches(short, 8) if len(short) else [])

    first = batches(4)
    assert {b.length for b in first} == {8, 16}
    state, _ = learner.update(state, first)
    warm = learner.compile_count
    for seed in (5, 6, 7):
        state, _ = learner.update(state, batches(seed))
    assert learner.compile_count == warm


def test_trainable_layers_update_only_the_top_and_keep_the_full_gradient():
    """With the last layer trainable, its gradient equals that part of the full gradient; the rest never moves."""
    params = init_params(CONFIG, jax.random.key(3))
    seqs = _sequences(8, seed=8)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rules = (("batch", ("data", "fsdp")),) + tuple(_rules())
    optim = OptimConfig(learning_rate=1e-2, warmup_steps=0)
    full = Learner(CONFIG, mesh, rules, optim, LossConfig(kl_coef=0.0), logprob_chunk=4)
    top = Learner(CONFIG, mesh, rules, optim, LossConfig(kl_coef=0.0), logprob_chunk=4, trainable_layers=1)
    g_full, _ = full.gradients(full.init_state(params), _micro_batches(seqs, 8))
    g_top, _ = top.gradients(top.init_state(params), _micro_batches(seqs, 8))
    trained = sorted(k for k in g_top if jax.tree.leaves(g_top[k]))
    assert trained == ["final_norm", "layers_1"]
    _assert_trees_close({k: g_full[k] for k in trained}, {k: g_top[k] for k in trained})
    state, _ = top.update(top.init_state(params), _micro_batches(seqs, 8))
    after = jax.device_get(state.params)
    for name in ("embedder", "layers_0"):
        jax.tree.map(np.testing.assert_array_equal, after[name], jax.device_get(params[name]))
    assert not np.array_equal(
        after["layers_1"]["mlp"]["up_proj"]["kernel"], params["layers_1"]["mlp"]["up_proj"]["kernel"]
    )


# Input axes of each kernel of a layer (LoRA's A x B flattens inputs x outputs), written out per projection.
_LORA_INPUT_AXES = {"q_proj": 1, "k_proj": 1, "v_proj": 1, "o_proj": 2, "gate_proj": 1, "up_proj": 1, "down_proj": 1}


def _np_lora_kernels(base_layer, adapters_layer, scale):
    """{projection: W0 + scale * reshape(A @ B)} of one layer, in float64 NumPy."""
    out = {}
    for block in ("attn", "mlp"):
        for name, ab in adapters_layer[block].items():
            w0 = np.asarray(base_layer[block][name]["kernel"], np.float64)
            delta = np.asarray(ab["kernel"]["a"], np.float64) @ np.asarray(ab["kernel"]["b"], np.float64)
            out[name] = w0 + scale * delta.reshape(w0.shape)
    return out


def test_lora_gradients_are_the_chain_rule_of_the_kernels_gradient():
    """With W = W0 + s A B (s = alpha / r), d loss / dA = s G B^T and d loss / dB = s A^T G, where G is the full
    gradient at W flattened to [inputs, outputs]; only the trainable layer's kernels get factors."""
    params = init_params(CONFIG, jax.random.key(3))
    seqs = _sequences(8, seed=9)
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rules = (("batch", ("data", "fsdp")),) + tuple(_rules())
    optim = OptimConfig(learning_rate=1e-2, warmup_steps=0)
    rank, alpha = 3, 6.0
    lora = Learner(CONFIG, mesh, rules, optim, LossConfig(kl_coef=0.0), logprob_chunk=4, trainable_layers=1,
                   lora_rank=rank, lora_alpha=alpha)  # fmt: skip
    state = lora.init_state(params, key=jax.random.key(4))
    assert sorted(k for k in state.adapters if jax.tree.leaves(state.adapters[k])) == ["layers_1"]
    # B starts at zero (the policy is the base model); make it non-zero so both factors have a gradient.
    rng = np.random.default_rng(5)
    adapters = jax.tree.map(
        lambda x: jnp.asarray(rng.normal(0, 0.3, x.shape), jnp.float32) if x.shape[0] == rank else x,
        state.adapters,
    )
    state = state.replace(adapters=adapters)
    host = jax.device_get(adapters["layers_1"])
    kernels = _np_lora_kernels(jax.device_get(params["layers_1"]), host, alpha / rank)
    merged = jax.device_get(params)
    for block in ("attn", "mlp"):
        for name in merged["layers_1"][block]:
            merged["layers_1"][block][name]["kernel"] = kernels[name].astype(np.float32)
    full = Learner(CONFIG, mesh, rules, optim, LossConfig(kl_coef=0.0), logprob_chunk=4)
    g_full, loss_full = full.gradients(full.init_state(merged), _micro_batches(seqs, 8))
    g_lora, loss_lora = lora.gradients(state, _micro_batches(seqs, 8))
    assert loss_lora == pytest.approx(loss_full, rel=1e-5)
    scale = alpha / rank
    for block in ("attn", "mlp"):
        for name, ab in host[block].items():
            g = np.asarray(g_full["layers_1"][block][name]["kernel"], np.float64)
            split = _LORA_INPUT_AXES[name]
            g = g.reshape(int(np.prod(g.shape[:split])), -1)
            a, b = np.asarray(ab["kernel"]["a"], np.float64), np.asarray(ab["kernel"]["b"], np.float64)
            ours = jax.device_get(g_lora["layers_1"][block][name]["kernel"])
            _assert_trees_close({"a": ours["a"], "b": ours["b"]}, {"a": scale * g @ b.T, "b": scale * a.T @ g}, 1e-4)


def test_a_lora_update_moves_only_the_adapted_kernels_to_their_merged_values():
    """At initialisation the policy is the base model bit for bit; after an update every parameter but the
    trainable layer's kernels is unchanged, and those equal W0 + s A' B' of the updated factors."""
    params = init_params(CONFIG, jax.random.key(3))
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    rules = (("batch", ("data", "fsdp")),) + tuple(_rules())
    optim = OptimConfig(learning_rate=1e-2, warmup_steps=0)
    lora = Learner(CONFIG, mesh, rules, optim, LossConfig(kl_coef=0.0), logprob_chunk=4, trainable_layers=1,
                   lora_rank=2, lora_alpha=4.0)  # fmt: skip
    state = lora.init_state(params, key=jax.random.key(4))
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), jax.device_get(params))
    for seed in (10, 11):  # the second step has B != 0, so A moves too
        state, _ = lora.update(state, _micro_batches(_sequences(8, seed=seed), 8))
    after, before = jax.device_get(state.params), jax.device_get(params)
    for name in ("embedder", "layers_0", "final_norm"):
        jax.tree.map(np.testing.assert_array_equal, after[name], before[name])
    for norm in ("input_norm", "post_attn_norm"):
        np.testing.assert_array_equal(after["layers_1"][norm]["scale"], before["layers_1"][norm]["scale"])
    kernels = _np_lora_kernels(before["layers_1"], jax.device_get(state.adapters["layers_1"]), 2.0)
    for block in ("attn", "mlp"):
        for name, w in after["layers_1"][block].items():
            assert not np.array_equal(w["kernel"], before["layers_1"][block][name]["kernel"])
            np.testing.assert_allclose(w["kernel"], kernels[name], rtol=1e-6, atol=1e-7)


def test_micro_batches_scored_over_the_smallest_window_that_fits_give_the_flat_gradient():
    """Windows (4, 8): a micro-batch whose responses all fit 4 positions is scored over 4 (flat and shared-prompt
    alike), the others over 8, and the loss and gradient equal scoring every micro-batch over 8."""
    from memtrain_jax.train.batching import fit_window, pack_shared, shared_prompt_groups

    seqs = _sequences(12, seed=21)
    for i in range(6):  # six short answers (<= 3 tokens) sharing one prompt in pairs; the rest keep 2-6 tokens
        seqs.prompts[i] = seqs.prompts[i - i % 2]
        seqs.responses[i], seqs.logprobs[i] = seqs.responses[i][:3], seqs.logprobs[i][:3]
        seqs.loss_masks[i] = np.ones(len(seqs.responses[i]), bool)
    params = init_params(CONFIG, jax.random.key(8))
    learner = _learner(kl=0.05)
    w, c = aggregation_weights("token_mean", np.asarray([m.sum() for m in seqs.loss_masks]), seqs.conversations)
    buckets = LengthBuckets(block=8, max_length=16)
    groups = shared_prompt_groups(seqs, np.arange(12), 2)
    rest = [i for i in range(12) if i not in {j for g in groups for j in g}]
    both = pack_shared(seqs, w, c, groups, buckets, 2, 0, (4, 8)) + pack(seqs, w, c, buckets, 3, 0, (8, 4), rest)
    wide = pack(seqs, w, c, buckets, 3, 0, 8)
    assert {mb.loss_mask.shape[1] for mb in both} == {4, 8} and {mb.loss_mask.shape[1] for mb in wide} == {8}
    state = learner.init_state(params)
    g_both, loss_both = learner.gradients(state, both)
    g_wide, loss_wide = learner.gradients(state, wide)
    assert loss_both == pytest.approx(loss_wide, rel=1e-5)
    _assert_trees_close(g_both, g_wide, 1e-4)
    assert fit_window((8, 16), 8) == 8 and fit_window((8, 16), 9) == 16
    with pytest.raises(ValueError, match="17 tokens does not fit the scoring window of 16"):
        fit_window((8, 16), 17)


def test_lora_settings_outside_their_range_are_refused():
    mesh = make_mesh((1, 1, 1), devices=jax.devices()[:1])
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        Learner(CONFIG, mesh, tuple(_rules()), OptimConfig(), LossConfig(), lora_rank=-1)


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (2, 2, 2)])
def test_shared_prompt_micro_batches_give_the_flat_gradient(mesh_shape):
    """Sequences in groups of k that share a prompt, packed as SharedPromptBatches (the prompt computed once) and
    the rest as MicroBatches, give the loss and gradient of packing every sequence flat (with KL on, so the
    reference is scored through the shared path too); a prompt's sequences beyond a multiple of k are left flat."""
    from memtrain_jax.train.batching import pack_shared, shared_prompt_groups

    seqs = _sequences(10, seed=12)
    k = 3
    for i in (1, 2, 4, 5, 6, 7):  # 7 sequences share a prompt: two groups of 3 and one left over; 3 keeps its own
        seqs.prompts[i] = seqs.prompts[0]
    seqs.prompts[8] = seqs.prompts[9]  # a pair: not a group of k
    params = init_params(CONFIG, jax.random.key(6))
    learner = _learner(mesh_shape, kl=0.05)
    w, c = aggregation_weights("sequence_mean", np.asarray([m.sum() for m in seqs.loss_masks]), seqs.conversations)
    buckets = LengthBuckets(block=8, max_length=16)
    groups = shared_prompt_groups(seqs, np.arange(10), k)
    assert groups == [[0, 1, 2], [4, 5, 6]]
    rest = [i for i in range(10) if i not in {0, 1, 2, 4, 5, 6}]
    per_batch = 2 if mesh_shape == (1, 1, 1) else 4  # a multiple of the batch shards: 4 leaves a filler group
    shared = pack_shared(seqs, w, c, groups, buckets, per_batch, 0, 8) + pack(seqs, w, c, buckets, 4, 0, 8, rest)
    flat = pack(seqs, w, c, buckets, 4, 0, 8)
    state = learner.init_state(params)
    g_shared, loss_shared = learner.gradients(state, shared)
    g_flat, loss_flat = learner.gradients(state, flat)
    assert loss_shared == pytest.approx(loss_flat, rel=1e-5)
    _assert_trees_close(g_shared, g_flat, 1e-4)
