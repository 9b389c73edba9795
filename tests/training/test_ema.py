"""EMA with MDLM's warm-up, and what a post-training stage takes over from its parent (issue 9, items 4-5)."""

import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from cofre.config import load_recipe
from cofre.errors import CofreError
from cofre.training.checkpoint import load_train_state, resolve_checkpoint
from cofre.training.ema import EMA
from cofre.training.loop import Trainer
from cofre.training.stages import stage_recipe


def test_decay_warms_up_as_mdlm() -> None:
    """d_n = min(decay, (1 + n) / (10 + n)) at the n-th update: 2/11, 3/12, ..., then the cap."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # n = 1: d = 2/11, shadow = 9/11
    assert ema.shadow["weight"].item() == pytest.approx(9 / 11)
    ema.update(model)  # n = 2: d = 3/12, shadow = 1 - (2/11)(3/12)
    assert ema.shadow["weight"].item() == pytest.approx(1 - (2 / 11) * (3 / 12))
    assert ema.num_updates == 2
    for _ in range(20):
        ema.update(model)
    assert ema.current_decay() == 0.5  # (1 + 23) / (10 + 23) > 0.5: the cap


def test_paper_decay_after_10k_steps_keeps_little_of_the_init() -> None:
    ema = EMA(nn.Linear(1, 1), decay=0.9999)
    ema.num_updates = 10_000
    assert ema.current_decay() == pytest.approx(10_002 / 10_011)  # not 0.9999: the warm-up still governs
    remaining = 1.0
    for n in range(1, 10_001):
        remaining *= min(0.9999, (1 + n) / (10 + n))
    assert remaining < 1e-3  # without the warm-up 0.9999^10000 = 37% of the random init would remain


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, tiny_recipe_text: str) -> Path:
    root = tmp_path_factory.mktemp("ema-parent")
    (root / "tiny.yaml").write_text(tiny_recipe_text)
    recipe = load_recipe(root / "tiny.yaml", ["trainer.max_steps=3"])
    Trainer(recipe, root / "run").fit()
    return root / "run"


@pytest.mark.parametrize("carry_on", [True, False])
def test_stage_continues_the_parents_optimizer_and_ema_count(parent: Path, tmp_path: Path, carry_on: bool) -> None:
    folder = resolve_checkpoint(parent)
    recipe = stage_recipe(parent, None, [f"consistency.continue_optimizer={str(carry_on).lower()}"],
                          {"consistency": {"loss": "hidden_mse"}}, {}, "cofre")
    assert recipe.consistency.continue_optimizer is carry_on
    trainer = Trainer(recipe, tmp_path / "stage")
    assert trainer.ema is not None and trainer.ema.num_updates == 3 == load_train_state(folder, "progress")["ema_updates"]
    state = trainer.optimizer.state_dict()["state"]
    if not carry_on:
        assert state == {}
        return
    saved = load_train_state(folder, "optimizer")["state"]
    assert set(state) == set(saved)
    for key in saved:
        assert torch.equal(state[key]["exp_avg"], saved[key]["exp_avg"])
        assert torch.equal(state[key]["exp_avg_sq"], saved[key]["exp_avg_sq"])
    assert trainer.optimizer.param_groups[0]["lr"] == trainer.scheduler.get_last_lr()[0]  # the stage's own schedule


def test_a_parent_without_optimizer_state_is_a_clear_error(parent: Path, tmp_path: Path) -> None:
    folder = resolve_checkpoint(parent)
    copy = tmp_path / "bare"
    shutil.copytree(folder, copy)
    (copy / "train_state" / "optimizer.pt").unlink()
    recipe = stage_recipe(copy, None, [], {"consistency": {"loss": "hidden_mse"}}, {}, "cofre")
    with pytest.raises(CofreError, match="continue_optimizer=false"):
        Trainer(recipe, tmp_path / "stage")
