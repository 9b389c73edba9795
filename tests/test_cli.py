"""The command line: paper-scale model summaries, and one-line errors that leave runs untouched."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def cofre(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "cofre", *args], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("recipe, expected, tolerance",
                         [("owt-mdlm", 170e6, 0.01), ("owt-fp-mdlm", 104e6, 0.01), ("owt", 104e6, 0.01)])
def test_inspect_matches_table_7(recipe: str, expected: float, tolerance: float) -> None:
    result = cofre("inspect", f"recipes/{recipe}.yaml", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert abs(summary["total_params"] - expected) / expected < tolerance
    assert summary["total_params"] == sum(summary["params_by_part"].values())


def test_inspect_block_cost() -> None:
    summary = json.loads(cofre("inspect", "recipes/owt-fp-mdlm.yaml", "--json", "--iters", "6").stdout)
    assert (summary["K_pre"], summary["K_fp"], summary["K_post"], summary["blocks_per_step"]) == (1, 1, 1, 8)


@pytest.mark.parametrize("recipe, encoder_params", [("tiny-vq", 0), ("tiny-vq-conv", None)])
def test_inspect_summarises_an_image_tokenizer(recipe: str, encoder_params: int | None) -> None:
    summary = json.loads(cofre("inspect", f"recipes/{recipe}.yaml", "--json").stdout)
    assert summary["kind"] == "vq" and summary["grid"] == [7, 7]
    assert summary["params_by_part"]["quantizer"] == 512 * 16  # the EMA codebook
    assert summary["total_params"] == sum(summary["params_by_part"].values())
    if encoder_params is not None:  # the patch tokenizer has no network: its codes are pixel patches
        assert summary["params_by_part"]["encoder"] == summary["params_by_part"]["decoder"] == encoder_params
    else:
        assert summary["params_by_part"]["encoder"] > 0


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and fragment in lines[0], result.stderr


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("model: {hidden: 64\n", "YAML syntax error"),
        ("model: {hiden: 64}\n", "did you mean 'hidden'"),
        ("model: {hidden: wide}\n", "expected int"),
        ("data: {corpus: /no/such/corpus.jsonl}\n", "/no/such/corpus.jsonl"),
    ],
)
def test_bad_recipes_fail_cleanly_and_touch_nothing(tmp_path: Path, text: str, fragment: str) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    run = tmp_path / "run"
    assert_one_line_error(cofre("train", str(tmp_path / "bad.yaml"), "--run-dir", str(run)), fragment)
    assert not (run / "checkpoints").exists()


def test_missing_recipe_file(tmp_path: Path) -> None:
    assert_one_line_error(cofre("train", str(tmp_path / "nope.yaml")), "recipe file not found")


def test_existing_run_with_other_recipe_is_not_overwritten(tmp_path: Path, tiny_recipe: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text(tiny_recipe.read_text().replace("hidden: 32", "hidden: 64"))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    before = {p: p.read_bytes() for p in run.iterdir()}
    assert_one_line_error(cofre("train", str(tiny_recipe), "--run-dir", str(run)), "holds a different recipe")
    assert {p: p.read_bytes() for p in run.iterdir()} == before


def test_non_run_directory_is_refused(tmp_path: Path, tiny_recipe: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    assert_one_line_error(cofre("train", str(tiny_recipe), "--run-dir", str(tmp_path)), "holds no recipe.yaml")
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_every_option_has_help() -> None:
    for command in ("train", "inspect"):
        result = cofre(command, "--help")
        assert result.returncode == 0
        assert "--help" in result.stdout


def test_evaluate_without_runs_needs_a_trained_run(tmp_path: Path) -> None:
    (tmp_path / "runs" / "reports").mkdir(parents=True)  # reports and empty folders are not runs
    for name, kind in (("tiny-vq", "vq"), ("classifier", "classifier")):  # nor tokenizers and feature extractors
        (tmp_path / "runs" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / name / "checkpoints" / "latest").write_text("step-000000001\n")
        (tmp_path / "runs" / name / "recipe.yaml").write_text(f"name: {name}\nkind: {kind}\n")
    env_root = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "cofre", "evaluate", "--budget", "96", "--metrics", "valppl"],
                            cwd=tmp_path, capture_output=True, text=True, env=env_root)
    assert_one_line_error(result, "no run under runs/ holds a checkpoint")


def test_recipe_base_lays_a_variant_over_its_base(tmp_path: Path) -> None:
    from cofre.config import load_recipe

    (tmp_path / "main.yaml").write_text("name: main\nmodel: {hidden: 64, heads: 4}\noptim: {lr: 2.0e-4}\n")
    (tmp_path / "variant.yaml").write_text("base: main.yaml\nmodel: {heads: 8}\n")
    variant = load_recipe(tmp_path / "variant.yaml")
    assert (variant.name, variant.model.hidden, variant.model.heads, variant.optim.lr) == ("variant", 64, 8, 2e-4)
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    assert_one_line_error(cofre("inspect", str(tmp_path / "loop.yaml")), "makes a cycle of recipes")
    (tmp_path / "orphan.yaml").write_text("base: missing.yaml\n")
    assert_one_line_error(cofre("inspect", str(tmp_path / "orphan.yaml")), "base recipe not found")
