"""`make check-launches` (tests/launches.py) and `--dry-run`: a recipe or documented command that would fail at launch
fails the check; the README's multi-process CPU line trains and resumes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launches import launched_commands, run_checks

ROOT = Path(__file__).resolve().parents[1]

WHOLE = """\
name: {name}
model: {{hidden: 32, heads: 4, cond_dim: 16, dropout: 0.0, max_seq_len: 32, K_pre: 1, K_fp: 1, K_post: 1}}
data: {{corpus: wiki-sample, seq_len: 32}}
trainer: {{global_batch_size: {batch}, micro_batch_size: 4}}
"""


def repo(tmp_path: Path, batch: int = 16, makefile: str = "", readme: str = "") -> Path:
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "small.yaml").write_text(WHOLE.format(name="small", batch=batch))
    (tmp_path / "recipes" / "small-cofre.yaml").write_text("name: small-cofre\nconsistency: {weight: 0.1}\n")
    (tmp_path / "Makefile").write_text(makefile or "stage:\n\tcofre consistency runs/small --recipe recipes/small-cofre.yaml\n")
    (tmp_path / "README.md").write_text(readme)
    return tmp_path


def failures(root: Path) -> list[str]:
    return [f"{c.source}: {c.error}" for c in run_checks(root) if c.error]


def test_every_recipe_and_documented_launch_resolves_in_a_good_repo(tmp_path: Path) -> None:
    root = repo(tmp_path, readme="```bash\nACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m cofre "
                                  "train recipes/small.yaml\n```\n")
    checks = run_checks(root)
    assert not [c for c in checks if c.error]
    assert {(c.source, c.processes) for c in checks} >= {("recipes/small.yaml", 8), ("Makefile: stage", 1),
                                                          ("README.md:2", 2)}
    assert not (root / "runs").exists()  # nothing written


def test_a_global_batch_that_eight_processes_cannot_share_fails_the_check(tmp_path: Path) -> None:
    assert any("cannot be split evenly over 8 processes" in f for f in failures(repo(tmp_path, batch=12)))


def test_a_documented_launch_of_a_stage_before_its_parent_exists_resolves_through_the_planned_parent(tmp_path: Path) -> None:
    root = repo(tmp_path, makefile="t:\n\tcofre consistency runs/nothing --recipe recipes/small-cofre.yaml\n")
    assert any("runs/nothing: no such run" in f for f in failures(root))


def test_an_unused_stage_recipe_and_a_silent_one_process_cpu_launch_fail(tmp_path: Path) -> None:
    root = repo(tmp_path, makefile="t:\n\taccelerate launch --cpu --num_processes 2 -m cofre train recipes/small.yaml\n")
    found = failures(root)
    assert any("small-cofre.yaml" in f and "no README or Makefile command uses" in f for f in found)
    assert any("runs one process whatever --num_processes says" in f for f in found)


def test_shell_forms_of_the_makefile_are_expanded() -> None:
    line = "for k in 1 2; do .venv/bin/accelerate launch --multi_gpu --num_processes 8 -m cofre train r.yaml name=x-$k || exit 1; done"
    assert [(argv, n) for argv, n, _ in launched_commands(line)] == [
        (["train", "r.yaml", "name=x-1"], 8), (["train", "r.yaml", "name=x-2"], 8)]
    assert launched_commands("test -d runs/a || COLUMNS=160 .venv/bin/cofre distill runs/b --recipe s.yaml")[0][0] == \
        ["distill", "runs/b", "--recipe", "s.yaml"]
    assert launched_commands(".venv/bin/cofre evaluate runs/a --budget 96") == []  # evaluation starts no run


def cofre(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "cofre", *args], cwd=cwd, capture_output=True, text=True, env=env)


def test_dry_run_prints_the_layout_and_writes_nothing(tmp_path: Path) -> None:
    result = cofre("train", str(ROOT / "recipes" / "imagenette-maskgit-large.yaml"), "--dry-run", "--num-processes", "8",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "global batch 128 = 8 processes x 1 micro-batch of 16" in result.stdout
    assert "478,643,201 parameters" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_train_refuses_a_stage_recipe_and_names_the_command(tmp_path: Path) -> None:
    result = cofre("train", str(ROOT / "recipes" / "tiny-cofre.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and "cofre consistency RUN --recipe" in result.stderr
    assert list(tmp_path.iterdir()) == []


LAUNCH = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "-m", "cofre", "train",
          "recipes/tiny-fp-mdlm.yaml"]  # the README's two-process CPU line


def launch(overrides: list[str], run_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", *LAUNCH[2:]]
    return subprocess.run([*accelerate, *overrides, "--run-dir", str(run_dir)], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.mark.slow
def test_readme_two_process_cpu_line_trains_and_resumes(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    assert "ACCELERATE_USE_CPU=1 " + " ".join(LAUNCH) in readme  # the line the README documents
    short = ["trainer.val_every=2", "trainer.ckpt_every=2", "trainer.val_batches=2"]
    first = launch(["trainer.max_steps=2", *short], tmp_path / "run")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "global batch 16 = 2 processes x 1 micro-batch of 8" in first.stdout
    second = launch(["trainer.max_steps=4", *short], tmp_path / "run")
    assert second.returncode == 0, second.stderr[-2000:]
    result = json.loads((tmp_path / "run" / "train_result.json").read_text())
    assert (result["start_step"], result["final_step"]) == (2, 4)
    assert result["batch_layout"] == {"global_batch": 16, "processes": 2, "per_process": 8, "micro_batch": 8,
                                      "accumulation": 1}


@pytest.mark.slow
def test_a_batch_two_processes_cannot_share_is_one_line_from_the_main_process(tmp_path: Path) -> None:
    result = launch(["trainer.global_batch_size=15"], tmp_path / "run")
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: trainer.global_batch_size 15 cannot be split evenly over 2 processes; use a multiple of 2 "
                     "(or another process count)"]  # once, from rank 0 (the launcher then reports the exit)
