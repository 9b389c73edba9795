"""The image half of `cofre evaluate`: one (run, reuse, budget) cell's images drawn (or read back), FID and IS
computed by torch-fidelity with the named extractor (App. E.3), latency and images/s timed (App. E.4, F.11).

The cell loop, per-cell JSON, summary, table and plot are `cofre.evaluation.evaluate`'s, shared with text.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cofre.data.images import SPLITS
from cofre.errors import CofreError
from cofre.evaluation.fid import Extractor, Reference, RGBImages, fidelity_metrics, read_png_folder, reference_images, \
    resolve_extractor
from cofre.evaluation.latency import measure_latency
from cofre.sampling.generate import LoadedCheckpoint
from cofre.sampling.generate_images import BUDGET_DEFINITION, ImageSampleSettings, build_image_sampler, sample_images, \
    sample_tag
from cofre.training.checkpoint import CONFIG_FILE, checkpoint_recipe, run_root

if TYPE_CHECKING:
    from cofre.evaluation.evaluate import CellSamples, EvalSettings

IMAGE_METRICS = ("fid", "isc", "latency")
IMAGE_JUDGE = "inception"


def check_image_settings(settings: EvalSettings) -> None:
    if settings.reference_split not in SPLITS:
        raise CofreError(f"--reference-split must be one of {', '.join(SPLITS)}, got '{settings.reference_split}'")
    if settings.reference_images < 0:
        raise CofreError(f"--reference-images must be >= 0 (0: the whole split), got {settings.reference_images}")
    if not 0 <= settings.cfg <= 100:
        raise CofreError(f"--cfg must be in [0, 100], got {settings.cfg}")


class ImageCells:
    """Draws and scores image cells; the extractor and each reference set are resolved once per evaluation."""

    def __init__(self, settings: EvalSettings) -> None:
        self.settings = settings
        self.extractor: Extractor | None = None
        self.references: dict[str, Reference] = {}

    def _judge(self, ckpt: LoadedCheckpoint) -> tuple[Extractor, Reference, Path]:
        from cofre.data.images import dataset_identity
        from cofre.data.packing import cache_root

        data = ckpt.recipe.data
        cache = cache_root(data) / "fidelity"
        if self.extractor is None:
            self.extractor = resolve_extractor(self.settings.judge or IMAGE_JUDGE, cache, self.settings.inception_weights,
                                               data.image_size)
        key = json.dumps(dataset_identity(data), sort_keys=True)
        if key not in self.references:
            self.references[key] = reference_images(data, self.settings.reference_split, self.settings.reference_images,
                                                    self.extractor)
        return self.extractor, self.references[key], cache

    def sample_settings(self, reuse: str, budget: int, precision: str) -> ImageSampleSettings:
        s = self.settings
        return ImageSampleSettings(budget=budget, steps=s.steps, schedule=s.schedule, reuse=reuse,
                                   num_samples=s.num_samples, batch_size=s.batch_size, seed=s.seed, cfg=s.cfg, ema=s.ema,
                                   device=s.device, precision=precision, compile=s.compile)

    def draw(self, ckpt: LoadedCheckpoint, settings: ImageSampleSettings) -> tuple[Path, dict[str, Any]]:
        """The cell's sample folder and manifest: read back when a finished folder of identical settings and weights
        exists, else drawn."""
        out = ckpt.run_root / "samples" / sample_tag(settings, ckpt.identity)
        manifest = out / "manifest.json"
        if manifest.is_file():
            old = json.loads(manifest.read_text())
            if old["settings"] == dataclasses.asdict(settings) and old["checkpoint"]["sha256"] == ckpt.identity["sha256"]:
                return out, old
        sample_images(ckpt, settings, out, overwrite=True)  # the tag names these settings: only a stale draw is replaced
        return out, json.loads(manifest.read_text())

    def score(self, ckpt: LoadedCheckpoint, reuse: str, budget: int, precision: str) -> CellSamples:
        from cofre.evaluation.evaluate import CellSamples

        s = self.settings
        settings = self.sample_settings(reuse, budget, precision)
        out, manifest = self.draw(ckpt, settings)
        metrics: dict[str, Any] = {}
        wanted = [m for m in ("fid", "isc") if m in s.metrics]
        if wanted:
            extractor, reference, cache = self._judge(ckpt)
            images = read_png_folder(out)
            scores = fidelity_metrics(RGBImages(images), reference.images, extractor, wanted, cache, reference.cache_name,
                                      batch_size=max(s.batch_size, 64), device=ckpt.device)
            how = {**extractor.describe(), "generated_images": len(images), "reference_images": reference.count,
                   "reference_split": reference.split, "cfg": s.cfg, "steps": manifest["plan"]["steps"],
                   "seed": s.seed, "computed_by": "torch-fidelity"}
            metrics = {name: {**value, **how} for name, value in scores.items()}
        if "latency" in s.metrics:
            from cofre.data.image_tokenizers import load_tokenizer

            data = ckpt.recipe.data
            grid = load_tokenizer(data.tokenizer, ckpt.device, image_size=data.image_size).grid
            sampler = build_image_sampler(ckpt, settings, grid)
            generator = torch.Generator(ckpt.device).manual_seed(s.seed)
            labels = torch.randint(0, ckpt.recipe.model.num_classes, (s.batch_size,), generator=torch.Generator()
                                   .manual_seed(s.seed)).to(ckpt.device)
            latency = measure_latency(lambda: sampler.sample(labels, generator), s.batch_size, sampler.cells,
                                      ckpt.device, precision, s.latency_warmup, s.latency_repeats)
            metrics["latency"] = {**dataclasses.asdict(latency), "images_per_s": s.batch_size / latency.mean_s,
                                  "timed": "codes from fully masked to final (VQ decoding excluded)"}
        record = {"blocks_spent": manifest["blocks_spent_per_batch"], "steps": manifest["plan"]["steps"],
                  "iterations": manifest["plan"]["iterations"], "num_samples": len(manifest["samples"]),
                  "sample_settings": manifest["settings"], "budget_definition": BUDGET_DEFINITION, "cfg": s.cfg}
        judged = "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self.extractor.name) if wanted and self.extractor else ""
        return CellSamples(metrics=metrics, out=str(out), tag=out.name + judged, budget=budget, record=record)  # one per judge


def training_cost(run: Path, init_from: str = "", seen: frozenset[Path] = frozenset()) -> dict[str, Any]:
    """Table 15's header for one run: training time and peak memory from its train_result.json (empty when absent).
    A stage initialised from another run (`init_from`: CoFRe's consistency stage) costs its parent's time plus its
    own; a parent that is not on disk leaves the total a lower bound. The parent counts in full, also when the stage
    started from one of its earlier checkpoints."""
    try:
        result = json.loads((run / "train_result.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    own = result.get("train_time_s", result.get("elapsed_s"))  # older runs: the last call's time
    cost = {"train_time_s": own, "train_time_complete": bool(result.get("train_time_complete", "train_time_s" in result)),
            **{key: result.get(key) for key in ("final_step", "peak_memory_gib", "peak_memory_of")}}
    if not init_from or own is None:
        return cost
    folder = Path(init_from)
    parent = run_root(folder)
    known = (folder / CONFIG_FILE).is_file() and parent.resolve() not in seen
    above = training_cost(parent, checkpoint_recipe(folder).init_from, seen | {run.resolve()}) if known else {}
    cost.update(parent=parent.name, stage_time_s=own)
    if not above.get("train_time_s"):
        return {**cost, "train_time_complete": False, "parent_time_unknown": True}
    return {**cost, "train_time_s": above["train_time_s"] + own,
            "train_time_complete": cost["train_time_complete"] and above["train_time_complete"],
            "peak_memory_gib": max(above.get("peak_memory_gib") or 0, cost.get("peak_memory_gib") or 0) or None}
