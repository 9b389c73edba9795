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

from cofre.checks import MAX_BUDGET, check_range
from cofre.data.images import SPLITS
from cofre.errors import CofreError
from cofre.evaluation.fid import Extractor, Reference, RGBImages, fidelity_metrics, read_png_folder, reference_images, \
    require_isc, resolve_extractor
from cofre.evaluation.latency import measure_latency
from cofre.sampling.generate import LoadedCheckpoint
from cofre.sampling.generate_images import BUDGET_DEFINITION, ImageSampleSettings, build_image_sampler, sample_images, \
    sample_tag
from cofre.runs import read_json_file
from cofre.training.checkpoint import CONFIG_FILE, checkpoint_recipe, run_root

if TYPE_CHECKING:
    from cofre.config import DataConfig
    from cofre.evaluation.evaluate import CellSamples, EvalSettings

IMAGE_METRICS = ("fid", "isc", "latency")
IMAGE_JUDGE = "inception"


def check_image_settings(settings: EvalSettings) -> None:
    if settings.reference_split not in SPLITS:
        raise CofreError(f"--reference-split must be one of {', '.join(SPLITS)}, got '{settings.reference_split}'")
    if settings.reference_images < 0:
        raise CofreError(f"--reference-images must be >= 0 (0: the whole split), got {settings.reference_images}")
    if not settings.cfg:
        raise CofreError("give at least one --cfg value")
    for w in settings.cfg:
        if not 0 <= w <= 100:
            raise CofreError(f"--cfg must be in [0, 100], got {w:g}")
    if len(settings.cfg) > 1 and settings.cfg_select is None:
        raise CofreError("several --cfg values need --cfg-select BUDGET: the budget at which each model's w is chosen")
    if settings.cfg_select is not None and len(settings.cfg) < 2:
        raise CofreError("--cfg-select chooses among several --cfg values (e.g. --cfg 0,0.5,1,1.5); give them")
    check_range("--cfg-select", settings.cfg_select, 1, MAX_BUDGET)


class ImageCells:
    """Draws and scores image cells. The extractor is resolved before anything is sampled (IS asked of weights that
    cannot give it stops the evaluation there); each reference set once per evaluation."""

    def __init__(self, settings: EvalSettings, data: DataConfig, isc_asked: bool) -> None:
        from cofre.data.packing import cache_root

        self.settings = settings
        self.cache = cache_root(data) / "fidelity"
        if isc_asked:
            require_isc(settings.judge or IMAGE_JUDGE, settings.inception_weights)
        self.extractor: Extractor | None = None
        if {"fid", "isc"} & set(settings.metrics or []) or settings.cfg_select is not None:
            self.extractor = resolve_extractor(settings.judge or IMAGE_JUDGE, self.cache, settings.inception_weights,
                                               data.image_size)
        self.references: dict[str, Reference] = {}

    @property
    def judge_name(self) -> str:
        return self.extractor.name if self.extractor is not None else str(self.settings.judge)

    def _reference(self, data: DataConfig, extractor: Extractor) -> Reference:
        from cofre.data.images import dataset_identity

        key = json.dumps(dataset_identity(data), sort_keys=True)
        if key not in self.references:
            self.references[key] = reference_images(data, self.settings.reference_split, self.settings.reference_images,
                                                    extractor)
        return self.references[key]

    def sample_settings(self, reuse: str, budget: int, precision: str, cfg: float) -> ImageSampleSettings:
        s = self.settings
        return ImageSampleSettings(budget=budget, steps=s.steps, schedule=s.schedule, reuse=reuse,
                                   num_samples=s.num_samples, batch_size=s.batch_size, seed=s.seed, cfg=cfg, ema=s.ema,
                                   device=s.device, precision=precision, compile=s.compile)

    def draw(self, ckpt: LoadedCheckpoint, settings: ImageSampleSettings) -> tuple[Path, dict[str, Any]]:
        """The cell's sample folder and manifest: read back when a finished folder of identical settings and weights
        exists, else drawn."""
        out = ckpt.run_root / "samples" / sample_tag(settings, ckpt.identity)
        manifest = out / "manifest.json"
        if manifest.is_file():
            old = read_json_file(manifest, "sample manifest", "remove its folder to draw the cell again",
                                 {"settings": dict, "checkpoint": dict, "samples": list, "plan": dict})
            if old["settings"] == dataclasses.asdict(settings) and old["checkpoint"].get("sha256") == ckpt.identity["sha256"]:
                return out, old
        sample_images(ckpt, settings, out, overwrite=True)  # the tag names these settings: only a stale draw is replaced
        return out, json.loads(manifest.read_text())

    def score(self, ckpt: LoadedCheckpoint, reuse: str, budget: int, precision: str, cfg: float,
              metrics: list[str] | None = None) -> CellSamples:
        """One cell at guidance weight `cfg`, scored with `metrics` (default: the evaluation's)."""
        from cofre.evaluation.evaluate import CellSamples

        s = self.settings
        asked = s.metrics if metrics is None else metrics
        settings = self.sample_settings(reuse, budget, precision, cfg)
        out, manifest = self.draw(ckpt, settings)
        scored: dict[str, Any] = {}
        wanted = [m for m in ("fid", "isc") if m in asked]
        tokenizer = manifest["tokenizer"].get("label", manifest["tokenizer"]["name"])  # older manifests: the name
        if wanted:
            assert self.extractor is not None
            reference = self._reference(ckpt.recipe.data, self.extractor)
            images = read_png_folder(out)
            scores = fidelity_metrics(RGBImages(images), reference.images, self.extractor, wanted, self.cache,
                                      reference.cache_name, batch_size=max(s.batch_size, 64), device=ckpt.device)
            how = {**self.extractor.describe(), "generated_images": len(images), "reference_images": reference.count,
                   "reference_split": reference.split, "cfg": cfg, "steps": manifest["plan"]["steps"],
                   "seed": s.seed, "tokenizer": tokenizer, "weights": "ema" if ckpt.identity["ema"] else "raw",
                   "computed_by": "torch-fidelity"}
            scored = {name: {**value, **how} for name, value in scores.items()}
        if "latency" in asked:
            from cofre.data.image_tokenizers import load_tokenizer

            data = ckpt.recipe.data
            grid = load_tokenizer(data.tokenizer, ckpt.device, image_size=data.image_size).grid
            sampler = build_image_sampler(ckpt, settings, grid)
            generator = torch.Generator(ckpt.device).manual_seed(s.seed)
            labels = torch.randint(0, ckpt.recipe.model.num_classes, (s.batch_size,), generator=torch.Generator()
                                   .manual_seed(s.seed)).to(ckpt.device)
            latency = measure_latency(lambda: sampler.sample(labels, generator), s.batch_size, sampler.cells,
                                      ckpt.device, precision, s.latency_warmup, s.latency_repeats)
            scored["latency"] = {**dataclasses.asdict(latency), "images_per_s": s.batch_size / latency.mean_s,
                                 "timed": "codes from fully masked to final (VQ decoding excluded)"}
        record = {"blocks_spent": manifest["blocks_spent_per_batch"], "steps": manifest["plan"]["steps"],
                  "iterations": manifest["plan"]["iterations"], "num_samples": len(manifest["samples"]),
                  "sample_settings": manifest["settings"], "budget_definition": BUDGET_DEFINITION, "cfg": cfg,
                  "tokenizer": manifest["tokenizer"]}
        judged = "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", self.extractor.name) if wanted and self.extractor else ""
        return CellSamples(metrics=scored, out=str(out), tag=out.name + judged, budget=budget, record=record)  # one per judge


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
