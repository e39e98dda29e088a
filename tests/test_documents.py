"""Documents: composition, masking over the whole document, token range, skipping and errors."""

import re

import numpy as np
import pytest

from memtrain_jax.data import documents
from memtrain_jax.data.documents import (
    Document,
    DocumentConfig,
    NoValidEntityError,
    PoolTooSmallError,
    build_document,
    document_rng,
    select_pivots,
)
from memtrain_jax.data.entities import make_extractor
from memtrain_jax.data.masking import count_occurrences
from memtrain_jax.data.retrieval import BM25Retriever
from memtrain_jax.data.sources import load_pool
from memtrain_jax.data.types import Paragraph

_HEADER = re.compile(r"(?:^|\n\n)Document (\d+):\n")


@pytest.fixture(scope="module")
def pool():
    return load_pool("wiki_offline")[:400]


@pytest.fixture(scope="module")
def prepared(pool):
    """Pivots (rule-based entities) and their BM25 neighbours."""
    selection = select_pivots(pool, make_extractor("rules"), 8, seed=0, log=None)
    r = BM25Retriever()
    r.build(pool)
    neighbours, _ = r.search(selection.indices, 10)
    return selection, neighbours


def _split(doc: Document) -> tuple[list[int], list[str]]:
    """(header numbers, paragraph bodies) of a document text, parsed independently."""
    numbers = [int(m.group(1)) for m in _HEADER.finditer(doc.text)]
    bodies = _HEADER.split(doc.text)[2::2]
    return numbers, bodies


def _build(pool, prepared, j, seed, config, **kw):
    selection, neighbours = prepared
    return build_document(
        pool,
        int(selection.indices[j]),
        neighbours[j],
        document_rng(seed, j),
        config,
        entities=selection.entities[j],
        **kw,
    )


@pytest.mark.parametrize("j", range(4))
def test_document_properties(pool, prepared, j):
    selection, neighbours = prepared
    config = DocumentConfig(num_paragraphs=20, num_similar=4)
    doc = _build(pool, prepared, j, seed=0, config=config)
    pivot = int(selection.indices[j])

    assert len(doc.paragraph_ids) == len(set(doc.paragraph_indices)) == 20
    assert doc.pivot_index == pivot and doc.pivot_id == pool[pivot].id and pivot in doc.paragraph_indices
    assert list(doc.similar_indices) == [int(i) for i in neighbours[j] if i != pivot][:4]
    assert set(doc.similar_indices) <= set(doc.paragraph_indices)
    assert doc.paragraph_ids == tuple(pool[i].id for i in doc.paragraph_indices)
    assert doc.gold in selection.entities[j]

    numbers, bodies = _split(doc)
    assert numbers == list(range(1, 21))
    assert len(bodies) == 20
    # Every occurrence of the gold entity, in every paragraph, is masked, and only those.
    expected_masks = sum(count_occurrences(pool[i].text, doc.gold) for i in doc.paragraph_indices)
    assert doc.mask_count == expected_masks == doc.text.count("[MASK]")
    assert doc.mask_count >= 1
    for i, body in zip(doc.paragraph_indices, bodies, strict=True):
        assert count_occurrences(body, doc.gold) == 0
        assert body.replace("[MASK]", doc.gold) == pool[i].text


def test_documents_are_deterministic_in_the_seed(pool, prepared):
    config = DocumentConfig(num_paragraphs=15, num_similar=3)
    a = _build(pool, prepared, 0, seed=7, config=config)
    assert a == _build(pool, prepared, 0, seed=7, config=config)
    others = {_build(pool, prepared, 0, seed=s, config=config).paragraph_indices for s in range(8, 12)}
    assert a.paragraph_indices not in others and len(others) > 1


def _words(text: str) -> int:
    return len(text.split())


def test_token_range_trims_random_paragraphs(pool, prepared):
    selection, _ = prepared
    config = DocumentConfig(num_paragraphs=30, num_similar=3, min_tokens=600, max_tokens=1200)
    doc = _build(pool, prepared, 1, seed=0, config=config, count_tokens=_words)
    overhead = _words("Document 30:\n") + _words("\n\n")
    independent = sum(_words(pool[i].text) + overhead for i in doc.paragraph_indices)
    assert doc.estimated_tokens == independent
    assert 600 <= independent <= 1200 and doc.in_token_range
    assert len(doc.paragraph_indices) < 30  # 30 paragraphs of ~80 words exceed 1200
    assert int(selection.indices[1]) in doc.paragraph_indices
    assert set(doc.similar_indices) <= set(doc.paragraph_indices) and len(doc.similar_indices) == 3
    # Nothing is dropped when the range is not exceeded.
    roomy = DocumentConfig(num_paragraphs=30, num_similar=3, min_tokens=600, max_tokens=10**6)
    assert len(_build(pool, prepared, 1, seed=0, config=roomy, count_tokens=_words).paragraph_indices) == 30


def test_token_range_adds_random_paragraphs(pool, prepared):
    config = DocumentConfig(num_paragraphs=5, num_similar=2, min_tokens=1500)
    doc = _build(pool, prepared, 2, seed=0, config=config, count_tokens=_words)
    overhead = _words("Document 5:\n")
    total = sum(_words(pool[i].text) + overhead for i in doc.paragraph_indices)
    assert total == doc.estimated_tokens >= 1500 and doc.in_token_range
    assert len(doc.paragraph_indices) > 5
    numbers, bodies = _split(doc)
    assert numbers == list(range(1, len(doc.paragraph_indices) + 1))


def test_unreachable_token_range_is_flagged(pool, prepared):
    tight = DocumentConfig(num_paragraphs=10, num_similar=3, max_tokens=5)
    doc = _build(pool, prepared, 0, seed=0, config=tight, count_tokens=_words)
    assert not doc.in_token_range
    assert len(doc.paragraph_indices) == 4  # pivot + 3 similar: random ones dropped, the rest kept
    small_pool = pool[:40]
    selection, neighbours = prepared
    j = next(k for k in range(len(selection.indices)) if selection.indices[k] < 40)
    nbrs = [i for i in neighbours[j] if i < 40]
    huge = DocumentConfig(num_paragraphs=10, num_similar=2, min_tokens=10**6)
    doc = build_document(
        small_pool, int(selection.indices[j]), nbrs, document_rng(0, 0), huge,
        entities=selection.entities[j], count_tokens=_words,
    )  # fmt: skip
    assert not doc.in_token_range and sorted(doc.paragraph_indices) == list(range(40))


def test_token_range_needs_a_counter(pool, prepared):
    with pytest.raises(ValueError, match="count_tokens"):
        _build(pool, prepared, 0, seed=0, config=DocumentConfig(num_paragraphs=5, num_similar=1, max_tokens=100))


def test_pool_too_small_is_a_clear_error(pool):
    with pytest.raises(PoolTooSmallError, match=r"5 paragraphs.*num_paragraphs=10"):
        build_document(pool[:5], 0, [1, 2], document_rng(0, 0), DocumentConfig(10, 2), entities=["x"])


def test_pivot_without_entity_is_an_error(pool):
    with pytest.raises(NoValidEntityError, match="no valid entity"):
        build_document(pool, 0, [1, 2], document_rng(0, 0), DocumentConfig(10, 2), entities=[])
    # Entities that would collide with the mask token are not usable either.
    with pytest.raises(NoValidEntityError):
        build_document(pool, 0, [1, 2], document_rng(0, 0), DocumentConfig(10, 2), entities=["MASK"])


class _EveryOtherExtractor:
    """Entities only for paragraphs whose id number is even; the first word otherwise."""

    def extract(self, paragraphs):
        return [[p.text.split()[0]] if int(p.id[1:]) % 2 == 0 else [] for p in paragraphs]


def test_select_pivots_skips_and_counts():
    pool = [Paragraph(id=f"p{i}", title="t", text=f"Word{i} appears here.") for i in range(50)]
    selection = select_pivots(pool, _EveryOtherExtractor(), 0, seed=3, batch_size=7, log=None)
    assert sorted(selection.indices.tolist()) == list(range(0, 50, 2))
    assert selection.num_examined == 50 and selection.num_skipped == 25
    assert all(e == (f"Word{i}",) for i, e in zip(selection.indices, selection.entities, strict=True))
    limited = select_pivots(pool, _EveryOtherExtractor(), 5, seed=3, batch_size=7, log=None)
    np.testing.assert_array_equal(limited.indices, selection.indices[:5])
    assert limited.num_skipped == limited.num_examined - 5
    # A different seed walks the pool in another order.
    assert select_pivots(pool, _EveryOtherExtractor(), 5, seed=4, log=None).indices.tolist() != limited.indices.tolist()


def test_headers_are_never_masked():
    pool = [Paragraph(id=f"p{i}", title="t", text=f"Team {i % 4} won game {i}.") for i in range(12)]
    doc = build_document(pool, 3, [7, 11], document_rng(0, 1), DocumentConfig(12, 2), entities=["3"])
    numbers, bodies = _split(doc)
    assert numbers == list(range(1, 13))  # "Document 3:" survives an entity "3"
    assert doc.mask_count == sum(count_occurrences(p.text, "3") for p in pool) == 4


def test_json_round_trip(pool, prepared):
    doc = _build(pool, prepared, 3, seed=1, config=DocumentConfig(8, 2))
    assert Document.from_json(doc.to_json()) == doc


def test_document_config_validation():
    with pytest.raises(ValueError, match="num_similar=10"):
        DocumentConfig(num_paragraphs=10, num_similar=10)
    with pytest.raises(ValueError, match="header"):
        DocumentConfig(header="Paragraph:")
    with pytest.raises(ValueError, match="min_tokens=10 exceeds"):
        DocumentConfig(min_tokens=10, max_tokens=5)
    with pytest.raises(KeyError, match="num_paragraph"):
        DocumentConfig.from_config({"num_paragraph": 3})


def test_spacy_entities_on_a_tiny_pool(pool):
    extractor = make_extractor("spacy")
    tiny = pool[:12]
    selection = select_pivots(tiny, extractor, 2, seed=0, log=None)
    assert len(selection.indices) == 2
    for j, pivot in enumerate(selection.indices):
        raw = {text for text, _label in extractor.entities([tiny[pivot].text])[0]}
        doc = build_document(
            tiny, int(pivot), [], document_rng(0, j), DocumentConfig(12, 0), entities=selection.entities[j]
        )
        assert doc.gold in raw  # a spaCy NER span of the pivot
        assert count_occurrences(doc.text, doc.gold) == 0 and doc.mask_count >= 1


def test_draw_random_is_exhaustive_and_distinct():
    rng = np.random.default_rng(0)
    taken = {0, 5}
    drawn = documents._draw_random(rng, 10, taken, 8)
    assert sorted(drawn) == [1, 2, 3, 4, 6, 7, 8, 9] and taken == set(range(10))
    with pytest.raises(PoolTooSmallError):
        documents._draw_random(rng, 10, taken, 1)


def _leak_pool() -> list[Paragraph]:
    texts = [
        "Brazil borders Peru. Lima is the capital of Peru.",  # the pivot
        "The Brazilian team played in Lima.",  # "Brazil" leaks through "Brazilian"
        "Oranges grow in warm places.",
        "Rivers flow to the sea.",
    ]
    return [Paragraph(id=f"p{i}", title=f"t{i}", text=t) for i, t in enumerate(texts)]


def test_leaking_entities_are_counted_kept_by_default_and_skipped_on_request():
    pool = _leak_pool()
    config = DocumentConfig(num_paragraphs=4, num_similar=1)
    assert documents.entity_leaks("[MASK] borders Peru. The Brazilian team", "Brazil")  # word-boundary masking
    assert documents.entity_leaks("the brazil nut", "Brazil")  # another casing also gives it away
    assert not documents.entity_leaks("The [MASK] team", "Brazil")
    # The paper's rule keeps a leaking entity: over seeds, "Brazil" is drawn and stays readable.
    golds = set()
    for seed in range(20):
        doc = build_document(pool, 0, [1], document_rng(seed, 0), config, entities=["Brazil", "Peru"])
        golds.add(doc.gold)
        assert documents.entity_leaks(doc.text, doc.gold) == (doc.gold == "Brazil")
    assert golds == {"Brazil", "Peru"}
    # With the switch, only non-leaking entities are ever masked; with none left, the pivot is skipped.
    skip = DocumentConfig(num_paragraphs=4, num_similar=1, skip_leaking_entities=True)
    for seed in range(20):
        doc = build_document(pool, 0, [1], document_rng(seed, 0), skip, entities=["Brazil", "Peru"])
        assert doc.gold == "Peru" and not documents.entity_leaks(doc.text, doc.gold)
    with pytest.raises(NoValidEntityError, match="leaks"):
        build_document(pool, 0, [1], document_rng(0, 0), skip, entities=["Brazil"])


@pytest.mark.parametrize("j", range(4))
def test_pivot_scope_masks_the_pivot_only_and_keeps_the_name_elsewhere(pool, prepared, j):
    selection, neighbours = prepared
    config = DocumentConfig(num_paragraphs=6, num_similar=2, mask_scope="pivot")
    doc = _build(pool, prepared, j, seed=0, config=config)
    pivot = doc.pivot_index
    named = [e for e in selection.entities[j] if any(count_occurrences(pool[i].text, e) for i in doc.similar_indices)]
    # The entity is one a similar paragraph names whenever there is such an entity.
    assert doc.gold in (named or selection.entities[j])
    _, bodies = _split(doc)
    for i, body in zip(doc.paragraph_indices, bodies, strict=True):
        if i == pivot:  # every occurrence in the pivot is masked, and only those
            assert count_occurrences(body, doc.gold) == 0 and body.replace("[MASK]", doc.gold) == pool[i].text
        else:  # the other paragraphs are verbatim, so the document still names the entity when one was named
            assert body == pool[i].text
    assert doc.mask_count == count_occurrences(pool[pivot].text, doc.gold) == doc.text.count("[MASK]") >= 1
    assert (count_occurrences(doc.text, doc.gold) > 0) == bool(named)


def test_pivot_scope_prefers_a_named_entity_and_checks_leaks_in_the_pivot_only():
    pool = _leak_pool()
    # "Peru" is named by the similar paragraph 3 ("Peru" in p3 below); "Lima" by p1; "Brazil" nowhere else whole.
    pool[3] = Paragraph(id="p3", title="t3", text="Peru exports copper.")
    config = DocumentConfig(num_paragraphs=4, num_similar=2, mask_scope="pivot")
    golds = {
        build_document(pool, 0, [3, 1], document_rng(s, 0), config, entities=["Brazil", "Peru", "Lima"]).gold
        for s in range(30)
    }
    assert golds == {"Peru", "Lima"}
    # A name readable in a similar paragraph is the point of the variant, not a leak: nothing is skipped.
    skip = DocumentConfig(num_paragraphs=4, num_similar=1, mask_scope="pivot", skip_leaking_entities=True)
    doc = build_document(pool, 0, [1], document_rng(0, 0), skip, entities=["Lima"])
    assert doc.gold == "Lima" and "Lima" in doc.text and doc.mask_count == 1
    with pytest.raises(ValueError, match="mask_scope='chunk'"):
        DocumentConfig(mask_scope="chunk")
