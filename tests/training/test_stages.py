"""Post-training end to end on tiny runs: consistency with checkpoint selection, convert + adapt, cka."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cofre.training.checkpoint import resolve_checkpoint

ROOT = Path(__file__).parents[2]


def cofre(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "cofre", *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def parents(tmp_path_factory: pytest.TempPathFactory, tiny_recipe_text: str) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stages")
    recipe = root / "tiny.yaml"
    recipe.write_text(tiny_recipe_text)
    cofre("train", str(recipe), "--run-dir", str(root / "fp"))
    cofre("train", str(recipe), "model.K_pre=3", "model.K_fp=0", "model.K_post=0", "name=plain",
          "--run-dir", str(root / "plain"))
    return {"fp": root / "fp", "plain": root / "plain", "root": root}


@pytest.mark.slow
def test_consistency_stage_selects_and_stops(parents: dict[str, Path]) -> None:
    run = parents["root"] / "cofre"
    result = cofre("consistency", str(parents["fp"]), "trainer.max_steps=12", "trainer.val_every=2",
                   "trainer.ckpt_every=4", "optim.lr=0.05", "optim.warmup_steps=0", "consistency.weight=10",
                   "consistency.warmup_steps=0", "--run-dir", str(run))
    logged = records(run)
    pre = [r for r in logged if r.get("pre_consistency")]
    assert len(pre) == 1 and pre[0]["step"] == 0
    assert all("aux_loss" in r and r["lambda"] == 10 for r in logged if "loss" in r)
    selected = [r for r in logged if r.get("selected")]
    assert len(selected) == 1, "the wrecking learning rate must push val PPL past the 15% threshold"
    step = selected[0]["step"]
    assert selected[0]["val_ppl"] > 1.15 * pre[0]["val_ppl"]
    assert all(r["val_ppl"] <= 1.15 * pre[0]["val_ppl"] for r in logged if "val_ppl" in r and r["step"] < step)
    assert max(r["step"] for r in logged) == step  # stop_at_selection
    assert resolve_checkpoint(run).name == f"step-{step:09d}"
    assert "selected checkpoint (App. F.7)" in result.stdout
    recipe = (run / "recipe.yaml").read_text()
    assert str(resolve_checkpoint(parents["fp"])) in recipe and "hidden_mse" in recipe  # the parent is recorded


@pytest.mark.slow
def test_convert_then_adapt(parents: dict[str, Path]) -> None:
    converted = parents["root"] / "converted"
    out = cofre("convert", str(parents["plain"]), "--map", "1,2,3", "--run-dir", str(converted)).stdout
    assert "source layer 2 -> fixed_point.blocks.0" in out.replace("\n", " ") or "fixed_point" in out
    summary = json.loads(cofre("inspect", str(resolve_checkpoint(converted)), "--json").stdout)
    assert (summary["K_pre"], summary["K_fp"], summary["K_post"]) == (1, 1, 1)
    adapted = parents["root"] / "adapted"
    cofre("adapt", str(converted), "--teacher", str(parents["plain"]), "trainer.max_steps=4", "trainer.val_every=2",
          "consistency.warmup_steps=2", "--run-dir", str(adapted))
    logged = [r for r in records(adapted) if "aux_loss" in r]
    assert logged and all(r["aux_loss"] > 0 for r in logged)
    assert [r["lambda"] for r in logged][-1] == pytest.approx(0.1)
    recipe = (adapted / "recipe.yaml").read_text()
    assert "logit_kl" in recipe and "teacher: checkpoint" in recipe


@pytest.mark.slow
def test_cka_command(parents: dict[str, Path]) -> None:
    out = cofre("cka", str(parents["plain"]), "--batches", "1", "--batch-size", "4").stdout
    assert "suggested conversion" in out
    for name in ("cka.json", "cka_heatmap.png", "cka_consecutive.png"):
        assert (parents["plain"] / "cka" / name).is_file()
