"""Checkpoints (DESIGN.md §4, §7): safetensors weights + config.json, and a train_state/ for exact resume.

A checkpoint folder is written under a temporary name and renamed when complete; `checkpoints/latest`
names the newest complete one. Nothing is ever unpickled: weights are safetensors, and the train state
is read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import pickle
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from cofre.config import Recipe, recipe_from_dict, recipe_to_dict
from cofre.errors import CofreError, os_error_message
from cofre.kinds import DENOISER, require_kind
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
    """Write weights, config and the rank-independent train state into `folder` (main process). A failure
    (a full disk) is one line; the unfinished folder is never published and the next start removes it."""
    with _writing(folder):
        (folder / STATE_DIR).mkdir(parents=True, exist_ok=True)
        save_weights(model, folder / MODEL_FILE)
        if ema is not None:
            save_file({k: v.contiguous().cpu() for k, v in ema.items()}, str(folder / EMA_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(recipe_to_dict(recipe), indent=2))
        for name, value in train_state.items():
            torch.save(value, folder / STATE_DIR / f"{name}.pt")


def save_train_state(folder: Path, name: str, value: Any) -> None:
    """One train-state file (e.g. a rank's RNG state) into the staging folder `folder`."""
    with _writing(folder):
        torch.save(value, folder / STATE_DIR / f"{name}.pt")


@contextmanager
def _writing(folder: Path) -> Iterator[None]:
    """A failed checkpoint write (a full disk) is one line; the unpublished folder is removed by the next start."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        detail = os_error_message(err) if isinstance(err, OSError) else " ".join(str(err).split())[:200]
        raise CofreError(f"cannot write checkpoint {folder} ({detail}); the previous checkpoint is kept") from None


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


# -- reading: every file a checkpoint holds is checked, and a problem is one line naming the file ----------
def load_train_state(folder: Path, name: str) -> Any:
    """A train-state file, read with `weights_only=True` (nothing in it is ever executed)."""
    path = folder / STATE_DIR / f"{name}.pt"
    if not path.is_file():
        raise CofreError(f"{path}: missing; the checkpoint is incomplete")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):  # the weights-only unpickler met a class: nothing of it was run
            raise CofreError(f"{path}: refused, it holds objects other than tensors and plain containers") from None
        raise CofreError(f"{path}: not a readable train-state file (a damaged pickle)") from None
    except (RuntimeError, EOFError, ValueError) as err:
        raise CofreError(f"{path}: not a readable train-state file ({str(err).strip().splitlines()[0][:200]})") from None


def read_pointer(pointer: Path) -> Path | None:
    """The checkpoint folder `checkpoints/latest` (or `selected`) names; None without the pointer, an error
    when it names no checkpoint folder: a run whose pointer is broken is never silently restarted."""
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    folder = pointer.parent / name
    if not name or "/" in name or not folder.is_dir():
        raise CofreError(f"{pointer} names '{name}', which is not a checkpoint folder in {pointer.parent}; "
                         "point it at an existing step-* folder (nothing was changed)")
    return folder


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run directory: its selected checkpoint if it has one, else its latest."""
    path = Path(path)
    if not path.exists():
        raise CofreError(f"{path}: no such run or checkpoint folder")
    if (path / CONFIG_FILE).is_file():
        return path
    for pointer in (path / "checkpoints" / "selected", path / "checkpoints" / "latest"):
        folder = read_pointer(pointer)
        if folder is not None:
            return folder
    raise CofreError(f"{path} is neither a checkpoint folder (with {CONFIG_FILE}) nor a run with checkpoints")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file whose every value is finite."""
    if not path.is_file():
        raise CofreError(f"{path}: missing; the checkpoint is incomplete")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise CofreError(f"{path}: not a readable safetensors file ({str(err).strip().splitlines()[0][:200]})") from None
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CofreError(f"{path}: '{key}' holds NaN or infinite values")
    return state


def load_weights_into(model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Load a weights file into `model`; weights that do not fit its config are one error naming the file."""
    state = read_weights(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:300]
        raise CofreError(f"{path}: the weights do not fit the model its config describes ({detail})") from None
    return state


def load_model(path: str | Path, ema: bool = True) -> tuple[Denoiser, Recipe]:
    """Build the denoiser from a checkpoint (or run) with one call: config.json + (EMA) safetensors."""
    from cofre.summary import check_model_memory

    folder = resolve_checkpoint(path)
    recipe = checkpoint_recipe(folder)
    check_model_memory(recipe.model)  # built in this machine's memory first
    model = Denoiser(recipe.model, recipe.solver.eval_iters)
    weights = folder / (EMA_FILE if ema and (folder / EMA_FILE).is_file() else MODEL_FILE)
    load_weights_into(model, weights)
    return model, recipe


# Fields whose default changed with the paper-scale fixes; a config.json without them predates the change.
LEGACY_DEFAULTS = (("model", "injection_mlp", "linear"), ("data", "packing", "concat"))


def read_config(folder: Path) -> Any:
    """A checkpoint folder's config.json as plain values; a missing or broken file is a one-line error."""
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise CofreError(f"{config}: missing; the checkpoint is incomplete")
    try:
        return json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CofreError(f"{config}: not valid JSON ({err})") from None
    except ValueError:  # an integer of more than 4300 digits
        raise CofreError(f"{config}: holds a number too long to read; the checkpoint is damaged") from None


def kind_config(path: str | Path, kind: str) -> tuple[Path, dict[str, Any]]:
    """The checkpoint folder a run or checkpoint path names and its config.json, which must say `kind: <kind>`
    (VQ tokenizers, classifiers, shortcuts); a run of another kind is named as such."""
    folder = resolve_checkpoint(path)
    values = read_config(folder)
    require_kind(values, kind, path, "run")
    return folder, values


def checkpoint_recipe(path: str | Path) -> Recipe:
    """The recipe a checkpoint (or a run's latest checkpoint) was trained with."""
    folder = resolve_checkpoint(path)
    config, values = folder / CONFIG_FILE, read_config(folder)
    require_kind(values, DENOISER, path, "run")  # a VQ, classifier or shortcut run is named, not read as a denoiser
    from cofre.hub import exported_recipe, is_exported

    if is_exported(values):  # a Hub-style folder (`cofre export`): its config holds the model, not a recipe
        return exported_recipe(values, folder)
    if isinstance(values, dict):  # written before these fields existed: what those checkpoints were built with
        for section, key, old in LEGACY_DEFAULTS:
            if isinstance(values.get(section), dict):
                values[section].setdefault(key, old)
    try:
        return recipe_from_dict(values)
    except CofreError as err:
        raise CofreError(f"{config}: {err}") from None
