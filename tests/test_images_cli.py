"""`cofre train` on a `kind: vq` recipe trains the image tokenizer; bad image inputs are one `error:` line, exit 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_bad_inputs import assert_clean_error, run_in_process


@pytest.fixture(scope="module")
def image_workspace(tmp_path_factory: pytest.TempPathFactory, tiny_vq_recipe_text: str) -> Path:
    """A VQ recipe, bad image folders, an empty Fashion-MNIST folder and a text run's directory."""
    root = tmp_path_factory.mktemp("bad-images")
    (root / "vq.yaml").write_text(tiny_vq_recipe_text)
    (root / "no-images" / "train" / "cat").mkdir(parents=True)
    (root / "no-images" / "train" / "cat" / "readme.txt").write_text("no pictures here")
    for split in ("train", "val"):
        (root / "corrupt" / split / "cat").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(root / "corrupt" / split / "cat" / "ok.png")
    (root / "corrupt" / "train" / "cat" / "broken.JPEG").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (root / "empty-fashion").mkdir()
    (root / "text-run").mkdir()
    (root / "text-run" / "recipe.yaml").write_text("name: text\nmodel: {hidden: 32}\n")
    return root


def test_cofre_train_dispatches_a_vq_recipe(image_workspace: Path) -> None:
    outcome = run_in_process(["train", "vq.yaml", "--run-dir", "vq-run", "trainer.max_steps=2"], image_workspace)
    assert outcome.code in (0, None), outcome.stderr
    assert "held-out PSNR" in outcome.stdout and "grid 7 x 7" in outcome.stdout
    assert (image_workspace / "vq-run" / "checkpoints" / "step-000000002" / "model.safetensors").is_file()


FOLDER = ["vq.channels=3", "data.image_size=8", "vq.image_size=8", "vq.downsample=1"]
CASES: list[tuple[list[str], str]] = [
    (["data.corpus=no-images", *FOLDER], "has no images"),
    (["data.corpus=corrupt", *FOLDER], "broken.JPEG: not a readable image"),
    (["data.corpus=no-such-folder", *FOLDER], "image folder 'no-such-folder' does not exist"),
    (["data.fashion_mnist_dir=empty-fashion"], "install it with `apt-get install dataset-fashion-mnist` or set data.fashion_mnist_dir"),
    (["vq.image_size=32"], "data.image_size (28) must equal vq.image_size (32)"),
    (["vq.channels=3"], "vq.channels is 3 but corpus 'fashion-mnist' has 1-channel images"),
    (["vq.encoder=patch"], "vq.code_dim must be vq.channels x 4^vq.downsample = 16 for the patch encoder, got 4"),
    (["vq.ema_decay=1"], "vq.ema_decay must be in [0, 1)"),
    (["vq.codebook_size=0"], "vq.codebook_size must be in 1..16777216"),
    (["vq.codebok_size=8"], "did you mean 'codebook_size'"),
    (["data.train_images=-1"], "data.train_images must be in 0..1000000000"),
]


@pytest.mark.parametrize("overrides, message", CASES, ids=[m[:40] for _, m in CASES])
def test_bad_image_inputs(image_workspace: Path, overrides: list[str], message: str) -> None:
    outcome = run_in_process(["train", "vq.yaml", "--run-dir", "never", *overrides], image_workspace)
    assert_clean_error(outcome, message)
    assert not (image_workspace / "never" / "checkpoints").exists()


def test_a_vq_recipe_refuses_a_text_run_directory(image_workspace: Path) -> None:
    outcome = run_in_process(["train", "vq.yaml", "--run-dir", "text-run"], image_workspace)
    assert_clean_error(outcome, "holds a run that is not a VQ tokenizer")
