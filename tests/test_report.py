"""Held-out tables: the warm-up-only control arm inside a run, paired differences, and `memtrain compare-runs`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from run_configs import run_config

from memtrain_jax import stats
from memtrain_jax.config import UsageError
from memtrain_jax.tools import report
from memtrain_jax.train import Trainer, read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _record(step, recall, ids=None, e2e=None):
    n = len(recall)
    e2e = [0.0] * n if e2e is None else e2e
    items = {
        "episode_id": list(range(n)) if ids is None else ids,
        "acc_e2e": e2e,
        "reward_e2e": [a + 0.5 * r for a, r in zip(e2e, recall, strict=True)],
        "acc_recall": recall,
        "answer_found": [1.0] * n,
        "recall_found": [1.0] * n,
    }
    return {"step": step, "episodes": n, "items": items}


def test_grpo_effect_is_after_minus_warmup_on_the_same_episodes():
    n = 40
    rng = np.random.default_rng(0)
    warm = [float(x) for x in (rng.random(n) < 0.25)]
    after = [1.0 if (w or i % 2) else 0.0 for i, w in enumerate(warm)]  # the warm-up's successes kept, more added
    arms, diffs = report.training_arms(
        {"before": _record(0, [0.0] * n), "warmup": _record(5, warm), "after": _record(9, after)}, format_steps=5
    )
    assert [a[0] for a in arms] == ["before", "warm-up (step 5)", "after GRPO"]
    table = report.arms_table(arms, diffs)
    recall_line = next(line for line in table.splitlines() if line.startswith("recall accuracy"))
    expected = stats.paired_difference(warm, after)
    assert abs(expected[0] - (sum(after) - sum(warm)) / n) < 1e-12  # the paired mean is the mean of the differences
    assert recall_line.endswith(stats.format_interval(*expected))
    lo, hi = stats.wilson_interval(sum(after), n)
    assert stats.format_interval(sum(after) / n, lo, hi) in recall_line
    assert "recall accuracy (R_I) (GRPO: after - warm-up)" in table.splitlines()[-1]
    assert "E2E accuracy" not in table.splitlines()[-1]  # 0 -> 0 moves nothing
    # without the evaluation before training (train.eval_before=False): warm-up and after, GRPO's difference
    arms, diffs = report.training_arms({"warmup": _record(5, warm), "after": _record(9, after)}, format_steps=5)
    assert [a[0] for a in arms] == ["warm-up (step 5)", "after GRPO"] and diffs == [("GRPO: after - warm-up", 0, 1)]
    # without a warm-up evaluation: one difference, after - before
    arms, diffs = report.training_arms({"before": _record(0, warm), "after": _record(9, warm)}, format_steps=0)
    assert [d[0] for d in diffs] == ["after - before (paired)"]
    assert "no paired difference excludes 0" in report.arms_table(arms, diffs).splitlines()[-1]


def test_grpo_signal_counts_updates_and_groups_with_equal_rewards():
    records = [
        {"step": 1, "phase": "format"},
        {"step": 2, "phase": "grpo", "skipped_update": 1, "groups_e2e": 2, "groups_e2e_dropped": 2,
         "groups_recall": 8, "groups_recall_dropped": 8, "reward_e2e": 0.0},
        {"step": 3, "phase": "grpo", "skipped_update": 0, "groups_e2e": 2, "groups_e2e_dropped": 1,
         "groups_recall": 8, "groups_recall_dropped": 5, "reward_e2e": 0.25},
        {"step": 4, "phase": "grpo", "skipped_update": 1, "rollout_s": 1.0},  # every episode skipped: no groups
    ]  # fmt: skip
    line = report.grpo_signal(records)
    assert line == (
        "GRPO signal: 1 of 3 GRPO steps updated; equal rewards (no advantage) in 3/4 e2e groups and "
        "13/16 recall groups, mean training R_E 0.125"
    )
    assert report.grpo_signal(records[:1]) is None  # a warm-up-only run has no GRPO line
    # without DAPO nothing is dropped, yet groups with equal rewards still teach nothing: they are counted
    no_dapo = [{**r, "groups_e2e_dropped": 0, "groups_e2e_uniform": r.get("groups_e2e_dropped")} for r in records]
    assert "in 3/4 e2e groups" in report.grpo_signal(no_dapo)


def test_arms_of_other_episodes_are_refused():
    arms = [("a", _record(1, [1.0, 0.0])), ("b", _record(1, [1.0, 0.0], ids=[0, 7]))]
    with pytest.raises(UsageError, match="'a' and 'b' were evaluated on other held-out episodes"):
        report.arms_table(arms, [("b - a", 0, 1)])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("report-cache")


def _train(cache, workdir, **overrides):
    config = run_config("memtrain.py:tiny", cache, **{"train.format_steps": 1, "train.eval_every": 3, **overrides})
    return Trainer(config, str(workdir), log=lambda _: None).train(), config


def test_the_warmup_end_is_evaluated_and_equals_the_warmup_only_arm(cache, tmp_path):
    """A run evaluates the end of its format warm-up even off the eval cadence, and that evaluation is the
    control arm: a run of the warm-up alone (same seed and data) evaluates to the same per-episode items."""
    full, config = _train(cache, tmp_path / "full", **{"train.steps": 3})
    assert [r["step"] for r in read_metrics(str(tmp_path / "full"), "eval.jsonl")] == [0, 1, 3]
    control, _ = _train(cache, tmp_path / "control", **{"train.steps": 1})
    assert control["after"]["items"] == full["warmup"]["items"]
    from memtrain_jax.tools.main import _closing_table

    table = _closing_table(str(tmp_path / "full"), config, 3)
    assert "warm-up (step 1)" in table.splitlines()[0] and "GRPO: after - warm-up" in table.splitlines()[0]
    assert table.splitlines()[-1].startswith(f"n = {full['after']['episodes']} held-out episodes")


def _cli(*args):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    command = [sys.executable, "-m", "memtrain_jax.tools.main", *args]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def _fake_run(path, records):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"agent": {"answer_extractor": "boxed", "imr": True}}))
    (path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_the_closing_table_pairs_only_evaluations_of_the_last_ones_kind(tmp_path):
    """train.eval_probes (and eval_samples) may change on resume: the closing table pairs the evaluations of the
    final one's kind and leaves the others out, rather than refusing the run's table."""
    import ml_collections

    from memtrain_jax.tools.main import _closing_table

    n = 30
    many = lambda step, recall: {**_record(step, recall), "probes": 8}
    warm, after = [i % 4 / 8 for i in range(n)], [i % 5 / 8 for i in range(n)]
    _fake_run(tmp_path / "run", [_record(0, [0.0] * n), many(4, warm), many(8, after)])
    agent = {"answer_extractor": "boxed", "imr": True}
    config = ml_collections.ConfigDict({"train": {"format_steps": 4}, "agent": agent})
    table = _closing_table(str(tmp_path / "run"), config, 8)
    assert table.splitlines()[0].startswith("held-out, greedy, 8 probes an episode")
    assert "before" not in table.splitlines()[0] and "GRPO: after - warm-up" in table.splitlines()[0]
    recall = next(line for line in table.splitlines() if line.startswith("recall accuracy"))
    assert recall.endswith(stats.format_interval(*stats.paired_difference(warm, after)))


def test_compare_runs_pairs_runs_from_their_records(tmp_path):
    n = 30
    base = [float(i % 5 == 0) for i in range(n)]
    better = [float(i % 5 == 0 or i % 3 == 0) for i in range(n)]
    _fake_run(tmp_path / "warm", [_record(0, [0.0] * n), _record(4, base)])
    _fake_run(tmp_path / "grpo", [_record(0, [0.0] * n), _record(4, base), _record(8, better)])
    done = _cli("compare-runs", f"--runs=control={tmp_path / 'warm'},memtrain={tmp_path / 'grpo'}")
    assert done.returncode == 0, done.stderr[-2000:]
    header, *rows = done.stdout.strip().splitlines()
    assert "control@4" in header and "memtrain@8" in header and "memtrain@8 - control@4" in header
    recall = next(r for r in rows if r.startswith("recall accuracy"))
    assert recall.endswith(stats.format_interval(*stats.paired_difference(base, better)))
    done = _cli("compare-runs", f"--runs={tmp_path / 'grpo'}@4,{tmp_path / 'warm'}")  # a step of a run
    assert done.returncode == 0 and "warm@4 - grpo@4" in done.stdout
    assert "no paired difference excludes 0" in done.stdout  # the same items: every difference is 0
    done = _cli("compare-runs", f"--runs={tmp_path / 'grpo'}@5,{tmp_path / 'warm'}")
    assert done.returncode == 2 and "no evaluation at step 5" in done.stderr.splitlines()[-1]
    assert "Traceback" not in done.stderr


def test_held_out_episodes_are_the_last_usable_ones(cache):
    """`eval_episodes` counts episodes that are evaluated: pivots whose masks all fall beyond max_chunks are
    passed over, and training keeps every pivot before the first held-out one."""
    from memtrain_jax.tasks import AgentSetup

    config = run_config("memtrain.py:tiny", cache, **{"data.chunking.max_chunks": 1})
    setup = AgentSetup.build(config)
    everything = setup.eval_batch(list(range(setup.num_items)))["usable"]
    assert 0 < everything.sum() < setup.num_items  # this setting skips some pivots
    want = int(everything.sum()) // 2
    train, slots = setup.split_items(want)
    assert len(slots) == want and all(everything[slots]) and train == min(slots)
    assert [s for s in range(train, setup.num_items) if everything[s]] == slots  # the last usable ones
    train, slots = setup.split_items(setup.num_items)  # more than there are: all usable but the first pivot
    assert train == 1 and slots == [s for s in range(1, setup.num_items) if everything[s]]


def test_sampled_evaluations_are_means_with_bootstrap_intervals_and_are_not_mixed_with_greedy(tmp_path):
    n = 30
    rng = np.random.default_rng(1)
    warm = [float(x) for x in rng.integers(0, 5, n) / 4]  # avg@4: each episode's share of 4 correct samples
    after = [min(1.0, w + 0.25 * (i % 2)) for i, w in enumerate(warm)]
    sampled = lambda step, recall: {**_record(step, recall), "samples": 4, "temperature": 0.7}
    table = report.arms_table([("w", sampled(4, warm)), ("g", sampled(8, after))], [("g - w", 0, 1)])
    assert table.splitlines()[0].startswith("held-out, avg@4, T 0.7 (95% intervals)")
    recall = next(line for line in table.splitlines() if line.startswith("recall accuracy"))
    mean, lo, hi, _ = stats.mean_with_interval(after, binary=False)  # a mean of samples: the bootstrap's interval
    assert stats.format_interval(mean, lo, hi) in recall
    assert recall.endswith(stats.format_interval(*stats.paired_difference(warm, after)))
    # no difference outside 0: the footnote gives the resolution of these items (their paired intervals), not
    # the 0/1 bound z / sqrt(n)
    same = report.arms_table([("w", sampled(4, warm)), ("g", sampled(8, warm[::-1]))], [("g - w", 0, 1)])
    _, lo, hi = stats.paired_difference(warm, warm[::-1])
    assert lo < 0 < hi and same.splitlines()[-1].endswith(
        f"(the widest paired interval here is +/-{(hi - lo) / 2:.3f})"
    )
    with pytest.raises(UsageError, match="evaluated differently"):
        report.arms_table([("w", _record(4, [1.0] * n)), ("g", sampled(8, after))], [("g - w", 0, 1)])
    # `memtrain eval --samples` writes eval-STEP-kK.json beside the run's config: an arm of compare-runs
    _fake_run(tmp_path / "run", [_record(4, [0.0] * n)])
    (tmp_path / "run" / "eval-4-k4.json").write_text(json.dumps(sampled(4, warm)))
    (tmp_path / "run" / "eval-8-k4.json").write_text(json.dumps(sampled(8, after)))
    run = tmp_path / "run"
    done = _cli("compare-runs", f"--runs=w={run / 'eval-4-k4.json'},g={run / 'eval-8-k4.json'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "avg@4" in done.stdout and "g@8 - w@4" in done.stdout


def test_a_sampled_evaluation_averages_each_episodes_samples(cache, tmp_path):
    """train.eval_samples=K: K trajectories per held-out episode at the rollout temperature; each episode's item is
    the mean over its trajectories, from the same seeds at every evaluation."""
    from memtrain_jax.train.trainer import EVAL_SEED_STEP

    overrides = {"train.steps": 1, "train.eval_every": 0, "train.eval_episodes": 4}
    config = run_config("memtrain.py:tiny", cache, **overrides)
    trainer = Trainer(config, str(tmp_path / "run"), log=lambda _: None)
    params = trainer.setup.policy.params
    first = trainer.evaluate(params, 0, samples=3)
    assert first["samples"] == 3 and first["items"] == trainer.evaluate(params, 5, samples=3)["items"]
    setup = trainer.setup
    agent = dataclasses.replace(setup.agent, group_size=3, recall_group_size=3, dapo_filter=False)
    result = setup.rollout(setup.eval_batch(trainer.eval_slots), EVAL_SEED_STEP, setup.sampler_policy, agent)
    by_episode = {}
    for t in result.trajectories:
        by_episode.setdefault(int(result.episodes[t.episode].episode_id), []).append(float(t.correct))
    assert first["items"]["episode_id"] == sorted(by_episode)
    assert first["items"]["acc_e2e"] == [float(np.mean(by_episode[e])) for e in sorted(by_episode)]
    assert all(len(v) == 3 for v in by_episode.values())
    greedy = trainer.evaluate(params, 0)
    assert greedy["samples"] == 1 and set(greedy["items"]["acc_e2e"]) <= {0.0, 1.0}


def test_a_multi_probe_evaluation_averages_each_episodes_greedy_probes(cache, tmp_path):
    """train.eval_probes=P: one greedy memory rollout per held-out episode and the recall answers of its first P
    trajectories' probes; each episode's recall the mean over them. A scripted policy answers a probe right when
    its gold has an even number of characters: the expected items follow from the probes drawn by hand."""
    from memtrain_jax.agent import ScriptedPolicy
    from memtrain_jax.agent.rollout import episodes_from_batch
    from memtrain_jax.data.probes import draw_probe

    p = 4
    overrides = {"train.steps": 1, "train.eval_every": 0, "train.eval_episodes": 6, "agent.recall_tokens": 48}
    trainer = Trainer(run_config("memtrain.py:tiny", cache, **overrides), str(tmp_path / "run"), log=lambda _: None)
    setup = trainer.setup
    tokenizer, agent = setup.tokenizer, setup.agent
    episodes, _ = episodes_from_batch(setup.eval_batch(trainer.eval_slots), tokenizer)
    answers = {}  # the masked chunk's ids -> the right answer or a wrong one
    expected = {}
    for episode in episodes:
        texts = [tokenizer.decode(c.tolist()) for c in episode.chunks]
        right = []
        for sample in range(p):
            probe = draw_probe(
                texts,
                setup.config.seed,
                episode.episode_id,
                sample,
                extractor=setup.extractor,
                mode=agent.probe_mode,
                target_token=agent.target_token,
                max_occurrences=agent.probe_max_occurrences,
                max_words=agent.max_words,
            )
            right.append(None if probe is None else float(len(probe.gold) % 2 == 0))
            if probe is not None:
                answers[tuple(tokenizer.encode(probe.masked_chunk))] = probe.gold + ("" if right[-1] else "x")
        kept = [r for r in right if r is not None]
        expected[int(episode.episode_id)] = (float(np.mean(kept)) if kept else None, right[0])
    assert {0.0 < v[0] < 1.0 for v in expected.values() if v[0] is not None} == {True, False}  # some fractions

    def script(kind, prompt, row):
        if kind != "recall":
            return "\\boxed{nothing}" if kind == "answer" else "a memory"
        holds = lambda ids: any(prompt[i : i + len(ids)] == list(ids) for i in range(len(prompt)))
        found = [a for ids, a in answers.items() if holds(ids)]
        assert len(found) == 1, "a recall prompt holds one probe drawn by hand"
        return f"\\boxed{{{found[0]}}}"

    class Oracle(ScriptedPolicy):
        def update_params(self, params):  # the evaluation hands it the checkpoint's parameters: none here
            pass

    trainer.eval_policy = Oracle(tokenizer, script, trainer.stop_id)
    many = trainer.evaluate(None, 0, probes=p)
    assert many["probes"] == p and many["samples"] == 1
    ids = many["items"]["episode_id"]
    assert many["items"]["acc_recall"] == [expected[e][0] for e in ids]
    calls = trainer.eval_policy.calls
    assert sum(kind == "memory" for kind, _, _ in calls) == max(len(e.chunks) for e in episodes)
    assert all(len(prompts) == len(episodes) for kind, prompts, _ in calls if kind == "memory")  # once an episode
    one = trainer.evaluate(None, 0)  # P = 1: trajectory 0's probe, 0/1 items
    assert "probes" not in one and one["items"]["acc_recall"] == [expected[e][1] for e in ids]
    assert one["items"]["acc_e2e"] == many["items"]["acc_e2e"]
    # P probes are read as means (bootstrap intervals) and are never paired with a one-probe evaluation
    assert report.binary_item("acc_recall", one) and not report.binary_item("acc_recall", many)
    assert report.binary_item("acc_e2e", many) and report.eval_suffix(many) == f"-p{p}"
    table = report.arms_table([("a", many), ("b", many)], [("b - a", 0, 1)])
    assert table.splitlines()[0].startswith(f"held-out, greedy, {p} probes an episode (95% intervals)")
    with pytest.raises(UsageError, match="evaluated differently"):
        report.arms_table([("a", one), ("b", many)], [("b - a", 0, 1)])
    with pytest.raises(UsageError, match="not both"):
        trainer.evaluate(None, 0, samples=2, probes=p)
    with pytest.raises(UsageError, match="samples >= 1 and probes >= 1"):
        trainer.evaluate(None, 0, probes=0)  # 0 is refused, not read as the default


def test_a_sampled_evaluation_draws_the_papers_probes_whatever_training_draws(cache, tmp_path):
    """data.probes.shared and data.probes.in_memory are training choices: avg@K of a run trained with either is
    scored on the probes of a run trained without them (K probes of each episode, trajectory k's, drawn from the
    chunk alone), so compare-runs pairs the same items."""
    from memtrain_jax.train.trainer import EVAL_SEED_STEP

    overrides = {"train.steps": 1, "train.eval_every": 0, "train.eval_episodes": 4}
    probes = {}
    for choice in ("", "data.probes.shared", "data.probes.in_memory"):
        config = run_config("memtrain.py:tiny", cache, **overrides, **({choice: True} if choice else {}))
        trainer = Trainer(config, str(tmp_path / f"run{choice}"), log=lambda _: None)
        setup = trainer.setup
        assert (setup.agent.probe_shared, setup.agent.probe_in_memory) == (
            choice == "data.probes.shared",
            choice == "data.probes.in_memory",
        )
        result = setup.rollout(
            setup.eval_batch(trainer.eval_slots), EVAL_SEED_STEP, setup.sampler_policy, trainer.eval_agent(3)
        )
        probes[choice] = [(t.episode, t.sample, t.probe) for t in result.trajectories]
    assert probes["data.probes.shared"] == probes[""] == probes["data.probes.in_memory"]
    drawn = [p for _, _, p in probes[""] if p is not None]
    assert len({(p.step, p.gold, p.masked_chunk) for p in drawn}) > len(result.episodes)  # not one per episode


def test_overfit_trains_the_first_batch_and_scores_both_batches_before_and_after(cache, tmp_path):
    """`memtrain diagnose --overfit N`: N GRPO steps on the stream's first batch (the same state as the trainer's own
    steps on it, by hand; not the steps of the stream, which would read the second batch), and both batches scored
    before and after at one seed: the scores of rollouts by hand of each batch with each policy."""
    from memtrain_jax.agent import trajectory_rewards
    from memtrain_jax.tools.diagnose import OVERFIT_SEED_STEP, overfit, overfit_table

    config = run_config("memtrain.py:tiny", cache, **{"train.steps": 2, "train.eval_every": 0})
    trainer = Trainer(config, str(tmp_path / "run"), log=lambda _: None)
    setup = trainer.setup
    start = jax.device_get(trainer.initial_state().params)
    after, report = overfit(trainer, trainer.initial_state(), 2)

    iterator = iter(setup.dataset(num_slots=trainer.train_slots))
    batches = {"fixed": next(iterator), "fresh": next(iterator)}
    assert set(batches["fixed"]["episode_id"]).isdisjoint(batches["fresh"]["episode_id"])
    states = {}
    for name in batches:  # two steps on one batch, by hand
        state = trainer.initial_state()
        for step in range(2):
            state, _, _ = trainer.grpo_step(state, batches[name], step)
        states[name] = jax.device_get(state.params)
    same = jax.tree.map(np.array_equal, jax.device_get(after.params), states["fixed"])
    assert all(jax.tree.leaves(same))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, states["fixed"], states["fresh"])))
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, start, states["fixed"])))

    for name, batch in batches.items():
        for when, params in (("before", start), ("after", states["fixed"])):
            setup.sampler_policy.update_params(params)
            r_e, r_i, _ = trajectory_rewards(setup.rollout(batch, OVERFIT_SEED_STEP), setup.agent)
            assert report[name][when]["reward_e2e"] == [float(r) for r in r_e]
            recall = [float(i.mean()) if i.size else float("nan") for i in r_i]
            np.testing.assert_array_equal(report[name][when]["reward_recall"], recall)
    table = overfit_table(report)
    n = len(report["fixed"]["before"]["reward_e2e"])
    diff = np.mean(report["fixed"]["after"]["reward_e2e"]) - np.mean(report["fixed"]["before"]["reward_e2e"])
    assert re.search(rf"fixed batch: R_E \(n = {n}\).* {diff:.3f} \[", table)


def test_direction_params_move_the_start_along_the_update_its_reverse_or_a_random_step_of_its_size():
    """`memtrain diagnose --direction`: theta0 + s * d, d the update, its reverse, or per tensor a Gaussian direction
    with the update's norm on the weights it moved (the frozen ones stay theta0's); a bad arm is refused."""
    from memtrain_jax.tools.diagnose import direction_params

    rng = np.random.default_rng(3)
    theta0 = {"a": rng.standard_normal((4, 6)).astype(np.float32), "frozen": rng.standard_normal(5).astype(np.float32)}
    theta1 = {"a": theta0["a"] + 0.1 * rng.standard_normal((4, 6)).astype(np.float32), "frozen": theta0["frozen"]}
    theta1["a"][:2] = theta0["a"][:2]  # two frozen rows of a moved tensor (the lower layers of a stacked weight)
    delta = theta1["a"] - theta0["a"]
    np.testing.assert_allclose(direction_params(theta0, theta1, "plus")["a"], theta1["a"], atol=1e-6)
    np.testing.assert_allclose(direction_params(theta0, theta1, "minus")["a"], 2 * theta0["a"] - theta1["a"], atol=1e-6)
    np.testing.assert_allclose(direction_params(theta0, theta1, "plus:0.25")["a"], theta0["a"] + delta / 4, atol=1e-6)
    for arm, scale in (("random", 1.0), ("random:0.5", 0.5)):
        moved = direction_params(theta0, theta1, arm)
        step = moved["a"] - theta0["a"]
        np.testing.assert_array_equal(moved["frozen"], theta0["frozen"])
        np.testing.assert_array_equal(step[:2], 0.0)
        np.testing.assert_allclose(np.linalg.norm(step), scale * np.linalg.norm(delta), rtol=1e-5)
        cosine = float((step * delta).sum() / (np.linalg.norm(step) * np.linalg.norm(delta)))
        assert abs(cosine) < 0.9  # a direction of its own, not the update's
        np.testing.assert_array_equal(direction_params(theta0, theta1, arm)["a"], moved["a"])  # seeded
    for bad in ("up", "plus:0", "minus:x"):
        with pytest.raises(UsageError, match=re.escape(repr(bad))):
            direction_params(theta0, theta1, bad)
