"""MaskGIT (Chang et al.; Besnier et al.'s Halton-MaskGIT): arccos mask ratio, label dropout, masked-token CE."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cofre.config import TaskConfig


def arccos_ratio(u: Tensor) -> Tensor:
    """The masked fraction r = arccos(u) / (pi / 2) for u ~ U[0, 1]: P(r <= a) = 1 - cos(a pi / 2)."""
    return torch.arccos(u) / (math.pi / 2)


def drop_labels(labels: Tensor, rate: float, null_class: int, generator: torch.Generator | None = None) -> Tensor:
    """Each label becomes the dropped class `null_class` with probability `rate` (CFG training, App. D.3)."""
    drop = torch.rand(labels.shape, generator=generator, device=labels.device) < rate
    return torch.where(drop, torch.full_like(labels, null_class), labels)


@dataclass
class MaskGITBatch:
    """One masked batch of image codes: inputs, targets, the (possibly dropped) labels and where the loss is."""

    z: Tensor  # [B, L] codes with [mask] (= codebook size) at masked cells
    x: Tensor  # [B, L] clean codes
    t: Tensor  # [B] the masked fraction r (MaskGIT's "time")
    labels: Tensor  # [B] class labels after dropout; num_classes = dropped
    masked: Tensor  # [B, L] bool

    @property
    def signal(self) -> Tensor:
        """What the denoiser conditions on: the class label."""
        return self.labels


class MaskGITTask:
    """Mask a batch of codes with an arccos ratio per sample and score the logits with cross-entropy (Eq. 1)."""

    def __init__(self, cfg: TaskConfig, mask_id: int, num_classes: int) -> None:
        self.cfg = cfg
        self.mask_id = mask_id
        self.num_classes = num_classes  # also the dropped label's index
        self.min_time = 0.0

    def sample_times(self, batch: int, generator: torch.Generator | None, device: torch.device | str) -> Tensor:
        """r per sample from the arccos schedule (no sample is left without a masked token: r > 0 a.s.)."""
        return arccos_ratio(torch.rand(batch, generator=generator, device=device))

    def mask_fraction(self, t: Tensor) -> Tensor:
        return t

    def condition(self, labels: Tensor | None, generator: torch.Generator | None) -> Tensor:
        """Labels with dropout applied once per sample (shared by the two states of a correlated pair)."""
        if labels is None:
            raise ValueError("MaskGIT batches need class labels")
        return drop_labels(labels, self.cfg.label_dropout, self.num_classes, generator)

    def batch(self, x: Tensor, z: Tensor, t: Tensor, condition: Tensor) -> MaskGITBatch:
        return MaskGITBatch(z=z, x=x, t=t, labels=condition, masked=z == self.mask_id)

    def noise(self, x: Tensor, generator: torch.Generator | None = None, labels: Tensor | None = None) -> MaskGITBatch:
        """Cell i is masked where u_i < r, u_i ~ U[0, 1] (Halton-MaskGIT's masking)."""
        condition = self.condition(labels, generator)
        r = self.sample_times(x.shape[0], generator, x.device)
        u = torch.rand(x.shape, generator=generator, device=x.device)
        z = torch.where(u < r[:, None], torch.full_like(x, self.mask_id), x)
        return self.batch(x, z, r, condition)

    def loss_positions(self, batch: MaskGITBatch) -> Tensor:
        """Where logits are needed: the masked cells (Eq. 1), or every cell (loss_on: all)."""
        return batch.masked if self.cfg.loss_on == "masked" else torch.ones_like(batch.masked)

    def loss(self, logits: Tensor, batch: MaskGITBatch) -> Tensor:
        """Mean cross-entropy over the loss positions, in float32; [mask] is never a target, so its logit is dropped.
        `logits` holds rows at `loss_positions(batch).nonzero()`, in that order."""
        targets = batch.x[self.loss_positions(batch)]
        if targets.numel() == 0:  # nothing masked in this micro-batch: no signal, and no NaN
            return logits.sum() * 0
        return F.cross_entropy(logits[..., : self.mask_id].float(), targets)
