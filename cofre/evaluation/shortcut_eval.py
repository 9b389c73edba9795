"""`cofre evaluate RUN --shortcut SHORTCUT_RUN --steps N --full-steps B`: MIGM-Shortcut against the plain sampler.

Three rows on the same seed: vanilla at N steps, vanilla at B steps (the same full-model cost as the shortcut), and
the shortcut at N/B. Each row: cost per sample (full-model block forwards, and the shortcut's FLOPs counted in base
blocks), latency (App. F.11: synchronised, warm-up excluded, mean ± std per batch) and quality: Gen. PPL and entropy
for text, FID through torch-fidelity for images (cofre.evaluation.fid: the extractor, generated and reference counts
written beside the number), and the sample grid. A JSON summary and a PNG (quality against latency) go to the
report folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from cofre.errors import CofreError
from cofre.evaluation.latency import measure_latency
from cofre.evaluation.plotting import pyplot, save_figure
from cofre.precision import resolve_device
from cofre.runs import atomic_write_text, code_version
from cofre.sampling.generate import LoadedCheckpoint, open_checkpoint
from cofre.evaluation.fid import Extractor
from cofre.sampling.shortcut import check_shortcut_options, shortcut_plan
from cofre.training.shortcut import load_shortcut, sampling_precision


@dataclass
class ShortcutEvalSettings:
    steps: int  # N
    full_steps: int  # B
    judge: str | None = None  # text: the judge LM (default gpt2-large); images: FID's extractor (none: no FID)
    genppl_mode: str = "eq4"
    num_samples: int = 16
    batch_size: int = 8
    seed: int = 1
    ema: bool = True
    device: str = "auto"
    precision: str = "auto"  # auto: the shortcut's collection precision, for every row (another is refused)
    latency_warmup: int = 1
    latency_repeats: int = 3  # App. F.11's protocol: 2 + 20 (make's paper targets)
    reference_split: str = "val"  # images: FID's reference images
    reference_images: int = 0  # images: how many (a fixed subset); 0: the whole split


@dataclass
class ShortcutRow:
    label: str
    steps: int
    full_steps: int
    full_blocks: float  # full-model block forwards per sample
    shortcut_blocks: float  # the shortcut's FLOPs per sample, in base blocks
    total_blocks: float
    latency: dict[str, Any]
    quality: dict[str, Any]
    samples: str


@dataclass
class ShortcutEvalSummary:
    run: str
    shortcut: str
    modality: str
    rows: list[ShortcutRow]
    settings: dict[str, Any]
    quality_how: str
    code: str
    summary_path: str = ""
    plot_path: str = ""


def evaluate_shortcut(run: Path, shortcut: Path, settings: ShortcutEvalSettings, report_dir: Path,
                      console: Console | None = None) -> ShortcutEvalSummary:
    """Vanilla N, vanilla B and shortcut N/B on one base run; JSON summary and PNG in `report_dir`."""
    console = console or Console()
    check_shortcut_options(str(shortcut), settings.steps, settings.full_steps, None)  # before anything loads
    if settings.full_steps == settings.steps:
        raise CofreError("--full-steps equals --steps: the shortcut would never run; give B < N")
    if settings.judge is not None and not settings.judge.strip():
        raise CofreError("--judge is empty; leave it out for the modality's default")
    # every row at the precision S's trajectories were collected at ('auto' follows it), recorded in the settings
    settings = dataclasses.replace(settings, precision=sampling_precision(settings.precision,
                                                                          resolve_device(settings.device), str(shortcut)))
    ckpt = open_checkpoint(run, ema=settings.ema, device=settings.device)
    rows_spec = [(f"vanilla N={settings.steps}", settings.steps, settings.steps, None),
                 (f"vanilla N={settings.full_steps}", settings.full_steps, settings.full_steps, None),
                 (f"shortcut N={settings.steps}/B={settings.full_steps}", settings.steps, settings.full_steps, shortcut)]
    image = ckpt.recipe.model.modality == "image"
    # a shortcut of another base, or a judge that does not load, fails before anything is sampled
    trained = load_shortcut(shortcut, ckpt.model, ckpt.identity["sha256"])[1]
    judge = extractor = None
    if not image:
        from cofre.evaluation.judge import load_judge

        judge = load_judge(settings.judge or "gpt2-large", ckpt.device)
    elif settings.judge:
        from cofre.data.packing import cache_root
        from cofre.evaluation.fid import resolve_extractor

        extractor = resolve_extractor(settings.judge, cache_root(ckpt.recipe.data) / "fidelity", None,
                                      ckpt.recipe.data.image_size)
    rows = []
    for label, steps, full, path in rows_spec:
        console.print(f"[bold]{label}[/]: sampling {settings.num_samples}")
        if image:  # guided as the trajectories S learned from were
            rows.append(_image_row(ckpt, label, steps, full, path, settings, report_dir, trained.collect.cfg, extractor))
        else:
            rows.append(_text_row(ckpt, label, steps, full, path, settings, judge))
    if not image:
        how = (f"Gen. PPL (Eq. 4, judge {settings.judge or 'gpt2-large'}, mode {settings.genppl_mode}) and unigram "
               f"entropy of {settings.num_samples} samples")
    elif settings.judge:
        how = (f"FID (torch-fidelity, extractor {rows[0].quality['fid']['extractor']}) of {settings.num_samples} "
               f"generated images against {rows[0].quality['fid']['reference_images']} {settings.reference_split} images")
    else:
        how = "none: no --judge named an image feature extractor; see the sample grids"
    summary = ShortcutEvalSummary(run=str(run), shortcut=str(shortcut), modality=ckpt.recipe.model.modality, rows=rows,
                                  settings=dataclasses.asdict(settings), quality_how=how, code=code_version())
    key = hashlib.sha1(json.dumps([str(run), str(shortcut), summary.settings], sort_keys=True).encode()).hexdigest()[:8]
    summary.summary_path = str(report_dir / f"shortcut-{key}.json")
    summary.plot_path = str(report_dir / f"shortcut-{key}.png")
    plot_shortcut(summary, Path(summary.plot_path))
    atomic_write_text(Path(summary.summary_path), json.dumps(dataclasses.asdict(summary), indent=2))
    return summary


def _cost(ckpt: LoadedCheckpoint, steps: int, result_shortcut: dict[str, Any] | None) -> tuple[float, float]:
    if result_shortcut is not None:
        return result_shortcut["full_blocks"], result_shortcut["shortcut_blocks"]
    return float(sum(shortcut_plan(ckpt.recipe.model, steps, steps, None, "decreasing").blocks_per_step)), 0.0


def _text_row(ckpt: LoadedCheckpoint, label: str, steps: int, full: int, path: Path | None,
              settings: ShortcutEvalSettings, judge: Any) -> ShortcutRow:
    from cofre.evaluation.entropy import unigram_entropy
    from cofre.evaluation.genppl import generative_perplexity
    from cofre.sampling.generate import SampleSettings, build_sampler, sample_checkpoint

    budget = None if path is not None else shortcut_plan(ckpt.recipe.model, steps, steps, None, "decreasing").budget
    sample_settings = SampleSettings(budget=budget, steps=steps, num_samples=settings.num_samples,
                                     batch_size=settings.batch_size, seed=settings.seed, ema=settings.ema,
                                     device=settings.device, precision=settings.precision,
                                     shortcut=str(path) if path is not None else None,
                                     full_steps=full if path is not None else None)
    result = sample_checkpoint(ckpt, sample_settings, if_exists="reuse", show_progress=False)
    genppl = generative_perplexity(result.texts, judge, batch_size=settings.batch_size, mode=settings.genppl_mode)
    quality = {"genppl": dataclasses.asdict(genppl), "entropy": unigram_entropy(result.ids)}
    sampler = build_sampler(ckpt, sample_settings)
    generator = torch.Generator(ckpt.device).manual_seed(settings.seed)
    latency = measure_latency(lambda: sampler.sample(settings.batch_size, generator), settings.batch_size,
                              sampler.cfg.length, ckpt.device, sampler.cfg.precision, settings.latency_warmup,
                              settings.latency_repeats)
    full_blocks, shortcut_blocks = _cost(ckpt, steps, result.shortcut)
    return ShortcutRow(label=label, steps=steps, full_steps=full, full_blocks=full_blocks,
                       shortcut_blocks=shortcut_blocks, total_blocks=full_blocks + shortcut_blocks,
                       latency=dataclasses.asdict(latency), quality=quality, samples=result.out)


def _image_row(ckpt: LoadedCheckpoint, label: str, steps: int, full: int, path: Path | None,
               settings: ShortcutEvalSettings, report_dir: Path, cfg: float, extractor: Extractor | None) -> ShortcutRow:
    from cofre.data.image_tokenizers import load_tokenizer
    from cofre.sampling.generate_images import ImageSampleSettings, build_image_sampler, sample_images

    budget = None if path is not None else shortcut_plan(ckpt.recipe.model, steps, steps, None, "decreasing").budget
    classes = [str(c) for c in range(ckpt.recipe.model.num_classes)]
    sample_settings = ImageSampleSettings(budget=budget, steps=steps, num_samples=settings.num_samples,
                                          batch_size=settings.batch_size, seed=settings.seed, classes=classes, cfg=cfg,
                                          ema=settings.ema, device=settings.device, precision=settings.precision,
                                          shortcut=str(path) if path is not None else None,
                                          full_steps=full if path is not None else None)
    out = report_dir / label.replace(" ", "-").replace("/", "-").replace("=", "")
    result = sample_images(ckpt, sample_settings, out, overwrite=True)
    data = ckpt.recipe.data
    grid = load_tokenizer(data.tokenizer, ckpt.device, image_size=data.image_size).grid
    sampler = build_image_sampler(ckpt, sample_settings, grid)
    generator = torch.Generator(ckpt.device).manual_seed(settings.seed)
    labels = torch.arange(settings.batch_size, device=ckpt.device) % ckpt.recipe.model.num_classes
    latency = measure_latency(lambda: sampler.sample(labels, generator), settings.batch_size, grid[0] * grid[1],
                              ckpt.device, sampler.cfg.precision, settings.latency_warmup, settings.latency_repeats)
    full_blocks, shortcut_blocks = _cost(ckpt, steps, result.shortcut)
    return ShortcutRow(label=label, steps=steps, full_steps=full, full_blocks=full_blocks,
                       shortcut_blocks=shortcut_blocks, total_blocks=full_blocks + shortcut_blocks,
                       latency=dataclasses.asdict(latency),
                       quality={"fid": _fid(ckpt, out, settings, cfg, steps, extractor) if extractor else None,
                                "grid": result.grid}, samples=result.out)


def _fid(ckpt: LoadedCheckpoint, out: Path, settings: ShortcutEvalSettings, cfg: float, steps: int,
         extractor: Extractor) -> dict[str, Any]:
    """FID of a row's PNGs against held-out images, with how it was computed (cofre.evaluation.fid)."""
    from cofre.data.packing import cache_root
    from cofre.evaluation.fid import RGBImages, fidelity_metrics, read_png_folder, reference_images

    data = ckpt.recipe.data
    cache = cache_root(data) / "fidelity"
    reference = reference_images(data, settings.reference_split, settings.reference_images, extractor)
    images = read_png_folder(out)
    scores = fidelity_metrics(RGBImages(images), reference.images, extractor, ["fid"], cache, reference.cache_name,
                              batch_size=max(settings.batch_size, 64), device=ckpt.device)
    return {**scores["fid"], **extractor.describe(), "generated_images": len(images),
            "reference_images": reference.count, "reference_split": reference.split, "cfg": cfg, "steps": steps,
            "seed": settings.seed, "computed_by": "torch-fidelity"}


def shortcut_table(summary: ShortcutEvalSummary) -> Table:
    """Quality and latency of vanilla N, vanilla B and the shortcut N/B."""
    text = summary.modality == "text"
    table = Table(title=f"MIGM-Shortcut on {Path(summary.run).name}: quality ({summary.quality_how}) and latency, "
                        f"every row at {summary.settings['precision']} (the shortcut's collection precision)")
    columns = ["sampler", "full-model blocks", "shortcut (blocks of FLOPs)", "total blocks", "latency s/batch"]
    for column in columns + (["Gen. PPL", "entropy"] if text else ["FID", "sample grid"]):
        table.add_column(column, justify="left" if column in ("sampler", "sample grid") else "right")
    for row in summary.rows:
        latency = f"{row.latency['mean_s']:.3f} ± {row.latency['std_s']:.3f}"
        cells = [row.label, f"{row.full_blocks:g}", f"{row.shortcut_blocks:.2f}", f"{row.total_blocks:.2f}", latency]
        if text:
            cells += [f"{row.quality['genppl']['value']:.2f}", f"{row.quality['entropy']:.3f}"]
        else:
            fid = row.quality["fid"]
            cells += [f"{fid['value']:.2f}" if fid else "-", row.quality["grid"]]
        table.add_row(*cells)
    return table


def plot_shortcut(summary: ShortcutEvalSummary, path: Path) -> None:
    """Gen. PPL (text) or FID (images) against latency, one point a row."""
    plt = pyplot()

    text = summary.modality == "text"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for row in summary.rows:
        y = row.quality["genppl"]["value"] if text else row.quality["fid"]["value"] if row.quality["fid"] else row.total_blocks
        ax.errorbar(row.latency["mean_s"], y, xerr=row.latency["std_s"], fmt="o", capsize=3, label=row.label)
        ax.annotate(row.label, (row.latency["mean_s"], y), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel(f"latency per batch of {summary.settings['batch_size']} (s)")
    fid = None if text else summary.rows[0].quality["fid"]
    ax.set_ylabel(f"Gen. PPL ({summary.settings['judge'] or 'gpt2-large'}) - lower is better" if text
                  else f"FID ({fid['extractor']}) - lower is better" if fid
                  else "blocks per sample (full + shortcut FLOPs)")
    ax.set_title(f"MIGM-Shortcut, {Path(summary.run).name}", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)
