"""A complete Hugging Face checkpoint folder: weights, config, generation config and tokenizer files.

`export_hf` writes what `transformers` needs to use the model the way we do: `AutoTokenizer` gives our ids
(a SentencePiece tokenizer is converted to an equivalent `tokenizers` tokenizer.json), its `chat_template`
renders our chat format's prompt, and generation stops on our chat format's stop tokens. The folder also
loads back into memtrain (`source="hf"`) with the same tokenizer and chat format.

How exact the SentencePiece conversion is. Models trained by `train_sentencepiece` (BPE, identity
normalization, no dummy prefix) encode every text to the same ids, with one intended exception: control pieces
(`<s>`, `</s>`, `<pad>`, `<unk>`) written literally in a text become their single ids, as in every Hugging Face
tokenizer (SentencePiece spells them out piece by piece). Other models, as in transformers' own conversion:
unigram segmentations that tie within float32 rounding may be broken the other way (SentencePiece sums scores
in float32; a few paragraphs in a thousand); with a dummy prefix or extra-whitespace removal, the spaces next to
a user-defined piece (e.g. a text starting with `<|im_start|>`) are treated per part of the text.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import tokenizers
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers.models import BPE, Unigram

from memtrain_jax.atomic import write_file_atomically
from memtrain_jax.checkpoint.hf import CONFIG_FILE, save_hf_checkpoint
from memtrain_jax.config import UsageError
from memtrain_jax.model.config import ModelConfig
from memtrain_jax.tokenizer.base import Tokenizer
from memtrain_jax.tokenizer.chat import ChatFormat, chat_format_from_template, get_chat_format
from memtrain_jax.tokenizer.hf_tokenizer import TOKENIZER_CONFIG_JSON, TOKENIZER_JSON, HFTokenizer
from memtrain_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer

GENERATION_CONFIG_JSON = "generation_config.json"
SPECIAL_TOKENS_MAP_JSON = "special_tokens_map.json"
# Tokenizer files transformers reads before (or instead of) ours; left over from another export they would win.
STALE_TOKENIZER_FILES = (
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)

# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType.
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2
_NEVER = -1e9  # unigram score of pieces SentencePiece never matches in text (byte, control, unused)


# ------------------------------------------------------------------------------------------------ run directories


def _is_run_directory(path: str) -> bool:
    marks = ("run.json", "config_history.jsonl")
    if any(os.path.isfile(os.path.join(path, m)) for m in marks) or os.path.isdir(os.path.join(path, "checkpoints")):
        return True
    config = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config):
        return False
    try:
        with open(config) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "axis_rules" in data  # a run's config, not a HF model's config.json


def refuse_run_directory(out: str) -> None:
    """Raises UsageError (a ValueError) when `out` is a memtrain run directory or lies inside one.

    Export writes config.json, which would overwrite the run's own config.json, and a HF folder inside a
    run would be mistaken for part of it; so the folder must live elsewhere.
    """
    path = os.path.abspath(os.fspath(out))
    while True:
        if os.path.isdir(path) and _is_run_directory(path):
            raise UsageError(
                f"--out {out} is inside the run directory {path}; export writes a HuggingFace folder elsewhere, "
                f"e.g. --out {path}-hf"
            )
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


# ------------------------------------------------------------------------------------------------ SentencePiece


def _sentencepiece_proto(tokenizer: SentencePieceTokenizer) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(tokenizer.model_path, "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def _bpe_merges(pieces: Sequence[Any]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges the adjacent pair whose concatenation is the highest-scoring normal piece;
    as `tokenizers` merge ranks: every split of a normal piece into two normal pieces, best piece first."""
    normal = {p.piece: (p.score, i) for i, p in enumerate(pieces) if p.type == _NORMAL}
    ranked = []
    for piece, (score, i) in normal.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-score, i, normal[left][1], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def sentencepiece_to_tokenizers(tokenizer: SentencePieceTokenizer) -> tokenizers.Tokenizer:
    """A `tokenizers.Tokenizer` that encodes and decodes like `tokenizer`, read from its model proto.

    BPE and unigram models; the normalizer spec (precompiled charsmap, extra-whitespace removal, dummy
    prefix, whitespace escaping), byte fallback, and user-defined pieces (whole, never merged) are kept.
    Control and user-defined pieces become special added tokens.
    """
    proto = _sentencepiece_proto(tokenizer)
    trainer, spec, pieces = proto.trainer_spec, proto.normalizer_spec, proto.pieces
    if spec.name not in ("identity", "") and not spec.precompiled_charsmap:
        raise ValueError(f"{tokenizer.model_path}: normalization {spec.name!r} has no precompiled charsmap to export.")
    if trainer.treat_whitespace_as_suffix:
        raise ValueError(f"{tokenizer.model_path}: treat_whitespace_as_suffix models cannot be exported.")
    unk_id = next((i for i, p in enumerate(pieces) if p.type == _UNKNOWN), None)
    if trainer.model_type == _BPE:
        model = BPE(
            vocab={p.piece: i for i, p in enumerate(pieces)},
            merges=_bpe_merges(pieces),
            unk_token=pieces[unk_id].piece if unk_id is not None else None,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
            dropout=None,
        )
    elif trainer.model_type == _UNIGRAM:
        vocab = [(p.piece, p.score if p.type in (_NORMAL, _UNKNOWN) else _NEVER) for p in pieces]
        model = Unigram(vocab=vocab, unk_id=unk_id, byte_fallback=trainer.byte_fallback)
    else:
        raise ValueError(
            f"{tokenizer.model_path}: SentencePiece model type {trainer.model_type} cannot be exported "
            "(only BPE and unigram)."
        )
    tok = tokenizers.Tokenizer(model)

    # The normalizer in SentencePiece's order: charsmap, extra spaces, whitespace escaping; then the dummy prefix.
    if spec.add_dummy_prefix and not spec.escape_whitespaces:
        raise ValueError(f"{tokenizer.model_path}: a dummy prefix without whitespace escaping cannot be exported.")
    steps: list[Any] = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:  # only spaces count: SentencePiece leaves newlines and tabs alone
        # Leading spaces become the dummy prefix themselves: a space-only start keeps original offset 0,
        # which Metaspace needs to see the first part of the text.
        leading = " " if spec.add_dummy_prefix else ""
        steps += [normalizers.Replace(Regex(r" +\z"), ""), normalizers.Replace(Regex(r"\A +"), leading)]
        steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    if spec.escape_whitespaces:
        steps.append(normalizers.Replace(" ", "▁"))
    if spec.add_dummy_prefix:
        # Metaspace adds no prefix to a text already starting with "▁"; SentencePiece does.
        if not spec.remove_extra_whitespaces:
            steps.append(normalizers.Replace(Regex(r"\A▁"), "▁▁"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    if steps:
        tok.normalizer = normalizers.Sequence(steps)

    steps = [decoders.Replace("▁", " ")] if spec.escape_whitespaces else []
    if trainer.byte_fallback:
        steps.append(decoders.ByteFallback())
    steps.append(decoders.Fuse())
    if spec.add_dummy_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)

    # Chat markers (user-defined) and control pieces are matched in the raw text and never merged.
    added = [
        AddedToken(p.piece, special=True, normalized=False)
        for p in pieces
        if p.type in (_CONTROL, _UNKNOWN, _USER_DEFINED)
    ]
    tok.add_special_tokens(added)
    return tok


def to_hf_tokenizer(tokenizer: Tokenizer) -> HFTokenizer:
    """`tokenizer` as an HFTokenizer with the same ids and special tokens (SentencePiece is converted)."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer
    if isinstance(tokenizer, SentencePieceTokenizer):
        tok = sentencepiece_to_tokenizers(tokenizer)

        def token(i: int | None) -> str | None:
            return None if i is None else tokenizer.id_to_token(i)

        return HFTokenizer.from_tokenizer(
            tok,
            bos_token=token(tokenizer.bos_id),
            eos_token=token(tokenizer.eos_id),
            pad_token=token(tokenizer.pad_id),
            unk_token=token(tokenizer.unk_id),
            source=tokenizer.model_path,
        )
    raise TypeError(
        f"Cannot export tokenizer {tokenizer!r}: only HFTokenizer and SentencePieceTokenizer are supported."
    )


# ------------------------------------------------------------------------------------------------ chat template


def _literal(text: str) -> str:
    """A Jinja string literal for `text`."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def chat_template(chat: ChatFormat, tokenizer: HFTokenizer) -> str:
    """A Jinja chat template whose rendering tokenizes (whole) to `chat.encode(tokenizer, messages)`.

    It names the format's markers, so `chat_format_from_template` maps it back to `chat.name`.
    """
    bos = tokenizer.id_to_token(tokenizer.bos_id) if tokenizer.bos_id is not None else None
    eos = tokenizer.id_to_token(tokenizer.eos_id) if tokenizer.eos_id is not None else None
    if chat.base == "chatml":
        begin = ""
        message = "'<|im_start|>' + role + '\\n' + content + '<|im_end|>' + '\\n'"
        prompt = "'<|im_start|>assistant\\n'"
    elif chat.base == "llama3":
        begin = "'<|begin_of_text|>'"
        message = "'<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' + (content | trim) + '<|eot_id|>'"
        prompt = "'<|start_header_id|>assistant<|end_header_id|>\\n\\n'"
    else:  # plain: BOS in front, EOS after each assistant message, which the text cannot express otherwise
        begin = _literal(bos) if bos else ""
        assistant = "'Assistant: ' + content + '\\n'" + (f" + {_literal(eos)}" if eos else "")
        message = f"({assistant}) if role == 'assistant' else ((role | capitalize) + ': ' + content + '\\n')"
        prompt = "'Assistant:'"

    def render(role: str, content: str) -> str:
        return "{%- set role = " + role + " %}{%- set content = " + content + " %}{{- " + message + " }}"

    parts = ["{{- " + begin + " }}"] if begin else []
    if chat.default_system is not None:
        parts.append(
            "{%- if messages[0]['role'] != 'system' %}"
            + render("'system'", _literal(chat.default_system))
            + "{%- endif %}"
        )
    parts.append("{%- for m in messages %}" + render("m['role']", "m['content']") + "{%- endfor %}")
    parts.append("{%- if add_generation_prompt %}{{- " + prompt + " }}{%- endif %}")
    template = "".join(parts)
    if chat_format_from_template(template) != chat.name:
        raise ValueError(
            f"Chat format {chat.name!r} (default system {chat.default_system!r}) cannot be written as a chat "
            f"template that reads back as itself (it reads as {chat_format_from_template(template)!r})."
        )
    return template


# ------------------------------------------------------------------------------------------------ export


def _write_json(path: str, data: Any) -> None:
    write_file_atomically(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _token_ids(ids: Sequence[int]) -> int | list[int]:
    return ids[0] if len(ids) == 1 else list(ids)


def export_hf(
    model_config: ModelConfig, params: Any, tokenizer: Tokenizer, chat_format_name: str, out: str
) -> list[str]:
    """Writes a complete HuggingFace checkpoint to `out`: config.json, safetensors weights (save_hf_checkpoint in
    checkpoint/hf.py), generation_config.json (eos/bos/pad token ids from the tokenizer and chat format stop
    tokens), and tokenizer files that `transformers.AutoTokenizer.from_pretrained(out)` loads and that tokenize
    exactly as our tokenizer does: tokenizer.json, tokenizer_config.json (with `chat_template` rendering the same
    prompt as our chat format, plus bos/eos/pad tokens), special_tokens_map.json. Returns the files written.

    Refuses (ValueError) an `out` inside a memtrain run directory. Tokenizer files of another kind that an
    earlier export may have left (STALE_TOKENIZER_FILES, which transformers would read first) are removed.
    Every process must call it (the weights may be sharded); process 0 writes.
    """
    out = os.fspath(out)
    refuse_run_directory(out)
    chat = get_chat_format(chat_format_name)
    chat.check_tokenizer(tokenizer)
    if tokenizer.vocab_size > model_config.vocab_size:
        raise ValueError(
            f"Tokenizer {tokenizer!r} has {tokenizer.vocab_size} ids but the model only {model_config.vocab_size}."
        )
    hf_tok = to_hf_tokenizer(tokenizer)
    template = chat_template(chat, hf_tok)
    stops = chat.stop_tokens(hf_tok)
    bos_id, pad_id = hf_tok.bos_id, hf_tok.pad_id

    written = [CONFIG_FILE, *save_hf_checkpoint(model_config, params, out)]
    written += [GENERATION_CONFIG_JSON, TOKENIZER_JSON, TOKENIZER_CONFIG_JSON, SPECIAL_TOKENS_MAP_JSON]
    if jax.process_index() != 0:
        return written

    # transformers' generate() and pipelines read the special ids from config.json too.
    config_path = os.path.join(out, CONFIG_FILE)
    with open(config_path) as f:
        config = json.load(f)
    config.update(bos_token_id=bos_id, eos_token_id=_token_ids(stops), pad_token_id=pad_id)
    _write_json(config_path, config)
    generation = {"bos_token_id": bos_id, "eos_token_id": _token_ids(stops), "pad_token_id": pad_id}
    _write_json(os.path.join(out, GENERATION_CONFIG_JSON), {k: v for k, v in generation.items() if v is not None})

    hf_tok.backend.save(os.path.join(out, TOKENIZER_JSON))
    specials = {
        "bos_token": hf_tok.bos_token,
        "eos_token": hf_tok.eos_token,
        "pad_token": hf_tok.id_to_token(pad_id),
        "unk_token": hf_tok.unk_token,
    }
    specials = {k: v for k, v in specials.items() if v is not None}
    markers = [t for t in chat.special_tokens if t not in specials.values()]
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "additional_special_tokens": markers,
        "add_bos_token": False,  # our encode() never adds BOS/EOS; the chat template writes them
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_config.max_position_embeddings,
        "chat_template": template,
    }
    _write_json(os.path.join(out, TOKENIZER_CONFIG_JSON), tokenizer_config)
    _write_json(os.path.join(out, SPECIAL_TOKENS_MAP_JSON), {**specials, "additional_special_tokens": markers})
    for name in STALE_TOKENIZER_FILES:
        if os.path.isfile(os.path.join(out, name)):
            os.remove(os.path.join(out, name))
    return written
