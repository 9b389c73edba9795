"""The image lifecycle through the shared trainer: MaskGIT codes from a VQ run, checkpoints, exact resume, EMA,
SJFB, the consistency stage with nested masks, then `cofre sample` on the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from image_runs import image_recipe, make_vq_run
from test_bad_inputs import run_in_process

from cofre.config import recipe_to_dict

pytestmark = pytest.mark.slow


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_train_resume_consistency_and_sample_an_image_run(tmp_path: Path, fashion_dir: Path) -> None:
    vq = make_vq_run(tmp_path)
    values = recipe_to_dict(image_recipe(vq))
    values["data"].update(fashion_mnist_dir=str(fashion_dir))  # the test's small Fashion-MNIST, encoded by the test VQ
    recipe = tmp_path / "img.yaml"
    recipe.write_text(yaml.safe_dump(values))
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run_in_process(["train", str(recipe), "--run-dir", str(reference)], tmp_path).code == 0
    assert run_in_process(["train", str(recipe), "trainer.max_steps=2", "--run-dir", str(resumed)], tmp_path).code == 0
    first = json.loads((resumed / "train_result.json").read_text())
    out = run_in_process(["train", str(recipe), "--run-dir", str(resumed)], tmp_path)
    assert out.code == 0 and "resumed at step 2" in out.stdout
    second = json.loads((resumed / "train_result.json").read_text())
    # Table 15's total: the first call's time up to its step-2 checkpoint, plus the second call's
    assert first["train_time_s"] < second["train_time_s"] <= first["train_time_s"] + second["elapsed_s"]
    assert run_in_process(["train", str(recipe), "--run-dir", str(resumed)], tmp_path).code == 0  # finished: no steps
    again = json.loads((resumed / "train_result.json").read_text())
    assert again["train_time_s"] == pytest.approx(second["train_time_s"]) and again["peak_memory_gib"] == second["peak_memory_gib"]
    assert losses(resumed) == pytest.approx(losses(reference), rel=1e-6)  # labels, masks and SJFB draws resume exactly
    metrics = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    validations = [m for m in metrics if "val_nll" in m]
    assert validations and all(m["weights"] == "ema" and m["val_residual"] >= 0 for m in validations)

    stage = tmp_path / "cons.yaml"
    stage.write_text("name: img-cons\nconsistency: {warmup_steps: 1, select_ppl_increase: 0.0}\ntrainer: {max_steps: 2}\n")
    cons = tmp_path / "cons"
    out = run_in_process(["consistency", str(reference), "--recipe", str(stage), "--run-dir", str(cons)], tmp_path)
    assert out.code == 0, out.stderr
    rows = [json.loads(line) for line in (cons / "metrics.jsonl").read_text().splitlines()]
    assert [r["aux_loss"] > 0 for r in rows if "aux_loss" in r] == [True] * 2  # L_CONS on image codes, both stage steps

    samples = tmp_path / "samples"
    out = run_in_process(["sample", str(cons), "--budget", "9", "--num-samples", "2", "--out", str(samples)], tmp_path)
    assert out.code == 0, out.stderr
    assert (samples / "grid.png").is_file() and len(list(samples.glob("sample-*.png"))) == 2
