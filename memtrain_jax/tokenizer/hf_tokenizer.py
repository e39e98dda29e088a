"""Hugging Face `tokenizers` back-end: a `tokenizer.json` (+ optional `tokenizer_config.json`).

BOS/EOS/PAD come from `tokenizer_config.json` (`bos_token`, `eos_token`, `pad_token`, strings or
AddedToken dicts) when given. The same class wraps tokenizers built in memory (e.g. from GGUF
metadata) through `HFTokenizer.from_tokenizer`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import tokenizers

TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG_JSON = "tokenizer_config.json"


def _token_content(value: Any) -> str | None:
    """`tokenizer_config.json` stores special tokens as a string or as an AddedToken dict."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(f"Cannot read a special token from {value!r}: expected a string or a dict with 'content'.")


class HFTokenizer:
    """Tokenizer protocol over a `tokenizers.Tokenizer`.

    `encode` adds no BOS/EOS (post-processor disabled via `add_special_tokens=False`); special tokens
    written in the text (e.g. `<|im_start|>`) are matched and become their single ids. `decode`
    keeps special tokens unless `skip_special_tokens=True`, like transformers' `decode`.
    `pad_id` falls back to EOS, then to 0, when the config names no pad token: padded positions are
    masked out, so any in-vocabulary id is correct there.
    """

    def __init__(self, tokenizer_json_path: str | os.PathLike, tokenizer_config_path: str | os.PathLike | None = None):
        tokenizer_json_path = os.fspath(tokenizer_json_path)
        if not os.path.isfile(tokenizer_json_path):
            raise FileNotFoundError(f"tokenizer.json file {tokenizer_json_path!r} does not exist.")
        try:
            tok = tokenizers.Tokenizer.from_file(tokenizer_json_path)
        except Exception as e:  # the Rust side raises a bare Exception on malformed files
            raise ValueError(f"{tokenizer_json_path!r} is not a valid tokenizers JSON file: {e}") from e
        config: dict[str, Any] = {}
        if tokenizer_config_path is not None:
            tokenizer_config_path = os.fspath(tokenizer_config_path)
            if not os.path.isfile(tokenizer_config_path):
                raise FileNotFoundError(f"tokenizer_config.json file {tokenizer_config_path!r} does not exist.")
            with open(tokenizer_config_path) as f:
                config = json.load(f)
        self._init(
            tok,
            bos_token=_token_content(config.get("bos_token")),
            eos_token=_token_content(config.get("eos_token")),
            pad_token=_token_content(config.get("pad_token")),
            unk_token=_token_content(config.get("unk_token")),
            chat_template=config.get("chat_template"),
            source=tokenizer_json_path,
        )

    def _init(
        self,
        tok: tokenizers.Tokenizer,
        bos_token: str | None,
        eos_token: str | None,
        pad_token: str | None,
        unk_token: str | None,
        chat_template: str | None,
        source: str,
    ) -> None:
        self._tok = tok
        self.source = source
        self.chat_template = chat_template
        self.bos_token, self.eos_token, self.pad_token, self.unk_token = bos_token, eos_token, pad_token, unk_token
        vocab = tok.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        for name, token in (("bos", bos_token), ("eos", eos_token), ("pad", pad_token), ("unk", unk_token)):
            if token is not None and tok.token_to_id(token) is None:
                raise ValueError(f"{name}_token {token!r} of tokenizer {source!r} is not in its vocabulary.")

    @classmethod
    def from_tokenizer(
        cls,
        tok: tokenizers.Tokenizer,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        unk_token: str | None = None,
        chat_template: str | None = None,
        source: str = "<in-memory>",
    ) -> HFTokenizer:
        """Wraps an in-memory `tokenizers.Tokenizer` (special tokens given by their strings)."""
        self = cls.__new__(cls)
        self._init(tok, bos_token, eos_token, pad_token, unk_token, chat_template, source)
        return self

    @classmethod
    def from_directory(cls, directory: str | os.PathLike) -> HFTokenizer:
        """Loads `directory/tokenizer.json` and, when present, `directory/tokenizer_config.json`."""
        directory = os.fspath(directory)
        json_path = os.path.join(directory, TOKENIZER_JSON)
        if not os.path.isfile(json_path):
            raise FileNotFoundError(f"No {TOKENIZER_JSON} in directory {directory!r}.")
        config_path = os.path.join(directory, TOKENIZER_CONFIG_JSON)
        return cls(json_path, config_path if os.path.isfile(config_path) else None)

    def save(self, directory: str | os.PathLike) -> None:
        """Writes `tokenizer.json` and a `tokenizer_config.json` (special tokens, chat template) to `directory`."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        self._tok.save(os.path.join(directory, TOKENIZER_JSON))
        config = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            "pad_token": self.pad_token,
            "unk_token": self.unk_token,
            "chat_template": self.chat_template,
        }
        with open(os.path.join(directory, TOKENIZER_CONFIG_JSON), "w") as f:
            json.dump(config, f, indent=1)

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Largest id + 1 (added tokens included)."""
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self._tok.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self._tok.token_to_id(self.eos_token)

    @property
    def pad_id(self) -> int:
        if self.pad_token is not None:
            return self._tok.token_to_id(self.pad_token)
        eos = self.eos_id
        return eos if eos is not None else 0

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of the added tokens marked special (chat markers, bos/eos...)."""
        return tuple(sorted(i for i, t in self._tok.get_added_tokens_decoder().items() if t.special))

    def encode(self, text: str) -> list[int]:
        """Text -> ids without BOS/EOS; special tokens in the text become single ids."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text (special tokens kept unless `skip_special_tokens`)."""
        ids = [int(i) for i in ids]
        for i in ids:
            if not 0 <= i < self._vocab_size:
                raise ValueError(f"Token id {i} is outside the vocabulary [0, {self._vocab_size}) of {self.source!r}.")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        """The token string of id `i`."""
        return self._tok.id_to_token(int(i))

    def __repr__(self) -> str:
        return f"HFTokenizer({self.source!r}, vocab_size={self.vocab_size})"
