"""The one tokenizer interface that the rest of the library programs against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from memtrain_jax.atomic import content_key


@runtime_checkable
class Tokenizer(Protocol):
    """Text <-> token ids. Back-ends: sentencepiece `.model`, HF `tokenizer.json`, GGUF metadata.

    `encode` never adds BOS/EOS by itself; chat formatting (memtrain_jax.tokenizer.chat)
    decides where special tokens go.
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def token_to_id(self, token: str) -> int | None: ...


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    """A hash of how `tokenizer` encodes a fixed, varied text (plus its vocabulary size): chunks cut by one
    tokenizer are refused by a policy with another."""
    probe = "Document 12:\nThe [MASK] of Zürich, founded in 1789 by Ada Lovelace—naïve café 3.14% ✓\n\n"
    payload = {"ids": list(tokenizer.encode(probe)), "vocab": tokenizer.vocab_size}
    return content_key(payload)[:16]
