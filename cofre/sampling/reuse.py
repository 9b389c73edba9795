"""Warm starts of the fixed-point solver across denoising steps (§3.3, Alg. 1, App. C.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Reuse = Literal["none", "full", "3sr"]
REUSE_POLICIES: tuple[str, ...] = ("none", "full", "3sr")

# Token transition types between consecutive denoising states (Fig. 3).
UNCHANGED_VISIBLE, STILL_MASKED, NEWLY_REVEALED = 0, 1, 2
TRANSITION_NAMES = ("unchanged_visible", "still_masked", "newly_revealed")


@dataclass(frozen=True)
class ReuseConfig:
    """The policy and the 3SR coefficients (paper defaults: 0.75, 0.90 and a constant 0.2); Tables 4-5 sweep
    gamma_changed as a [min, max] range, interpolated with v_t as gamma_mask is."""

    policy: Reuse = "3sr"
    gamma_mask_min: float = 0.75
    gamma_mask_max: float = 0.90
    gamma_changed_min: float = 0.2
    gamma_changed_max: float = 0.2


def transition_types(z: Tensor, z_prev: Tensor, mask_id: int) -> Tensor:
    """Per token: unchanged visible (z = z_prev != mask), still masked (z = z_prev = mask), or newly revealed."""
    same = z == z_prev
    kinds = torch.full_like(z, NEWLY_REVEALED)
    kinds[same & (z != mask_id)] = UNCHANGED_VISIBLE
    kinds[same & (z == mask_id)] = STILL_MASKED
    return kinds


def three_state_gamma(z: Tensor, z_prev: Tensor, mask_id: int, cfg: ReuseConfig, registers: int = 0) -> Tensor:
    """gamma per token (Alg. 1 lines 13-16): 1, gamma_mask = min + (max - min) v_t, or gamma_changed, likewise
    interpolated between its min and max (App. D.1.2, Tables 4-5); [B, L + registers]. An image model's register
    tokens (after the L tokens in the solver state) take gamma_mask: like a still-masked token, their input never
    changes while their context does."""
    visible_fraction = (z != mask_id).float().mean(dim=1, keepdim=True)  # v_t, per sample
    gamma_mask = cfg.gamma_mask_min + (cfg.gamma_mask_max - cfg.gamma_mask_min) * visible_fraction
    gamma_changed = cfg.gamma_changed_min + (cfg.gamma_changed_max - cfg.gamma_changed_min) * visible_fraction
    kinds = transition_types(z, z_prev, mask_id)
    gamma = gamma_changed.expand(z.shape).clone()
    gamma = torch.where(kinds == UNCHANGED_VISIBLE, torch.ones_like(gamma), gamma)
    gamma = torch.where(kinds == STILL_MASKED, gamma_mask.expand_as(gamma), gamma)
    return torch.cat([gamma, gamma_mask.expand(-1, registers)], dim=1) if registers else gamma


def warm_start(h_pre: Tensor, h_prev: Tensor | None, z: Tensor, z_prev: Tensor | None, mask_id: int,
               cfg: ReuseConfig) -> Tensor:
    """The solver's initial state h^0 (Alg. 1 lines 10-17): h_pre, h_prev, or gamma h_prev + (1 - gamma) h_pre.
    States may hold register tokens after the z.shape[1] token positions (image models)."""
    if h_prev is None or z_prev is None or cfg.policy == "none":
        return h_pre
    if cfg.policy == "full":
        return h_prev
    registers = h_pre.shape[1] - z.shape[1]
    gamma = three_state_gamma(z, z_prev, mask_id, cfg, registers)[..., None].to(h_pre.dtype)  # broadcast over hidden
    return gamma * h_prev + (1 - gamma) * h_pre
