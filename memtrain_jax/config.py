"""Loading ml-collections config files (`path/to/file.py:arg`) outside of absl flags.

Command-line tools use `ml_collections.config_flags.DEFINE_config_file`, which
accepts the same `path.py:arg` spelling plus `--config.a.b=value` overrides. This
module gives the same loading to code that is not a command-line tool (tests,
notebooks, config files that build on other config files).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib.util
import os
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")

# Fields that change how a run computes or reports, not what it trains: a resumed run may change them freely
# (every other difference from the run's stored config is refused, see train/workdir.py). "model.X" entries are
# ModelConfig fields that, when set in the `model` section, win over the checkpoint's.
MODEL_RUN_CHOICES = (
    "attention",
    "attention_block_q",
    "attention_block_kv",
    "dtype",
    "param_dtype",
    "remat",
    "scan_layers",
)
RUN_CHOICES = (
    "workdir",
    "mesh_shape",
    "compilation_cache",
    *(f"model.{k}" for k in MODEL_RUN_CHOICES),
    "model.cache_dir",
    "data.cache_dir",
    "data.loader.worker_count",
    "data.loader.worker_buffer_size",
    "data.loader.read_threads",
    "data.loader.prefetch_buffer_size",
    "data.loader.shard_index",
    "data.loader.shard_count",
    "sampling.max_rows",
    "sampling.length_block",
    "sampling.compact_rows",
    "sampling.lookup_tokens",
    "sampling.prefill_parts",
    "train.steps",
    "train.micro_batch_size",
    "train.logprob_chunk",
    "train.share_prompts",
    "train.log_every",
    "train.sample_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.async_checkpoints",
    "train.eval_every",
    "train.eval_before",
    "train.eval_samples",
    "train.eval_probes",
)


def _unless(new_key: str, unset: Any) -> Callable[[Any], dict[str, Any]]:
    return lambda value: {} if value == unset else {new_key: value}


# Fields renamed since run directories were first written: {old dotted field: old value -> {new field: value}}.
# A stored config is read through them (`migrate`), so a run started before a rename resumes unchanged.
RENAMED_FIELDS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "qa.chunk_size": _unless("qa.overrides.data.chunking.chunk_size", 0),  # 0 meant "MemTrain's chunk"
    "qa.answer_extractor": _unless("qa.overrides.agent.answer_extractor", ""),  # "" meant "agent's"
    "qa.temperature": lambda value: {"qa.eval_overrides.sampling.temperature": value},
    "qa.top_p": lambda value: {"qa.eval_overrides.sampling.top_p": value},
}


# Fields added since run directories were first written: {dotted field: the value that reproduces what the
# code did before the field existed}. A stored config of a section that lacks one reads it as that value.
ADDED_FIELDS: dict[str, Any] = {
    "train.format_recall_entities": 1,
    "train.eval_samples": 1,
    "train.eval_probes": 1,
    "data.document.mask_scope": "document",
    "data.probes.shared": False,
    "agent.train_memory_turns": True,
    "rl.negative_weight": 1.0,
    "sampling.length_block": 256,
    "sampling.compact_rows": 0,
    "sampling.lookup_tokens": 0,
    "sampling.lookup_sampled": False,
    "sampling.prefill_parts": 1,
    "sampling.greedy_memory": False,
    "train.lora_rank": 0,
    "train.lora_alpha": 32.0,
    "train.share_prompts": False,
    "data.probes.max_occurrences": 5,
    "data.probes.in_memory": False,
    "qa.train_skip": 0,
}

# Sections added since then that are empty by default (a flattened config has no leaf for them).
ADDED_SECTIONS = ("agent.rewards", "qa.overrides")


def migrate(values: Mapping[str, Any]) -> dict[str, Any]:
    """A flattened stored config with renamed fields under their current names (RENAMED_FIELDS) and fields added
    since it was written at their old behaviour (ADDED_FIELDS), where it has their section."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        out.update(RENAMED_FIELDS[key](value) if key in RENAMED_FIELDS else {key: value})
    sections = {key.rsplit(".", 1)[0] for key in out}
    for key, value in ADDED_FIELDS.items():
        if key not in out and key.rsplit(".", 1)[0] in sections:
            out[key] = value
    return out


def _parent(tree: dict[str, Any], key: str, create: bool) -> tuple[dict[str, Any] | None, str]:
    """(the mapping that holds dotted `key` in a nested tree, its leaf name); None where a section is missing and
    not `create`d."""
    *parents, leaf = key.split(".")
    node: Any = tree
    for part in parents:
        node = node.setdefault(part, {}) if create else node.get(part)
        if not isinstance(node, dict):
            return None, leaf
    return node, leaf


def migrate_tree(values: Mapping[str, Any]) -> dict[str, Any]:
    """A nested stored config (config.json) read as today's code reads it: `migrate`'s renames and added fields
    applied in place, so sections that are empty mappings (e.g. `qa.overrides`) are kept."""
    old = flatten(values)
    new = migrate(old)
    out = copy.deepcopy(dict(values))
    for key in old.keys() - new.keys():
        node, leaf = _parent(out, key, create=False)
        del node[leaf]
    for key, value in new.items():
        if key not in old or old[key] != value:
            node, leaf = _parent(out, key, create=True)
            node[leaf] = value
    for key in ADDED_SECTIONS:
        node, leaf = _parent(out, key, create=False)
        if node is not None:
            node.setdefault(leaf, {})
    return out


class UsageError(ValueError):
    """A refusal of the user's input (config, files, workdir): the CLI prints its message alone and exits 2."""


def split_run_step(spec: str, what: str = "run") -> tuple[str, int | None]:
    """`WORKDIR` or `WORKDIR@STEP` -> (workdir, step or None); a step that is not a number is one UsageError line."""
    workdir, at, step_text = str(spec).partition("@")
    if at and not step_text.isdigit():
        raise UsageError(f"{what} {spec!r}: the step after '@' must be a number (RUN@STEP), got {step_text!r}.")
    return workdir, int(step_text) if at else None


def flatten(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: a nested config (dict or ConfigDict) as dotted leaves."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) or hasattr(value, "to_dict"):
            out.update(flatten(value.to_dict() if hasattr(value, "to_dict") else value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def nearest_fields(name: str, fields: list[str], n: int = 3) -> list[str]:
    """The config fields closest to a misspelt `name`: the same leaf name first (`steps` -> `train.steps`), then
    the closest whole paths, then the closest leaf names."""
    leaf = name.rsplit(".", 1)[-1]
    leaf_of = lambda f: f.rsplit(".", 1)[-1]
    same_leaf = [f for f in fields if leaf_of(f) == leaf]
    close = difflib.get_close_matches(name, fields, n=n, cutoff=0.6)
    close_leaf = [f for f in fields if difflib.SequenceMatcher(None, leaf, leaf_of(f)).ratio() >= 0.75]
    return list(dict.fromkeys([*same_leaf, *close, *close_leaf]))[:n]


def resolve_config_path(path: str) -> str:
    """Finds a config file as given (from the working directory), else in the package's `configs/` (so
    `configs/memtrain.py` works from any directory)."""
    candidates = [path, os.path.join(CONFIGS_DIR, path), os.path.join(REPO_ROOT, path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        f"Config file {path!r} not found (looked in the working directory and in {CONFIGS_DIR}). "
        "Pass a path such as configs/models.py:tiny."
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads `file.py[:arg]` by calling the file's `get_config(arg)` (or `get_config()`)."""
    path, _, arg = spec.partition(":")
    filename = resolve_config_path(path)
    module_name = "memtrain_config_" + os.path.splitext(os.path.basename(filename))[0].replace("-", "_")
    module_spec = importlib.util.spec_from_file_location(module_name, filename)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"Config file {filename} defines no get_config(arg) function.")
    return module.get_config(arg) if arg else module.get_config()


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with dotted-key overrides, e.g. {"model.num_layers": 2}.

    A key that the config does not have is an error naming the key, so a typo in an
    ablation sweep fails loudly instead of being silently ignored.
    """
    config = ml_collections.ConfigDict(config.to_dict())
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            if part not in node:
                raise KeyError(unknown_field_message(dotted, config))
            node = node[part]
        if leaf not in node:
            raise KeyError(unknown_field_message(dotted, config))
        node[leaf] = value
    return config


class UnknownFieldError(UsageError, KeyError):
    """A config section with a field its dataclass does not have (a KeyError and a UsageError: one clear line)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def section_values(cls: type, section: Mapping[str, Any] | Any, name: str, exclude: tuple[str, ...] = ()) -> dict:
    """The fields of config section `name` (a ConfigDict or dict) as a dict for dataclass `cls`; a field `cls`
    does not have (or that is filled from elsewhere, `exclude`) is refused, naming the nearest known fields."""
    values = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    known = sorted({f.name for f in dataclasses.fields(cls)} - set(exclude))
    unknown = sorted(set(values) - set(known))
    if unknown:
        hints = {u: nearest_fields(u, known) for u in unknown}
        hint = "; ".join(f"did you mean {' or '.join(h)} for {u!r}?" for u, h in hints.items() if h)
        raise UnknownFieldError(
            f"Unknown {name} field(s) {unknown}{'; ' + hint if hint else ''} (known: {', '.join(known)})."
        )
    return values


def unknown_field_message(name: str, config: Any) -> str:
    """One line for a config field that does not exist, with the nearest existing names."""
    nearest = nearest_fields(name, sorted(flatten(config)))
    hint = f"; did you mean {' or '.join(nearest)}?" if nearest else ""
    return f"config has no field {name!r}{hint}"
