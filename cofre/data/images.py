"""Image datasets (Fashion-MNIST's IDX files, an ImageNette-style folder) and their codes, cached on disk.

`data.corpus: fashion-mnist` reads the four IDX .gz files Debian's `dataset-fashion-mnist` installs (train:
60,000, val: the 10,000 test images; 28 x 28 grey). Any other corpus is a folder laid out as ImageNette:
`train/<class>/*.JPEG` and `val/<class>/*.JPEG`; every image is converted to RGB, center-cropped to a square
and resized to `data.image_size` (bicubic). Class names are Fashion-MNIST's, or the folder's class folder
names in sorted order. `data.train_images` / `data.val_images` keep a fixed random subset (seed 0).

`load_image_codes` encodes both splits once with the tokenizer `data.tokenizer` names and caches the codes
under the data cache folder (like packed text, `cofre/data/packing.py`); the cache key holds the dataset's
files, the image size, the subset sizes and the sha256 of the tokenizer's weights.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import re
import shutil
import struct
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cofre.data.cache import DamagedCache, load_ids, open_cache, read_meta
from cofre.data.packing import cache_root, publish_cache
from cofre.errors import CofreError

if TYPE_CHECKING:
    from cofre.config import DataConfig

FASHION_MNIST = "fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                 "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
SPLITS = ("train", "val")
FORMAT_VERSION = 1  # bump when decoding or encoding changes, so old code caches are not reused
_log = logging.getLogger(__name__)


# -- Fashion-MNIST: IDX files ----------------------------------------------------------------------------------
def require_fashion_file(path: Path) -> Path:
    if not path.is_file():
        raise CofreError(f"Fashion-MNIST file {path} is missing; install it with `apt-get install dataset-fashion-mnist` "
                         "or set data.fashion_mnist_dir to a folder holding the four IDX .gz files")
    return path


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip-compressed) of unsigned bytes: magic 0x0000 08 <ndim>, big-endian int32 sizes, data."""
    require_fashion_file(path)
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise CofreError(f"{path}: not a readable gzip file ({err})") from None
    if len(raw) < 4 or raw[0:2] != b"\0\0" or raw[2] != 0x08:
        raise CofreError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise CofreError(f"{path}: IDX header cut short")
    shape = struct.unpack(f">{ndim}i", raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise CofreError(f"{path}: IDX data holds {data.size} bytes, its header says {shape}")
    return data.reshape(shape)


def _fashion_mnist(cfg: DataConfig, split: str) -> tuple[Tensor, Tensor]:
    folder = Path(cfg.fashion_mnist_dir).expanduser()
    images_file, labels_file = (folder / name for name in FASHION_FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise CofreError(f"{images_file} and {labels_file} do not pair up: shapes {images.shape} and {labels.shape}")
    if labels.size and int(labels.max()) >= len(FASHION_CLASSES):
        raise CofreError(f"{labels_file}: label {int(labels.max())} is not one of Fashion-MNIST's 10 classes")
    return torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))


def _resize(images: Tensor, size: int) -> Tensor:
    """uint8 [N, C, s, s] -> uint8 [N, C, size, size] (bicubic, antialiased); unchanged when already that size."""
    if images.shape[-1] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bicubic", antialias=True, align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


# -- an ImageNette-style folder ----------------------------------------------------------------------------------
def folder_classes(root: Path) -> list[str]:
    """The class folder names under `root/train`, sorted."""
    if not root.is_dir():
        raise CofreError(f"image folder '{root}' does not exist (data.corpus is 'fashion-mnist' or a folder with "
                         "train/<class>/ and val/<class>/ images)")
    train = root / "train"
    if not train.is_dir():
        raise CofreError(f"image folder '{root}' has no train/ folder (expected train/<class>/*.JPEG and val/<class>/)")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    if not classes:
        raise CofreError(f"image folder '{train}' has no class folders (expected train/<class>/*.JPEG)")
    return classes


def folder_files(root: Path, split: str) -> tuple[list[Path], list[int], list[str]]:
    """Image paths of one split in sorted order, their class indices, and the class names."""
    classes = folder_classes(root)
    base = root / split
    if not base.is_dir():
        raise CofreError(f"image folder '{root}' has no {split}/ folder (expected {split}/<class>/*.JPEG)")
    unknown = sorted(p.name for p in base.iterdir() if p.is_dir() and p.name not in classes)
    if unknown:
        raise CofreError(f"{base} has class folders that train/ lacks: {', '.join(unknown[:5])}")
    files, labels = [], []
    for index, name in enumerate(classes):
        if not (base / name).is_dir():
            continue
        found = sorted(p for p in (base / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        files += found
        labels += [index] * len(found)
    if not files:
        raise CofreError(f"image folder '{base}' has no images ({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return files, labels, classes


def read_image(path: Path, size: int) -> Tensor:
    """One image as uint8 RGB [3, size, size]: the centred square crop, resized (bicubic)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale that is still >= size
            img = img.convert("RGB")
            w, h = img.size
            side = min(w, h)
            box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
            img = img.crop(box).resize((size, size), Image.Resampling.BICUBIC)  # crop first: no margin bleeds in
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CofreError(f"{path}: not a readable image ({' '.join(str(err).split())[:200]})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


# -- both sources --------------------------------------------------------------------------------------------------
def subset(n: int, keep: int) -> Tensor:
    """Indices of a fixed random subset of `keep` of `n` items, in order; all of them when keep is 0 or >= n."""
    if keep == 0 or keep >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(0))[:keep].sort().values


def _split_cap(cfg: DataConfig, split: str) -> int:
    if split not in SPLITS:
        raise CofreError(f"image split must be one of {', '.join(SPLITS)}, got {split!r}")
    return cfg.train_images if split == "train" else cfg.val_images


def image_channels(cfg: DataConfig) -> int:
    """1 for Fashion-MNIST's grey images, 3 for a folder's (converted to RGB)."""
    return 1 if cfg.corpus == FASHION_MNIST else 3


def class_names(cfg: DataConfig) -> list[str]:
    if cfg.class_names:  # an exported model's, recorded when the corpus was at hand
        return list(cfg.class_names)
    if cfg.corpus == FASHION_MNIST:
        return list(FASHION_CLASSES)
    return folder_classes(Path(cfg.corpus).expanduser())


def iter_image_batches(cfg: DataConfig, split: str, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 images [b, C, S, S] and int64 labels [b] of one split, in order, `batch_size` at a time."""
    keep = _split_cap(cfg, split)
    if cfg.corpus == FASHION_MNIST:
        images, labels = _fashion_mnist(cfg, split)
        index = subset(len(images), keep)
        for start in range(0, len(index), batch_size):
            chunk = index[start:start + batch_size]
            yield _resize(images[chunk], cfg.image_size), labels[chunk]
        return
    files, labels_list, _ = folder_files(Path(cfg.corpus).expanduser(), split)
    index = subset(len(files), keep).tolist()
    for start in range(0, len(index), batch_size):
        chunk = index[start:start + batch_size]
        yield (torch.stack([read_image(files[i], cfg.image_size) for i in chunk]),
               torch.tensor([labels_list[i] for i in chunk], dtype=torch.int64))


def load_images(cfg: DataConfig, split: str) -> tuple[Tensor, Tensor, list[str]]:
    """All images of a split as uint8 [N, C, S, S] (divide by 255 for [0, 1]), labels int64 [N], class names."""
    batches = list(iter_image_batches(cfg, split, 1024))
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
    return images, labels, class_names(cfg)


def dataset_identity(cfg: DataConfig) -> dict[str, object]:
    """What decoded images depend on: the source files (path, size, mtime), the image size and the subsets."""
    if cfg.corpus == FASHION_MNIST:
        folder = Path(cfg.fashion_mnist_dir).expanduser()
        files = [require_fashion_file(folder / name) for split in SPLITS for name in FASHION_FILES[split]]
    else:
        root = Path(cfg.corpus).expanduser()
        files = [f for split in SPLITS for f in folder_files(root, split)[0]]
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"corpus": cfg.corpus, "files": len(files), "files_sha256": digest.hexdigest(), "image_size": cfg.image_size,
            "train_images": cfg.train_images, "val_images": cfg.val_images}


# -- codes -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImageCodes:
    """Both splits as token grids: int32 codes [N, h, w] (memory-mapped from the cache; `.long()` per batch)."""

    train: Tensor
    train_labels: Tensor  # int64 [N]
    val: Tensor
    val_labels: Tensor
    class_names: list[str]
    codebook_size: int
    grid: tuple[int, int]
    source: str  # human-readable identity: dataset, image size, images per split, tokenizer and its sha, cache folder


def load_image_codes(cfg: DataConfig, tokenizer_spec: str | None = None,
                     device: torch.device | str | None = None) -> ImageCodes:
    """Both splits encoded by the tokenizer `tokenizer_spec` (default `cfg.tokenizer`): encoded on the first call
    (on `device`; default CUDA when available), read from the cache afterwards."""
    from cofre.data.image_tokenizers import tokenizer_identity

    spec = cfg.tokenizer if tokenizer_spec is None else tokenizer_spec
    tokenizer_id = tokenizer_identity(spec)
    identity = {"format": FORMAT_VERSION, "dataset": dataset_identity(cfg), "tokenizer": tokenizer_id}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(cfg.corpus).name or "images")[:40]
    root = cache_root(cfg)
    final = root / f"images-{slug}-S{cfg.image_size}-{tokenizer_id['kind']}-{digest}"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return open_cache(final, lambda: _encode_to_cache(cfg, spec, identity, root, final, torch.device(device)),
                      _open_codes)


def _open_codes(final: Path) -> ImageCodes:
    """Both splits' codes and labels, checked against the cache's meta.json (shapes, codebook, classes)."""
    meta = read_meta(final, {"class_names": list, "codebook_size": int, "grid": list, "source": str})
    if len(meta["grid"]) != 2 or not all(isinstance(g, int) and g > 0 for g in meta["grid"]):
        raise DamagedCache(f"meta.json's grid {meta['grid']} is not two sizes")
    arrays = {}
    for split in SPLITS:
        try:
            count = len(np.load(final / f"{split}_labels.npy", mmap_mode="r"))
        except (OSError, ValueError, EOFError) as err:
            raise DamagedCache(f"{split}_labels.npy: {' '.join(str(err).split())[:80]}") from None
        # copy-on-write mappings, as for packed text: a stray in-place write never reaches the cache
        arrays[split] = torch.from_numpy(load_ids(final / f"{split}.npy", (count, *meta["grid"]), meta["codebook_size"]))
        arrays[f"{split}_labels"] = torch.from_numpy(load_ids(final / f"{split}_labels.npy", (count,),
                                                              len(meta["class_names"])))
    return ImageCodes(**arrays, class_names=meta["class_names"], codebook_size=meta["codebook_size"],
                      grid=tuple(meta["grid"]), source=f"{meta['source']} | cache {final}")


def _encode_to_cache(cfg: DataConfig, spec: str, identity: dict[str, object], root: Path, final: Path,
                     device: torch.device) -> None:
    """Encode into a temporary folder beside `final`, then rename it into place: a killed run leaves no half cache."""
    from rich.progress import Progress

    from cofre.data.image_tokenizers import load_tokenizer

    tokenizer = load_tokenizer(spec, device, image_size=cfg.image_size)
    names = class_names(cfg)
    channels = image_channels(cfg)
    if tokenizer.channels != channels:
        raise CofreError(f"tokenizer '{spec}' takes {tokenizer.channels}-channel images, corpus '{cfg.corpus}' has {channels}")
    batch = max(8, min(512, (1 << 22) // cfg.image_size**2))
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    counts = {}
    try:
        _log.info("encoding %r with %s into %s", cfg.corpus, tokenizer.name, final)
        with Progress(transient=True) as progress:
            for split in SPLITS:
                task = progress.add_task(f"encoding {split} images ({tokenizer.name})", total=None)
                codes, labels = [], []
                for images, batch_labels in iter_image_batches(cfg, split, batch):
                    codes.append(tokenizer.encode(images.to(device).float() / 255).to(torch.int32).cpu())
                    labels.append(batch_labels)
                    progress.advance(task, len(images))
                np.save(tmp / f"{split}.npy", torch.cat(codes).numpy())
                np.save(tmp / f"{split}_labels.npy", torch.cat(labels).numpy())
                counts[split] = sum(len(c) for c in codes)
        tok = identity["tokenizer"]
        meta = {
            **identity, "class_names": names, "codebook_size": tokenizer.codebook_size, "grid": list(tokenizer.grid),
            "source": (f"{cfg.corpus} | {cfg.image_size} x {cfg.image_size} | {counts['train']} train + {counts['val']} val "
                       f"images | tokenizer {tokenizer.name} {spec} (sha256 {tok['sha256'][:12]}) | "  # type: ignore[index]
                       f"grid {tokenizer.grid[0]} x {tokenizer.grid[1]}, {tokenizer.codebook_size} codes"),
        }
        publish_cache(tmp, final, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
