"""Plain records shared by the data pipeline's stages."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Link:
    """A `[[target|anchor]]` span of a paragraph: `text[start:end] == anchor`."""

    start: int
    end: int
    target: str


@dataclasses.dataclass(frozen=True)
class Paragraph:
    """One clean paragraph of a Wikipedia article.

    `id` is unique within a pool (e.g. "<page title>#<paragraph index>"); `links` are
    the link anchors that survive cleaning, in character offsets of `text`.
    """

    id: str
    title: str
    text: str
    links: tuple[Link, ...] = ()
