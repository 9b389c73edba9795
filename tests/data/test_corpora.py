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


# -- OpenWebText from the hub: the Parquet export of a repository whose main revision holds a loading script --------
EXPORT_DOCS = [f"Document {i}: " + " ".join(["word"] * (5 + i)) for i in range(12)] + ["   "]  # the blank one is skipped


@pytest.fixture
def parquet_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A folder laid out as the hub's Parquet export of a script dataset (plain_text/train/0000.parquet, ...), which
    `datasets` reads as it reads the hub branch; the hub's answer "main holds a loading script" is the one thing
    replaced. The HF datasets cache is a temporary folder."""
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    import datasets

    from cofre.data import corpora

    export = tmp_path / "export"
    (export / "plain_text" / "train").mkdir(parents=True)
    (export / "plain_text" / "partial-validation").mkdir()  # another split's folder: not read
    for i, start in enumerate(range(0, len(EXPORT_DOCS), 5)):
        pq.write_table(pa.table({"text": EXPORT_DOCS[start:start + 5]}), export / "plain_text" / "train" / f"{i:04d}.parquet")
    pq.write_table(pa.table({"text": ["not train"]}), export / "plain_text" / "partial-validation" / "0000.parquet")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    asked: list[str] = []
    monkeypatch.setattr(corpora, "main_has_loading_script", lambda hub_id: asked.append(hub_id) or True)
    return export, asked


@pytest.mark.parametrize("streaming", [False, True])
def test_openwebtext_reads_the_parquet_export_in_order(parquet_export: tuple[Path, list[str]], data_cfg: Cfg,
                                                       streaming: bool) -> None:
    from cofre.data.corpora import PARQUET_EXPORT, hub_source

    export, asked = parquet_export
    cfg = data_cfg(corpus="openwebtext", hub_id=str(export), streaming=streaming)
    assert hub_source(cfg).revision == PARQUET_EXPORT
    assert hub_source(cfg).data_files == {"train": "plain_text/train/*.parquet"}
    assert list(iter_documents(cfg)) == EXPORT_DOCS[:-1]
    assert asked and set(asked) == {str(export)}


def test_streamed_and_downloaded_packs_hold_out_the_same_last_documents(parquet_export: tuple[Path, list[str]],
                                                                        data_cfg: Cfg, tmp_path: Path) -> None:
    """Streaming changes where the bytes come from, not the split: the last val_docs documents of the stream are
    validation, as for the downloaded dataset and for a local file of the same documents."""
    import numpy as np

    from cofre.data.packing import load_corpus

    export, _ = parquet_export
    local = tmp_path / "same.jsonl"
    local.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in EXPORT_DOCS))
    packs = [load_corpus(data_cfg(corpus=corpus, seq_len=8, val_docs=3, cache_dir=str(tmp_path / name), **extra))
             for name, corpus, extra in (("streamed", "openwebtext", {"hub_id": str(export), "streaming": True}),
                                         ("downloaded", "openwebtext", {"hub_id": str(export)}),
                                         ("local", str(local), {}))]
    for pack in packs[1:]:
        assert np.array_equal(pack.train.numpy(), packs[0].train.numpy())
        assert np.array_equal(pack.val.numpy(), packs[0].val.numpy())
    assert "train + 3 val docs" in packs[0].source


def test_an_explicit_revision_is_read_without_asking_the_hub(parquet_export: tuple[Path, list[str]],
                                                            data_cfg: Cfg) -> None:
    export, asked = parquet_export
    cfg = data_cfg(corpus="openwebtext", hub_id=str(export), hub_revision="refs/convert/parquet", streaming=True)
    assert list(iter_documents(cfg))[:2] == EXPORT_DOCS[:2] and asked == []


def test_a_missing_export_folder_names_the_folders(parquet_export: tuple[Path, list[str]], data_cfg: Cfg) -> None:
    export, _ = parquet_export
    with pytest.raises(CofreError, match=r"no Parquet files under plain_text/validation/ of .*under plain_text/partial-validation/"):
        list(iter_documents(data_cfg(corpus="openwebtext", hub_id=str(export), hub_split="validation")))


def test_a_network_failure_is_reported_as_one(monkeypatch: pytest.MonkeyPatch, data_cfg: Cfg) -> None:
    """Nothing listens on the discard port: the hub is unreachable, and the error says so (not "offline" for
    every failure, nor a library's traceback)."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(CofreError) as err:
        list(iter_documents(data_cfg(corpus="openwebtext")))
    message = str(err.value)
    assert message.startswith("network failure: could not reach the Hugging Face hub for 'Skylion007/openwebtext'")
    assert "\n" not in message


def test_hub_settings_belong_to_the_hub_corpus() -> None:
    with pytest.raises(CofreError, match="data.streaming: hub settings, for corpus 'openwebtext' only"):
        DataConfig(corpus="wiki-sample", streaming=True).validate("data")
    DataConfig(corpus="openwebtext", streaming=True, hub_revision="main").validate("data")
