"""Exponential moving average of the weights (MDLM keeps one with decay 0.9999)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """shadow <- d_n * shadow + (1 - d_n) * param, over floating-point parameters, with MDLM's warm-up
    d_n = min(decay, (1 + n) / (10 + n)) at the n-th update (n from 1), so the random init fades fast."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.num_updates = 0  # n; saved with the train state so that a resumed run continues the warm-up
        self.shadow = {k: p.detach().clone().float() for k, p in model.named_parameters()}

    def current_decay(self) -> float:
        """The decay of the next update: min(decay, (1 + n) / (10 + n)) (MDLM's ema.py, use_num_updates)."""
        n = self.num_updates + 1
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        self.num_updates += 1
        for k, p in model.named_parameters():
            self.shadow[k].lerp_(p.detach().float(), 1 - decay)

    def state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A full model state dict with EMA values in place of the parameters."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state.update({k: v.to(state[k].dtype) for k, v in self.shadow.items()})
        return state

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(state[k])
