"""Validation perplexity: the MDLM variational bound (NELBO) on held-out blocks, with fixed t and mask draws."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import Tensor

from cofre.models import Denoiser
from cofre.precision import autocast
from cofre.tasks import Task
from cofre.tasks.mdlm import MDLMTask

VAL_SEED = 20_240_531  # every validation redraws the same t and masks, so values are comparable


@torch.no_grad()
def bound_totals(model: Denoiser, task: Task, val: Tensor, batch_ids: Iterable[int], micro: int, n_iters: int,
                 generator: torch.Generator, autocast: Callable[[], AbstractContextManager] = nullcontext,
                 labels: Tensor | None = None) -> Tensor:
    """Sums over the given micro-batches of held-out blocks: [NELBO x tokens, tokens, last residual x tokens].
    Image codes (with their `labels`): MaskGIT's masked-token cross-entropy in place of the NELBO."""
    device = next(model.parameters()).device
    totals = torch.zeros(3, device=device, dtype=torch.float64)
    for k in batch_ids:
        rows = torch.arange(k * micro, (k + 1) * micro) % val.shape[0]
        x = val[rows].long().to(device)
        batch = task.noise(x, generator=generator, labels=labels[rows].to(device) if labels is not None else None)
        with autocast():
            out = model(batch.z, batch.signal, n_nograd=n_iters, positions=task.loss_positions(batch).nonzero(as_tuple=True),
                        track_residuals=model.cfg.is_fixed_point)
        totals[0] += task.loss(out.logits, batch).double() * x.numel()
        totals[1] += x.numel()
        if out.stats is not None:  # relative residual of the last fixed-point iteration, per sample
            totals[2] += out.stats.residuals[-1].double().mean() * x.numel()
    return totals


def summarize_totals(totals: Tensor, fixed_point: bool) -> dict[str, float]:
    """NLL per token, its perplexity, and (FP models) the mean last-iteration residual."""
    nll = float(totals[0] / totals[1])
    record = {"val_nll": nll, "val_ppl": math.exp(nll)}
    if fixed_point:
        record["val_residual"] = float(totals[2] / totals[1])
    return record


def validation_perplexity(model: Denoiser, task: MDLMTask, val: Tensor, batches: int, micro: int,
                          n_iters: int, precision: str = "fp32") -> dict[str, float]:
    """Single-process validation over `batches` micro-batches of `micro` blocks (the training loop's draws);
    the network runs at `precision`, the loss in fp32 or better."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(VAL_SEED)
    totals = bound_totals(model, task, val, range(batches), micro, n_iters, generator,
                          lambda: autocast(device, precision))
    model.train(was_training)
    return summarize_totals(totals, model.cfg.is_fixed_point)
