"""Everything the trainer holds lives where the prepared model lives (the CUDA EMA bug, caught on a CPU).

Accelerate moves the model in `prepare`; state built from the model before that stays behind. Here
`prepare` moves the model to the meta device, a stand-in for a GPU: any tensor left on the CPU is a bug.
"""

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from cofre.config import load_recipe
from cofre.training.loop import Trainer, train

ORIGINAL_PREPARE = Accelerator.prepare


def prepare_onto_meta(self: Accelerator, *objects: object) -> tuple:
    prepared = ORIGINAL_PREPARE(self, *objects)
    return tuple(o.to("meta") if isinstance(o, torch.nn.Module) else o for o in prepared)


def devices(tensors: object) -> set[str]:
    return {t.device.type for t in tensors}  # type: ignore[attr-defined]


@pytest.fixture
def meta_prepare(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Accelerator, "prepare", prepare_onto_meta)


def test_ema_follows_the_prepared_model(tiny_recipe: Path, tmp_path: Path, meta_prepare: None) -> None:
    trainer = Trainer(load_recipe(tiny_recipe), tmp_path / "run")
    assert devices(trainer.unwrapped.parameters()) == {"meta"}
    assert trainer.ema is not None
    assert devices(trainer.ema.shadow.values()) == {"meta"}
    assert {t.dtype for t in trainer.ema.shadow.values()} == {torch.float32}  # the shadow is always fp32


@pytest.mark.parametrize("teacher", ["ema", "checkpoint"])
def test_teachers_follow_the_prepared_model(tiny_recipe: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            teacher: str) -> None:
    parent = tmp_path / "parent"
    train(load_recipe(tiny_recipe, ["trainer.max_steps=1", "trainer.val_every=1", "trainer.ckpt_every=1"]), parent)
    monkeypatch.setattr(Accelerator, "prepare", prepare_onto_meta)
    overrides = [f"init_from={parent}", "consistency.loss=logit_kl", f"consistency.teacher={teacher}"]
    if teacher == "checkpoint":
        overrides.append(f"consistency.teacher_checkpoint={parent}")
    trainer = Trainer(load_recipe(tiny_recipe, overrides), tmp_path / "stage")
    assert trainer.aux is not None and trainer.aux.frozen is not None
    student = next(trainer.unwrapped.parameters())
    assert devices(trainer.aux.frozen.parameters()) == {"meta"}
    assert {p.dtype for p in trainer.aux.frozen.parameters()} == {student.dtype}
    assert devices(trainer.ema.shadow.values()) == {"meta"}  # type: ignore[union-attr]
