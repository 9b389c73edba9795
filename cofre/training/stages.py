"""Post-training stages (consistency, adaptation): a recipe derived from a parent run and a stage recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cofre.config import Recipe, apply_overrides, deep_merge, read_yaml, recipe_from_dict, recipe_to_dict
from cofre.errors import CofreError
from cofre.kinds import DENOISER, require_kind
from cofre.training.checkpoint import checkpoint_recipe, resolve_checkpoint


def stage_recipe(parent: str | Path, stage: Path | None, overrides: list[str], defaults: dict[str, Any],
                 required: dict[str, Any], suffix: str) -> Recipe:
    """The stage's recipe over the parent checkpoint that `parent` (a run or checkpoint folder) resolves to."""
    folder = resolve_checkpoint(parent)
    return stage_values(checkpoint_recipe(folder), str(folder), stage, overrides, defaults, required, suffix)


def stage_values(parent: Recipe, init_from: str, stage: Path | None, overrides: list[str], defaults: dict[str, Any],
                 required: dict[str, Any], suffix: str) -> Recipe:
    """The parent's recipe, then the stage's `defaults`, the stage recipe (a partial YAML) and the overrides laid over
    it; `required` fields are set last; `init_from` points at the parent checkpoint, which the run records.
    The stage is named by its recipe's `name` (or file name), else `<parent name>-<suffix>`."""
    values = deep_merge(recipe_to_dict(parent), defaults)
    stage_part = read_yaml(stage) if stage is not None else {}
    require_kind(stage_part, DENOISER, stage, "recipe")  # a stage recipe is a partial denoiser recipe
    values = deep_merge(values, stage_part)
    values["name"] = stage_part.get("name") or (stage.stem if stage is not None else f"{values['name']}-{suffix}")
    values = apply_overrides(values, overrides)
    values = deep_merge(values, required)
    values["init_from"] = init_from
    try:
        return recipe_from_dict(values)
    except CofreError as err:
        raise CofreError(f"{stage or 'stage recipe'}: {err}") from None
