"""The format warm-up's memory-update targets (memtrain_jax/train/format.py): what each `memory_target` keeps,
checked against the sentences written out by hand."""

import numpy as np
import pytest

from memtrain_jax.agent.config import AgentConfig
from memtrain_jax.agent.credit import KIND_IDS
from memtrain_jax.agent.prompts import PromptBuilder, PromptConfig
from memtrain_jax.agent.rollout import Episode
from memtrain_jax.train.format import format_examples

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
