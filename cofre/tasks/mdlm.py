"""MDLM (Sahoo et al.): absorbing-state masking, log-linear schedule, SUBS parameterisation, NELBO loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cofre.config import TaskConfig


@dataclass(frozen=True)
class LogLinearSchedule:
    """alpha_t = 1 - (1 - eps) t: the probability that a token is still clean at time t."""

    eps: float = 1e-3

    def alpha(self, t: Tensor) -> Tensor:
        return 1 - (1 - self.eps) * t

    def sigma(self, t: Tensor) -> Tensor:
        """Total noise sigma_t = -log alpha_t (the model's conditioning input)."""
        return -torch.log1p(-(1 - self.eps) * t)

    def weight(self, t: Tensor) -> Tensor:
        """MDLM's w(t) = -alpha'_t / (1 - alpha_t) (Eq. 1), which is 1/t for this schedule."""
        return (1 - self.eps) / (1 - self.alpha(t))


def sample_t(batch: int, eps: float, antithetic: bool, generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> Tensor:
    """t ~ U[eps, 1]; antithetic draws stratify [0, 1) across the batch (one uniform offset)."""
    u = torch.rand(batch, generator=generator, device=device)
    if antithetic:
        u = (u / batch + torch.arange(batch, device=device) / batch) % 1
    return (1 - eps) * u + eps


def mask_tokens(x: Tensor, move_chance: Tensor, mask_id: int, u: Tensor) -> Tensor:
    """Absorbing forward process: token i becomes [mask] where u_i < 1 - alpha_t (move_chance is [B])."""
    return torch.where(u < move_chance[:, None], torch.full_like(x, mask_id), x)


def subs_nll(logits: Tensor, targets: Tensor, mask_id: int) -> Tensor:
    """-log p(target) under SUBS, in float32; the [mask] logit is dropped (it has zero
    probability), which is cross-entropy over the vocabulary without its last column."""
    assert mask_id == logits.shape[-1] - 1, "[mask] is the last vocabulary entry"
    return torch.nn.functional.cross_entropy(logits[..., :mask_id].float(), targets, reduction="none")


@dataclass
class MDLMBatch:
    """One noised batch: inputs, targets and where the loss is taken."""

    z: Tensor  # [B, L] noised tokens
    x: Tensor  # [B, L] clean tokens
    t: Tensor  # [B]
    sigma: Tensor  # [B]
    masked: Tensor  # [B, L] bool

    @property
    def signal(self) -> Tensor:
        """What the denoiser conditions on: the noise level."""
        return self.sigma


class MDLMTask:
    """Noise a clean batch and score the denoiser's logits with the MDLM objective."""

    def __init__(self, cfg: TaskConfig, mask_id: int) -> None:
        self.cfg = cfg
        self.mask_id = mask_id
        self.schedule = LogLinearSchedule(cfg.eps)
        self.min_time = cfg.eps

    # the hooks a correlated pair (tasks/consistency.py) is built from; MaskGITTask has the same ones
    def sample_times(self, batch: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
        return sample_t(batch, self.cfg.eps, self.cfg.antithetic, generator, device)

    def mask_fraction(self, t: Tensor) -> Tensor:
        """1 - alpha_t: the chance that a token is masked at time t."""
        return 1 - self.schedule.alpha(t)

    def condition(self, labels: Tensor | None, generator: torch.Generator | None) -> None:
        if labels is not None:
            raise ValueError("MDLM is unconditional: text batches carry no labels")

    def batch(self, x: Tensor, z: Tensor, t: Tensor, condition: None) -> MDLMBatch:
        return MDLMBatch(z=z, x=x, t=t, sigma=self.schedule.sigma(t), masked=z == self.mask_id)

    def noise(self, x: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None) -> MDLMBatch:
        condition = self.condition(labels, generator)
        t = self.sample_times(x.shape[0], generator, x.device)
        u = torch.rand(x.shape, generator=generator, device=x.device)
        z = mask_tokens(x, self.mask_fraction(t), self.mask_id, u)
        return self.batch(x, z, t, condition)

    def loss_positions(self, batch: MDLMBatch) -> Tensor:
        """Where logits are needed: the masked tokens (visible ones contribute exactly zero under SUBS)."""
        return batch.masked

    def loss(self, logits_masked: Tensor, batch: MDLMBatch) -> Tensor:
        """NELBO per token: sum over masked i of w(t) * -log p(x_i | z_t), divided by all B*L tokens.

        `logits_masked` holds logits only at `batch.masked.nonzero()` positions, in that order; under SUBS
        visible tokens are copied, so they contribute exactly zero (Eq. 1).
        """
        nll = subs_nll(logits_masked, batch.x[batch.masked], self.mask_id)
        weight = self.schedule.weight(batch.t)[:, None].expand_as(batch.x)[batch.masked]
        return (weight * nll).sum() / batch.x.numel()
