"""`export_hf` writes a HuggingFace folder that transformers (and our own loaders) use exactly as we do.

Checked for SmolLM2's tokenizer (from the shipped GGUF, chat format "smollm2") and for a SentencePiece tokenizer
trained on the pool the way the data pipeline trains one (chat format "chatml"): transformers' tokenizer gives our
ids, its chat template our prompt ids, the model our logits, and generation stops on our stop tokens.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
import sentencepiece as spm
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from memtrain_jax.checkpoint.export import (
    chat_template,
    export_hf,
    refuse_run_directory,
    sentencepiece_to_tokenizers,
    to_hf_tokenizer,
)
from memtrain_jax.checkpoint.hf import load_hf_checkpoint
from memtrain_jax.config import load_config
from memtrain_jax.data.sources import load_pool
from memtrain_jax.model import ModelConfig, forward, init_params
from memtrain_jax.tokenizer import CHAT_FORMATS, HFTokenizer, SentencePieceTokenizer, get_chat_format
from memtrain_jax.tokenizer.chat import chat_format_from_template
from memtrain_jax.tokenizer.sentencepiece_tokenizer import train_sentencepiece

VARIED = [
    "Document 12:\nThe [MASK] of Zürich, founded in 1789 by Ada Lovelace—naïve café 3.14% ✓\n\n",
    "Which entity does [TARGET] stand for? Give your answer inside \\boxed{}.",
    "日本語のテキスト, 한국어, Ελληνικά, emoji 😀🚀, math ∑∫√, combining e\u0301",
    "digits 0123456789 9876543210 1,234,567.89 -42 +3e-7",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tand\t\ttabs, newlines\n\n\nand   runs     of      spaces",
    "\n",
    " ",
    "",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "x<|im_end|>y [MASK][MASK] [TARGET].",
    "ALL CAPS, MiXeD cAsE, apostrophes don't it's, quotes \"«»\" and (brackets) [x] {y}",
    "\u00a0non-breaking\u00a0space, zero\u200bwidth, soft\u00adhyphen, \u0000 nul",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi  there\n"}],
    [
        {"role": "user", "content": "Read: the [MASK] was founded in 1789."},
        {"role": "assistant", "content": " \\boxed{Paris} "},
        {"role": "user", "content": "Und jetzt auf Deutsch? 😀"},
    ],
]


@pytest.fixture(scope="module")
def paragraphs() -> list[str]:
    return [p.text for p in load_pool("wiki_offline")[:800]]


def _train(paragraphs: list[str], directory, model_type: str) -> SentencePieceTokenizer:
    """A SentencePiece model trained as `memtrain_jax.data.prepare.load_tokenizer` trains one (on fewer texts)."""
    return SentencePieceTokenizer(
        train_sentencepiece(paragraphs[:300], str(directory / "spm"), 600, model_type=model_type)
    )


@pytest.fixture(scope="module")
def sp_bpe(paragraphs, tmp_path_factory) -> SentencePieceTokenizer:
    return _train(paragraphs, tmp_path_factory.mktemp("spm_bpe"), "bpe")


@pytest.fixture(scope="module", params=["smollm2-gguf", "sentencepiece"])
def exported(request, tokenizer, sp_bpe, tmp_path_factory):
    """(our tokenizer, chat format, model config, params, export folder, files returned)."""
    ours, chat_name = (tokenizer, "smollm2") if request.param == "smollm2-gguf" else (sp_bpe, "chatml")
    config = ModelConfig.from_dict({**load_config("models.py:tiny").to_dict(), "vocab_size": ours.vocab_size})
    params = init_params(config, jax.random.key(0))
    out = tmp_path_factory.mktemp(f"hf_{request.param}") / "model"
    files = export_hf(config, params, ours, chat_name, str(out))
    return ours, get_chat_format(chat_name), config, params, str(out), files


def test_files_and_config_ids(exported):
    ours, chat, _, _, out, files = exported
    assert sorted(os.listdir(out)) == sorted(files)
    assert set(files) == {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    }
    with open(os.path.join(out, "config.json")) as f:
        config = json.load(f)
    stops = list(chat.stop_tokens(ours))
    assert (config["bos_token_id"], config["pad_token_id"]) == (ours.bos_id, ours.pad_id)
    assert config["eos_token_id"] == (stops[0] if len(stops) == 1 else stops)


def test_transformers_tokenizer_gives_our_ids(exported, paragraphs):
    ours, _, _, _, out, _ = exported
    hf = AutoTokenizer.from_pretrained(out)
    for text in VARIED + paragraphs[300:340]:
        ids = ours.encode(text)
        assert hf.encode(text) == ids, text
        assert hf(text)["input_ids"] == ids, text
        assert hf.decode(ids) == ours.decode(ids), text
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (ours.bos_id, ours.eos_id, ours.pad_id)
    assert len(hf) == ours.vocab_size


def test_transformers_chat_template_gives_our_prompt(exported):
    ours, chat, _, _, out, _ = exported
    hf = AutoTokenizer.from_pretrained(out)
    assert chat_format_from_template(hf.chat_template) == chat.name
    for messages in CONVERSATIONS:
        for prompt in (True, False):
            ids = hf.apply_chat_template(messages, tokenize=True, add_generation_prompt=prompt, return_dict=False)
            assert ids == chat.encode(ours, messages, add_generation_prompt=prompt)
            text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
            assert text == chat.render(messages, add_generation_prompt=prompt)


def test_transformers_model_gives_our_logits(exported):
    ours, chat, config, params, out, _ = exported
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    tokens = np.asarray([chat.encode(ours, CONVERSATIONS[0])[:16], ours.encode(VARIED[0])[:16]])
    assert tokens.shape == (2, 16)
    with torch.no_grad():
        theirs = model(torch.from_numpy(tokens)).logits.numpy()
    np.testing.assert_allclose(np.asarray(forward(config, params, tokens)), theirs, rtol=0, atol=1e-4)


def test_generation_config_stops_on_our_stop_tokens(exported):
    ours, chat, _, _, out, _ = exported
    generation = GenerationConfig.from_pretrained(out)
    stops = list(chat.stop_tokens(ours))
    assert stops == ([ours.token_to_id("<|im_end|>")] if chat.name == "smollm2" else [5, 3])
    assert generation.eos_token_id == (stops[0] if len(stops) == 1 else stops)
    assert (generation.bos_token_id, generation.pad_token_id) == (ours.bos_id, ours.pad_id)


def test_our_loaders_read_the_export(exported, paragraphs):
    ours, chat, config, params, out, _ = exported
    loaded = HFTokenizer.from_directory(out)
    for text in VARIED + paragraphs[340:360]:
        assert loaded.encode(text) == ours.encode(text), text
    assert (loaded.bos_id, loaded.eos_id, loaded.pad_id, loaded.vocab_size) == (
        ours.bos_id,
        ours.eos_id,
        ours.pad_id,
        ours.vocab_size,
    )
    assert loaded.special_ids == ours.special_ids
    assert chat_format_from_template(loaded.chat_template) == chat.name
    assert chat.stop_tokens(loaded) == chat.stop_tokens(ours)
    for messages in CONVERSATIONS:
        assert chat.encode(loaded, messages) == chat.encode(ours, messages)
    config2, params2 = load_hf_checkpoint(out)
    assert config2.vocab_size == config.vocab_size
    jax.tree.map(np.testing.assert_array_equal, params2, jax.device_get(params))


# ------------------------------------------------------------------------------------------------ SentencePiece


def _mismatches(sp: SentencePieceTokenizer, texts: list[str]) -> list[str]:
    tok = sentencepiece_to_tokenizers(sp)
    return [t for t in texts if tok.encode(t, add_special_tokens=False).ids != sp.encode(t)]


def test_sentencepiece_bpe_conversion_is_exact(sp_bpe, paragraphs):
    tok = sentencepiece_to_tokenizers(sp_bpe)
    assert _mismatches(sp_bpe, VARIED + paragraphs[300:800]) == []
    for text in VARIED:
        ids = sp_bpe.encode(text)
        assert tok.decode(ids, skip_special_tokens=False) == sp_bpe.decode(ids) == text
    # Chat markers are user-defined pieces: one id each, in the text and in the vocabulary.
    assert tok.encode("<|im_start|><|im_end|>", add_special_tokens=False).ids == [4, 5]
    assert sp_bpe.encode("<|im_start|><|im_end|>") == [4, 5]


def test_sentencepiece_unigram_conversion(paragraphs, tmp_path):
    """Unigram is exact but where two segmentations tie within float32 rounding (SentencePiece sums in float32)."""
    sp = _train(paragraphs, tmp_path, "unigram")
    assert _mismatches(sp, VARIED) == []
    assert len(_mismatches(sp, paragraphs[300:800])) <= 5  # 3 of these 500 on this machine


def test_sentencepiece_default_normalization(paragraphs, tmp_path):
    """SentencePiece's defaults (nmt_nfkc, dummy prefix, extra-whitespace removal) outside user-defined pieces."""
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(paragraphs[:300]),
        model_prefix=str(tmp_path / "nfkc"),
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        num_threads=1,
        minloglevel=2,
    )
    sp = SentencePieceTokenizer(str(tmp_path / "nfkc.model"))
    texts = [t for t in VARIED if "<|" not in t] + ["ｆｕｌｌｗｉｄｔｈ ① ﬁ", "   lead", "x"] + paragraphs[300:500]
    assert sp.encode("ｆｕｌｌｗｉｄｔｈ") == sp.encode("fullwidth")  # the charsmap is at work
    assert _mismatches(sp, texts) == []


def test_sentencepiece_hf_tokenizer_keeps_specials(sp_bpe):
    hf = to_hf_tokenizer(sp_bpe)
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert (hf.bos_id, hf.eos_id, hf.pad_id, hf.vocab_size) == (2, 3, 0, 600)
    assert hf.special_ids == sp_bpe.special_ids == (0, 1, 2, 3, 4, 5)


# ------------------------------------------------------------------------------------------------ chat templates


@pytest.mark.parametrize("name", CHAT_FORMATS)
def test_chat_template_reads_back_as_its_format(name, sp_bpe, tmp_path):
    """Every format's template maps back to its name and renders our prompt text (transformers' Jinja)."""
    hf_ours = to_hf_tokenizer(sp_bpe)
    chat = get_chat_format(name)
    template = chat_template(chat, hf_ours)
    assert chat_format_from_template(template) == name
    hf_ours.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for messages in CONVERSATIONS:
        text = hf.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)
        if chat.base == "plain":  # BOS / EOS are ids in our "plain" encoding, not text
            assert text == "<s>" + chat.render(messages).replace("{Paris} \n", "{Paris} \n</s>")
            ids = hf.apply_chat_template(
                messages, chat_template=template, tokenize=True, add_generation_prompt=True, return_dict=False
            )
            assert ids == chat.encode(sp_bpe, messages)
        else:
            assert text == chat.render(messages)


# ------------------------------------------------------------------------------------------------ run directories


def test_refuse_run_directory(tmp_path):
    with_run_json = tmp_path / "a"
    with_run_json.mkdir()
    (with_run_json / "run.json").write_text("{}")
    with_checkpoints = tmp_path / "b"
    (with_checkpoints / "checkpoints").mkdir(parents=True)
    with_run_config = tmp_path / "c"
    with_run_config.mkdir()
    (with_run_config / "config.json").write_text(json.dumps({"axis_rules": [["batch", "data"]]}))
    for run in (with_run_json, with_checkpoints, with_run_config):
        for out in (run, run / "hf", run / "checkpoints" / "deep" / "er"):
            with pytest.raises(ValueError, match=f"inside the run directory {run}; .* e.g. --out {run}-hf$"):
                refuse_run_directory(str(out))
    fresh = tmp_path / "fresh"
    refuse_run_directory(str(fresh))  # not there yet
    fresh.mkdir()
    (fresh / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))  # a HF folder
    refuse_run_directory(str(fresh))
    refuse_run_directory(str(tmp_path / "a-hf"))


def test_export_refuses_a_run_directory_and_writes_nothing(sp_bpe, tmp_path):
    (tmp_path / "run.json").write_text("{}")
    config = ModelConfig.from_dict({**load_config("models.py:tiny").to_dict(), "vocab_size": sp_bpe.vocab_size})
    params = init_params(config, jax.random.key(0))
    with pytest.raises(ValueError, match="inside the run directory"):
        export_hf(config, params, sp_bpe, "chatml", str(tmp_path / "hf"))
    assert sorted(os.listdir(tmp_path)) == ["run.json"]
