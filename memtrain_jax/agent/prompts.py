"""The memory agent's prompts: templates in our own words with the paper's structure, built in token space.

Five templates, each one user message of the model's chat format:

- memory update (turn t): instruction, the question in `<problem>`, the memory written at turn t-1
  in `<memory>` (a fixed "no previous memory" text at t = 1) and chunk t in `<section>`;
- final answer: the question and the final memory only, answer in `\\boxed{}`;
- intermediate memory recall: a memory and an already-read chunk with one entity replaced by
  `[TARGET]`, no `<problem>` block, answer in `\\boxed{}`;
- downstream QA's full-context baseline: the whole (middle-truncated) document and the question;
- search QA (MEM1's loop): the question, the latest notes and the latest retrieved `<information>`.

Placeholders are `{problem}`, `{memory}`, `{chunk}`, `{document}` and `{information}`; `{target}` is the
recall probes' target token (`data.probes.target_token`), written into the text when the builder is made, so
the prompt names the token the masked chunk carries; every other brace is literal (so `\\boxed{}` needs no
escaping). A template can be replaced by a text file named in the config, to run the
paper's exact wording; a file missing a placeholder its prompt needs, or naming one it cannot
have, is refused.

Prompts are built as MemAgent's trainer builds them: the template is split at its placeholders,
each text piece is tokenized once (here, when the builder is made), and the problem, memory and
chunk ids are spliced in as they are, so a chunk of `chunk_size` tokens stays exactly that and a
memory is never decoded and re-encoded. The chat format wraps the whole user message.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from memtrain_jax.config import section_values
from memtrain_jax.tokenizer.base import Tokenizer
from memtrain_jax.tokenizer.chat import ChatFormat

PLACEHOLDERS = ("problem", "memory", "chunk", "document", "information")
_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")

MEMORY_TEMPLATE = """You are reading a long article one section at a time. You cannot see earlier sections again: \
all you keep between sections is your memory, so it must hold everything needed to solve the problem below.

<problem>
{problem}
</problem>

<memory>
{memory}
</memory>

<section>
{chunk}
</section>

Write your updated memory: keep what still matters from the current memory and add the facts from this \
section that help with the problem. Reply with the new memory only."""

FINAL_TEMPLATE = """You have read a long article, keeping a memory as you went. Solve the problem from your memory.

<problem>
{problem}
</problem>

<memory>
{memory}
</memory>

Give your final answer inside \\boxed{}."""

RECALL_TEMPLATE = """Below are your memory from reading an article and one section of that article in which a single \
entity has been replaced by {target} everywhere it occurs.

<memory>
{memory}
</memory>

<section>
{chunk}
</section>

Which entity does {target} stand for? Give your answer inside \\boxed{}."""

FULL_CONTEXT_TEMPLATE = """Read the documents below and solve the problem.

<documents>
{document}
</documents>

<problem>
{problem}
</problem>

Give your final answer inside \\boxed{}."""

SEARCH_TEMPLATE = """You solve a problem by searching a Wikipedia corpus, over a few turns. Each turn you see only the \
problem, your notes from the previous turn and the results of your latest search: whatever you will need later must \
go into your notes.

<problem>
{problem}
</problem>

<memory>
{memory}
</memory>

<information>
{information}
</information>

Write your updated notes, then end your reply with exactly one action: <search>a search query</search> to search \
the corpus, or <answer>the final answer</answer> when you know it."""

# The masked-reconstruction question (MemTrain's one problem); `{mask}` is the data's mask token.
MEMTRAIN_PROBLEM = (
    "In the article, one entity has been replaced by {mask} at every place it occurs. "
    "Judging from the whole article, which entity does {mask} stand for?"
)
NO_MEMORY = "No previous memory."
# A worked example appended to the answer prompts (a switch): small models otherwise answer in prose.
WORKED_EXAMPLE = (
    "\n\nExample: if the memory says that Marie Curie was born in Warsaw and the question asks which city "
    '[X] stands for in "Marie Curie was born in [X]", the reply is \\boxed{Warsaw}.'
)

REQUIRED = {
    "memory": ("problem", "memory", "chunk"),
    "final": ("problem", "memory"),
    "recall": ("memory", "chunk"),
    "full_context": ("problem", "document"),
    "search": ("problem", "memory", "information"),
}
BUILT_IN = {
    "memory": MEMORY_TEMPLATE,
    "final": FINAL_TEMPLATE,
    "recall": RECALL_TEMPLATE,
    "full_context": FULL_CONTEXT_TEMPLATE,
    "search": SEARCH_TEMPLATE,
}


class TemplateError(ValueError):
    """A prompt template (or its file) cannot be used."""


@dataclasses.dataclass(frozen=True)
class Template:
    """A prompt template split at its placeholders: `parts` alternate text and placeholder names."""

    name: str
    parts: tuple[tuple[str, bool], ...]  # (text, False) or (placeholder name, True)

    @classmethod
    def parse(cls, name: str, text: str, source: str = "built-in") -> Template:
        if name not in REQUIRED:
            raise TemplateError(f"Unknown template {name!r}; templates are {sorted(REQUIRED)}.")
        found = _PLACEHOLDER.findall(text)
        missing = [p for p in REQUIRED[name] if p not in found]
        extra = sorted({p for p in found if p not in REQUIRED[name]})
        repeated = sorted({p for p in found if found.count(p) > 1})
        problems = []
        if missing:
            problems.append(f"it lacks the placeholder(s) {['{' + p + '}' for p in missing]}")
        if extra:
            problems.append(f"the {name} prompt cannot use {['{' + p + '}' for p in extra]}")
        if repeated:
            problems.append(f"{['{' + p + '}' for p in repeated]} appear more than once")
        if problems:
            raise TemplateError(
                f"The {name!r} template ({source}) is not usable: {'; '.join(problems)}. "
                f"It needs exactly {['{' + p + '}' for p in REQUIRED[name]]}."
            )
        parts: list[tuple[str, bool]] = []
        position = 0
        for match in _PLACEHOLDER.finditer(text):
            if match.start() > position:
                parts.append((text[position : match.start()], False))
            parts.append((match.group(1), True))
            position = match.end()
        if position < len(text):
            parts.append((text[position:], False))
        return cls(name, tuple(parts))

    def with_text(self, field: str, value: str) -> Template:
        """The template with the text field `{field}` (not a placeholder) written out as `value`."""
        token = "{" + field + "}"
        return Template(
            self.name, tuple((p if is_slot else p.replace(token, value), is_slot) for p, is_slot in self.parts)
        )

    def text(self) -> str:
        """The template's text without its placeholders."""
        return "".join(p for p, is_slot in self.parts if not is_slot)

    def render(self, **values: str) -> str:
        """The template with its placeholders filled by text (for display and tests)."""
        return "".join(values[p] if is_slot else p for p, is_slot in self.parts)


def load_template(name: str, path: str = "", append: str = "") -> Template:
    """The built-in template `name`, or the one in the text file `path`, followed by `append`."""
    if not path:
        return Template.parse(name, BUILT_IN[name] + append)
    if not os.path.isfile(path):
        raise TemplateError(f"Template file {path!r} for the {name!r} prompt does not exist.")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise TemplateError(f"Template file {path!r} for the {name!r} prompt is empty.")
    return Template.parse(name, text.rstrip("\n") + append, source=path)


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """The `prompts` config section: template files ("" = built-in), the problem and first-memory texts."""

    memory_template: str = ""
    final_template: str = ""
    recall_template: str = ""
    full_context_template: str = ""  # downstream QA's full-context baseline: {problem} {document}
    search_template: str = ""  # search QA: {problem} {memory} {information}
    problem: str = MEMTRAIN_PROBLEM
    no_memory: str = NO_MEMORY
    worked_example: bool = False
    system: str | None = None  # a system message; None = the chat format's default

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | Any) -> PromptConfig:
        values = section_values(cls, section, "prompts")
        if values.get("system") == "":
            values["system"] = None
        return cls(**values)


class PromptBuilder:
    """Builds the agent's prompt ids from token pieces; every text piece is encoded once, here.

    Pieces given as ids (problem, memory, chunk) are spliced in unchanged.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat: ChatFormat,
        config: PromptConfig,
        mask_token: str = "[MASK]",
        target_token: str = "[TARGET]",
    ):
        self.tokenizer, self.chat, self.config = tokenizer, chat, config
        example = WORKED_EXAMPLE if config.worked_example else ""
        self.templates = {
            "memory": load_template("memory", config.memory_template),
            "final": load_template("final", config.final_template, example),
            "recall": load_template("recall", config.recall_template, example),
            "full_context": load_template("full_context", config.full_context_template, example),
            "search": load_template("search", config.search_template),
        }
        self.templates = {name: t.with_text("target", target_token) for name, t in self.templates.items()}
        if target_token not in self.templates["recall"].text():
            raise TemplateError(
                f"The recall template ({config.recall_template or 'built-in'}) never names the target token "
                f"{target_token!r} (data.probes.target_token) that masks the probed chunk: write {{target}} where "
                "the question refers to it."
            )
        self._prefix, self._suffix = chat.user_turn_wrapper(tokenizer, config.system)
        self._encoded = {
            name: tuple((p, True) if is_slot else (tuple(tokenizer.encode(p)), False) for p, is_slot in t.parts)
            for name, t in self.templates.items()
        }
        self.problem_ids = tuple(tokenizer.encode(config.problem.format(mask=mask_token)))
        self.no_memory_ids = tuple(tokenizer.encode(config.no_memory))

    def encode_problem(self, problem: str) -> tuple[int, ...]:
        """Ids of another problem text (downstream QA asks real questions)."""
        return tuple(self.tokenizer.encode(problem))

    def build(self, name: str, **slots: Sequence[int]) -> list[int]:
        """The prompt ids of template `name` with its placeholders filled by id sequences."""
        ids = list(self._prefix)
        for piece, is_slot in self._encoded[name]:
            if is_slot:
                ids.extend(int(i) for i in slots[piece])
            else:
                ids.extend(piece)
        ids.extend(self._suffix)
        return ids

    def overhead(self, name: str) -> int:
        """Tokens of template `name` besides its placeholders (chat wrapper included)."""
        return len(self._prefix) + len(self._suffix) + sum(len(p) for p, s in self._encoded[name] if not s)

    def memory_prompt(self, problem: Sequence[int], memory: Sequence[int], chunk: Sequence[int]) -> list[int]:
        return self.build("memory", problem=problem, memory=memory, chunk=chunk)

    def final_prompt(self, problem: Sequence[int], memory: Sequence[int]) -> list[int]:
        return self.build("final", problem=problem, memory=memory)

    def recall_prompt(self, memory: Sequence[int], chunk: Sequence[int]) -> list[int]:
        return self.build("recall", memory=memory, chunk=chunk)

    def full_context_prompt(self, problem: Sequence[int], document: Sequence[int]) -> list[int]:
        return self.build("full_context", problem=problem, document=document)

    def search_prompt(self, problem: Sequence[int], memory: Sequence[int], information: Sequence[int]) -> list[int]:
        return self.build("search", problem=problem, memory=memory, information=information)

    def render(self, name: str, **texts: str) -> str:
        """The same prompt as text, rendered by the chat format (for display and the token-space test)."""
        content = self.templates[name].render(**texts)
        messages = ([{"role": "system", "content": self.config.system}] if self.config.system is not None else []) + [
            {"role": "user", "content": content}
        ]
        return self.chat.render(messages, add_generation_prompt=True)
