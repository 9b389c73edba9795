"""`cofre inspect`: parameter counts by part and the block cost of one denoising step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cofre.config import ModelConfig
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
