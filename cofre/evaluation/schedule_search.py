"""`cofre schedule-search`: exhaustive search over coarse step segments for model scheduling (Sedykh et al., arXiv
2604.02340): the S steps are cut into equal segments, and every placement of k light segments among them is sampled
and scored by Gen. PPL and entropy with the chosen judge, then ranked; each segment made light alone (the others
heavy) gives the Gen. PPL increase that segment costs against the heavy model over every step.

Each cell is one scheduled `SampleSettings`: its samples go to `<heavy run>/samples/<tag>.jsonl` and its scores to
`<heavy run>/eval/<tag>.json`, as `cofre evaluate` writes them; a cell scored before with identical settings,
weights (both models), judge and mode is read back, so an interrupted search resumes with the missing cells.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cofre.checks import MAX_BUDGET, MAX_COUNT, check_range
from cofre.errors import CofreError
from cofre.evaluation.evaluate import EvalSettings, JudgedSampling, check_settings, score_cell
from cofre.evaluation.judge import check_judge
from cofre.evaluation.plotting import pyplot, save_figure
from cofre.precision import resolve_device, resolve_precision
from cofre.runs import CELL_REMEDY, atomic_write_text, code_version, read_json_file
from cofre.sampling.generate import (
    LoadedCheckpoint,
    SampleSettings,
    open_checkpoint,
    sample_checkpoint,
    sample_tag,
    scheduled_identity,
    with_schedule,
)
from cofre.sampling.model_schedule import (HEAVY, LIGHT, Segment, check_compatible, parse_model_schedule, schedule_cost,
                                           schedule_text)

SEARCH_METRICS = ["genppl", "entropy"]
MAX_PLACEMENTS = 1000  # a typo (--segments 40 --light-segments 20) should not start a week of sampling


@dataclass
class SearchSettings(JudgedSampling):
    steps: int
    segments: int = 8
    light_segments: int = 2
    reuse: str = "3sr"  # the FP models' warm start (plain models: none)


@dataclass
class SearchCell:
    """One schedule, its cost and its scores."""

    schedule: str
    light_segments: list[int]  # 1-based segments run by the light model
    budget: int
    saving: float  # of blocks, against the heavy model over every step
    flop_saving: float  # of forward FLOPs (both models' shapes, the FP mix included), against the same
    genppl: float
    entropy: float
    increase: float  # Gen. PPL minus the heavy model's alone
    path: str
    drawn: bool  # samples drawn by this invocation (False: read back)
    scored: bool


@dataclass
class SearchSummary:
    heavy: str
    light: str
    settings: dict[str, Any]
    judge: str
    code: str
    baseline: SearchCell  # the heavy model at every step
    singles: list[SearchCell]  # segment i light alone, i = 1 .. segments
    ranking: list[SearchCell]  # every placement of the light segments, best Gen. PPL first
    summary_path: str = ""
    plot_path: str = ""
    segment_t: list[list[float]] = field(default_factory=list)  # [t at the segment's first step, t after its last]


def check_search(settings: SearchSettings) -> None:
    """Segments that divide the steps, a placement count in reach, and the scoring settings, before anything loads."""
    check_range("--steps", settings.steps, 1, MAX_BUDGET)
    check_range("--segments", settings.segments, 1, settings.steps)
    check_range("--light-segments", settings.light_segments, 1, settings.segments)
    if settings.steps % settings.segments:
        raise CofreError(f"--steps {settings.steps} does not divide into {settings.segments} equal segments; use a "
                         f"multiple of {settings.segments}")
    placements = math.comb(settings.segments, settings.light_segments)
    if placements > MAX_PLACEMENTS:
        raise CofreError(f"{settings.segments} segments choose {settings.light_segments} is {placements} placements, "
                         f"more than {MAX_PLACEMENTS}; use fewer segments")
    check_settings(eval_settings(settings))
    check_range("--num-samples", settings.num_samples, 1, MAX_COUNT)


def eval_settings(settings: SearchSettings) -> EvalSettings:
    """The scoring half, in the form `cofre evaluate` scores a cell with."""
    return EvalSettings(budgets=[1], reuse=[settings.reuse], metrics=list(SEARCH_METRICS), judge=settings.judge,
                        genppl_mode=settings.genppl_mode, num_samples=settings.num_samples,
                        batch_size=settings.batch_size, seed=settings.seed, top_p=[settings.top_p], ema=settings.ema,
                        device=settings.device, precision=settings.precision)


def segment_schedule(light: tuple[int, ...], segments: int, steps: int) -> str:
    """The schedule with the 0-based segments in `light` run by the light model, e.g. (0, 7) of 8 over 16: L2,H12,L2."""
    size = steps // segments
    parts: list[Segment] = []
    for i in range(segments):
        model = LIGHT if i in light else HEAVY
        if parts and parts[-1].model == model:
            parts[-1] = Segment(model, parts[-1].steps + size)
        else:
            parts.append(Segment(model, size))
    return schedule_text(parts)


def stored_metrics(path: Path, sample_settings: SampleSettings, identity: dict[str, Any],
                   settings: SearchSettings) -> dict[str, Any] | None:
    """A cell's scores from an earlier search or `cofre evaluate`, when settings, both weights, judge and mode match."""
    if not path.is_file():
        return None
    record = read_json_file(path, "cell record", CELL_REMEDY, {"metrics": dict, "checkpoint": dict})
    metrics, checkpoint = record["metrics"], record["checkpoint"]
    same = (record.get("sample_settings") == dataclasses.asdict(sample_settings)
            and checkpoint.get("sha256") == identity["sha256"]
            and isinstance(checkpoint.get("light"), dict) and checkpoint["light"].get("sha256") == identity["light"]["sha256"]
            and record.get("judge") == settings.judge and all(isinstance(metrics.get(m), dict) for m in SEARCH_METRICS)
            and metrics["genppl"].get("mode") == settings.genppl_mode)
    return metrics if same else None


def run_search(heavy_run: Path, light_run: Path, settings: SearchSettings, report_dir: Path,
               console: Console | None = None) -> SearchSummary:
    """Sample and score the heavy model alone, each segment light alone, and every placement; rank; write JSON + PNG."""
    check_search(settings)
    console = console or Console()
    heavy = open_checkpoint(heavy_run, ema=settings.ema, device=settings.device)
    light = open_checkpoint(light_run, ema=settings.ema, device=settings.device)
    check_compatible(heavy.recipe, light.recipe, str(heavy.folder), str(light.folder))
    check_judge(settings.judge)  # resolved before any cell is drawn, though loaded only when one needs scoring
    fixed_point = heavy.model.cfg.is_fixed_point or light.model.cfg.is_fixed_point
    precision = resolve_precision(settings.precision, heavy.device)
    n, k, steps = settings.segments, settings.light_segments, settings.steps
    placements = list(itertools.combinations(range(n), k))
    planned = [()] + [(i,) for i in range(n)] + placements
    schedules = {light_set: segment_schedule(light_set, n, steps) for light_set in planned}
    identity = scheduled_identity(heavy, light)
    scoring = eval_settings(settings)
    state: dict[str, Any] = {"judge": None, "code": code_version()}
    scored: dict[tuple[int, ...], dict[str, Any]] = {}
    progress = Progress(TextColumn("[bold]search[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=console)
    try:
        with progress:
            bar = progress.add_task("", total=len(dict.fromkeys(schedules.values())))
            done: dict[str, dict[str, Any]] = {}
            for light_set in planned:
                text = schedules[light_set]
                if text not in done:
                    progress.update(bar, description=text)
                    reuse = settings.reuse if fixed_point else "none"  # reuse needs a fixed-point solve
                    done[text] = _cell(heavy, light, text, settings, reuse, precision, scoring, state)
                    progress.advance(bar)
                scored[light_set] = done[text]
    except KeyboardInterrupt:
        console.print("interrupted; the cells scored so far are kept, and the same command resumes with the missing ones")
        raise
    base = scored[()]["genppl"]

    def cell(light_set: tuple[int, ...]) -> SearchCell:
        c = scored[light_set]
        return SearchCell(schedule=schedules[light_set], light_segments=[i + 1 for i in light_set], budget=c["budget"],
                          saving=c["saving"], flop_saving=c["flop_saving"], genppl=c["genppl"], entropy=c["entropy"], increase=c["genppl"] - base,
                          path=c["path"], drawn=c["drawn"], scored=c["scored"])

    ranking = sorted((cell(p) for p in placements), key=lambda c: (c.genppl, c.light_segments))
    summary = SearchSummary(heavy=str(heavy.folder), light=str(light.folder), settings=dataclasses.asdict(settings),
                            judge=settings.judge, code=state["code"], baseline=cell(()),
                            singles=[cell((i,)) for i in range(n)], ranking=ranking,
                            segment_t=[[1 - i / n, 1 - (i + 1) / n] for i in range(n)])
    key = hashlib.sha1(json.dumps([identity["sha256"], identity["light"]["sha256"], summary.settings],
                                  sort_keys=True).encode()).hexdigest()[:8]
    summary.summary_path = str(report_dir / f"schedule-search-{key}.json")
    summary.plot_path = str(report_dir / f"schedule-search-{key}.png")
    plot_search(summary, Path(summary.plot_path), heavy.run_root.name, light.run_root.name)
    atomic_write_text(Path(summary.summary_path), json.dumps(dataclasses.asdict(summary), indent=2))
    return summary


def _cell(heavy: LoadedCheckpoint, light: LoadedCheckpoint, schedule: str, settings: SearchSettings, reuse: str,
          precision: str, scoring: EvalSettings, state: dict[str, Any]) -> dict[str, Any]:
    """One schedule's scores: read back when stored, else sampled (or samples read back) and judged, then stored."""
    sample_settings = with_schedule(heavy, light, SampleSettings(
        budget=None, steps=settings.steps, reuse=reuse, num_samples=settings.num_samples,
        batch_size=settings.batch_size, seed=settings.seed, top_p=settings.top_p, ema=settings.ema,
        device=settings.device, precision=precision, light=str(light.folder), model_schedule=schedule))
    identity = scheduled_identity(heavy, light)
    tag = sample_tag(sample_settings, identity)
    path = heavy.run_root / "eval" / f"{tag}.json"
    samples = heavy.run_root / "samples" / f"{tag}.jsonl"
    metrics = stored_metrics(path, sample_settings, identity, settings)
    drawn = scored = metrics is None
    if metrics is None:
        drawn = not samples.exists()
        result = sample_checkpoint(heavy, sample_settings, if_exists="reuse", show_progress=False, light=light)
        if state["judge"] is None:  # loaded only when some cell needs scoring
            from cofre.evaluation.judge import load_judge

            state["judge"] = load_judge(settings.judge, resolve_device(settings.device))
        metrics = score_cell(heavy, sample_settings, result.texts, result.ids, scoring, state["judge"], None, light)
        atomic_write_text(path, json.dumps({
            "run": str(heavy.folder), "search": "model schedule", "schedule": schedule, "reuse": reuse,
            "budget": result.budget, "blocks_spent": result.blocks_spent, "steps": result.steps,
            "model_schedule": result.model_schedule, "metrics": metrics, "judge": settings.judge,
            "precision": precision, "seed": settings.seed, "num_samples": result.num_samples, "samples": result.out,
            "sample_settings": dataclasses.asdict(sample_settings), "checkpoint": identity, "code": state["code"],
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }, indent=2))
    record = read_json_file(path, "cell record", CELL_REMEDY, {"budget": int})
    cost = schedule_cost(parse_model_schedule(schedule), heavy.recipe, light.recipe, heavy.recipe.data.seq_len)
    return {"budget": record["budget"], "saving": cost.saving, "flop_saving": cost.flop_saving,
            "genppl": metrics["genppl"]["value"], "entropy": metrics["entropy"]["value"], "path": str(path),
            "drawn": drawn, "scored": scored}


def plot_search(summary: SearchSummary, path: Path, heavy: str, light: str) -> None:
    """Left: a bar per segment, the Gen. PPL increase when only that segment is light; right: every placement of
    the light segments, ranked."""
    plt = pyplot()

    s = summary.settings
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1, 1.3]})
    labels = [f"{i + 1}\nt {a:.2f}-{b:.2f}" for i, (a, b) in enumerate(summary.segment_t)]
    increases = [c.increase for c in summary.singles]
    left.bar(range(len(increases)), increases, color=["tab:red" if v > 0 else "tab:green" for v in increases])
    left.set_xticks(range(len(labels)), labels, fontsize=7)
    left.axhline(0, color="0.3", linewidth=0.8)
    left.set_xlabel("segment made light (the others heavy); sampling runs left to right")
    left.set_ylabel(f"Gen. PPL increase vs heavy alone ({summary.baseline.genppl:.1f})")
    left.set_title("one light segment at a time", fontsize=9)
    ranked = summary.ranking
    right.barh(range(len(ranked)), [c.genppl for c in ranked], color="tab:blue")
    right.set_yticks(range(len(ranked)), ["light " + ",".join(map(str, c.light_segments)) for c in ranked],
                     fontsize=max(4, 8 - len(ranked) // 10))
    right.invert_yaxis()  # the best placement on top
    right.axvline(summary.baseline.genppl, color="0.3", linestyle="--", linewidth=0.8, label="heavy alone")
    low = min([c.genppl for c in ranked] + [summary.baseline.genppl])
    high = max([c.genppl for c in ranked] + [summary.baseline.genppl])
    right.set_xlim(low - 0.1 * (high - low + 1), high + 0.05 * (high - low + 1))
    right.set_xlabel(f"Gen. PPL ({summary.judge}), lower is better")
    right.set_title(f"{s['light_segments']} light of {s['segments']} segments, ranked "
                    f"(saving {100 * ranked[0].saving:.1f}% of blocks, {100 * ranked[0].flop_saving:.1f}% of FLOPs)",
                    fontsize=9)
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(True, axis="y" if ax is left else "x", alpha=0.3)
    fig.suptitle(f"schedule search: {heavy} (heavy) / {light} (light), {s['steps']} steps, {s['num_samples']} samples "
                 f"per cell, seed {s['seed']}", fontsize=10)
    save_figure(fig, path)
