"""The verifiers: a rollout's text turned into answers and scores, after the rollout and apart from it.

Rollouts (memtrain_jax.agent) return text and ids only. The task then scores them here, filling on each
trajectory (duck-typed: rewards import nothing of the agent):

    prediction          the answer its extractor finds in the final reply (None: none found)
    correct             the verifier's score of the prediction: the `verifier` reward column
    recall_predictions  one per recall sample (memory agent with probes)
    recall_correct      R_I(j) = EM(recall answer j, probed entity): the `recall` column's samples

Verifiers: the memory agent (MemTrain, long-text QA) by `score_memory_agent`: exact match of the
extracted final answer with any gold; search QA by `score_search`: the <answer> the rollout parsed,
scored by `objective_score`, exact match averaged over the sub-questions.
"""

from __future__ import annotations

from typing import Any

from memtrain_jax.rewards.answers import exact_match, extract_answer, objective_score


def score_memory_agent(batch: Any, agent: Any) -> Any:
    """Scores a memory-agent rollout in place (see the module docstring) and returns it.

    Final answers are scored against their episode's gold(s), recall samples against their probe's entity,
    both by `exact_match` of what `extract_answer(text, agent.answer_extractor, agent.boxed_last_chars)`
    finds (`agent`: the AgentConfig the rollout ran with)."""
    extractor, boxed_last_chars = agent.answer_extractor, agent.boxed_last_chars
    for traj in batch.trajectories:
        traj.prediction = extract_answer(traj.answer_text, extractor, boxed_last_chars)
        traj.correct = exact_match(traj.prediction, batch.episodes[traj.episode].answer)
        traj.recall_predictions = [extract_answer(t, extractor, boxed_last_chars) for t in traj.recall_texts]
        traj.recall_correct = [exact_match(p, traj.probe.gold) for p in traj.recall_predictions]
    return batch


def score_search(batch: Any, golds: Any, separator: str = ";") -> Any:
    """Scores a search rollout in place and returns it: `correct` = objective_score(prediction, golds[e]) of
    each trajectory of record e (`golds[e]`: one list of gold strings per sub-question)."""
    for traj in batch.trajectories:
        traj.correct = objective_score(traj.prediction, golds[traj.episode], separator)
    return batch
