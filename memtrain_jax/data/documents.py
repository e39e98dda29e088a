"""Masked-reconstruction training documents: pivot + similar + random paragraphs, one entity masked.

A document (paper: 150 paragraphs, 24k-40k tokens) is built from a pivot paragraph:

1. the pivot, its `num_similar` most similar paragraphs (retrieval neighbours, the distractors)
   and random pool paragraphs up to `num_paragraphs` in all;
2. token range (optional, `min_tokens`/`max_tokens` > 0): with a token counter, the estimated
   length is the sum over paragraphs of `count_tokens(text)` plus the header/separator tokens.
   While it exceeds `max_tokens`, random paragraphs are dropped (never the pivot or its
   neighbours); while it is below `min_tokens`, more random paragraphs are drawn. A document
   that cannot reach the range (pool exhausted, or pivot + neighbours alone too long) is kept
   with `in_token_range=False`; the chunker's centre truncation still bounds what the agent reads;
3. shuffled, each paragraph written as "Document i:\\n{text}" (i from 1), joined by blank lines;
4. one valid entity of the PIVOT, chosen with the document's rng, replaced by the mask token at
   every occurrence in every paragraph of the document (case-sensitive, word boundaries; the
   "Document i:" headers are formatting and never masked, so an entity such as "3" cannot
   corrupt them). With `mask_scope="pivot"` (a CPU variant, not the paper's) only the pivot's occurrences
   are masked and the entity is drawn, when there is one, from those an included similar paragraph also
   names, so the answer can be recovered from the document itself (see DocumentConfig.mask_scope).

Leaks: word-boundary masking (the paper's rule, the default) leaves the answer inside longer words
("Brazil" in "Brazilian", "German" in "Germany") and in other casings; `entity_leaks` tells when
the masked document still contains the gold, case-insensitively. With `skip_leaking_entities`, such
an entity is replaced by another of the pivot's entities (drawn with the same rng) that does not
leak, and a pivot with none raises NoValidEntityError (the pipeline skips and counts it).

All randomness comes from the `rng` argument; the pipeline derives it from (seed, episode id)
with `document_rng`, so a seed fixes every document.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from memtrain_jax.config import section_values
from memtrain_jax.data.entities import choose_entity
from memtrain_jax.data.masking import MASK_TOKEN, count_occurrences, mask_entity
from memtrain_jax.data.types import Paragraph

# Stream tag of document randomness in the episode seed sequence (probes use another tag).
_DOCUMENT_STREAM = 1

TokenCounter = Callable[[str], int]
# Where the entity is masked: "document" (the paper) every paragraph; "pivot" the pivot only.
MASK_SCOPES = ("document", "pivot")


class PoolTooSmallError(ValueError):
    """The pool holds fewer paragraphs than one document needs."""


class NoValidEntityError(ValueError):
    """The pivot paragraph has no valid entity to mask; such pivots are skipped."""


@dataclasses.dataclass(frozen=True)
class DocumentConfig:
    """How a document is assembled (the `data.document` config section)."""

    num_paragraphs: int = 150  # N: paragraphs per document, pivot included
    num_similar: int = 29  # n1: retrieval neighbours of the pivot
    min_tokens: int = 0  # 0 = no lower bound on the estimated document length
    max_tokens: int = 0  # 0 = no upper bound
    mask_token: str = MASK_TOKEN
    header: str = "Document {i}:"
    separator: str = "\n\n"
    skip_leaking_entities: bool = False  # paper: False (its word-boundary rule leaves e.g. "Brazil" in "Brazilian")
    # "document" (the paper): the entity is masked in every paragraph, so naming it needs knowledge a small model
    # lacks. "pivot": masked in the pivot only, and drawn from the pivot's entities that an included similar
    # paragraph names (any of them when none is), so the document itself holds the answer: a memory that keeps
    # the naming sentence can answer, which is the skill MemTrain trains (a CPU variant for small models).
    mask_scope: str = "document"

    def __post_init__(self):
        if self.num_paragraphs < 1:
            raise ValueError(f"document.num_paragraphs must be >= 1, got {self.num_paragraphs}.")
        if not 0 <= self.num_similar <= self.num_paragraphs - 1:
            raise ValueError(
                f"document.num_similar={self.num_similar} must be in "
                f"[0, num_paragraphs - 1 = {self.num_paragraphs - 1}]."
            )
        if self.min_tokens < 0 or self.max_tokens < 0:
            raise ValueError(
                f"document.min_tokens/max_tokens must be >= 0 (0 = off), got {self.min_tokens}/{self.max_tokens}."
            )
        if self.max_tokens and self.min_tokens > self.max_tokens:
            raise ValueError(f"document.min_tokens={self.min_tokens} exceeds document.max_tokens={self.max_tokens}.")
        if "{i}" not in self.header:
            raise ValueError(f"document.header must contain '{{i}}' for the paragraph number, got {self.header!r}.")
        if not self.mask_token:
            raise ValueError("document.mask_token must be a non-empty string such as '[MASK]'.")
        if self.mask_scope not in MASK_SCOPES:
            raise ValueError(f"document.mask_scope={self.mask_scope!r} is not one of {MASK_SCOPES}.")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | Any) -> DocumentConfig:
        """From a ConfigDict/dict; an unknown key is an error naming it."""
        return cls(**section_values(cls, section, "data.document"))

    @property
    def token_range_active(self) -> bool:
        return self.min_tokens > 0 or self.max_tokens > 0


@dataclasses.dataclass(frozen=True)
class Document:
    """One masked training document and where it came from (all indices are pool indices)."""

    text: str  # the masked document the agent reads
    gold: str  # the masked entity: the answer
    pivot_id: str
    pivot_index: int
    paragraph_ids: tuple[str, ...]  # in document order
    paragraph_indices: tuple[int, ...]  # in document order
    similar_indices: tuple[int, ...]  # the neighbours included, best first
    mask_count: int  # occurrences replaced in the whole document (>= 1: the pivot holds the entity)
    estimated_tokens: int  # -1 without a token counter
    in_token_range: bool

    def to_json(self) -> bytes:
        """UTF-8 JSON record (one ArrayRecord entry of pre-built documents)."""
        return json.dumps(dataclasses.asdict(self), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_json(cls, blob: bytes | str) -> Document:
        d = json.loads(blob)
        for key in ("paragraph_ids", "paragraph_indices", "similar_indices"):
            d[key] = tuple(d[key])
        return cls(**d)


def document_rng(seed: int, episode_id: int) -> np.random.Generator:
    """The generator of episode `episode_id`'s document under global `seed` (independent streams)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(episode_id)], spawn_key=(_DOCUMENT_STREAM,)))


def maskable_entities(entities: Sequence[str], mask_token: str) -> list[str]:
    """Entities that `mask_entity` accepts: non-blank, not containing the mask token, not occurring in it."""
    return [e for e in entities if e.strip() and mask_token not in e and not count_occurrences(mask_token, e)]


def entity_leaks(masked_text: str, entity: str) -> bool:
    """True when `entity` still occurs in `masked_text` case-insensitively, e.g. inside a longer word
    ("Brazil" in "Brazilian") or in another casing: the answer can be read off the document."""
    return entity.casefold() in masked_text.casefold()


def _draw_random(rng: np.random.Generator, pool_size: int, taken: set[int], n: int) -> list[int]:
    """n distinct pool indices not in `taken` (added to it), in draw order. O(n) for small n."""
    available = pool_size - len(taken)
    if n > available:
        raise PoolTooSmallError(f"Need {n} more random paragraphs but only {available} unused remain in the pool.")
    out: list[int] = []
    if n > available // 2:
        # Dense regime: a permutation of the unused indices is cheaper than rejection.
        rest = np.setdiff1d(np.arange(pool_size), np.fromiter(taken, np.int64, len(taken)), assume_unique=True)
        out = [int(i) for i in rng.permutation(rest)[:n]]
        taken.update(out)
        return out
    while len(out) < n:
        for i in rng.integers(0, pool_size, size=2 * (n - len(out)) + 8):
            i = int(i)
            if i not in taken:
                taken.add(i)
                out.append(i)
                if len(out) == n:
                    break
    return out


def build_document(
    pool: Sequence[Paragraph],
    pivot_index: int,
    neighbours: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    config: DocumentConfig,
    *,
    entities: Sequence[str],
    count_tokens: TokenCounter | None = None,
) -> Document:
    """Assembles, shuffles and masks one document around `pool[pivot_index]` (see module docstring).

    `neighbours`: the pivot's retrieval neighbours, best first (the pivot itself and duplicates are
    ignored; the first `config.num_similar` are used). `entities`: the pivot's valid entities (from
    an entity extractor); one is chosen with `rng`. `count_tokens` enables the token range.

    Raises PoolTooSmallError when the pool has fewer than `num_paragraphs` paragraphs and
    NoValidEntityError when no entity is usable (callers skip and count such pivots).
    """
    n_pool = len(pool)
    if n_pool < config.num_paragraphs:
        raise PoolTooSmallError(
            f"The pool has {n_pool} paragraphs but a document needs num_paragraphs={config.num_paragraphs}; "
            "use a bigger pool or lower data.document.num_paragraphs."
        )
    if not 0 <= pivot_index < n_pool:
        raise IndexError(f"pivot_index={pivot_index} is outside the pool [0, {n_pool}).")
    if config.token_range_active and count_tokens is None:
        raise ValueError("document.min_tokens/max_tokens are set but no count_tokens function was given.")

    similar: list[int] = []
    taken = {int(pivot_index)}
    for i in np.asarray(neighbours, dtype=np.int64).tolist():
        if len(similar) == config.num_similar:
            break
        if not 0 <= i < n_pool:
            raise IndexError(f"Neighbour index {i} of pivot {pivot_index} is outside the pool [0, {n_pool}).")
        if i not in taken:
            taken.add(i)
            similar.append(i)

    candidates = maskable_entities(entities, config.mask_token)
    if config.mask_scope == "pivot":
        named = [e for e in candidates if any(count_occurrences(pool[i].text, e) for i in similar)]
        candidates = named or candidates
    gold = choose_entity(candidates, rng)
    if gold is None:
        raise NoValidEntityError(
            f"Pivot {pool[pivot_index].id!r} has no valid entity to mask (entities: {list(entities)})."
        )
    randoms = _draw_random(rng, n_pool, taken, config.num_paragraphs - 1 - len(similar))

    estimated, in_range = -1, True
    if count_tokens is not None:
        overhead = count_tokens(config.header.format(i=config.num_paragraphs) + "\n") + count_tokens(config.separator)
        cost = {i: count_tokens(pool[i].text) + overhead for i in [pivot_index, *similar, *randoms]}
        estimated = sum(cost.values())
        if config.max_tokens:
            while estimated > config.max_tokens and randoms:
                estimated -= cost.pop(randoms.pop())
        if config.min_tokens:
            while estimated < config.min_tokens and len(taken) < n_pool:
                (extra,) = _draw_random(rng, n_pool, taken, 1)
                randoms.append(extra)
                cost[extra] = count_tokens(pool[extra].text) + overhead
                estimated += cost[extra]
        in_range = (not config.min_tokens or estimated >= config.min_tokens) and (
            not config.max_tokens or estimated <= config.max_tokens
        )

    chosen = np.asarray([pivot_index, *similar, *randoms], dtype=np.int64)
    order = chosen[rng.permutation(len(chosen))].tolist()

    masked = order if config.mask_scope == "document" else [pivot_index]

    def masked_parts(entity: str) -> tuple[list[str], int]:
        parts, count = [], 0
        for position, i in enumerate(order):
            body, n = mask_entity(pool[i].text, entity, config.mask_token) if i in masked else (pool[i].text, 0)
            count += n
            parts.append(config.header.format(i=position + 1) + "\n" + body)
        return parts, count

    def leaks(parts: list[str], entity: str) -> bool:  # only the masked paragraphs can leak
        return entity_leaks(config.separator.join(p for p, i in zip(parts, order, strict=True) if i in masked), entity)

    parts, mask_count = masked_parts(gold)
    if config.skip_leaking_entities:
        untried = [e for e in candidates if e != gold]
        while leaks(parts, gold):
            gold = choose_entity(untried, rng)
            if gold is None:
                raise NoValidEntityError(
                    f"Every entity of pivot {pool[pivot_index].id!r} leaks into its document (skip_leaking_entities)."
                )
            untried.remove(gold)
            parts, mask_count = masked_parts(gold)
    if count_occurrences(pool[pivot_index].text, gold) == 0:
        raise NoValidEntityError(
            f"Entity {gold!r} does not occur in pivot {pool[pivot_index].id!r}; the extractor is wrong."
        )
    return Document(
        text=config.separator.join(parts),
        gold=gold,
        pivot_id=pool[pivot_index].id,
        pivot_index=int(pivot_index),
        paragraph_ids=tuple(pool[i].id for i in order),
        paragraph_indices=tuple(int(i) for i in order),
        similar_indices=tuple(similar),
        mask_count=mask_count,
        estimated_tokens=estimated,
        in_token_range=in_range,
    )


@dataclasses.dataclass(frozen=True)
class PivotSelection:
    """Usable pivots: pool indices with at least one maskable entity, in selection order."""

    indices: np.ndarray  # [num_pivots] int64
    entities: tuple[tuple[str, ...], ...]  # maskable entities per pivot
    num_examined: int  # paragraphs run through the extractor
    num_skipped: int  # examined paragraphs without a valid entity


def select_pivots(
    pool: Sequence[Paragraph],
    extractor: Any,
    num_documents: int,
    seed: int,
    *,
    mask_token: str = MASK_TOKEN,
    batch_size: int = 1024,
    log: Callable[[str], None] | None = print,
) -> PivotSelection:
    """Walks a seeded permutation of the pool and keeps paragraphs with a valid entity.

    Stops after `num_documents` pivots (0 = examine the whole pool). `extractor.extract(paragraphs)`
    returns the valid entities of each paragraph; paragraphs with none are skipped and counted.
    """
    if num_documents < 0:
        raise ValueError(f"num_documents must be >= 0 (0 = every usable paragraph), got {num_documents}.")
    order = np.random.default_rng(np.random.SeedSequence([int(seed)], spawn_key=(_DOCUMENT_STREAM, 0))).permutation(
        len(pool)
    )
    kept: list[int] = []
    kept_entities: list[tuple[str, ...]] = []
    examined = 0
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        found = extractor.extract([pool[int(i)] for i in batch])
        if len(found) != len(batch):
            raise ValueError(f"Entity extractor returned {len(found)} entity lists for {len(batch)} paragraphs.")
        for i, ents in zip(batch.tolist(), found, strict=True):
            examined += 1
            usable = maskable_entities(ents, mask_token)
            if usable:
                kept.append(i)
                kept_entities.append(tuple(usable))
                if num_documents and len(kept) == num_documents:
                    break
        if log:
            log(f"[pivots] examined {examined}/{len(pool)}, kept {len(kept)}, skipped {examined - len(kept)}")
        if num_documents and len(kept) == num_documents:
            break
    return PivotSelection(
        indices=np.asarray(kept, dtype=np.int64),
        entities=tuple(kept_entities),
        num_examined=examined,
        num_skipped=examined - len(kept),
    )
