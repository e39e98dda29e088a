"""IMR probes: only chunks read before the step are masked (paper), the code variant's range,
exact masking of the chosen chunk, and determinism from (seed, episode id, step)."""

import pytest

from memtrain_jax.data.entities import make_extractor
from memtrain_jax.data.masking import count_occurrences, mask_entity
from memtrain_jax.data.probes import candidate_chunks, make_probe, probe_rng
from memtrain_jax.data.sources import load_pool


@pytest.fixture(scope="module")
def chunks():
    """Eight chunk texts, each a few real paragraphs (every one holds rule-based entities)."""
    pool = load_pool("wiki_offline")
    return ["\n\n".join(p.text for p in pool[3 * i : 3 * i + 3]) for i in range(8)]


@pytest.fixture(scope="module")
def extractor():
    return make_extractor("rules")


def test_candidate_chunks():
    assert candidate_chunks(1, 8, "paper") == [0]
    assert candidate_chunks(5, 8, "paper") == [0, 1, 2, 3, 4]
    assert candidate_chunks(8, 8, "paper") == list(range(8))
    assert candidate_chunks(1, 8, "code") == [1]
    assert candidate_chunks(5, 8, "code") == [1, 2, 3, 4, 5]
    assert candidate_chunks(8, 8, "code") == list(range(1, 8))
    assert [candidate_chunks(k, 8, "latest") for k in (1, 5, 8)] == [[0], [4], [7]]
    with pytest.raises(ValueError, match="'papr'"):
        candidate_chunks(2, 8, "papr")
    with pytest.raises(ValueError, match="step_k=0"):
        candidate_chunks(0, 8)
    with pytest.raises(ValueError, match="step_k=9"):
        candidate_chunks(9, 8)


@pytest.mark.parametrize("mode", ["paper", "code", "latest"])
def test_probes_mask_only_allowed_chunks(chunks, extractor, mode):
    for step in range(1, 9):
        for episode in range(12):
            probe = make_probe(chunks, step, probe_rng(0, episode, step), extractor=extractor, mode=mode)
            assert probe is not None and probe.step == step
            if mode == "paper":
                assert 0 <= probe.chunk_index < step  # read before the memory at this step was written
            elif mode == "latest":
                assert probe.chunk_index == step - 1  # the chunk read by the turn that wrote this memory
            else:
                assert 1 <= probe.chunk_index <= min(step, 7)
            original = chunks[probe.chunk_index]
            assert (probe.masked_chunk, probe.mask_count) == mask_entity(original, probe.gold, "[TARGET]")
            assert 1 <= probe.mask_count < 5 and count_occurrences(probe.masked_chunk, probe.gold) == 0
    # The draw covers the candidates (not a constant choice).
    drawn = {make_probe(chunks, 8, probe_rng(0, e, 8), extractor=extractor, mode=mode).chunk_index for e in range(64)}
    assert drawn == set(candidate_chunks(8, 8, mode))


def test_probe_entities_are_valid_entities_of_the_chunk(chunks, extractor):
    from memtrain_jax.data.types import Paragraph

    for episode in range(10):
        probe = make_probe(chunks, 6, probe_rng(1, episode, 6), extractor=extractor)
        found = extractor.extract([Paragraph(id="c", title="", text=chunks[probe.chunk_index])])[0]
        assert probe.gold in found


def test_probes_are_deterministic(chunks, extractor):
    a = make_probe(chunks, 6, probe_rng(3, 17, 6), extractor=extractor)
    assert a == make_probe(chunks, 6, probe_rng(3, 17, 6), extractor=extractor)
    others = [make_probe(chunks, 6, probe_rng(3, e, 6), extractor=extractor) for e in range(18, 30)]
    assert any(o != a for o in others)
    # Another step of the same episode draws from its own stream.
    assert probe_rng(3, 17, 6).integers(2**62) != probe_rng(3, 17, 5).integers(2**62)


def test_candidate_entities_route(chunks):
    entities = ["Nonexistent Entity", "Zzzz"]
    assert make_probe(chunks, 4, probe_rng(0, 0, 4), entities=entities) is None
    # An entity present only in chunk 2 forces that chunk (the only candidate with a valid entity).
    word = next(
        w for w in chunks[2].split() if w.istitle() and len(w) > 6 and all(w not in c for c in chunks[:2] + chunks[3:])
    )
    probe = make_probe(chunks, 4, probe_rng(0, 0, 4), entities=[word])
    assert probe.chunk_index == 2 and probe.gold == word
    # Chunk 2 is not yet read at step 2: no probe can use it.
    assert make_probe(chunks, 2, probe_rng(0, 0, 2), entities=[word]) is None


def test_make_probe_argument_errors(chunks, extractor):
    with pytest.raises(ValueError, match="exactly one"):
        make_probe(chunks, 2, probe_rng(0, 0, 2))
    with pytest.raises(ValueError, match="exactly one"):
        make_probe(chunks, 2, probe_rng(0, 0, 2), extractor=extractor, entities=["x"])
    with pytest.raises(ValueError, match="'bogus'"):
        make_probe(chunks, 2, probe_rng(0, 0, 2), extractor=extractor, mode="bogus")


def test_probes_of_entities_named_once(chunks):
    """The `named_once` ablation (data.probes.max_occurrences = 2, read into AgentConfig apart from data.entities')
    draws only entities that occur once in their chunk; the paper's 5 also draws recurring ones."""
    from memtrain_jax.agent import AgentConfig
    from memtrain_jax.config import load_config

    config = load_config("configs/memtrain.py:tiny,named_once")
    agent = AgentConfig.from_config(config)
    assert (agent.probe_max_occurrences, agent.max_occurrences) == (2, int(config.data.entities.max_occurrences))
    counts = {}
    for limit in (2, 5):
        extractor = make_extractor("rules", max_occurrences=limit)
        probes = [make_probe(chunks, 8, probe_rng(0, e, 8), extractor=extractor) for e in range(64)]
        counts[limit] = [count_occurrences(chunks[p.chunk_index], p.gold) for p in probes]
    assert set(counts[2]) == {1}
    assert max(counts[5]) > 1
