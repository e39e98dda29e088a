"""`memtrain diagnose`: where a checkpoint's reward is lost, memory or answer (MemTrain runs).

A held-out accuracy near zero can mean two different things: the memory never keeps what a probe asks for, or
the memory keeps it and the answer still misses. GRPO needs different fixes for each (what the warm-up teaches
the memory writer, or the answerer), so this command separates them on greedy rollouts of held-out episodes:

- recall: per probe, whether the memory it is asked from holds the probed entity (case-insensitive), and the
  accuracy given that it does and given that it does not;
- final answer: whether the final memory holds the masked entity, whether an answer was extracted, E2E accuracy;
- warm-up fit (`--warmup`, runs with a format warm-up): greedy replies to the warm-up's own examples of the same
  episodes, by kind: a warm-up that does not reproduce its own targets leaves GRPO a near-zero base rate;
- fitting one batch (`--overfit N`): N GRPO steps of the run's own kind on one fixed batch, and the rewards of
  that batch and of a fresh one before and after: an update that raises the first and not the second fits the
  items it saw, not a skill (the check every RL pipeline should pass first: can it fit what it trains on?).
- the update's direction (`--direction plus,minus,random`): held-out evaluations of the run's starting policy
  moved along its update, along the reverse, and along a random direction of the same size: is a held-out change
  the update's own, or would any step of its size do as much?

Every share carries n and a Wilson 95 % interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from memtrain_jax import sharding, stats
from memtrain_jax.agent import trajectory_rewards
from memtrain_jax.config import UsageError

# The rollout seed step of the before/after measurements of `overfit` (apart from the training steps' 0..N-1).
OVERFIT_SEED_STEP = 1_000_003


def _holds(text: str, golds: str | Sequence[str]) -> bool:
    golds = [golds] if isinstance(golds, str) else list(golds)
    lowered = text.lower()
    return any(g and g.lower() in lowered for g in golds)


def rollout_rows(result: Any, decode: Callable[[list[int]], str]) -> tuple[list[dict], list[dict]]:
    """(one row per probed trajectory, one row per trajectory) of a greedy rollout (G1 = G2 = 1):
    probe rows {"held": memory at the probe's step holds the probed entity, "correct": recall EM};
    final rows {"held": the final memory holds the masked entity, "found": an answer was extracted, "correct"}."""
    probes, finals = [], []
    for traj in result.trajectories:
        golds = result.episodes[traj.episode].answer
        finals.append(
            {
                "held": _holds(decode(list(traj.memories[-1])), golds),
                "found": traj.prediction is not None,
                "correct": float(traj.correct),
            }
        )
        if traj.probe is not None and traj.recall_correct:
            memory = decode(list(traj.memories[traj.probe.step]))
            probes.append({"held": _holds(memory, traj.probe.gold), "correct": float(traj.recall_correct[0])})
    return probes, finals


def _share(values: Sequence[float]) -> str:
    mean, lo, hi, n = stats.mean_with_interval(list(values), binary=True)
    return f"{stats.format_interval(mean, lo, hi)} (n {n})"


def rollout_table(probes: list[dict], finals: list[dict]) -> str:
    held = [p["correct"] for p in probes if p["held"]]
    missing = [p["correct"] for p in probes if not p["held"]]
    lines = [
        "recall probes",
        f"  memory holds the probed entity   {_share([float(p['held']) for p in probes])}",
        f"  recall accuracy                  {_share([p['correct'] for p in probes])}",
        f"    when the memory holds it       {_share(held)}",
        f"    when it does not               {_share(missing)}",
        "final answers",
        f"  final memory holds the entity    {_share([float(f['held']) for f in finals])}",
        f"  answer extracted                 {_share([float(f['found']) for f in finals])}",
        f"  E2E accuracy                     {_share([f['correct'] for f in finals])}",
    ]
    if probes:
        kept, right = np.mean([p["held"] for p in probes]), np.mean(held) if held else float("nan")
        where = "the memory (it rarely keeps the entity)" if kept < 0.5 else "the answer (the memory keeps it)"
        lines.append(f"verdict: recall is lost mostly in {where}: kept {kept:.2f}, right when kept {right:.2f}")
    return "\n".join(lines)


def warmup_fit(trainer: Any, episodes: Sequence[Any], policy: Any, memory_prefix: int = 16) -> dict[str, list[float]]:
    """Greedy replies of `policy` to the format warm-up's own examples of `episodes`, by kind: recall and answer
    score 1 when the extracted answer matches the target's; memory when the reply's first `memory_prefix` tokens
    equal the target's."""
    from memtrain_jax.agent.credit import KIND_IDS
    from memtrain_jax.rewards import exact_match, extract_answer
    from memtrain_jax.tasks import format_examples

    setup = trainer.setup
    examples = format_examples(
        episodes,
        setup.builder,
        setup.tokenizer,
        setup.agent,
        trainer.stop_id,
        setup.extractor,
        np.random.default_rng([int(trainer.config.seed), 0, 13]),
        max_target=trainer.window,
        memory_target=trainer.train_config.format_memory,
        recall_entities=trainer.train_config.format_recall_entities,
    )
    budgets = {"memory": setup.agent.memory_tokens, "answer": setup.agent.answer_tokens}
    budgets["recall"] = setup.agent.recall_tokens
    out: dict[str, list[float]] = {}
    for kind, budget in budgets.items():
        rows = [i for i, k in enumerate(examples.kinds) if k == KIND_IDS[kind]]
        if not rows:
            continue
        prompts = [examples.prompts[i].tolist() for i in rows]
        replies = policy.generate(prompts, [budget] * len(rows), kind=f"diagnose_{kind}", seed=0)
        scores = []
        for j, i in enumerate(rows):
            reply = np.asarray(replies.tokens[j])[: int(replies.lengths[j])]
            target = examples.responses[i]
            if kind == "memory":
                scores.append(float(reply[:memory_prefix].tolist() == target[:memory_prefix].tolist()))
            else:
                extractor, last = setup.agent.answer_extractor, setup.agent.boxed_last_chars
                gold = extract_answer(setup.tokenizer.decode(target.tolist()), extractor, last)
                guess = extract_answer(setup.tokenizer.decode(reply.tolist()), extractor, last)
                scores.append(exact_match(guess, gold or ""))
        out[kind] = scores
    return out


def warmup_table(fit: dict[str, list[float]], memory_prefix: int = 16) -> str:
    names = {
        "memory": f"memory updates (first {memory_prefix} tokens equal the target)",
        "answer": "final answers (the target's entity)",
        "recall": "recall answers (the target's entity)",
    }
    lines = ["the warm-up's own examples, greedy"]
    lines += [f"  {names[kind]:<52} {_share(scores)}" for kind, scores in fit.items()]
    return "\n".join(lines)


def _memtrain_setup(trainer: Any) -> Any:
    """The trainer's setup; refuses a run of another task (its rollouts have no recall probes to count)."""
    if trainer.setup.task != "memtrain":
        raise ValueError(f"memtrain diagnose reads MemTrain runs; this run's task is {trainer.setup.task!r}.")
    return trainer.setup


def diagnose(trainer: Any, params: Any, episodes: int, warmup: bool) -> str:
    """The report for `params` on the first `episodes` held-out episodes of `trainer`'s run."""
    setup = _memtrain_setup(trainer)
    slots = trainer.eval_slots[:episodes]
    agent = trainer.eval_agent(1)  # the held-out probes, as the evaluation draws them
    trainer.eval_policy.update_params(params)
    batch = setup.eval_batch(slots)
    result = setup.rollout(batch, 0, policy=trainer.eval_policy, agent=agent)
    if result is None:
        return "no usable held-out episode"
    probes, finals = rollout_rows(result, lambda ids: setup.tokenizer.decode(ids))
    report = [rollout_table(probes, finals)]
    if warmup:
        episodes_, _ = setup.episodes(batch)
        report.append(warmup_table(warmup_fit(trainer, episodes_, trainer.eval_policy)))
    return "\n".join(report)


def _trajectory_scores(trainer: Any, params: Any, batch: dict) -> dict[str, list[float]]:
    """Per trajectory of a rollout of `batch` at OVERFIT_SEED_STEP: R_E and R_I (nan without a probe)."""
    setup = trainer.setup
    setup.sampler_policy.update_params(params)
    result = setup.rollout(batch, OVERFIT_SEED_STEP)
    r_e, r_i, _ = trajectory_rewards(result, setup.agent)
    return {
        "reward_e2e": [float(r) for r in r_e],
        "reward_recall": [float(i.mean()) if i.size else float("nan") for i in r_i],
    }


def overfit(trainer: Any, state: Any, steps: int) -> tuple[Any, dict[str, Any]]:
    """`steps` GRPO steps (`trainer.grpo_step`: rollout, credit, update) on the first batch of the run's data stream
    (the fixed batch), each with its own rollout seed; returns (the state after, {"fixed" / "fresh": {"before",
    "after": per-trajectory scores (`_trajectory_scores`)}, "steps": each step's metrics}). The fresh batch is the
    stream's second batch, never trained on; before and after are rollouts at one seed, paired by trajectory.
    `steps` >= 1 is the caller's to check (the command refuses less before loading a model)."""
    setup = _memtrain_setup(trainer)
    iterator = iter(setup.dataset(num_slots=trainer.train_slots))
    batches = {name: sharding.gather_host_rows(next(iterator)) for name in ("fixed", "fresh")}
    out: dict[str, Any] = {
        name: {"before": _trajectory_scores(trainer, state.params, batch)} for name, batch in batches.items()
    }
    out["steps"] = []
    for step in range(steps):
        state, metrics, _ = trainer.grpo_step(state, batches["fixed"], step)
        out["steps"].append({k: metrics.get(k) for k in ("reward_recall", "reward_e2e", "sequences")})
    for name, batch in batches.items():
        out[name]["after"] = _trajectory_scores(trainer, state.params, batch)
    return state, out


def overfit_table(report: dict[str, Any]) -> str:
    """The before/after table of `overfit`: means over trajectories with intervals, and the paired difference."""
    lines = [f"{'per trajectory (bootstrap 95% intervals)':<34} {'before':>22} {'after':>22} {'after - before':>24}"]
    names = {"reward_recall": "recall R_I", "reward_e2e": "R_E"}
    for batch in ("fixed", "fresh"):
        for key, name in names.items():
            before, after = report[batch]["before"][key], report[batch]["after"][key]
            cells = []
            for values in (before, after):
                mean, lo, hi, _ = stats.mean_with_interval(values, binary=False)
                cells.append(stats.format_interval(mean, lo, hi))
            diff = stats.paired_difference(before, after)
            n = int(np.sum(~(np.isnan(before) | np.isnan(after))))
            label = f"{batch} batch: {name} (n = {n})"
            lines.append(f"{label:<34} {cells[0]:>22} {cells[1]:>22} {stats.format_interval(*diff):>24}")
    trained = [s["reward_recall"] for s in report["steps"]]
    lines.append(
        "training recall of each step on the fixed batch: "
        + " ".join("-" if v is None else f"{v:.3f}" for v in trained)
    )
    return "\n".join(lines)


DIRECTIONS = ("plus", "minus", "random")


def parse_direction(arm: str) -> tuple[str, float]:
    """`plus`, `minus` or `random`, optionally `:SCALE` (`plus:0.25`) -> (kind, scale); a bad arm is a UsageError."""
    kind, _, scale = arm.partition(":")
    try:
        value = float(scale) if scale else 1.0
    except ValueError:
        value = float("nan")
    if kind not in DIRECTIONS or not np.isfinite(value) or value <= 0:
        raise UsageError(f"--direction {arm!r}: each arm is plus, minus or random, optionally :SCALE > 0 (plus:0.25).")
    return kind, value


def direction_params(theta0: Any, theta1: Any, arm: str, seed: int = 0) -> Any:
    """theta0 + s * d for the arm's direction d of the update delta = theta1 - theta0 (pytrees of arrays):
    plus: d = delta; minus: d = -delta; random: per tensor a Gaussian direction with delta's norm, on the weights
    delta moved (zero elsewhere), drawn from `seed`. Computed in float32, returned in theta0's dtypes (host arrays)."""
    kind, scale = parse_direction(arm)
    rng = np.random.default_rng(seed)

    def moved(a: Any, b: Any) -> Any:
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        d = b - a
        if kind == "minus":
            d = -d
        elif kind == "random":
            r = rng.standard_normal(d.shape).astype(np.float32) * (d != 0)
            norm = float(np.linalg.norm(r))
            d = r * (float(np.linalg.norm(d)) / norm) if norm > 0 else r
        return (a + scale * d).astype(np.asarray(a).dtype)

    return jax.tree.map(moved, jax.device_get(theta0), jax.device_get(theta1))
