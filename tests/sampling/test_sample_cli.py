"""`cofre sample` end to end on a freshly trained tiny run: output, exact budgets, seeds, errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def cofre(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cofre", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, tiny_recipe_text: str) -> Path:
    root = tmp_path_factory.mktemp("sample-cli")
    recipe = root / "tiny.yaml"
    recipe.write_text(tiny_recipe_text)
    result = cofre("train", str(recipe), "--run-dir", str(root / "run"))
    assert result.returncode == 0, result.stderr
    return root / "run"


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_sample_writes_samples_with_settings_and_exact_budget(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "a.jsonl"
    trace = tmp_path / "trace.jsonl"
    result = cofre("sample", str(trained_run), "--budget", "40", "--num-samples", "3", "--batch-size", "2",
                   "--gamma-changed-min", "0.1", "--gamma-changed-max", "0.3", "--out", str(out), "--trace", str(trace))
    assert result.returncode == 0, result.stderr
    rows = read(out)
    assert len(rows) == 3
    for row in rows:
        assert len(row["ids"]) == 32 and 50257 not in row["ids"]  # fully unmasked
        assert row["blocks_spent"] == 40 and sum(row["blocks_per_step"]) == 40
        assert row["settings"]["reuse"] == "3sr" and row["settings"]["schedule"] == "decreasing"
        assert (row["settings"]["gamma_changed_min"], row["settings"]["gamma_changed_max"]) == (0.1, 0.3)
        assert row["checkpoint"]["sha256"] and row["checkpoint"]["step"] == 6
        assert isinstance(row["text"], str)
    steps = read(trace)
    assert steps and all("residuals" in s and "solution_shift" in s for s in steps)
    assert "budget asked" in result.stdout and "40" in result.stdout


@pytest.mark.slow
def test_same_seed_same_samples(trained_run: Path, tmp_path: Path) -> None:
    ids = {}
    for name, seed in (("a", "7"), ("b", "7"), ("c", "8")):
        out = tmp_path / f"{name}.jsonl"
        assert cofre("sample", str(trained_run), "--budget", "24", "--seed", seed, "--num-samples", "2",
                     "--out", str(out)).returncode == 0
        ids[name] = [row["ids"] for row in read(out)]
    assert ids["a"] == ids["b"] and ids["a"] != ids["c"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--budget", "21", "--steps", "10"], "valid budgets are 30, 31, 32"),
        (["--budget", "24", "--reuse", "half"], "--reuse must be one of none, full, 3sr"),
        (["--budget", "24", "--schedule", "wavy"], "--schedule must be one of"),
        (["--budget", "24", "--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--budget", "24", "--length", "999"], "--length must be in 1..32"),
    ],
)
def test_bad_sampling_arguments(trained_run: Path, tmp_path: Path, args: list[str], fragment: str) -> None:
    result = cofre("sample", str(trained_run), *args, "--out", str(tmp_path / "x.jsonl"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert fragment in result.stderr
    assert not (tmp_path / "x.jsonl").exists()


@pytest.mark.slow
def test_existing_output_is_not_overwritten(trained_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "keep.jsonl"
    out.write_text("precious\n")
    result = cofre("sample", str(trained_run), "--budget", "24", "--out", str(out))
    assert result.returncode == 2 and "pass --overwrite" in result.stderr
    assert out.read_text() == "precious\n"


@pytest.mark.slow
def test_precision_and_compile_are_recorded(trained_run: Path, tmp_path: Path) -> None:
    """auto is fp32 on a CPU; bf16 autocast and compiled blocks run here too (slowly) and say so in the JSON."""
    runs = {
        "auto": ["--precision", "auto"],
        "bf16": ["--precision", "bf16"],
        "compiled": ["--precision", "fp32", "--compile"],
    }
    rows = {}
    for name, args in runs.items():
        out = tmp_path / f"{name}.jsonl"
        result = cofre("sample", str(trained_run), "--budget", "24", "--num-samples", "2", "--device", "cpu",
                       *args, "--out", str(out))
        assert result.returncode == 0, result.stderr
        rows[name] = read(out)
    assert [r["settings"]["precision"] for r in rows["auto"]] == ["fp32", "fp32"]
    assert [r["settings"]["precision"] for r in rows["bf16"]] == ["bf16", "bf16"]
    assert all(r["settings"]["compile"] for r in rows["compiled"])
    assert not any(r["settings"]["compile"] for r in rows["auto"] + rows["bf16"])
    for name in runs:
        assert all(len(r["ids"]) == 32 and 50257 not in r["ids"] and r["blocks_spent"] == 24 for r in rows[name])
    # the same seed in fp32, eager or compiled, draws the same tokens (float64 logits, same draws)
    assert [r["ids"] for r in rows["auto"]] == [r["ids"] for r in rows["compiled"]]


@pytest.mark.slow
def test_prefix_and_infill_from_the_command_line(trained_run: Path, tmp_path: Path) -> None:
    from cofre.data.tokenizer import BOS_ID, gpt2_tokenizer

    out = tmp_path / "prefix.jsonl"
    result = cofre("sample", str(trained_run), "--budget", "24", "--num-samples", "2", "--prefix", "The river",
                   "--temperature", "0.7", "--out", str(out))
    assert result.returncode == 0, result.stderr
    prompt = [BOS_ID, *gpt2_tokenizer().encode_ordinary("The river")]
    for row in read(out):
        assert row["ids"][: len(prompt)] == prompt and len(row["ids"]) == 32 and 50257 not in row["ids"]
        assert row["settings"]["prefix"] == "The river" and row["settings"]["temperature"] == 0.7
    out = tmp_path / "infill.jsonl"
    result = cofre("sample", str(trained_run), "--budget", "24", "--num-samples", "2", "--infill",
                   "A [mask] of [mask] water.", "--out", str(out))
    assert result.returncode == 0, result.stderr
    for row in read(out):
        assert row["text"].startswith("<|endoftext|>A") and row["text"].endswith(" water.")
        assert 50257 not in row["ids"] and row["settings"]["infill"] == "A [mask] of [mask] water."


@pytest.mark.slow
def test_outputs_into_folders_that_do_not_exist_yet(trained_run: Path, tmp_path: Path) -> None:
    """The samples file's and the trace's folders are made before anything is drawn."""
    out, trace = tmp_path / "new" / "a.jsonl", tmp_path / "other" / "deep" / "t.jsonl"
    result = cofre("sample", str(trained_run), "--budget", "12", "--num-samples", "1", "--out", str(out),
                   "--trace", str(trace))
    assert result.returncode == 0, result.stderr
    assert out.is_file() and trace.is_file() and not list(trace.parent.glob(".*tmp*"))
