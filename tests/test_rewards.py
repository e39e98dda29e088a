"""Answer extraction and scoring: boxes, the strict verifier and the SQuAD metrics on tricky answers."""

from __future__ import annotations

import pytest

from memtrain_jax.rewards import exact_match, extract_answer, extract_boxed, normalize_strict, qa_scores


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is \\boxed{Paris}.", "Paris"),
        ("\\boxed{\\frac{1}{2}} is the value", "\\frac{1}{2}"),  # nested braces
        ("first \\boxed{Lyon} then \\boxed{Paris}", "Paris"),  # the last box wins
        ("\\boxed{a {b} {c {d}}}", "a {b} {c {d}}"),
        ("no box at all", None),
        ("\\boxed{unclosed", None),
        ("\\boxed{}", ""),
        ("\\fbox{Zürich}", "Zürich"),  # unicode, \fbox
        ("so $\\boxed 42$ done", "42"),  # MATH's space form
        ("\\boxed{New York City} and \\fbox{old}", "old"),  # the later command wins whatever its name
        ("\\boxed", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_extract_boxed_last_chars():
    text = "\\boxed{early} " + "x" * 400
    assert extract_boxed(text) == "early"
    assert extract_boxed(text, last_chars=300) is None
    assert extract_boxed("x" * 400 + " \\boxed{late}", last_chars=300) == "late"
    with pytest.raises(ValueError, match="last_chars"):
        extract_boxed("x", last_chars=-1)


@pytest.mark.parametrize(
    ("prediction", "golds", "expected"),
    [
        ("Paris", "paris", 1.0),
        ("  The Beatles ", ["the beatles"], 1.0),
        ("TheBeatles", "The Beatles", 1.0),  # every white space removed
        ("the beatles.", "The Beatles", 1.0),  # trailing period stripped
        ("\\text{Ada Lovelace}", "Ada Lovelace", 1.0),
        ("Beatles", "The Beatles", 0.0),  # no article stripping in the strict verifier
        ("Brazilian", "Brazil", 0.0),
        ("1789", ["1788", "1789"], 1.0),  # max over golds
        ("ZÜRICH", "Zürich", 1.0),
        ("", "Paris", 0.0),
        (None, "Paris", 0.0),
    ],
)
def test_exact_match(prediction, golds, expected):
    assert exact_match(prediction, golds) == expected


def test_normalize_strict_examples():
    assert normalize_strict("  New\tYork\nCity. ") == "newyorkcity"
    assert normalize_strict("$3.5$") == "3.5"
    assert normalize_strict("\\left(1, 2\\right)") == "(1,2)"


@pytest.mark.parametrize(
    ("prediction", "golds", "em", "sub_em", "f1"),
    [
        ("The Eiffel Tower", "Eiffel Tower", 1.0, 1.0, 1.0),  # articles removed
        ("Eiffel Tower, Paris!", "eiffel tower paris", 1.0, 1.0, 1.0),  # punctuation removed
        ("the tower in Paris", "Eiffel Tower", 0.0, 0.0, 0.4),  # P = 1/3, R = 1/2
        ("Paris", "Paris, France", 0.0, 1.0, 2 / 3),  # prediction inside gold
        ("Paris, the capital of France", "Paris", 0.0, 1.0, 0.4),  # gold inside prediction: P = 1/4, R = 1
        ("3", ["1789", "3 km"], 0.0, 1.0, 2 / 3),
        ("Zürich", "zürich", 1.0, 1.0, 1.0),
        ("an", "a", 1.0, 1.0, 0.0),  # both normalise to "": equal, as in the official SQuAD script
        ("the", "Paris", 0.0, 0.0, 0.0),  # "" is inside every string, but earns no substring credit
        (None, "x", 0.0, 0.0, 0.0),
    ],
)
def test_qa_scores(prediction, golds, em, sub_em, f1):
    scores = qa_scores(prediction, golds)
    assert scores["em"] == em and scores["sub_em"] == sub_em
    assert scores["f1"] == pytest.approx(f1)


def test_lenient_extractor():
    assert extract_answer("I think it is Paris.", "boxed") is None
    assert extract_answer("Thinking...\nThe answer is: Paris", "boxed_or_line") == "Paris"
    assert extract_answer("Answer - **Lyon**", "boxed_or_line") == "Lyon"
    assert extract_answer("blah \\boxed{Nice}\nAnswer: Lyon", "boxed_or_line") == "Nice"
    assert extract_answer("   \n ", "boxed_or_line") is None
    with pytest.raises(ValueError, match="'exact'"):
        extract_answer("x", "exact")


def test_bad_golds():
    with pytest.raises(ValueError, match="golds"):
        exact_match("x", [])
    with pytest.raises(ValueError, match="golds"):
        qa_scores("x", [1])
