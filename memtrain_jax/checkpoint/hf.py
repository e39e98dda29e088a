"""Hugging Face checkpoints (config.json + safetensors) to and from ModelConfig and the parameter tree.

Supported architectures: those of the registered model families (memtrain_jax/model/families/: Llama,
Qwen2 with QKV bias, Qwen3 with q/k RMSNorm); this module is a loop over the families' weight map
(`families.tensors`), which owns every tensor's name and layout. Torch Linear weights W [out, in] become
kernels W.T reshaped to the contract's layout; biases and norm scales are reshaped or copied. Tensors are read
one at a time through safetensors' memory map, so host memory holds the converted tree (or, with
`shardings`, one tensor at a time) rather than a second copy of the checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from memtrain_jax.model import families
from memtrain_jax.model.config import DTYPES, ModelConfig
from memtrain_jax.model.families import Tensor

Params = dict[str, Any]

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000  # Hugging Face's customary "5GB" shards.

SUPPORTED_ROPE_TYPES = ("default", "llama3")

# Buffers some exporters write that carry no learned state (recomputed from the config).
_IGNORABLE_TENSORS = re.compile(r"(^|\.)rotary_emb\.(inv_freq|original_inv_freq)$")
_SHARD_FILE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$")


class HFCheckpointError(ValueError):
    """A Hugging Face checkpoint directory that cannot be read into (or written from) the model."""


# ----------------------------------------------------------------------------------------------
# config.json <-> ModelConfig


def _family(hf_config: Mapping[str, Any], source: str) -> families.Family:
    """The registered family of a config.json: by `architectures[0]`, else by `model_type`."""
    supported = sorted(families.hf_architectures())
    archs = hf_config.get("architectures") or []
    if archs:
        family = families.by_hf_architecture(archs[0])
        if family is None:
            raise HFCheckpointError(
                f"{source}: architectures={archs!r} is not supported; supported architectures are {supported}."
            )
        return family
    if hf_config.get("model_type") in families.names():
        return families.get(hf_config["model_type"])
    raise HFCheckpointError(
        f"{source}: no 'architectures' entry (model_type={hf_config.get('model_type')!r}); "
        f"supported architectures are {supported}."
    )


def _rope_from_hf(hf_config: Mapping[str, Any], source: str) -> tuple[float, tuple[tuple[str, float], ...] | None]:
    """(rope_theta, llama3 scaling or None) from transformers-5 `rope_parameters` or legacy `rope_scaling`."""
    params = hf_config.get("rope_parameters")
    if params is None:
        params = hf_config.get("rope_scaling") or {}
    params = dict(params)
    if any(isinstance(v, Mapping) for v in params.values()):
        raise HFCheckpointError(f"{source}: per-layer-type rope_parameters {params!r} are not supported.")
    theta = float(params.get("rope_theta", hf_config.get("rope_theta", 10000.0)))
    partial = float(params.get("partial_rotary_factor", hf_config.get("partial_rotary_factor", 1.0)))
    if partial != 1.0:
        raise HFCheckpointError(f"{source}: partial_rotary_factor={partial} is not supported (only 1.0).")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return theta, None
    if rope_type != "llama3":
        raise HFCheckpointError(
            f"{source}: rope type {rope_type!r} is not supported; supported rope types are {SUPPORTED_ROPE_TYPES}."
        )
    params.setdefault("original_max_position_embeddings", hf_config.get("max_position_embeddings"))
    keys = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    missing = [k for k in keys if params.get(k) is None]
    if missing:
        raise HFCheckpointError(f"{source}: llama3 rope scaling is missing {missing} in {params!r}.")
    return theta, tuple(sorted((k, float(params[k])) for k in keys))


def config_from_hf(hf_config: Mapping[str, Any], source: str = CONFIG_FILE) -> ModelConfig:
    """ModelConfig for a Hugging Face config.json dict (Llama, Qwen2/2.5, Qwen3).

    `source` names the file in error messages. Features this model does not implement (biased
    o_proj / MLP, sliding-window layers, non-SiLU activations, other RoPE types) are errors rather
    than silently producing a different network.
    """
    family = _family(hf_config, source)
    arch = family.hf_architecture

    def required(key: str) -> int:
        if hf_config.get(key) is None:
            raise HFCheckpointError(f"{source}: {arch} config lacks required field {key!r}.")
        return int(hf_config[key])

    hidden, heads = required("hidden_size"), required("num_attention_heads")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise HFCheckpointError(f"{source}: hidden_act={hf_config['hidden_act']!r} is not supported (only 'silu').")
    if hf_config.get("mlp_bias"):
        raise HFCheckpointError(f"{source}: mlp_bias=true is not supported (this model's MLP has no biases).")
    if hf_config.get("attention_bias"):
        raise HFCheckpointError(
            f"{source}: attention_bias=true for {arch} also puts a bias on o_proj, which this model does not have."
        )
    sliding = [t for t in hf_config.get("layer_types") or [] if t != "full_attention"]
    if hf_config.get("use_sliding_window") or sliding:
        raise HFCheckpointError(
            f"{source}: sliding-window attention (use_sliding_window={hf_config.get('use_sliding_window')!r}, "
            f"layer types {sorted(set(sliding))}) is not supported; only full attention."
        )
    theta, scaling = _rope_from_hf(hf_config, source)
    values: dict[str, Any] = dict(
        vocab_size=required("vocab_size"),
        hidden_size=hidden,
        intermediate_size=required("intermediate_size"),
        num_layers=required("num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=int(hf_config.get("num_key_value_heads") or heads),
        head_dim=int(hf_config.get("head_dim") or hidden // heads),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=float(hf_config.get("rms_norm_eps", 1e-6)),
        qkv_bias=family.qkv_bias,
        qk_norm=family.qk_norm,
        # All three model classes default to untied embeddings when config.json does not say.
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", False)),
        family=family.name,
    )
    if hf_config.get("max_position_embeddings") is not None:
        values["max_position_embeddings"] = int(hf_config["max_position_embeddings"])
    return ModelConfig(**values)


def _check_exportable(config: ModelConfig) -> families.Family:
    family = families.get(config.family)
    expected = (family.qkv_bias, family.qk_norm)
    if (config.qkv_bias, config.qk_norm) != expected:
        choices = ", ".join(
            f"{name!r} (qkv_bias={families.get(name).qkv_bias}, qk_norm={families.get(name).qk_norm})"
            for name in families.names()
        )
        raise HFCheckpointError(
            f"ModelConfig(family={config.family!r}, qkv_bias={config.qkv_bias}, qk_norm={config.qk_norm}) has no "
            f"Hugging Face equivalent: {family.hf_architecture} needs qkv_bias={expected[0]}, "
            f"qk_norm={expected[1]}. Set family to one of {choices}."
        )
    return family


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
    """A config.json dict that transformers loads as the equivalent LlamaForCausalLM / Qwen2 / Qwen3 model.

    RoPE is written both as transformers-5 `rope_parameters` and as the older `rope_theta` /
    `rope_scaling` fields, so readers built on either convention agree.
    """
    family = _check_exportable(config)
    rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": config.rope_theta}
    rope_scaling = None
    if config.rope_scaling is not None:
        scaling: dict[str, Any] = dict(config.rope_scaling)
        scaling["original_max_position_embeddings"] = int(scaling["original_max_position_embeddings"])
        rope_scaling = {"rope_type": "llama3", **scaling}
        rope_parameters = {**rope_scaling, "rope_theta": config.rope_theta}
    hf: dict[str, Any] = {
        "architectures": [family.hf_architecture],
        "model_type": config.family,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "tie_word_embeddings": config.tie_embeddings,
        "rope_theta": config.rope_theta,
        "rope_scaling": rope_scaling,
        "rope_parameters": rope_parameters,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "use_cache": True,
        "dtype": config.param_dtype,
    }
    hf.update(family.hf_extras(config))
    return hf


# ----------------------------------------------------------------------------------------------
# Parameter-tree paths (the weight map itself is families.tensors)


def _get(tree: Mapping[str, Any], path: tuple[str, ...], what: str) -> Any:
    node: Any = tree
    for i, key in enumerate(path):
        if not isinstance(node, Mapping) or key not in node:
            raise HFCheckpointError(f"{what} has no entry {'/'.join(path[: i + 1])!r} (needed for {'/'.join(path)}).")
        node = node[key]
    return node


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


# ----------------------------------------------------------------------------------------------
# Loading


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise HFCheckpointError(f"{path} not found: a Hugging Face checkpoint directory needs this file.") from None
    except json.JSONDecodeError as e:
        raise HFCheckpointError(f"{path} is not valid JSON: {e}") from None


def _tensor_files(directory: str) -> tuple[dict[str, str], str]:
    """Maps tensor name -> safetensors file (absolute path); also returns what listed them (for errors)."""
    index_path = os.path.join(directory, INDEX_FILE)
    single_path = os.path.join(directory, SINGLE_FILE)
    if os.path.exists(index_path):
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFCheckpointError(f"{index_path} has no 'weight_map' of tensor name -> shard file.")
        missing = sorted({f for f in weight_map.values() if not os.path.isfile(os.path.join(directory, f))})
        if missing:
            raise HFCheckpointError(
                f"{index_path} lists shard file(s) {missing} that are missing from {directory}; "
                "download the complete checkpoint."
            )
        return {name: os.path.join(directory, f) for name, f in weight_map.items()}, index_path
    if os.path.isfile(single_path):
        files = [single_path]
    else:
        files = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))
        if not files:
            raise HFCheckpointError(
                f"{directory} holds neither {SINGLE_FILE}, {INDEX_FILE} nor any *.safetensors file "
                "(PyTorch .bin checkpoints are not read; re-save with safe_serialization=True)."
            )
    locations: dict[str, str] = {}
    for file in files:
        with safe_open(file, framework="np") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open handles are not iterable)
                if name in locations:
                    raise HFCheckpointError(f"Tensor {name!r} appears in both {locations[name]} and {file}.")
                locations[name] = file
    return locations, directory


def _place(x: np.ndarray, sharding: jax.sharding.Sharding | None) -> Any:
    if sharding is None:
        return x
    # Every process reads the same file, so each device's shard is cut from the host copy (works multi-host).
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def load_hf_checkpoint(
    path: str | os.PathLike,
    dtype: str = "float32",
    *,
    shardings: Params | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[ModelConfig, Params]:
    """Reads a Hugging Face checkpoint directory into (ModelConfig, params).

    `dtype` is the parameter (and compute) dtype; `overrides` replaces further ModelConfig fields
    (e.g. {"scan_layers": True, "dtype": "bfloat16", "remat": "full"}); with scan_layers the layers
    are stacked as `stack_layers` does. Without `shardings` the leaves are host numpy arrays; with
    `shardings` (a tree like `param_shardings(config, mesh)`) each leaf is placed as it is read.
    Errors name the file or tensor at fault: a shard listed in the index but missing, a tensor
    with the wrong shape (expected vs got), missing tensors, or unexpected extra tensors.
    """
    directory = os.fspath(path)
    config_path = os.path.join(directory, CONFIG_FILE)
    config = config_from_hf(_read_json(config_path), source=config_path)
    # `overrides` may name the compute dtype too (a run's choice): it wins over `dtype`.
    config = config.replace(**{"param_dtype": dtype, "dtype": dtype, **dict(overrides or {})})
    entries = families.tensors(config)
    locations, listed_by = _tensor_files(directory)
    target = np.dtype(DTYPES[config.param_dtype])

    with contextlib.ExitStack() as stack:
        handles = {f: stack.enter_context(safe_open(f, framework="np")) for f in sorted(set(locations.values()))}
        names_in = {f: set(h.keys()) for f, h in handles.items()}
        for name, file in locations.items():
            if name not in names_in[file]:
                raise HFCheckpointError(f"{listed_by} places tensor {name!r} in {file}, but that file lacks it.")

        expected = {e.hf_name for e in entries}
        missing = [e.hf_name for e in entries if e.hf_name not in locations]
        if missing:
            raise HFCheckpointError(
                f"{len(missing)} tensor(s) required by {config_path} are missing from {listed_by}: "
                f"{missing[:8]}{' ...' if len(missing) > 8 else ''}."
            )
        ignorable = {n for n in locations if _IGNORABLE_TENSORS.search(n)}
        if config.tie_embeddings:
            ignorable.add("lm_head.weight")
        extra = sorted(set(locations) - expected - ignorable)
        if extra:
            raise HFCheckpointError(
                f"{listed_by} holds {len(extra)} tensor(s) that {config_path} does not account for: "
                f"{extra[:8]}{' ...' if len(extra) > 8 else ''}. Is config.json from a different model?"
            )
        for e in entries:
            got = tuple(handles[locations[e.hf_name]].get_slice(e.hf_name).get_shape())
            if got != e.hf_shape:
                raise HFCheckpointError(
                    f"Tensor {e.hf_name!r} in {locations[e.hf_name]} has shape {got}, expected {e.hf_shape} "
                    f"from {config_path}."
                )

        def read(entry: Tensor) -> np.ndarray:
            return entry.to_ours(handles[locations[entry.hf_name]].get_tensor(entry.hf_name)).astype(target, copy=False)

        if config.tie_embeddings and "lm_head.weight" in locations:
            embed = handles[locations["model.embed_tokens.weight"]].get_tensor("model.embed_tokens.weight")
            head = handles[locations["lm_head.weight"]].get_tensor("lm_head.weight")
            if head.shape != embed.shape or not np.array_equal(head, embed):
                raise HFCheckpointError(
                    f"{config_path} says tie_word_embeddings=true but lm_head.weight in {locations['lm_head.weight']} "
                    "differs from model.embed_tokens.weight; fix tie_word_embeddings in config.json."
                )
        params = _build_tree(config, entries, read, shardings)
    return config, params


def _build_tree(
    config: ModelConfig,
    entries: list[Tensor],
    read: Callable[[Tensor], np.ndarray],
    shardings: Params | None,
) -> Params:
    def sharding_at(path: tuple[str, ...]):
        return None if shardings is None else _get(shardings, path, "shardings")

    params: Params = {}
    if not config.scan_layers:
        for e in entries:
            _set(params, e.path, _place(read(e), sharding_at(e.path)))
        return params
    per_layer: dict[tuple[str, ...], list[Tensor]] = {}
    for e in entries:
        if e.layer is None:
            _set(params, e.path, _place(read(e), sharding_at(e.path)))
        else:
            per_layer.setdefault(e.scanned_path, []).append(e)
    for path, layer_entries in per_layer.items():
        stacked = np.stack([read(e) for e in sorted(layer_entries, key=lambda e: e.layer)])
        _set(params, path, _place(stacked, sharding_at(path)))
    return params


# ----------------------------------------------------------------------------------------------
# Saving


def _to_host(x: Any) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)


def save_hf_checkpoint(
    config: ModelConfig,
    params: Params,
    path: str | os.PathLike,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
) -> list[str]:
    """Writes config.json and safetensors weights that `transformers` `from_pretrained` loads.

    params: the contract tree (stacked when config.scan_layers), numpy or jax arrays, written in
    their own dtype. Weights larger than `max_shard_bytes` are split into
    model-0000i-of-0000n.safetensors shards with model.safetensors.index.json. Files are written to
    a temporary directory and moved into `path` only when complete; stale weight files of an
    earlier save in `path` are removed, other files (tokenizer, ...) are kept. Every process must
    call this with its shards of `params`; process 0 writes. Returns the weight file names.
    """
    hf_config = config_to_hf(config)
    entries = families.tensors(config)
    tree_path = (lambda e: e.scanned_path) if config.scan_layers else (lambda e: e.path)
    for e in entries:
        leaf = _get(params, tree_path(e), "params")
        shape = tuple(leaf.shape[1:] if e.layer is not None and config.scan_layers else leaf.shape)
        if shape != e.shape:
            raise HFCheckpointError(
                f"params/{'/'.join(tree_path(e))} has shape {shape}, but the config needs {e.shape} (for {e.hf_name})."
            )
    embed_dtype = np.dtype(_get(params, ("embedder", "embedding"), "params").dtype)
    hf_config["dtype"] = embed_dtype.name

    def leaf_for(e: Tensor) -> Any:
        leaf = _get(params, tree_path(e), "params")
        return leaf[e.layer] if e.layer is not None and config.scan_layers else leaf

    # Plan shards from sizes alone so only one shard's tensors are on the host at a time.
    shards: list[list[Tensor]] = [[]]
    shard_bytes = 0
    total = 0
    for e in entries:
        nbytes = int(np.prod(e.hf_shape)) * np.dtype(leaf_for(e).dtype).itemsize
        total += nbytes
        if shards[-1] and shard_bytes + nbytes > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(e)
        shard_bytes += nbytes
    names = (
        [SINGLE_FILE]
        if len(shards) == 1
        else [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    )

    directory = os.fspath(path)
    writer = jax.process_index() == 0
    tmp = None
    if writer:
        os.makedirs(directory, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".hf-save-", dir=directory)
    try:
        for name, shard in zip(names, shards, strict=True):
            tensors = {e.hf_name: e.to_hf(_to_host(leaf_for(e))) for e in shard}
            if writer:
                save_file(tensors, os.path.join(tmp, name), metadata={"format": "pt"})
            del tensors
        if not writer:
            return names
        written = list(names)
        if len(names) > 1:
            weight_map = {e.hf_name: name for name, shard in zip(names, shards, strict=True) for e in shard}
            with open(os.path.join(tmp, INDEX_FILE), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
            written.append(INDEX_FILE)
        for name in written:
            os.replace(os.path.join(tmp, name), os.path.join(directory, name))
        for name in os.listdir(directory):
            if (_SHARD_FILE.match(name) or name == INDEX_FILE) and name not in written:
                os.remove(os.path.join(directory, name))
        # config.json last: a reader never pairs a new config with old weights.
        with open(os.path.join(tmp, CONFIG_FILE), "w") as f:
            json.dump(hf_config, f, indent=2, sort_keys=True)
        os.replace(os.path.join(tmp, CONFIG_FILE), os.path.join(directory, CONFIG_FILE))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return names
