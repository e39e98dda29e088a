"""Size presets: exact parameter counts, checked three independent ways.

For every preset, the count from the model's own parameter shapes (`param_shapes`, via
eval_shape) must equal `ModelConfig.num_params()` (closed form), the count of the
transformers model built from `config_to_hf(preset)` on torch's meta device, and, for the
published models, the total from the model card.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from memtrain_jax.checkpoint.hf import config_from_hf, config_to_hf
from memtrain_jax.config import CONFIGS_DIR, load_config
from memtrain_jax.model.config import ModelConfig
from memtrain_jax.model.transformer import param_shapes
from memtrain_jax.tools.describe import parameter_counts

_spec = importlib.util.spec_from_file_location("memtrain_model_presets", os.path.join(CONFIGS_DIR, "models.py"))
models = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(models)


def _config(name: str) -> ModelConfig:
    return ModelConfig.from_dict(models.get_config(name))


def _hf_meta_count(config: ModelConfig, tmp_path) -> int:
    """Parameters of the transformers model for `config`, instantiated on the meta device (no memory)."""
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(config)))
    hf_config = AutoConfig.from_pretrained(tmp_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    # parameters() yields a tied embedding / lm_head once.
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_param_counts_agree(name, tmp_path):
    config = _config(name)
    from_shapes = sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(param_shapes(config)))
    assert from_shapes == config.num_params()
    assert from_shapes == _hf_meta_count(config, tmp_path)
    if name in models.PUBLISHED_NUM_PARAMS:
        assert from_shapes == models.PUBLISHED_NUM_PARAMS[name]


def test_every_published_model_has_a_preset():
    assert set(models.PUBLISHED_NUM_PARAMS) == set(models.PRESETS) - {"tiny"}


@pytest.mark.parametrize("name", sorted(models.PRESETS))
def test_hf_config_round_trip(name):
    config = _config(name)
    assert config_from_hf(config_to_hf(config)) == config


def test_presets_carry_architecture_details():
    # Values from the models' config.json files that the parameter count cannot see.
    assert dict(_config("llama-3.1-8b").rope_scaling)["factor"] == 8.0
    assert dict(_config("llama-3.2-1b").rope_scaling)["factor"] == 32.0
    assert _config("llama-3.2-1b").rope_theta == 500_000.0
    assert _config("llama-3.2-1b").rms_norm_eps == 1e-5
    assert _config("qwen2.5-0.5b").rope_theta == 1_000_000.0
    assert _config("smollm2-135m").rope_theta == 100_000.0
    assert _config("qwen3-8b").qk_norm and not _config("qwen3-8b").qkv_bias
    assert _config("qwen2.5-3b").qkv_bias and not _config("qwen2.5-3b").qk_norm


def test_non_embedding_counts_match_model_cards():
    # Qwen2.5 model cards: 0.5B -> 0.36B non-embedding, 7B -> 6.53B.
    assert round(parameter_counts(_config("qwen2.5-0.5b"))["non_embedding"] / 1e9, 2) == 0.36
    assert round(parameter_counts(_config("qwen2.5-7b"))["non_embedding"] / 1e9, 2) == 6.53


def test_load_config_and_unknown_preset():
    assert load_config("configs/models.py:tiny").num_layers == models.PRESETS["tiny"]["num_layers"]
    with pytest.raises(ValueError, match=r"'qwen9'.*qwen2\.5-0\.5b"):
        models.get_config("qwen9")
    with pytest.raises(ValueError, match="choose one of"):
        load_config("configs/models.py")


def test_describe_cli_applies_overrides():
    result = subprocess.run(
        [sys.executable, "-m", "memtrain_jax.tools.describe", "--config", "configs/models.py:qwen2.5-0.5b"]
        + ["--config.num_layers=4", "--config.tie_embeddings=False"],
        capture_output=True,
        text=True,
        check=True,
        cwd=os.path.dirname(CONFIGS_DIR),
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    expected = _config("qwen2.5-0.5b").replace(num_layers=4, tie_embeddings=False).num_params()
    assert f"total {expected:,d}" in " ".join(result.stdout.split())
    assert f"{expected * 2:,d}" in result.stdout  # bfloat16 bytes


def test_each_family_owns_its_presets_and_their_block_flags():
    """Presets live in their family's module (model/families/<name>.py): each carries that family's name and its
    block additions (Qwen2's QKV bias, Qwen3's q/k norm), and no preset name is defined twice."""
    from memtrain_jax.model import families
    from memtrain_jax.model.presets import PRESETS

    seen = []
    for name in families.names():
        family = families.get(name)
        for preset, values in family.presets.items():
            assert values["family"] == name, preset
            assert (values["qkv_bias"], values["qk_norm"]) == (family.qkv_bias, family.qk_norm), preset
            seen.append(preset)
        assert set(family.published_num_params) <= set(family.presets)
    assert sorted(seen) == sorted(PRESETS) and len(seen) == len(set(seen))
