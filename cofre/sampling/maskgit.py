"""MaskGIT's sampler on image codes under a block budget: Halton or confidence reveal order, arccos reveal counts,
temperature and classifier-free guidance schedules, and the fixed-point solve with its warm start (Alg. 1).

Reveal is monotonic (a revealed code never changes), so Alg. 1's three token states apply unchanged. With
guidance, the unconditional pass runs on the same batch (the label replaced by the dropped class) and keeps
its own solver state; the budget counts transformer blocks per sample, so that pass is not counted twice
(DESIGN.md §9: the paper's 48 = 2 steps x 24 layers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.precision import autocast
from cofre.sampling.budget import BudgetPlan
from cofre.sampling.mdlm import SampleBatch, StepRecord, hooked_step, network_step, record_solve
from cofre.sampling.reuse import ReuseConfig

if TYPE_CHECKING:
    from cofre.sampling.shortcut import StepHook

Order = Literal["halton", "confidence"]
ORDERS: tuple[str, ...] = ("halton", "confidence")
CFG_SCHEDULES: tuple[str, ...] = ("constant", "linear")


# -- which cells are revealed, and how many per step ---------------------------------------------------------
def radical_inverse(index: int, base: int) -> float:
    """The van der Corput point of `index` in `base`: its digits mirrored about the radix point."""
    value, scale = 0.0, 1.0 / base
    while index:
        index, digit = divmod(index, base)
        value += digit * scale
        scale /= base
    return value


def halton_order(height: int, width: int) -> Tensor:
    """Every cell of a height x width grid once, flat (row * width + col), in the order the 2-D Halton sequence
    (bases 2 for rows and 3 for columns, Halton 1964) first lands in it: low-discrepancy, so each prefix is
    spread over the whole grid (Besnier et al.); points landing in a visited cell are skipped."""
    seen: set[int] = set()
    order: list[int] = []
    index = 1
    while len(order) < height * width:
        cell = int(radical_inverse(index, 2) * height) * width + int(radical_inverse(index, 3) * width)
        if cell not in seen:
            seen.add(cell)
            order.append(cell)
        index += 1
    return torch.tensor(order, dtype=torch.long)


def reveal_counts(steps: int, cells: int) -> list[int]:
    """Cells revealed at each step, from the arccos schedule: after step k, 1 - arccos(k / S) / (pi / 2) of the
    grid is visible; every step reveals at least one cell and the counts sum to the grid."""
    if not 1 <= steps <= cells:
        raise CofreError(f"{steps} steps cannot each reveal a cell of a {cells}-cell grid; use 1..{cells} steps")
    visible = 0
    counts = []
    for k in range(1, steps + 1):
        target = math.floor((1 - math.acos(k / steps) / (math.pi / 2)) * cells + 1e-9)
        target = min(max(target, visible + 1), cells - (steps - k))  # >= 1 now, >= 1 left for each later step
        counts.append(target - visible)
        visible = target
    return counts


# -- guidance and temperature ----------------------------------------------------------------------------------
def guided_logits(cond: Tensor, uncond: Tensor, w: float) -> Tensor:
    """Classifier-free guidance: (1 + w) cond - w uncond (w = 0: the conditional logits)."""
    return (1 + w) * cond - w * uncond


def schedule_value(start: float, end: float, step: int, steps: int) -> float:
    """Linear from `start` at the first step to `end` at the last (constant when they are equal)."""
    return start if steps == 1 else start + (end - start) * step / (steps - 1)


@dataclass(frozen=True)
class ImageSamplerConfig:
    """Everything that decides what the image sampler draws, besides the model, the plan, the labels and the seed."""

    order: Order = "halton"
    rotate: bool = False  # Halton: roll the order by a random offset per sample
    temperature: float = 1.0  # softmax temperature at the first step ...
    temperature_end: float = 1.0  # ... and at the last, linear in between
    cfg: float = 0.0  # guidance weight w at the last step
    cfg_schedule: str = "constant"  # constant: w at every step; linear: 0 at the first step up to w at the last
    confidence_noise: float = 4.5  # confidence order: Gumbel noise on log-confidence, scaled by (1 - step / steps)
    reuse: ReuseConfig = field(default_factory=ReuseConfig)
    tol: float | None = None
    trace: bool = False
    precision: str = "fp32"


def draw_codes(logits: Tensor, mask_id: int, temperature: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Codes drawn from softmax(logits / temperature) in float64 over the codebook ([mask] excluded), with the
    log-probability of each draw (the confidence of MaskGIT's order)."""
    log_p = (logits.double()[..., :mask_id] / temperature).log_softmax(dim=-1)
    u = torch.rand(log_p.shape, dtype=torch.float64, generator=generator, device=log_p.device)
    codes = (log_p - torch.log(-torch.log(u.clamp_min(1e-300)))).argmax(dim=-1)  # Gumbel-max
    return codes, log_p.gather(-1, codes[..., None])[..., 0]


class MaskGITSampler:
    """Owns the solver's warm-start state across the steps of one batch; the model stays a pure function."""

    def __init__(self, model: Denoiser, plan: BudgetPlan, grid: tuple[int, int], cfg: ImageSamplerConfig,
                 hook: StepHook | None = None) -> None:
        self.model = model.eval()
        self.hook = hook  # MIGM-Shortcut's steps, or a trajectory recorder (cofre.sampling.shortcut)
        self.plan = plan
        self.grid = grid
        self.cfg = cfg
        self.mask_id = model.cfg.mask_id
        self.null_class = model.cfg.num_classes
        self.cells = grid[0] * grid[1]
        self.counts = reveal_counts(plan.steps, self.cells)
        self.order = halton_order(*grid)

    def _halton_cells(self, batch: int, generator: torch.Generator, device: torch.device) -> Tensor:
        """[B, cells]: each sample's reveal order (the Halton order, rolled per sample when `rotate`)."""
        order = self.order.to(device).expand(batch, -1)
        if not self.cfg.rotate:
            return order
        shift = torch.randint(0, self.cells, (batch, 1), generator=generator, device=device)
        index = (torch.arange(self.cells, device=device) - shift) % self.cells  # torch.roll by `shift`, per row
        return order.gather(1, index)

    @torch.no_grad()
    def sample(self, labels: Tensor, generator: torch.Generator) -> SampleBatch:
        """Codes [B, cells] for class `labels` [B] (on the model's device)."""
        model, cfg, plan = self.model, self.cfg, self.plan
        device = labels.device
        batch = labels.shape[0]
        guided = cfg.cfg != 0
        signal = torch.cat([labels, torch.full_like(labels, self.null_class)]) if guided else labels
        z = torch.full((batch, self.cells), self.mask_id, dtype=torch.long, device=device)
        cells = self._halton_cells(batch, generator, device) if cfg.order == "halton" else None
        h_prev: Tensor | None = None
        z_prev: Tensor | None = None
        carry, spent, revealed, records = 0, 0, 0, []
        if self.hook is not None:
            self.hook.start()
        for i in range(plan.steps):
            allocated = plan.iterations[i] + carry if plan.iterations else 0
            record = StepRecord(step=i, t=1 - revealed / self.cells, allocated_iters=allocated, iterations=0, blocks=0,
                                revealed=self.counts[i] * batch, cached=False)
            records.append(record)
            zz = torch.cat([z, z]) if guided else z  # the unconditional half sees the same codes
            with autocast(device, cfg.precision):
                cond = model.conditioning(signal, self.cells)
                step = hooked_step(self.hook, i, record, zz)  # the shortcut sees the guided batch: both halves
                step = step or network_step(model, zz, cond, h_prev, z_prev, allocated, cfg.reuse, cfg.tol, cfg.trace)
                if step.h_star is not None:
                    record_solve(record, step, h_prev, zz, z_prev, self.mask_id, cfg.trace)
                    carry = allocated - record.iterations  # unspent iterations move on to later steps
                    h_prev, z_prev = step.h_star, zz
                # per sample: the guided pass is not counted twice
                record.blocks = 0 if record.shortcut else model.blocks_per_step(record.iterations)
                spent += record.blocks
                if self.hook is not None:
                    self.hook.observe(i, zz, step.features)
                logits = model.head_logits(step.features, cond)
            logits = logits.double()  # App. D.4: float64 before sampling
            if guided:
                w = schedule_value(0.0 if cfg.cfg_schedule == "linear" else cfg.cfg, cfg.cfg, i, plan.steps)
                logits = guided_logits(logits[:batch], logits[batch:], w)
            temperature = schedule_value(cfg.temperature, cfg.temperature_end, i, plan.steps)
            codes, log_conf = draw_codes(logits, self.mask_id, temperature, generator)
            chosen = self._choose(z, cells, log_conf, revealed, self.counts[i], i, generator)
            z = torch.where(chosen, codes, z)
            revealed += self.counts[i]
        return SampleBatch(tokens=z, blocks_spent=spent, steps=records)

    def _choose(self, z: Tensor, cells: Tensor | None, log_conf: Tensor, revealed: int, count: int, step: int,
                generator: torch.Generator) -> Tensor:
        """[B, cells] bool: the `count` cells revealed at this step."""
        chosen = torch.zeros_like(z, dtype=torch.bool)
        if cells is not None:  # Halton: the next `count` cells of each sample's order
            return chosen.scatter(1, cells[:, revealed : revealed + count], True)
        # MaskGIT: the most confident still-masked cells, with Gumbel noise that fades over the steps
        u = torch.rand(log_conf.shape, dtype=torch.float64, generator=generator, device=z.device)
        noise = -torch.log(-torch.log(u.clamp_min(1e-300)))
        score = log_conf + self.cfg.confidence_noise * (1 - step / self.plan.steps) * noise
        score = score.masked_fill(z != self.mask_id, float("-inf"))
        return chosen.scatter(1, score.topk(count, dim=1).indices, True)
