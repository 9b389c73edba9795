"""`cofre evaluate`: sample each run at each budget and reuse policy, score the samples, write JSON.

One cell = (run, reuse, budget). Its samples are drawn (or read back when a file with identical settings
and weights exists), scored with the chosen metrics, and written to `<run>/eval/<tag>.json` with the judge,
budget, seed, settings and code version beside every number. Text runs are judged by an LM (Gen. PPL,
entropy, MAUVE); image runs by a feature extractor (FID, IS: `cofre.evaluation.image_eval`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from cofre.checks import MAX_BUDGET, MAX_COUNT, MAX_SEED, check_range
from cofre.data.packing import load_corpus
from cofre.data.tokenizer import text_tokenizer
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
from cofre.training.checkpoint import checkpoint_recipe, resolve_checkpoint

TEXT_METRICS = ("genppl", "entropy", "mauve", "valppl", "latency")
METRICS = (*TEXT_METRICS, "fid", "isc")
SAMPLE_METRICS = {"genppl", "entropy", "mauve", "latency", "fid", "isc"}  # the metrics that need samples


@dataclass(kw_only=True)
class JudgedSampling:
    """How each cell of a grid (`cofre sweep`, `cofre schedule-search`) is sampled and judged by Gen. PPL."""

    judge: str = "gpt2-large"
    genppl_mode: str = "eq4"
    num_samples: int = 16
    batch_size: int = 8
    seed: int = 1
    top_p: float = 1.0
    ema: bool = True
    device: str = "auto"
    precision: str = "auto"


@dataclass
class EvalSettings:
    """What `cofre evaluate` computes, and how."""

    budgets: list[int]
    reuse: list[str] = field(default_factory=lambda: ["none", "full", "3sr"])
    metrics: list[str] | None = None  # None: every metric of the runs' modality
    judge: str | None = None  # text: the judge LM (gpt2-large); images: the feature extractor (inception)
    genppl_mode: str = "eq4"  # eq4: the paper's per-sample mean; mdlm: MDLM's token-weighted code
    num_samples: int = 16
    batch_size: int = 8
    seed: int = 1
    top_p: list[float] = field(default_factory=lambda: [1.0])  # nucleus masses, each its own rows (Table 12)
    checkpoints: list[str] = field(default_factory=list)  # Table 24: evaluate these checkpoints of each run
    steps: int | None = None
    schedule: str = "decreasing"
    ema: bool = True
    device: str = "auto"
    val_batches: int = 16  # micro-batches of held-out blocks for validation perplexity
    latency_warmup: int = 1
    latency_repeats: int = 3  # App. F.11's protocol: 2 + 20 (make's paper targets)
    precision: str = "auto"  # the network's: bf16 autocast on CUDA, fp32 on CPU; val PPL's loss stays fp32
    compile: bool = False  # torch.compile the transformer blocks
    cfg: list[float] = field(default_factory=lambda: [0.0])  # images: guidance weight w; several: chosen per run
    cfg_select: int | None = None  # images: the budget at which each run's w is the one of lowest FID (cfg_sweep.py)
    reference_split: str = "val"  # images: FID's reference images
    reference_images: int = 0  # images: how many of them (a fixed subset); 0: the whole split
    inception_weights: str | None = None  # images: torch-fidelity's Inception weights file (FID and IS)
    light: str | None = None  # model scheduling: the light model; cells are then the schedules, not the budgets
    model_schedules: list[str] = field(default_factory=list)  # e.g. ["L125,H750,L125"]; heavy and light alone are added
    raw_weights: list[str] = field(default_factory=list)  # of the runs: also evaluated with raw weights, rows of their own


@dataclass
class CellSamples:
    """What one cell's sampling and scoring gave, either modality."""

    metrics: dict[str, Any]
    out: str  # the samples file (text) or folder (images)
    tag: str  # the per-cell JSON's name
    budget: int  # the blocks per sample it spent: the budget asked, or the one a model schedule implies
    record: dict[str, Any]  # how the samples were drawn: blocks spent, steps, iterations, count, sampler settings


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
    top_p: float = 1.0
    checkpoint: dict[str, Any] = field(default_factory=dict)  # path, step, weights file, sha256 of the weights
    cfg: float | None = None  # images: the guidance weight w of the cell


@dataclass
class EvalSummary:
    cells: list[Cell]
    valppl: dict[str, dict[str, float]]  # run -> validation bound
    settings: dict[str, Any]
    judge: str
    code: str
    summary_path: str = ""
    plot_path: str = ""
    modality: str = "text"
    training: dict[str, dict[str, Any]] = field(default_factory=dict)  # run -> training time and peak memory
    cfg_sweep: list[dict[str, Any]] = field(default_factory=list)  # images, --cfg-select: each run's sweep and chosen w
    cfg_sweep_path: str = ""


def run_modality(runs: list[Path]) -> str:
    """`text` or `image`: the one modality of all `runs` (a table compares runs of one modality)."""
    modalities = {checkpoint_recipe(run).model.modality for run in runs}
    if len(modalities) > 1:
        raise CofreError("these runs mix text and image models; evaluate each modality in its own call")
    return modalities.pop() if modalities else "text"


def for_modality(settings: EvalSettings, modality: str) -> EvalSettings:
    """`settings` with the modality's defaults filled in (all its metrics, its judge); a metric of the other
    modality is an error."""
    from cofre.evaluation.image_eval import IMAGE_JUDGE, IMAGE_METRICS

    allowed = IMAGE_METRICS if modality == "image" else TEXT_METRICS
    metrics = list(allowed) if settings.metrics is None else settings.metrics
    wrong = [m for m in metrics if m in METRICS and m not in allowed]
    if wrong:
        raise CofreError(f"--metrics {', '.join(wrong)}: not for {modality} runs; choose from {', '.join(allowed)}")
    if modality == "image" and settings.top_p != [1.0]:
        raise CofreError("--top-p: text sampling option; image runs sample with --temperature (cofre sample)")
    if modality == "image" and settings.raw_weights:
        raise CofreError("--raw-weights: for text runs (Table 13's SDTT row); evaluate an image run's raw weights with "
                         "--no-ema")
    if modality == "image" and settings.light is not None:
        raise CofreError("--light / --model-schedule: model scheduling is for text runs")
    if modality == "text" and (settings.cfg != [0.0] or settings.cfg_select is not None):
        raise CofreError("--cfg / --cfg-select: classifier-free guidance is for image runs")
    judge = settings.judge if settings.judge is not None else IMAGE_JUDGE if modality == "image" else "gpt2-large"
    return dataclasses.replace(settings, metrics=metrics, judge=judge)


def check_settings(settings: EvalSettings) -> None:
    """Every setting that needs no run read (metrics None: the modality's, filled in once the runs are read)."""
    from cofre.evaluation.image_eval import check_image_settings

    metrics = list(METRICS) if settings.metrics is None else settings.metrics
    check_image_settings(settings)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise CofreError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if not settings.budgets and not settings.model_schedules and SAMPLE_METRICS & set(metrics):
        raise CofreError("give at least one --budget")
    if settings.model_schedules or settings.light is not None:
        sample_points(settings)  # schedules parse and share one step count before anything loads
    if settings.raw_weights and not settings.ema:
        raise CofreError("--raw-weights adds raw-weight rows beside the EMA rows; with --no-ema every row is raw already")
    bad_reuse = [r for r in settings.reuse if r not in REUSE_POLICIES]
    if bad_reuse:
        raise CofreError(f"unknown reuse policy {', '.join(bad_reuse)}; choose from {', '.join(REUSE_POLICIES)}")
    resolve_precision(settings.precision, torch.device("cpu"))  # an unknown name fails before anything loads
    if settings.genppl_mode not in ("eq4", "mdlm"):
        raise CofreError(f"--genppl-mode must be eq4 or mdlm, got '{settings.genppl_mode}'")
    if settings.schedule not in SCHEDULES:
        raise CofreError(f"--schedule must be one of {', '.join(SCHEDULES)}, got '{settings.schedule}'")
    if not metrics:
        raise CofreError(f"give at least one --metrics value: {', '.join(METRICS)}")
    if not settings.reuse and SAMPLE_METRICS & set(metrics):
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
    if settings.judge is not None and not settings.judge.strip():
        raise CofreError("--judge is empty; leave it out for the modality's default (gpt2-large, inception)")
    if not settings.top_p:
        raise CofreError("give at least one --top-p value")
    for top_p in settings.top_p:
        if not 0 < top_p <= 1:
            raise CofreError(f"--top-p must be in (0, 1], got {top_p}")
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


def weight_rows(runs: list[Path], settings: EvalSettings) -> list[tuple[Path, bool]]:
    """(checkpoint, EMA?) of every row group: each run's checkpoints (--checkpoints) with the EMA weights when
    present (`settings.ema`), and with their raw weights too for the runs named in `settings.raw_weights`."""
    from cofre.evaluation.checkpoints import expand_checkpoints
    from cofre.training.checkpoint import EMA_FILE

    raw = [Path(r) for r in settings.raw_weights]
    unknown = [str(r) for r in raw if r not in runs]
    if unknown:
        raise CofreError(f"--raw-weights {', '.join(unknown)}: not among the runs evaluated; name each run too")
    rows = []
    for run in runs:
        for folder in expand_checkpoints([run], settings.checkpoints):
            rows.append((folder, settings.ema))
            if run in raw:
                if not (resolve_checkpoint(folder) / EMA_FILE).is_file():
                    raise CofreError(f"--raw-weights {run}: {resolve_checkpoint(folder)} has no EMA weights, so its "
                                     "rows already are its raw weights")
                rows.append((folder, False))
    return rows


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
    tokenizer = text_tokenizer(ckpt.recipe.data)
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

        metrics["entropy"] = {"value": unigram_entropy(ids), "unit": "nats", "over": f"generated token ids ({ckpt.recipe.data.text_tokenizer} BPE)"}
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


def text_cell(ckpt: LoadedCheckpoint, light: LoadedCheckpoint | None, settings: EvalSettings, reuse: str,
              budget: int | None, model_schedule: str | None, top_p: float, precision: str, judge: Any,
              references: dict[str, Any]) -> CellSamples:
    """One text cell: samples drawn (or read back), scored; `references` keeps MAUVE's reference features per run.
    With a light model, `model_schedule` names the model of each step and the budget follows from it."""
    sample_settings = with_schedule(ckpt, light, SampleSettings(
        budget=budget, steps=settings.steps, schedule=settings.schedule, reuse=reuse,
        num_samples=settings.num_samples, batch_size=settings.batch_size, seed=settings.seed,
        top_p=top_p, ema=settings.ema, device=settings.device, precision=precision, compile=settings.compile,
        light=settings.light, model_schedule=model_schedule,
    ))
    result = sample_checkpoint(ckpt, sample_settings, if_exists="reuse", show_progress=False, light=light)
    if "mauve" in settings.metrics and str(ckpt.run_root) not in references:  # held-out texts, featurised once per run
        from cofre.evaluation.mauve import features

        texts = reference_texts(ckpt, settings.num_samples, len(result.ids[0]))
        references[str(ckpt.run_root)] = features(texts, judge)
    metrics = score_cell(ckpt, sample_settings, result.texts, result.ids, settings, judge,
                         references.get(str(ckpt.run_root)), light)
    record = {"blocks_spent": result.blocks_spent, "steps": result.steps, "iterations": result.iterations,
              **({"model_schedule": result.model_schedule} if result.model_schedule else {}),
              "num_samples": result.num_samples, "sample_settings": dataclasses.asdict(sample_settings)}
    return CellSamples(metrics=metrics, out=result.out, tag=sample_tag(sample_settings, scheduled_identity(ckpt, light)),
                       budget=sample_settings.budget, record=record)


def evaluate_runs(runs: list[Path], settings: EvalSettings, report_dir: Path, console: Console | None = None) -> EvalSummary:
    """Evaluate every (run, reuse, budget) cell; write per-cell JSON, a summary JSON and the plot."""
    from cofre.evaluation.cfg_sweep import CfgChoice, choose_cfg, selection_record, write_cfg_sweep
    from cofre.evaluation.image_eval import ImageCells, training_cost
    from cofre.evaluation.checkpoints import expand_checkpoints, run_name
    from cofre.evaluation.report import plot_budget_curves

    check_settings(settings)
    rows = weight_rows(runs, settings)  # (checkpoint, EMA?): each run's named checkpoints (Table 24), raw too if asked
    runs = expand_checkpoints(runs, settings.checkpoints)  # run directories -> the named checkpoints (Table 24)
    modality = run_modality(runs)  # every run is readable before anything is sampled or written
    if modality == "text" and settings.judge is not None:  # named: checked even when no metric here needs it
        from cofre.evaluation.judge import check_judge

        check_judge(settings.judge)
    isc_asked = settings.metrics is not None and "isc" in settings.metrics  # named: no null IS after hours of sampling
    settings = for_modality(settings, modality)
    assert settings.metrics is not None
    console = console or Console()
    judge = None
    if {"genppl", "mauve"} & set(settings.metrics):
        from cofre.evaluation.judge import load_judge

        judge = load_judge(settings.judge, resolve_device(settings.device))
    images = ImageCells(settings, checkpoint_recipe(runs[0]).data, isc_asked) if modality == "image" else None
    choices: list[CfgChoice] = []  # images, --cfg-select: each run's guidance sweep
    code = code_version()
    cells: list[Cell] = []
    valppl: dict[str, dict[str, float]] = {}
    training: dict[str, dict[str, Any]] = {}
    references: dict[str, Any] = {}
    light = None  # model scheduling: the light model, opened once for every run
    if settings.light is not None:
        light = open_checkpoint(settings.light, ema=settings.ema, device=settings.device, compile=settings.compile)
    twins = {run for run, ema in rows if not ema} if settings.ema else set()  # evaluated with both weights
    for run, ema in rows:
        ckpt = open_checkpoint(run, ema=ema, device=settings.device, compile=settings.compile)
        name = run_name(run, ckpt.folder, ckpt.identity)  # two runs of one recipe, two checkpoints: two rows
        if run in twins:
            name += " (EMA)" if ema else " (raw weights)"
        training[name] = training_cost(ckpt.run_root, ckpt.recipe.init_from)
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
        choice = None  # images, --cfg-select: this run's guidance sweep at one budget, with its first reuse policy
        if images is not None and settings.cfg_select is not None and policies:
            console.print(f"[bold]{name}[/] guidance sweep: w {', '.join(f'{w:g}' for w in settings.cfg)} at budget "
                          f"{settings.cfg_select} ({policies[0]})")
            choice = choose_cfg(images, ckpt, name, settings.cfg, settings.cfg_select, policies[0], precision)
            choices.append(choice)
        cfg = choice.chosen if choice is not None else settings.cfg[0]
        for top_p, reuse in product(settings.top_p, policies):
            for budget, model_schedule in sample_points(settings):
                label = f"{name} {reuse}" if fixed_point else name
                label += f" top-p {top_p:g}" if top_p != 1 else ""
                if model_schedule is not None and light is not None:
                    label = schedule_label(label, model_schedule, light.run_root.name)
                console.print(f"[bold]{label}[/] budget {budget or 'of the schedule'}: sampling {settings.num_samples}")
                if images is not None:
                    cell = images.score(ckpt, reuse, budget, precision, cfg)
                else:
                    cell = text_cell(ckpt, light, dataclasses.replace(settings, ema=ema), reuse, budget, model_schedule,
                                     top_p, precision, judge, references)
                judged_by = (images.extractor.name if images is not None and images.extractor is not None
                             else settings.judge if judge is not None else None)
                chosen = {"cfg_selection": selection_record(choice)} if choice is not None else {}
                record = {
                    "run": str(run), "label": label, "reuse": reuse, "budget": cell.budget, **cell.record, **chosen,
                    "metrics": cell.metrics, "judge": judged_by, "precision": precision, "seed": settings.seed,
                    "samples": cell.out, "checkpoint": ckpt.identity, "code": code,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                path = ckpt.run_root / "eval" / f"{cell.tag}.json"
                atomic_write_text(path, json.dumps(record, indent=2))
                cells.append(Cell(run=str(run), label=label, reuse=reuse, budget=cell.budget, metrics=cell.metrics,
                                  samples=cell.out, path=str(path), top_p=top_p, checkpoint=ckpt.identity,
                                  cfg=cfg if images is not None else None))
    judge_name = images.extractor.name if images is not None and images.extractor is not None else settings.judge
    summary = EvalSummary(cells=cells, valppl=valppl, settings=dataclasses.asdict(settings), judge=str(judge_name),
                          code=code, modality=modality, training=training,
                          cfg_sweep=[dataclasses.asdict(c) for c in choices])
    key = hashlib.sha1(json.dumps([list(map(str, runs)), summary.settings], sort_keys=True).encode()).hexdigest()[:8]
    summary.summary_path = str(report_dir / f"summary-{key}.json")
    if choices:
        summary.cfg_sweep_path = str(report_dir / f"cfg-sweep-{key}.json")
        write_cfg_sweep(choices, Path(summary.cfg_sweep_path), report_dir / f"cfg-sweep-{key}.png")
    curve = "fid" if modality == "image" else next((m for m in ("genppl", "mauve") if m in settings.metrics), "")
    if curve in settings.metrics:
        summary.plot_path = str(report_dir / f"{curve}-{key}.png")
        plot_budget_curves(summary, Path(summary.plot_path), curve)
    atomic_write_text(Path(summary.summary_path), json.dumps(dataclasses.asdict(summary), indent=2))
    return summary
