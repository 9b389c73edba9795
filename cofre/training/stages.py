"""Post-training stages (consistency, adaptation): a recipe derived from a parent run and a stage recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cofre.config import Recipe, apply_overrides, deep_merge, read_yaml, recipe_from_dict, recipe_to_dict
from cofre.errors import CofreError
from cofre.training.checkpoint import checkpoint_recipe, resolve_checkpoint


def stage_recipe(parent: str | Path, stage: Path | None, overrides: list[str], defaults: dict[str, Any],
                 required: dict[str, Any], suffix: str) -> Recipe:
    """The parent checkpoint's recipe, then the stage's `defaults`, the stage recipe (a partial YAML) and the
    overrides laid over it; `required` fields are set last; `init_from` points at the parent checkpoint, which the run records.
    The stage is named by its recipe's `name` (or file name), else `<parent name>-<suffix>`."""
    folder = resolve_checkpoint(parent)
    values = deep_merge(recipe_to_dict(checkpoint_recipe(folder)), defaults)
    stage_values = read_yaml(stage) if stage is not None else {}
    values = deep_merge(values, stage_values)
    values["name"] = stage_values.get("name") or (stage.stem if stage is not None else f"{values['name']}-{suffix}")
    values = apply_overrides(values, overrides)
    values = deep_merge(values, required)
    values["init_from"] = str(folder)
    try:
        return recipe_from_dict(values)
    except CofreError as err:
        raise CofreError(f"{stage or 'stage recipe'}: {err}") from None
