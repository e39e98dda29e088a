"""The format warm-up's memory-update targets (memtrain_jax/tasks/format.py): what each `memory_target` keeps,
checked against the sentences written out by hand."""

import numpy as np
import pytest

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import KIND_IDS
from memtrain_jax.agent.prompts import PromptBuilder, PromptConfig
from memtrain_jax.agent.rollout import Episode
from memtrain_jax.tasks.format import format_examples

CHUNKS = (
    "Alpha was born in Ulm. [MASK] taught Alpha physics. The city had a river.",
    "Beta moved to Bern. He wrote about [MASK] often. The lake froze in winter.",
    "Gamma lived in Graz. Nothing else is known.",
)


def _memory_targets(tokenizer, chat, memory_target: str, memory_tokens: int) -> list[str]:
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    config = AgentConfig(memory_tokens=memory_tokens)
    chunks = [np.asarray(tokenizer.encode(text), np.int32) for text in CHUNKS]
    episode = Episode(episode_id=0, answer="Einstein", chunks=chunks, chunk_texts=list(CHUNKS))
    stop = chat.stop_tokens(tokenizer)[0]
    examples = format_examples(
        [episode], builder, tokenizer, config, stop, None, np.random.default_rng(0), memory_target=memory_target
    )
    memory = [r for r, k in zip(examples.responses, examples.kinds, strict=True) if k == KIND_IDS["memory"]]
    assert all(int(r[-1]) == stop for r in memory)
    return [tokenizer.decode(r[:-1].tolist()) for r in memory]


def test_masked_first_keeps_the_masked_sentences_ahead_of_each_chunk(tokenizer, chat):
    targets = _memory_targets(tokenizer, chat, "masked_first", memory_tokens=512)
    assert targets == [
        "[MASK] taught Alpha physics. Alpha was born in Ulm. The city had a river.",
        "[MASK] taught Alpha physics. He wrote about [MASK] often. Beta moved to Bern. The lake froze in winter.",
        "[MASK] taught Alpha physics. He wrote about [MASK] often. Gamma lived in Graz. Nothing else is known.",
    ]


def test_latest_first_puts_the_chunk_just_read_first(tokenizer, chat):
    targets = _memory_targets(tokenizer, chat, "latest_first", memory_tokens=512)
    assert targets == [
        "Alpha was born in Ulm. [MASK] taught Alpha physics. The city had a river.",
        "Beta moved to Bern. He wrote about [MASK] often. The lake froze in winter. [MASK] taught Alpha physics.",
        "Gamma lived in Graz. Nothing else is known. [MASK] taught Alpha physics. He wrote about [MASK] often.",
    ]


@pytest.mark.parametrize("memory_target", ["masked_first", "latest_first"])
def test_targets_are_cut_to_the_memory_budget(tokenizer, chat, memory_target):
    """Cut to memory_tokens - 1 (room for the end-of-turn token): with a budget shorter than a chunk, the
    latest_first memory is the chunk's opening, the masked_first memory the first [MASK] sentence's."""
    budget = 8
    targets = _memory_targets(tokenizer, chat, memory_target, memory_tokens=budget)
    full = _memory_targets(tokenizer, chat, memory_target, memory_tokens=512)
    for cut, whole in zip(targets, full, strict=True):
        assert len(tokenizer.encode(cut)) <= budget - 1
        assert tokenizer.encode(whole)[: budget - 1] == tokenizer.encode(cut)
    if memory_target == "latest_first":
        assert targets[2].startswith("Gamma lived")
    else:
        assert targets[2].startswith("[MASK] taught")


def test_an_unknown_memory_target_is_refused_with_its_name(tokenizer, chat):
    with pytest.raises(ValueError, match="'newest'"):
        _memory_targets(tokenizer, chat, "newest", memory_tokens=64)


class _Names:
    """An entity extractor proposing the listed names that occur in each paragraph, in text order."""

    NAMES = ("Alpha", "Ulm", "Beta", "Bern", "Gamma", "Graz")

    def extract(self, paragraphs):
        return [sorted((n for n in self.NAMES if n in p.text), key=p.text.index) for p in paragraphs]


def _recall_targets(tokenizer, chat, recall_entities: int) -> list[str]:
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    chunks = [np.asarray(tokenizer.encode(text), np.int32) for text in CHUNKS]
    episode = Episode(episode_id=0, answer="Einstein", chunks=chunks, chunk_texts=list(CHUNKS))
    stop = chat.stop_tokens(tokenizer)[0]
    examples = format_examples(
        [episode], builder, tokenizer, AgentConfig(memory_tokens=512), stop, _Names(),
        np.random.default_rng(0), memory_examples=False, recall_entities=recall_entities,
    )  # fmt: skip
    recall = [r for r, k in zip(examples.responses, examples.kinds, strict=True) if k == KIND_IDS["recall"]]
    return [tokenizer.decode(r[:-1].tolist()) for r in recall]


def test_recall_entities_gives_that_many_distinct_recall_examples_per_chunk(tokenizer, chat):
    """Every chunk names two entities: 3 per chunk asks for more than there are, so each chunk gives both, once;
    1 per chunk gives one of them, the first chunk's the same first draw of the same generator."""
    three, one = _recall_targets(tokenizer, chat, 3), _recall_targets(tokenizer, chat, 1)
    boxed = [f"\\boxed{{{n}}}" for n in _Names.NAMES]
    assert len(three) == 6 and sorted(three) == sorted(boxed)
    for chunk in range(3):
        assert set(three[2 * chunk : 2 * chunk + 2]) == set(boxed[2 * chunk : 2 * chunk + 2])
        assert one[chunk] in boxed[2 * chunk : 2 * chunk + 2]
    assert one[0] == three[0]
    with pytest.raises(ValueError, match="format_recall_entities"):
        _recall_targets(tokenizer, chat, 0)


def _final_memory(tokenizer, chat, chunks: tuple[str, ...], answer: str) -> str:
    builder = PromptBuilder(tokenizer, chat, PromptConfig())
    ids = [np.asarray(tokenizer.encode(text), np.int32) for text in chunks]
    episode = Episode(episode_id=0, answer=answer, chunks=ids, chunk_texts=list(chunks))
    stop = chat.stop_tokens(tokenizer)[0]
    examples = format_examples(
        [episode], builder, tokenizer, AgentConfig(memory_tokens=512), stop, None, np.random.default_rng(0)
    )
    (prompt,) = [p for p, k in zip(examples.prompts, examples.kinds, strict=True) if k == KIND_IDS["answer"]]
    return tokenizer.decode(prompt.tolist())


def test_the_final_answer_memory_keeps_the_sentence_naming_the_entity_when_the_document_has_one(tokenizer, chat):
    # mask_scope="document": the entity is named nowhere, the memory is the first [MASK] sentence onwards.
    plain = _final_memory(tokenizer, chat, CHUNKS, "Einstein")
    assert "[MASK] taught Alpha physics. The city had a river." in plain and "Einstein was" not in plain
    # mask_scope="pivot": a similar paragraph names it; that sentence comes first, then the masked window.
    named = (CHUNKS[0], "Gamma met Einstein in Graz. Nothing else is known.")
    memory = _final_memory(tokenizer, chat, named, "Einstein")
    assert "Gamma met Einstein in Graz. [MASK] taught Alpha physics. The city had a river." in memory
