"""`cofre evaluate --checkpoints` and `--top-p` rows (Tables 24, 12) and `cofre stage-plot` (Fig. 12) on random runs."""

import json
from pathlib import Path

import pytest
import torch
from rich.console import Console

from cofre.config import ModelConfig, Recipe
from cofre.errors import CofreError
from cofre.evaluation.checkpoints import checkpoint_step, expand_checkpoints
from cofre.evaluation.evaluate import EvalSettings, evaluate_runs
from cofre.evaluation.report import results_table
from cofre.evaluation.stage_plot import stage_report, stage_table
from cofre.models import Denoiser
from cofre.sampling.mdlm import MDLMSampler
from cofre.training.checkpoint import publish_checkpoint, staging_dir, write_checkpoint_files


def random_stage(root: Path, steps: list[int], parent: Path | None = None) -> Path:
    """A random FP model (1/1/1 blocks, 16 tokens) published at each step, other weights at each: samples in ms."""
    recipe = Recipe(name=root.name, init_from=str(parent / "checkpoints" / "step-000000005") if parent else "")
    recipe.model = ModelConfig(hidden=16, heads=2, cond_dim=8, dropout=0.0, max_seq_len=16, K_pre=1, K_fp=1, K_post=1)
    recipe.data.seq_len = 16
    recipe.consistency.select_ppl_increase = 0.15
    model = Denoiser(recipe.model)
    for step in steps:
        torch.manual_seed(step)
        with torch.no_grad():  # away from the zero-initialised output: samples depend on the weights
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        write_checkpoint_files(staging_dir(root / "checkpoints", step), model, None, recipe, {"progress": {"step": step}})
        publish_checkpoint(root / "checkpoints", step, keep_last=0)
    return root


def settings(judge: Path, **changes: object) -> EvalSettings:
    values: dict = dict(budgets=[6], reuse=["3sr"], metrics=["genppl", "entropy"], judge=str(judge), num_samples=2,
                        batch_size=2, device="cpu")
    return EvalSettings(**{**values, **changes})


def test_checkpoint_names_and_missing_checkpoints(tmp_path: Path) -> None:
    assert [checkpoint_step(n) for n in ("step-000000080", "step-80", "80", " 1000000")] == [80, 80, 80, 1000000]
    with pytest.raises(CofreError, match="--checkpoints takes step numbers"):
        checkpoint_step("best")
    run = random_stage(tmp_path / "run", [10, 20])
    folders = expand_checkpoints([run], ["20", "step-000000010"])
    assert [f.name for f in folders] == ["step-000000020", "step-000000010"]
    assert expand_checkpoints([folders[0]], ["10"]) == [folders[0]]  # a checkpoint folder stays as given
    assert expand_checkpoints([run], []) == [run]
    with pytest.raises(CofreError, match="no checkpoint at step 30; it keeps step-000000010, step-000000020"):
        expand_checkpoints([run], ["10", "30"])


def test_evaluate_checkpoints_and_top_p_rows(tmp_path: Path, tiny_gpt2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = random_stage(tmp_path / "run", [10, 20])
    draws: list[float] = []
    original = MDLMSampler.sample

    def counting(self: MDLMSampler, batch_size: int, generator: torch.Generator, start=None):  # type: ignore[no-untyped-def]
        draws.append(self.cfg.top_p)
        return original(self, batch_size, generator, start)

    monkeypatch.setattr(MDLMSampler, "sample", counting)
    chosen = settings(tiny_gpt2_dir, checkpoints=["10", "step-000000020"], top_p=[1.0, 0.9])
    summary = evaluate_runs([run], chosen, tmp_path / "report", Console(record=True, width=200))
    # one row per checkpoint x nucleus mass, each cell naming the weights it was drawn from
    assert [c.label for c in summary.cells] == ["run@10 3sr", "run@10 3sr top-p 0.9", "run@20 3sr", "run@20 3sr top-p 0.9"]
    assert [c.checkpoint["step"] for c in summary.cells] == [10, 10, 20, 20]
    assert len({c.checkpoint["sha256"] for c in summary.cells}) == 2 and all(len(c.checkpoint["sha256"]) == 64
                                                                             for c in summary.cells)
    assert sorted(draws) == [0.9, 0.9, 1.0, 1.0]
    record = json.loads(Path(summary.cells[1].path).read_text())
    assert record["sample_settings"]["top_p"] == 0.9 and record["checkpoint"]["path"].endswith("step-000000010")
    text = Console(record=True, width=200)
    text.print(results_table(summary))
    assert "run@20 3sr top-p 0.9" in text.export_text()
    # the same command again reads every cell's samples back
    draws.clear()
    again = evaluate_runs([run], chosen, tmp_path / "report", Console(record=True, width=200))
    assert draws == [] and [c.metrics for c in again.cells] == [c.metrics for c in summary.cells]


def test_stage_report_thresholds_the_val_ppl(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    parent = random_stage(tmp_path / "parent", [5])
    run = random_stage(tmp_path / "stage", [10, 20], parent=parent)
    validations = [{"step": 0, "val_ppl": 100.0, "pre_consistency": True}, {"step": 10, "val_ppl": 110.0},
                   {"step": 20, "val_ppl": 120.0}, {"step": 30, "val_ppl": 105.0}]
    (run / "train_result.json").write_text(json.dumps({"validations": validations, "pre_consistency_ppl": 100.0,
                                                       "selected_step": 20}))
    report = stage_report(run, settings(tiny_gpt2_dir, reuse=["none"], budgets=[6, 9]), tmp_path / "report",
                          Console(record=True, width=200))
    assert [p.step for p in report.points] == [0, 10, 20]  # the parent is the stage's step 0
    assert report.points[0].checkpoint["path"].endswith("parent/checkpoints/step-000000005")
    assert [p.val_ppl for p in report.points] == [100.0, 110.0, 120.0]
    assert report.threshold_ppl == pytest.approx(115.0) and report.first_crossing == 20  # 100 x 1.15; 120 > 115
    assert all(set(p.cells) == {6, 9} for p in report.points)
    assert Path(report.plot_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(Path(report.summary_path).read_text())["first_crossing"] == 20
    text = Console(record=True, width=200)
    text.print(stage_table(report))
    rendered = text.export_text()
    assert "+20.0% > threshold" in rendered and "+10.0%" in rendered and "0 (start)" in rendered


def test_stage_report_needs_a_consistency_stage(tmp_path: Path, tiny_gpt2_dir: Path) -> None:
    run = random_stage(tmp_path / "plain", [10])
    with pytest.raises(CofreError, match="has no train_result.json"):
        stage_report(run, settings(tiny_gpt2_dir), tmp_path / "report")
    (run / "train_result.json").write_text(json.dumps({"validations": [], "pre_consistency_ppl": None}))
    with pytest.raises(CofreError, match="is not a consistency stage"):
        stage_report(run, settings(tiny_gpt2_dir), tmp_path / "report")


def test_stage_plot_command_errors_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "cofre", "stage-plot", str(tmp_path), "--report-dir",
                             str(tmp_path / "report")], cwd=Path(__file__).parents[2], capture_output=True, text=True)
    assert result.returncode == 2 and "has no train_result.json" in result.stderr and "Traceback" not in result.stderr
