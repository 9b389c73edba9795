"""`cofre sample` on image runs: PNGs + grid + manifest, and one-line errors (exit 2) for what cannot be sampled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from image_runs import GRID, make_image_run, make_vq_run
from test_bad_inputs import run_in_process

from cofre.errors import CofreError
from cofre.sampling.generate import SampleSettings, build_sampler, open_checkpoint


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("image-runs")
    vq = make_vq_run(root)
    return {"vq": vq, "fp": make_image_run(root, vq, (1, 1, 1), "img-fp"), "plain": make_image_run(root, vq, (2, 0, 0), "img-plain")}


def test_sample_writes_pngs_grid_and_manifest(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "samples"
    result = run_in_process(["sample", str(runs["fp"]), "--budget", "12", "--steps", "3", "--num-samples", "4",
                             "--batch-size", "3", "--classes", "0,T-shirt/top,9", "--cfg", "1.5", "--reuse", "3sr",
                             "--rotate", "--out", str(out), "--trace", str(tmp_path / "trace.jsonl")], tmp_path)
    assert result.code == 0, result.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["class"] for s in manifest["samples"]] == [0, 0, 9, 0]  # names and indices, cycled
    assert manifest["blocks_spent_per_batch"] == [12, 12] and "not counted twice" in manifest["budget_definition"]
    assert manifest["settings"]["cfg"] == 1.5 and len(manifest["checkpoint"]["sha256"]) == 64
    # --ema is the default, but a run trained without EMA (the image recipes) has only raw weights: said so
    assert manifest["settings"]["ema"] and manifest["checkpoint"]["ema"] is False
    assert manifest["checkpoint"]["weights"] == "model.safetensors"
    assert manifest["tokenizer"]["label"] == "cofre-vq-conv, 16 codes on a 4 x 4 grid at 8 px"
    assert sum(manifest["plan"]["reveal_counts"]) == GRID[0] * GRID[1]
    for sample in manifest["samples"]:
        assert len(sample["codes"]) == GRID[0] and Image.open(out / sample["file"]).size == (8, 8)
    assert Image.open(out / "grid.png").size[0] > 2 * 64  # two class columns, upscaled to >= 64 px a cell
    assert len((tmp_path / "trace.jsonl").read_text().splitlines()) == 2 * 3  # batches x steps
    again = run_in_process(["sample", str(runs["fp"]), "--budget", "12", "--out", str(out)], tmp_path)
    assert again.code == 2 and "exists; pass --overwrite" in again.stderr


@pytest.mark.parametrize("args, fragment", [
    (["--budget", "5"], "not a multiple of the model's 2 blocks per step"),  # plain model, 2 blocks a step
    (["--budget", "40"], "only 16 cells to reveal"),  # 20 steps > 16 cells
    (["--budget", "4", "--classes", "zebra"], "unknown class 'zebra'"),
    (["--budget", "4", "--classes", "10"], "unknown class '10'"),
    (["--budget", "4", "--top-p", "0.9"], "--top-p: text sampling options"),
    (["--budget", "4", "--order", "raster"], "--order must be one of halton, confidence"),
    (["--budget", "4", "--temperature", "0"], "--temperature must be a positive number"),
])
def test_bad_image_sampling_inputs_are_one_line(runs: dict[str, Path], tmp_path: Path, args: list[str],
                                                fragment: str) -> None:
    result = run_in_process(["sample", str(runs["plain"]), *args, "--out", str(tmp_path / "s")], tmp_path)
    assert result.code == 2 and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


def test_fp_budget_that_cannot_be_spent(runs: dict[str, Path], tmp_path: Path) -> None:
    result = run_in_process(["sample", str(runs["fp"]), "--budget", "5", "--steps", "2", "--out", str(tmp_path / "s")],
                            tmp_path)
    assert result.code == 2 and "cannot be spent exactly in 2 steps" in result.stderr


def test_text_and_image_checkpoints_go_to_their_own_sampler(runs: dict[str, Path], tmp_path: Path,
                                                             tiny_recipe: Path) -> None:
    with pytest.raises(CofreError, match="is an image model; the text sampler needs a text"):
        build_sampler(open_checkpoint(runs["fp"], device="cpu"), SampleSettings(budget=4))
    from cofre.config import load_recipe
    from cofre.training.loop import train

    train(load_recipe(tiny_recipe, ["trainer.max_steps=1", "trainer.ckpt_every=1"]), tmp_path / "text")
    result = run_in_process(["sample", str(tmp_path / "text"), "--budget", "4", "--cfg", "2"], tmp_path)
    assert result.code == 2 and "--cfg: image sampling options" in result.stderr
    from cofre.sampling.generate_images import ImageSampleSettings, sample_images

    with pytest.raises(CofreError, match="is a text model; the image sampler needs an image"):
        sample_images(open_checkpoint(tmp_path / "text", device="cpu"), ImageSampleSettings(budget=3))


@pytest.mark.parametrize("args, fragment", [
    (["cka", "{run}", "--batches", "1"], "is an image model; cofre cka analyses text runs"),
    (["convert", "{run}", "--map", "1,2,3", "--out", "{tmp}/converted"], "is an image model; convert takes a plain MDLM"),
])
def test_text_only_commands_refuse_an_image_run(runs: dict[str, Path], tmp_path: Path, args: list[str],
                                                fragment: str) -> None:
    argv = [a.format(run=runs["plain"], tmp=tmp_path) for a in args]
    result = run_in_process(argv, tmp_path)
    assert result.code == 2 and fragment in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "converted").exists()
