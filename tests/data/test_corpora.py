"""Document streams and the wiki markup cleaner."""

import importlib.util
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cofre.config import DataConfig
from cofre.data.corpora import clean_wikitext, iter_documents
from cofre.errors import CofreError

Cfg = Callable[..., DataConfig]

MARKUP = """{{Infobox thing|name=X|nested={{small|y}}}}
'''Foo''' is a [[bar]] and a [[Baz (band)|baz]].<ref name="a">{{cite|x}}</ref> It is ''old''.<ref name="a"/>
<!-- a hidden [[note]] -->
== History ==
[[File:Foo.jpg|thumb|A [[caption]] with [[a|links]]]]
Foo ({{IPA|fuː}}; born 1900) was founded in 1900{{ndash}}01 ([http://example.com the site]) at&nbsp;sea,
{{convert|5|km|mi}} from {{lang|fr|[[Paris|la ville]]}}.
{| class="wikitable"
|-
| cell || {{x}} || [[Bracket|}]]
|}
* First &amp; <small>item</small>
* Second, with <math>{{a}} < b</math> math

[[Category:Things]]"""

EXPECTED = """Foo is a bar and a baz. It is old.

History

Foo (born 1900) was founded in 1900–01 (the site) at sea,
5 km from la ville.

First & item
Second, with math"""


def test_clean_wikitext_exact() -> None:
    assert clean_wikitext(MARKUP) == EXPECTED


def test_unclosed_template_stays_text() -> None:
    assert clean_wikitext("a {{b c\n\n\n\nd") == "a {{b c\n\nd"


def test_txt_documents(tmp_path: Path, data_cfg: Cfg) -> None:
    one = tmp_path / "one.txt"
    one.write_text("first doc\nline two\n<|endoftext|>\n\nsecond doc\n  <|endoftext|>\n\n")
    whole = tmp_path / "whole.txt"
    whole.write_text("no separator <|endoftext|> inside a line\n")
    assert list(iter_documents(data_cfg(corpus=str(one)))) == ["first doc\nline two", "second doc"]
    assert list(iter_documents(data_cfg(corpus=str(whole)))) == ["no separator <|endoftext|> inside a line"]


def test_jsonl_documents_use_text_field(tmp_path: Path, data_cfg: Cfg) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "a b\\n", "id": 1}\n\n{"body": "   "}\n{"body": "c"}\n')
    assert list(iter_documents(data_cfg(corpus=str(path), text_field="body"))) == ["a b\n", "c"]


def test_directory_reads_txt_and_jsonl_in_sorted_order(tmp_path: Path, data_cfg: Cfg) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_text("C")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "B"}) + "\n")
    (tmp_path / "a.txt").write_text("A1\n<|endoftext|>\nA2")
    (tmp_path / "notes.md").write_text("ignored")
    assert list(iter_documents(data_cfg(corpus=str(tmp_path)))) == ["A1", "A2", "B", "C"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing", None, "corpus '.*missing' is neither a known corpus (wiki-sample, openwebtext) nor"),
        ("c.csv", "x", "must end in .txt or .jsonl"),
        ("c.jsonl", '{"text": "ok"}\n{"txt": "typo"}\n', r"c.jsonl:2: no 'text' field"),
        ("c.jsonl", "{not json\n", r"c.jsonl:1: not valid JSON"),
        ("c.jsonl", '{"text": 3}\n', "field 'text' is a int, not a string"),
        ("empty", "", "contains no .txt or .jsonl files"),
    ],
)
def test_bad_corpus_raises_cofre_error(
    tmp_path: Path, data_cfg: Cfg, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if name == "empty":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    with pytest.raises(CofreError, match=re.escape(message).replace(r"\.\*", ".*")):
        list(iter_documents(data_cfg(corpus=str(path))))


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim ships the wiki sample")
def test_wiki_sample_is_clean_prose(data_cfg: Cfg) -> None:
    docs = list(iter_documents(data_cfg(corpus="wiki-sample")))
    assert len(docs) == 106  # the dump's main-namespace pages that are not redirects
    assert docs[0].startswith("Anarchism is a political philosophy that advocates self-governed societies")
    for leftover in ("{{", "}}", "[[", "]]", "<ref", "'''", "{|", "|}", "&nbsp;"):
        assert not any(leftover in doc for doc in docs), leftover
