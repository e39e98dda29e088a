"""memtrain diagnose's counting (memtrain_jax/tools/diagnose.py) on a rollout written out by hand."""

import re
from types import SimpleNamespace

import numpy as np

from memtrain_jax.data.probes import Probe
from memtrain_jax.tools.diagnose import rollout_rows, rollout_table

WORDS = ["no", "memory", "Paris", "is", "big", "Rome", "old", "paris"]


def _decode(ids):
    return " ".join(WORDS[i] for i in ids)


def _trajectory(episode, memories, probe_step, probe_gold, recall_correct, prediction, correct):
    probe = Probe(step=probe_step, chunk_index=0, masked_chunk="", gold=probe_gold, mask_count=1)
    return SimpleNamespace(
        episode=episode,
        memories=memories,
        probe=probe if probe_step is not None else None,
        recall_correct=recall_correct,
        prediction=prediction,
        correct=correct,
    )


def test_probe_and_final_rows_follow_the_memories():
    episodes = [SimpleNamespace(answer="Paris"), SimpleNamespace(answer=("Rome", "Roma"))]
    trajectories = [
        # the probe asks memory 1 (holds "Paris"), answered right; the final memory holds "paris" (any case)
        _trajectory(0, [(0, 1), (2, 3), (7, 4)], 1, "Paris", [1.0], "Paris", 1.0),
        # the probe asks memory 1 ("is big"): not held, wrong; the final memory holds "Rome"; no answer found
        _trajectory(1, [(0, 1), (3, 4), (5, 6)], 1, "Rome", [0.0], None, 0.0),
        # the probe asks memory 2 (holds "Rome") and misses; the final memory lacks "Paris"; no probe answered
        _trajectory(0, [(0, 1), (3,), (5,)], 2, "Rome", [0.0], "Rome", 0.0),
        _trajectory(1, [(0, 1), (4,)], None, "", [], "x", 0.0),  # no probe
    ]
    result = SimpleNamespace(episodes=episodes, trajectories=trajectories)
    probes, finals = rollout_rows(result, _decode)
    assert probes == [
        {"held": True, "correct": 1.0},
        {"held": False, "correct": 0.0},
        {"held": True, "correct": 0.0},
    ]
    assert finals == [
        {"held": True, "found": True, "correct": 1.0},
        {"held": True, "found": False, "correct": 0.0},
        {"held": False, "found": True, "correct": 0.0},
        {"held": False, "found": True, "correct": 0.0},
    ]
    table = rollout_table(probes, finals)
    lines = dict(re.match(r"^\s*(.+?)\s{2,}(\S.*)$", line).groups() for line in table.splitlines() if "(n " in line)
    held = lines["memory holds the probed entity"]
    assert held.startswith("0.667") and held.endswith("(n 3)")
    assert lines["when the memory holds it"].startswith("0.500") and lines["when it does not"].endswith("(n 1)")
    assert lines["final memory holds the entity"].startswith("0.500")
    assert lines["E2E accuracy"].startswith("0.250") and lines["E2E accuracy"].endswith("(n 4)")
    assert table.splitlines()[-1] == (
        "verdict: recall is lost mostly in the answer (the memory keeps it): kept 0.67, right when kept 0.50"
    )
    assert np.isclose(np.mean([p["held"] for p in probes]), 2 / 3)
