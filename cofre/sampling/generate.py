"""`cofre sample`: draw samples from a checkpoint under a block budget and write them as JSONL."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cofre.checks import MAX_BUDGET, MAX_COUNT, MAX_SEED, check_memory, check_range
from cofre.data.tokenizer import text_tokenizer
from cofre.errors import CofreError
from cofre.sampling.budget import BudgetPlan, plan_budget
from cofre.sampling.conditioning import check_condition, condition_length, start_tokens
from cofre.sampling.mdlm import MDLMSampler, SampleBatch, SamplerConfig, StepRecord
from cofre.sampling.model_schedule import (
    check_compatible,
    parse_model_schedule,
    plan_schedule,
    schedule_cost,
    schedule_text,
)
from cofre.sampling.reuse import ReuseConfig
from cofre.sampling.shortcut import check_shortcut_options, shortcut_cost
from cofre.config import ModelConfig, Recipe
from cofre.models import Denoiser
from cofre.precision import resolve_device, resolve_precision
from cofre.runs import code_version, read_jsonl_file
from cofre.training.checkpoint import EMA_FILE, MODEL_FILE, load_model, load_train_state, resolve_checkpoint, run_root
from cofre.training.shortcut import sampling_precision


@dataclass
class SampleSettings:
    """The full set of choices `cofre sample` exposes; written beside every sample."""

    budget: int | None  # None: derived from the model schedule, or with a shortcut B full steps at the default cost
    steps: int | None = None
    schedule: str = "decreasing"
    reuse: str = "3sr"
    gamma_mask_min: float = 0.75
    gamma_mask_max: float = 0.90
    gamma_changed_min: float = 0.2
    gamma_changed_max: float = 0.2
    num_samples: int = 8
    batch_size: int = 8
    seed: int = 1
    top_p: float = 1.0
    temperature: float = 1.0  # softmax temperature of every draw
    prefix: str | None = None  # conditional generation: a prompt the samples continue
    infill: str | None = None  # ... or a template whose [mask] gaps are filled (one token each)
    length: int | None = None  # default: the model's data.seq_len (an infill template: its own length)
    ema: bool = True
    noise_removal: bool = False
    cache: bool = False
    tol: float | None = None
    device: str = "auto"
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU (resolved before sampling, so recorded as run)
    compile: bool = False  # torch.compile the transformer blocks
    light: str | None = None  # model scheduling: the light model's checkpoint folder
    model_schedule: str | None = None  # model scheduling: H/L segments in step order, e.g. L125,H750,L125
    shortcut: str | None = None  # MIGM-Shortcut run: S replaces the full model on all but --full-steps of --steps
    full_steps: int | None = None


@dataclass
class SampleResult:
    """What was drawn and what it cost; the CLI prints it."""

    out: str
    num_samples: int
    budget: int
    steps: int
    iterations: list[int]  # planned N_i per step ([] for a plain model)
    blocks_spent: list[int]  # per batch
    blocks_per_step: list[float]  # mean over batches
    cached_steps: int
    wall_time_s: float
    tokens_per_s: float
    checkpoint: dict[str, Any]
    texts: list[str] = field(default_factory=list)
    ids: list[list[int]] = field(default_factory=list)
    model_schedule: dict[str, Any] | None = None  # a schedule's cost: blocks per model, saving against heavy alone
    shortcut: dict[str, Any] | None = None  # the shortcut's weights and cost (full-model blocks + S's FLOPs in blocks)


def sample_tag(settings: SampleSettings, checkpoint: dict[str, Any], shortcut_sha256: str | None = None) -> str:
    """A file name that names the main settings and changes whenever any setting or the weights do."""
    identity = {"settings": dataclasses.asdict(settings), "weights": checkpoint["sha256"]}
    if "light" in checkpoint:  # a model schedule: the light model's weights too
        identity["light"] = checkpoint["light"]["sha256"]
    if shortcut_sha256 is not None:  # a retrained shortcut at the same path draws new samples
        identity["shortcut"] = shortcut_sha256
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    scheduled = f"-{settings.model_schedule.replace(',', '')}" if settings.model_schedule else ""
    return (f"step{checkpoint['step']}-b{settings.budget}-{settings.reuse}-{settings.schedule}{scheduled}"
            f"-seed{settings.seed}-{digest}")


def checkpoint_identity(folder: Path, ema: bool) -> dict[str, Any]:
    """Which weights produced the samples: folder, training step, weights file and its sha256, whether those are the
    EMA or the raw weights (`--ema` falls back to the raw ones of a run trained without EMA), code version."""
    weights = folder / (EMA_FILE if ema and (folder / EMA_FILE).is_file() else MODEL_FILE)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    progress = load_train_state(folder, "progress") if (folder / "train_state" / "progress.pt").is_file() else {}
    return {"path": str(folder), "step": progress.get("step"), "weights": weights.name,
            "ema": weights.name == EMA_FILE, "sha256": digest, "code": code_version()}


@dataclass
class LoadedCheckpoint:
    """A model ready to sample, with the recipe it was trained with and where its weights came from."""

    folder: Path
    model: Denoiser
    recipe: Recipe
    identity: dict[str, Any]
    device: torch.device

    @property
    def run_root(self) -> Path:
        return run_root(self.folder)


def open_checkpoint(path: str | Path, ema: bool = True, device: str = "auto", compile: bool = False) -> LoadedCheckpoint:
    dev = resolve_device(device)  # a bad device fails before a checkpoint is read
    folder = resolve_checkpoint(path)
    model, recipe = load_model(folder, ema=ema)
    model = model.to(dev).eval()
    if compile:
        model.compile_blocks()
    return LoadedCheckpoint(folder, model, recipe, checkpoint_identity(folder, ema), dev)


def resolved(settings: SampleSettings, device: torch.device) -> SampleSettings:
    """`settings` with 'auto' precision made concrete for `device` (with a shortcut: its collection precision), so
    files name what actually ran."""
    return dataclasses.replace(settings, precision=sampling_precision(settings.precision, device, settings.shortcut))


def validate_settings(settings: SampleSettings, max_len: int | None = None) -> None:
    """Every setting in range; `--length` against the model's max_seq_len once the model is known."""
    if (settings.light is None) != (settings.model_schedule is None):
        raise CofreError("model scheduling needs both --light LIGHT_RUN and --model-schedule (e.g. L125,H750,L125)")
    if settings.model_schedule is not None and settings.shortcut is not None:
        raise CofreError("--model-schedule and --shortcut each replace the model at some steps; use one at a time")
    if settings.model_schedule is None and (settings.shortcut is not None or settings.full_steps is not None):
        check_shortcut_options(settings.shortcut, settings.steps, settings.full_steps, settings.budget)
    if settings.budget is None and settings.model_schedule is None and settings.shortcut is None:
        raise CofreError("--budget is required (or --light with --model-schedule, or --shortcut with --steps and "
                         "--full-steps)")
    check_range("--budget", settings.budget, 1, MAX_BUDGET)
    check_range("--steps", settings.steps, 1, MAX_BUDGET)
    if settings.model_schedule is not None:
        parse_model_schedule(settings.model_schedule, settings.steps)  # a bad schedule fails before anything loads
    check_range("--num-samples", settings.num_samples, 1, MAX_COUNT)
    check_range("--batch-size", settings.batch_size, 1, MAX_COUNT)
    check_range("--seed", settings.seed, 0, MAX_SEED)
    resolve_precision(settings.precision, torch.device("cpu"))  # an unknown name fails before anything loads
    for option in ("gamma_mask_min", "gamma_mask_max", "gamma_changed_min", "gamma_changed_max"):
        check_range(f"--{option.replace('_', '-')}", getattr(settings, option), 0.0, 1.0)
    for kind in ("mask", "changed"):
        low, high = getattr(settings, f"gamma_{kind}_min"), getattr(settings, f"gamma_{kind}_max")
        if low > high:
            raise CofreError(f"--gamma-{kind}-min must be <= --gamma-{kind}-max, got {low} > {high}")
    if not 0 < settings.top_p <= 1:
        raise CofreError(f"--top-p must be in (0, 1], got {settings.top_p}")
    if not 0 < settings.temperature < float("inf"):
        raise CofreError(f"--temperature must be a positive number, got {settings.temperature}")
    check_condition(settings.prefix, settings.infill)
    if settings.tol is not None and not 0 < settings.tol < float("inf"):
        raise CofreError(f"--tol must be a positive number, got {settings.tol}")
    check_range("--length", settings.length, 1, max_len)  # max_len: the model's max_seq_len


def check_sampling_memory(model: ModelConfig, positions: int, batch_size: int, num_samples: int, device: torch.device,
                          kept_per_sample: int, passes: int = 1) -> None:
    """Lower bounds, checked before anything is drawn: a batch's logits over the vocabulary and hidden states of
    `passes` network passes (2 with guidance) on `device`, and the `kept_per_sample` bytes each sample's result
    holds in this machine's memory until the samples are written."""
    batch = min(batch_size, num_samples)
    check_memory("--batch-size", batch * passes * positions * 4 * (model.vocab_size + 8 * model.hidden),
                 f"a batch of {batch} samples of {positions} positions (logits over {model.vocab_size} tokens)", device)
    check_memory("--num-samples", num_samples * kept_per_sample, f"holding {num_samples} samples until they are written")


def scheduled_plan(ckpt: LoadedCheckpoint, light: LoadedCheckpoint | None, settings: SampleSettings) -> BudgetPlan:
    """A model schedule's plan: the light model matched against the heavy one, the schedule parsed against --steps,
    FP models' iterations split by --schedule, the budget derived (and checked against --budget when given)."""
    if light is None or settings.model_schedule is None:
        raise CofreError("model scheduling needs both --light LIGHT_RUN and --model-schedule (e.g. L125,H750,L125)")
    check_compatible(ckpt.recipe, light.recipe, str(ckpt.folder), str(light.folder))
    segments = parse_model_schedule(settings.model_schedule, settings.steps)
    return plan_schedule(segments, ckpt.recipe, light.recipe, settings.schedule, settings.budget)


def with_schedule(ckpt: LoadedCheckpoint, light: LoadedCheckpoint | None, settings: SampleSettings) -> SampleSettings:
    """`settings` with a model schedule made concrete: its canonical step counts, the derived budget and steps, and
    the light model's folder; unchanged without a schedule."""
    if settings.model_schedule is None and light is None:
        return settings
    plan = scheduled_plan(ckpt, light, settings)
    segments = parse_model_schedule(settings.model_schedule or "", settings.steps)
    return dataclasses.replace(settings, budget=plan.budget, steps=plan.steps, model_schedule=schedule_text(segments),
                               light=str(light.folder) if light is not None else None)


def scheduled_identity(ckpt: LoadedCheckpoint, light: LoadedCheckpoint | None) -> dict[str, Any]:
    """Which weights drew the samples: the checkpoint's identity, with the light model's under "light"."""
    return ckpt.identity if light is None else {**ckpt.identity, "light": light.identity}


def build_sampler(ckpt: LoadedCheckpoint, settings: SampleSettings, trace: bool = False,
                  light: LoadedCheckpoint | None = None) -> MDLMSampler:
    """The sampler `settings` describe, for this checkpoint (and a model schedule's light model; plan checked here)."""
    recipe = ckpt.recipe
    if recipe.model.modality != "text":
        raise CofreError(f"{ckpt.folder} is an image model; the text sampler needs a text (MDLM) checkpoint "
                         "(`cofre sample` on an image run draws images)")
    validate_settings(settings, recipe.model.max_seq_len)
    length = sample_length(recipe, settings)
    check_sampling_memory(recipe.model, length, settings.batch_size, settings.num_samples, ckpt.device,
                          kept_per_sample=2048 + 100 * length)  # a record: ids, text, settings (Python objects)
    hook = None
    if settings.model_schedule is not None or light is not None:
        plan = scheduled_plan(ckpt, light, settings)
        check_range("--length", settings.length, 1, light.recipe.model.max_seq_len)  # type: ignore[union-attr]
    elif settings.shortcut is not None and settings.steps is not None and settings.full_steps is not None:
        from cofre.training.shortcut import shortcut_steps

        plan, hook = shortcut_steps(ckpt, Path(settings.shortcut), settings.steps, settings.full_steps,
                                    settings.budget, settings.schedule)
    else:
        plan = plan_budget(recipe.model, settings.budget or 0, settings.steps, settings.schedule)
    reuse = ReuseConfig(settings.reuse, settings.gamma_mask_min, settings.gamma_mask_max, settings.gamma_changed_min,
                        settings.gamma_changed_max)
    config = SamplerConfig(length=length, reuse=reuse, top_p=settings.top_p, temperature=settings.temperature,
                           noise_removal=settings.noise_removal, cache=settings.cache, tol=settings.tol, trace=trace,
                           precision=sampling_precision(settings.precision, ckpt.device, settings.shortcut))
    return MDLMSampler(ckpt.model, plan, config, eps=recipe.task.eps, light=light.model if light is not None else None,
                       hook=hook)


def sample_length(recipe: Recipe, settings: SampleSettings) -> int:
    """--length, else an infill template's own length, else the training sequence length."""
    if settings.length is not None:
        return settings.length
    if settings.infill is not None:
        length = condition_length(text_tokenizer(recipe.data), settings.infill, recipe.data.packing == "wrap") or 0
        check_range("the --infill template's length in tokens", length, 1, recipe.model.max_seq_len)
        return length
    return recipe.data.seq_len


def read_samples(path: Path) -> list[dict[str, Any]]:
    return read_jsonl_file(path, "samples file", "remove it to sample again")


def _result(out: Path, records: list[dict[str, Any]], settings: SampleSettings, sampler: MDLMSampler,
            traces: list[list[StepRecord]], wall: float, identity: dict[str, Any]) -> SampleResult:
    plan = sampler.plan
    spent = [records[i]["blocks_spent"] for i in range(0, len(records), settings.batch_size)]
    costs = [records[i]["shortcut"] for i in range(0, len(records), settings.batch_size) if "shortcut" in records[i]]
    per_batch = [records[i]["blocks_per_step"] for i in range(0, len(records), settings.batch_size)]
    assert settings.budget is not None  # made concrete by with_schedule
    return SampleResult(
        out=str(out), num_samples=len(records), budget=settings.budget, steps=plan.steps, iterations=plan.iterations,
        blocks_spent=spent, blocks_per_step=[sum(b[i] for b in per_batch) / len(per_batch) for i in range(plan.steps)],
        cached_steps=sum(r.cached for steps in traces for r in steps), wall_time_s=wall,
        tokens_per_s=len(records) * sampler.cfg.length / wall, checkpoint=identity, texts=[r["text"] for r in records],
        ids=[r["ids"] for r in records], model_schedule=records[0].get("model_schedule"),
        shortcut=mean_cost(costs) if costs else None,
    )


def _schedule_record(ckpt: LoadedCheckpoint, light: LoadedCheckpoint | None, settings: SampleSettings) -> dict[str, Any]:
    """What a model schedule spends (written with each sample): blocks and FLOPs per model, the savings, the light
    model."""
    if light is None or settings.model_schedule is None:
        return {}
    cost = schedule_cost(parse_model_schedule(settings.model_schedule), ckpt.recipe, light.recipe,
                         settings.length or ckpt.recipe.data.seq_len)
    return {"model_schedule": {**dataclasses.asdict(cost), "light": light.identity}}


def mean_cost(costs: list[dict[str, Any]]) -> dict[str, Any]:
    """The shortcut's cost per sample averaged over batches (numbers), with the weights it ran (the rest)."""
    return {k: sum(c[k] for c in costs) / len(costs) if isinstance(v, float) else v for k, v in costs[0].items()}


def sample_checkpoint(ckpt: LoadedCheckpoint, settings: SampleSettings, out: Path | None = None,
                      if_exists: str = "error", trace: Path | None = None, show_progress: bool = True,
                      light: LoadedCheckpoint | None = None) -> SampleResult:
    """Sample `settings.num_samples` sequences and write them (with settings and cost) to `out`, by default
    `<run>/samples/<tag>.jsonl`. An existing file is an error, replaced ("overwrite"), or read back ("reuse").
    With `light` and `settings.model_schedule`, each step runs the model the schedule names."""
    settings = with_schedule(ckpt, light, resolved(settings, ckpt.device))
    if all(c.model.fixed_point is None for c in (ckpt, light) if c is not None):
        settings = dataclasses.replace(settings, reuse="none")  # no solve, no warm start: one tag for the same draws
    sampler = build_sampler(ckpt, settings, trace=trace is not None, light=light)
    settings = dataclasses.replace(settings, budget=sampler.plan.budget)  # with a shortcut: the full steps' budget
    shortcut_sha256 = sampler.hook.identity.get("sha256") if sampler.hook is not None else None
    identity = scheduled_identity(ckpt, light)
    out = out or ckpt.run_root / "samples" / f"{sample_tag(settings, identity, shortcut_sha256)}.jsonl"
    if out.exists() and if_exists == "reuse":
        records = read_samples(out)
        if all(r.get("settings") == dataclasses.asdict(settings) and _weights(r.get("checkpoint")) == _weights(identity)
               and (r.get("shortcut") or {}).get("sha256") == shortcut_sha256 and _complete(r)
               for r in records) and len(records) == settings.num_samples:
            return _result(out, records, settings, sampler, [], sum(r["batch_wall_time_s"] for r in records[:: settings.batch_size]), identity)
        raise CofreError(f"{out} holds samples with other settings or weights; remove it to sample again")
    for path in (out, trace):
        if path is not None and path.exists() and if_exists != "overwrite":
            raise CofreError(f"{path} exists; pass --overwrite to replace it")
    tokenizer = text_tokenizer(ckpt.recipe.data)
    start = conditioned_start(ckpt, sampler, settings)
    for path in (out, trace):  # the folders exist before anything is drawn (a missing one fails now, not after)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    records: list[dict[str, Any]] = []
    traces: list[list[StepRecord]] = []
    scheduled = _schedule_record(ckpt, light, settings)
    started = time.perf_counter()
    for batch, batch_time in draw_batches(sampler, settings, start, ckpt.device, show_progress):
        traces.append(batch.steps)
        cost = {} if sampler.hook is None else {"shortcut": {**sampler.hook.identity, **shortcut_cost(
            sampler.hook, sampler.cfg.length, sampler.plan)}}  # type: ignore[arg-type]
        for ids in batch.tokens.tolist():
            records.append({
                "ids": ids, "text": tokenizer.decode(ids), "settings": dataclasses.asdict(settings),
                "length": sampler.cfg.length, "plan": {"steps": sampler.plan.steps, "iterations": sampler.plan.iterations,
                                                       **({"models": sampler.plan.models} if sampler.plan.models else {})},
                "blocks_spent": batch.blocks_spent, "blocks_per_step": [r.blocks for r in batch.steps],
                "batch_wall_time_s": batch_time, "checkpoint": identity, **scheduled, **cost,
            })
    wall = time.perf_counter() - started
    _write_jsonl(out, records)
    if trace is not None:
        _write_jsonl(trace, [{"batch": b, **dataclasses.asdict(r)} for b, steps in enumerate(traces) for r in steps])
    return _result(out, records, settings, sampler, traces, wall, identity)


def conditioned_start(ckpt: LoadedCheckpoint, sampler: MDLMSampler, settings: SampleSettings) -> torch.Tensor | None:
    """The tokens every sample starts from: all [mask], or a prompt / infill template (runs trained on wrapped
    blocks start with [BOS])."""
    if settings.prefix is None and settings.infill is None:
        return None
    return start_tokens(text_tokenizer(ckpt.recipe.data), ckpt.model.cfg.mask_id, sampler.cfg.length, settings.prefix,
                        settings.infill, bos=ckpt.recipe.data.packing == "wrap")


def draw_batches(sampler: MDLMSampler, settings: SampleSettings, start: torch.Tensor | None, device: torch.device,
                 show_progress: bool) -> Iterator[tuple[SampleBatch, float]]:
    """`settings.num_samples` samples in batches of `settings.batch_size` from one seeded generator, each batch with
    its wall time; a progress bar when asked."""
    generator = torch.Generator(device).manual_seed(settings.seed)
    sizes = [min(settings.batch_size, settings.num_samples - i) for i in range(0, settings.num_samples, settings.batch_size)]
    progress = Progress(TextColumn("[bold]sample"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        disable=not show_progress)
    with progress:
        bar = progress.add_task("sample", total=len(sizes))
        for size in sizes:
            batch_start = time.perf_counter()
            batch = sampler.sample(size, generator, start)
            if device.type == "cuda":
                torch.cuda.synchronize()
            yield batch, time.perf_counter() - batch_start
            progress.advance(bar)


def _weights(identity: Any) -> tuple[str, str | None] | None:
    """The weights that decide what is drawn: the checkpoint's, and a model schedule's light model's."""
    if not isinstance(identity, dict) or not isinstance(identity.get("light", {}), dict):
        return None
    return identity.get("sha256"), identity.get("light", {}).get("sha256")


def _complete(record: dict[str, Any]) -> bool:
    """A sample record read back holds what a result is made of."""
    return (isinstance(record.get("ids"), list) and isinstance(record.get("text"), str)
            and isinstance(record.get("blocks_spent"), int) and isinstance(record.get("blocks_per_step"), list)
            and isinstance(record.get("batch_wall_time_s"), (int, float)))


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with tmp.open("w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (disk full) leaves no partial file behind
