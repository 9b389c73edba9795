"""`cofre evaluate`: sample each run at each budget and reuse policy, score the samples, write JSON.

One cell = (run, reuse, budget). Its samples are drawn (or read back when a file with identical settings
and weights exists), scored with the chosen metrics, and written to `<run>/eval/<tag>.json` with the judge,
budget, seed, settings and code version beside every number.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from cofre.checks import MAX_BUDGET, MAX_COUNT, MAX_SEED, check_range
from cofre.data.packing import load_corpus
from cofre.data.tokenizer import gpt2_tokenizer
from cofre.errors import CofreError
from cofre.evaluation.latency import measure_latency
from cofre.evaluation.valppl import validation_perplexity
from cofre.precision import resolve_device, resolve_precision
from cofre.runs import atomic_write_text, code_version
from cofre.sampling.budget import SCHEDULES
from cofre.sampling.reuse import REUSE_POLICIES
from cofre.sampling.generate import (
    LoadedCheckpoint,
    SampleSettings,
    build_sampler,
    open_checkpoint,
    sample_checkpoint,
    sample_tag,
    scheduled_identity,
    with_schedule,
)
from cofre.tasks.mdlm import MDLMTask
from cofre.training.checkpoint import checkpoint_recipe

METRICS = ("genppl", "entropy", "mauve", "valppl", "latency")
SAMPLE_METRICS = {"genppl", "entropy", "mauve", "latency"}  # the metrics that need samples


@dataclass
class EvalSettings:
    """What `cofre evaluate` computes, and how."""

    budgets: list[int]
    reuse: list[str] = field(default_factory=lambda: ["none", "full", "3sr"])
    metrics: list[str] = field(default_factory=lambda: list(METRICS))
    judge: str = "gpt2-large"
    genppl_mode: str = "eq4"  # eq4: the paper's per-sample mean; mdlm: MDLM's token-weighted code
    num_samples: int = 16
    batch_size: int = 8
    seed: int = 1
    top_p: float = 1.0
    steps: int | None = None
    schedule: str = "decreasing"
    ema: bool = True
    device: str = "auto"
    val_batches: int = 16  # micro-batches of held-out blocks for validation perplexity
    latency_warmup: int = 2
    latency_repeats: int = 20
    precision: str = "auto"  # the network's: bf16 autocast on CUDA, fp32 on CPU; val PPL's loss stays fp32
    compile: bool = False  # torch.compile the transformer blocks
    light: str | None = None  # model scheduling: the light model; cells are then the schedules, not the budgets
    model_schedules: list[str] = field(default_factory=list)  # e.g. ["L125,H750,L125"]; heavy and light alone are added


@dataclass
class Cell:
    """One evaluated (run, reuse, budget) combination."""

    run: str
    label: str  # the row name in tables and plots: run name, and reuse for fixed-point models
    reuse: str
    budget: int
    metrics: dict[str, Any]
    samples: str
    path: str


@dataclass
class EvalSummary:
    cells: list[Cell]
    valppl: dict[str, dict[str, float]]  # run -> validation bound
    settings: dict[str, Any]
    judge: str
    code: str
    summary_path: str = ""
    plot_path: str = ""


def check_settings(settings: EvalSettings) -> None:
    unknown = [m for m in settings.metrics if m not in METRICS]
    if unknown:
        raise CofreError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if not settings.budgets and not settings.model_schedules and SAMPLE_METRICS & set(settings.metrics):
        raise CofreError("give at least one --budget")
    if settings.model_schedules or settings.light is not None:
        sample_points(settings)  # schedules parse and share one step count before anything loads
    bad_reuse = [r for r in settings.reuse if r not in REUSE_POLICIES]
    if bad_reuse:
        raise CofreError(f"unknown reuse policy {', '.join(bad_reuse)}; choose from {', '.join(REUSE_POLICIES)}")
    resolve_precision(settings.precision, torch.device("cpu"))  # an unknown name fails before anything loads
    if settings.genppl_mode not in ("eq4", "mdlm"):
        raise CofreError(f"--genppl-mode must be eq4 or mdlm, got '{settings.genppl_mode}'")
    if settings.schedule not in SCHEDULES:
        raise CofreError(f"--schedule must be one of {', '.join(SCHEDULES)}, got '{settings.schedule}'")
    if not settings.metrics:
        raise CofreError(f"give at least one --metrics value: {', '.join(METRICS)}")
    if not settings.reuse and SAMPLE_METRICS & set(settings.metrics):
        raise CofreError(f"give at least one --reuse policy: {', '.join(REUSE_POLICIES)}")
    for budget in settings.budgets:
        check_range("--budget values", budget, 1, MAX_BUDGET)
    check_range("--steps", settings.steps, 1, MAX_BUDGET)
    check_range("--num-samples", settings.num_samples, 1, MAX_COUNT)
    check_range("--batch-size", settings.batch_size, 1, MAX_COUNT)
    check_range("--seed", settings.seed, 0, MAX_SEED)
    check_range("--val-batches", settings.val_batches, 1, MAX_COUNT)
    check_range("--latency-warmup", settings.latency_warmup, 0, MAX_COUNT)
    check_range("--latency-repeats", settings.latency_repeats, 1, MAX_COUNT)
    if not 0 < settings.top_p <= 1:
        raise CofreError(f"--top-p must be in (0, 1], got {settings.top_p}")
    resolve_device(settings.device)


def sample_points(settings: EvalSettings) -> list[tuple[int | None, str | None]]:
    """The (budget, model schedule) of each cell of a run: every budget, or with a light model every schedule plus
    the heavy and the light model alone over the same steps (H<S>, L<S>)."""
    if (settings.light is None) != (not settings.model_schedules):
        raise CofreError("model scheduling needs both --light LIGHT_RUN and --model-schedule (e.g. L125,H750,L125)")
    if settings.light is None:
        return [(budget, None) for budget in settings.budgets]
    from cofre.sampling.model_schedule import parse_model_schedule, schedule_text, step_models

    parsed = [parse_model_schedule(text, settings.steps) for text in settings.model_schedules]
    steps = {len(step_models(segments)) for segments in parsed}
    if len(steps) > 1:
        raise CofreError(f"the --model-schedule values cover different numbers of steps ({', '.join(map(str, sorted(steps)))}); "
                         "compare schedules over one step count")
    total = steps.pop()
    texts = [f"H{total}", f"L{total}", *(schedule_text(segments) for segments in parsed)]
    return [(None, text) for text in dict.fromkeys(texts)]


def schedule_label(name: str, schedule: str, light: str) -> str:
    """A scheduled cell's row name: the schedule, and which model runs alone for H<S> and L<S>."""
    if "," in schedule:
        return f"{name} {schedule}"
    return f"{name} {schedule} (heavy alone)" if schedule[0] == "H" else f"{name} {schedule} (light alone: {light})"


def reference_texts(ckpt: LoadedCheckpoint, count: int, length: int) -> list[str]:
    """Held-out texts of the run's corpus, cut to the sample length, as MAUVE's reference distribution."""
    val = load_corpus(ckpt.recipe.data).val
    if val.shape[0] < count:
        raise CofreError(f"the validation split has {val.shape[0]} blocks, fewer than the {count} MAUVE references needed")
    tokenizer = gpt2_tokenizer()
    return [tokenizer.decode(row[:length].tolist()) for row in val[:count]]


def score_cell(ckpt: LoadedCheckpoint, sample_settings: SampleSettings, texts: list[str], ids: list[list[int]],
               settings: EvalSettings, judge: Any, reference_features: Any,
               light: LoadedCheckpoint | None = None) -> dict[str, Any]:
    """The sample-based metrics of one cell; each records how it was computed."""
    metrics: dict[str, Any] = {}
    if "genppl" in settings.metrics:
        from cofre.evaluation.genppl import generative_perplexity

        genppl = generative_perplexity(texts, judge, batch_size=settings.batch_size, mode=settings.genppl_mode)
        metrics["genppl"] = dataclasses.asdict(genppl)
    if "entropy" in settings.metrics:
        from cofre.evaluation.entropy import unigram_entropy

        metrics["entropy"] = {"value": unigram_entropy(ids), "unit": "nats", "over": "generated token ids (GPT-2 BPE)"}
    if "mauve" in settings.metrics and reference_features is not None:
        from cofre.evaluation.mauve import features, mauve_from_features

        mauve = mauve_from_features(features(texts, judge), reference_features, judge.name, seed=settings.seed)
        metrics["mauve"] = dataclasses.asdict(mauve)
    if "latency" in settings.metrics:
        sampler = build_sampler(ckpt, sample_settings, light=light)
        generator = torch.Generator(ckpt.device).manual_seed(settings.seed)
        latency = measure_latency(lambda: sampler.sample(settings.batch_size, generator), settings.batch_size,
                                  sampler.cfg.length, ckpt.device, sampler.cfg.precision, settings.latency_warmup,
                                  settings.latency_repeats)
        metrics["latency"] = dataclasses.asdict(latency)
    return metrics


def evaluate_runs(runs: list[Path], settings: EvalSettings, report_dir: Path, console: Console | None = None) -> EvalSummary:
    """Evaluate every (run, reuse, budget) cell; write per-cell JSON, a summary JSON and the plot."""
    from cofre.evaluation.report import plot_genppl

    check_settings(settings)
    for run in runs:  # every run is readable before anything is sampled or written
        checkpoint_recipe(run)
    console = console or Console()
    judge = None
    if {"genppl", "mauve"} & set(settings.metrics):
        from cofre.evaluation.judge import load_judge

        judge = load_judge(settings.judge, resolve_device(settings.device))
    code = code_version()
    cells: list[Cell] = []
    valppl: dict[str, dict[str, float]] = {}
    light = None  # model scheduling: the light model, opened once for every run
    if settings.light is not None:
        light = open_checkpoint(settings.light, ema=settings.ema, device=settings.device, compile=settings.compile)
    for run in runs:
        ckpt = open_checkpoint(run, ema=settings.ema, device=settings.device, compile=settings.compile)
        name = ckpt.run_root.name  # the run directory: two runs of one recipe stay two rows
        precision = resolve_precision(settings.precision, ckpt.device)
        if "valppl" in settings.metrics:
            task = MDLMTask(ckpt.recipe.task, ckpt.recipe.model.mask_id)
            val = load_corpus(ckpt.recipe.data).val
            valppl[name] = {**validation_perplexity(ckpt.model, task, val, settings.val_batches,
                                                    ckpt.recipe.trainer.micro_batch_size, ckpt.recipe.solver.eval_iters,
                                                    precision), "precision": precision}
        fixed_point = ckpt.model.cfg.is_fixed_point or (light is not None and light.model.cfg.is_fixed_point)
        policies = settings.reuse if fixed_point else ["none"]  # reuse needs a fixed-point solve
        if not SAMPLE_METRICS & set(settings.metrics):
            policies = []  # nothing to score on samples (e.g. --metrics valppl with --lm-eval)
        reference_features = None  # held-out texts of the run's corpus, featurised once per run
        for reuse in policies:
            for budget, model_schedule in sample_points(settings):
                sample_settings = with_schedule(ckpt, light, SampleSettings(
                    budget=budget, steps=settings.steps, schedule=settings.schedule, reuse=reuse,
                    num_samples=settings.num_samples, batch_size=settings.batch_size, seed=settings.seed,
                    top_p=settings.top_p, ema=settings.ema, device=settings.device, precision=precision,
                    compile=settings.compile, light=settings.light, model_schedule=model_schedule,
                ))
                budget = sample_settings.budget
                label = f"{name} {reuse}" if fixed_point else name
                if model_schedule is not None and light is not None:
                    label = schedule_label(label, model_schedule, light.run_root.name)
                console.print(f"[bold]{label}[/] budget {budget}: sampling {settings.num_samples}")
                result = sample_checkpoint(ckpt, sample_settings, if_exists="reuse", show_progress=False, light=light)
                if "mauve" in settings.metrics and reference_features is None:
                    from cofre.evaluation.mauve import features

                    references = reference_texts(ckpt, settings.num_samples, len(result.ids[0]))
                    reference_features = features(references, judge)
                metrics = score_cell(ckpt, sample_settings, result.texts, result.ids, settings, judge, reference_features,
                                     light)
                tag = sample_tag(sample_settings, scheduled_identity(ckpt, light))
                record = {
                    "run": str(run), "label": label, "reuse": reuse, "budget": budget,
                    "blocks_spent": result.blocks_spent, "steps": result.steps, "iterations": result.iterations,
                    **({"model_schedule": result.model_schedule} if result.model_schedule else {}),
                    "metrics": metrics, "judge": settings.judge if judge is not None else None, "precision": precision,
                    "seed": settings.seed, "num_samples": result.num_samples, "samples": result.out,
                    "sample_settings": dataclasses.asdict(sample_settings), "checkpoint": ckpt.identity,
                    "code": code, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                path = ckpt.run_root / "eval" / f"{tag}.json"
                atomic_write_text(path, json.dumps(record, indent=2))
                cells.append(Cell(run=str(run), label=label, reuse=reuse, budget=budget, metrics=metrics,
                                  samples=result.out, path=str(path)))
    summary = EvalSummary(cells=cells, valppl=valppl, settings=dataclasses.asdict(settings),
                          judge=settings.judge, code=code)
    key = hashlib.sha1(json.dumps([list(map(str, runs)), summary.settings], sort_keys=True).encode()).hexdigest()[:8]
    summary.summary_path = str(report_dir / f"summary-{key}.json")
    if "genppl" in settings.metrics:
        summary.plot_path = str(report_dir / f"genppl-{key}.png")
        plot_genppl(summary, Path(summary.plot_path))
    atomic_write_text(Path(summary.summary_path), json.dumps(dataclasses.asdict(summary), indent=2))
    return summary
