"""The SDTT stage in the trainer: rounds and dt, the teacher swap at the boundary, a frozen teacher, exact resume."""

import json
from pathlib import Path

import pytest
import torch

from cofre.config import DistillConfig, Recipe, load_recipe, recipe_from_dict, recipe_to_dict
from cofre.errors import CofreError
from cofre.training.checkpoint import EMA_FILE, checkpoint_recipe, load_train_state, read_weights, resolve_checkpoint
from cofre.training.loop import Trainer, train


def test_dt_doubles_every_round() -> None:
    cfg = DistillConfig(loss="reverse_kl", k=2, start_steps=1024, round_steps=10_000)
    assert [cfg.dt(r) for r in range(7)] == [2**r / 1024 for r in range(7)]
    assert [round(1 / (cfg.k * cfg.dt(r))) for r in range(7)] == [512, 256, 128, 64, 32, 16, 8]  # the student's steps
    assert cfg.rounds(70_000) == 7 and cfg.rounds(70_001) == 8


def test_too_many_rounds_is_an_error() -> None:
    values = {"distill": {"loss": "reverse_kl", "start_steps": 8, "round_steps": 10}, "trainer": {"max_steps": 30}}
    assert recipe_from_dict(values).distill.rounds(30) == 3  # 8 -> 4 -> 2 -> 1 student steps
    values["trainer"]["max_steps"] = 31
    with pytest.raises(CofreError, match="leave the student under one step"):
        recipe_from_dict(values)
    with pytest.raises(CofreError, match="consistency.loss must be 'none'"):
        recipe_from_dict({"distill": {"loss": "tv"}, "consistency": {"loss": "hidden_mse"}})


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, tiny_recipe_text: str) -> Path:
    """A tiny FP-MDLM trained 3 steps (its EMA differs from its raw weights)."""
    root = tmp_path_factory.mktemp("distill")
    (root / "tiny.yaml").write_text(tiny_recipe_text)
    recipe = load_recipe(root / "tiny.yaml", ["trainer.max_steps=3"])
    train(recipe, root / "parent")
    return resolve_checkpoint(root / "parent")


def stage(parent: Path, **trainer: int) -> Recipe:
    values = recipe_to_dict(checkpoint_recipe(parent))
    values.update(name="sdtt", init_from=str(parent))
    values["distill"] = {"loss": "reverse_kl", "k": 2, "start_steps": 8, "round_steps": 2, "teacher_iters": 2}
    values["consistency"] = {"continue_optimizer": False}
    values["optim"].update(lr=1e-2, warmup_steps=0, schedule="constant")
    values["trainer"].update({"log_every": 1, "val_every": 100, "ckpt_every": 100, "keep_last": 5, **trainer})
    return recipe_from_dict(values)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_teacher_takes_the_students_raw_weights_exactly_at_the_boundary(parent: Path, tmp_path: Path) -> None:
    trainer = Trainer(stage(parent, max_steps=6), tmp_path / "run")
    try:
        distill = trainer.distill
        assert distill is not None
        start = weights(trainer.unwrapped)
        assert same(start, read_weights(parent / EMA_FILE))  # the student starts from the parent's EMA weights
        assert same(weights(distill.teacher), start)
        assert trainer.ema is not None and trainer.ema.num_updates == 0  # the EMA restarts at the start weights
        assert all(torch.equal(v, start[k]) and not v.requires_grad for k, v in trainer.ema.shadow.items())
        assert (distill.round, distill.dt) == (0, 1 / 8)
        trainer.train_step()
        trainer.train_step()  # steps 0 and 1: round 0, the teacher is the parent
        assert same(weights(distill.teacher), start) and not same(weights(trainer.unwrapped), start)
        before_boundary = weights(trainer.unwrapped)
        optimizer = trainer.optimizer
        trainer.train_step()  # step 2 opens round 1: the teacher is the student as it was after step 1
        assert (distill.round, distill.dt) == (1, 2 / 8)
        assert same(weights(distill.teacher), before_boundary)
        assert trainer.optimizer is optimizer  # kept: the moments went on (a reset AdamW would count 1 step)
        assert {int(s["step"]) for s in trainer.optimizer.state.values()} == {3}
        assert trainer.scheduler.get_last_lr()[0] == pytest.approx(1e-2)
        assert not any(p.requires_grad for p in distill.teacher.parameters())
        assert all(p.grad is None for p in distill.teacher.parameters())  # no gradient reached the teacher
        assert same(weights(distill.teacher), before_boundary)  # and the optimiser step left it alone
        trainer.train_step()
        assert distill.round == 1 and same(weights(distill.teacher), before_boundary)
    finally:
        trainer.run.unlock()


def test_student_gets_gradients_and_the_teacher_none(parent: Path, tmp_path: Path) -> None:
    trainer = Trainer(stage(parent, max_steps=2), tmp_path / "run")
    try:
        assert trainer.distill is not None
        with torch.no_grad():  # a student that differs from its teacher, so that the divergence is clearly positive
            for p in trainer.unwrapped.output_layer.parameters():
                p.add_(0.1 * torch.randn_like(p))
        x = trainer.corpus.train[:2].long()
        batch = trainer.task.noise(x, generator=torch.Generator().manual_seed(0))
        positions = batch.masked.nonzero(as_tuple=True)
        out = trainer.model(batch.z, batch.sigma, n_nograd=1, n_grad=1, positions=positions)
        loss = trainer.distill(out.logits, batch, torch.Generator().manual_seed(1))
        assert loss.item() > 0
        loss.backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.unwrapped.parameters())
        assert all(p.grad is None for p in trainer.distill.teacher.parameters())
    finally:
        trainer.run.unlock()


@pytest.mark.parametrize("grid", ["paper", "reference"])
def test_the_teacher_runs_at_the_times_of_distill_teacher_grid(parent: Path, tmp_path: Path, grid: str) -> None:
    """paper: the teacher's first step is at t; reference: at SDTT's code's t + (1 - t)(t - k dt), clamped at 1e-5."""
    recipe = stage(parent, max_steps=2)
    recipe.distill.teacher_grid = grid
    trainer = Trainer(recipe, tmp_path / "run")
    try:
        distill = trainer.distill
        assert distill is not None
        times: list[torch.Tensor] = []
        teacher = distill._teacher_logits
        distill._teacher_logits = lambda z, t, positions: (times.append(t.clone()), teacher(z, t, positions))[1]  # type: ignore[method-assign]
        x = trainer.corpus.train[:4].long()
        batch = trainer.task.noise(x, generator=torch.Generator().manual_seed(0))
        out = trainer.model(batch.z, batch.sigma, n_nograd=1, n_grad=0, positions=batch.masked.nonzero(as_tuple=True))
        distill(out.logits, batch, torch.Generator().manual_seed(1))
        t, dt = batch.t.double(), distill.dt
        first = t if grid == "paper" else (t + (1 - t) * (t - 2 * dt)).clamp_min(1e-5)
        assert torch.allclose(times[0].double(), first, atol=1e-6)
    finally:
        trainer.run.unlock()


def test_an_unknown_teacher_grid_is_refused() -> None:
    with pytest.raises(CofreError, match="teacher_grid"):
        recipe_from_dict({"distill": {"loss": "reverse_kl", "teacher_grid": "evenly"}})


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow
def test_resume_in_the_middle_of_a_round_restores_round_and_teacher(parent: Path, tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    train(stage(parent, max_steps=5, ckpt_every=3), reference)
    stopped = tmp_path / "stopped"
    train(stage(parent, max_steps=3, ckpt_every=3), stopped)  # stops at step 3, inside round 1 (steps 2, 3)
    resumed = Trainer(stage(parent, max_steps=5, ckpt_every=3), stopped)
    try:
        assert resumed.step == 3 and resumed.distill is not None and resumed.distill.round == 1
        saved = load_train_state(reference / "checkpoints" / "step-000000003", "teacher")
        assert saved["round"] == 1
        assert same(weights(resumed.distill.teacher), saved["weights"])  # round 1's teacher, not the parent
        assert not same(saved["weights"], read_weights(parent / EMA_FILE))
        assert not same(weights(resumed.distill.teacher), weights(resumed.unwrapped))
        resumed.fit()
    finally:
        resumed.run.unlock()
    expected, got = losses(reference), losses(stopped)
    assert set(got) == set(expected) == {1, 2, 3, 4, 5}
    for step in (4, 5):
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step

    teacher_file = stopped / "checkpoints" / "step-000000005" / "train_state" / "teacher.pt"
    torch.save({"round": 2, "weights": {"vocab_embed.weight": torch.zeros(2, 2)}}, teacher_file)
    with pytest.raises(CofreError, match="teacher.pt: not this run's SDTT teacher"):
        Trainer(stage(parent, max_steps=6, ckpt_every=3), stopped)


@pytest.mark.slow
def test_distill_command_on_an_fp_mdlm_parent(parent: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    run = tmp_path / "sdtt"
    result = subprocess.run([sys.executable, "-m", "cofre", "distill", str(parent), "trainer.max_steps=2",
                             "distill.round_steps=1", "distill.start_steps=8", "trainer.val_every=2", "trainer.log_every=1",
                             "--run-dir", str(run)], cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"initialised from {parent}" in " ".join(result.stdout.split())
    recipe = load_recipe(run / "recipe.yaml")
    assert recipe.init_from == str(parent) and recipe.distill.loss == "reverse_kl"  # the parent and the method recorded
    assert not recipe.consistency.enabled and not recipe.consistency.continue_optimizer
    logged = [r for r in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [(r["step"], r["round"], r["dt"]) for r in logged] == [(1, 0, 1 / 8), (2, 1, 2 / 8)]
    assert all(abs(r["loss"]) < 1e3 for r in logged)  # finite (a 3-step parent barely depends on context: ~0)
    assert (resolve_checkpoint(run) / "train_state" / "teacher.pt").is_file()
