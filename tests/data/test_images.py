"""Image data: the IDX reader, Fashion-MNIST splits, an ImageNette-style folder (crop + resize), the codes cache."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cofre.data.image_tokenizers as image_tokenizers
from cofre.config import DataConfig
from cofre.data.image_tokenizers import load_tokenizer
from cofre.data.images import FASHION_CLASSES, load_image_codes, load_images, read_idx, read_image, subset
from cofre.errors import CofreError


def test_read_idx_round_trip_and_damage(tmp_path: Path, write_idx: Callable[[Path, np.ndarray], Path]) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "x.gz", images)), images)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    assert np.array_equal(read_idx(write_idx(tmp_path / "y.gz", labels)), labels)
    with gzip.open(tmp_path / "short.gz", "wb") as f:  # the header promises 2 x 3 x 4 bytes, 5 follow
        f.write(b"\0\0\x08\x03" + (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") + bytes(5))
    with pytest.raises(CofreError, match="holds 5 bytes"):
        read_idx(tmp_path / "short.gz")
    with gzip.open(tmp_path / "float.gz", "wb") as f:  # type 0x0D: floats, not unsigned bytes
        f.write(b"\0\0\x0d\x01" + (1).to_bytes(4, "big") + bytes(4))
    with pytest.raises(CofreError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "float.gz")
    (tmp_path / "plain.gz").write_bytes(b"not gzip")
    with pytest.raises(CofreError, match="not a readable gzip file"):
        read_idx(tmp_path / "plain.gz")


def test_fashion_mnist_splits_subsets_and_resize(fashion_dir: Path) -> None:
    cfg = DataConfig(corpus="fashion-mnist", image_size=28, fashion_mnist_dir=str(fashion_dir))
    images, labels, names = load_images(cfg, "train")
    expected = read_idx(fashion_dir / "train-images-idx3-ubyte.gz")
    assert images.dtype == torch.uint8 and images.shape == (60, 1, 28, 28)
    assert torch.equal(images[:, 0], torch.from_numpy(expected.copy())) and labels.tolist() == [i % 10 for i in range(60)]
    assert names == FASHION_CLASSES and names[9] == "Ankle boot"
    val, _, _ = load_images(cfg, "val")  # the t10k files
    assert torch.equal(val[:, 0], torch.from_numpy(read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz").copy()))
    cfg.train_images = 7  # a fixed random subset, in file order
    picked, picked_labels, _ = load_images(cfg, "train")
    index = subset(60, 7)
    assert len(set(index.tolist())) == 7 and index.tolist() == sorted(index.tolist())
    assert torch.equal(picked, images[index]) and torch.equal(picked_labels, labels[index])
    cfg.image_size = 14
    small, _, _ = load_images(cfg, "train")
    assert small.shape == (7, 1, 14, 14)
    bar_row = 2 * int(picked_labels[0]) // 2 + 1  # the bright bar (rows 2c..2c+5 at 28) at half the size
    assert small[0, 0, bar_row, 5] > 150 and small[0, 0, (bar_row + 7) % 14, 5] < 100


def test_missing_fashion_mnist_says_how_to_install(tmp_path: Path) -> None:
    cfg = DataConfig(corpus="fashion-mnist", image_size=28, fashion_mnist_dir=str(tmp_path))
    with pytest.raises(CofreError, match=r"apt-get install dataset-fashion-mnist.*data\.fashion_mnist_dir"):
        load_images(cfg, "train")


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def test_image_folder_center_crop_and_resize(tmp_path: Path) -> None:
    """A 40 x 20 image: black margins, then a centred 20 x 20 square red on its left half, blue on its right."""
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, 10:20] = (255, 0, 0)
    wide[:, 20:30] = (0, 0, 255)
    _save(tmp_path / "wide.png", wide)
    out = read_image(tmp_path / "wide.png", 10)
    assert out.shape == (3, 10, 10) and out.dtype == torch.uint8
    assert (out[0, :, :4] > 240).all() and (out[2, :, :4] < 15).all()  # the crop holds no black margin
    assert (out[2, :, 6:] > 240).all() and (out[0, :, 6:] < 15).all()
    tall = np.full((30, 10), 200, dtype=np.uint8)  # grey (mode L) becomes RGB
    _save(tmp_path / "tall.png", tall)
    assert torch.equal(read_image(tmp_path / "tall.png", 5), torch.full((3, 5, 5), 200, dtype=torch.uint8))


def test_image_folder_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 1)):
        for name in ("n02", "n01"):
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (24, 32, 3)).astype(np.uint8)).save(
                    _mkdir(tmp_path / split / name) / f"{i}.JPEG")
    (tmp_path / "train" / "n01" / "notes.txt").write_text("not an image")
    cfg = DataConfig(corpus=str(tmp_path), image_size=16)
    images, labels, names = load_images(cfg, "train")
    assert names == ["n01", "n02"] and images.shape == (6, 3, 16, 16) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert load_images(cfg, "val")[1].tolist() == [0, 1]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("layout, message", [
    ({"train/a/x.txt": b"text"}, "has no images"),
    ({"train/a/x.jpg": b"\xff\xd8\xff garbage"}, "x.jpg: not a readable image"),
    ({"a/x.png": None}, "has no train/ folder"),
    ({"train/a/x.png": None}, "has no val/ folder"),
    ({"train/a/x.png": None, "val/b/y.png": None}, "class folders that train/ lacks: b"),
])
def test_bad_image_folders(tmp_path: Path, layout: dict[str, bytes | None], message: str) -> None:
    for name, data in layout.items():
        path = tmp_path / name
        if data is None:
            _save(path, np.zeros((8, 8, 3)))
        else:
            _mkdir(path.parent)
            path.write_bytes(data)
    split = "val" if "val/" in " ".join(layout) or "val/ folder" in message else "train"
    with pytest.raises(CofreError, match=message):
        load_images(DataConfig(corpus=str(tmp_path), image_size=8), split)


def test_codes_are_cached_and_keyed_on_the_tokenizer(fashion_dir: Path, tiny_vq_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = DataConfig(corpus="fashion-mnist", image_size=28, fashion_mnist_dir=str(fashion_dir), tokenizer=str(tiny_vq_run),
                     cache_dir=str(tmp_path / "cache"))
    monkeypatch.delenv("COFRE_CACHE")
    codes = load_image_codes(cfg)
    images, labels, _ = load_images(cfg, "train")
    tokenizer = load_tokenizer(str(tiny_vq_run), image_size=28)
    assert codes.train.dtype == torch.int32 and codes.train.shape == (60, 7, 7) and codes.val.shape == (20, 7, 7)
    assert torch.equal(codes.train.long(), tokenizer.encode(images.float() / 255))  # the codes are the tokenizer's
    assert torch.equal(codes.train_labels, labels) and codes.class_names == FASHION_CLASSES
    assert (codes.codebook_size, codes.grid) == (16, (7, 7)) and str(tmp_path / "cache") in codes.source

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cache hit must not load the tokenizer")

    with monkeypatch.context() as patch:
        patch.setattr(image_tokenizers, "load_tokenizer", refuse)
        again = load_image_codes(cfg)  # a hit: read from the cache, no encoding
    assert torch.equal(again.train, codes.train) and again.source == codes.source

    other = tmp_path / "other-vq"  # the same run with one weight changed: another sha256, another cache
    shutil.copytree(tiny_vq_run, other)
    from safetensors.torch import load_file, save_file

    weights = next(other.glob("checkpoints/step-*4/model.safetensors"))
    state = load_file(str(weights))
    state["decoder.0.bias"] += 1.0
    save_file(state, str(weights))
    moved = load_image_codes(cfg, tokenizer_spec=str(other))
    assert moved.source != codes.source and len(list((tmp_path / "cache").glob("images-*"))) == 2
    cfg.train_images = 10  # so does the subset
    assert load_image_codes(cfg).train.shape == (10, 7, 7) and len(list((tmp_path / "cache").glob("images-*"))) == 3


def test_codes_reject_a_tokenizer_of_another_image_size(fashion_dir: Path, tiny_vq_run: Path) -> None:
    cfg = DataConfig(corpus="fashion-mnist", image_size=32, fashion_mnist_dir=str(fashion_dir), tokenizer=str(tiny_vq_run))
    with pytest.raises(CofreError, match="takes 28 x 28 images, data.image_size is 32"):
        load_image_codes(cfg)
