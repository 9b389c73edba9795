"""A run killed with SIGKILL after a checkpoint resumes there and reproduces the uninterrupted losses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from processes import start_and_kill_after_checkpoint

from cofre.training.checkpoint import load_train_state

ROOT = Path(__file__).parents[2]


def train_cmd(recipe: Path, run: Path, max_steps: int) -> list[str]:
    overrides = [f"trainer.max_steps={max_steps}", "trainer.ckpt_every=4", "trainer.val_every=4", "trainer.keep_last=5"]
    return [sys.executable, "-m", "cofre", "train", str(recipe), *overrides, "--run-dir", str(run)]


def metrics(run: Path) -> dict[tuple[int, str], float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], key): r[key] for r in records for key in ("loss", "val_nll") if key in r}


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted(tmp_path: Path, tiny_recipe: Path) -> None:
    env = {**os.environ}
    final = 16
    reference = tmp_path / "reference"
    subprocess.run(train_cmd(tiny_recipe, reference, final), check=True, capture_output=True, env=env, cwd=ROOT)

    killed = tmp_path / "killed"
    resumed_from = start_and_kill_after_checkpoint(train_cmd(tiny_recipe, killed, 10_000), killed, env)
    assert 4 <= resumed_from < final, "the kill must land after a checkpoint and before the end"

    result = subprocess.run(train_cmd(tiny_recipe, killed, final), capture_output=True, text=True, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert f"resumed at step {resumed_from}" in result.stdout
    record = json.loads((killed / "train_result.json").read_text())  # the killed call wrote none; its checkpoint counts
    progress = load_train_state(killed / "checkpoints" / f"step-{resumed_from:09d}", "progress")
    assert record["train_time_complete"] and record["train_time_s"] > progress["train_time_s"] > 0

    expected, got = metrics(reference), metrics(killed)
    assert set(got) == set(expected)  # records logged after the checkpoint by the killed run were dropped
    later = [key for key in expected if key[0] > resumed_from]
    assert later
    for key in later:
        assert got[key] == pytest.approx(expected[key], rel=1e-6), key


@pytest.mark.slow
def test_train_into_a_log_file_writes_a_line_per_interval_while_it_runs(tmp_path: Path, tiny_recipe: Path) -> None:
    """Under nohup or a batch scheduler (stdout not a terminal) the trainer prints plain lines as it goes."""
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "cofre", "train", str(tiny_recipe), "trainer.max_steps=40",
                                 "trainer.val_every=20", "trainer.ckpt_every=20", "--run-dir", str(tmp_path / "run")],
                                stdout=out, stderr=subprocess.STDOUT, cwd=root)
        deadline = time.time() + 300
        while "step 1/40" not in log.read_text() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        running = proc.poll() is None
        proc.wait(timeout=300)
    lines = [line for line in log.read_text().splitlines() if line.startswith("train tiny-test step")]
    assert running, "the first interval's line came only at the end"
    assert [line.split()[3] for line in lines if "loss" in line] == [f"{s}/40" for s in range(1, 41)]
    assert any("val ppl" in line and "residual" in line for line in lines)  # an FP run's validation, its residual
