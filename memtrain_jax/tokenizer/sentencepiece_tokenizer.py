"""SentencePiece back-end: train a small `.model` from text and wrap it in the Tokenizer protocol.

The trained models are lossless (identity normalisation, no extra-whitespace removal, no dummy
prefix, byte fallback), so `decode(encode(text)) == text` for any text; chat special tokens
such as `<|im_start|>` are user-defined symbols and always encode as a single id.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

# ChatML markers, so a tokenizer trained from scratch can drive the "chatml" chat format.
DEFAULT_USER_DEFINED_SYMBOLS: tuple[str, ...] = ("<|im_start|>", "<|im_end|>")

# Fixed ids of the reserved pieces in models trained by `train_sentencepiece`.
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
_NUM_BYTE_PIECES = 256


class SentencePieceTokenizer:
    """Tokenizer protocol over a SentencePiece `.model` file.

    `encode` adds no BOS/EOS. `pad_id` is the model's pad piece, or EOS (then UNK) when the
    model defines none, because the protocol requires an integer pad id.
    """

    def __init__(self, model_path: str | os.PathLike):
        model_path = os.fspath(model_path)
        if not os.path.isfile(model_path):
            raise FileNotFoundError(
                f"SentencePiece model {model_path!r} does not exist; train one with "
                "memtrain_jax.tokenizer.sentencepiece_tokenizer.train_sentencepiece or point to an existing .model."
            )
        self.model_path = model_path
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(model_path)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{model_path!r} is not a valid SentencePiece model: {e}") from e
        # The processor API does not expose piece types other than control/unknown/byte; read them from the proto.
        proto = sentencepiece_model_pb2.ModelProto()
        with open(model_path, "rb") as f:
            proto.ParseFromString(f.read())
        user_defined = sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED
        self._user_defined_ids = tuple(i for i, p in enumerate(proto.pieces) if p.type == user_defined)

    @property
    def vocab_size(self) -> int:
        return int(self._sp.GetPieceSize())

    @property
    def bos_id(self) -> int | None:
        i = int(self._sp.bos_id())
        return i if i >= 0 else None

    @property
    def eos_id(self) -> int | None:
        i = int(self._sp.eos_id())
        return i if i >= 0 else None

    @property
    def unk_id(self) -> int | None:
        i = int(self._sp.unk_id())
        return i if i >= 0 else None

    @property
    def pad_id(self) -> int:
        for i in (int(self._sp.pad_id()), self.eos_id, self.unk_id):
            if i is not None and i >= 0:
                return i
        raise ValueError(f"SentencePiece model {self.model_path!r} has no pad, eos or unk piece to pad with.")

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no BOS/EOS); user-defined symbols in the text become their single ids."""
        return [int(i) for i in self._sp.EncodeAsIds(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids -> text. Control pieces (bos/eos/pad) decode to nothing; user-defined symbols to their text."""
        ids = [int(i) for i in ids]
        vocab_size = self.vocab_size
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(f"Token id {bad[0]} is outside the vocabulary [0, {vocab_size}) of {self.model_path!r}.")
        return self._sp.DecodeIds(ids)

    def token_to_id(self, token: str) -> int | None:
        """Id of the piece `token`, or None when it is not in the vocabulary (SentencePiece would map it to UNK)."""
        i = int(self._sp.PieceToId(token))
        if i == self.unk_id and self._sp.IdToPiece(i) != token:
            return None
        return i

    def id_to_token(self, i: int) -> str:
        """The piece string of id `i`."""
        return self._sp.IdToPiece(int(i))

    @property
    def special_ids(self) -> tuple[int, ...]:
        """Ids of control and user-defined pieces (bos/eos/pad/unk and chat markers)."""
        control = (i for i in range(self.vocab_size) if self._sp.IsControl(i) or self._sp.IsUnknown(i))
        return tuple(sorted({*control, *self._user_defined_ids}))

    @property
    def user_defined_ids(self) -> tuple[int, ...]:
        """Ids of user-defined pieces (e.g. chat markers), which always encode as one id."""
        return self._user_defined_ids

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({self.model_path!r}, vocab_size={self.vocab_size})"


def train_sentencepiece(
    texts: Iterable[str],
    model_prefix: str,
    vocab_size: int,
    user_defined_symbols: Sequence[str] = DEFAULT_USER_DEFINED_SYMBOLS,
    model_type: str = "bpe",
    byte_fallback: bool = True,
    seed_sentencepiece_size: int = 1_000_000,
) -> str:
    """Trains a lossless SentencePiece model on `texts` and returns the path of `<model_prefix>.model`.

    Ids: pad=0, unk=1, bos=2, eos=3, then `user_defined_symbols` (always single ids), then (with
    `byte_fallback`) the 256 byte pieces, then learnt pieces. Training is single-threaded and
    unshuffled, so the same texts give the same model. `model_type`: "bpe" or "unigram".
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}.")
    user_defined_symbols = tuple(user_defined_symbols)
    reserved = 4 + len(user_defined_symbols) + (_NUM_BYTE_PIECES if byte_fallback else 0)
    if vocab_size <= reserved:
        raise ValueError(
            f"vocab_size={vocab_size} leaves no room for learnt pieces: {reserved} ids are reserved "
            f"(4 control, {len(user_defined_symbols)} user-defined"
            + (f", {_NUM_BYTE_PIECES} byte-fallback" if byte_fallback else "")
            + "). Increase vocab_size or pass byte_fallback=False."
        )
    for s in user_defined_symbols:
        if not s:
            raise ValueError(f"user_defined_symbols must be non-empty strings, got {user_defined_symbols!r}.")
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_sentencepiece got no non-empty texts to train on.")
    directory = os.path.dirname(os.path.abspath(model_prefix))
    os.makedirs(directory, exist_ok=True)
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(texts),
        model_prefix=model_prefix,
        vocab_size=vocab_size,
        model_type=model_type,
        user_defined_symbols=list(user_defined_symbols),
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_piece="<pad>",
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        # Lossless: keep the text byte-exact so decode(encode(x)) == x.
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        byte_fallback=byte_fallback,
        split_digits=True,
        character_coverage=1.0 if not byte_fallback else 0.9995,
        # Determinism: one thread, no input sampling/shuffling.
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        seed_sentencepiece_size=seed_sentencepiece_size,
        max_sentence_length=1 << 16,
        hard_vocab_limit=True,
        minloglevel=2,
    )
    return model_prefix + ".model"
