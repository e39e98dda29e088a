"""Answer extraction and scoring: the training verifier and the lenient QA metrics.

Training (MemTrain and MemAgent) scores a reply by the content of its last `\\boxed{...}`:
`extract_boxed` finds it (nested braces handled), `normalize_strict` applies the paper's
verifier normalisation (MATH-style strip of LaTeX wrappers, lower case, every white space
removed) and `exact_match` compares with the gold strings, 0 or 1.

Downstream QA reports the SQuAD metrics after SQuAD normalisation (lower case, punctuation and
the articles a/an/the removed, white space collapsed): exact match, substring exact match in
either direction (MemAgent's "sub_em") and token F1, each a maximum over the gold strings. Search QA's
verifier, `objective_score`, averages that exact match over the sub-questions of a multi-objective question.
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from collections.abc import Sequence

import numpy as np

BOXED_COMMANDS = ("\\boxed", "\\fbox")

Golds = str | Sequence[str]


def _as_list(golds: Golds) -> list[str]:
    if isinstance(golds, str):
        return [golds]
    golds = list(golds)
    if not golds or not all(isinstance(g, str) for g in golds):
        raise ValueError(f"golds must be a string or a non-empty list of strings, got {golds!r}.")
    return golds


def _braced(text: str, open_at: int) -> str | None:
    """The content of the balanced `{...}` group whose `{` is at `open_at`, or None if it never closes."""
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1 : i]
    return None


def extract_boxed(text: str, last_chars: int = 0) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed x` up to the next `$`) in
    `text`, braces balanced; None when there is none or it never closes.

    `last_chars > 0` searches only the last `last_chars` characters, as MemAgent's reference scorer
    does with 300 (a box quoted early in a long reply is then ignored).
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_boxed needs a string, got {type(text).__name__}.")
    if last_chars < 0:
        raise ValueError(f"last_chars must be >= 0 (0 = the whole text), got {last_chars}.")
    if last_chars:
        text = text[-last_chars:]
    starts = [(text.rfind(cmd), cmd) for cmd in BOXED_COMMANDS]
    start, cmd = max(starts)
    if start < 0:
        return None
    rest = start + len(cmd)
    if text.startswith("{", rest):
        return _braced(text, rest)
    if cmd == "\\boxed" and text.startswith(" ", rest):  # "\boxed 5$" (MATH's space form)
        return text[rest + 1 :].split("$")[0].strip()
    return None


_LATEX_WRAPPERS = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\{([^{}]*)\}")
_LATEX_NOISE = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\quad", "$", "^\\circ", "^{\\circ}")


def normalize_strict(answer: str) -> str:
    """The training verifier's normalisation: unwrap `\\text{...}`-like commands, drop spacing and
    delimiter commands and `$`, strip a trailing period, lower-case (Unicode NFKC) and remove every
    white-space character. "The  Beatles" and "the beatles." both become "thebeatles"."""
    s = unicodedata.normalize("NFKC", answer)
    for _ in range(3):  # nested wrappers: \text{\textbf{x}}
        s = _LATEX_WRAPPERS.sub(r"\1", s)
    for noise in _LATEX_NOISE:
        s = s.replace(noise, "")
    s = s.strip().rstrip(".").strip()
    return "".join(s.lower().split())


def exact_match(prediction: str | None, golds: Golds) -> float:
    """The training verifier: 1.0 when `normalize_strict(prediction)` equals that of some gold, else 0.0.

    `prediction` is the extracted answer (`extract_boxed(reply)`); None (no box) scores 0.0.
    """
    if prediction is None:
        return 0.0
    guess = normalize_strict(prediction)
    return float(bool(guess) and any(guess == normalize_strict(g) for g in _as_list(golds)))


_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_squad(text: str) -> str:
    """SQuAD's answer normalisation: lower case, punctuation removed, articles removed, white space collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _f1(prediction: str, gold: str) -> float:
    pred_tokens, gold_tokens = normalize_squad(prediction).split(), normalize_squad(gold).split()
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_scores(prediction: str | None, golds: Golds) -> dict[str, float]:
    """SQuAD-normalised `em`, `sub_em` (either string contains the other) and token `f1`, each the
    maximum over the gold strings; a missing prediction (None) scores 0 on all three."""
    golds = _as_list(golds)
    if prediction is None:
        return {"em": 0.0, "sub_em": 0.0, "f1": 0.0}
    guess = normalize_squad(prediction)
    em = sub_em = f1 = 0.0
    for gold in golds:
        ref = normalize_squad(gold)
        em = max(em, float(guess == ref))
        # The empty string is inside every string: containment counts only between non-empty answers.
        contained = bool(guess) and bool(ref) and (guess in ref or ref in guess)
        sub_em = max(sub_em, float(guess == ref or contained))
        f1 = max(f1, _f1(prediction, gold))
    return {"em": em, "sub_em": sub_em, "f1": f1}


EXTRACTORS = ("boxed", "boxed_or_line")
_ANSWER_PREFIX = re.compile(
    r"^\s*(?:final answer|the answer is|answer|the entity is|\[(?:mask|target)\] (?:stands for|is))\s*[:\-]?\s*",
    re.IGNORECASE,
)


def extract_answer(text: str, extractor: str = "boxed", last_chars: int = 0) -> str | None:
    """The answer of a reply under the named extractor.

    "boxed" (the paper's): `extract_boxed(text, last_chars)`. "boxed_or_line" (lenient, for small
    models that answer in prose): the box when there is one, else the last non-empty line with a
    leading "Answer:" / "The answer is" removed, else None.
    """
    if extractor not in EXTRACTORS:
        raise ValueError(f"Unknown answer extractor {extractor!r}; choose one of {EXTRACTORS}.")
    boxed = extract_boxed(text, last_chars)
    if boxed is not None or extractor == "boxed":
        return boxed
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    return _ANSWER_PREFIX.sub("", lines[-1]).strip().strip("*").strip() or None


def objective_scores(prediction: str | None, golds: Sequence[Sequence[str]], separator: str = ";") -> list[float]:
    """Search QA's verifier per sub-question: the exact match (SQuAD-normalised) of each sub-question of a
    multi-objective question [K], whose answers come in order separated by `separator`; a missing sub-answer
    scores 0."""
    if prediction is None:
        return [0.0] * len(golds)
    parts = [p.strip() for p in prediction.split(separator)] if len(golds) > 1 else [prediction]
    return [qa_scores(parts[i], g)["em"] if i < len(parts) else 0.0 for i, g in enumerate(golds)]


def objective_score(prediction: str | None, golds: Sequence[Sequence[str]], separator: str = ";") -> float:
    """Search QA's reward: `objective_scores` averaged over the sub-questions."""
    return float(np.mean(objective_scores(prediction, golds, separator)))
