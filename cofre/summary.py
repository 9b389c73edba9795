"""`cofre inspect`: parameter counts by part and the block cost of one denoising step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cofre.checks import check_memory
from cofre.config import ModelConfig, Recipe
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
    """Training: weights, gradients, AdamW's two moments and the EMA, plus one micro-batch's logits and the hidden
    states its blocks keep for the backward pass; the larger part names the field to lower."""
    m, t = recipe.model, recipe.trainer
    weights, fields = model_memory(m, 4 + (t.ema > 0) + (recipe.consistency.enabled or recipe.distill.enabled))
    blocks = m.K_pre + m.K_post + recipe.solver.grad_max * m.K_fp
    length = recipe.data.seq_len + m.registers
    batch = t.micro_batch_size * length * 4 * (3 * m.vocab_size + 8 * m.hidden * max(blocks, 1))
    check_memory("model", weights, f"training {fields} (weights, gradients, AdamW moments, EMA)", device)
    check_memory("trainer.micro_batch_size", weights + batch, f"training with micro-batches of {t.micro_batch_size} "
                 f"sequences of {length} tokens ({recipe.data.seq_len} + registers) beside the model", device)
