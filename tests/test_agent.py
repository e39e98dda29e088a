"""The memory agent driven by scripted policies: prompts, call pattern, probes, rewards and credit."""

from __future__ import annotations

import re

import numpy as np
import pytest

from memtrain_jax.agent import (
    AgentConfig,
    PromptBuilder,
    PromptConfig,
    ScriptedPolicy,
    TemplateError,
    assign_credit,
    episodes_from_batch,
    rollout,
)
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.data.masking import mask_entity
from memtrain_jax.data.probes import draw_probe
from memtrain_jax.rewards import extract_boxed, score_memory_agent
from memtrain_jax.tokenizer.base import tokenizer_fingerprint

# Chunk texts made of whole sentences, so token ids and text agree exactly at chunk boundaries.
DOCS = [
    (["Document 1:\nLima is the capital of Peru and lies on the Pacific coast."], "Paris"),
    (
        [
            "Document 1:\nThe Danube flows through Vienna and Budapest before it reaches the Black Sea.",
            " Document 2:\nMount Kenya rises north of Nairobi in the highlands.",
            " Document 3:\nThe Atacama Desert in Chile is one of the driest places on Earth.",
        ],
        "Vienna",
    ),
    (
        [
            "Document 1:\nCopernicus was born in Torun, a city on the Vistula.",
            " Document 2:\nKepler studied at Tubingen before moving to Graz.",
        ],
        "Torun",
    ),
]


def _config(**kw) -> AgentConfig:
    values = dict(
        group_size=2,
        recall_group_size=2,
        memory_tokens=48,
        answer_tokens=16,
        recall_tokens=16,
        chunk_size=64,
        max_chunks=3,
        probe_extractor="rules",
    )
    values.update(kw)
    return AgentConfig(**values)


def _batch(tokenizer, docs=DOCS, chunk_size=64, max_chunks=3, usable=None) -> dict[str, np.ndarray]:
    """A pipeline-shaped batch ([batch, ...] arrays) holding `docs` (chunk texts, gold)."""
    n = len(docs)
    tokens = np.full((n, max_chunks, chunk_size), tokenizer.pad_id, np.int32)
    lengths = np.zeros((n, max_chunks), np.int32)
    for i, (chunks, _) in enumerate(docs):
        for c, text in enumerate(chunks):
            ids = tokenizer.encode(text)
            assert len(ids) <= chunk_size
            tokens[i, c, : len(ids)] = ids
            lengths[i, c] = len(ids)
    return {
        "tokens": tokens,
        "chunk_lengths": lengths,
        "num_chunks": np.asarray([len(c) for c, _ in docs], np.int32),
        "answer": np.asarray([g for _, g in docs]),
        "episode_id": np.arange(100, 100 + n, dtype=np.int64),
        "usable": np.ones(n, bool) if usable is None else np.asarray(usable),
        "tokenizer_id": np.asarray([tokenizer_fingerprint(tokenizer)] * n),
    }


def _memory_text(traj: int, turn: int) -> str:
    return f"Notes of trajectory {traj} after chunk {turn}."


def _script(golds: dict[int, str], recall_golds: list[str]):
    """Memory: a marker text; final answer: right for trajectories in `golds`; recall: sample 0 right, 1 wrong."""

    def script(kind, prompt, row):
        if kind == "memory":
            return _memory_text(row, script.turn)
        if kind == "answer":
            return f"I think \\boxed{{{golds[row]}}}" if row in golds else "I do not know."
        return f"\\boxed{{{recall_golds[row // 2]}}}" if row % 2 == 0 else "\\boxed{nothing}"

    script.turn = 0
    return script


class _TurnCounter(ScriptedPolicy):
    def generate(self, prompts, max_new_tokens, *, kind, seed, row_ids=None):
        out = super().generate(prompts, max_new_tokens, kind=kind, seed=seed, row_ids=row_ids)
        self.script.turn += kind == "memory"
        return out


def _probes(tokenizer, episodes, config, seed):
    extractor = make_extractor("rules")
    probes = []
    for ep in episodes:
        texts = [tokenizer.decode(c.tolist()) for c in ep.chunks]
        for g in range(config.group_size):
            probes.append(draw_probe(texts, seed, ep.episode_id, g, extractor=extractor, mode=config.probe_mode))
    return probes


def test_scripted_rollout_prompts_calls_rewards_and_credit(tokenizer, chat):
    config = _config()
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    episodes, skipped = episodes_from_batch(_batch(tokenizer), tokenizer)
    assert skipped == 0 and [len(e.chunks) for e in episodes] == [1, 3, 2]
    probes = _probes(tokenizer, episodes, config, seed=5)
    assert all(p is not None for p in probes)
    # Trajectories: episode-major, 2 per episode. Right answers: trajectory 0 (Paris) and both of episode 2.
    golds = {0: "Paris", 4: "Torun", 5: "Torun"}
    policy = _TurnCounter(tokenizer, _script(golds, [p.gold for p in probes]), stop_id=chat.stop_tokens(tokenizer)[0])
    batch = score_memory_agent(
        rollout(policy, episodes, builder, tokenizer, config, seed=5, step=0, extractor=make_extractor("rules")), config
    )

    # One call per turn (3 = the longest document), one for the answers, one for all recall probes.
    assert [kind for kind, _, _ in policy.calls] == ["memory"] * 3 + ["answer", "recall"]
    problem = tokenizer.decode(list(builder.problem_ids))
    for turn in range(3):
        _, prompts, budgets = policy.calls[turn]
        assert len(prompts) == 6
        for row in range(6):
            chunks, _ = DOCS[row // 2]
            if turn >= len(chunks):  # finished rows ride along with a budget of 0
                assert budgets[row] == 0
                continue
            memory = "No previous memory." if turn == 0 else _memory_text(row, turn - 1)
            content = builder.templates["memory"].render(problem=problem, memory=memory, chunk=chunks[turn])
            assert budgets[row] == config.memory_tokens
            assert prompts[row] == chat.encode(tokenizer, [{"role": "user", "content": content}])
    _, prompts, budgets = policy.calls[3]
    for row in range(6):
        memory = _memory_text(row, len(DOCS[row // 2][0]) - 1)
        content = builder.templates["final"].render(problem=problem, memory=memory)
        assert prompts[row] == chat.encode(tokenizer, [{"role": "user", "content": content}])
    _, prompts, budgets = policy.calls[4]
    assert len(prompts) == 6 * config.recall_group_size and set(budgets) == {config.recall_tokens}
    for row, probe in enumerate(probes):
        memory = "No previous memory." if probe.step == 0 else _memory_text(row, probe.step - 1)
        content = builder.templates["recall"].render(memory=memory, chunk=probe.masked_chunk)
        expected = chat.encode(tokenizer, [{"role": "user", "content": content}])
        assert prompts[2 * row] == prompts[2 * row + 1] == expected

    # Hand-computed rewards: R_I = [1, 0] per probe, so R_E = EM + 0.5 * 0.5.
    r_e = np.asarray([1.25, 0.25, 0.25, 0.25, 1.25, 1.25], np.float32)
    sequences, metrics = assign_credit(batch, config)
    assert metrics["reward_e2e"] == pytest.approx(r_e.mean()) and metrics["acc_e2e"] == pytest.approx(0.5)
    assert metrics["reward_recall"] == pytest.approx(0.5) and metrics["recall_samples"] == 12
    # DAPO: episodes 1 (0.25, 0.25) and 2 (1.25, 1.25) have equal rewards and are dropped; every recall group
    # ([1, 0]) survives. Episode 0 keeps 2 trajectories x (1 memory turn + the answer).
    assert metrics["groups_e2e_dropped"] == 2 and metrics["groups_recall_dropped"] == 0
    e2e = sequences.kinds != 2
    assert sequences.trajectories[e2e].tolist() == [0, 0, 1, 1]
    assert sequences.turns[e2e].tolist() == [0, 1, 0, 1] and sequences.kinds[e2e].tolist() == [0, 1, 0, 1]
    np.testing.assert_allclose(sequences.advantages[e2e], [0.5, 0.5, -0.5, -0.5])
    np.testing.assert_allclose(sequences.rewards[e2e], [1.25, 1.25, 0.25, 0.25])
    np.testing.assert_allclose(sequences.advantages[~e2e], [0.5, -0.5] * 6)
    assert sequences.groups[~e2e].tolist() == [3 + g for g in range(6) for _ in range(2)]
    assert len(set(sequences.conversations[~e2e].tolist())) == 12  # each recall sample is its own conversation
    # The answer sequence is the final reply, its stop token included, with the sampler's log-probs.
    answer = sequences.responses[1]
    assert tokenizer.decode(answer.tolist()) == "I think \\boxed{Paris}<|im_end|>"
    assert sequences.loss_masks[1].all() and len(sequences.logprobs[1]) == len(answer)


@pytest.mark.parametrize(
    ("overrides", "expected_e2e"),
    [
        # lambda = 0 and no DAPO: every group trains; advantages are R_E minus the group mean.
        (dict(recall_weight=0.0, dapo_filter=False), [0.5, -0.5, 0, 0, 0, 0]),
        # GRPO's std normalisation (ddof = 1): +-0.5 / (0.7071 + eps).
        (dict(advantage_normalisation="std", dapo_filter=False), [0.7071057, -0.7071057, 0, 0, 0, 0]),
        # Positive samples only (rl.negative_weight = 0): the answer below its group's mean gets 0, not -0.5.
        (dict(recall_weight=0.0, dapo_filter=False, negative_weight=0.0), [0.5, 0, 0, 0, 0, 0]),
    ],
)
def test_credit_variants(tokenizer, chat, overrides, expected_e2e):
    config = _config(**overrides)
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    episodes, _ = episodes_from_batch(_batch(tokenizer), tokenizer)
    probes = _probes(tokenizer, episodes, config, seed=5)
    policy = _TurnCounter(tokenizer, _script({0: "Paris", 4: "Torun", 5: "Torun"}, [p.gold for p in probes]), 2)
    batch = score_memory_agent(
        rollout(policy, episodes, builder, tokenizer, config, seed=5, step=0, extractor=make_extractor("rules")), config
    )
    sequences, _ = assign_credit(batch, config)
    answers = sequences.kinds == 1
    np.testing.assert_allclose(sequences.advantages[answers], expected_e2e, atol=1e-6)
    # Without the final answer in the loss, only memory turns carry the E2E advantage.
    sequences, _ = assign_credit(batch, _config(**overrides, train_final_answer=False))
    assert not (sequences.kinds == 1).any() and (sequences.kinds == 0).sum() == 2 * (1 + 3 + 2)
    # Recall answers only: the same recall sequences and advantages as with every turn trained, nothing else.
    full, _ = assign_credit(batch, config)
    recall, _ = assign_credit(batch, _config(**overrides, train_final_answer=False, train_memory_turns=False))
    assert (recall.kinds == 2).all() and len(recall) == (full.kinds == 2).sum() > 0
    np.testing.assert_array_equal(recall.advantages, full.advantages[full.kinds == 2])
    kept = np.flatnonzero(full.kinds == 2)
    for field in ("groups", "turns", "trajectories", "rewards"):
        np.testing.assert_array_equal(getattr(recall, field), getattr(full, field)[kept])
    assert all(np.array_equal(recall.responses[i], full.responses[k]) for i, k in enumerate(kept))


def test_without_imr_no_recall_call(tokenizer, chat):
    config = _config(imr=False)
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    episodes, _ = episodes_from_batch(_batch(tokenizer), tokenizer)
    policy = _TurnCounter(tokenizer, _script({0: "Paris"}, []), 2)
    batch = score_memory_agent(rollout(policy, episodes, builder, tokenizer, config, seed=5, step=0), config)
    assert [kind for kind, _, _ in policy.calls] == ["memory"] * 3 + ["answer"]
    sequences, metrics = assign_credit(batch, config)
    assert metrics["recall_samples"] == 0 and not (sequences.kinds == 2).any()
    np.testing.assert_allclose(sequences.rewards, [1.0, 1.0, 0.0, 0.0])  # R_E = EM alone


def _copy_policy(chat, tokenizer):
    """Memory: the section's capitalised words first, then the old memory (so a cut drops the oldest);
    answer: the last word of the memory, boxed."""

    def script(kind, prompt, row):
        text = tokenizer.decode(prompt)
        memory = re.search(r"<memory>\n(.*?)\n</memory>", text, re.S).group(1)
        if kind == "memory":
            section = re.search(r"<section>\n(.*?)\n</section>", text, re.S).group(1)
            words = re.findall(r"\b[A-Z][a-z]+\b", section.split(":", 1)[1])
            old = "" if memory == "No previous memory." else " " + memory
            return " ".join(words) + old
        return f"\\boxed{{{memory.split()[-1]}}}"

    return ScriptedPolicy(tokenizer, script, chat.stop_tokens(tokenizer)[0])


@pytest.mark.parametrize(("memory_tokens", "expected"), [(64, 1.0), (12, 0.0)])
def test_reward_depends_on_the_memory(tokenizer, chat, memory_tokens, expected):
    """The answer is the first capitalised word of the document (masked as in a real episode elsewhere);
    a copying memory keeps it with a large budget and loses it when the budget cuts the oldest notes."""
    docs = [
        (
            [
                "Document 1:\nZanzibar traders met [MASK] sailors at the harbour.",
                " Document 2:\nMerchants from Oman and India sailed with the Monsoon winds.",
                " Document 3:\nLater, British and German ships arrived from Europe and Africa.",
            ],
            "Zanzibar",
        )
    ]
    config = _config(memory_tokens=memory_tokens, group_size=1, imr=False)
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    episodes, _ = episodes_from_batch(_batch(tokenizer, docs), tokenizer)
    batch = score_memory_agent(
        rollout(_copy_policy(chat, tokenizer), episodes, builder, tokenizer, config, seed=0, step=0), config
    )
    (traj,) = batch.trajectories
    assert traj.correct == expected
    assert (traj.truncations > 0) == (expected == 0.0)  # the small budget really cut the memory


def test_a_rollout_returns_text_and_the_task_scores_it(tokenizer, chat):
    """The rollout leaves its answers unscored (text and ids only); score_memory_agent fills the prediction and the
    verifier from that text and the episode's gold alone, so a rollout can be rescored against another gold."""
    docs = [(["Document 1:\nZanzibar traders met [MASK] sailors at the harbour."], "Zanzibar")]
    config = _config(memory_tokens=64, group_size=1, imr=False)
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    episodes, _ = episodes_from_batch(_batch(tokenizer, docs), tokenizer)
    batch = rollout(_copy_policy(chat, tokenizer), episodes, builder, tokenizer, config, seed=0, step=0)
    (traj,) = batch.trajectories
    assert traj.answer_text == "\\boxed{Zanzibar}" and (traj.prediction, traj.correct) == (None, 0.0)
    assert score_memory_agent(batch, config) is batch
    assert (traj.prediction, traj.correct) == ("Zanzibar", 1.0)
    batch.episodes[0].answer = "Oman"
    score_memory_agent(batch, config)
    assert (traj.prediction, traj.correct) == ("Zanzibar", 0.0)


def _probe_rollout(tokenizer, chat, config):
    """A scripted rollout of DOCS[1:] (memories "x"), seed 11 and step 3, with recall probes."""
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    episodes, _ = episodes_from_batch(_batch(tokenizer, DOCS[1:]), tokenizer)
    policy = _TurnCounter(tokenizer, _script({}, ["x"] * 8), 2)
    return rollout(policy, episodes, builder, tokenizer, config, seed=11, step=3, extractor=make_extractor("rules"))


def test_shared_probes_are_trajectory_zeros_probe_for_every_trajectory_of_an_episode(tokenizer, chat):
    """probe_shared: the G1 trajectories of an episode answer the probe trajectory 0 draws on its own (the one
    evaluation draws), each from its own memory; unshared, the same seed gives the trajectories different probes."""
    key = lambda p: (p.step, p.chunk_index, p.gold, p.masked_chunk)
    runs = {shared: _probe_rollout(tokenizer, chat, _config(group_size=4, recall_group_size=1, probe_shared=shared))
            for shared in (False, True)}  # fmt: skip
    own, shared = runs[False].trajectories, runs[True].trajectories
    assert len({key(t.probe) for t in own if t.episode == 0}) > 1  # unshared: trajectories differ
    for t_own, t_shared in zip(own, shared, strict=True):
        first = next(t for t in own if t.episode == t_own.episode and t.sample == 0)
        assert key(t_shared.probe) == key(first.probe)
        text = tokenizer.decode(t_shared.recall[0].prompt)
        assert f"<memory>\n{_memory_text(shared.index(t_shared), t_shared.probe.step - 1)}\n</memory>" in text


@pytest.mark.parametrize("mode", ["paper", "code"])
def test_recall_probes_see_their_own_memory_and_earlier_chunks(tokenizer, chat, mode):
    batch = _probe_rollout(tokenizer, chat, _config(probe_mode=mode, group_size=4, recall_group_size=1))
    seen = set()
    for r, traj in enumerate(batch.trajectories):
        probe = traj.probe
        if probe is None:
            assert mode == "code" and len(batch.episodes[traj.episode].chunks) == 1
            continue
        k, chunk = probe.step, probe.chunk_index
        assert 1 <= k <= len(traj.memory_turns)
        assert (chunk < k) if mode == "paper" else (1 <= chunk <= k)
        text = tokenizer.decode(traj.recall[0].prompt)
        assert f"<memory>\n{_memory_text(r, k - 1)}\n</memory>" in text  # the memory written after k chunks
        masked, count = mask_entity(batch.episodes[traj.episode].chunk_texts[chunk], probe.gold, "[TARGET]")
        assert count >= 1 and f"<section>\n{masked}\n</section>" in text
        seen.add((k, chunk))
    assert len(seen) > 1  # probes differ between trajectories


def test_in_memory_probes_ask_only_for_entities_their_memory_names(tokenizer, chat):
    """probe_in_memory: every probe's entity occurs in the memory its recall prompt shows (the memory at its step);
    the memories keep the first two capitalised words of each chunk, so the paper's probes of the same rollouts
    also ask for entities no memory holds, and the filter is what removes them."""
    from memtrain_jax.data.masking import count_occurrences

    def script(kind, prompt, row):
        text = tokenizer.decode(prompt)
        memory = re.search(r"<memory>\n(.*?)\n</memory>", text, re.S).group(1)
        if kind == "memory":
            section = re.search(r"<section>\n(.*?)\n</section>", text, re.S).group(1)
            words = re.findall(r"\b[A-Z][a-z]+\b", section.split(":", 1)[1])[:2]
            return " ".join(words) + ("" if memory == "No previous memory." else " " + memory)
        return "\\boxed{x}"

    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    episodes, _ = episodes_from_batch(_batch(tokenizer, DOCS[1:]), tokenizer)
    held, drawn = {}, {}
    for in_memory in (False, True):
        config = _config(group_size=4, recall_group_size=1, probe_in_memory=in_memory)
        policy = ScriptedPolicy(tokenizer, script, chat.stop_tokens(tokenizer)[0])
        for seed in range(6):
            batch = rollout(policy, episodes, builder, tokenizer, config, seed=seed, step=0,
                            extractor=make_extractor("rules"))  # fmt: skip
            for traj in batch.trajectories:
                if traj.probe is None:
                    continue
                memory = tokenizer.decode(list(traj.memories[traj.probe.step]))
                assert f"<memory>\n{memory}\n</memory>" in tokenizer.decode(traj.recall[0].prompt)
                held[in_memory] = held.get(in_memory, []) + [bool(count_occurrences(memory, traj.probe.gold))]
                drawn[in_memory] = drawn.get(in_memory, 0) + 1
    assert all(held[True]) and drawn[True] >= 12
    assert not all(held[False])
    with pytest.raises(ValueError, match="cannot share"):
        _config(probe_in_memory=True, probe_shared=True)


def test_greedy_memory_turns_are_decoded_once_per_episode_and_shared_by_its_trajectories(tokenizer, chat):
    """sampling.greedy_memory: a greedy memory reply is a function of its prompt, so the rollout decodes it for the
    first trajectory of each episode only and gives it to all G1; the result equals decoding every row (same
    memories, answer and recall prompts, same probes) with a G1-th of the memory rows."""

    def script(kind, prompt, row):
        text = tokenizer.decode(prompt)
        if kind == "memory":  # a function of the prompt, as a greedy policy's reply is
            memory = re.search(r"<memory>\n(.*?)\n</memory>", text, re.S).group(1)
            section = re.search(r"<section>\n(.*?)\n</section>", text, re.S).group(1)
            words = re.findall(r"\b[A-Z][a-z]+\b", section.split(":", 1)[1])[:2]
            return " ".join(words) + ("" if memory == "No previous memory." else " " + memory)
        return f"\\boxed{{{row}}}"  # answers and recall samples differ by row

    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    episodes, _ = episodes_from_batch(_batch(tokenizer), tokenizer)
    runs = {}
    for greedy in (False, True):
        config = _config(group_size=3, greedy_memory=greedy, train_memory_turns=False, train_final_answer=False)
        policy = ScriptedPolicy(tokenizer, script, chat.stop_tokens(tokenizer)[0])
        batch = rollout(policy, episodes, builder, tokenizer, config, seed=4, step=0, extractor=make_extractor("rules"))
        runs[greedy] = (batch, policy.calls)
    (every, every_calls), (shared, shared_calls) = runs[False], runs[True]
    assert [len(p) for k, p, _ in every_calls if k == "memory"] == [9, 9, 9]
    assert [len(p) for k, p, _ in shared_calls if k == "memory"] == [3, 3, 3]
    assert [(k, p) for k, p, _ in every_calls if k != "memory"] == [(k, p) for k, p, _ in shared_calls if k != "memory"]
    for a, b in zip(every.trajectories, shared.trajectories, strict=True):
        assert a.memories == b.memories and a.probe == b.probe and a.recall_texts == b.recall_texts
        assert [r.prompt for r in a.memory_turns] == [r.prompt for r in b.memory_turns]
    assert len({t.probe for t in shared.trajectories[3:6]}) > 1  # the G1 trajectories are probed apart


def test_prompts_in_token_space_equal_the_rendered_template(tokenizer, chat):
    """Chunks cut from a real pool text at fixed token counts: the prompt ids decode to exactly the rendered
    text, and equal its encoding wherever the chunk boundaries fall between words."""
    from memtrain_jax.data.sources import load_pool

    text = "\n\n".join(p.text for p in load_pool("wiki_offline")[:6])
    ids = tokenizer.encode(text)
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    memory = tokenizer.encode("Earlier notes: the article is about several places.")
    aligned = 0
    for start in range(0, len(ids) - 96, 96):
        chunk = ids[start : start + 96]
        chunk_text = tokenizer.decode(chunk)
        prompt = builder.memory_prompt(builder.problem_ids, memory, chunk)
        rendered = builder.render(
            "memory",
            problem=tokenizer.decode(list(builder.problem_ids)),
            memory=tokenizer.decode(memory),
            chunk=chunk_text,
        )
        assert tokenizer.decode(prompt) == rendered
        if tokenizer.encode(chunk_text) == chunk:  # no boundary split a word into other pieces
            aligned += 1
            assert prompt == tokenizer.encode(rendered)
    assert aligned >= 3


def test_bad_inputs(tokenizer, chat, tmp_path):
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    # An episode shorter than one chunk (a usable episode with no tokens).
    batch = _batch(tokenizer, DOCS[:1])
    batch["num_chunks"][0], batch["chunk_lengths"][0] = 0, 0
    with pytest.raises(ValueError, match="shorter than one chunk"):
        episodes_from_batch(batch, tokenizer)
    # Skipped episodes are counted, not read.
    episodes, skipped = episodes_from_batch(_batch(tokenizer, usable=[True, False, True]), tokenizer)
    assert skipped == 1 and [e.episode_id for e in episodes] == [100, 102]
    # An empty batch (e.g. an empty pool slice) and another tokenizer's chunks.
    with pytest.raises(ValueError, match="empty"):
        episodes_from_batch({k: v[:0] for k, v in _batch(tokenizer).items()}, tokenizer)
    other = _batch(tokenizer)
    other["tokenizer_id"][:] = "0123456789abcdef"
    with pytest.raises(ValueError, match="another tokenizer"):
        episodes_from_batch(other, tokenizer)
    # A template file without a placeholder its prompt needs.
    path = tmp_path / "memory.txt"
    path.write_text("Problem: {problem}\nSection: {chunk}\n")
    with pytest.raises(TemplateError, match=r"\{memory\}"):
        PromptBuilder(tokenizer, chat, PromptConfig(memory_template=str(path)))
    path.write_text("{problem} {memory} {chunk} {chunk}")
    with pytest.raises(TemplateError, match="more than once"):
        PromptBuilder(tokenizer, chat, PromptConfig(memory_template=str(path)))
    # Sizes that do not fit the window.
    config = _config(chunk_size=4096, memory_tokens=1024)
    overhead = {k: builder.overhead(k) for k in ("memory", "final", "recall")}
    with pytest.raises(ValueError, match="do not fit the model's window of 2048"):
        config.check_window(overhead, len(builder.problem_ids), len(builder.no_memory_ids), 2048)
    config.check_window(overhead, len(builder.problem_ids), len(builder.no_memory_ids), 8192)
    with pytest.raises(ValueError, match="'exact'"):
        _config(answer_extractor="exact")
    with pytest.raises(ValueError, match="'mean'"):
        _config(advantage_normalisation="mean")
    with pytest.raises(ValueError, match="Nothing would train"):
        _config(imr=False, train_memory_turns=False, train_final_answer=False).check_trains()
    _config(imr=False, train_memory_turns=False, train_final_answer=False)  # rollouts alone (QA evaluation) may
    assert extract_boxed("\\boxed{x}") == "x"


def test_recall_prompt_names_the_configured_target_token(tokenizer, chat, tmp_path):
    """The recall question names data.probes.target_token, the token that masks the probed chunk: a changed token
    changes the prompt, and a template file that never names it is refused."""
    default = PromptBuilder(tokenizer, chat, PromptConfig())
    other = PromptBuilder(tokenizer, chat, PromptConfig(), target_token="<ENT>")
    memory, chunk = tokenizer.encode("notes"), tokenizer.encode("<ENT> was born in Ulm.")
    text = tokenizer.decode(other.recall_prompt(memory, chunk))
    assert "[TARGET]" not in text and text.count("<ENT>") == 3  # the two mentions of the question, the chunk's
    assert tokenizer.decode(default.recall_prompt(memory, chunk)).count("[TARGET]") == 2
    assert "{target}" not in tokenizer.decode(default.build("recall", memory=memory, chunk=chunk))
    path = tmp_path / "recall.txt"
    path.write_text("{memory}\n{chunk}\nWhich entity does [TARGET] stand for?")
    assert PromptBuilder(tokenizer, chat, PromptConfig(recall_template=str(path)))  # the default token, written out
    with pytest.raises(TemplateError, match="'<ENT>'"):
        PromptBuilder(tokenizer, chat, PromptConfig(recall_template=str(path)), target_token="<ENT>")
    path.write_text("{memory}\n{chunk}\nWhich entity does {target} stand for?")
    custom = PromptBuilder(tokenizer, chat, PromptConfig(recall_template=str(path)), target_token="<ENT>")
    assert tokenizer.decode(custom.recall_prompt(memory, chunk)).count("<ENT>") == 2
