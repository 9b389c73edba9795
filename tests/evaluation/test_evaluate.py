"""`cofre evaluate` end to end on tiny runs with a tiny local judge: JSON per cell, summary, table, plot."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def cofre(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cofre", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**__import__("os").environ, "COLUMNS": "200"})


@pytest.mark.slow
def test_evaluate_writes_cells_summary_table_and_plot(tmp_path: Path, tiny_recipe: Path, tiny_gpt2_dir: Path) -> None:
    fp, plain = tmp_path / "fp", tmp_path / "plain"
    assert cofre("train", str(tiny_recipe), "--run-dir", str(fp)).returncode == 0
    assert cofre("train", str(tiny_recipe), "model.K_pre=3", "model.K_fp=0", "model.K_post=0", "name=plain",
                 "--run-dir", str(plain)).returncode == 0
    report = tmp_path / "report"
    args = ["evaluate", str(plain), str(fp), "--budget", "24,48", "--reuse", "none,3sr", "--judge", str(tiny_gpt2_dir),
            "--num-samples", "4", "--batch-size", "2", "--metrics", "genppl,entropy,valppl,latency",
            "--latency-repeats", "1", "--val-batches", "2", "--report-dir", str(report)]
    result = cofre(*args)
    assert result.returncode == 0, result.stderr[-2000:]
    cells = sorted((fp / "eval").glob("*.json")) + sorted((plain / "eval").glob("*.json"))
    assert len(cells) == 2 * 2 + 2  # FP: 2 reuse x 2 budgets; plain: 2 budgets (reuse does not apply)
    cell = json.loads(cells[0].read_text())
    assert cell["judge"] == str(tiny_gpt2_dir) and cell["seed"] == 1 and cell["code"]
    assert cell["metrics"]["genppl"]["value"] > 1 and cell["metrics"]["entropy"]["value"] > 0
    assert cell["metrics"]["genppl"]["mode"] == "eq4" and "Gen. PPL [Eq. 4]" in result.stdout
    assert cell["metrics"]["latency"]["repeats"] == 1 and cell["blocks_spent"] == [cell["budget"]] * 2
    summary = json.loads(next(report.glob("summary-*.json")).read_text())
    # rows are named by run directory ("fp" holds the recipe tiny-test), so two runs of one recipe stay apart
    assert {c["label"] for c in summary["cells"]} == {"plain", "fp none", "fp 3sr"}
    assert set(summary["valppl"]) == {"plain", "fp"}
    png = next(report.glob("genppl-*.png"))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for fragment in ("fp 3sr", "plain", "24", "48", "val. PPL"):
        assert fragment in result.stdout
    # a second run reuses the samples (identical settings and weights) and gives identical numbers
    again = cofre(*args)
    assert again.returncode == 0
    assert json.loads(cells[0].read_text())["metrics"]["genppl"] == cell["metrics"]["genppl"]
    # --genppl-mode mdlm scores the same samples MDLM's way and says so in the cell and the table
    mdlm = cofre(*args, "--genppl-mode", "mdlm", "--metrics", "genppl")
    assert mdlm.returncode == 0, mdlm.stderr[-2000:]
    assert json.loads(cells[0].read_text())["metrics"]["genppl"]["mode"] == "mdlm"
    assert "Gen. PPL [MDLM's token-weighted]" in mdlm.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--metrics", "bleu"], "unknown metric(s) bleu"),
        (["--reuse", "none,most"], "unknown reuse policy most"),
        (["--budget", "96,x"], "--budget takes comma-separated integers"),
        (["--genppl-mode", "token"], "--genppl-mode must be eq4 or mdlm"),
        (["--budget", "0"], "--budget values must be in 1..1000000, got 0"),
        (["--precision", "fp8"], "--precision must be one of auto, fp32, bf16"),
        (["--top-p", "1,x"], "--top-p takes comma-separated numbers, got '1,x'"),
        (["--top-p", "1,1.5"], "--top-p must be in (0, 1], got 1.5"),
        (["--checkpoints", "80,best"], "--checkpoints takes step numbers or step-* folder names"),
        (["--checkpoints", "80", "--lm-eval", "cofre_local_mc"], "--lm-eval scores each run's selected or latest"),
    ],
)
def test_bad_evaluate_arguments_are_one_line_errors(tmp_path: Path, args: list[str], fragment: str) -> None:
    result = cofre("evaluate", str(tmp_path), *args)
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr


def test_a_mauve_table_names_its_features_and_plots_mauve_by_budget(tmp_path: Path) -> None:
    from rich.console import Console

    from cofre.evaluation.evaluate import Cell, EvalSummary
    from cofre.evaluation.report import plot_budget_curves, results_table

    def cell(run: str, budget: int, value: float) -> Cell:
        mauve = {"value": value, "judge": "gpt2-large", "num_p": 16, "num_q": 16, "settings": {}}
        return Cell(run=run, label=run, reuse="3sr", budget=budget, metrics={"mauve": mauve}, samples="", path="")

    summary = EvalSummary(cells=[cell("a", 96, 0.01), cell("a", 192, 0.02), cell("b", 96, 0.03), cell("b", 192, 0.05)],
                          valppl={}, settings={"num_samples": 16, "seed": 1}, judge="gpt2-large", code="test")
    console = Console(width=200, record=True)
    console.print(results_table(summary))
    text = " ".join(console.export_text().split())  # the title wraps to the table width
    assert "MAUVE" in text and "features of gpt2-large, 16 generated vs 16 held-out texts" in text and "M 0.050" in text
    plot_budget_curves(summary, tmp_path / "mauve.png", "mauve")
    assert (tmp_path / "mauve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _text_run(root: Path, name: str, ema: bool) -> Path:
    """A tiny plain text run written directly (no training), with EMA weights that differ from its raw ones."""
    import torch

    from cofre.config import recipe_from_dict
    from cofre.models import Denoiser
    from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files

    recipe = recipe_from_dict({"name": name, "model": {"vocab_size": 50257 + 1, "hidden": 32, "heads": 4,
                                                       "cond_dim": 16, "dropout": 0.0, "max_seq_len": 16, "K_pre": 2},
                               "data": {"corpus": "wiki-sample", "seq_len": 16}})
    torch.manual_seed(0)
    model = Denoiser(recipe.model)
    averaged = {k: v + 0.5 * torch.randn_like(v) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    write_checkpoint_files(staging_dir(root / name / "checkpoints", 1), model, averaged if ema else None, recipe,
                           {"progress": {"step": 1}})
    publish_checkpoint(root / name / "checkpoints", 1, 1)
    return root / name


def test_raw_weights_add_rows_of_their_own_labelled_by_weights(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    """Table 13's SDTT row with and without EMA: `--raw-weights RUN` evaluates RUN twice, its rows labelled (EMA) and
    (raw weights), each cell drawn from the weights it names; the other runs keep one row."""
    from rich.console import Console

    from cofre.errors import CofreError
    from cofre.evaluation.evaluate import EvalSettings, evaluate_runs

    sdtt, other = _text_run(tmp_path, "sdtt", ema=True), _text_run(tmp_path, "mdlm", ema=True)
    settings = EvalSettings(budgets=[4], reuse=["none"], metrics=["genppl", "entropy"], judge=str(tiny_gpt2_dir),
                            num_samples=2, batch_size=2, device="cpu", raw_weights=[str(sdtt)])
    summary = evaluate_runs([other, sdtt], settings, tmp_path / "report", Console(quiet=True))
    assert [c.label for c in summary.cells] == ["mdlm", "sdtt (EMA)", "sdtt (raw weights)"]
    assert [c.checkpoint["weights"] for c in summary.cells] == ["ema.safetensors", "ema.safetensors", "model.safetensors"]
    records = [json.loads(Path(c.path).read_text()) for c in summary.cells]
    assert [r["sample_settings"]["ema"] for r in records] == [True, True, False]
    assert summary.cells[1].samples != summary.cells[2].samples  # two draws, two sample files
    with pytest.raises(CofreError, match="not among the runs evaluated"):
        evaluate_runs([sdtt], EvalSettings(budgets=[4], raw_weights=[str(other)]), tmp_path / "r2")
    with pytest.raises(CofreError, match="with --no-ema every row is raw already"):
        evaluate_runs([sdtt], EvalSettings(budgets=[4], ema=False, raw_weights=[str(sdtt)]), tmp_path / "r3")
    plain = _text_run(tmp_path, "plain", ema=False)
    with pytest.raises(CofreError, match="has no EMA weights"):
        evaluate_runs([plain], EvalSettings(budgets=[4], raw_weights=[str(plain)]), tmp_path / "r4")
