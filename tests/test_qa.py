"""Downstream QA: file formats, the pool's QA sets, the length builder, long-text QA and search QA with scripted
policies, the BM25 retriever on the shipped pool, and bad input."""

from __future__ import annotations

import json
import re
import zlib

import numpy as np
import pytest

from memtrain_jax import stats
from memtrain_jax.agent import AgentConfig, PromptBuilder, PromptConfig, ScriptedPolicy, assign_credit
from memtrain_jax.agent.qa import (
    QAAnswer,
    evaluate_long_qa,
    format_paired,
    format_table,
    qa_episode,
    read_full_context,
    read_with_memory,
    score_table,
)
from memtrain_jax.agent.search import SearchConfig, information_block, parse_action, search_rollout
from memtrain_jax.data import qa
from memtrain_jax.data.chunking import centre_truncate
from memtrain_jax.data.masking import count_occurrences
from memtrain_jax.data.retrieval import BM25Retriever
from memtrain_jax.data.sources import load_pool
from memtrain_jax.rewards import objective_score, objective_scores, score_search


@pytest.fixture(scope="module")
def pool():
    return load_pool("wiki_offline")


@pytest.fixture(scope="module")
def records(pool):
    return qa.qa_records_from_pool(pool, 24, seed=3)


@pytest.fixture(scope="module")
def distractors(pool, records):
    return qa.distractor_pool(pool, records)


@pytest.fixture(scope="module")
def builder(tokenizer, chat):
    return PromptBuilder(tokenizer, chat, PromptConfig())


@pytest.fixture(scope="module")
def bm25(pool):
    retriever = BM25Retriever()
    retriever.build(pool)
    return retriever


# --- the pool's QA sets -----------------------------------------------------------------------------------


def test_pool_questions_follow_the_rule_and_are_deterministic(pool, records):
    assert records == qa.qa_records_from_pool(pool, 24, seed=3)
    assert records != qa.qa_records_from_pool(pool, 24, seed=4)
    by_title = {p.title: p.text for p in pool}
    assert len({r.titles for r in records}) == len(records)  # one question per article
    for r in records:
        ((title, text),) = r.supporting
        (answer,) = r.answers
        assert by_title[title] == text
        assert count_occurrences(text, answer) == 1  # the entity occurs exactly once in its paragraph
        quoted = re.search(r'blank in: "(.*)"\?$', r.question).group(1)
        assert qa.BLANK in quoted and quoted.replace(qa.BLANK, answer, 1) in text
        assert not set(re.findall(r"\w+", title.casefold())) & set(re.findall(r"\w+", answer.casefold()))


def test_prepared_sets_round_trip_through_the_hotpotqa_reader(pool, tmp_path):
    paths = qa.prepare_qa_sets(pool, 5, 7, 3, str(tmp_path), log=None)
    dev, train = qa.load_qa_file(paths["dev"]), qa.load_qa_file(paths["train"])
    expected = qa.qa_records_from_pool(pool, 12, seed=3)
    assert dev + train == expected
    with open(paths["dev"], encoding="utf-8") as f:
        written = json.load(f)
    assert all(len(written[i]["context"][0][1]) > 1 for i in range(5))  # split into real sentences
    assert qa.prepare_qa_sets(pool, 5, 7, 3, str(tmp_path), log=None) == paths  # cached


def test_a_skip_gives_training_questions_the_first_train_set_never_held(pool, tmp_path):
    """qa.train_skip: the same dev set; the train set starts `skip` questions later in the rule's order."""
    first = qa.prepare_qa_sets(pool, 5, 7, 3, str(tmp_path), log=None)
    later = qa.prepare_qa_sets(pool, 5, 4, 3, str(tmp_path), skip=7, log=None)
    expected = qa.qa_records_from_pool(pool, 16, seed=3)
    assert qa.load_qa_file(later["dev"]) == qa.load_qa_file(first["dev"]) == expected[:5]
    assert qa.load_qa_file(later["train"]) == expected[12:16]
    assert not {r.id for r in qa.load_qa_file(later["train"])} & {r.id for r in qa.load_qa_file(first["train"])}
    with pytest.raises(ValueError, match="skip=-1"):
        qa.prepare_qa_sets(pool, 5, 4, 3, str(tmp_path), skip=-1, log=None)


# --- file formats and bad input -------------------------------------------------------------------------


def _hotpot(**overrides):
    record = {
        "_id": "q1",
        "question": "Where was the author of Dune born?",
        "answer": "Tacoma",
        "context": [["Frank Herbert", ["Frank Herbert was born in ", "Tacoma."]], ["Other", ["Unrelated."]]],
        "supporting_facts": [["Frank Herbert", 0], ["Frank Herbert", 1]],
    }
    record.update(overrides)
    return record


def test_the_three_public_formats(tmp_path):
    path = tmp_path / "hotpot.json"
    path.write_text(json.dumps([_hotpot()]))
    (r,) = qa.load_qa_file(str(path))
    assert (r.id, r.answers, r.supporting) == (
        "q1",
        ("Tacoma",),
        (("Frank Herbert", "Frank Herbert was born in Tacoma."),),
    )
    squad = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "C text.",
                        "qas": [{"id": "s1", "question": "Q?", "answers": [{"text": "C"}, {"text": "C text"}]}],
                    }
                ],
            }
        ]
    }
    path = tmp_path / "squad.json"
    path.write_text(json.dumps(squad))
    (r,) = qa.load_qa_file(str(path))
    assert (r.id, r.question, r.answers, r.supporting) == ("s1", "Q?", ("C", "C text"), (("T", "C text."),))
    path = tmp_path / "set.jsonl"
    path.write_text(json.dumps({"id": 7, "question": "Q?", "answers": ["a", "b"], "context": ["x.", "y."]}) + "\n\n")
    (r,) = qa.load_qa_file(str(path))
    assert (r.id, r.answers, [t for _, t in r.supporting]) == ("7", ("a", "b"), ["x.", "y."])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{k: v for k, v in _hotpot().items() if k != "answer"}], "record 0 (_id 'q1') lacks the field 'answer'"),
        ([_hotpot(answer=[])], "record 0 (_id 'q1') has an empty answer list"),
        ([_hotpot(answer="  ")], "empty answer list"),
        ([_hotpot(supporting_facts=[["Missing", 0]])], "names supporting paragraphs ['Missing']"),
        ([_hotpot(), _hotpot()], "not unique"),
        ([_hotpot(context="text")], "not a list of [title, [sentences]]"),
        ("", "the file is empty"),
    ],
)
def test_bad_qa_files_name_the_file_and_record(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content) if content != "" else "")
    with pytest.raises(qa.QAFormatError, match=re.escape(message)) as error:
        qa.load_qa_file(str(path))
    assert str(path) in str(error.value)


def test_bad_jsonl_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"id": 1, "question": "Q", "answers": ["a"], "context": "c"}) + "\n{oops\n")
    with pytest.raises(qa.QAFormatError, match=re.escape(f"{path}: line 2 is not JSON")):
        qa.load_qa_file(str(path))


# --- the length builder -------------------------------------------------------------------------------------


def _blocks(text):
    return re.split(r"\n\n(?=Document \d+:\n)", text)


def test_length_builder_counts_keeps_support_and_never_uses_own_article(records, distractors):
    for r in records[:6]:
        shorter = qa.build_context(r, distractors, 0, num_docs=10)
        longer = qa.build_context(r, distractors, 0, num_docs=40)
        for context, n in ((shorter, 10), (longer, 40)):
            blocks = _blocks(context.text)
            assert len(blocks) == context.num_docs == n
            assert [b.split("\n", 1)[0] for b in blocks] == [f"Document {i}:" for i in range(1, n + 1)]
            for title, text in r.supporting:
                assert f"{title}\n{text}" in context.text
            for p in context.supporting_positions:
                assert blocks[p - 1].split("\n")[1] in r.titles
            titles = [b.split("\n")[1] for i, b in enumerate(blocks, 1) if i not in context.supporting_positions]
            assert not set(titles) & r.titles
        assert set(shorter.distractors) <= set(longer.distractors)  # lengths are nested
        assert qa.build_context(r, distractors, 0, num_docs=40) == longer  # deterministic by seed
        assert qa.build_context(r, distractors, 1, num_docs=40).distractors != longer.distractors


def test_length_builder_reaches_a_token_target_within_one_paragraph(records, distractors, tokenizer):
    count = lambda text: len(tokenizer.encode(text))
    for target in (500, 3000):
        context = qa.build_context(records[0], distractors, 0, target_tokens=target, count_tokens=count)
        sizes = [count(b) for b in _blocks(context.text)]
        assert sum(sizes) >= target
        last = context.distractors[-1]
        assert sum(sizes) - count(qa.format_documents([distractors[last]])) < target


def test_length_builder_refuses_an_unreachable_length(records, distractors):
    with pytest.raises(ValueError, match=rf"Record '{records[0].id}': 20000 documents need 19999 distractors"):
        qa.build_context(records[0], distractors, 0, num_docs=20000)
    with pytest.raises(ValueError, match="short of the target"):
        qa.build_context(records[0], distractors[:3], 0, target_tokens=10**6, count_tokens=len)
    with pytest.raises(ValueError, match="fewer than the 1 supporting"):
        qa.build_context(records[0], distractors, 0, num_docs=0)


# --- long-text QA with scripted policies -----------------------------------------------------------------------


def _section(prompt_text: str, tag: str) -> str:
    return prompt_text.split(f"<{tag}>\n", 1)[1].split(f"\n</{tag}>", 1)[0]


def _qa_policy(tokenizer, chat, golds, keep_memory: bool):
    """Memory: the gold when the chunk shows it, else the previous memory (keep_memory) or "nothing";
    answer: the memory, boxed. `golds` maps a question text to its gold."""

    def script(kind, prompt, row):
        text = tokenizer.decode(prompt)
        if kind == "memory":
            gold = golds[_section(text, "problem")]
            if gold in _section(text, "section"):
                return gold
            return _section(text, "memory") if keep_memory else "nothing"
        return f"\\boxed{{{_section(text, 'memory')}}}"

    return ScriptedPolicy(tokenizer, script, chat.stop_tokens(tokenizer)[0])


def test_long_qa_prompts_calls_and_scores(records, distractors, tokenizer, chat, builder):
    agent = AgentConfig(memory_tokens=32, answer_tokens=32, chunk_size=96, imr=False, group_size=3)
    contexts = [qa.build_context(r, distractors, 0, num_docs=6) for r in records[:8]]
    golds = {r.question: r.answers[0] for r in records}
    episodes = [qa_episode(c, i, builder, agent.chunk_size) for i, c in enumerate(contexts)]
    for c, e in zip(contexts, episodes, strict=True):  # the agent reads the whole context, nothing cut
        assert tokenizer.decode(np.concatenate(e.chunks).tolist()) == c.text
    turns = max(len(e.chunks) for e in episodes)

    oracle = _qa_policy(tokenizer, chat, golds, keep_memory=True)
    answers = read_with_memory(oracle, contexts, builder, tokenizer, agent, seed=0, batch_size=8)
    assert [k for k, _, _ in oracle.calls] == ["memory"] * turns + ["answer"]  # one trajectory per question
    problems = [builder.encode_problem(r.question) for r in records[:8]]
    first = [
        builder.memory_prompt(p, builder.no_memory_ids, e.chunks[0]) for p, e in zip(problems, episodes, strict=True)
    ]
    assert oracle.calls[0][1] == first
    shows = lambda e, c: golds_of(e) in tokenizer.decode(c.tolist())
    golds_of = lambda e: e.answer[0]
    # Scores computed independently: the oracle is right when some chunk shows the gold whole; a reader that
    # forgets its memory only when the last chunk does.
    anywhere = [float(any(shows(e, c) for c in e.chunks)) for e in episodes]
    last = [float(shows(e, e.chunks[-1])) for e in episodes]
    assert [a.scores["em"] for a in answers] == anywhere
    forgetful = read_with_memory(
        _qa_policy(tokenizer, chat, golds, keep_memory=False), contexts, builder, tokenizer, agent, seed=0, batch_size=3
    )
    assert [a.scores["em"] for a in forgetful] == last
    assert sum(anywhere) >= 6 and sum(last) < sum(anywhere)
    assert all(a.tokens == sum(len(c) for c in e.chunks) for a, e in zip(answers, episodes, strict=True))


def test_evaluate_asks_the_same_questions_at_every_length(records, distractors, tokenizer, chat, builder):
    agent = AgentConfig(memory_tokens=32, answer_tokens=32, chunk_size=128, imr=False)
    golds = {r.question: r.answers[0] for r in records}
    policy = _qa_policy(tokenizer, chat, golds, keep_memory=True)
    table, answers = evaluate_long_qa(
        policy, records[:4], distractors, [2, 8], builder, tokenizer, agent, seed=0, batch_size=4, log=None
    )
    ids = {n: [a.id for a in answers if a.num_docs == n] for n in (2, 8)}
    assert ids[2] == ids[8] == [r.id for r in records[:4]]
    row = table["memory_agent"]["8"]
    assert row["questions"] == 4 and row["em"] == np.mean([a.scores["em"] for a in answers if a.num_docs == 8])
    assert table["memory_agent"]["2"]["mean_tokens"] < row["mean_tokens"]


def test_full_context_baseline_cuts_the_middle_to_the_window(records, distractors, tokenizer, chat, builder):
    agent = AgentConfig(answer_tokens=16, imr=False)
    contexts = [qa.build_context(r, distractors, 0, num_docs=12) for r in records[:3]]
    policy = ScriptedPolicy(tokenizer, lambda kind, prompt, row: "\\boxed{x}", chat.stop_tokens(tokenizer)[0])
    window = 700
    answers = read_full_context(policy, contexts, builder, tokenizer, agent, window=window, seed=0, batch_size=3)
    ((kind, prompts, budgets),) = policy.calls
    assert kind == "full_context" and budgets == [16] * 3
    for c, prompt, a in zip(contexts, prompts, answers, strict=True):
        problem = builder.encode_problem(c.record.question)
        ids = tokenizer.encode(c.text)
        budget = window - builder.overhead("full_context") - len(problem) - 16
        assert len(ids) > budget  # the context is longer than the window: its middle is cut
        assert prompt == builder.full_context_prompt(problem, centre_truncate(ids, budget).tolist())
        assert len(prompt) + 16 == window and a.tokens == len(ids) and a.prediction == "x"


# --- search QA -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I should look it up.\n<search>capital of Peru</search>", ("search", "capital of Peru")),
        ("Notes: Lima.\n<answer> Lima </answer>\n", ("answer", "Lima")),
        ("<search>a</search> then <answer>b</answer>", ("malformed", None)),  # two actions
        ("<answer>b</answer> and more text", ("malformed", None)),  # the action must end the reply
        ("<search></search>", ("malformed", None)),
        ("no action at all", ("malformed", None)),
        ("<search>a</answer>", ("malformed", None)),
    ],
)
def test_parse_action_is_strict(text, expected):
    kind, value = parse_action(text)
    assert kind == expected[0] and (expected[1] is None or value == expected[1])


def test_objective_score_averages_over_sub_answers():
    golds = (("Lima",), ("Vienna", "Wien"))
    assert objective_score("Lima; Wien", golds) == 1.0
    assert objective_score("the Lima ; Paris", golds) == 0.5
    assert objective_score("Lima", golds) == 0.5  # a missing sub-answer scores 0
    assert objective_score(None, golds) == 0.0
    assert objective_score("Lima; Vienna", (("Lima; Vienna",),)) == 1.0  # one objective: the whole answer
    assert objective_scores("the Lima ; Paris", golds) == [1.0, 0.0] and objective_scores(None, golds) == [0.0, 0.0]
    assert objective_scores("Wien", golds) == [0.0, 0.0]  # in order: a sub-answer counts for its own question


def test_bm25_finds_the_supporting_passage_for_quoting_queries(pool, records, bm25):
    index = {p.title: i for i, p in enumerate(pool)}
    found = 0
    for r in records:
        ((title, text),) = r.supporting
        sentence = max(qa.split_sentences(text), key=len)
        hits, _ = bm25.search([sentence], 3)
        found += index[title] in hits[0].tolist()
    assert found == len(records)


def test_search_rollout_prompts_retrieval_scores_and_loss_masks(pool, records, bm25, tokenizer, chat, builder):
    corpus = [(p.title, p.text) for p in pool]
    joined = qa.multi_objective(records[:8], 2, seed=0)
    assert len(joined) == 4 and all(len(j.golds) == 2 for j in joined)
    config = SearchConfig(max_turns=3, top_k=3, turn_tokens=64, information_tokens=400, group_size=2)
    first_title = {j.question: j.supporting[0][0] for j in joined}
    first_gold = {j.question: j.golds[0][0] for j in joined}

    def script(kind, prompt, row):
        text = tokenizer.decode(prompt)
        question = _section(text, "problem")
        if row == 0:  # two actions: malformed
            return "<search>a</search><answer>b</answer>"
        if row == 2:  # never answers: "no answer" after max_turns
            return f"<search>{first_title[question]}</search>"
        information = _section(text, "information")
        if first_gold[question] in information:
            return f"Found it.\n<answer>{first_gold[question]}; unknown</answer>"
        return f"Notes.\n<search>{first_title[question]}</search>"

    policy = ScriptedPolicy(tokenizer, script, chat.stop_tokens(tokenizer)[0])
    batch = score_search(
        search_rollout(policy, joined, builder, tokenizer, bm25, corpus, config, seed=0, step=0),
        [j.golds for j in joined],
        config.separator,
    )
    assert [k for k, _, _ in policy.calls] == ["search"] * 3 and batch.policy_calls == {"search": 3, "retrieval": 2}
    trajectories = batch.trajectories
    assert trajectories[0].failure.startswith("malformed") and trajectories[0].correct == 0
    assert trajectories[2].failure == "no answer" and len(trajectories[2].memory_turns) == 2
    # Turn 2's prompt: the question, turn 1's reply and the top-3 passages of turn 1's query, nothing else.
    for r in range(1, 8):
        if r in (0, 2):
            continue
        question = joined[r // 2]
        (_, prompts, _) = policy.calls[1]
        reply = trajectories[r].memories[1]
        hits, _ = bm25.search([question.supporting[0][0]], 3)
        info = tokenizer.encode(information_block([corpus[i] for i in hits[0]]))[:400]
        assert prompts[r] == builder.search_prompt(builder.encode_problem(question.question), reply, info)
    answered = [t for t in trajectories if not t.failure]
    assert answered and all(t.correct == 0.5 for t in answered)  # one of two sub-answers right

    agent = AgentConfig(group_size=2, imr=False, dapo_filter=False)
    sequences, metrics = assign_credit(batch, agent)
    assert len(sequences) == sum(len(t.memory_turns) + 1 for t in trajectories)
    # Retrieved passages are never in a response (so never in a loss mask); every response token is trained.
    for response, mask in zip(sequences.responses, sequences.loss_masks, strict=True):
        assert mask.all() and len(mask) == len(response)
        assert "Doc 1 (" not in tokenizer.decode(response.tolist())
    assert metrics["acc_e2e"] == pytest.approx(np.mean([t.correct for t in trajectories]))


def _answers(reader, n, em, f1):
    return [
        QAAnswer(f"q{i}", reader, n, "x", "x", {"em": e, "sub_em": e, "f1": f}, 100, 100)
        for i, (e, f) in enumerate(zip(em, f1, strict=True))
    ]


def test_qa_tables_carry_intervals_and_paired_differences():
    """Cells are Wilson (matches) / bootstrap (f1) intervals; a second arm is paired with the first on the same
    questions, per length and on each question's mean over the lengths."""
    from scipy.stats import binomtest

    rng = np.random.default_rng(1)
    n = 64
    base_em = {2: (rng.random(n) < 0.2).astype(float), 8: (rng.random(n) < 0.1).astype(float)}
    arm_em = {k: np.maximum(v, (rng.random(n) < 0.3).astype(float)) for k, v in base_em.items()}  # never worse
    f1 = rng.random(n)
    base = score_table([a for k, v in base_em.items() for a in _answers("memory_agent", k, v, f1)], {})
    arm = score_table([a for k, v in arm_em.items() for a in _answers("memory_agent", k, v, f1)], {})
    cell = base["memory_agent"]["8"]
    wilson = binomtest(int(base_em[8].sum()), n).proportion_ci(method="wilson")
    assert np.allclose(cell["em_interval"], [wilson.low, wilson.high], atol=1e-9)
    assert cell["items"]["id"] == [f"q{i}" for i in range(n)] and cell["items"]["em"] == base_em[8].tolist()
    lo, hi = stats.bootstrap_interval(f1)
    assert np.allclose(cell["f1_interval"], [lo, hi])
    tables = {"base": base["memory_agent"], "memtrain": arm["memory_agent"]}
    table = format_table(tables, "em").splitlines()
    assert table[-1] == f"n = {n} questions per cell"
    assert f"{100 * base_em[8].mean():.1f} [{100 * wilson.low:.1f}, {100 * wilson.high:.1f}]" in table[2]
    paired = format_paired(tables, "em").splitlines()
    assert paired[0].startswith("em x 100: row - base")
    cells = re.findall(r"(-?\d+\.\d) \[(-?\d+\.\d), (-?\d+\.\d)\]", paired[1])
    assert len(cells) == 3  # two lengths and the average
    for (mean, low, high), k in zip(cells[:2], (2, 8), strict=True):
        d = arm_em[k] - base_em[k]
        assert float(mean) == round(100 * d.mean(), 1) and float(low) >= 0  # never worse: the interval is >= 0
        ref = stats.paired_difference(base_em[k], arm_em[k])
        assert (float(low), float(high)) == (round(100 * ref[1], 1), round(100 * ref[2], 1))
    per_question = (arm_em[2] + arm_em[8]) / 2 - (base_em[2] + base_em[8]) / 2
    assert float(cells[2][0]) == round(100 * per_question.mean(), 1)


def test_search_evaluation_scores_each_question_at_each_number_of_objectives(
    pool, records, bm25, tokenizer, chat, builder
):
    """`evaluate_search` joins the questions k at a time and scores every question by its own sub-answer
    (Wilson interval over questions), counts malformed episodes, and keys its items by question, so a table at
    1 and at 2 objectives pairs two arms per length and on each question's mean over the lengths."""
    from scipy.stats import binomtest

    from memtrain_jax.agent.search import evaluate_search
    from memtrain_jax.tasks.format import sub_questions

    questions = records[:8]
    gold = {r.question: r.golds[0][0] for r in questions}
    known = {r.question for r in questions[::2]}  # the policy knows every other question's answer
    refuses = {questions[1].question, questions[4].question}  # an episode holding one of these is malformed

    def script(kind, prompt, row):
        asked = sub_questions(_section(tokenizer.decode(prompt), "problem"))
        if refuses & set(asked):
            return "I cannot say."
        return "<answer>" + "; ".join(gold[q] if q in known else "nobody" for q in asked) + "</answer>"

    policy = ScriptedPolicy(tokenizer, script, chat.stop_tokens(tokenizer)[0])
    corpus = [(p.title, p.text) for p in pool]
    config = SearchConfig(max_turns=2, top_k=3, turn_tokens=64, information_tokens=200)
    table, answers = evaluate_search(policy, questions, [1, 2], builder, tokenizer, bm25, corpus, config, seed=0,
                                     batch_size=3, log=None)  # fmt: skip
    assert [a["objectives"] for a in answers] == [1] * 8 + [2] * 4
    assert sorted(i for a in answers[8:] for i in a["ids"]) == sorted(r.id for r in questions)
    by_id = {r.id: r for r in questions}
    for k, episodes in ((1, [[r] for r in questions]), (2, [[by_id[i] for i in j.id.split("+")] for j in
                                                               qa.multi_objective(questions, 2, seed=0)])):  # fmt: skip
        cell = table[str(k)]
        bad = {r.id for e in episodes if refuses & {r.question for r in e} for r in e}
        expected = [float(r.question in known and r.id not in bad) for r in questions]
        assert cell["items"] == {"id": [r.id for r in questions], "em": expected}
        wilson = binomtest(int(sum(expected)), len(questions)).proportion_ci(method="wilson")
        assert np.allclose(cell["em_interval"], [wilson.low, wilson.high], atol=1e-9)
        assert cell["episodes"] == len(episodes) and cell["questions"] == len(questions)
        malformed = sum(bool(refuses & {r.question for r in e}) for e in episodes)
        assert cell["malformed"] == malformed / len(episodes) and cell["no_answer"] == 0
    assert table["1"]["em"] == 0.375 and table["2"]["em"] < table["1"]["em"]  # a refusal sinks its partner too
    tables = {"base": table, "arm": {k: {**c, "items": {**c["items"], "em": [1.0] * 8}} for k, c in table.items()}}
    cells = re.findall(r"(-?\d+\.\d) \[(-?\d+\.\d), (-?\d+\.\d)\]", format_paired(tables, "em").splitlines()[1])
    gain = 1 - (np.asarray(table["1"]["items"]["em"]) + table["2"]["items"]["em"]) / 2
    assert len(cells) == 3 and float(cells[2][0]) == round(100 * gain.mean(), 1)  # the average pairs per question
    assert format_table(tables, "em", unit="objectives").splitlines()[1].startswith("(objectives; mean tokens)")


def test_search_format_examples_replay_as_a_full_score_episode(pool, records, bm25, tokenizer, chat, builder):
    """The warm-up's examples are the turns of a search episode: a policy replying with their targets makes
    `search_rollout` build exactly the examples' prompts, write only well-formed actions and score 1."""
    from memtrain_jax.tasks.format import search_format_examples, sub_questions

    corpus = [(p.title, p.text) for p in pool]
    joined = qa.multi_objective(records[:8], 2, seed=0)
    by_id = {r.id: r for r in records}
    for j in joined:
        assert sub_questions(j.question) == [by_id[i].question for i in j.id.split("+")]
    config = SearchConfig(max_turns=4, top_k=3, turn_tokens=128, information_tokens=400, group_size=1)
    stop = chat.stop_tokens(tokenizer)[0]
    examples = search_format_examples(joined, builder, tokenizer, config, bm25, corpus, stop)
    assert len(examples) == 3 * len(joined)  # two searches and one answer per episode
    assert all(int(r[-1]) == stop for r in examples.responses)
    targets = {tuple(p.tolist()): r[:-1].tolist() for p, r in zip(examples.prompts, examples.responses, strict=True)}
    policy = ScriptedPolicy(tokenizer, lambda kind, prompt, row: tokenizer.decode(targets[tuple(prompt)]), stop)
    batch = score_search(
        search_rollout(policy, joined, builder, tokenizer, bm25, corpus, config, seed=0, step=0),
        [j.golds for j in joined],
        config.separator,
    )
    assert all(t.failure == "" and t.correct == 1.0 for t in batch.trajectories)
    asked = [tuple(p) for _, prompts, budgets in policy.calls for p, b in zip(prompts, budgets, strict=True) if b]
    assert sorted(asked) == sorted(targets)  # every prompt of the rollout is an example's prompt, and no other
    short = search_format_examples(joined, builder, tokenizer, config, bm25, corpus, stop, max_target=8)
    assert all(len(r) <= 8 for r in short.responses) and len(short) < len(examples)


class _DrawingPolicy(ScriptedPolicy):
    """A stochastic policy's contract without a model: each reply is a word drawn by a generator seeded with
    (the call's seed, the row's id, the prompt), as the Sampler draws a row from (seed, row id) and its prompt."""

    def __init__(self, tokenizer, stop_id, words):
        super().__init__(tokenizer, self._reply, stop_id)
        self.words, self.keys = list(words), []

    def generate(self, prompts, max_new_tokens, *, kind, seed, row_ids=None):
        self.keys = [(seed, i) for i in (range(len(prompts)) if row_ids is None else row_ids)]
        drawn = [key for key, budget in zip(self.keys, max_new_tokens, strict=True) if budget > 0]
        assert len(set(drawn)) == len(drawn), f"two rows of one {kind} call share a row id: {drawn}"
        return super().generate(prompts, max_new_tokens, kind=kind, seed=seed, row_ids=row_ids)

    def _reply(self, kind, prompt, row):
        seed, row_id = self.keys[row]
        rng = np.random.default_rng([seed, row_id, zlib.crc32(np.asarray(prompt, np.int64).tobytes())])
        return f"\\boxed{{{self.words[rng.integers(len(self.words))]}}}"


def test_sampled_evaluations_do_not_depend_on_the_batch_size(
    pool, records, distractors, bm25, tokenizer, chat, builder
):
    """Every evaluation keys a question's samples by the question, not by its place in a lockstep batch: the
    memory agent's, the full-context baseline's and the search agent's answers are the same at batch sizes 1, 3
    and 8 (and another seed changes them, so the answers are drawn, not fixed)."""
    from memtrain_jax.agent.search import evaluate_search

    words = sorted({r.answers[0] for r in records[:8]} | {"nobody", "somewhere", "never"})
    agent = AgentConfig(memory_tokens=32, answer_tokens=32, chunk_size=96, imr=False, group_size=3)
    contexts = [qa.build_context(r, distractors, 0, num_docs=4) for r in records[:8]]
    policy = lambda: _DrawingPolicy(tokenizer, chat.stop_tokens(tokenizer)[0], words)
    corpus = [(p.title, p.text) for p in pool]
    search = SearchConfig(max_turns=2, top_k=2, turn_tokens=32, information_tokens=100)
    readers = {
        "memory_agent": lambda size, seed: [
            a.prediction for a in read_with_memory(policy(), contexts, builder, tokenizer, agent, seed=seed,
                                                   batch_size=size)
        ],
        "full_context": lambda size, seed: [
            a.prediction for a in read_full_context(policy(), contexts, builder, tokenizer, agent, window=4096,
                                                    seed=seed, batch_size=size)
        ],
        "search": lambda size, seed: [
            a["reply"] for a in evaluate_search(policy(), records[:8], [1], builder, tokenizer, bm25, corpus, search,
                                                seed=seed, batch_size=size, log=None)[1]
        ],
    }  # fmt: skip
    for name, read in readers.items():
        answers = read(3, 0)
        assert read(1, 0) == answers == read(8, 0), name
        assert len(set(answers)) > 1 and read(3, 1) != answers, name
