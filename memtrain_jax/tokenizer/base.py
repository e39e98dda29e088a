"""The one tokenizer interface that the rest of the library programs against."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable


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
