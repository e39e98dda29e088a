"""Entity matching and masking: the one matcher every data stage uses.

An entity "occurs" in a text where its exact spelling (case-sensitive) appears with no word
character (`\\w`, Unicode) directly before or after it. Unlike the paper code's `\\b...\\b`, the
lookarounds also work for entities that start or end with a non-word character ("U.S.", "$5"):
`\\b` after a final "." would demand a word character next, so "U.S. Army" would never match.
"""

from __future__ import annotations

import functools
import re

MASK_TOKEN = "[MASK]"
TARGET_TOKEN = "[TARGET]"
# Passes of mask_entity; 2 suffice for real entities, more means the entity feeds on the mask token.
_MAX_PASSES = 8


@functools.lru_cache(maxsize=65536)
def entity_pattern(entity: str) -> re.Pattern[str]:
    """Compiled case-sensitive pattern matching `entity` at word boundaries.

    Raises ValueError for an empty or whitespace-only entity (it would match everywhere).
    """
    if not isinstance(entity, str) or not entity.strip():
        raise ValueError(f"entity must be a non-empty string, got {entity!r}")
    return re.compile(r"(?<!\w)" + re.escape(entity) + r"(?!\w)")


def count_occurrences(text: str, entity: str) -> int:
    """Number of non-overlapping occurrences of `entity` in `text` (see module docstring)."""
    return sum(1 for _ in entity_pattern(entity).finditer(text))


def _check_mask_token(entity: str, mask_token: str) -> None:
    if not mask_token:
        raise ValueError("mask_token must be a non-empty string, e.g. '[MASK]'")
    if mask_token in entity or count_occurrences(mask_token, entity):
        # Masking would leave (or create) occurrences of the entity inside the mask tokens.
        raise ValueError(f"entity {entity!r} overlaps the mask token {mask_token!r}; choose another entity")


def mask_entity(text: str, entity: str, mask_token: str = MASK_TOKEN) -> tuple[str, int]:
    """Replace every occurrence of `entity` in `text` by `mask_token`.

    Returns (masked text, number of replacements). Afterwards the entity no longer occurs in the
    text: a replacement can expose a new occurrence (for "$5" in "$5$5" the second "$5" follows a
    word character until the first is masked), so replacement repeats until none is left.
    """
    _check_mask_token(entity, mask_token)
    pattern = entity_pattern(entity)
    total = 0
    for _ in range(_MAX_PASSES):
        # A function replacement keeps backslashes in the mask token literal.
        text, n = pattern.subn(lambda _m: mask_token, text)
        if n == 0:
            return text, total
        total += n
    raise ValueError(f"masking {entity!r} with {mask_token!r} keeps creating new occurrences; choose another entity")


def unmask(masked_text: str, entity: str, mask_token: str = MASK_TOKEN) -> str:
    """Put `entity` back at every `mask_token`: the inverse of `mask_entity` for texts that did not
    already hold the mask token."""
    if not mask_token:
        raise ValueError("mask_token must be a non-empty string, e.g. '[MASK]'")
    return masked_text.replace(mask_token, entity)
