"""The run directory cannot be corrupted: kills, a second writer, broken pointers, a full disk, NaN steps."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cofre.config import Recipe, load_recipe
from cofre.errors import CofreError
from cofre.runs import RunDir
from cofre.tasks.mdlm import MDLMTask
from cofre.training import checkpoint as checkpoint_module
from cofre.training.checkpoint import load_model
from cofre.training.loop import Trainer, train

ROOT = Path(__file__).parents[2]


def steps_logged(run: Path, key: str = "loss") -> list[int]:
    return [r["step"] for r in RunDir(run).read_metrics() if key in r and "skipped" not in r]


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture
def recipe(tiny_recipe: Path) -> Recipe:
    return load_recipe(tiny_recipe)


@pytest.fixture(scope="module")
def trained_to_3(tmp_path_factory: pytest.TempPathFactory, tiny_recipe_text: str) -> Path:
    """The tiny recipe's run, trained to its first checkpoint (step 3 of 6), once for the module."""
    path = tmp_path_factory.mktemp("recipe") / "tiny-test.yaml"
    path.write_text(tiny_recipe_text)
    run = tmp_path_factory.mktemp("trained") / "run"
    train(load_recipe(path, ["trainer.max_steps=3"]), run)
    return run


@pytest.fixture
def run3(tmp_path: Path, trained_to_3: Path) -> Path:
    """A copy of the run at step 3, to resume or damage."""
    shutil.copytree(trained_to_3, tmp_path / "run")
    return tmp_path / "run"


def test_killed_before_the_first_checkpoint_then_rerun_logs_each_step_once(
        tmp_path: Path, recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"

    class Killed(BaseException):
        pass

    def die(self: Trainer) -> Path:
        raise Killed  # the process dies where its first checkpoint would be written

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "save_checkpoint", die)
        with pytest.raises(Killed):
            train(recipe, run)
    assert steps_logged(run) == [1, 2, 3] and not (run / "checkpoints" / "latest").exists()
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 4, "lo')  # a write the kill cut short
    train(recipe, run)
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]
    assert steps_logged(run, "val_nll") == [3, 6]


def test_temporary_files_of_a_killed_run_are_removed_on_start(run3: Path, recipe: Recipe) -> None:
    run = run3
    stale = [run / ".metrics.jsonl.x1y2", run / "checkpoints" / ".latest.abc123", run / ".recipe.yaml.q"]
    for path in stale:
        path.write_text("partial")
    (run / "checkpoints" / ".tmp-step-000000009" / "train_state").mkdir(parents=True)
    train(recipe, run)
    assert not any(p.exists() for p in stale) and not (run / "checkpoints" / ".tmp-step-000000009").exists()
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_runs(tmp_path: Path, tiny_recipe: Path) -> None:
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "cofre", "train", str(tiny_recipe), "trainer.max_steps=100000", "trainer.ckpt_every=2",
         "--run-dir", str(run)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints" / "latest").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None, "the first writer must still be running"
        with pytest.raises(CofreError, match=rf"run directory {run} is in use by another process \(pid {first.pid}\)"):
            train(load_recipe(tiny_recipe, ["trainer.max_steps=100000", "trainer.ckpt_every=2"]), run)
    finally:
        first.send_signal(signal.SIGKILL)  # a crash: the lock goes with the process
        first.wait()
    latest = RunDir(run).latest_checkpoint()
    assert latest is not None
    step = int(latest.name.split("-")[1])
    result = train(load_recipe(tiny_recipe, [f"trainer.max_steps={step + 2}", "trainer.ckpt_every=2"]), run)
    assert result.start_step == step and result.final_step == step + 2
    assert len(steps_logged(run)) == len(set(steps_logged(run)))


def test_latest_naming_a_missing_folder_is_an_error_and_nothing_is_deleted(run3: Path, recipe: Recipe) -> None:
    run = run3
    (run / "checkpoints" / "latest").write_text("step-000000042\n")
    before = hashes(run)
    with pytest.raises(CofreError, match="names 'step-000000042', which is not a checkpoint folder"):
        train(recipe, run)
    with pytest.raises(CofreError, match="not a checkpoint folder"):
        load_model(run)
    assert hashes(run) == before


def test_a_failed_start_writes_nothing_and_the_corrected_command_runs(
        tmp_path: Path, recipe: Recipe, corpus_file: Path) -> None:
    run = tmp_path / "run"
    recipe.data.corpus = str(tmp_path / "missing.jsonl")
    with pytest.raises(CofreError, match="missing.jsonl"):
        train(recipe, run)
    assert not run.exists()  # no recipe.yaml, so the corrected command is not refused
    recipe.data.corpus = str(corpus_file)
    recipe.trainer.max_steps = 3
    assert train(recipe, run).final_step == 3


def inject_nan_at(monkeypatch: pytest.MonkeyPatch, bad_step: int, seen: dict[str, object]) -> None:
    """The MDLM loss is NaN on every micro-batch of step `bad_step` (1-based) and nowhere else."""
    taking = {"step": 0}
    original_step, original_loss = Trainer.train_step, MDLMTask.loss

    def train_step(self: Trainer) -> dict:
        taking["step"] = self.step + 1
        if taking["step"] == bad_step:
            seen["checkpoints"] = hashes(self.run.checkpoints)  # the checkpoints on disk when the step goes bad
        try:
            return original_step(self)
        finally:
            taking["step"] = 0

    def loss(self: MDLMTask, *args: object, **kwargs: object) -> torch.Tensor:
        value = original_loss(self, *args, **kwargs)
        return value * float("nan") if taking["step"] == bad_step else value

    monkeypatch.setattr(Trainer, "train_step", train_step)
    monkeypatch.setattr(MDLMTask, "loss", loss)


def test_nan_at_step_k_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    seen: dict[str, object] = {}
    with monkeypatch.context() as patch:
        inject_nan_at(patch, 5, seen)
        with pytest.raises(CofreError, match=r"non-finite loss and gradient at step 5: .*step-000000003 is kept"):
            train(recipe, run)
    assert hashes(run / "checkpoints") == seen["checkpoints"]  # intact: nothing after step 4 reached the disk
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000000003"
    assert max(steps_logged(run)) == 4
    model, _ = load_model(run)
    assert all(bool(torch.isfinite(p).all()) for p in model.state_dict().values())
    result = train(recipe, run)  # resumable: the same command continues from step 3
    assert (result.start_step, result.final_step) == (3, 6)
    assert steps_logged(run) == [1, 2, 3, 4, 5, 6]


def test_skip_nonfinite_skips_a_bounded_number_of_bad_steps(
        tmp_path: Path, recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    recipe.trainer.skip_nonfinite = 1
    with monkeypatch.context() as patch:
        inject_nan_at(patch, 2, {})
        result = train(recipe, run)
    assert result.final_step == 6
    skipped = [r for r in RunDir(run).read_metrics() if "skipped" in r]
    assert [(r["step"], r["skipped_steps"]) for r in skipped] == [(2, 1)]
    model, _ = load_model(run)
    assert all(bool(torch.isfinite(p).all()) for p in model.state_dict().values())
    assert torch.load(run / "checkpoints" / "step-000000006" / "train_state" / "progress.pt")["skipped_steps"] == 1


def test_a_full_disk_while_checkpointing_is_one_error_and_the_previous_checkpoint_stays(
        run3: Path, recipe: Recipe, monkeypatch: pytest.MonkeyPatch) -> None:
    run = run3
    before = hashes(run / "checkpoints")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(args[1]))  # what a full disk raises

    with monkeypatch.context() as patch:
        patch.setattr(checkpoint_module, "save_weights", full)
        with pytest.raises(CofreError, match=r"cannot write checkpoint .*No space left on device.*previous checkpoint is kept"):
            train(recipe, run)
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-000000003"
    assert {k: v for k, v in hashes(run / "checkpoints").items() if not k.startswith(".tmp-")} == before
    assert train(recipe, run).final_step == 6  # the next start removes the unfinished folder and resumes
    assert not list((run / "checkpoints").glob(".tmp-*"))
    assert json.loads((run / "checkpoints" / "step-000000006" / "config.json").read_text())["trainer"]["max_steps"] == 6
