"""`trainer.compile: true` end to end on a CPU: compiled blocks train, validate (EMA swap), checkpoint and resume."""

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from cofre.config import load_recipe
from cofre.models import Denoiser
from cofre.training.loop import train


@pytest.mark.slow
def test_compiled_training_writes_clean_checkpoints(tiny_recipe: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    recipe = load_recipe(tiny_recipe, ["trainer.compile=true", "trainer.max_steps=3", "trainer.val_every=3",
                                       "trainer.ckpt_every=3"])
    result = train(recipe, run)
    assert result.final_step == 3 and result.validations
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss"] == r["loss"] for r in records if "loss" in r)  # finite (not NaN)
    keys = set(Denoiser(recipe.model).state_dict())
    folder = Path(result.checkpoint)
    for name in ("model.safetensors", "ema.safetensors"):
        assert set(load_file(str(folder / name))) == keys  # no `_orig_mod.` prefixes: loadable without compile
    extended = load_recipe(tiny_recipe, ["trainer.compile=false", "trainer.max_steps=4", "trainer.val_every=3",
                                         "trainer.ckpt_every=3"])
    assert train(extended, run).start_step == 3  # resumed eagerly: compile may change on resume
