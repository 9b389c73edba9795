"""Post-training stages killed and resumed, run twice at once, or pointed at a folder they cannot write: SDTT's
distill killed mid-round resumes to the uninterrupted result; a second writer is refused while the first runs; a
read-only run directory is one error line."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from processes import start_and_kill_after_checkpoint

from cofre.config import load_recipe
from cofre.training.loop import train

ROOT = Path(__file__).parents[2]
DISTILL = ["distill.start_steps=32", "trainer.log_every=1", "trainer.val_every=10000", "trainer.ckpt_every=2",
           "trainer.keep_last=10"]


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory, tiny_recipe_text: str) -> Path:
    root = tmp_path_factory.mktemp("stage-kill")
    (root / "tiny.yaml").write_text(tiny_recipe_text)
    train(load_recipe(root / "tiny.yaml", ["trainer.max_steps=3"]), root / "parent")
    return root / "parent"


def distill(parent: Path, run: Path, steps: int, round_steps: int = 4) -> list[str]:
    """A distill of at most 3 rounds from 32 steps (a longer one would leave the student under one step)."""
    return [sys.executable, "-m", "cofre", "distill", str(parent), f"trainer.max_steps={steps}",
            f"distill.round_steps={round_steps}", *DISTILL, "--run-dir", str(run)]


def losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


@pytest.mark.slow
def test_distill_killed_mid_round_resumes_to_the_uninterrupted_losses(parent: Path, tmp_path: Path) -> None:
    final = 12  # three rounds of 4 steps; checkpoints every 2, so a kill lands inside a round
    reference = tmp_path / "reference"
    subprocess.run(distill(parent, reference, final), check=True, capture_output=True, cwd=ROOT)
    killed = tmp_path / "killed"
    resumed_from = start_and_kill_after_checkpoint(distill(parent, killed, final), killed)
    assert 2 <= resumed_from < final
    result = subprocess.run(distill(parent, killed, final), capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resumed at step {resumed_from}" in result.stdout
    expected, got = losses(reference), losses(killed)
    assert set(got) == set(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-6), step


@pytest.mark.slow
def test_a_second_distill_into_the_same_run_is_refused_while_the_first_runs(parent: Path, tmp_path: Path) -> None:
    run = tmp_path / "sdtt"
    long = distill(parent, run, 3000, round_steps=1000)  # minutes: still running when the second starts
    first = subprocess.Popen(long, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 180
        while not (run / "metrics.jsonl").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.01)
        before = (run / "recipe.yaml").read_bytes()
        second = subprocess.run(long, capture_output=True, text=True, cwd=ROOT)
        assert first.poll() is None, "the first distill must still be running"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert second.returncode == 2 and second.stderr.startswith("error: ") and len(second.stderr.splitlines()) == 1
    assert "another" in second.stderr or "lock" in second.stderr
    assert (run / "recipe.yaml").read_bytes() == before


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_run_directory_is_one_error(parent: Path, tmp_path: Path) -> None:
    run = tmp_path / "sdtt"
    run.mkdir()
    run.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        result = subprocess.run(distill(parent, run, 4), capture_output=True, text=True, cwd=ROOT)
    finally:
        run.chmod(stat.S_IRWXU)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and len(result.stderr.splitlines()) == 1
    assert not any(run.iterdir())
