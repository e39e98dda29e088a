"""Downstream task RL through the GRPO trainer: init_from a MemTrain run, the long-text and search QA tasks."""

from __future__ import annotations

import dataclasses
import json
import logging

import jax
import numpy as np
import pytest
from run_configs import run_config

from memtrain_jax.checkpoint.orbax_io import CheckpointMismatchError, restore_run_params
from memtrain_jax.config import UsageError, load_config
from memtrain_jax.model import init_params
from memtrain_jax.train import Trainer, read_metrics


def _quiet(_message):
    pass


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("task-cache")


@pytest.fixture(scope="module")
def memtrain_run(cache, tmp_path_factory):
    """A 2-step MemTrain run of the tiny model: (workdir, final state)."""
    workdir = tmp_path_factory.mktemp("memtrain")
    config = run_config("memtrain.py:tiny", cache, **{"train.steps": 2, "train.eval_every": 0})
    summary = Trainer(config, str(workdir), log=_quiet).train()
    return workdir, summary["state"]


def test_task_rl_starts_from_the_memtrain_checkpoint_and_never_trains_on_dev(cache, tmp_path, memtrain_run):
    source, state = memtrain_run
    config = run_config("task.py:tiny", cache, init_from=str(source))
    trainer = Trainer(config, str(tmp_path / "task"), log=_quiet)
    setup = trainer.setup
    assert setup.task == "long_qa" and setup.init_step == 2
    for a, b in zip(_leaves(setup.policy.params), _leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)  # the MemTrain run's final parameters, not the base model's
    summary = trainer.train()
    records = setup.num_items
    train_slots = len(setup.qa.train)
    assert trainer.train_slots == train_slots and trainer.eval_slots == [train_slots, train_slots + 1]
    assert records == train_slots + len(setup.qa.dev)
    seen = [i % records for r in read_metrics(str(tmp_path / "task")) for i in r["episode_ids"]]
    assert seen and max(seen) < train_slots  # dev questions are only evaluated
    assert summary["after"]["episodes"] == config.train.eval_episodes
    changed = [
        not np.array_equal(a, b) for a, b in zip(_leaves(summary["state"].params), _leaves(state.params), strict=True)
    ]
    assert any(changed)  # the task's GRPO steps updated the policy
    # An episode reads a context of qa.train_num_docs documents of its record, in chunks of chunk_size tokens.
    batch = setup.eval_batch([0])
    (episode,), _ = setup.episodes(batch)
    assert episode.answer == setup.qa.train[0].answers
    text = setup.tokenizer.decode(np.concatenate(episode.chunks).tolist())
    assert text.count("Document ") == config.qa.train_num_docs and setup.qa.train[0].supporting[0][1] in text


def test_search_task_trains_on_search_turns(cache, tmp_path):
    config = run_config("task.py:tiny,search", cache)
    trainer = Trainer(config, str(tmp_path / "search"), log=_quiet)
    setup = trainer.setup
    assert setup.task == "search_qa" and all(len(r.golds) == 2 for r in setup.qa.train)
    initial = _leaves(setup.policy.params)
    batch = next(iter(setup.dataset(num_slots=trainer.train_slots)))
    result = setup.rollout(batch, 0)
    assert len(result.trajectories) == len(batch["record"]) * config.agent.group_size
    assert all(1 <= len(t.memory_turns) + 1 <= config.search.max_turns for t in result.trajectories)
    # A random model never writes a well-formed action: every episode is a counted failure scoring 0.
    assert all(t.failure and t.correct == 0.0 for t in result.trajectories)
    evaluation = trainer.evaluate(setup.policy.params)  # the held-out figures count the failures too
    assert evaluation["malformed"] + evaluation["no_answer"] == 1.0 and evaluation["score"] == 0.0
    summary = trainer.train()
    records = read_metrics(str(tmp_path / "search"))
    assert [r["malformed"] + r["no_answer"] for r in records] == [1.0] * config.train.steps
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(summary["state"].params), initial, strict=True))


def test_init_from_refuses_a_run_of_another_model(cache, memtrain_run):
    source, state = memtrain_run
    from memtrain_jax.model import ModelConfig

    shapes = jax.tree.map(lambda x: x.shape, state.params)
    vocab = shapes["embedder"]["embedding"][0]
    other = dataclasses.replace(
        ModelConfig.from_dict({**load_config("models.py:tiny").to_dict(), "vocab_size": vocab}), hidden_size=48
    )
    abstract = jax.eval_shape(lambda: init_params(other, jax.random.key(0)))
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])),
        abstract,
    )
    with pytest.raises(CheckpointMismatchError, match="does not fit this model"):
        restore_run_params(str(source), abstract)
    with pytest.raises(FileNotFoundError, match="not a trained memtrain workdir"):
        restore_run_params(str(source / "nowhere"), abstract)


def test_init_from_reads_a_runs_parameters_without_orbax_warnings(memtrain_run, caplog):
    """restore_run_params returns the run's last parameters exactly, and reading them logs no warning (a
    Checkpointer's metadata call looked for step metadata in the item folder and warned on every init_from)."""
    source, state = memtrain_run
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), state.params)
    with caplog.at_level(logging.WARNING):
        step, params = restore_run_params(str(source), abstract)
    assert step == 2
    for a, b in zip(_leaves(params), _leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_eval_qa_and_compare_write_their_tables(cache, tmp_path, memtrain_run, monkeypatch):
    from memtrain_jax.data.qa import build_context
    from memtrain_jax.tools import downstream

    source, _ = memtrain_run
    base = run_config("memtrain.py:tiny", cache)
    config = downstream.qa_config(base, "long_qa", num_docs=[2, 4], limit=3, baseline=True)
    results = downstream.eval_qa(config, str(tmp_path / "eval"))
    with open(tmp_path / "eval" / "results.json", encoding="utf-8") as f:
        written = json.load(f)
    assert written["num_docs"] == written["readers"]["memory_agent"] == results["num_docs"]
    assert set(written["readers"]) == {"memory_agent", "full_context"}
    from memtrain_jax.tasks import AgentSetup

    setup = AgentSetup.build(config, log=None)
    for n in (2, 4):
        row = written["num_docs"][str(n)]
        assert {"em", "sub_em", "f1", "questions", "mean_tokens"} <= set(row) and row["questions"] == 3
        contexts = [build_context(r, setup.qa.distractors, base.seed, num_docs=n) for r in setup.qa.dev]
        assert row["mean_tokens"] == np.mean([len(setup.tokenizer.encode(c.text)) for c in contexts])
    with open(tmp_path / "eval" / "answers.jsonl", encoding="utf-8") as f:
        assert len(f.readlines()) == 2 * 2 * 3  # readers x lengths x questions

    evaluations = []
    long_qa = downstream._long_qa
    monkeypatch.setattr(downstream, "_long_qa", lambda *a, **k: evaluations.append(1) or long_qa(*a, **k))
    arms = downstream.parse_arms(f"memtrain={source},again={source}@2")  # @2: the latest, named by its step
    compared = downstream.compare(config, str(tmp_path / "compare"), arms)
    assert list(compared["arms"]) == ["base", "memtrain", "again"]
    assert compared["steps"]["memtrain"] == compared["steps"]["again"] == 2
    # An arm with an evaluated arm's parameters, bit for bit, takes its row without a second evaluation.
    assert len(evaluations) == 2 and compared["arms"]["again"] == compared["arms"]["memtrain"]
    # The base row is the same evaluation as eval-qa's (same questions, same sampling seeds).
    for n in ("2", "4"):
        for key in ("em", "sub_em", "f1", "questions", "mean_tokens"):
            assert compared["arms"]["base"][n][key] == written["num_docs"][n][key]


def test_eval_search_and_compare_score_the_same_questions_by_objectives(cache, tmp_path, memtrain_run):
    """eval-search at 1 and 2 objectives an episode scores the same dev questions at both; compare with a search
    config evaluates every arm on them (the base row is eval-search's, the same seeds)."""
    from memtrain_jax.tasks import AgentSetup
    from memtrain_jax.tools import downstream

    source, _ = memtrain_run
    config = downstream.qa_config(run_config("task.py:tiny,search", cache), "search_qa", limit=4)
    results = downstream.eval_search(config, str(tmp_path / "search"), [1, 2])
    with open(tmp_path / "search" / "search_results.json", encoding="utf-8") as f:
        written = json.load(f)
    ids = [r.id for r in AgentSetup.build(config, log=None).qa.dev_questions]
    assert len(ids) == 4 and written["questions"] == 4 and set(written["objectives"]) == {"1", "2"}
    for k, episodes in (("1", 4), ("2", 2)):
        cell = written["objectives"][k]
        assert cell["episodes"] == episodes and cell["items"]["id"] == ids and cell["questions"] == 4
        assert cell["em"] == np.mean(cell["items"]["em"]) and 0 <= cell["malformed"] <= 1
    with open(tmp_path / "search" / "search_answers.jsonl", encoding="utf-8") as f:
        assert len(f.readlines()) == 4 + 2  # one line an episode
    compared = downstream.compare(config, str(tmp_path / "compare"), [("memtrain", str(source))], objectives=[1, 2])
    assert compared["task"] == "search_qa" and list(compared["arms"]) == ["base", "memtrain"]
    timing = ("seconds", "questions_per_s", "tokens_per_s")
    for k in ("1", "2"):
        base = {key: v for key, v in compared["arms"]["base"][k].items() if key not in timing}
        assert base == {key: v for key, v in results["objectives"][k].items() if key not in timing}
        assert compared["arms"]["memtrain"][k]["items"]["id"] == ids
    with pytest.raises(ValueError, match="positive numbers of questions"):
        downstream.eval_search(config, str(tmp_path / "bad"), [0])


def test_bad_downstream_arguments(cache, tmp_path, memtrain_run):
    from memtrain_jax.tools import downstream

    source, _ = memtrain_run
    with pytest.raises(ValueError, match="name=WORKDIR"):
        downstream.parse_arms("runs/x")
    with pytest.raises(FileNotFoundError, match="Arm 'a': workdir"):
        downstream.parse_arms(f"a={tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="unique and not 'base'"):
        downstream.parse_arms(f"base={source}")
    with pytest.raises(FileNotFoundError, match=r"Arm 'a': .* has no checkpoint of step 1 \(it has \[2\]\)"):
        downstream.parse_arms(f"a={source}@1")
    with pytest.raises(UsageError, match="must be a number"):
        downstream.parse_arms(f"a={source}@last")
    assert downstream.parse_arms(f"a={source}@2, b={source}") == [("a", f"{source}@2"), ("b", str(source))]
    with pytest.raises(ValueError, match="positive numbers of documents"):
        downstream.qa_config(run_config("memtrain.py:tiny", cache), "long_qa", num_docs=[0])
    config = downstream.qa_config(run_config("memtrain.py:tiny", cache), "long_qa", num_docs=[10**6], limit=1)
    with pytest.raises(ValueError, match="distractors, but the pool has only"):
        downstream.eval_qa(config, str(tmp_path / "too-long"))
    assert not (tmp_path / "too-long" / "results.json").exists()


def test_search_format_warmup_trains_on_the_episodes_turns(cache, tmp_path):
    """The search task's format steps train on MEM1-format turns of the batch's questions (two searches and one
    answer for two objectives), not on MemTrain's examples."""
    config = run_config(
        "task.py:tiny,search",
        cache,
        **{"train.format_steps": 1, "train.steps": 1, "train.eval_every": 0, "search.turn_tokens": 96},
    )
    trainer = Trainer(config, str(tmp_path / "search-format"), log=_quiet)
    trainer.train()
    (record,) = read_metrics(str(tmp_path / "search-format"))
    assert record["phase"] == "format" and record["episodes"] == config.data.loader.batch_size
    assert record["sequences"] == 3 * record["episodes"] and np.isfinite(record["loss"])


def test_a_task_registered_in_a_few_lines_is_chosen_by_name(cache):
    """A new task is one class and one config line: here MemTrain reading only each document's first chunk."""
    from memtrain_jax.tasks import TASK_TYPES, AgentSetup, MemTrainTask, register

    @register
    class FirstChunk(MemTrainTask):
        name = "first_chunk"

        def episodes(self, setup, batch):
            episodes, skipped = super().episodes(setup, batch)
            return [dataclasses.replace(e, chunks=e.chunks[:1], chunk_texts=None) for e in episodes], skipped

    try:
        config = run_config("memtrain.py:tiny", cache, task="first_chunk")
        setup = AgentSetup.build(config, log=None)
        assert setup.task == "first_chunk" and isinstance(setup.task_impl, FirstChunk)
        batch = setup.eval_batch(setup.split_items(2)[1])
        result = setup.rollout(batch, 0)
        assert all(batch["num_chunks"] > 1)  # the documents have several chunks; the task reads one
        assert [len(t.memory_turns) for t in result.trajectories] == [1] * len(result.trajectories)
        with pytest.raises(ValueError, match="'no_such_task'"):
            AgentSetup.build(run_config("memtrain.py:tiny", cache, task="no_such_task"), log=None)
    finally:
        TASK_TYPES.pop("first_chunk")


def test_the_warm_up_end_is_kept_and_a_grpo_run_starts_from_it(cache, tmp_path):
    """The format warm-up's last step survives checkpoint rotation, and `init_from=RUN@STEP` loads exactly it: the
    parameters of a run that stopped at the warm-up's end (the control arm, by determinism)."""
    overrides = {"train.format_steps": 2, "train.eval_every": 0, "train.checkpoint_every": 2}
    run = tmp_path / "run"
    Trainer(
        run_config("memtrain.py:tiny", cache, **overrides, **{"train.steps": 6, "train.keep_checkpoints": 1}),
        str(run),
        log=_quiet,
    ).train()
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir()) == [2, 6]
    warmup = Trainer(
        run_config("memtrain.py:tiny", cache, **overrides, **{"train.steps": 2}), str(tmp_path / "w"), log=_quiet
    ).train()
    branch = Trainer(
        run_config("memtrain.py:tiny", cache, init_from=f"{run}@2", **{"train.format_steps": 0}),
        str(tmp_path / "branch"),
        log=_quiet,
    )
    assert branch.setup.init_step == 2
    for a, b in zip(_leaves(branch.setup.policy.params), _leaves(warmup["state"].params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(UsageError, match="must be a number"):
        Trainer(run_config("memtrain.py:tiny", cache, init_from=f"{run}@last"), str(tmp_path / "bad"), log=_quiet)
