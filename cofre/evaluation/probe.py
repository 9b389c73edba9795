"""`cofre probe`: has a run learned? Three checks on held-out data, each with the threshold it is held to.

- Context use: the mean KL(p(. | z_t) || p(. | all masked)) over positions masked in z_t, at t = 0.25, 0.5, 0.75.
  A model that only learned token frequencies predicts the same at every masked position whatever is visible (KL 0);
  one that reads its context moves away from that prediction. Images keep their class label in both inputs.
- The fixed point (FP models, App. F.12): the median over held-out samples of the relative residual
  ||F(h) - h|| / ||h|| at each of the recipe's `solver.eval_iters` iterations from h_pre; the last must be small.
- Validation perplexity (the MDLM bound, or MaskGIT's masked-code cross-entropy) beside the corpus's unigram
  perplexity: the frequencies of the training split's tokens (add-one smoothed) scored on the validation split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from cofre.precision import autocast
from cofre.tasks import build_task

PROBE_TIMES = (0.25, 0.5, 0.75)
MIN_CONTEXT_NATS = 0.5  # at t = 0.5: well above what a frequency-only model shows (< 1e-4 nats)
MAX_RESIDUAL = 0.05  # median relative residual after the evaluation iterations (App. F.12 reports 0.018 after 4)
MAX_PPL_RATIO = 0.5  # validation perplexity at most half the unigram perplexity
PROBE_SEED = 7


@dataclass
class Check:
    """One learning check: its value, the threshold and the verdict."""

    name: str
    value: float
    threshold: str  # e.g. ">= 0.5 nats"
    passed: bool


@dataclass
class ProbeResult:
    run: str
    checkpoint: dict[str, Any]
    modality: str
    blocks: int  # held-out sequences probed
    context_kl: dict[str, float]  # t -> mean KL in nats over the masked positions
    val_nll: float
    val_ppl: float
    unigram_ppl: float
    residuals: list[float] = field(default_factory=list)  # FP models: median relative residual at each iteration
    eval_iters: int = 0
    checks: list[Check] = field(default_factory=list)
    precision: str = "fp32"
    seed: int = PROBE_SEED

    @property
    def learned(self) -> bool:
        return all(c.passed for c in self.checks)


def unigram_perplexity(train: Tensor, val: Tensor, vocab: int) -> float:
    """exp of the validation tokens' mean NLL under the training split's add-one-smoothed token frequencies."""
    counts = torch.bincount(train.reshape(-1).long(), minlength=vocab).double() + 1
    log_p = (counts / counts.sum()).log()
    return math.exp(-float(log_p[val.reshape(-1).long()].mean()))


@torch.no_grad()
def context_kl(model: Any, task: Any, x: Tensor, labels: Tensor | None, t: float, generator: torch.Generator,
               n_iters: int, precision: str) -> tuple[float, int]:
    """(sum over masked positions of KL(p(. | z_t) || p(. | all masked)), positions) for one batch at time t."""
    mask_id = model.cfg.mask_id
    t_batch = torch.full((x.shape[0],), t, device=x.device)
    u = torch.rand(x.shape, generator=generator, device=x.device)
    z = torch.where(u < task.mask_fraction(t_batch)[:, None], torch.full_like(x, mask_id), x)
    masked = z == mask_id
    if not masked.any():
        return 0.0, 0
    blank = torch.full_like(x, mask_id)
    logp = []
    for inputs, time in ((z, t_batch), (blank, torch.ones_like(t_batch))):  # all masked: the state at t = 1
        batch = task.batch(x, inputs, time, labels)
        with autocast(x.device, precision):
            logits = model(batch.z, batch.signal, n_nograd=n_iters, positions=masked.nonzero(as_tuple=True)).logits
        logp.append(logits.double()[..., :mask_id].log_softmax(-1))
    kl = (logp[0].exp() * (logp[0] - logp[1])).sum(-1)
    return float(kl.sum()), int(masked.sum())


@torch.no_grad()
def residual_curve(model: Any, task: Any, val: Tensor, labels: Tensor | None, batches: list[Tensor], n_iters: int,
                   generator: torch.Generator, precision: str) -> list[float]:
    """Median over held-out samples (noised as in training) of the relative residual at each iteration."""
    per_iteration: list[list[Tensor]] = [[] for _ in range(n_iters)]
    for rows in batches:
        x = val[rows].long().to(generator.device)
        batch = task.noise(x, generator=generator, labels=labels[rows].to(x.device) if labels is not None else None)
        with autocast(x.device, precision):
            out = model(batch.z, batch.signal, n_nograd=n_iters, positions=batch.masked.nonzero(as_tuple=True),
                        track_residuals=True)
        for i, r in enumerate(out.stats.residuals):
            per_iteration[i].append(r.float().cpu())
    return [float(torch.cat(values).median()) for values in per_iteration]


def probe(ckpt: Any, data: Any, batches: int, batch_size: int, precision: str, seed: int = PROBE_SEED) -> ProbeResult:
    """The three checks on `batches` x `batch_size` held-out sequences of an opened checkpoint (`LoadedCheckpoint`)."""
    from cofre.evaluation.valppl import bound_totals, summarize_totals

    model, recipe, device = ckpt.model.eval(), ckpt.recipe, ckpt.device
    task = build_task(recipe)
    val = data.val
    rows = [torch.arange(k * batch_size, (k + 1) * batch_size) % val.shape[0] for k in range(batches)]
    n_iters = recipe.solver.eval_iters if model.cfg.is_fixed_point else 0
    kl: dict[str, float] = {}
    for t in PROBE_TIMES:
        generator = torch.Generator(device).manual_seed(seed)
        total, count = 0.0, 0
        for r in rows:
            labels = data.val_labels[r].to(device) if data.val_labels is not None else None
            value, n = context_kl(model, task, val[r].long().to(device), labels, t, generator, n_iters, precision)
            total, count = total + value, count + n
        kl[f"{t:g}"] = total / max(count, 1)
    generator = torch.Generator(device).manual_seed(seed)
    totals = bound_totals(model, task, val, range(batches), batch_size, n_iters, generator,
                          lambda: autocast(device, precision), labels=data.val_labels)
    bound = summarize_totals(totals, model.cfg.is_fixed_point)
    unigram = unigram_perplexity(data.train, val, model.cfg.mask_id)
    result = ProbeResult(run=str(ckpt.run_root), checkpoint=ckpt.identity, modality=model.cfg.modality,
                         blocks=batches * batch_size, context_kl=kl, val_nll=bound["val_nll"], val_ppl=bound["val_ppl"],
                         unigram_ppl=unigram, eval_iters=n_iters, precision=precision, seed=seed)
    if model.cfg.is_fixed_point:
        result.residuals = residual_curve(model, task, val, data.val_labels, rows, n_iters,
                                          torch.Generator(device).manual_seed(seed), precision)
    result.checks = learning_checks(result)
    return result


def learning_checks(result: ProbeResult) -> list[Check]:
    """What 'the model learned' means at the small tier: context use, a converged fixed point, PPL far below unigram."""
    checks = [
        Check("context use at t = 0.5 (nats)", result.context_kl["0.5"], f">= {MIN_CONTEXT_NATS:g}",
              result.context_kl["0.5"] >= MIN_CONTEXT_NATS),
        Check("val PPL / unigram PPL", result.val_ppl / result.unigram_ppl, f"<= {MAX_PPL_RATIO:g}",
              result.val_ppl <= MAX_PPL_RATIO * result.unigram_ppl),
    ]
    if result.residuals:
        checks.append(Check(f"median relative residual after {result.eval_iters} iterations", result.residuals[-1],
                            f"<= {MAX_RESIDUAL:g}", result.residuals[-1] <= MAX_RESIDUAL))
    return checks
