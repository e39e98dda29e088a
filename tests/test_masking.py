"""Masking: the matcher against a brute-force reference, and mask/unmask properties over real paragraphs."""

import numpy as np
import pytest

from memtrain_jax.data.entities import RuleEntityExtractor, SpacyEntityExtractor
from memtrain_jax.data.masking import (
    MASK_TOKEN,
    TARGET_TOKEN,
    count_occurrences,
    entity_pattern,
    mask_entity,
    unmask,
)
from memtrain_jax.data.sources import read_wiki_offline


def _is_word(c: str) -> bool:
    return c.isalnum() or c == "_"


def reference_spans(text: str, entity: str) -> list[tuple[int, int]]:
    """Leftmost non-overlapping occurrences of `entity` with no word character on either side,
    found by scanning every start position (no regular expressions)."""
    spans = []
    i = 0
    while i <= len(text) - len(entity):
        j = i + len(entity)
        if text[i:j] == entity and (i == 0 or not _is_word(text[i - 1])) and (j == len(text) or not _is_word(text[j])):
            spans.append((i, j))
            i = j
        else:
            i += 1
    return spans


@pytest.fixture(scope="module")
def paragraphs():
    pool = list(read_wiki_offline())
    rng = np.random.default_rng(0)
    return [pool[i] for i in rng.choice(len(pool), size=400, replace=False)]


@pytest.fixture(scope="module")
def rule_pairs(paragraphs):
    ents = RuleEntityExtractor().extract(paragraphs)
    return [(p.text, e) for p, es in zip(paragraphs, ents, strict=True) for e in es]


@pytest.fixture(scope="module")
def spacy_pairs(paragraphs):
    subset = paragraphs[:30]
    ents = SpacyEntityExtractor().extract(subset)
    return [(p.text, e) for p, es in zip(subset, ents, strict=True) for e in es]


@pytest.mark.parametrize(
    "text, entity, expected",
    [
        ("the U.S. Army and the U.S.A. and U.S.", "U.S.", [(4, 8), (33, 37)]),
        ("it cost $5, not $50 or US$5", "$5", [(8, 10)]),
        ("Paris, Parisian, paris and Paris.", "Paris", [(0, 5), (27, 32)]),
        ("Saint-Étienne is near Étienne", "Étienne", [(6, 13), (22, 29)]),
        ("C++ beats C+ and C", "C++", [(0, 3)]),
        ("snake_case and case", "case", [(15, 19)]),
    ],
)
def test_entity_pattern_examples(text, entity, expected):
    assert [m.span() for m in entity_pattern(entity).finditer(text)] == expected
    assert reference_spans(text, entity) == expected
    assert count_occurrences(text, entity) == len(expected)


def test_pattern_matches_reference_on_real_paragraphs(paragraphs, rule_pairs):
    # Extracted entities, plus every word n-gram of a few paragraphs (most occur inside others).
    rng = np.random.default_rng(1)
    pairs = list(rule_pairs)
    for p in paragraphs[:40]:
        words = p.text.split()
        for _ in range(10):
            i = int(rng.integers(len(words)))
            pairs.append((p.text, " ".join(words[i : i + int(rng.integers(1, 4))])))
    assert len(pairs) > 2000
    for text, entity in pairs:
        assert [m.span() for m in entity_pattern(entity).finditer(text)] == reference_spans(text, entity), entity


@pytest.mark.parametrize("which", ["rule_pairs", "spacy_pairs"])
def test_mask_properties_on_real_paragraphs(request, which):
    pairs = request.getfixturevalue(which)
    assert len(pairs) > 100
    for text, entity in pairs:
        for token in (MASK_TOKEN, TARGET_TOKEN):
            masked, n = mask_entity(text, entity, token)
            spans = reference_spans(text, entity)
            assert n == len(spans) == count_occurrences(text, entity) >= 1
            # The entity is gone, and each mask sits exactly where an occurrence was.
            assert count_occurrences(masked, entity) == 0
            expected, last = [], 0
            for s, e in spans:
                expected += [text[last:s], token]
                last = e
            assert masked == "".join(expected) + text[last:]
            assert masked.count(token) == n
            assert token not in text
            assert unmask(masked, entity, token) == text


def test_mask_whole_document():
    doc = "Document 1:\nParis is big.\n\nDocument 2:\nIn Paris, Parisians eat.\n\nDocument 3:\nNot here."
    masked, n = mask_entity(doc, "Paris")
    assert n == 2
    assert masked == "Document 1:\n[MASK] is big.\n\nDocument 2:\nIn [MASK], Parisians eat.\n\nDocument 3:\nNot here."


def test_mask_repeats_until_no_occurrence_left():
    # The second "$5" follows the word character "5" until the first is masked.
    assert count_occurrences("$5$5 paid", "$5") == 1
    masked, n = mask_entity("$5$5 paid", "$5")
    assert (masked, n) == ("[MASK][MASK] paid", 2)
    assert unmask(masked, "$5", MASK_TOKEN) == "$5$5 paid"


def test_mask_token_is_literal():
    masked, n = mask_entity("a b a", "a", r"[\1]")
    assert (masked, n) == (r"[\1] b [\1]", 2)


def test_unmask_is_not_inverse_when_text_had_the_token():
    text = "Paris [MASK] Paris"
    masked, _ = mask_entity(text, "Paris")
    assert unmask(masked, "Paris", MASK_TOKEN) != text


@pytest.mark.parametrize("entity", ["", "   ", "[MASK]", "the [MASK] x", "MASK"])
def test_bad_entities_are_rejected(entity):
    with pytest.raises(ValueError, match="entity"):
        mask_entity("the MASK [MASK] x", entity)


def test_empty_mask_token_is_rejected():
    with pytest.raises(ValueError, match="mask_token"):
        mask_entity("a b", "a", "")
