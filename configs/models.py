"""Model size presets: `configs/models.py:<preset>` gives a ConfigDict of ModelConfig fields.

The presets themselves live in memtrain_jax/model/presets.py (an installed package needs them without this
checkout). Use with `ModelConfig.from_dict(get_config("qwen2.5-0.5b"))` or on the command line
`--config=configs/models.py:qwen2.5-0.5b --config.num_layers=4`.
"""

from __future__ import annotations

import ml_collections

from memtrain_jax.model.presets import PRESETS, PUBLISHED_NUM_PARAMS, preset_values

__all__ = ["PRESETS", "PUBLISHED_NUM_PARAMS", "get_config"]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ConfigDict of ModelConfig fields for preset `arg` (one of PRESETS)."""
    return ml_collections.ConfigDict(preset_values(arg))
