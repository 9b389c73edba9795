"""Packing: EOS after each document, document-level validation split, dropped tails, and the cache."""

import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from cofre.config import DataConfig
from cofre.data import packing
from cofre.data.corpora import iter_documents
from cofre.data.packing import load_corpus
from cofre.errors import CofreError

Cfg = Callable[..., DataConfig]
E = 50256  # EOS
# GPT-2 ids: "Hello" 15496, " world" 995, " Hello" 18435, "world" 6894.
DOCS = ["Hello world", "Hello", "Hello world Hello world", "world", "Hello world"]


def write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def test_packs_hand_checked_blocks(tmp_path: Path, data_cfg: Cfg) -> None:
    cfg = data_cfg(corpus=str(write_jsonl(tmp_path / "c.jsonl", DOCS)), seq_len=4, val_docs=2)
    corpus = load_corpus(cfg)
    # train = docs 0-2: [15496 995 E] [15496 E] [15496 995 18435 995 E] -> 10 tokens, tail [995 E] dropped
    assert corpus.train.tolist() == [[15496, 995, E, 15496], [E, 15496, 995, 18435]]
    # val = the last two docs: [6894 E] [15496 995 E] -> 5 tokens, tail [E] dropped
    assert corpus.val.tolist() == [[6894, E, 15496, 995]]
    assert corpus.train.dtype == torch.int32
    assert "3 train + 2 val docs" in corpus.source and "10 train + 5 val tokens" in corpus.source


def test_second_load_reads_the_cache(tmp_path: Path, data_cfg: Cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = data_cfg(corpus=str(write_jsonl(tmp_path / "c.jsonl", DOCS)), seq_len=4, val_docs=2)
    first = load_corpus(cfg)

    def no_reading(cfg: DataConfig) -> None:
        raise AssertionError("the corpus was read and tokenised again")

    monkeypatch.setattr(packing, "iter_documents", no_reading)
    second = load_corpus(cfg)
    assert torch.equal(first.train, second.train) and torch.equal(first.val, second.val)
    with pytest.raises(AssertionError, match="tokenised again"):  # another seq_len is another cache entry
        load_corpus(data_cfg(corpus=cfg.corpus, seq_len=2, val_docs=2))


def test_edited_file_invalidates_cache(tmp_path: Path, data_cfg: Cfg) -> None:
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    cfg = data_cfg(corpus=str(path), seq_len=2, val_docs=1)
    before = load_corpus(cfg).train.shape[0]
    write_jsonl(path, DOCS + ["Hello world Hello world"])
    # the old last doc joins train: 12 -> 15 tokens, so 6 -> 7 blocks of 2
    assert (before, load_corpus(cfg).train.shape[0]) == (6, 7)


def test_cofre_cache_env_overrides_cache_dir(tmp_path: Path, data_cfg: Cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COFRE_CACHE", str(tmp_path / "env-cache"))
    load_corpus(data_cfg(corpus=str(write_jsonl(tmp_path / "c.jsonl", DOCS)), seq_len=4, val_docs=2))
    assert len(list((tmp_path / "env-cache").glob("c.jsonl-L4-concat-*/meta.json"))) == 1
    assert not (tmp_path / "cache").exists()


def test_killed_build_leaves_no_cache(tmp_path: Path, data_cfg: Cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = data_cfg(corpus=str(write_jsonl(tmp_path / "c.jsonl", DOCS)), seq_len=4, val_docs=2)

    def dies_midway(cfg: DataConfig) -> Iterator[str]:
        yield next(iter_documents(cfg))
        raise KeyboardInterrupt

    monkeypatch.setattr(packing, "iter_documents", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        load_corpus(cfg)
    assert os.listdir(cfg.cache_dir) == []


def test_concurrent_builder_finishing_first_wins(
    tmp_path: Path, data_cfg: Cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = data_cfg(corpus=str(write_jsonl(tmp_path / "c.jsonl", DOCS)), seq_len=4, val_docs=2)
    real_pack = packing._pack
    raced: list[bool] = []

    def pack_after_a_rival(cfg: DataConfig, out: Path) -> dict[str, object]:
        if not raced:  # the rival process completes the same cache while we are still packing
            raced.append(True)
            load_corpus(cfg)
        return real_pack(cfg, out)

    monkeypatch.setattr(packing, "_pack", pack_after_a_rival)
    corpus = load_corpus(cfg)
    assert corpus.val.tolist() == [[6894, E, 15496, 995]]
    assert [p.name for p in Path(cfg.cache_dir).iterdir()] == [Path(corpus.source.split("cache ")[-1]).name]


@pytest.mark.parametrize(
    ("seq_len", "val_docs", "message"),
    [
        (4, 5, "has 5 documents, but data.val_docs=5 are held out"),
        (11, 2, "the train split of corpus '.*' has 10 tokens, fewer than one block of data.seq_len=11"),
        (6, 2, "the val split of corpus '.*' has 5 tokens, fewer than one block of data.seq_len=6"),
        (0, 2, "data.seq_len must be at least 1"),
    ],
)
def test_unpackable_corpus_raises_cofre_error(
    tmp_path: Path, data_cfg: Cfg, seq_len: int, val_docs: int, message: str
) -> None:
    cfg = data_cfg(corpus=str(write_jsonl(tmp_path / "c.jsonl", DOCS)), seq_len=seq_len, val_docs=val_docs)
    with pytest.raises(CofreError, match=message):
        load_corpus(cfg)
    assert not Path(cfg.cache_dir).exists() or os.listdir(cfg.cache_dir) == []


@pytest.mark.skipif(importlib.util.find_spec("gensim") is None, reason="gensim ships the wiki sample")
def test_wiki_sample_packs(data_cfg: Cfg) -> None:
    corpus = load_corpus(data_cfg(corpus="wiki-sample", seq_len=128, val_docs=10))
    assert corpus.train.shape[1] == corpus.val.shape[1] == 128
    assert "96 train + 10 val docs" in corpus.source
    # every document but possibly the last of each split ends with an EOS inside a kept block
    assert (corpus.train == E).sum() >= 95 and (corpus.val == E).sum() >= 9


def test_wrap_is_the_default_and_makes_mdlm_blocks(tmp_path: Path, data_cfg: Cfg) -> None:
    """MDLM's wrap: the EOS-joined stream cut into seq_len - 2 pieces, each as [BOS] + piece + [EOS]."""
    assert DataConfig().packing == "wrap"
    cfg = data_cfg(corpus=str(write_jsonl(tmp_path / "c.jsonl", DOCS)), seq_len=5, val_docs=2, packing="wrap")
    corpus = load_corpus(cfg)
    # train stream: 15496 995 E 15496 E 15496 995 18435 995 E (10 tokens) -> pieces of 3, tail [E] dropped
    assert corpus.train.tolist() == [[E, 15496, 995, E, E], [E, 15496, E, 15496, E], [E, 995, 18435, 995, E]]
    # val stream: 6894 E 15496 995 E (5 tokens) -> one piece of 3
    assert corpus.val.tolist() == [[E, 6894, E, 15496, E]]
    assert "wrap packing" in corpus.source


def test_packing_mode_is_part_of_the_cache_key(tmp_path: Path, data_cfg: Cfg) -> None:
    path = str(write_jsonl(tmp_path / "c.jsonl", DOCS))
    wrap, concat = (load_corpus(data_cfg(corpus=path, seq_len=4, val_docs=2, packing=mode)) for mode in ("wrap", "concat"))
    assert wrap.train[:, 0].eq(E).all() and not torch.equal(wrap.train, concat.train)
    assert len(list(Path(tmp_path / "cache").glob("c.jsonl-L4-wrap-*"))) == 1
    assert len(list(Path(tmp_path / "cache").glob("c.jsonl-L4-concat-*"))) == 1
    with pytest.raises(CofreError, match="needs data.seq_len >= 3"):
        load_corpus(data_cfg(corpus=path, seq_len=2, val_docs=2, packing="wrap"))


def test_a_corpus_bpe_packs_with_its_own_eos(corpus_file: Path) -> None:
    from cofre.data.tokenizer import text_tokenizer

    cfg = DataConfig(corpus=str(corpus_file), seq_len=32, val_docs=10, text_tokenizer="bpe-300")
    corpus = load_corpus(cfg)
    eos = text_tokenizer(cfg).eos_id
    assert eos == 299 and int(corpus.train.max()) <= eos
    assert bool((corpus.train[:, 0] == eos).all() and (corpus.train[:, -1] == eos).all())  # [BOS] + piece + [EOS]
    assert "bpe-300" in corpus.source
    gpt2 = load_corpus(DataConfig(corpus=str(corpus_file), seq_len=32, val_docs=10))
    assert int(gpt2.train[0, 0]) == 50256  # another tokenizer, another cache
