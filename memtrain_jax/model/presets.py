"""Model size presets: ModelConfig fields of each supported checkpoint, by name.

Each family module (`model/families/<family>.py`) defines its presets, copied from each model's Hugging Face
`config.json` (vocab, widths, depth, heads, head_dim, RoPE theta and scaling, tied embeddings, RMSNorm epsilon,
QKV bias / QK norm, context length); this module gathers them by name. `tiny` is a CPU test model.
They live in the package (not in the checkout's configs/, whose models.py only wraps them) so that an installed
memtrain_jax builds a preset anywhere: `ModelConfig.from_dict(preset_values("qwen2.5-0.5b"))`.
"""

from __future__ import annotations

from typing import Any

from memtrain_jax.config import UsageError
from memtrain_jax.model import families

# name -> ModelConfig fields (architecture only; dtype / scan / remat keep the ModelConfig defaults), gathered
# from the family modules (memtrain_jax/model/families/<family>.py), where each preset is defined.
PRESETS: dict[str, dict[str, Any]] = {
    preset: dict(values) for family in families.names() for preset, values in families.get(family).presets.items()
}

# Published total parameter counts (model cards / safetensors metadata), for tests and `describe`.
PUBLISHED_NUM_PARAMS: dict[str, int] = {
    preset: count for family in families.names() for preset, count in families.get(family).published_num_params.items()
}


def preset_values(name: str | None) -> dict[str, Any]:
    """The ModelConfig fields of preset `name` (a fresh dict; one of PRESETS)."""
    if not name or name not in PRESETS:
        raise UsageError(
            f"Unknown model preset {name!r}; choose one of {sorted(PRESETS)} (e.g. configs/models.py:qwen2.5-0.5b)."
        )
    values = dict(PRESETS[name])
    if isinstance(values.get("rope_scaling"), dict):
        values["rope_scaling"] = dict(values["rope_scaling"])
    return values
