"""Multi-host correctness, for real: two JAX processes on this machine (four fake CPU devices each, gloo
collectives), started by launch/local.sh, train exactly as one process with eight devices does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from run_configs import run_config

from memtrain_jax.tools.cluster import distributed_args
from memtrain_jax.train import Trainer, read_metrics
from memtrain_jax.train.metrics import SAMPLES_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL = os.path.join(REPO, "launch", "local.sh")

# 1 format (cross-entropy) step, then 2 GRPO steps with rollouts; FSDP x tensor across both processes.
OVERRIDES = {
    "train.steps": 3,
    "train.format_steps": 1,
    "train.eval_every": 0,
    "train.sample_every": 1,
    "train.checkpoint_every": 3,
    "mesh_shape": (1, 4, 2),
}
TIMING = ("_s", "tokens_per_s", "compilations")


def _flag(value) -> str:
    return str(value) if not isinstance(value, tuple) else "(" + ",".join(map(str, value)) + ")"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(single-process workdir, its trainer and summary, two-process workdir)."""
    cache = tmp_path_factory.mktemp("mp-cache")
    config = run_config("memtrain.py:tiny", cache, **OVERRIDES)
    single = tmp_path_factory.mktemp("single")
    trainer = Trainer(config, str(single), log=lambda _: None)
    summary = trainer.train()

    double = tmp_path_factory.mktemp("double")
    settings = {
        "data.cache_dir": cache,
        "model.cache_dir": cache,
        "rl.dapo_filter": False,
        "train.async_checkpoints": False,
        **OVERRIDES,
    }
    args = [f"--config.{k}={_flag(v)}" for k, v in settings.items()]
    command = ["bash", LOCAL, "--log-dir", str(double / "logs"), "2", "--", "train", "--config",
               os.path.join(REPO, "configs", "memtrain.py:tiny"), "--workdir", str(double / "run"), *args]  # fmt: skip
    done = subprocess.run(
        command, cwd=REPO, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return single, trainer, summary, double / "run", done.stdout


def _numbers(record: dict) -> dict:
    return {
        k: v
        for k, v in record.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not any(k.endswith(t) for t in TIMING)
    }


def test_two_processes_train_like_one(runs):
    single, _, _, double, stdout = runs
    assert "process 0 of 2, 4 local devices" in stdout
    one, two = read_metrics(str(single)), read_metrics(str(double))
    assert [r["step"] for r in two] == [1, 2, 3] and [r["phase"] for r in two] == ["format", "grpo", "grpo"]
    for a, b in zip(one, two, strict=True):
        assert a["episode_ids"] == b["episode_ids"]  # the same global batches: the hosts split each batch
        x, y = _numbers(a), _numbers(b)
        assert set(x) == set(y)
        for key in x:
            assert y[key] == pytest.approx(x[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert one[0]["loss"] > 0 and one[0]["grad_norm"] > 0  # the format step really trained
    # The rollouts' text (memories written at every turn, answers) is the same, token for token.
    read = lambda w: [json.loads(line) for line in (w / SAMPLES_FILE).read_text().splitlines()]
    assert [s["text"] for s in read(single)] == [s["text"] for s in read(double)]
    # Only process 0 writes: one record per step, not two.
    assert len(two) == 3 and len(read(double)) == 2


def test_two_process_checkpoint_restores_in_one_process(runs):
    _, trainer, summary, double, _ = runs
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), summary["state"])
    restorer = Trainer(trainer.config, str(double), log=lambda _: None)
    step, state, meta = restorer.checkpointer.restore_state(abstract)
    assert step == 3 and meta["processes"] == 2
    expected = jax.tree.leaves(jax.device_get(summary["state"].params))
    got = jax.tree.leaves(jax.device_get(state.params))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-6)
    # The data position counts global batches, the same as the one-process run's: it resumes any host count.
    single_meta = trainer.checkpointer.restore_state(abstract)[2]
    assert single_meta["processes"] == 1 and json.loads(meta["data_state"]) == json.loads(single_meta["data_state"])


def test_distributed_arguments():
    env = {"MEMTRAIN_COORDINATOR": "10.0.0.2:1234", "MEMTRAIN_NUM_PROCESSES": "4", "MEMTRAIN_PROCESS_ID": "3"}
    assert distributed_args(environ={}) == {}  # TPU VMs: JAX finds the hosts itself
    assert distributed_args(environ=env) == {
        "coordinator_address": "10.0.0.2:1234",
        "num_processes": 4,
        "process_id": 3,
    }
    assert distributed_args("h:1", 2, 0, environ=env) == {
        "coordinator_address": "h:1",
        "num_processes": 2,
        "process_id": 0,
    }
    with pytest.raises(ValueError, match="MEMTRAIN_PROCESS_ID"):
        distributed_args("h:1", 2, environ={})
    with pytest.raises(ValueError, match=r"process_id=2 must be in \[0, num_processes=2\)"):
        distributed_args("h:1", 2, 2, environ={})
    with pytest.raises(ValueError, match="host:port"):
        distributed_args("h", 2, 1, environ={})


def test_local_launcher_dry_run_and_usage_errors():
    done = subprocess.run(
        ["bash", LOCAL, "--dry-run", "--port", "4321", "--devices-per-process", "2", "3", "--", "train",
         "--workdir", "a b"],
        capture_output=True, text=True, env={**os.environ, "PYTHON": "python3"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    expected = [
        "+ env XLA_FLAGS=--xla_force_host_platform_device_count=2 python3 -m memtrain_jax.tools.main train "
        f"--workdir a\\ b --distributed --coordinator localhost:4321 --num_processes 3 --process_id {i}"
        for i in range(3)
    ]
    assert done.stdout.splitlines() == expected
    for bad, message in [
        (["0", "--", "train"], "positive integer, got '0'"),
        (["2", "train"], "go after --"),
        (["2", "--", "train", "--process_id", "1"], "set by launch/local.sh itself"),
        (["--port", "70000", "2", "--", "train"], "1..65535"),
    ]:
        done = subprocess.run(["bash", LOCAL, *bad], capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr, (bad, done.stderr)


def test_sigterm_on_one_host_stops_every_host_at_the_same_step(runs, tmp_path):
    """A preempted pod: SIGTERM reaches one process only. Both stop after the same step with one checkpoint, and
    the same command resumes to the end, each step recorded once."""
    import signal
    import time

    single, trainer, _, _, _ = runs
    workdir = tmp_path / "preempted"
    cache = trainer.config.data.cache_dir
    settings = {
        "data.cache_dir": cache, "model.cache_dir": cache, "rl.dapo_filter": False, "train.async_checkpoints": False,
        **OVERRIDES, "train.steps": 8, "train.checkpoint_every": 100,
    }  # fmt: skip
    args = [f"--config.{k}={_flag(v)}" for k, v in settings.items()]
    command = ["bash", LOCAL, "--log-dir", str(tmp_path / "logs"), "2", "--", "train", "--config",
               os.path.join(REPO, "configs", "memtrain.py:tiny"), "--workdir", str(workdir), *args]  # fmt: skip
    env = {**os.environ, "PYTHON": sys.executable}
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 600
    while not read_metrics(str(workdir)) and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.5)
    pid = subprocess.run(
        ["pgrep", "-f", "--", f"--workdir {workdir} .*--process_id 1"], capture_output=True, text=True
    ).stdout.split()
    assert pid, "process 1 not found"
    os.kill(int(pid[0]), signal.SIGTERM)
    out, _ = launcher.communicate(timeout=600)
    assert launcher.returncode == 75, out[-3000:]  # preempted, checkpoint saved (memtrain --help: exit codes)
    assert "stopped by SIGTERM" in out
    steps = [r["step"] for r in read_metrics(str(workdir))]
    stopped = steps[-1]
    assert 1 <= stopped < 8 and steps == list(range(1, stopped + 1))
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved == [stopped]  # one checkpoint, written by both processes at the same step
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [r["step"] for r in read_metrics(str(workdir))] == list(range(1, 9))
