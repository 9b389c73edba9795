"""Training the VQ tokenizer: the run directory, held-out PSNR, exact resume, and what a run refuses."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from cofre.config import DataConfig
from cofre.data.image_tokenizers import load_tokenizer
from cofre.data.image_tokenizers.recipe import (VQConfig, VQRecipe, VQTrainerConfig, is_vq_recipe, load_vq_recipe,
                                                read_vq_checkpoint)
from cofre.data.image_tokenizers.train import train_vq
from cofre.errors import CofreError


def test_a_vq_run_has_the_standard_layout(tiny_vq_run: Path) -> None:
    assert is_vq_recipe(tiny_vq_run / "recipe.yaml")
    assert (tiny_vq_run / "checkpoints" / "latest").read_text().strip() == "step-000000004"
    assert sorted(p.name for p in (tiny_vq_run / "checkpoints").glob("step-*")) == ["step-000000002", "step-000000004"]
    folder, recipe = read_vq_checkpoint(tiny_vq_run)
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json", "train_state"}
    assert recipe == load_vq_recipe(tiny_vq_run / "recipe.yaml") and recipe.vq.codebook_size == 16
    records = [json.loads(line) for line in (tiny_vq_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert [r["step"] for r in records if "val_psnr" in r] == [2, 4]
    summary = json.loads((tiny_vq_run / "train_result.json").read_text())
    assert summary["val_images"] == 20 and summary["final_step"] == 4 and "per held-out image" in summary["how"]
    assert summary["psnr"] == records[-1]["val_psnr"] and math.isfinite(summary["psnr"])
    assert Image.open(tiny_vq_run / "plots" / "reconstructions.png").size == (10 * 2 * 84, 2 * 84)  # 2 per class


def test_the_summary_psnr_is_the_tokenizer_round_trip(tiny_vq_run: Path, fashion_dir: Path) -> None:
    from cofre.data.images import read_idx

    images = torch.from_numpy(read_idx(fashion_dir / "t10k-images-idx3-ubyte.gz").copy()).unsqueeze(1).float() / 255
    tokenizer = load_tokenizer(str(tiny_vq_run), image_size=28)
    mse = (tokenizer.decode(tokenizer.encode(images)) - images).pow(2).flatten(1).mean(1)
    summary = json.loads((tiny_vq_run / "train_result.json").read_text())
    assert summary["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), abs=1e-4)


def test_resume_continues_exactly(tmp_path: Path, tiny_vq_run: Path, tiny_vq_recipe_text: str) -> None:
    """Two steps, then a resumed run to four, end on the weights of four steps in one go."""
    (tmp_path / "tiny-vq.yaml").write_text(tiny_vq_recipe_text)
    first = train_vq(load_vq_recipe(tmp_path / "tiny-vq.yaml", ["trainer.max_steps=2"]), tmp_path / "run")
    second = train_vq(load_vq_recipe(tmp_path / "tiny-vq.yaml"), tmp_path / "run")
    assert (first.final_step, second.start_step, second.final_step) == (2, 2, 4)
    resumed = load_file(str(tmp_path / "run/checkpoints/step-000000004/model.safetensors"))
    straight = load_file(str(tiny_vq_run / "checkpoints/step-000000004/model.safetensors"))
    assert resumed.keys() == straight.keys() and all(torch.equal(resumed[k], straight[k]) for k in straight)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_a_run_refuses_another_recipe(tmp_path: Path, tiny_vq_run: Path, tiny_vq_recipe_text: str) -> None:
    (tmp_path / "tiny-vq.yaml").write_text(tiny_vq_recipe_text)
    with pytest.raises(CofreError, match=r"holds a different recipe \(vq.codebook_size differ\)"):
        train_vq(load_vq_recipe(tmp_path / "tiny-vq.yaml", ["vq.codebook_size=32"]), tiny_vq_run)


def test_patch_codebook_finds_every_patch(tmp_path: Path, write_idx: Callable[[Path, np.ndarray], Path]) -> None:
    """Images tiled from three distinct 4 x 4 patches: online k-means (encoder: patch) finds all three, so the
    round trip is exact."""
    rng = np.random.default_rng(0)
    tiles = np.array([0, 128, 255], dtype=np.uint8)
    for prefix, n in (("train", 40), ("t10k", 10)):
        cells = tiles[rng.integers(0, 3, size=(n, 7, 7))]
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", cells.repeat(4, axis=1).repeat(4, axis=2))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8) % 10)
    recipe = VQRecipe(vq=VQConfig(encoder="patch", codebook_size=4, code_dim=16, ema_decay=0.5, dead_after=0.5),
                      data=DataConfig(corpus="fashion-mnist", image_size=28, fashion_mnist_dir=str(tmp_path)),
                      trainer=VQTrainerConfig(max_steps=30, batch_size=8, log_every=10, val_every=30, ckpt_every=30))
    recipe.validate()
    result = train_vq(recipe, tmp_path / "run")
    assert result.psnr >= 99.0  # MSE 0 (PSNR is capped at MSE 1e-10: 100 dB)
    assert result.codebook_used >= 0.75
