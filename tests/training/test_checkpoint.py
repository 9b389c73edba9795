"""Checkpoints: exact round trip, safe loading, atomic publication, pruning."""

import json
from pathlib import Path

import pytest
import torch

from cofre.config import ModelConfig, Recipe
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.training.checkpoint import (
    load_model,
    load_train_state,
    publish_checkpoint,
    resolve_checkpoint,
    staging_dir,
    write_checkpoint_files,
)


def small_recipe() -> Recipe:
    recipe = Recipe(name="ckpt")
    recipe.data.text_tokenizer = "bpe-257"  # a small head: 257 ids + [mask]
    recipe.model = ModelConfig(vocab_size=258, hidden=16, heads=2, cond_dim=8, dropout=0.0, K_pre=1, K_fp=1, K_post=1)
    return recipe


def save(checkpoints: Path, step: int, model: Denoiser, recipe: Recipe, keep_last: int = 3) -> Path:
    folder = staging_dir(checkpoints, step)
    write_checkpoint_files(folder, model, None, recipe, {"progress": {"step": step}})
    return publish_checkpoint(checkpoints, step, keep_last)


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    recipe = small_recipe()
    torch.manual_seed(0)
    model = Denoiser(recipe.model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = save(tmp_path / "checkpoints", 5, model.eval(), recipe)
    loaded, loaded_recipe = load_model(folder)
    z, sigma = torch.randint(0, 39, (2, 6)), torch.rand(2)
    assert loaded_recipe == recipe
    assert torch.equal(loaded.eval()(z, sigma, n_nograd=3).logits, model(z, sigma, n_nograd=3).logits)
    assert load_train_state(folder, "progress") == {"step": 5}
    assert json.loads((folder / "config.json").read_text())["model"]["K_fp"] == 1


def test_run_directory_resolves_to_latest_and_old_ones_are_pruned(tmp_path: Path) -> None:
    recipe, model = small_recipe(), Denoiser(small_recipe().model)
    checkpoints = tmp_path / "checkpoints"
    for step in (1, 2, 3, 4):
        save(checkpoints, step, model, recipe, keep_last=2)
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000000003", "step-000000004"]
    assert resolve_checkpoint(tmp_path).name == "step-000000004"


def test_unfinished_checkpoint_is_never_latest(tmp_path: Path) -> None:
    recipe, model = small_recipe(), Denoiser(small_recipe().model)
    checkpoints = tmp_path / "checkpoints"
    save(checkpoints, 1, model, recipe)
    write_checkpoint_files(staging_dir(checkpoints, 2), model, None, recipe, {})  # killed before publishing
    assert resolve_checkpoint(tmp_path).name == "step-000000001"


def test_train_state_is_loaded_without_executing_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # would run code if unpickled unsafely
            return (exec, ("raise SystemExit('pwned')",))

    folder = tmp_path / "train_state"
    folder.mkdir()
    torch.save({"x": Evil()}, folder / "progress.pt")
    with pytest.raises(Exception) as err:
        load_train_state(tmp_path, "progress")
    assert "pwned" not in str(err.value) or "Unsupported" in str(err.value)
    assert not isinstance(err.value, SystemExit)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CofreError, match="neither a checkpoint folder"):
        resolve_checkpoint(tmp_path)


def test_configs_written_before_fpdm_and_wrap_load_as_they_were_built(tmp_path: Path) -> None:
    """A checkpoint from before `injection_mlp` / `packing` existed used the linear mix and concat packing."""
    from cofre.config import ModelConfig, Recipe, recipe_to_dict
    from cofre.training.checkpoint import checkpoint_recipe

    values = recipe_to_dict(Recipe(model=ModelConfig(hidden=32, heads=4, K_pre=1, K_fp=1, K_post=1)))
    del values["model"]["injection_mlp"], values["data"]["packing"]
    (tmp_path / "config.json").write_text(json.dumps(values))
    recipe = checkpoint_recipe(tmp_path)
    assert (recipe.model.injection_mlp, recipe.data.packing) == ("linear", "concat")
    values["model"]["injection_mlp"], values["data"]["packing"] = "fpdm", "wrap"
    (tmp_path / "config.json").write_text(json.dumps(values))
    assert (checkpoint_recipe(tmp_path).model.injection_mlp, checkpoint_recipe(tmp_path).data.packing) == ("fpdm", "wrap")
