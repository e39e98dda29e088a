"""The analytic program cost (memtrain_jax/plan/cost.py) against the matmul FLOPs of the traced programs.

The reference counts every dot_general of a program's jaxpr exactly (2 x batch x M x N x K, scans times their
length). XLA's own cost analysis is no reference: it skips custom calls and counts a loop body once."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from memtrain_jax.model import ModelConfig, init_params
from memtrain_jax.model.logprobs import token_logprobs
from memtrain_jax.model.transformer import prefill
from memtrain_jax.plan import cost

MODEL = ModelConfig(
    vocab_size=512, hidden_size=128, intermediate_size=384, num_layers=2, num_heads=4, num_kv_heads=2,
    head_dim=32, attention="reference", max_position_embeddings=512,
)  # fmt: skip


def _dot_flops(jaxpr) -> float:
    """2 x (product of the output dims) x (product of the contracted dims) over every dot_general."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        elif eqn.primitive.name == "while":
            raise AssertionError("a while loop: its trip count is not in the jaxpr")
        times = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    sub = sub.jaxpr
                if isinstance(sub, jax.extend.core.Jaxpr):
                    total += times * _dot_flops(sub)
    return total


def _traced_flops(fn, *args) -> float:
    return _dot_flops(jax.make_jaxpr(fn)(*args).jaxpr)


@pytest.fixture(scope="module")
def params():
    return init_params(MODEL, jax.random.key(0))


@pytest.mark.parametrize(("rows", "prompt"), [(2, 16), (3, 48)])
def test_prefill_flops_are_the_traced_matmuls(params, rows, prompt):
    tokens = jnp.zeros((rows, prompt), jnp.int32)
    traced = _traced_flops(lambda p, t: prefill(MODEL, p, t, last_only=True), params, tokens)
    # the reference backend computes the masked half of the scores too: the full square
    assert cost.prefill_cost(MODEL, rows, prompt, causal=False).flops == pytest.approx(traced, rel=1e-9)
    full, causal = cost.prefill_cost(MODEL, rows, prompt, causal=False), cost.prefill_cost(MODEL, rows, prompt)
    # the causal triangle saves the upper half of the scores of every layer but the last (one query there)
    expected = cost.attention_flops(MODEL, rows * (prompt * prompt - prompt * (prompt + 1) / 2), MODEL.num_layers - 1)
    assert full.flops - causal.flops == pytest.approx(expected)


@pytest.mark.parametrize("remat", ["none", "dots"])
def test_train_flops_are_the_traced_forward_and_backward(params, remat):
    rows, length = 2, 32
    model = dataclasses.replace(MODEL, remat=remat)
    tokens = jnp.ones((rows, length), jnp.int32)

    def loss(p):
        return token_logprobs(model, p, tokens, chunk_size=length).sum()

    traced = _traced_flops(jax.grad(loss), params)
    # token_logprobs scores length - 1 positions; the backward pass of the embedding lookup is no matmul
    expected = cost.train_cost(model, rows, length, scored=length - 1, causal=False).flops
    assert expected == pytest.approx(traced, rel=1e-9)


def test_decode_counts_every_step_of_its_loop():
    rows, prompt, new = 4, 40, 9
    step = lambda t: cost.decode_cost(MODEL, rows, prompt + t, 1)
    total = cost.decode_cost(MODEL, rows, prompt, new)
    assert total.flops == pytest.approx(sum(step(t).flops for t in range(new)))
    assert total.bytes == pytest.approx(sum(step(t).bytes for t in range(new)))
    # a step reads every weight once, and the cache of the positions before it
    assert step(0).weights == cost.weight_bytes(MODEL) and step(0).state == rows * prompt * cost.kv_bytes_per_token(
        MODEL
    )


def test_roofline_and_model_flops():
    c = cost.Cost(flops=4e12, weights=6e8, state=4e8)
    assert c.seconds(peak_flops=1e12, bandwidth=1e12) == 4.0  # compute-bound
    assert c.seconds(peak_flops=1e15, bandwidth=1e11) == 0.01  # bandwidth-bound
    assert (c + c * 2).flops == 12e12 and (c + c * 2).bytes == 3e9
    chip = c.per_chip(8, weight_shards=2)  # the rows split 8 ways, every weight 2 ways (tensor parallel)
    assert (chip.flops, chip.weights, chip.state) == (5e11, 3e8, 5e7)
    tokens = 1000
    all_layers = cost.model_flops(MODEL, tokens)
    assert all_layers == pytest.approx(3 * tokens * (cost.matmul_flops_per_token(MODEL) + 2 * 128 * 512))
    top = cost.model_flops(MODEL, tokens, trainable_layers=1)
    one = cost.matmul_flops_per_token(MODEL, 1)
    assert all_layers - top == pytest.approx(tokens * 2 * one)  # the frozen layer: forward only
    assert np.isfinite(cost.apply_cost(MODEL).seconds(1e12, 1e12))
