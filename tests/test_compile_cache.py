"""JAX's persistent compilation cache: a second process running the same programs compiles none of them."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(workdir, cache, compile_cache):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "memtrain_jax.tools.main", "train", "--config", "configs/memtrain.py:tiny"]
    command += [
        f"--workdir={workdir}",
        f"--config.data.cache_dir={cache}",
        f"--config.compilation_cache={compile_cache}",
    ]
    command += ["--config.train.steps=2", "--config.train.format_steps=1", "--config.train.eval_every=2"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    if "compilation cache: off or unused" in done.stdout:
        return 0, 0
    found = re.search(r"compilation cache: (\d+) programs loaded, (\d+) compiled and stored", done.stdout)
    assert found, done.stdout[-2000:]
    return int(found.group(1)), int(found.group(2))


def test_a_second_process_compiles_nothing_the_first_compiled(tmp_path):
    cache = tmp_path / "jax-cache"
    loaded, compiled = _train(tmp_path / "a", tmp_path / "data", cache)
    assert loaded == 0 and compiled > 0 and any(cache.iterdir())
    loaded, again = _train(tmp_path / "b", tmp_path / "data", cache)
    assert again == 0 and 0.9 * compiled <= loaded <= compiled  # every program from the cache, none compiled
    assert _train(tmp_path / "c", tmp_path / "data", "") == (0, 0)  # "" turns it off
