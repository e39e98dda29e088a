"""GGUF import: a GGUF file of a registered model family (llama, qwen2, qwen3; memtrain_jax/model/families/)
-> (ModelConfig, float32 params, tokenizer, chat format name).

Weights are dequantised with the `gguf` package (numpy) and mapped into the parameter tree of
memtrain_jax.model by the families' weight map (`families.tensors`, shared with the HF importer). For the
families whose llama.cpp converter permutes the q/k projection rows for its interleaved RoPE (Llama), they are
permuted back to the HF rotate_half layout the model uses (the same reverse permutation as transformers' GGUF
loader); Qwen2/Qwen3 files keep HF's order. The tokenizer is rebuilt from the metadata as
transformers' GGUF converter does (byte-level BPE for `tokenizer.ggml.model == "gpt2"`).

`import_gguf_cached` converts once and keeps an Orbax checkpoint + tokenizer + config on disk.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from memtrain_jax import sharding
from memtrain_jax.atomic import content_key, write_directory_atomically
from memtrain_jax.model import families
from memtrain_jax.model.config import ModelConfig
from memtrain_jax.tokenizer.chat import chat_format_from_template
from memtrain_jax.tokenizer.gguf_tokenizer import (  # noqa: F401  (default_gguf_path, load_gguf_tokenizer: API)
    check_gguf_path,
    default_gguf_path,
    gguf_field,
    load_gguf_tokenizer,
    open_gguf,
    tokenizer_from_reader,
)
from memtrain_jax.tokenizer.hf_tokenizer import HFTokenizer

Params = dict[str, Any]
logger = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------------ config


def _config_from_reader(reader: GGUFReader, path: str, tensor_names: set[str], vocab_size: int) -> ModelConfig:
    arch = gguf_field(reader, "general.architecture", path)
    family = families.by_gguf_architecture(arch)
    if family is None:
        supported = tuple(families.get(name).gguf_architecture for name in families.names())
        raise ValueError(f"GGUF file {path!r} has architecture {arch!r}; supported: {supported}.")
    scaling = gguf_field(reader, f"{arch}.rope.scaling.type", path, default="none")
    if scaling not in ("none", None) or "rope_freqs.weight" in tensor_names:
        raise ValueError(
            f"GGUF file {path!r} uses RoPE scaling ({arch}.rope.scaling.type={scaling!r}, "
            f"rope_freqs tensor present: {'rope_freqs.weight' in tensor_names}); its import is not supported."
        )
    hidden = int(gguf_field(reader, f"{arch}.embedding_length", path))
    heads = int(gguf_field(reader, f"{arch}.attention.head_count", path))
    head_dim = gguf_field(reader, f"{arch}.attention.key_length", path, default=None)
    if head_dim is None:
        head_dim = gguf_field(reader, f"{arch}.rope.dimension_count", path, default=hidden // heads)
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=int(gguf_field(reader, f"{arch}.feed_forward_length", path)),
        num_layers=int(gguf_field(reader, f"{arch}.block_count", path)),
        num_heads=heads,
        num_kv_heads=int(gguf_field(reader, f"{arch}.attention.head_count_kv", path, default=heads)),
        head_dim=int(head_dim),
        rope_theta=float(gguf_field(reader, f"{arch}.rope.freq_base", path, default=10000.0)),
        rms_norm_eps=float(gguf_field(reader, f"{arch}.attention.layer_norm_rms_epsilon", path)),
        qkv_bias=family.qkv_bias,
        qk_norm=family.qk_norm,
        tie_embeddings="output.weight" not in tensor_names,
        max_position_embeddings=int(gguf_field(reader, f"{arch}.context_length", path, default=32768)),
        family=family.name,
    )


# ------------------------------------------------------------------------------------------------ params


def unpermute_qk(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's q/k row order (RoPE pairs interleaved) -> HF rotate_half order.

    weight: [n_heads * head_dim, in] (torch Linear layout). Within each head, GGUF rows are
    (x0, x_half, x1, x_half+1, ...); HF rows are the first half then the second half.
    """
    half = weight.shape[0] // n_heads // 2
    w = weight.reshape(n_heads, half, 2, *weight.shape[1:])
    return w.swapaxes(2, 1).reshape(weight.shape)


def _dequantize_all(reader: GGUFReader, path: str) -> dict[str, np.ndarray]:
    """Every tensor dequantised to float32 numpy, in torch layout ([out, in] for matrices)."""
    out = {}
    for t in reader.tensors:
        try:
            x = dequantize(t.data, t.tensor_type)
        except NotImplementedError as e:
            raise ValueError(
                f"GGUF file {path!r}: tensor {t.name!r} has quantisation {t.tensor_type.name}, which the gguf "
                f"package cannot dequantise ({e})."
            ) from e
        expected = tuple(int(d) for d in reversed(t.shape))  # GGUF lists dims innermost first
        out[t.name] = np.asarray(x, np.float32).reshape(expected)
    return out


def _params_from_tensors(tensors: dict[str, np.ndarray], config: ModelConfig, path: str) -> Params:
    """The parameter tree from torch-layout tensors by GGUF name: the families' weight map, q/k rows un-permuted
    where the family's llama.cpp converter permuted them; a missing, misshapen or unmapped tensor is an error."""
    permuted = families.get(config.family).gguf_permuted_qk
    remaining = dict(tensors)
    params: Params = {}
    for t in families.tensors(config):
        if t.gguf_name not in remaining:
            raise ValueError(f"GGUF file {path!r} lacks tensor {t.gguf_name!r}.")
        x = remaining.pop(t.gguf_name)
        if x.shape != t.hf_shape:
            raise ValueError(f"GGUF file {path!r}: tensor {t.gguf_name!r} has shape {x.shape}, expected {t.hf_shape}.")
        if permuted and t.qk_heads:
            x = unpermute_qk(x, t.qk_heads)
        node = params
        for key in t.path[:-1]:
            node = node.setdefault(key, {})
        node[t.path[-1]] = t.to_ours(x)
    if remaining:
        raise ValueError(f"GGUF file {path!r} has tensors this importer does not map: {sorted(remaining)[:10]}.")
    return params


def load_gguf(path: str | os.PathLike, shardings: Params | None = None) -> tuple[ModelConfig, Params, HFTokenizer, str]:
    """Reads a GGUF file of a registered family: (ModelConfig, params, tokenizer, chat format name).

    params: the MODEL_CONTRACT tree in float32 (non-scanned layout), placed with `shardings` (a matching
    tree of NamedShardings, e.g. memtrain_jax.model.transformer.param_shardings) or on the default device.
    The chat format name is inferred from the file's `tokenizer.chat_template` (see chat.chat_format_from_template).
    """
    config, params, tokenizer, chat_format = _load_gguf_numpy(path)
    return config, _place(params, shardings), tokenizer, chat_format


def _load_gguf_numpy(path: str | os.PathLike) -> tuple[ModelConfig, Params, HFTokenizer, str]:
    start = time.perf_counter()
    reader, path = open_gguf(path)
    names = {t.name for t in reader.tensors}
    if "token_embd.weight" not in names:
        raise ValueError(f"GGUF file {path!r} has no token_embd.weight tensor.")
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    config = _config_from_reader(reader, path, names, vocab_size=int(embd.shape[-1]))
    tokenizer = tokenizer_from_reader(reader, path)
    params = _params_from_tensors(_dequantize_all(reader, path), config, path)
    logger.info("Read and dequantised %s in %.2fs.", path, time.perf_counter() - start)
    return config, params, tokenizer, chat_format_from_template(tokenizer.chat_template)


def _place(params: Params, shardings: Params | None) -> Params:
    if shardings is None:
        return jax.device_put(params, jax.local_devices()[0])
    return sharding.to_global(params, shardings)


# ------------------------------------------------------------------------------------------------- cache

_CACHE_FORMAT = 3
_PARAMS_DIR = "params"
_META = "meta.json"
_MODEL_CONFIG = "model_config.json"


def gguf_cache_key(path: str | os.PathLike) -> str:
    """Cache entry name: file stem + hash of (absolute path, size, mtime). A changed file gets a new entry."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    digest = content_key(f"{path}|{st.st_size}|{st.st_mtime_ns}|{_CACHE_FORMAT}")[:16]
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem}-{digest}"


def _checksums(params: Params) -> dict[str, dict[str, float | int]]:
    """Per-leaf CRC32 of the float32 bytes plus (sum |x|, sum x^2) in float64 (params on the host)."""
    out = {}
    for keypath, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        x = np.ascontiguousarray(np.asarray(x, np.float32))
        x64 = x.astype(np.float64)
        out[jax.tree_util.keystr(keypath)] = {
            "crc32": zlib.crc32(x.data),
            "abs_sum": float(np.abs(x64).sum()),
            "sq_sum": float(np.square(x64).sum()),
        }
    return out


@jax.jit
def _leaf_sums(leaves: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
    return [(jnp.abs(x).sum(), jnp.square(x).sum()) for x in leaves]


def _verify_checksums(params: Params, expected: dict[str, dict[str, float | int]], exact: bool | None = None) -> None:
    """Raises ValueError when `params` is not the tree the checksums were taken from.

    exact (default: every leaf is fully addressable from this process): compare CRC32s, which catches any
    changed bit. Otherwise (multi-host arrays, not gathered) compare float32 on-device sums with a relative
    tolerance, which catches corrupt or foreign chunks but not single small changes.
    """
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    if {jax.tree_util.keystr(p) for p, _ in leaves} != set(expected):
        raise ValueError("restored parameter names differ from the converted ones")
    if exact is None:
        exact = all(getattr(x, "is_fully_addressable", True) for _, x in leaves)
    if exact:
        for keypath, x in leaves:
            name = jax.tree_util.keystr(keypath)
            if zlib.crc32(np.ascontiguousarray(np.asarray(x, np.float32)).data) != expected[name]["crc32"]:
                raise ValueError(f"checksum mismatch for {name} (CRC32)")
        return
    sums = _leaf_sums([x for _, x in leaves])
    for (keypath, _), got in zip(leaves, sums, strict=True):
        name = jax.tree_util.keystr(keypath)
        want = (expected[name]["abs_sum"], expected[name]["sq_sum"])
        if not np.allclose([float(g) for g in got], want, rtol=1e-4, atol=1e-6):
            raise ValueError(f"checksum mismatch for {name}: sums {[float(g) for g in got]} != {list(want)}")


def _file_crcs(directory: str) -> dict[str, int]:
    """CRC32 of every file under `directory` (relative path -> crc), to catch on-disk damage before decoding."""
    out = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            crc = 0
            with open(path, "rb") as f:
                while chunk := f.read(1 << 24):
                    crc = zlib.crc32(chunk, crc)
            out[os.path.relpath(path, directory)] = crc
    return out


def _write_entry(
    entry: str, config: ModelConfig, params: Params, tokenizer: HFTokenizer, meta: dict, *, replace: bool = False
) -> None:
    """Writes a complete entry under a temporary name, then publishes it (memtrain_jax.atomic); unless
    `replace` (a corrupt entry), an entry another process published meanwhile is kept."""
    import orbax.checkpoint as ocp  # lazy: orbax is slow to import

    def write(tmp: str) -> None:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(os.path.join(tmp, _PARAMS_DIR), params)
        checkpointer.wait_until_finished()
        checkpointer.close()
        entry_meta = {**meta, "param_files": _file_crcs(os.path.join(tmp, _PARAMS_DIR))}
        tokenizer.save(tmp)
        with open(os.path.join(tmp, _MODEL_CONFIG), "w") as f:
            json.dump(config.to_dict(), f, indent=1)
        with open(os.path.join(tmp, _META), "w") as f:  # written last: its presence marks a complete entry
            json.dump(entry_meta, f, indent=1)

    write_directory_atomically(entry, write, replace=replace)


def _read_entry(entry: str, shardings: Params | None) -> tuple[ModelConfig, Params, HFTokenizer, str]:
    import orbax.checkpoint as ocp

    from memtrain_jax.model.transformer import param_shapes

    with open(os.path.join(entry, _META)) as f:
        meta = json.load(f)
    if meta.get("format") != _CACHE_FORMAT:
        raise ValueError(f"cache format {meta.get('format')!r} != {_CACHE_FORMAT}")
    files = _file_crcs(os.path.join(entry, _PARAMS_DIR))
    if files != meta["param_files"]:
        changed = sorted(k for k in set(files) | set(meta["param_files"]) if files.get(k) != meta["param_files"].get(k))
        raise ValueError(f"checkpoint files changed since they were written: {changed[:5]}")
    with open(os.path.join(entry, _MODEL_CONFIG)) as f:
        config = ModelConfig.from_dict(json.load(f))
    tokenizer = HFTokenizer.from_directory(entry)
    shapes = param_shapes(config)
    if shardings is None:
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])  # this process's own device
        shardings = jax.tree.map(lambda _: device, shapes)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, np.float32, sharding=sh), shapes, shardings)
    checkpointer = ocp.StandardCheckpointer()
    try:
        params = checkpointer.restore(os.path.join(entry, _PARAMS_DIR), target)
    finally:
        checkpointer.close()
    _verify_checksums(params, meta["checksums"])
    return config, params, tokenizer, meta["chat_format"]


def import_gguf_cached(
    gguf_path: str | os.PathLike,
    cache_dir: str | os.PathLike,
    shardings: Params | None = None,
) -> tuple[ModelConfig, Params, HFTokenizer, str]:
    """`load_gguf` with an on-disk cache: (ModelConfig, params, tokenizer, chat format name).

    The first call converts the GGUF and writes `<cache_dir>/<stem>-<hash>/` (Orbax params checkpoint,
    tokenizer.json, tokenizer_config.json, model_config.json, meta.json with CRC32s of the checkpoint files and
    of every tensor), keyed by the file's path, size and mtime. Later calls restore from it (directly into
    `shardings` when given). Several processes (hosts) may share the cache: a missing entry is published
    atomically by whichever finishes first (the others keep theirs in memory); an entry that fails to restore or
    to verify is never deleted by a reader: process 0 replaces it with a fresh conversion (with a warning), the
    other processes convert the GGUF in memory and leave the entry to it.
    """
    gguf_path = os.path.abspath(os.fspath(gguf_path))
    check_gguf_path(gguf_path)
    cache_dir = os.path.abspath(os.fspath(cache_dir))
    os.makedirs(cache_dir, exist_ok=True)
    entry = os.path.join(cache_dir, gguf_cache_key(gguf_path))
    corrupt = False
    if os.path.exists(entry):
        start = time.perf_counter()
        try:
            result = _read_entry(entry, shardings)
        except Exception as e:  # any failure means the entry cannot be trusted
            corrupt = True
            writer = jax.process_index() == 0
            action = (
                f"rebuilding it from {gguf_path!r}"
                if writer
                else f"process {jax.process_index()} converts {gguf_path!r} in memory; process 0 rebuilds the entry"
            )
            warnings.warn(
                f"GGUF cache entry {entry!r} is corrupt or incomplete ({type(e).__name__}: {e}); {action}.",
                RuntimeWarning,
                stacklevel=2,
            )
        else:
            logger.info("Restored %s from cache %s in %.2fs.", gguf_path, entry, time.perf_counter() - start)
            return result
    config, params, tokenizer, chat_format = _load_gguf_numpy(gguf_path)
    if corrupt and jax.process_index() != 0:
        return config, _place(params, shardings), tokenizer, chat_format
    start = time.perf_counter()
    meta = {
        "format": _CACHE_FORMAT,
        "source": gguf_path,
        "size": os.path.getsize(gguf_path),
        "mtime_ns": os.stat(gguf_path).st_mtime_ns,
        "chat_format": chat_format,
        "checksums": _checksums(params),
    }
    _write_entry(entry, config, params, tokenizer, meta, replace=corrupt)
    logger.info("Wrote GGUF cache entry %s in %.2fs.", entry, time.perf_counter() - start)
    return config, _place(params, shardings), tokenizer, chat_format
