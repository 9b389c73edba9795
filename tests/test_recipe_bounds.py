"""Every count, size and seed of every recipe kind has an upper bound, checked when the recipe is read: a value the
code cannot hold or allocate is one line naming the field, never an overflow, a hang or an allocation."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from cofre.config import Recipe, config_from_dict, recipe_to_dict
from cofre.data.image_tokenizers.recipe import VQRecipe
from cofre.errors import CofreError
from cofre.evaluation.classifier import ClassifierRecipe
from cofre.training.shortcut import ShortcutRecipe

KINDS = [Recipe, VQRecipe, ClassifierRecipe, ShortcutRecipe]


def int_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every int field of a recipe dataclass, sections included."""
    hints = typing.get_type_hints(cls)
    paths = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            paths += int_fields(tp, f"{prefix}{f.name}.")
        elif tp is int:
            paths.append(f"{prefix}{f.name}")
    return paths


def build(cls: type, path: str, value: int) -> None:
    values = recipe_to_dict(cls())  # type: ignore[arg-type]
    node = values
    *parents, leaf = path.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    config_from_dict(cls, values).validate()


@pytest.mark.parametrize("cls", KINDS, ids=lambda c: c.__name__)
def test_the_defaults_are_valid(cls: type) -> None:
    config_from_dict(cls, recipe_to_dict(cls())).validate()  # type: ignore[arg-type]


@pytest.mark.parametrize("cls, path", [(cls, path) for cls in KINDS for path in int_fields(cls)],
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
@pytest.mark.parametrize("value", [2**62, 10**5000], ids=["int64", "5000 digits"])
def test_every_integer_field_has_an_upper_bound(cls: type, path: str, value: int) -> None:
    with pytest.raises(CofreError) as err:
        build(cls, path, value)
    message = str(err.value)
    assert path.split(".")[-1] in message and "\n" not in message and len(message) < 300, message
