"""Low-rank adapters (LoRA, Hu et al. 2021) as a reparameterisation of the trainable kernels.

For every adapted kernel W0 (its axes split into inputs [I] and outputs [O], flattened):

    W = W0 + (alpha / r) * reshape(A @ B),   A: [I, r], B: [r, O]

A starts uniform in +-1/sqrt(I), B at zero, so the policy starts as the base model. The learner differentiates A
and B only; the train state keeps W0 of the adapted kernels (`base`) and writes the merged W into its ordinary
parameters after every optimiser step, so sampling, evaluation, checkpoints and export read plain parameters.
Norm scales and the embeddings do not train under LoRA.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


def input_axes(spec: tuple) -> int:
    """How many leading axes of a kernel with logical axis names `spec` are its inputs: 1 where the model
    dimension comes first (q/k/v, gate/up: [embed, ...]), else all but the last ([heads, head_dim, embed],
    [mlp, embed])."""
    return 1 if spec[0] == "embed" else len(spec) - 1


def adapted_mask(trainable: Any) -> Any:
    """True for the trainable leaves that get adapters: the projection kernels (not norms or embeddings)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, t: bool(t) and getattr(path[-1], "key", None) == "kernel", trainable
    )


def init_adapters(key: jax.Array, mask: Any, shapes: Any, specs: Any, rank: int) -> Any:
    """{"a": [I, r], "b": [r, O]} (float32) for every kernel where `mask` is True, None elsewhere; `shapes` and
    `specs` are the parameters' shapes (or arrays) and logical axis names."""
    leaves, treedef = jax.tree.flatten(mask)
    keys = jax.random.split(key, len(leaves))
    out = []
    for k, adapt, w, spec in zip(
        keys, leaves, treedef.flatten_up_to(shapes), treedef.flatten_up_to(specs), strict=True
    ):
        if not adapt:
            out.append(None)
            continue
        split = input_axes(tuple(spec))
        fan_in, fan_out = math.prod(w.shape[:split]), math.prod(w.shape[split:])
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(k, (fan_in, rank), jnp.float32, -bound, bound)
        out.append({"a": a, "b": jnp.zeros((rank, fan_out), jnp.float32)})
    return jax.tree.unflatten(treedef, out)


def merge_adapters(base: Any, adapters: Any, scale: float) -> Any:
    """W0 + scale * reshape(A @ B) for every kernel of `base` (a tree with None where nothing is adapted), in
    W0's dtype."""

    def one(w, ab):
        delta = (ab["a"] @ ab["b"]).reshape(w.shape)
        return (w.astype(jnp.float32) + scale * delta).astype(w.dtype)

    return jax.tree.map(one, base, adapters)
