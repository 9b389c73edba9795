"""Train cofre's VQ-VAE tokenizer (`cofre train recipes/tiny-vq.yaml`): one process, a standard run directory.

Loss per batch: ||x - D(z_q)||^2 + beta ||z - sg[e]||^2 (VQ-VAE Eq. 3; the codebook term is replaced by the
EMA update, App. A.1). Images are sampled uniformly with replacement, from a generator seeded by
(seed, step), so a resumed run draws the batches an uninterrupted one would have. Held-out PSNR is measured
on the val split through the tokenizer's own round trip: encode to codes, decode the codes.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import Tensor

from cofre.config import dump_recipe, recipe_to_dict
from cofre.data.image_tokenizers.recipe import VQRecipe, is_vq_recipe, load_vq_recipe
from cofre.data.image_tokenizers.vq import VQVAE
from cofre.data.images import load_images
from cofre.errors import CofreError
from cofre.runs import RunDir, TrainClock, atomic_write_text, time_before
from cofre.training.checkpoint import (MODEL_FILE, load_train_state, load_weights_into, publish_checkpoint,
                                       staging_dir, write_checkpoint_files)
from cofre.training.optim import build_optimizer, build_scheduler, optimizer_step

RESUMABLE = {"trainer.max_steps"}
PSNR_HOW = ("PSNR = 10 log10(1 / MSE) per held-out image on [0, 1] pixels (encode -> codes -> decode, decoded images "
            "clamped to [0, 1], not rounded), averaged over the images; psnr_of_mean_mse uses the MSE over all of them")
RECONSTRUCTIONS = "plots/reconstructions.png"


@dataclass
class VQTrainResult:
    run_dir: str
    start_step: int
    final_step: int
    elapsed_s: float  # training time of this call (excluding data loading and the final evaluation)
    train_time_s: float  # the run's training time over every call that trained it (runs.TrainClock)
    train_time_complete: bool  # False: a lower bound (resumed from a checkpoint that did not record time)
    checkpoint: str
    val_images: int
    psnr: float  # mean per-image PSNR (dB) on held-out images
    psnr_of_mean_mse: float
    codebook_used: float  # fraction of codes the held-out images use
    grid: tuple[int, int]
    codebook_size: int
    reconstructions: str  # PNG: originals (top) over their reconstructions (bottom)
    how: str = PSNR_HOW


def _check_run(run: RunDir, recipe: VQRecipe) -> bool:
    """May `recipe` run in `run`? True when it resumes the VQ run already there (only trainer.max_steps may change)."""
    if run.exists() and not is_vq_recipe(run.recipe_path):
        raise CofreError(f"run directory {run.path} holds a run that is not a VQ tokenizer; choose another --run-dir")
    old = recipe_to_dict(load_vq_recipe(run.recipe_path)) if run.exists() else None
    return run.check_values(old, recipe_to_dict(recipe), RESUMABLE)


@torch.no_grad()
def evaluate_vq(model: VQVAE, images: Tensor, batch_size: int = 500) -> dict[str, float]:
    """Held-out PSNR (see PSNR_HOW) and codebook usage of uint8 images [N, C, S, S]."""
    was_training = model.training
    model.eval()
    device = model.quantizer.codebook.device
    per_image, used = [], torch.zeros(model.cfg.codebook_size, dtype=torch.bool)
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float() / 255
        codes = model.encode(x)
        mse = (model.decode(codes) - x).pow(2).flatten(1).mean(1)
        per_image.append(mse.cpu())
        used[codes.flatten().cpu()] = True
    model.train(was_training)
    mse = torch.cat(per_image).double()
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()
    return {"psnr": float(psnr), "psnr_of_mean_mse": float(10 * math.log10(1 / max(float(mse.mean()), 1e-10))),
            "codebook_used": float(used.float().mean())}


def reconstruction_grid(model: VQVAE, images: Tensor, labels: Tensor, path: Path, per_class: int = 2) -> None:
    """A PNG of `per_class` held-out images of each class (top row) over their reconstructions (bottom row)."""
    from PIL import Image

    picks = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in labels.unique()])
    x = images[picks].float() / 255
    with torch.no_grad():
        was_training = model.training
        model.eval()
        device = model.quantizer.codebook.device
        recon = model.decode(model.encode(x.to(device))).cpu()
        model.train(was_training)
    rows = torch.stack([x, recon])  # [2, n, C, S, S]
    two, n, c, s, _ = rows.shape
    scale = max(1, 96 // s)
    tiles = F.interpolate(rows.reshape(-1, c, s, s), scale_factor=scale, mode="nearest")
    s *= scale
    grid = tiles.reshape(two, n, c, s, s).permute(0, 3, 1, 4, 2).reshape(two * s, n * s, c)
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[..., 0] if c == 1 else array).save(path)


def train_vq(recipe: VQRecipe, run_dir: str | Path) -> VQTrainResult:
    """Train (or resume) the VQ tokenizer run in `run_dir` to `recipe.trainer.max_steps`."""
    run = RunDir(run_dir)
    new = not _check_run(run, recipe)
    train_images, _, _ = load_images(recipe.data, "train")
    val_images, val_labels, _ = load_images(recipe.data, "val")
    if train_images.shape[1] != recipe.vq.channels:
        raise CofreError(f"vq.channels is {recipe.vq.channels} but corpus '{recipe.data.corpus}' has "
                         f"{train_images.shape[1]}-channel images")
    run.lock()
    try:
        if new and run.exists():
            raise CofreError(f"another process started a run in {run.path} while this one was starting; rerun to resume it")
        return _fit(run, recipe, train_images, val_images, val_labels)
    finally:
        run.unlock()


def _fit(run: RunDir, recipe: VQRecipe, train_images: Tensor, val_images: Tensor, val_labels: Tensor) -> VQTrainResult:
    t = recipe.trainer
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(t.seed)
    model = VQVAE(recipe.vq).to(device)
    learns = any(True for _ in model.parameters())  # the patch encoder has no network: only the codebook's EMA
    optimizer = build_optimizer(model, recipe.optim) if learns else None
    scheduler = build_scheduler(optimizer, recipe.optim, t.max_steps) if optimizer is not None else None
    latest = run.latest_checkpoint()
    step = 0
    resumed: dict[str, Any] = {}  # the checkpoint's progress record
    if latest is not None:
        load_weights_into(model, latest / MODEL_FILE)
        if optimizer is not None and scheduler is not None:
            optimizer.load_state_dict(load_train_state(latest, "optimizer"))
            scheduler.load_state_dict(load_train_state(latest, "scheduler"))
        resumed = load_train_state(latest, "progress")
        step = int(resumed["step"])
    kept = run.read_metrics()
    atomic_write_text(run.recipe_path, dump_recipe(recipe))  # type: ignore[arg-type]  # any recipe dataclass dumps
    run.clean_temporary_files()
    run.truncate_metrics(step if latest is not None else None, kept)
    start, clock = step, TrainClock(time_before(resumed, run.path, step))
    checkpoint = latest

    def save(step: int) -> Path:
        folder = staging_dir(run.checkpoints, step)
        state: dict[str, object] = {"progress": {"step": step, "train_time_s": clock.total()}}
        if optimizer is not None and scheduler is not None:
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
        write_checkpoint_files(folder, model, None, recipe, state)  # type: ignore[arg-type]  # config.json: the VQ recipe
        return publish_checkpoint(run.checkpoints, step, t.keep_last)

    def validate(step: int) -> dict[str, float]:
        record = evaluate_vq(model, val_images)
        run.append_metrics({"step": step, **{f"val_{k}": v for k, v in record.items()}, "val_images": len(val_images)})
        return record

    model.train()
    progress = Progress(TextColumn("[bold]train vq"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with progress:
        bar = progress.add_task("train", total=t.max_steps, completed=step, status="")
        while step < t.max_steps:
            generator = torch.Generator().manual_seed(t.seed * 1_000_003 + step)
            index = torch.randint(len(train_images), (t.batch_size,), generator=generator)
            torch.manual_seed(t.seed * 7919 + step)  # dead-code restarts draw from here: resumes repeat them
            x = train_images[index].to(device).float() / 255
            recon, codes, commitment = model(x)
            reconstruction = F.mse_loss(recon, x)
            loss = reconstruction + recipe.vq.beta * commitment  # VQ-VAE Eq. 3 (codebook term: EMA, App. A.1)
            if optimizer is not None and scheduler is not None:
                optimizer_step(loss, model, optimizer, scheduler, recipe.optim.grad_clip)
            step += 1
            if not math.isfinite(float(loss.detach())):
                raise CofreError(f"the VQ loss became {float(loss.detach())} at step {step}; lower optim.lr")
            if step % t.log_every == 0 or step == t.max_steps:
                batch_psnr = 10 * math.log10(1 / max(float(reconstruction.detach()), 1e-10))
                record = {"step": step, "loss": float(loss.detach()), "recon_mse": float(reconstruction.detach()),
                          "commitment": float(commitment.detach()), "batch_psnr": batch_psnr,
                          "codes_in_batch": int(codes.unique().numel()), "elapsed_s": clock.elapsed()}
                run.append_metrics(record if scheduler is None else {**record, "lr": scheduler.get_last_lr()[0]})
                progress.update(bar, status=f"mse {float(reconstruction.detach()):.4f} ({batch_psnr:.1f} dB)")
            if step % t.val_every == 0 and step < t.max_steps:
                record = validate(step)
                progress.update(bar, status=f"val PSNR {record['psnr']:.2f} dB")
            if step % t.ckpt_every == 0 or step == t.max_steps:
                checkpoint = save(step)
            progress.update(bar, advance=1)
    elapsed = clock.elapsed()
    final = validate(step) if step > start else evaluate_vq(model, val_images)
    png = run.path / RECONSTRUCTIONS
    reconstruction_grid(model, val_images, val_labels, png)
    result = VQTrainResult(run_dir=str(run.path), start_step=start, final_step=step, elapsed_s=elapsed,
                           train_time_s=clock.total(trained=step > start), train_time_complete=clock.complete,
                           checkpoint=str(checkpoint), val_images=len(val_images), psnr=final["psnr"],
                           psnr_of_mean_mse=final["psnr_of_mean_mse"], codebook_used=final["codebook_used"],
                           grid=recipe.vq.grid, codebook_size=recipe.vq.codebook_size, reconstructions=str(png))
    atomic_write_text(run.path / "train_result.json", json.dumps(dataclasses.asdict(result), indent=2))
    return result


def report_vq(result: VQTrainResult, console: Console) -> None:
    """The summary `cofre train` prints for a VQ run."""
    verb = f"resumed at step {result.start_step}, trained" if result.start_step else "trained"
    console.print(f"{verb} the VQ tokenizer to step {result.final_step} in {result.elapsed_s:.0f}s; "
                  f"checkpoint {result.checkpoint}")
    console.print(f"held-out PSNR {result.psnr:.2f} dB (mean over {result.val_images} val images; "
                  f"{result.psnr_of_mean_mse:.2f} dB from their mean MSE), codebook used {result.codebook_used:.1%} of "
                  f"{result.codebook_size}, grid {result.grid[0]} x {result.grid[1]}")
    console.print(f"reconstructions: {result.reconstructions}; summary: {Path(result.run_dir) / 'train_result.json'}")
