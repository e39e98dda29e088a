"""Parameter checkpoints with orbax: `<path>/params` (orbax) beside `<path>/model_config.json`.

Saving is atomic at the directory level (memtrain_jax.atomic): everything is written to
`<path>.tmp-save`, and only when orbax has finalised it does it replace `<path>` (the previous
checkpoint is moved aside and deleted last; if a crash falls between the two renames, restoring
finds it aside). Restoring
checks the stored shapes against the requested config first, so a mismatch is an error naming
the tensor and both shapes, never a silent pad, truncation or broadcast; a different
`scan_layers` layout is converted with stack_layers / unstack_layers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from memtrain_jax.atomic import publish_directory, resolve
from memtrain_jax.checkpoint.hf import load_hf_checkpoint
from memtrain_jax.model.config import ModelConfig
from memtrain_jax.model.transformer import param_shapes, stack_layers, unstack_layers

Params = dict[str, Any]

PARAMS_DIR = "params"
CONFIG_FILE = "model_config.json"
CHECKPOINT_DIR = "checkpoints"  # a training run's checkpoints: <workdir>/checkpoints/<step>/state


class CheckpointMismatchError(ValueError):
    """A checkpoint whose parameter tree does not fit the requested model config."""


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {'a/b/c': leaf}."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}/"))
        return out
    return {prefix[:-1]: tree}


def check_shapes(expected: Any, actual: Any, what: str, expected_what: str) -> None:
    """Raises CheckpointMismatchError naming every missing, unexpected or differently shaped tensor.

    expected / actual: nested dicts whose leaves have `.shape` (arrays, ShapeDtypeStructs, orbax metadata).
    """
    exp, act = _flatten(expected), _flatten(actual)
    problems = []
    for key, leaf in exp.items():
        if key not in act:
            problems.append(f"{key}: missing from {what} (shape {tuple(leaf.shape)} expected)")
        elif tuple(act[key].shape) != tuple(leaf.shape):
            got = tuple(act[key].shape)
            problems.append(f"{key}: {what} has shape {got}, {expected_what} needs {tuple(leaf.shape)}")
    for key, leaf in act.items():
        if key not in exp:
            problems.append(f"{key}: in {what} (shape {tuple(leaf.shape)}) but not in {expected_what}")
    if problems:
        shown = "\n  ".join(problems[:12]) + ("\n  ..." if len(problems) > 12 else "")
        raise CheckpointMismatchError(f"{what} does not match {expected_what}:\n  {shown}")


def save_params(path: str | os.PathLike, params: Params, config: ModelConfig) -> None:
    """Saves `params` (the tree for `config`, any sharding) and model_config.json under `path`.

    Call on every process. An existing checkpoint at `path` stays intact until the new one is
    complete; then it is replaced.
    """
    check_shapes(param_shapes(config), params, "params", f"the model config ({config.family})")
    path = epath.Path(path)
    tmp = path.parent / f"{path.name}.tmp-save"  # same name on every host: they write one checkpoint
    if jax.process_index() == 0:
        if tmp.exists():  # left over from an interrupted save; never a finished checkpoint
            tmp.rmtree()
        tmp.mkdir(parents=True)
    _sync("memtrain_save_params_start")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp / PARAMS_DIR, params)
    checkpointer.wait_until_finished()
    checkpointer.close()
    if jax.process_index() == 0:
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2, sort_keys=True))
        publish_directory(tmp, path)
    _sync("memtrain_save_params_done")


def load_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig stored beside a parameter checkpoint."""
    file = resolve(epath.Path(path)) / CONFIG_FILE
    if not file.exists():
        raise FileNotFoundError(f"{file} not found: {path} is not a checkpoint written by save_params.")
    return ModelConfig.from_dict(json.loads(file.read_text()))


def restore_params(
    path: str | os.PathLike, config: ModelConfig | None = None, shardings: Params | None = None
) -> tuple[ModelConfig, Params]:
    """Restores (config, params) from `path`.

    `config` defaults to the stored one; pass another to change dtype, scan layout, remat, ...
    (its shapes must match the stored tensors, else CheckpointMismatchError names the tensor and
    both shapes). `shardings` (e.g. `param_shardings(config, mesh)`) places each array; without it
    every array goes to the first local device.
    """
    path = resolve(epath.Path(path))
    saved = load_config(path)
    config = saved if config is None else config
    stored_layout = config.replace(scan_layers=saved.scan_layers)
    expected = param_shapes(stored_layout)
    checkpointer = ocp.StandardCheckpointer()
    stored = checkpointer.metadata(path / PARAMS_DIR).item_metadata.tree
    check_shapes(expected, stored, f"checkpoint {path}", "the requested model config")
    if shardings is not None:
        wanted, given = set(_flatten(param_shapes(config))), set(_flatten(shardings))
        if wanted != given:
            raise CheckpointMismatchError(
                f"shardings tree does not match the model config: missing {sorted(wanted - given)[:8]}, "
                f"unexpected {sorted(given - wanted)[:8]} (build it with param_shardings(config, mesh))."
            )

    default = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    same_layout = config.scan_layers == saved.scan_layers
    # A layout change is applied after restoring, then the result is placed.
    use_given = same_layout and shardings is not None
    target_shardings = shardings if use_given else jax.tree.map(lambda _: default, expected)
    target = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), expected, target_shardings)
    params = checkpointer.restore(path / PARAMS_DIR, target)
    checkpointer.close()
    if not same_layout:
        params = stack_layers(params, config) if config.scan_layers else unstack_layers(params, config)
        if shardings is not None:
            params = jax.device_put(params, shardings)
    return config, params


def import_hf_to_orbax(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    overrides: Mapping[str, Any] | None = None,
) -> ModelConfig:
    """Converts a Hugging Face checkpoint directory into an orbax parameter checkpoint; returns its config.

    `dtype` is the stored parameter dtype; `overrides` sets further ModelConfig fields (e.g. scan_layers).
    """
    config, params = load_hf_checkpoint(hf_dir, dtype=dtype, overrides=overrides)
    save_params(out_dir, params, config)
    return config


def checkpoint_steps(workdir: str) -> list[int]:
    """The steps of a run's finished checkpoints (<workdir>/checkpoints/<step> folders), ascending; [] if none."""
    directory = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir)) / CHECKPOINT_DIR
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def restore_run_params(workdir: str, abstract_params: Any, step: int | None = None) -> tuple[int, Any]:
    """(step, params) of a run's checkpoint (latest by default), read alone (no optimizer state, no data
    position): how a job starts from another run's policy (`init_from`, evaluation arms).

    abstract_params: ShapeDtypeStructs with shardings; a checkpoint of another shape is refused by name."""
    directory = epath.Path(workdir if "://" in workdir else os.path.abspath(workdir)) / CHECKPOINT_DIR
    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"No checkpoint in {directory}: {workdir} is not a trained memtrain workdir.")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"No checkpoint of step {step} in {directory} (have {steps}).")
    path = directory / str(step) / "state"
    # The handler reads the item's tree metadata; a Checkpointer would also look for step metadata, which a run's
    # item folder does not hold, and warn that it is missing on every init_from.
    stored = ocp.PyTreeCheckpointHandler().metadata(path)
    stored_params = stored.get("params")
    wanted = jax.tree_util.tree_flatten_with_path(abstract_params)[0]
    have = dict(jax.tree_util.tree_flatten_with_path(stored_params)[0]) if stored_params is not None else {}
    mismatch = [
        f"{jax.tree_util.keystr(k)}: checkpoint {tuple(have[k].shape) if k in have else 'missing'}, model {v.shape}"
        for k, v in wanted
        if k not in have or tuple(have[k].shape) != tuple(v.shape)
    ]
    if mismatch:
        raise CheckpointMismatchError(
            f"The checkpoint {path} does not fit this model ({len(mismatch)} parameters differ, e.g. "
            f"{'; '.join(mismatch[:3])}). init_from must name a run of the same model."
        )
    restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, dtype=x.dtype), abstract_params)
    restored = ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(
            item={"params": abstract_params}, restore_args={"params": restore_args}, partial_restore=True
        ),
    )
    return step, restored["params"]
