"""Training objectives of masked generative models: MDLM (text) and MaskGIT (image codes)."""

from __future__ import annotations

from cofre.config import Recipe
from cofre.tasks.maskgit import MaskGITTask
from cofre.tasks.mdlm import MDLMTask

Task = MDLMTask | MaskGITTask


def build_task(recipe: Recipe) -> Task:
    """The objective `task.name` names, for the recipe's model (its [mask] id and classes)."""
    if recipe.task.name == "maskgit":
        return MaskGITTask(recipe.task, recipe.model.mask_id, recipe.model.num_classes)
    return MDLMTask(recipe.task, recipe.model.mask_id)
