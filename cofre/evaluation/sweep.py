"""`cofre sweep`: Gen. PPL and entropy of one run over a grid of sampler settings (App. F.9, F.10, C.2).

Three grids: denoising steps x fixed-point iterations per step (Fig. 13), iteration schedules x reuse x
budgets (Table 22, Fig. 14), and 3SR coefficient ranges x budgets (Tables 4-5). Every cell is one
`SampleSettings`; its samples go to `<run>/samples/<tag>.jsonl` and its scores to `<run>/eval/<tag>.json`,
exactly as `cofre evaluate` writes them, so a cell either command has already drawn or scored with
identical settings, weights and judge is read back, never drawn again. An interrupted sweep keeps every
finished cell; running the same command again does only the missing ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cofre.checks import MAX_BUDGET, check_range
from cofre.config import MAX_ITERS, ModelConfig
from cofre.errors import CofreError
from cofre.evaluation.evaluate import EvalSettings, JudgedSampling, check_settings, score_cell
from cofre.evaluation.judge import check_judge
from cofre.precision import resolve_device, resolve_precision
from cofre.runs import CELL_REMEDY, atomic_write_text, code_version, read_json_file
from cofre.sampling.budget import SCHEDULES, plan_budget
from cofre.sampling.generate import SampleSettings, open_checkpoint, sample_checkpoint, sample_tag
from cofre.sampling.reuse import REUSE_POLICIES

SWEEP_KINDS = ("allocation", "schedules", "gamma")
SWEEP_METRICS = ["genppl", "entropy"]
MAX_CELLS = 10_000  # cells of one sweep: a typo in a list should not plan years of sampling
Range = tuple[float, float]


@dataclass
class SweepSettings(JudgedSampling):
    """Which grid to sweep and how each cell is sampled and judged."""

    kind: str  # allocation (Fig. 13), schedules (Table 22), gamma (Tables 4-5)
    steps: list[int] = field(default_factory=list)  # allocation: denoising steps (heatmap rows)
    iters: list[int] = field(default_factory=list)  # allocation: fixed-point iterations per step (columns)
    schedules: list[str] = field(default_factory=list)  # schedules: iteration schedules compared
    gamma_mask: list[Range] = field(default_factory=list)  # gamma: [min, max] of gamma_mask, interpolated with v_t
    gamma_changed: list[Range] = field(default_factory=list)  # gamma: [min, max] of gamma_changed
    budgets: list[int] = field(default_factory=list)  # schedules and gamma; allocation derives budget from the cell
    reuse: list[str] = field(default_factory=list)


@dataclass
class SweepCell:
    """One grid position, the settings its samples were drawn with, and its scores."""

    coords: dict[str, Any]  # e.g. {"reuse": "3sr", "steps": 8, "iters": 2}
    budget: int
    metrics: dict[str, Any]
    samples: str
    path: str
    drawn: bool  # samples drawn by this invocation (False: read back from an earlier one)
    scored: bool  # scored by this invocation (False: scores read back)


@dataclass
class SweepSummary:
    run: str
    kind: str
    cells: list[SweepCell]
    settings: dict[str, Any]
    judge: str
    code: str
    standings: list[dict[str, Any]] = field(default_factory=list)  # schedules: Table 22, per reuse policy and overall
    summary_path: str = ""
    plot_path: str = ""


def parse_range(text: str, option: str) -> Range:
    """'a:b' is the range [a, b]; 'a' alone the constant a."""
    try:
        parts = [float(x) for x in text.split(":")]
    except ValueError:
        raise CofreError(f"{option} takes comma-separated numbers or min:max ranges, got '{text}'") from None
    if len(parts) not in (1, 2):
        raise CofreError(f"{option} takes comma-separated numbers or min:max ranges, got '{text}'")
    low, high = parts[0], parts[-1]
    check_range(option, low, 0.0, 1.0)
    check_range(option, high, 0.0, 1.0)
    if low > high:
        raise CofreError(f"{option} range {text} has min > max")
    return low, high


def default_reuse(kind: str) -> list[str]:
    """Fig. 13 is CoFRe with 3SR; Table 22 compares all three policies; Tables 4-5 tune 3SR's coefficients."""
    return ["none", "full", "3sr"] if kind == "schedules" else ["3sr"]


def check_sweep(settings: SweepSettings) -> None:
    """Each grid complete and in range, before a checkpoint is read."""
    if settings.kind not in SWEEP_KINDS:
        raise CofreError(f"unknown sweep '{settings.kind}'; choose from {', '.join(SWEEP_KINDS)}")
    check_settings(eval_settings(settings))
    bad = [r for r in settings.reuse if r not in REUSE_POLICIES]
    if bad:
        raise CofreError(f"unknown reuse policy {', '.join(bad)}; choose from {', '.join(REUSE_POLICIES)}")
    if settings.kind == "allocation":
        if not settings.steps or not settings.iters:
            raise CofreError("the steps x iterations sweep needs both --steps and --iters")
        if settings.budgets:
            raise CofreError("--budget does not apply to --steps/--iters: each cell's budget is steps x its block cost")
        for value in settings.steps:
            check_range("--steps values", value, 1, MAX_BUDGET)  # a step costs at least one block
        for value in settings.iters:
            check_range("--iters values", value, 1, MAX_ITERS)
    else:
        if not settings.budgets:
            raise CofreError("give at least one --budget")
        for budget in settings.budgets:
            check_range("--budget values", budget, 1, MAX_BUDGET)
    if settings.kind == "schedules":
        unknown = [s for s in settings.schedules if s not in SCHEDULES]
        if unknown:
            raise CofreError(f"unknown schedule {', '.join(unknown)}; choose from {', '.join(SCHEDULES)}")
        if len(settings.schedules) < 2:
            raise CofreError("--schedules needs at least two schedules to compare")
    if settings.kind == "gamma":
        if not settings.gamma_mask or not settings.gamma_changed:
            raise CofreError("the 3SR coefficient sweep needs both --gamma-mask and --gamma-changed")
        if settings.reuse != ["3sr"]:
            raise CofreError("--gamma-mask/--gamma-changed sweep 3SR's coefficients: --reuse must be 3sr")
    lists = {"allocation": (settings.reuse, settings.steps, settings.iters),
             "schedules": (settings.reuse, settings.budgets, settings.schedules),
             "gamma": (settings.gamma_mask, settings.gamma_changed, settings.budgets)}[settings.kind]
    check_range("the sweep's cells (the product of its lists' lengths)", math.prod(map(len, lists)), 1, MAX_CELLS)


def eval_settings(settings: SweepSettings) -> EvalSettings:
    """The scoring half of the settings, in the form `cofre evaluate` scores a cell with."""
    return EvalSettings(budgets=settings.budgets or [1], reuse=settings.reuse or ["3sr"], metrics=list(SWEEP_METRICS),
                        judge=settings.judge, genppl_mode=settings.genppl_mode, num_samples=settings.num_samples,
                        batch_size=settings.batch_size, seed=settings.seed, top_p=[settings.top_p], ema=settings.ema,
                        device=settings.device, precision=settings.precision)


def grid(settings: SweepSettings, model: ModelConfig, precision: str) -> list[tuple[dict[str, Any], SampleSettings]]:
    """Every cell of the sweep as (coordinates, sampler settings), in the order they are drawn."""
    common = dict(num_samples=settings.num_samples, batch_size=settings.batch_size, seed=settings.seed,
                  top_p=settings.top_p, ema=settings.ema, device=settings.device, precision=precision)
    cells: list[tuple[dict[str, Any], SampleSettings]] = []
    if settings.kind == "allocation":  # N iterations at every step: budget = S (K_pre + N K_fp + K_post)
        for reuse in settings.reuse:
            for steps in settings.steps:
                for iters in settings.iters:
                    budget = steps * (model.K_pre + iters * model.K_fp + model.K_post)
                    check_range(f"--steps {steps} x --iters {iters}: the blocks per sample", budget, 1, MAX_BUDGET)
                    cells.append(({"reuse": reuse, "steps": steps, "iters": iters},
                                  SampleSettings(budget=budget, steps=steps, schedule="fixed", reuse=reuse, **common)))
    elif settings.kind == "schedules":  # the default step rule depends on the budget only: schedules share steps
        for reuse in settings.reuse:
            for budget in settings.budgets:
                for schedule in settings.schedules:
                    cells.append(({"reuse": reuse, "budget": budget, "schedule": schedule},
                                  SampleSettings(budget=budget, schedule=schedule, reuse=reuse, **common)))
    else:  # Tables 4-5: the fixed schedule, gamma ranges interpolated with the visible fraction v_t
        for mask in settings.gamma_mask:
            for changed in settings.gamma_changed:
                for budget in settings.budgets:
                    cells.append(({"gamma_mask": list(mask), "gamma_changed": list(changed), "budget": budget},
                                  SampleSettings(budget=budget, schedule="fixed", reuse="3sr", gamma_mask_min=mask[0],
                                                 gamma_mask_max=mask[1], gamma_changed_min=changed[0],
                                                 gamma_changed_max=changed[1], **common)))
    for _, sample_settings in cells:  # an unreachable budget fails before anything is drawn
        plan_budget(model, sample_settings.budget, sample_settings.steps, sample_settings.schedule)
    return cells


def stored_scores(path: Path, sample_settings: SampleSettings, sha256: str, settings: SweepSettings) -> dict[str, Any] | None:
    """A cell's scores from an earlier sweep or `cofre evaluate`, when settings, weights, judge and mode all match."""
    if not path.is_file():
        return None
    record = read_json_file(path, "cell record", CELL_REMEDY, {"metrics": dict, "checkpoint": dict})
    metrics = record["metrics"]
    same = (record.get("sample_settings") == dataclasses.asdict(sample_settings)
            and record.get("checkpoint", {}).get("sha256") == sha256 and record.get("judge") == settings.judge
            and all(isinstance(metrics.get(m), dict) for m in SWEEP_METRICS)
            and metrics["genppl"].get("mode") == settings.genppl_mode)
    return metrics if same else None


def run_sweep(run: Path, settings: SweepSettings, report_dir: Path, console: Console | None = None) -> SweepSummary:
    """Draw and score every missing cell under one progress bar; write the summary JSON and the plot."""
    from cofre.evaluation.sweep_report import plot_sweep, schedule_standings

    check_sweep(settings)
    console = console or Console()
    ckpt = open_checkpoint(run, ema=settings.ema, device=settings.device)
    if not ckpt.model.cfg.is_fixed_point:
        raise CofreError(f"{run} is a plain model: sweeps over iterations, schedules and reuse need a fixed-point model")
    precision = resolve_precision(settings.precision, ckpt.device)
    planned = grid(settings, ckpt.model.cfg, precision)
    check_judge(settings.judge)  # resolved before any cell is drawn, though loaded only when one needs scoring
    scoring = eval_settings(settings)
    code = code_version()
    judge = None
    cells: list[SweepCell] = []
    progress = Progress(TextColumn("[bold]sweep[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    try:
        with progress:
            bar = progress.add_task("", total=len(planned))
            for coords, sample_settings in planned:
                progress.update(bar, description=" ".join(f"{k}={v}" for k, v in coords.items()))
                tag = sample_tag(sample_settings, ckpt.identity)
                path = ckpt.run_root / "eval" / f"{tag}.json"
                samples = ckpt.run_root / "samples" / f"{tag}.jsonl"
                metrics = stored_scores(path, sample_settings, ckpt.identity["sha256"], settings)
                drawn = scored = metrics is None  # a scored cell is read back whole, samples included
                if metrics is None:
                    drawn = not samples.exists()  # samples drawn earlier (e.g. by `cofre evaluate`) are read back
                    result = sample_checkpoint(ckpt, sample_settings, if_exists="reuse", show_progress=False)
                    if judge is None:  # loaded only when some cell needs scoring
                        from cofre.evaluation.judge import load_judge

                        judge = load_judge(settings.judge, resolve_device(settings.device))
                    metrics = score_cell(ckpt, sample_settings, result.texts, result.ids, scoring, judge, None)
                    atomic_write_text(path, json.dumps({
                        "run": str(run), "sweep": settings.kind, "coords": coords, "reuse": sample_settings.reuse,
                        "budget": sample_settings.budget, "blocks_spent": result.blocks_spent, "steps": result.steps,
                        "iterations": result.iterations, "metrics": metrics, "judge": settings.judge,
                        "precision": precision, "seed": settings.seed, "num_samples": result.num_samples,
                        "samples": result.out, "sample_settings": dataclasses.asdict(sample_settings),
                        "checkpoint": ckpt.identity, "code": code, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    }, indent=2))
                cells.append(SweepCell(coords=coords, budget=sample_settings.budget, metrics=metrics, samples=str(samples),
                                       path=str(path), drawn=drawn, scored=scored))
                progress.advance(bar)
    except KeyboardInterrupt:
        console.print(f"interrupted after {len(cells)} of {len(planned)} cells; they are kept, and the same command "
                      "resumes with the missing ones")
        raise
    summary = SweepSummary(run=str(run), kind=settings.kind, cells=cells, settings=dataclasses.asdict(settings),
                           judge=settings.judge, code=code)
    if settings.kind == "schedules":
        summary.standings = schedule_standings(cells, settings.reuse)
    key = hashlib.sha1(json.dumps([str(run), summary.settings], sort_keys=True).encode()).hexdigest()[:8]
    summary.summary_path = str(report_dir / f"sweep-{settings.kind}-{key}.json")
    summary.plot_path = str(report_dir / f"sweep-{settings.kind}-{key}.png")
    plot_sweep(summary, Path(summary.plot_path))
    atomic_write_text(Path(summary.summary_path), json.dumps(dataclasses.asdict(summary), indent=2))
    return summary

