"""See what the memory agent does before training: rollouts with the configured policy, turn by turn.

    python -m memtrain_jax.tools.rollout --config configs/memtrain.py:cpu --episodes 4
    python -m memtrain_jax.tools.rollout --config configs/memtrain.py:tiny --episodes 2 --show 1

Prints, for episode `--show` of the first batch: every turn's prompt (abridged) and the memory it wrote,
the final answer, the recall probes with their answers, the rewards and advantages; then the overall
accuracy (end-to-end and recall) and the policy's throughput by kind of call.
"""

from __future__ import annotations

import math
import time

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from memtrain_jax.agent import KIND_IDS, RolloutBatch, TrainingSequences, assign_credit
from memtrain_jax.tasks import AgentSetup

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config, e.g. configs/memtrain.py:cpu.")
_EPISODES = flags.DEFINE_integer("episodes", 2, "Episodes to roll out (in batches of data.loader.batch_size).")
_SHOW = flags.DEFINE_integer("show", 0, "Which episode of the first batch to print turn by turn.")
_MAX_CHARS = flags.DEFINE_integer("max_chars", 400, "Abridge printed prompts to this many characters.")


def _abridge(text: str, n: int) -> str:
    if len(text) <= n:
        return text
    half = n // 2
    return f"{text[:half]} [... {len(text) - n} characters ...] {text[-half:]}"


def show_episode(setup: AgentSetup, result: RolloutBatch, sequences: TrainingSequences, episode: int, n: int) -> None:
    """Prints one episode's trajectories: turns, memories, answers, probes, rewards and advantages."""
    decode = setup.tokenizer.decode
    ep = result.episodes[episode]
    print(f"\n=== episode {ep.episode_id}: {len(ep.chunks)} chunks, gold answer {ep.answer!r} ===")
    for r, traj in enumerate(result.trajectories):
        if traj.episode != episode:
            continue
        print(f"\n--- trajectory {traj.sample} ---")
        for t, reply in enumerate(traj.memory_turns):
            if traj.sample == 0:
                print(f"[turn {t + 1} prompt, {len(reply.prompt)} tokens] {_abridge(decode(reply.prompt), n)}")
            cut = "" if reply.stopped else " (cut at the memory budget)"
            print(f"[turn {t + 1} memory, {len(reply.content)} tokens{cut}] {decode(reply.content.tolist())!r}")
        print(f"[final answer] {traj.answer_text!r} -> extracted {traj.prediction!r}, correct {traj.correct:.0f}")
        if traj.probe is not None:
            p = traj.probe
            print(f"[recall probe] memory of step {p.step}, chunk {p.chunk_index}, gold {p.gold!r}")
            for pred, ok in zip(traj.recall_predictions, traj.recall_correct, strict=True):
                print(f"    answer {pred!r}: {ok:.0f}")
        elif setup.agent.imr:
            print(f"[recall probe] none ({traj.probe_skipped})")
        rows = np.flatnonzero((sequences.trajectories == r) & (sequences.kinds != KIND_IDS["recall"]))
        if rows.size:
            print(
                f"[credit] R_E {sequences.rewards[rows[0]]:.3f}, advantage {sequences.advantages[rows[0]]:+.3f} "
                f"on {rows.size} turns"
            )
        elif not (setup.agent.train_memory_turns or setup.agent.train_final_answer):
            print("[credit] memory and answer turns not trained (agent.train_memory_turns/train_final_answer off)")
        else:
            print("[credit] group dropped (all rewards equal): not trained on")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None:
        raise app.UsageError("Pass --config, e.g. --config configs/memtrain.py:cpu")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    setup = AgentSetup.build(config)
    iterator = iter(setup.dataset())
    batches = math.ceil(_EPISODES.value / config.data.loader.batch_size)
    totals: dict[str, list[float]] = {"acc_e2e": [], "reward_e2e": [], "acc_recall": [], "missing_box_answer": []}
    start = time.perf_counter()
    for step in range(batches):
        result = setup.rollout(next(iterator), step)
        if result is None:
            print(f"\n[batch {step}] every episode was skipped by the pipeline (masks truncated away)")
            continue
        sequences, metrics = assign_credit(result, setup.agent)
        if step == 0:
            show_episode(setup, result, sequences, min(_SHOW.value, len(result.episodes) - 1), _MAX_CHARS.value)
        for key in totals:
            weight = metrics["recall_samples"] if key == "acc_recall" else metrics["trajectories"]
            totals[key].extend([metrics[key]] * weight)
        print(
            f"\n[batch {step}] "
            + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        )
    seconds = time.perf_counter() - start
    print(f"\n=== {batches * config.data.loader.batch_size} episodes in {seconds:.1f}s (compilation included) ===")
    for key, values in totals.items():
        print(f"{key}: {np.mean(values) if values else float('nan'):.3f}")
    for kind, stats in setup.sampler_policy.stats.items():
        print(
            f"{kind}: {stats.calls} calls, {stats.rows} rows, {stats.prompt_tokens} prompt tokens, "
            f"{stats.generated_tokens} generated tokens in {stats.seconds:.1f}s"
        )


if __name__ == "__main__":
    app.run(main)
