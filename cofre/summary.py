"""`cofre inspect`: parameter counts by part and the block cost of one denoising step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cofre.checks import check_memory
from cofre.config import ModelConfig, Recipe
from cofre.errors import CofreError
from cofre.models import Denoiser

# Which top-level modules of the Denoiser make up each part of Eq. 2.
PARTS = {
    "embedding": ("vocab_embed", "sigma_map", "class_embed", "pos_embed", "register_tokens"),  # image: holds the tied head
    "pre": ("pre",),
    "fixed_point": ("injection", "fixed_point"),
    "post": ("post",),
    "head": ("output_layer",),
}


@dataclass
class ModelSummary:
    total_params: int
    params_by_part: dict[str, int]
    K_pre: int
    K_fp: int
    K_post: int
    n_iters: int  # fixed-point iterations N assumed for the per-step cost
    blocks_per_step: int  # K_pre + N K_fp + K_post (§3.1)
    distinct_blocks: int  # K_pre + K_fp + K_post


def summarize(cfg: ModelConfig, n_iters: int) -> ModelSummary:
    """Count parameters without allocating them (meta device)."""
    with torch.device("meta"):
        model = Denoiser(cfg)
    by_part = {part: 0 for part in PARTS}
    owner = {module: part for part, modules in PARTS.items() for module in modules}
    for name, param in model.named_parameters():
        by_part[owner[name.split(".")[0]]] += param.numel()
    iters = n_iters if cfg.is_fixed_point else 0
    return ModelSummary(
        total_params=sum(by_part.values()),
        params_by_part=by_part,
        K_pre=cfg.K_pre,
        K_fp=cfg.K_fp,
        K_post=cfg.K_post,
        n_iters=iters,
        blocks_per_step=model.blocks_per_step(iters),
        distinct_blocks=cfg.K_pre + cfg.K_fp + cfg.K_post,
    )


# -- memory estimates: lower bounds, so that only what can never fit is refused -------------------------------------
def model_memory(cfg: ModelConfig, copies: int) -> tuple[int, str]:
    """Bytes of `copies` fp32 copies of the model's parameters, and the fields that size it (for the message)."""
    params = summarize(cfg, 0).total_params
    fields = (f"{params:,} parameters (model.hidden {cfg.hidden}, K_pre/K_fp/K_post {cfg.K_pre}/{cfg.K_fp}/{cfg.K_post}, "
              f"vocab_size {cfg.vocab_size})")
    return 4 * copies * params, fields


def check_model_memory(cfg: ModelConfig, device: object = None) -> None:
    """Loading a model for inference: its weights (and the file's copy while they load) must fit."""
    need, fields = model_memory(cfg, 2)
    check_memory("model", need, f"the weights of {fields}", device)


def check_training_memory(recipe: Recipe, device: object = None) -> None:
    """Training: weights, gradients, AdamW's two moments and the EMA, plus one micro-batch's fp32 logits and the
    inputs its blocks keep for the backward pass; the part that does not fit names the field to lower."""
    m, t = recipe.model, recipe.trainer
    weights, fields = model_memory(m, 4 + (t.ema > 0) + (recipe.consistency.enabled or recipe.distill.enabled))
    blocks = m.K_pre + m.K_post + recipe.solver.grad_max * m.K_fp
    length = recipe.data.seq_len + m.registers
    batch = t.micro_batch_size * length * 4 * (m.vocab_size + 2 * m.hidden * max(blocks, 1))  # logits, block inputs
    check_memory("model", weights, f"training {fields} (weights, gradients, AdamW moments, EMA)", device)
    check_memory("trainer.micro_batch_size", weights + batch, f"training with micro-batches of {t.micro_batch_size} "
                 f"sequences of {length} tokens ({recipe.data.seq_len} + registers) beside the model", device)


# -- the other kinds `cofre inspect` describes: VQ tokenizers, classifiers, shortcuts ------------------------------
@dataclass
class KindSummary:
    """A VQ tokenizer, classifier or shortcut recipe or run: its parameters by part and what it is."""

    recipe: str
    kind: str
    title: str
    params_by_part: dict[str, int]
    lines: list[str]
    total_params: int = 0
    details: dict[str, object] = field(default_factory=dict)


def _parts(model: torch.nn.Module) -> dict[str, int]:
    return {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}


def _kind_values(path: Path, kind: str) -> dict[str, object]:
    """The recipe values of a recipe file, a run directory (recipe.yaml) or a checkpoint folder (config.json)."""
    from cofre.config import read_yaml
    from cofre.training.checkpoint import kind_config

    if path.is_file():
        return read_yaml(path)
    if (path / "recipe.yaml").is_file():
        return read_yaml(path / "recipe.yaml")
    return kind_config(path, kind)[1]


def summarize_kind(path: Path, kind: str) -> KindSummary:
    """`cofre inspect` on a recipe or run of a kind other than a denoiser (parameters counted on the meta device)."""
    from cofre.config import config_from_dict
    from cofre.kinds import describe

    values = _kind_values(path, kind)
    values.setdefault("name", path.stem)

    def build(read: Callable[[dict[str, object]], Any]) -> Any:
        try:
            return read(values)
        except CofreError as err:
            raise CofreError(f"{path}: {err}") from None

    if kind == "vq":
        from cofre.data.image_tokenizers.recipe import vq_recipe_from_dict
        from cofre.data.image_tokenizers.vq import VQVAE

        vq = build(vq_recipe_from_dict)
        with torch.device("meta"):
            model = VQVAE(vq.vq)
        parts = _parts(model)
        parts["quantizer"] += model.quantizer.codebook.numel()  # learned by EMA (a buffer), not by the optimiser
        side = vq.vq.grid[0]
        lines = [f"{vq.vq.image_size} x {vq.vq.image_size} images -> a {side} x {side} grid of {vq.vq.codebook_size} "
                 f"codes ({vq.vq.code_dim}-d)"]
        details = {"encoder": vq.vq.encoder, "image_size": vq.vq.image_size, "grid": [side, side],
                   "codebook_size": vq.vq.codebook_size, "code_dim": vq.vq.code_dim}
        title, name = f"image tokenizer ({vq.vq.encoder})", vq.name
    elif kind == "classifier":
        from cofre.evaluation.classifier import ImageClassifier, _from_dict

        clf = build(_from_dict)
        with torch.device("meta"):
            parts = _parts(ImageClassifier(clf.classifier))
        c = clf.classifier
        lines = [f"{c.image_size} x {c.image_size} images ({c.channels} channel(s)) -> {c.features} features (FID) and "
                 f"{c.num_classes} class probabilities (IS)"]
        details = {"image_size": c.image_size, "channels": c.channels, "features": c.features,
                   "num_classes": c.num_classes}
        title, name = "image classifier", clf.name
    elif kind == "shortcut":
        from cofre.sampling.shortcut import Shortcut
        from cofre.training.shortcut import ShortcutRecipe

        sc = build(lambda v: config_from_dict(ShortcutRecipe, v))
        build(lambda _: sc.validate())
        with torch.device("meta"):
            parts = _parts(Shortcut(sc.shortcut))
        width = (f"at the base width {sc.shortcut.hidden}" if sc.base_run else
                 f"at hidden {sc.shortcut.hidden} (`cofre shortcut` sets it to the base run's width)")
        lines = [f"S at {sc.shortcut.width_ratio:g} x width, {sc.shortcut.heads} heads, {width}; base run "
                 f"{sc.base_run or '(set by cofre shortcut RUN)'}",
                 f"trajectories of N = {sc.collect.steps} steps, pools of {sc.collect.batch_size} every "
                 f"{sc.collect.refresh_every} steps, at {sc.collect.precision}; {sc.trainer.max_steps} training steps"]
        details = {"hidden": sc.shortcut.hidden, "width": sc.shortcut.width, "base_run": sc.base_run,
                   "collect_steps": sc.collect.steps, "collect_precision": sc.collect.precision}
        title, name = "MIGM-Shortcut step S", sc.name
    else:
        raise CofreError(f"{path} is {describe(kind)} file: nothing to inspect; "
                         "`cofre inspect` describes denoisers, VQ tokenizers, classifiers and shortcuts")
    total = sum(parts.values())
    return KindSummary(recipe=name, kind=kind, title=f"{name}: {title}, {total:,} parameters", params_by_part=parts,
                       lines=lines, total_params=total, details=details)
