"""A run directory survives what users do to it: two writers, crashes mid-write, a full disk, resumes with other
settings, exports into it, corrupt checkpoints under `eval`; and the CLI refuses bad input in one line."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from run_configs import run_config

from memtrain_jax.config import UsageError, load_config, migrate_tree
from memtrain_jax.train import Trainer, read_metrics
from memtrain_jax.train import metrics as metrics_module
from memtrain_jax.train.checkpoints import RunCheckpointer
from memtrain_jax.train.metrics import EVAL_FILE, METRICS_FILE, SAMPLES_FILE, MetricWriter
from memtrain_jax.train.workdir import (
    ConfigChangedError,
    WorkdirBusyError,
    WorkdirLock,
    WriteFailedError,
    config_changes,
    config_values,
    read_history,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = {"train.steps": 4, "train.format_steps": 2, "train.checkpoint_every": 2, "train.eval_every": 2}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("workdir-cache")


def _tiny(cache, **overrides):
    return run_config("memtrain.py:tiny", cache, **{**RUN, **overrides})


def _quiet(_message):
    pass


def _train(config, workdir, **kw):
    trainer = Trainer(config, str(workdir), log=_quiet, **kw)
    return trainer, trainer.train()


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def _steps(workdir, name=METRICS_FILE):
    return [r["step"] for r in read_metrics(str(workdir), name)]


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    _, summary = _train(_tiny(cache), workdir)
    return workdir, summary


def _holder(workdir):
    """Another process holding the workdir's lock until killed."""
    code = (
        "import sys, time; from memtrain_jax.train.workdir import WorkdirLock; "
        f"WorkdirLock({str(workdir)!r}).acquire(); print('held', flush=True); time.sleep(600)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "held"
    return proc


# ------------------------------------------------------------------------------------------------ one writer


def test_a_second_writer_is_refused_and_a_killed_holder_does_not_block(cache, tmp_path):
    proc = _holder(tmp_path / "w")
    try:
        with pytest.raises(WorkdirBusyError, match=f"pid {proc.pid} on "):
            Trainer(_tiny(cache), str(tmp_path / "w"), log=_quiet)
        assert not (tmp_path / "w" / "config.json").exists()  # refused before anything was written
        # Readers never take the lock.
        Trainer(_tiny(cache), str(tmp_path / "w"), log=_quiet, writer=False)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # The lock file is still there with the dead holder's pid, but the OS released the lock with the process.
    assert str(proc.pid) in (tmp_path / "w" / "lock").read_text()
    lock = WorkdirLock(str(tmp_path / "w")).acquire()
    assert json.loads((tmp_path / "w" / "lock").read_text())["pid"] == os.getpid()
    lock.release()


# ------------------------------------------------------------------------------------------------ records


def test_torn_last_line_is_dropped_with_a_warning_naming_the_file(tmp_path):
    writer = MetricWriter(str(tmp_path))
    for step in (1, 2):
        writer.write(step, {"loss": 1.0 / step})
    writer.close()
    path = tmp_path / METRICS_FILE
    with open(path, "a") as f:
        f.write('{"loss": 0.3, "st')  # a crash mid-write
    with pytest.warns(RuntimeWarning, match=str(path)):
        assert _steps(tmp_path) == [1, 2]
    with pytest.warns(RuntimeWarning, match="torn"):
        MetricWriter(str(tmp_path), resume_step=2).close()
    assert path.read_text().endswith("}\n") and _steps(tmp_path) == [1, 2]  # repaired: whole records only
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')  # damage inside the file is not a torn write
    with pytest.raises(UsageError, match="line 2"):
        read_metrics(str(tmp_path))


def test_a_restart_from_step_0_writes_step_0_once(cache, tmp_path, uninterrupted):
    """Every checkpoint lost (or a kill before the first one): the records are rewritten, not duplicated."""
    shutil.copytree(uninterrupted[0], tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints")
    _train(_tiny(cache), tmp_path)
    assert _steps(tmp_path) == [1, 2, 3, 4]
    assert _steps(tmp_path, EVAL_FILE) == [0, 2, 4]
    samples = [(r["step"], r["name"]) for r in read_metrics(str(tmp_path), SAMPLES_FILE)]
    assert len(samples) == len(set(samples)) and (0, "eval/memories") in samples


class _FullDisk:
    """`open` for metrics.py that fails the record of one step halfway: half the line reaches the file, then
    ENOSPC, as a full disk does."""

    def __init__(self, step: int):
        self.step, self.failed = step, False

    def __call__(self, path, mode="r", **kw):
        f = open(path, mode, **kw)  # noqa: SIM115
        if "a" not in mode or not str(path).endswith(METRICS_FILE):
            return f
        outer = self

        class Half:
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

            def write(self, line):
                if json.loads(line)["step"] == outer.step and not outer.failed:
                    outer.failed = True
                    f.write(line[: len(line) // 2])
                    f.flush()
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return f.write(line)

        return Half()


def test_a_record_write_that_fails_halfway_loses_no_completed_step(cache, tmp_path, uninterrupted, monkeypatch):
    fault = _FullDisk(step=3)
    monkeypatch.setattr(metrics_module, "open", fault, raising=False)
    with pytest.raises(WriteFailedError, match=r"metrics.jsonl: \[Errno 28\] No space left on device"):
        _train(_tiny(cache), tmp_path)
    assert fault.failed
    text = (tmp_path / METRICS_FILE).read_text()
    assert text.endswith("\n") and _steps(tmp_path) == [1, 2]  # the half line was undone
    monkeypatch.undo()
    _, resumed = _train(_tiny(cache), tmp_path)  # the same command resumes from checkpoint 2
    assert resumed["start_step"] == 2 and _steps(tmp_path) == [1, 2, 3, 4]
    assert _steps(tmp_path, EVAL_FILE) == [0, 2, 4]
    for a, b in zip(_leaves(uninterrupted[1]["state"]), _leaves(resumed["state"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_write_that_fails_halfway_keeps_the_last_good_one(cache, tmp_path, uninterrupted, monkeypatch):
    original = RunCheckpointer.save

    def failing_save(self, step, *args, **kw):
        if step == 4:  # a partial temporary folder, then the disk is full
            partial = self.directory / "4.orbax-checkpoint-tmp-1234" / "state"
            partial.mkdir(parents=True)
            (partial / "half").write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, step, *args, **kw)

    monkeypatch.setattr(RunCheckpointer, "save", failing_save)
    with pytest.raises(WriteFailedError, match=r"checkpoint of step 4 .*\[Errno 28\]"):
        _train(_tiny(cache), tmp_path)
    monkeypatch.undo()
    assert RunCheckpointer(str(tmp_path)).steps() == [2]
    _, resumed = _train(_tiny(cache), tmp_path)
    assert resumed["start_step"] == 2 and _steps(tmp_path) == [1, 2, 3, 4]
    for a, b in zip(_leaves(uninterrupted[1]["state"]), _leaves(resumed["state"]), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------------------------ config history


def test_a_resume_with_other_settings_is_refused_before_the_model_loads(cache, tmp_path, uninterrupted, monkeypatch):
    shutil.copytree(uninterrupted[0], tmp_path, dirs_exist_ok=True)
    stored = (tmp_path / "config.json").read_text()
    from memtrain_jax.tasks import AgentSetup

    def no_build(*_a, **_k):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(AgentSetup, "build", no_build)
    changed = {"data.chunking.chunk_size": 32, "agent.group_size": 4, "optim.learning_rate": 0.5}
    with pytest.raises(ConfigChangedError) as refusal:
        Trainer(_tiny(cache, **changed), str(tmp_path), log=_quiet)
    message = str(refusal.value)
    assert "data.chunking.chunk_size: 64 -> 32" in message and "agent.group_size: 2 -> 4" in message
    assert "optim.learning_rate: 0.001 -> 0.5" in message and "--allow_config_change" in message
    assert (tmp_path / "config.json").read_text() == stored  # the record is untouched
    monkeypatch.undo()
    # Run choices may change; the start is recorded, and the history keeps both starts.
    _, summary = _train(_tiny(cache, **{"train.steps": 6, "model.attention": "reference"}), tmp_path)
    assert summary["start_step"] == 4 and _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    history = read_history(str(tmp_path))
    assert len(history) == 2 and history[0]["checkpoints"] == [] and history[1]["checkpoints"] == [2, 4]
    assert history[1]["changed"]["train.steps"] == [4, 6]
    assert json.loads((tmp_path / "config.json").read_text())["train"]["steps"] == 6
    # With --allow_config_change the change is recorded and the run goes on.
    _train(_tiny(cache, **{"train.steps": 7, "optim.learning_rate": 0.5}), tmp_path, allow_config_change=True)
    assert read_history(str(tmp_path))[-1]["changed"]["optim.learning_rate"] == [0.001, 0.5]


@pytest.mark.parametrize(
    "spec", ["memtrain.py:tiny", "memtrain.py:cpu", "memtrain.py:cpu_long", "memtrain.py:paper", "task.py:cpu",
             "task.py:cpu,search"],
)  # fmt: skip
def test_a_config_written_before_the_field_renames_reads_unchanged(spec):
    """config.json of the same config written by commit 4d0fa85 (qa.chunk_size, qa.answer_extractor,
    qa.temperature, qa.top_p; no agent.rewards) has no field that differs from today's config."""
    name = spec.replace(".py:", "_").replace(",", "_")
    with open(os.path.join(REPO, "tests", "fixtures", f"config_4d0fa85_{name}.json"), encoding="utf-8") as f:
        old = json.load(f)
    assert "chunk_size" in old["qa"] and "overrides" not in old["qa"]
    assert config_changes(old, config_values(load_config(spec))) == {}
    # `memtrain eval` / `export` / `diagnose` build the run from its stored config: read as today's, it is today's,
    # but for the run choices added since at the behaviour the run had (the CPU variants' 64-token prompt buckets
    # shared-prompt updates, decode compaction, lookup drafts and prefill parts came later; a run choice may differ
    # on resume)
    today = config_values(load_config(spec))
    assert migrate_tree(old)["sampling"]["length_block"] == 256
    assert migrate_tree(old)["train"]["share_prompts"] is False
    assert migrate_tree(old)["sampling"]["compact_rows"] == 0
    assert migrate_tree(old)["sampling"]["lookup_tokens"] == 0
    assert migrate_tree(old)["sampling"]["prefill_parts"] == 1
    today["sampling"]["length_block"] = 256
    today["train"]["share_prompts"] = False
    today["sampling"]["compact_rows"] = 0
    today["sampling"]["lookup_tokens"] = 0
    today["sampling"]["prefill_parts"] = 1
    assert migrate_tree(old) == today


def test_a_run_written_before_the_field_renames_resumes_without_a_change(cache, tmp_path, uninterrupted):
    shutil.copytree(uninterrupted[0], tmp_path, dirs_exist_ok=True)
    stored = json.loads((tmp_path / "config.json").read_text())
    with open(os.path.join(REPO, "tests", "fixtures", "config_4d0fa85_memtrain_tiny.json"), encoding="utf-8") as f:
        stored["qa"] = json.load(f)["qa"]  # the qa section as the old code wrote it
    del stored["agent"]["rewards"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    _, summary = _train(_tiny(cache, **{"train.steps": 6}), tmp_path)  # no --allow_config_change needed
    assert summary["start_step"] == 4 and _steps(tmp_path) == [1, 2, 3, 4, 5, 6]
    assert set(read_history(str(tmp_path))[-1]["changed"]) == {"train.steps"}


# ------------------------------------------------------------------------------------------------ refusals


def test_settings_that_defeat_the_run_are_refused(cache, tmp_path):
    with pytest.raises(UsageError, match="keep_checkpoints=0 would keep no checkpoint"):
        Trainer(_tiny(cache, **{"train.keep_checkpoints": 0}), str(tmp_path / "a"), log=_quiet)
    with pytest.raises(UsageError, match="leaves 1 of the task's .* fewer than the 2 a step needs"):
        Trainer(_tiny(cache, **{"train.eval_episodes": 31}), str(tmp_path / "b"), log=_quiet)
    with pytest.raises(UsageError, match="is ignored with config.model.source='init'"):
        Trainer(_tiny(cache, **{"model.path": "/some/model"}), str(tmp_path / "c"), log=_quiet)
    # Checkpointing explicitly off: the run trains and keeps none.
    _, summary = _train(_tiny(cache, **{"train.checkpoint_every": 0, "train.keep_checkpoints": 0}), tmp_path / "d")
    assert summary["steps"] == 4 and summary["checkpoint_step"] is None
    assert RunCheckpointer(str(tmp_path / "d")).steps() == []


def test_sigterm_before_the_first_step_saves_nothing_and_says_so(cache, tmp_path):
    trainer = Trainer(_tiny(cache), str(tmp_path), log=_quiet)
    trainer._on_sigterm(signal.SIGTERM, None)  # SIGTERM during the evaluation before training
    summary = trainer.train()
    assert summary["preempted"] and summary["steps"] == 0 and summary["checkpoint_step"] is None
    assert RunCheckpointer(str(tmp_path)).steps() == []


# ------------------------------------------------------------------------------------------------ the CLI


def _cli(*args, cwd=REPO, timeout=600):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "memtrain_jax.tools.main", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands_and_flags():
    for args in (["--help"], ["help"]):
        done = _cli(*args)
        assert done.returncode == 0 and "commands:" in done.stdout
        assert all(f"  {c} " in done.stdout for c in ("train", "eval", "export", "eval-qa", "compare", "plan"))
    for args in (["train", "--help"], ["help", "train"]):
        done = _cli(*args)
        assert done.returncode == 0 and "--allow_config_change" in done.stdout and "--workdir" in done.stdout
    done = _cli("export", "--help")
    assert done.returncode == 0 and "--out" in done.stdout and "--allow_config_change" not in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--config.steps=3"], "--config.steps: config has no field 'steps'; did you mean train.steps"),
        (["train", "--config.train.stepz=3"], "config has no field 'train.stepz'; did you mean train.steps"),
        (["train", "--config.train.steps=abc"], "invalid literal for int()"),
        (["train", "--no_such_flag"], "Unknown command line flag 'no_such_flag'"),
        (["trian"], "unknown command 'trian'"),
        (["train", "--config", "configs/nope.py"], "Config file 'configs/nope.py' not found"),
        (["eval-qa", "--limit=-5"], "--limit must be >= 0"),
        (["compare", "--arms=a=/no/such/run"], "workdir '/no/such/run' does not exist"),
        (["eval-qa", "--objectives=1,2"], "--objectives sets search QA's lengths"),
        (["eval-search", "--num-docs=5"], "--num-docs sets long-text QA's lengths"),
        (["eval-search", "--objectives=0"], "--objectives must be positive numbers of questions an episode, got [0]"),
    ],
)
def test_refusals_are_one_line_with_exit_code_2(args, message):
    done = _cli(*args, cwd="/")  # config paths resolve from the package too
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("memtrain: error:")]
    assert len(lines) == 1 and message in lines[0], done.stderr[-2000:]
    assert "Traceback" not in done.stderr


def test_cli_on_a_run_directory(cache, tmp_path, uninterrupted):
    """A second writer, an export into the run and a corrupt latest checkpoint under `eval`."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    flags = [f"--workdir={workdir}", f"--config.data.cache_dir={cache}"]
    config = ["--config", "configs/memtrain.py:tiny", *[f"--config.{k}={v}" for k, v in RUN.items()]]
    proc = _holder(workdir)
    try:
        done = _cli("train", *config, *flags, "--config.rl.dapo_filter=False", "--config.train.async_checkpoints=False")
    finally:
        proc.kill()
        proc.wait()
    assert done.returncode == 2 and f"is being trained by pid {proc.pid}" in done.stderr.splitlines()[-1]
    before = (workdir / "config.json").read_text()
    for out in (workdir, workdir / "hf"):
        done = _cli("export", f"--workdir={workdir}", f"--out={out}")
        assert done.returncode == 2 and "inside the run directory" in done.stderr.splitlines()[-1]
    assert (workdir / "config.json").read_text() == before and not (workdir / "hf").exists()
    for path in (workdir / "checkpoints" / "4" / "state").rglob("*"):
        if path.is_file() and path.stat().st_size > 0:
            path.write_bytes(b"\0" * 7)
    done = _cli("eval", f"--workdir={workdir}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"{workdir}/checkpoints/4 cannot be restored" in done.stderr and "using step 2" in done.stderr
    assert f"[eval] {workdir} step 2:" in done.stdout
    assert (workdir / "checkpoints" / "4").is_dir()  # a reader never moves a checkpoint


def test_sigterm_exits_75_and_resumes(cache, tmp_path):
    workdir = tmp_path / "preempted"
    args = ["train", "--config", "configs/memtrain.py:tiny", f"--workdir={workdir}", "--config.train.steps=500"]
    args += ["--config.train.eval_every=0", "--config.train.checkpoint_every=1000", f"--config.data.cache_dir={cache}"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "memtrain_jax.tools.main", *args, "--config.rl.dapo_filter=False"]
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (workdir / METRICS_FILE).exists() and len((workdir / METRICS_FILE).read_text().splitlines()) >= 2:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=240)
    done = len(read_metrics(str(workdir)))
    assert proc.returncode == 75, output[-3000:]
    assert f"stopped by SIGTERM after saving the checkpoint of step {done}" in output


def test_diagnose_reports_memory_and_answer_shares(uninterrupted):
    """`memtrain diagnose` on a tiny run: every held-out episode's final memory and answer, each share with its n;
    the warm-up's own examples; and a reader that leaves the run directory as it was."""
    workdir = uninterrupted[0]
    before = sorted(p.name for p in workdir.iterdir())
    done = _cli("diagnose", f"--workdir={workdir}", "--limit=2", "--warmup")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert f"[diagnose] {workdir} step 4, the first 2 held-out episodes (greedy)" in out
    finals = [line for line in out.splitlines() if line.startswith(("  final memory holds", "  E2E accuracy"))]
    assert len(finals) == 2 and all(line.endswith("(n 2)") for line in finals)
    assert "the warm-up's own examples, greedy" in out and "recall answers (the target's entity)" in out
    bad = _cli("diagnose", f"--workdir={workdir}", "--overfit=0")
    assert bad.returncode == 2 and "memtrain: error: --overfit needs N >= 1 GRPO steps, got 0." in bad.stderr
    assert sorted(p.name for p in workdir.iterdir()) == before
