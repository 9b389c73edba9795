"""`cofre sample` on an image run: draw codes under a block budget, decode them, write PNGs, a grid and a manifest.

Budget = transformer-block forward passes per sample, as for text: one step of an FP model costs
K_pre + N_i K_fp + K_post, a plain model its depth. The unconditional pass of classifier-free guidance runs on
the same batch and is not counted twice (the paper's 48 = 2 steps x 24 layers); the manifest says so.
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

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cofre.checks import MAX_BUDGET, MAX_COUNT, MAX_SEED, check_range
from cofre.errors import CofreError
from cofre.precision import resolve_precision
from cofre.runs import atomic_write_text
from cofre.sampling.budget import plan_budget
from cofre.sampling.generate import LoadedCheckpoint, check_sampling_memory, mean_cost
from cofre.sampling.maskgit import CFG_SCHEDULES, ORDERS, ImageSamplerConfig, MaskGITSampler, reveal_counts
from cofre.sampling.reuse import ReuseConfig
from cofre.sampling.shortcut import check_shortcut_options, shortcut_cost
from cofre.training.shortcut import sampling_precision

BUDGET_DEFINITION = ("transformer-block forward passes per sample: K_pre + N_i K_fp + K_post per step (a plain model: "
                     "its depth); the unconditional pass of classifier-free guidance runs on the same batch and is not "
                     "counted twice")
MIN_GRID_CELL = 64  # grid.png upscales (nearest) small images to at least this many pixels a side


@dataclass
class ImageSampleSettings:
    """The choices `cofre sample` exposes for image runs; written into the manifest."""

    budget: int | None  # None: with a shortcut, B full steps at the default cost
    steps: int | None = None
    schedule: str = "decreasing"
    reuse: str = "3sr"
    gamma_mask_min: float = 0.75
    gamma_mask_max: float = 0.90
    gamma_changed_min: float = 0.2
    gamma_changed_max: float = 0.2
    num_samples: int = 16
    batch_size: int = 16
    seed: int = 1
    classes: list[str] | None = None  # class indices or names, cycled over the samples; None: uniformly random
    order: str = "halton"
    rotate: bool = False
    temperature: float = 1.0
    temperature_end: float = 1.0
    cfg: float = 0.0
    cfg_schedule: str = "constant"
    confidence_noise: float = 4.5
    ema: bool = True
    tol: float | None = None
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    shortcut: str | None = None  # MIGM-Shortcut run: S replaces the full model on all but --full-steps of --steps
    full_steps: int | None = None


@dataclass
class ImageSampleResult:
    out: str
    grid: str
    manifest: str
    num_samples: int
    budget: int
    steps: int
    iterations: list[int]
    reveal_counts: list[int]
    blocks_spent: list[int]  # per batch, per sample
    wall_time_s: float
    labels: list[int] = field(default_factory=list)
    shortcut: dict[str, Any] | None = None  # the shortcut's weights and cost (full-model blocks + S's FLOPs in blocks)


def validate_image_settings(settings: ImageSampleSettings) -> None:
    """Every setting in range, before a checkpoint is read."""
    check_range("--budget", settings.budget, 1, MAX_BUDGET)
    check_range("--steps", settings.steps, 1, MAX_BUDGET)
    check_range("--num-samples", settings.num_samples, 1, MAX_COUNT)
    check_range("--batch-size", settings.batch_size, 1, MAX_COUNT)
    check_range("--seed", settings.seed, 0, MAX_SEED)
    resolve_precision(settings.precision, torch.device("cpu"))
    for option in ("gamma_mask_min", "gamma_mask_max", "gamma_changed_min", "gamma_changed_max"):
        check_range(f"--{option.replace('_', '-')}", getattr(settings, option), 0.0, 1.0)
    if settings.order not in ORDERS:
        raise CofreError(f"--order must be one of {', '.join(ORDERS)}, got '{settings.order}'")
    if settings.cfg_schedule not in CFG_SCHEDULES:
        raise CofreError(f"--cfg-schedule must be one of {', '.join(CFG_SCHEDULES)}, got '{settings.cfg_schedule}'")
    for option in ("temperature", "temperature_end"):
        value = getattr(settings, option)
        if not 0 < value < float("inf"):
            raise CofreError(f"--{option.replace('_', '-')} must be a positive number, got {value}")
    check_range("--cfg", settings.cfg, 0.0, 100.0)
    check_range("--confidence-noise", settings.confidence_noise, 0.0, 100.0)
    if settings.tol is not None and not 0 < settings.tol < float("inf"):
        raise CofreError(f"--tol must be a positive number, got {settings.tol}")
    check_shortcut_options(settings.shortcut, settings.steps, settings.full_steps, settings.budget)


def class_labels(chosen: list[str] | None, names: list[str], n: int, generator: torch.Generator) -> list[int]:
    """Labels of `n` samples: the chosen classes (indices or names) cycled, or uniformly random ones."""
    if chosen is None:
        return torch.randint(0, len(names), (n,), generator=generator).tolist()
    indices = []
    for item in chosen:
        if item.isdigit() and int(item) < len(names):
            indices.append(int(item))
        elif item in names:
            indices.append(names.index(item))
        else:
            raise CofreError(f"--classes: unknown class '{item}'; the model has classes 0..{len(names) - 1}: "
                             + ", ".join(names))
    if not indices:
        raise CofreError("--classes names no class")
    return [indices[i % len(indices)] for i in range(n)]


def check_image_checkpoint(ckpt: LoadedCheckpoint) -> None:
    if ckpt.recipe.model.modality != "image":
        raise CofreError(f"{ckpt.folder} is a text model; the image sampler needs an image (MaskGIT) checkpoint")


def build_image_sampler(ckpt: LoadedCheckpoint, settings: ImageSampleSettings, grid: tuple[int, int],
                        trace: bool = False) -> MaskGITSampler:
    """The sampler `settings` describe, for this image checkpoint (budget plan and reveal counts checked here)."""
    check_image_checkpoint(ckpt)
    validate_image_settings(settings)
    model_cfg = ckpt.recipe.model
    cells, size = grid[0] * grid[1], ckpt.recipe.data.image_size
    check_sampling_memory(model_cfg, cells + model_cfg.registers, settings.batch_size, settings.num_samples,
                          ckpt.device, kept_per_sample=4 * size * size + 100 * cells, passes=2 if settings.cfg > 0 else 1)
    hook = None
    if settings.shortcut is not None and settings.steps is not None and settings.full_steps is not None:
        from cofre.training.shortcut import shortcut_steps

        plan, hook = shortcut_steps(ckpt, Path(settings.shortcut), settings.steps, settings.full_steps,
                                    settings.budget, settings.schedule)
    else:
        plan = plan_budget(model_cfg, settings.budget or 0, settings.steps, settings.schedule)
    cells = grid[0] * grid[1]
    if plan.steps > cells:
        raise CofreError(f"budget {settings.budget} means {plan.steps} steps, but a {grid[0]}x{grid[1]} grid has only "
                         f"{cells} cells to reveal (one per step at least); use a smaller budget or fewer --steps")
    reveal_counts(plan.steps, cells)
    reuse = ReuseConfig(settings.reuse, settings.gamma_mask_min, settings.gamma_mask_max, settings.gamma_changed_min,
                        settings.gamma_changed_max)
    config = ImageSamplerConfig(order=settings.order, rotate=settings.rotate, temperature=settings.temperature,
                                temperature_end=settings.temperature_end, cfg=settings.cfg,
                                cfg_schedule=settings.cfg_schedule, confidence_noise=settings.confidence_noise,
                                reuse=reuse, tol=settings.tol, trace=trace,
                                precision=sampling_precision(settings.precision, ckpt.device, settings.shortcut))
    return MaskGITSampler(ckpt.model, plan, grid, config, hook=hook)


def sample_tag(settings: ImageSampleSettings, checkpoint: dict[str, Any], shortcut_sha256: str | None = None) -> str:
    identity = {"settings": dataclasses.asdict(settings), "weights": checkpoint["sha256"]}
    if shortcut_sha256 is not None:  # a retrained shortcut at the same path draws new samples
        identity["shortcut"] = shortcut_sha256
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
    return (f"step{checkpoint['step']}-b{settings.budget}-{settings.reuse}-{settings.order}-cfg{settings.cfg:g}"
            f"-seed{settings.seed}-{digest}")


def to_uint8(images: Tensor) -> np.ndarray:
    """[B, C, S, S] floats in [0, 1] -> [B, S, S, C] uint8."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(pixels: np.ndarray, path: Path) -> None:
    """One [S, S, C] uint8 image (C = 1: grey, 3: RGB)."""
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path)


def image_grid(pixels: np.ndarray, columns: int, pad: int = 2) -> np.ndarray:
    """Tile [B, S, S, C] into rows of `columns` with `pad` white pixels between, upscaled to MIN_GRID_CELL."""
    scale = max(1, math.ceil(MIN_GRID_CELL / pixels.shape[1]))
    pixels = pixels.repeat(scale, axis=1).repeat(scale, axis=2)
    b, s, _, c = pixels.shape
    rows = math.ceil(b / columns)
    grid = np.full((rows * (s + pad) + pad, columns * (s + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(b):
        r, col = divmod(i, columns)
        grid[pad + r * (s + pad): pad + r * (s + pad) + s, pad + col * (s + pad): pad + col * (s + pad) + s] = pixels[i]
    return grid


@dataclass
class DrawnImages:
    pixels: np.ndarray  # [N, S, S, C] uint8
    codes: list[list[list[int]]]  # each sample's grid of codes
    blocks_spent: list[int]  # per batch
    traces: list[list[Any]]  # per batch: the steps' records
    costs: list[dict[str, Any]]  # per batch: a shortcut's identity and cost


def draw_images(sampler: MaskGITSampler, tokenizer: Any, labels: list[int], settings: ImageSampleSettings,
                device: torch.device) -> DrawnImages:
    """Images of the classes `labels` in batches of `settings.batch_size`, from one seeded generator, decoded."""
    generator = torch.Generator(device).manual_seed(settings.seed)
    pixels, codes, spent, traces, costs = [], [], [], [], []
    for start in range(0, len(labels), settings.batch_size):
        batch_labels = torch.tensor(labels[start: start + settings.batch_size], device=device)
        batch = sampler.sample(batch_labels, generator)
        grid_codes = batch.tokens.view(-1, *tokenizer.grid)
        pixels.append(to_uint8(tokenizer.decode(grid_codes)))
        codes.extend(grid_codes.tolist())
        spent.append(batch.blocks_spent)
        traces.append(batch.steps)
        if sampler.hook is not None:
            costs.append({**sampler.hook.identity, **shortcut_cost(sampler.hook, sampler.cells, sampler.plan)})  # type: ignore[arg-type]
    return DrawnImages(np.concatenate(pixels), codes, spent, traces, costs)


def sample_images(ckpt: LoadedCheckpoint, settings: ImageSampleSettings, out: Path | None = None,
                  overwrite: bool = False, trace: Path | None = None) -> ImageSampleResult:
    """Sample `settings.num_samples` images into `out` (default `<run>/samples/<tag>/`): one PNG each, grid.png
    (one column per chosen class, when classes are chosen) and manifest.json."""
    from cofre.data.image_tokenizers import load_tokenizer, tokenizer_identity, tokenizer_label
    from cofre.data.images import class_names

    check_image_checkpoint(ckpt)
    validate_image_settings(settings)
    settings = dataclasses.replace(settings, precision=sampling_precision(settings.precision, ckpt.device,
                                                                          settings.shortcut))
    recipe = ckpt.recipe
    tokenizer = load_tokenizer(recipe.data.tokenizer, ckpt.device, image_size=recipe.data.image_size)
    sampler = build_image_sampler(ckpt, settings, tokenizer.grid, trace is not None)
    settings = dataclasses.replace(settings, budget=sampler.plan.budget)  # with a shortcut: the full steps' budget
    names = class_names(recipe.data)
    if len(names) != recipe.model.num_classes:
        raise CofreError(f"the data names {len(names)} classes but the model has {recipe.model.num_classes}")
    shortcut_sha256 = sampler.hook.identity.get("sha256") if sampler.hook is not None else None
    out = out or ckpt.run_root / "samples" / sample_tag(settings, ckpt.identity, shortcut_sha256)
    for path in (out, trace):
        if path is not None and path.exists() and not overwrite:
            raise CofreError(f"{path} exists; pass --overwrite to replace it")
    labels = class_labels(settings.classes, names, settings.num_samples, torch.Generator().manual_seed(settings.seed))
    out.mkdir(parents=True, exist_ok=True)  # the folders exist before anything is drawn
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    drawn = draw_images(sampler, tokenizer, labels, settings, ckpt.device)
    wall = time.perf_counter() - started
    images, codes, spent, traces, costs = drawn.pixels, drawn.codes, drawn.blocks_spent, drawn.traces, drawn.costs
    for old in [*out.glob("sample-*.png"), out / "grid.png", out / "manifest.json"]:  # --overwrite: what we wrote
        old.unlink(missing_ok=True)
    rows = []
    for i, (label, grid_codes) in enumerate(zip(labels, codes)):
        name = f"sample-{i:04d}-class{label}.png"
        save_png(images[i], out / name)
        rows.append({"file": name, "class": label, "class_name": names[label], "codes": grid_codes,
                     "blocks_spent": spent[i // settings.batch_size]})
    distinct = len(set(labels)) if settings.classes is not None else 0
    columns = distinct if 1 < distinct <= 16 else math.ceil(math.sqrt(len(labels)))
    save_png(image_grid(images, columns), out / "grid.png")
    plan = sampler.plan
    manifest = {
        "settings": dataclasses.asdict(settings), "budget_definition": BUDGET_DEFINITION,
        "plan": {"steps": plan.steps, "iterations": plan.iterations, "blocks_per_step": plan.blocks_per_step,
                 "reveal_counts": sampler.counts},
        "blocks_spent_per_batch": spent, "wall_time_s": wall, "checkpoint": ckpt.identity,
        "tokenizer": {"spec": recipe.data.tokenizer, "name": tokenizer.name, "label": tokenizer_label(tokenizer),
                      "codebook_size": tokenizer.codebook_size, "grid": list(tokenizer.grid),
                      "image_size": tokenizer.image_size, **tokenizer_identity(recipe.data.tokenizer)},
        "grid": {"file": "grid.png", "columns": columns, "upscale": max(1, math.ceil(MIN_GRID_CELL / images.shape[1]))},
        "class_names": names, "samples": rows,
        **({"shortcut": mean_cost(costs)} if costs else {}),
    }
    atomic_write_text(out / "manifest.json", json.dumps(manifest, indent=1))
    if trace is not None:
        atomic_write_text(trace, "".join(json.dumps({"batch": b, **dataclasses.asdict(r)}) + "\n"
                                         for b, steps in enumerate(traces) for r in steps))
    return ImageSampleResult(out=str(out), grid=str(out / "grid.png"), manifest=str(out / "manifest.json"),
                             num_samples=len(labels), budget=settings.budget, steps=plan.steps,
                             iterations=plan.iterations, reveal_counts=sampler.counts, blocks_spent=spent,
                             wall_time_s=wall, labels=labels, shortcut=mean_cost(costs) if costs else None)
