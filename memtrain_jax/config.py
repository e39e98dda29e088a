"""Loading ml-collections config files (`path/to/file.py:arg`) outside of absl flags.

Command-line tools use `ml_collections.config_flags.DEFINE_config_file`, which
accepts the same `path.py:arg` spelling plus `--config.a.b=value` overrides. This
module gives the same loading to code that is not a command-line tool (tests,
notebooks, config files that build on other config files).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from typing import Any

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS_DIR = os.path.join(REPO_ROOT, "configs")


def _resolve(path: str) -> str:
    """Finds a config file as given, or relative to the repository's `configs/`."""
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
    filename = _resolve(path)
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
                raise KeyError(f"Config has no field {dotted!r} (no {part!r}).")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"Config has no field {dotted!r}; fields here: {sorted(node.keys())}.")
        node[leaf] = value
    return config
