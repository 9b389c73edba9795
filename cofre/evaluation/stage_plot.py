"""`cofre stage-plot`: a consistency stage checkpoint by checkpoint (App. F.7, Fig. 12).

Every checkpoint the stage kept, and the parent checkpoint it started from (stage step 0), is evaluated
with `cofre evaluate`'s cell loop (samples with identical settings are read back), giving Gen. PPL and
entropy per checkpoint and budget. Beside them, the validation perplexity the trainer recorded during the
stage (`train_result.json`, EMA weights) against F.7's threshold: the stage's starting value x (1 + 15%).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from cofre.errors import CofreError
from cofre.evaluation.checkpoints import checkpoint_step
from cofre.evaluation.evaluate import EvalSettings, evaluate_runs
from cofre.evaluation.plotting import pyplot, save_figure
from cofre.runs import atomic_write_text, of_type, read_json_file
from cofre.training.checkpoint import CONFIG_FILE, checkpoint_recipe

PAPER_INCREASE = 0.15  # App. F.7: the first checkpoint whose val PPL exceeds the pre-L_CONS value by 15%


@dataclass
class StagePoint:
    """One evaluated checkpoint of the stage."""

    step: int  # steps into the stage; 0 is the parent checkpoint the stage started from
    checkpoint: dict[str, Any]  # path, training step, weights file, sha256
    cells: dict[int, dict[str, Any]]  # budget -> metrics (Gen. PPL, entropy)
    val_ppl: float | None  # the trainer's validation at this step, when it validated there


@dataclass
class StageReport:
    run: str
    reuse: str
    judge: str
    points: list[StagePoint]
    validations: list[dict[str, Any]]  # every validation of the stage: step, val_ppl, ...
    pre_consistency_ppl: float
    increase: float  # the threshold is pre_consistency_ppl x (1 + increase)
    threshold_ppl: float
    first_crossing: int | None  # the first validated step above the threshold (F.7's selection)
    selected_step: int | None  # the checkpoint the trainer marked selected
    eval_summary: str
    summary_path: str = ""
    plot_path: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def read_stage(run: Path) -> tuple[dict[str, Any], float]:
    """The stage's train_result.json and its threshold increase (the recipe's, else the paper's 15%)."""
    result_file = run / "train_result.json"
    if not result_file.is_file():
        raise CofreError(f"{run} has no train_result.json; give a consistency stage's run directory "
                         "(cofre consistency writes it)")
    remedy = "train the stage again (cofre consistency) or restore the file"
    result = read_json_file(result_file, "training summary", remedy, {"validations": list})
    if not all(isinstance(v, dict) and of_type(v.get("step"), int) and of_type(v.get("val_ppl"), (int, float))
               for v in result["validations"]):
        raise CofreError(f"{result_file}: its validations are not records of step and val_ppl; {remedy}")
    if result.get("pre_consistency_ppl") is None:
        raise CofreError(f"{run} is not a consistency stage: its train_result.json records no pre-consistency "
                         "validation perplexity")
    if not of_type(result["pre_consistency_ppl"], (int, float)):
        raise CofreError(f"{result_file}: its pre_consistency_ppl is not a number; {remedy}")
    increase = checkpoint_recipe(run).consistency.select_ppl_increase
    return result, increase if increase > 0 else PAPER_INCREASE


def stage_checkpoints(run: Path, console: Console) -> list[tuple[int, Path]]:
    """(stage step, folder) for the parent checkpoint (step 0) and every checkpoint the stage kept."""
    folders = sorted(p for p in (run / "checkpoints").glob("step-*") if (p / CONFIG_FILE).is_file())
    if not folders:
        raise CofreError(f"{run} keeps no checkpoints")
    points = [(checkpoint_step(p.name), p) for p in folders]
    parent = checkpoint_recipe(run).init_from
    if parent and (Path(parent) / CONFIG_FILE).is_file():
        points.insert(0, (0, Path(parent)))
    else:
        console.print(f"the stage's starting checkpoint {parent or '(none recorded)'} is not on disk; "
                      "step 0 has its val PPL only")
    if len(points) < 2:
        console.print(f"[yellow]{run} keeps one checkpoint: train the stage with trainer.keep_last=0 to keep them all[/]")
    return points


def stage_report(run: Path, settings: EvalSettings, report_dir: Path, console: Console | None = None) -> StageReport:
    """Evaluate the stage's checkpoints, compare its val PPL with the threshold, write JSON and the plot."""
    console = console or Console()
    if len(settings.reuse) != 1:
        raise CofreError("stage-plot compares checkpoints under one --reuse policy (the paper: none)")
    result, increase = read_stage(run)
    points = stage_checkpoints(run, console)
    summary = evaluate_runs([folder for _, folder in points], settings, report_dir, console)
    validations = result["validations"]
    pre = result["pre_consistency_ppl"]
    threshold = pre * (1 + increase)  # App. F.7's rule
    val_at = {v["step"]: v["val_ppl"] for v in validations}
    crossing = next((v["step"] for v in validations if not v.get("pre_consistency") and v["val_ppl"] > threshold), None)
    stage_points = []
    for step, folder in points:
        cells = {c.budget: c.metrics for c in summary.cells if Path(c.checkpoint["path"]) == folder}
        identity = next(c.checkpoint for c in summary.cells if Path(c.checkpoint["path"]) == folder)
        stage_points.append(StagePoint(step=step, checkpoint=identity, cells=cells, val_ppl=val_at.get(step)))
    report = StageReport(run=str(run), reuse=settings.reuse[0], judge=settings.judge, points=stage_points,
                         validations=validations, pre_consistency_ppl=pre, increase=increase, threshold_ppl=threshold,
                         first_crossing=crossing, selected_step=result.get("selected_step"),
                         eval_summary=summary.summary_path, settings=dataclasses.asdict(settings))
    report.summary_path = str(report_dir / f"stage-{run.name}.json")
    report.plot_path = str(report_dir / f"stage-{run.name}.png")
    plot_stage(report, Path(report.plot_path))
    atomic_write_text(Path(report.summary_path), json.dumps(dataclasses.asdict(report), indent=2))
    return report


def stage_table(report: StageReport) -> Table:
    """Rows: stage checkpoints; columns: Gen. PPL (entropy) per budget, then val PPL and its rise over the start."""
    budgets = sorted({b for p in report.points for b in p.cells})
    table = Table(title=f"{Path(report.run).name}: Gen. PPL (entropy) per checkpoint, reuse {report.reuse}, judge "
                        f"{report.judge}; val PPL threshold {report.pre_consistency_ppl:.2f} x {1 + report.increase:g} "
                        f"= {report.threshold_ppl:.2f} (App. F.7)")
    table.add_column("stage step", justify="right")
    for budget in budgets:
        table.add_column(str(budget), justify="right")
    table.add_column("val PPL", justify="right")
    table.add_column("vs start", justify="right")
    for p in report.points:
        cells = [f"{p.cells[b]['genppl']['value']:.1f} ({p.cells[b]['entropy']['value']:.2f})" if b in p.cells else ""
                 for b in budgets]
        if p.val_ppl is None:
            val, rise = "-", "-"
        else:
            val, rise = f"{p.val_ppl:.2f}", f"{100 * (p.val_ppl / report.pre_consistency_ppl - 1):+.1f}%"
            rise += " > threshold" if p.val_ppl > report.threshold_ppl else ""
        table.add_row(f"{p.step}{' (start)' if p.step == 0 else ''}", *cells, val, rise)
    return table


def plot_stage(report: StageReport, path: Path) -> None:
    """Left: Gen. PPL per checkpoint, one line per budget, entropy annotated. Right: val PPL and the threshold."""
    plt = pyplot()

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    budgets = sorted({b for p in report.points for b in p.cells})
    for k, budget in enumerate(budgets):
        series = [p for p in report.points if budget in p.cells]
        x = [p.step for p in series]
        y = [p.cells[budget]["genppl"]["value"] for p in series]
        (line,) = left.plot(x, y, marker="os^Dv"[k % 5], label=f"budget {budget}")
        for p, xi, yi in zip(series, x, y):
            left.annotate(f"({p.cells[budget]['entropy']['value']:.2f})", (xi, yi), textcoords="offset points",
                          xytext=(3, 5), fontsize=7, color=line.get_color())
    left.set_yscale("log")
    left.set_xlabel("consistency-stage step (0: the checkpoint it started from)")
    left.set_ylabel(f"Gen. PPL ({report.judge}), lower is better")
    left.set_title(f"Gen. PPL (entropy) per checkpoint; reuse {report.reuse}", fontsize=9)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=8)
    steps = [v["step"] for v in report.validations]
    right.plot(steps, [v["val_ppl"] for v in report.validations], marker="o", color="C0", label="val PPL (EMA)")
    right.axhline(report.pre_consistency_ppl, color="0.4", linestyle=":", label=f"start {report.pre_consistency_ppl:.2f}")
    right.axhline(report.threshold_ppl, color="C3", linestyle="--",
                  label=f"threshold +{100 * report.increase:g}% = {report.threshold_ppl:.2f}")
    if report.first_crossing is not None:
        right.axvline(report.first_crossing, color="C3", alpha=0.5, label=f"first crossing: step {report.first_crossing}")
    right.set_xlabel("consistency-stage step")
    right.set_ylabel("validation perplexity")
    right.set_title("val PPL over the stage and App. F.7's stopping threshold", fontsize=9)
    right.grid(True, alpha=0.3)
    right.legend(fontsize=8)
    n = report.settings["num_samples"]
    fig.suptitle(f"{Path(report.run).name}: consistency stage (Fig. 12); {n} samples per cell, seed "
                 f"{report.settings['seed']}", fontsize=10)
    save_figure(fig, path)
