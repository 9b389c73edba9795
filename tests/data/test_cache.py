"""Caches heal: a packed corpus, image codes or a corpus tokenizer that is damaged (garbage meta.json, a truncated
.npy, ids outside the vocabulary, a broken tokenizer file) is built again with one warning line, and gives what an
intact cache gives."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cofre.config import DataConfig
from cofre.data.packing import cache_key, load_corpus


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def out_of_range(path: Path) -> None:
    array = np.load(path)
    array.flat[len(array.flat) // 2] = 10**6
    np.save(path, array)


def garbage_meta(path: Path) -> None:
    (path.parent / "meta.json").write_text("{garbage")


DAMAGE: dict[str, Callable[[Path], None]] = {"garbage meta.json": garbage_meta, "truncated": truncate,
                                             "ids out of range": out_of_range, "missing": Path.unlink}


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("warning: ")]


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
@pytest.mark.parametrize("split", ["train", "val"])
def test_a_damaged_packed_corpus_is_rebuilt_with_one_warning(data_cfg: Callable[..., DataConfig], corpus_file: Path,
                                                             capsys: pytest.CaptureFixture[str], damage: str,
                                                             split: str) -> None:
    cfg = data_cfg(corpus=str(corpus_file), seq_len=16, val_docs=10)
    intact = load_corpus(cfg)
    train, val = intact.train.clone(), intact.val.clone()  # the cache's mapping is about to be damaged in place
    folder = Path(cfg.cache_dir) / cache_key(cfg)
    DAMAGE[damage](folder / f"{split}.npy")
    capsys.readouterr()
    healed = load_corpus(cfg)
    warned = warnings_in(capsys.readouterr().err)
    assert len(warned) == 1 and str(folder) in warned[0] and "building it again" in warned[0], warned
    assert torch.equal(healed.train, train) and torch.equal(healed.val, val)
    assert load_corpus(cfg).source == healed.source and not warnings_in(capsys.readouterr().err)  # healed for good
    assert [p.name for p in Path(cfg.cache_dir).iterdir() if p.name.startswith(".")] == []  # nothing left aside


@pytest.mark.parametrize("damage", ["garbage meta.json", "truncated", "ids out of range"])
def test_damaged_image_codes_are_encoded_again(fashion_dir: Path, tiny_vq_run: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                               damage: str) -> None:
    from cofre.data.images import load_image_codes

    monkeypatch.delenv("COFRE_CACHE")
    cfg = DataConfig(corpus="fashion-mnist", image_size=28, fashion_mnist_dir=str(fashion_dir),
                     tokenizer=str(tiny_vq_run), cache_dir=str(tmp_path / "cache"))
    intact = load_image_codes(cfg, device="cpu")
    val, labels = intact.val.clone(), intact.train_labels.clone()
    (folder,) = (tmp_path / "cache").glob("images-*")
    DAMAGE[damage](folder / "val.npy")
    capsys.readouterr()
    healed = load_image_codes(cfg, device="cpu")
    assert len(warnings_in(capsys.readouterr().err)) == 1
    assert torch.equal(healed.val, val) and torch.equal(healed.train_labels, labels)


def test_a_damaged_corpus_tokenizer_is_trained_again(tmp_path: Path, corpus_file: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from cofre.data import tokenizer as tokenizer_module
    from cofre.data.tokenizer import text_tokenizer

    monkeypatch.setenv("COFRE_CACHE", str(tmp_path))
    cfg = DataConfig(corpus=str(corpus_file), text_tokenizer="bpe-300", val_docs=10)
    ids = text_tokenizer(cfg).encode_batch(["a small model"])
    (file,) = (tmp_path / "tokenizers").glob("*.json")
    file.write_text('{"not": "a tokenizer"}')
    tokenizer_module._load_bpe.cache_clear()  # a new process reads the file again
    capsys.readouterr()
    assert text_tokenizer(cfg).encode_batch(["a small model"]) == ids
    assert len(warnings_in(capsys.readouterr().err)) == 1


def test_a_cache_folder_without_meta_is_rebuilt(data_cfg: Callable[..., DataConfig], corpus_file: Path) -> None:
    """A folder left without its meta.json (removed by hand) is not taken for a cache in progress forever."""
    cfg = data_cfg(corpus=str(corpus_file), seq_len=16, val_docs=10)
    val = load_corpus(cfg).val.clone()
    folder = Path(cfg.cache_dir) / cache_key(cfg)
    (folder / "meta.json").unlink()
    assert torch.equal(load_corpus(cfg).val, val)
    shutil.rmtree(folder)
    assert torch.equal(load_corpus(cfg).val, val)
