"""Shared fixtures: a small local corpus and a CPU-sized recipe, so tests never touch the network."""

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

WORDS = (
    "the a model token mask noise step solver fixed point block layer train sample text data loss "
    "value state hidden time budget river mountain city music paper result small large early late"
).split()


def write_corpus(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n_docs):
            words = [rng.choice(WORDS) for _ in range(rng.randint(40, 120))]
            f.write(json.dumps({"text": " ".join(words).capitalize() + "."}) + "\n")
    return path


TINY_RECIPE = """\
name: tiny-test
model: {{hidden: 32, heads: 4, cond_dim: 16, dropout: 0.0, max_seq_len: 32, K_pre: 1, K_fp: 1, K_post: 1}}
solver: {{nograd_min: 0, nograd_max: 2, grad_min: 1, grad_max: 2, eval_iters: 3}}
data: {{corpus: {corpus}, seq_len: 32, val_docs: 10}}
optim: {{lr: 1.0e-3, warmup_steps: 2}}
trainer: {{max_steps: 6, global_batch_size: 4, micro_batch_size: 2, ema: 0.9, log_every: 1, val_every: 3,
           val_batches: 2, ckpt_every: 3, keep_last: 2, seed: 3}}
"""


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests (and the commands they start) tokenise into a private cache, shared within the session."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COFRE_CACHE", str(tmp_path_factory.getbasetemp() / "cofre-cache"))
        yield


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "docs.jsonl")


@pytest.fixture(scope="session")
def tiny_recipe_text(corpus_file: Path) -> str:
    """A CPU-sized FP-MDLM recipe over the test corpus (trains 6 steps in seconds)."""
    return TINY_RECIPE.format(corpus=corpus_file)


@pytest.fixture
def tiny_recipe(tmp_path: Path, tiny_recipe_text: str) -> Path:
    path = tmp_path / "tiny-test.yaml"
    path.write_text(tiny_recipe_text)
    return path


# -- images: a tiny Fashion-MNIST in its IDX layout, and a VQ tokenizer trained on it for a few steps ------------
def _write_idx(path: Path, array: np.ndarray) -> Path:
    """A gzip-compressed IDX file of unsigned bytes: 0x0000 08 <ndim>, big-endian int32 sizes, the data."""
    import gzip
    import struct

    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype("uint8").tobytes())
    return path


def _fashion_like(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28 x 28 grey images whose class c (0..9) is a bright bar at rows 2c..2c+5, with noise; and the labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 40, size=(n, 28, 28))
    for i, c in enumerate(labels):
        images[i, 2 * c:2 * c + 6, 4:24] = 220
    return images.astype("uint8"), labels.astype("uint8")


@pytest.fixture(scope="session")
def write_idx() -> Callable[[Path, np.ndarray], Path]:
    """Write an array as a gzip-compressed IDX file (Fashion-MNIST's format)."""
    return _write_idx


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the four Fashion-MNIST IDX .gz files: 60 train and 20 val (t10k) images."""
    folder = tmp_path_factory.mktemp("fashion-mnist")
    for prefix, n, seed in (("train", 60, 0), ("t10k", 20, 1)):
        images, labels = _fashion_like(n, seed)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


TINY_VQ_RECIPE = """\
kind: vq
vq: {{channels: 1, image_size: 28, hidden: 8, downsample: 2, res_blocks: 1, codebook_size: 16, code_dim: 4}}
data: {{corpus: fashion-mnist, image_size: 28, fashion_mnist_dir: {fashion_dir}}}
optim: {{lr: 1.0e-3, warmup_steps: 1}}
trainer: {{max_steps: 4, batch_size: 8, log_every: 1, val_every: 2, ckpt_every: 2, keep_last: 2, seed: 1}}
"""


@pytest.fixture(scope="session")
def tiny_vq_recipe_text(fashion_dir: Path) -> str:
    """A VQ tokenizer recipe over the tiny Fashion-MNIST (7 x 7 grid, 16 codes; 4 steps in about a second)."""
    return TINY_VQ_RECIPE.format(fashion_dir=fashion_dir)


@pytest.fixture(scope="session")
def tiny_vq_run(tmp_path_factory: pytest.TempPathFactory, tiny_vq_recipe_text: str) -> Path:
    """A trained tiny VQ tokenizer run (data.tokenizer for image tests)."""
    from cofre.data.image_tokenizers.recipe import load_vq_recipe
    from cofre.data.image_tokenizers.train import train_vq

    root = tmp_path_factory.mktemp("tiny-vq")
    (root / "tiny-vq.yaml").write_text(tiny_vq_recipe_text)
    train_vq(load_vq_recipe(root / "tiny-vq.yaml"), root / "run")
    return root / "run"
