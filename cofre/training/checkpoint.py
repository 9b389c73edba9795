"""Checkpoints (DESIGN.md §4, §7): safetensors weights + config.json, and a train_state/ for exact resume.

A checkpoint folder is written under a temporary name and renamed when complete; `checkpoints/latest`
names the newest complete one. Nothing is ever unpickled: weights are safetensors, and the train state
is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from cofre.config import Recipe, recipe_from_dict, recipe_to_dict
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.runs import atomic_write_text

MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
CONFIG_FILE = "config.json"
STATE_DIR = "train_state"


def step_name(step: int) -> str:
    return f"step-{step:09d}"


def staging_dir(checkpoints: Path, step: int) -> Path:
    """The temporary folder a checkpoint is written into before it is published."""
    return checkpoints / f".tmp-{step_name(step)}"


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def write_checkpoint_files(
    folder: Path, model: nn.Module, ema: dict[str, torch.Tensor] | None, recipe: Recipe, train_state: dict[str, Any]
) -> None:
    """Write weights, config and the rank-independent train state into `folder` (main process)."""
    (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
    save_weights(model, folder / MODEL_FILE)
    if ema is not None:
        save_file({k: v.contiguous().cpu() for k, v in ema.items()}, str(folder / EMA_FILE))
    (folder / CONFIG_FILE).write_text(json.dumps(recipe_to_dict(recipe), indent=2))
    for name, value in train_state.items():
        torch.save(value, folder / STATE_DIR / f"{name}.pt")


def publish_checkpoint(checkpoints: Path, step: int, keep_last: int) -> Path:
    """Rename the finished staging folder into place, point `latest` at it, prune old ones."""
    final = checkpoints / step_name(step)
    if final.exists():  # a previous attempt published this step already: replace it whole
        shutil.rmtree(final)
    staging_dir(checkpoints, step).rename(final)
    atomic_write_text(checkpoints / "latest", final.name + "\n")
    selected = checkpoints / "selected"
    keep = {selected.read_text().strip()} if selected.is_file() else set()
    published = sorted(p for p in checkpoints.glob("step-*") if p.is_dir())
    for old in published[:-keep_last] if keep_last > 0 else []:
        if old.name not in keep:
            shutil.rmtree(old)
    return final


def mark_selected(checkpoints: Path, folder: Path) -> None:
    """Mark the checkpoint a run should be used at (App. F.7); it is never pruned, and a run resolves to it."""
    atomic_write_text(checkpoints / "selected", folder.name + "\n")


def run_root(folder: Path) -> Path:
    """The run directory of a run's checkpoint folder, else the folder itself."""
    return folder.parent.parent if folder.parent.name == "checkpoints" else folder


def load_train_state(folder: Path, name: str) -> Any:
    return torch.load(folder / STATE_DIR / f"{name}.pt", weights_only=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run directory: its selected checkpoint if it has one, else its latest."""
    path = Path(path)
    if (path / CONFIG_FILE).is_file():
        return path
    for pointer in (path / "checkpoints" / "selected", path / "checkpoints" / "latest"):
        if pointer.is_file():
            return path / "checkpoints" / pointer.read_text().strip()
    raise CofreError(f"{path} is neither a checkpoint folder (with {CONFIG_FILE}) nor a run with checkpoints")


def load_model(path: str | Path, ema: bool = True) -> tuple[Denoiser, Recipe]:
    """Build the denoiser from a checkpoint (or run) with one call: config.json + (EMA) safetensors."""
    folder = resolve_checkpoint(path)
    recipe = checkpoint_recipe(folder)
    model = Denoiser(recipe.model)
    weights = folder / (EMA_FILE if ema and (folder / EMA_FILE).is_file() else MODEL_FILE)
    model.load_state_dict(load_file(str(weights)))
    return model, recipe


def checkpoint_recipe(path: str | Path) -> Recipe:
    """The recipe a checkpoint (or a run's latest checkpoint) was trained with."""
    return recipe_from_dict(json.loads((resolve_checkpoint(path) / CONFIG_FILE).read_text()))
