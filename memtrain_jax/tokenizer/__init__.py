"""Tokenizers (SentencePiece, HF tokenizers, GGUF metadata) behind one protocol, and chat formats."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from memtrain_jax.tokenizer.base import Tokenizer
from memtrain_jax.tokenizer.chat import CHAT_FORMATS, ChatFormat, get_chat_format
from memtrain_jax.tokenizer.hf_tokenizer import HFTokenizer
from memtrain_jax.tokenizer.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece

__all__ = [
    "CHAT_FORMATS",
    "ChatFormat",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "Tokenizer",
    "check_tokenizer_fits_model",
    "get_chat_format",
    "load_tokenizer",
    "train_sentencepiece",
]

TOKENIZER_KINDS = ("sentencepiece", "hf", "gguf")


def _kind_from_path(path: str) -> str:
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "tokenizer.json")):
            return "hf"
        if os.path.isfile(os.path.join(path, "tokenizer.model")):
            return "sentencepiece"
        raise ValueError(f"Directory {path!r} holds neither tokenizer.json nor tokenizer.model.")
    if path.endswith(".model"):
        return "sentencepiece"
    if path.endswith(".json"):
        return "hf"
    if path.endswith(".gguf"):
        return "gguf"
    raise ValueError(
        f"Cannot tell the tokenizer kind of {path!r}: expected a .model (SentencePiece), .json (HF tokenizer.json), "
        ".gguf file or a directory with tokenizer.json / tokenizer.model; or pass {'kind': ..., 'path': ...} "
        f"with kind in {TOKENIZER_KINDS}."
    )


def load_tokenizer(spec_or_path: str | os.PathLike | Mapping[str, Any] | Tokenizer) -> Tokenizer:
    """Builds a tokenizer from a path or a spec.

    Accepted: a `.model` file (SentencePiece), a `tokenizer.json` file, a directory with `tokenizer.json`
    (+ `tokenizer_config.json`) or `tokenizer.model`, a `.gguf` file (tokenizer from its metadata), a mapping
    `{"kind": "sentencepiece"|"hf"|"gguf", "path": ...}` (e.g. a config section), or a Tokenizer (returned as is).
    """
    if isinstance(spec_or_path, Tokenizer) and not isinstance(spec_or_path, (str, os.PathLike)):
        return spec_or_path
    if isinstance(spec_or_path, Mapping) or hasattr(spec_or_path, "to_dict"):
        spec = dict(spec_or_path.to_dict() if hasattr(spec_or_path, "to_dict") else spec_or_path)
        unknown = set(spec) - {"kind", "path"}
        if unknown or "path" not in spec:
            raise ValueError(f"Tokenizer spec {spec!r} needs the key 'path' and optionally 'kind', nothing else.")
        path = os.fspath(spec["path"])
        kind = spec.get("kind") or _kind_from_path(path)
    else:
        path = os.fspath(spec_or_path)
        kind = _kind_from_path(path)
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"Unknown tokenizer kind {kind!r}; expected one of {TOKENIZER_KINDS}.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"Tokenizer path {path!r} (kind {kind!r}) does not exist.")
    if kind == "sentencepiece":
        return SentencePieceTokenizer(os.path.join(path, "tokenizer.model") if os.path.isdir(path) else path)
    if kind == "hf":
        return HFTokenizer.from_directory(path) if os.path.isdir(path) else HFTokenizer(path)
    from memtrain_jax.tokenizer.gguf_tokenizer import load_gguf_tokenizer  # lazy: pulls in the gguf package

    return load_gguf_tokenizer(path)


def check_tokenizer_fits_model(tokenizer: Tokenizer, model_config: Any) -> None:
    """Raises ValueError when some id the tokenizer can produce (any vocab id, bos/eos/pad, specials)
    is >= `model_config.vocab_size`, i.e. would index past the model's embedding table."""
    model_vocab = int(model_config.vocab_size)
    ids = {"largest vocabulary id": tokenizer.vocab_size - 1}
    for name in ("bos_id", "eos_id", "pad_id"):
        value = getattr(tokenizer, name)
        if value is not None:
            ids[name] = int(value)
    special = tuple(getattr(tokenizer, "special_ids", ()))
    if special:
        ids["largest special id"] = max(special)
    too_big = {name: i for name, i in ids.items() if i >= model_vocab}
    if too_big:
        details = ", ".join(f"{name}={i}" for name, i in too_big.items())
        raise ValueError(
            f"Tokenizer {tokenizer!r} does not fit the model: {details} but model vocab_size={model_vocab} "
            f"(ids must be < vocab_size). Use a model config with vocab_size >= {max(ids.values()) + 1} "
            "or the tokenizer the model was trained with."
        )
