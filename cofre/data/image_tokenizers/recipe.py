"""The VQ tokenizer's recipe (`kind: vq`): the VQ-VAE's shape, the images it learns from, and its training.

A VQ recipe is its own YAML kind: `cofre train` sees `kind: vq` and trains a tokenizer instead of a denoiser.
Its checkpoints hold model.safetensors and the config.json that built it, like every cofre checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cofre.checks import MAX_COUNT, MAX_RECIPE_SEED, check_name
from cofre.config import (MAX_IMAGE_SIZE, MAX_LAYERS, MAX_VOCAB, MAX_WIDTH, DataConfig, OptimConfig, _at_least,
                          _in_range, _rule, _within, apply_overrides, config_from_dict, read_yaml)
from cofre.errors import CofreError
from cofre.training.checkpoint import CONFIG_FILE, kind_config

VQ_KIND = "vq"


@dataclass
class VQConfig:
    """The VQ-VAE's shape: image channels and size, conv width, down-sampling stages, codebook."""

    encoder: Literal["conv", "patch"] = "conv"  # conv: the VQ-VAE; patch: no network, codes are p x p pixel patches
    channels: int = 1  # image channels (Fashion-MNIST: 1, an RGB folder: 3)
    image_size: int = 28  # must equal data.image_size
    hidden: int = 64  # conv: width at the token grid (half of it at full resolution)
    downsample: int = 2  # grid side = image_size / 2^downsample (28 -> 7): conv stride-2 stages, or patch side p
    res_blocks: int = 2  # conv: residual blocks at the grid, in the encoder and in the decoder
    codebook_size: int = 512
    code_dim: int = 16  # width of a code vector (patch: channels x p x p)
    beta: float = 0.25  # commitment weight (VQ-VAE Eq. 3)
    ema_decay: float = 0.99  # codebook EMA decay (VQ-VAE App. A.1)
    dead_after: float = 0.03  # restart a code whose EMA count of assignments per batch falls below this

    def validate(self, where: str = "vq") -> None:
        _within(where, self, 1, 4, "channels")
        _within(where, self, 1, MAX_IMAGE_SIZE, "image_size")
        _within(where, self, 1, MAX_WIDTH, "hidden", "code_dim")
        _within(where, self, 1, MAX_VOCAB, "codebook_size")
        _within(where, self, 0, 12, "downsample")  # 2^12 = MAX_IMAGE_SIZE
        _within(where, self, 0, MAX_LAYERS, "res_blocks")
        _at_least(where, self, 0, "beta", "dead_after")
        _in_range(where, self, "ema_decay", 0.0, 1.0, open_high=True)
        _rule(self.hidden % 2 == 0, f"{where}.hidden must be even (the full-resolution width is hidden / 2), got {self.hidden}")
        _rule(self.image_size % 2**self.downsample == 0,
              f"{where}.image_size ({self.image_size}) must be divisible by 2^{where}.downsample ({2**self.downsample})")
        patch = self.channels * 4**self.downsample
        _rule(self.encoder == "conv" or self.code_dim == patch,
              f"{where}.code_dim must be {where}.channels x 4^{where}.downsample = {patch} for the patch encoder, "
              f"got {self.code_dim}")

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // 2**self.downsample
        return side, side


@dataclass
class VQTrainerConfig:
    """The tokenizer's training loop: one process, Adam(W) on reconstruction MSE + beta x commitment."""

    max_steps: int = 1500
    batch_size: int = 128
    seed: int = 1
    log_every: int = 50
    val_every: int = 500  # held-out PSNR every N steps (and at the end)
    ckpt_every: int = 500
    keep_last: int = 2

    def validate(self, where: str = "trainer") -> None:
        _within(where, self, 1, MAX_COUNT, "max_steps", "batch_size", "log_every", "val_every", "ckpt_every")
        _within(where, self, 0, MAX_COUNT, "keep_last")
        _within(where, self, 0, MAX_RECIPE_SEED, "seed")


@dataclass
class VQRecipe:
    """A VQ tokenizer recipe, one YAML file with `kind: vq`."""

    kind: Literal["vq"] = "vq"
    name: str = "vq"
    vq: VQConfig = field(default_factory=VQConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(corpus="fashion-mnist", image_size=28))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=50, schedule="cosine"))
    trainer: VQTrainerConfig = field(default_factory=VQTrainerConfig)

    def validate(self) -> None:
        check_name("name", self.name)
        for name in ("vq", "data", "optim", "trainer"):
            getattr(self, name).validate(name)
        _rule(self.data.image_size == self.vq.image_size,
              f"data.image_size ({self.data.image_size}) must equal vq.image_size ({self.vq.image_size})")


def is_vq_recipe(path: Path) -> bool:
    """Does the recipe file (after `base:`) say `kind: vq`?"""
    return path.is_file() and read_yaml(path).get("kind") == VQ_KIND


def vq_recipe_from_dict(values: dict[str, Any]) -> VQRecipe:
    if not isinstance(values, dict):
        raise CofreError(f"a recipe must be a mapping of sections, got {type(values).__name__}")
    recipe = config_from_dict(VQRecipe, values)
    recipe.validate()
    return recipe


def load_vq_recipe(path: str | Path, overrides: list[str] | None = None) -> VQRecipe:
    """Load a `kind: vq` recipe file, apply dotted overrides, validate every field."""
    path = Path(path)
    values = apply_overrides(read_yaml(path), overrides or [])
    values.setdefault("name", path.stem)
    try:
        return vq_recipe_from_dict(values)
    except CofreError as err:
        raise CofreError(f"{path}: {err}") from None


def read_vq_checkpoint(path: Path) -> tuple[Path, VQRecipe]:
    """The checkpoint folder a VQ run or checkpoint path names, and the VQ recipe in its config.json."""
    folder, values = kind_config(path, VQ_KIND)
    try:
        return folder, vq_recipe_from_dict(values)
    except CofreError as err:
        raise CofreError(f"{folder / CONFIG_FILE}: {err}") from None
