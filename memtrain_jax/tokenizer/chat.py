"""Chat formatting, chosen by name: the one place that knows how a conversation becomes text and ids.

Formats:
  "chatml"  `<|im_start|>{role}\\n{content}<|im_end|>\\n` per message, generation prompt `<|im_start|>assistant\\n`
            (Qwen, SmolLM2, our SentencePiece tiny models). No system message is added unless `default_system`.
  "smollm2" "chatml" with SmolLM2-Instruct's default system prompt, inserted when the first message is not a
            system message: exactly the Jinja template stored in the SmolLM2 GGUF (`tokenizer.chat_template`).
  "llama3"  Meta-Llama-3-Instruct: `<|begin_of_text|>` then
            `<|start_header_id|>{role}<|end_header_id|>\\n\\n{content.strip()}<|eot_id|>` per message,
            generation prompt `<|start_header_id|>assistant<|end_header_id|>\\n\\n`.
  "plain"   for tokenizers without chat tokens: `{Role}: {content}\\n` per message, generation prompt
            `Assistant:`; `encode` adds BOS (if any) in front and EOS after each assistant message, which
            plain text cannot express.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from memtrain_jax.tokenizer.base import Tokenizer

SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

Message = Mapping[str, str]

_UNSET = object()
_EOS = -1  # the tokenizer's EOS in a "plain" conversation, which has no text for it
_CONTENT = "\x00memtrain-user-content\x00"  # stands for a user message's content while it is rendered


@dataclasses.dataclass(frozen=True)
class ChatFormat:
    """A named chat format; `default_system` is prepended as a system message when the conversation
    does not start with one (None: never)."""

    name: str
    default_system: str | None = None

    def __post_init__(self):
        if self.name not in _BASE_FORMAT:
            raise ValueError(f"Unknown chat format {self.name!r}; expected one of {sorted(_BASE_FORMAT)}.")

    @property
    def base(self) -> str:
        """The markup family: "chatml", "llama3" or "plain"."""
        return _BASE_FORMAT[self.name]

    @property
    def special_tokens(self) -> tuple[str, ...]:
        """Marker strings that must be single tokens of the tokenizer for this format."""
        return {
            "chatml": ("<|im_start|>", "<|im_end|>"),
            "llama3": ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
            "plain": (),
        }[self.base]

    def _messages(self, messages: Sequence[Message]) -> list[tuple[str, str]]:
        if not messages:
            raise ValueError("Cannot format an empty conversation; give at least one message.")
        out = []
        for i, m in enumerate(messages):
            ok = isinstance(m, Mapping) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            if not ok:
                raise ValueError(f"Message {i} must be a dict with string 'role' and 'content'; got {m!r}.")
            out.append((m["role"], m["content"]))
        if self.default_system is not None and out[0][0] != "system":
            out.insert(0, ("system", self.default_system))
        return out

    def _segments(self, messages: Sequence[Message], add_generation_prompt: bool) -> list[tuple[str | int, bool]]:
        """The conversation as (text or special id, is assistant output) pieces, in order.

        Texts concatenate to `render(...)` (ids only appear in "plain", whose BOS/EOS have no text). The
        assistant flag marks what a model generates: an assistant message's content and its end marker.
        """
        msgs = self._messages(messages)
        out: list[tuple[str | int, bool]] = []
        if self.base == "chatml":
            for role, content in msgs:
                mine = role == "assistant"
                out += [(f"<|im_start|>{role}\n", False), (content, mine), ("<|im_end|>", mine), ("\n", False)]
            if add_generation_prompt:
                out.append(("<|im_start|>assistant\n", False))
        elif self.base == "llama3":
            out.append(("<|begin_of_text|>", False))
            for role, content in msgs:
                mine = role == "assistant"
                header = f"<|start_header_id|>{role}<|end_header_id|>\n\n"
                out += [(header, False), (content.strip(), mine), ("<|eot_id|>", mine)]
            if add_generation_prompt:
                out.append(("<|start_header_id|>assistant<|end_header_id|>\n\n", False))
        else:
            for role, content in msgs:
                if role == "assistant":  # the model writes what follows "Assistant:" (the generation prompt)
                    out += [("Assistant:", False), (f" {content}\n", True), (_EOS, True)]
                else:
                    out.append((f"{role.capitalize()}: {content}\n", False))
            if add_generation_prompt:
                out.append(("Assistant:", False))
        return [(piece, mine) for piece, mine in out if piece != ""]

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """Conversation -> prompt text, with chat markers written as their token strings.

        messages: [{"role": "system"|"user"|"assistant"|..., "content": str}, ...].
        """
        return "".join(p for p, _ in self._segments(messages, add_generation_prompt) if isinstance(p, str))

    def check_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Raises ValueError when a marker of this format is not a single token of `tokenizer`."""
        missing = [t for t in self.special_tokens if tokenizer.token_to_id(t) is None]
        if missing:
            raise ValueError(
                f"Chat format {self.name!r} needs the tokens {missing} but tokenizer {tokenizer!r} lacks them; "
                "train the tokenizer with them as user-defined symbols or use chat format 'plain'."
            )

    def _encode_piece(self, tokenizer: Tokenizer, piece: str | int) -> list[int]:
        if isinstance(piece, int):  # only _EOS is an int piece
            return [tokenizer.eos_id] if tokenizer.eos_id is not None else []
        return tokenizer.encode(piece)

    def encode(
        self, tokenizer: Tokenizer, messages: Sequence[Message], add_generation_prompt: bool = True
    ) -> list[int]:
        """Conversation -> ids. Chat markers become their single ids.

        For "chatml"/"smollm2"/"llama3" this is `tokenizer.encode(render(...))`, the same ids as transformers'
        `apply_chat_template(..., tokenize=True)`. For "plain": [BOS] + each message's text, with EOS after
        each assistant message.
        """
        self.check_tokenizer(tokenizer)
        if self.base != "plain":
            return tokenizer.encode(self.render(messages, add_generation_prompt))
        return self.encode_with_assistant_mask(tokenizer, messages, add_generation_prompt)[0]

    def encode_with_assistant_mask(
        self, tokenizer: Tokenizer, messages: Sequence[Message], add_generation_prompt: bool = False
    ) -> tuple[list[int], list[bool]]:
        """Conversation -> (ids, mask): mask[i] is True where id i is assistant output (content and end marker),
        the tokens a supervised loss trains on. Each piece is encoded on its own; the ids equal `encode(...)`
        wherever the tokenizer does not merge across a chat marker or the start of a message's content."""
        self.check_tokenizer(tokenizer)
        ids: list[int] = [tokenizer.bos_id] if self.base == "plain" and tokenizer.bos_id is not None else []
        mask: list[bool] = [False] * len(ids)
        for piece, mine in self._segments(messages, add_generation_prompt):
            piece_ids = self._encode_piece(tokenizer, piece)
            ids += piece_ids
            mask += [mine] * len(piece_ids)
        return ids, mask

    def user_turn_wrapper(self, tokenizer: Tokenizer, system: str | None = None) -> tuple[list[int], list[int]]:
        """(prefix ids, suffix ids) around the content of one user message: an optional system message (else
        the format's default one), the user header, then after the content the end marker and the generation
        prompt. `prefix + encode(content) + suffix` is the prompt of a one-message conversation."""
        self.check_tokenizer(tokenizer)
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [
            {"role": "user", "content": _CONTENT}
        ]
        prefix: list[int] = [tokenizer.bos_id] if self.base == "plain" and tokenizer.bos_id is not None else []
        suffix: list[int] = []
        current = prefix
        for piece, _ in self._segments(messages, add_generation_prompt=True):
            if isinstance(piece, str) and _CONTENT in piece:
                before, after = piece.split(_CONTENT)
                prefix += tokenizer.encode(before) if before else []
                current = suffix
                suffix += tokenizer.encode(after) if after else []
            else:
                current += self._encode_piece(tokenizer, piece)
        return prefix, suffix

    def encode_user_turn(
        self, tokenizer: Tokenizer, pieces: Sequence[str | Sequence[int]], system: str | None = None
    ) -> list[int]:
        """One user message plus the generation prompt, built in token space: the message content is the
        concatenation of `pieces`, each a text (encoded on its own) or a list of ids (spliced in as they
        are, never decoded and re-encoded). See `user_turn_wrapper` for what surrounds the content.

        This is how the memory agent splices document chunks and memories into its prompt so that a chunk
        of `chunk_size` tokens stays exactly that. Equal to `encode` of the rendered text wherever the
        tokenizer does not merge across a piece boundary. llama3's strip of the content is not applied.
        """
        prefix, suffix = self.user_turn_wrapper(tokenizer, system)
        ids = list(prefix)
        for part in pieces:
            ids += tokenizer.encode(part) if isinstance(part, str) else [int(i) for i in part]
        return ids + suffix

    def stop_tokens(self, tokenizer: Tokenizer) -> tuple[int, ...]:
        """Ids that end an assistant turn: the end-of-turn marker, then the tokenizer's EOS (deduplicated)."""
        self.check_tokenizer(tokenizer)
        names = {"chatml": ("<|im_end|>",), "llama3": ("<|eot_id|>", "<|end_of_text|>"), "plain": ()}[self.base]
        ids = [tokenizer.token_to_id(n) for n in names]
        ids.append(tokenizer.eos_id)
        out: list[int] = []
        for i in ids:
            if i is not None and i not in out:
                out.append(int(i))
        if not out:
            raise ValueError(
                f"Chat format {self.name!r} with tokenizer {tokenizer!r} has no stop token (no end-of-turn marker "
                "and no EOS); use a tokenizer with an EOS token."
            )
        return tuple(out)


_BASE_FORMAT = {"chatml": "chatml", "smollm2": "chatml", "llama3": "llama3", "plain": "plain"}
_DEFAULT_SYSTEM = {"smollm2": SMOLLM2_DEFAULT_SYSTEM}
CHAT_FORMATS: tuple[str, ...] = tuple(_BASE_FORMAT)


def get_chat_format(name: str, default_system: str | None = _UNSET) -> ChatFormat:  # type: ignore[assignment]
    """The chat format called `name` (one of CHAT_FORMATS); `default_system` overrides its default system prompt."""
    if name not in _BASE_FORMAT:
        raise ValueError(f"Unknown chat format {name!r}; expected one of {list(CHAT_FORMATS)}.")
    system = _DEFAULT_SYSTEM.get(name) if default_system is _UNSET else default_system
    return ChatFormat(name, system)


def chat_format_from_template(template: str | None) -> str:
    """Best-matching chat format name for a Jinja chat template (e.g. a GGUF's `tokenizer.chat_template`)."""
    if not template:
        return "plain"
    if "<|im_start|>" in template:
        return "smollm2" if SMOLLM2_DEFAULT_SYSTEM in template else "chatml"
    if "<|start_header_id|>" in template:
        return "llama3"
    return "plain"
