"""Prints a model config and its parameter counts without allocating the parameters.

    python -m memtrain_jax.tools.describe --config configs/models.py:qwen2.5-7b [--config.num_layers=4]

Counts come from the shapes of the parameter tree (`param_shapes`, i.e. jax.eval_shape), so
they describe exactly what `init_params` or a checkpoint import would create.
"""

from __future__ import annotations

import math
from typing import Any

import jax
from absl import app
from ml_collections import config_flags

from memtrain_jax.model.config import ModelConfig
from memtrain_jax.model.transformer import param_shapes

_CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file (path.py:preset).", lock_config=True)


def _size(tree: Any) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Parameter counts by part: total, embedding, lm_head, per_layer, layers, final_norm, non_embedding.

    `non_embedding` excludes the token embedding and an untied output head (the convention of
    the Qwen and Llama model cards).
    """
    shapes = param_shapes(config)
    embedding = _size(shapes["embedder"])
    lm_head = _size(shapes.get("lm_head", {}))
    if config.scan_layers:
        layers = _size(shapes["layers"])
    else:
        layers = sum(_size(shapes[f"layers_{i}"]) for i in range(config.num_layers))
    total = _size(shapes)
    return {
        "total": total,
        "embedding": embedding,
        "lm_head": lm_head,
        "per_layer": layers // config.num_layers,
        "layers": layers,
        "final_norm": _size(shapes["final_norm"]),
        "non_embedding": total - embedding - lm_head,
    }


def describe(config: ModelConfig) -> str:
    """A human-readable report of `config` and its parameter counts and sizes."""
    counts = parameter_counts(config)
    lines = ["Model config:"]
    lines += [f"  {key}: {value!r}" for key, value in config.to_dict().items()]
    lines.append("Parameters:")
    labels = {
        "total": "total",
        "embedding": "token embedding",
        "lm_head": "lm_head" + (" (tied to the embedding)" if config.tie_embeddings else ""),
        "per_layer": "per layer",
        "layers": f"all {config.num_layers} layers",
        "final_norm": "final norm",
        "non_embedding": "non-embedding",
    }
    for key, label in labels.items():
        lines.append(f"  {label:<34} {counts[key]:>16,d}  ({counts[key] / 1e9:.3f} B)")
    for dtype, nbytes in (("float32", 4), ("bfloat16", 2)):
        size = counts["total"] * nbytes
        lines.append(f"  bytes in {dtype:<25} {size:>16,d}  ({size / 2**30:.2f} GiB)")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("Pass --config=configs/models.py:<preset> (e.g. configs/models.py:qwen2.5-7b).")
    print(describe(ModelConfig.from_dict(_CONFIG.value)))


if __name__ == "__main__":
    app.run(main)
