"""MDLM's ancestral sampler under a block budget, with the fixed-point solve and its warm start (Alg. 1).

Each step t -> s reveals every still-masked token independently with probability (alpha_s - alpha_t) /
(1 - alpha_t) = (t - s) / t and draws its value from the denoiser's SUBS distribution; this is exactly
MDLM's transition q(z_s | z_t, x_theta) split in two, so the head and the float64 categorical are only
needed at the positions being revealed. The grid t_i = 1 - i/S ends at 0, so the last step reveals all.
With `noise_removal` the grid is MDLM's: S - 1 steps from t = 1 to 1e-5, then MDLM's noise removal, one
more network pass at t = 1e-5 that fills every still-masked token with its most likely value; that pass is
the budget's last step, so its blocks are counted like any other.

With a light model and a plan that names a model per step (model scheduling, `model_schedule.py`), each step's
network pass is the named model's and costs that model's blocks; the reveal draws are the same, so an all-heavy
schedule draws exactly the heavy model's samples. A switch of model resets the warm start: the new model's
solve starts from its own h_pre (hidden states of two models are not interchangeable).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from cofre.models import Denoiser
from cofre.models.denoiser import Conditioning
from cofre.precision import autocast
from cofre.sampling.budget import BudgetPlan
from cofre.sampling.reuse import TRANSITION_NAMES, ReuseConfig, transition_types, warm_start
from cofre.solver import SolveStats, solve
from cofre.tasks.mdlm import LogLinearSchedule

if TYPE_CHECKING:
    from cofre.sampling.shortcut import StepHook


@dataclass(frozen=True)
class SamplerConfig:
    """Everything that decides what a sampler draws, besides the model, the plan and the seed."""

    length: int
    reuse: ReuseConfig = field(default_factory=ReuseConfig)
    top_p: float = 1.0  # nucleus sampling; 1 keeps the whole distribution
    temperature: float = 1.0  # softmax temperature of every draw (logits / temperature, in float64)
    noise_removal: bool = False  # MDLM's final pass at t = 1e-5: argmax fill of what is still masked (the last step)
    cache: bool = False  # skip the network when no token is revealed (spends less); a shortcut's full steps still run
    tol: float | None = None  # adaptive stopping: leave the solve once every residual is below tol
    trace: bool = False  # record residuals per iteration and solution shifts per transition type
    precision: str = "fp32"  # the network's: fp32, or bf16 autocast (logits are float64 before every draw)


@dataclass
class StepRecord:
    """What one denoising step did (and, with trace, how the solver behaved)."""

    step: int
    t: float
    allocated_iters: int  # N_i from the schedule plus iterations carried over by adaptive stopping
    iterations: int
    blocks: int
    revealed: int
    cached: bool
    model: str = "H"  # which denoiser ran the step: H (the sampled run) or L (a model schedule's light model)
    shortcut: bool = False  # MIGM-Shortcut: the features came from the shortcut S, no network pass (no blocks)
    residuals: list[float] = field(default_factory=list)  # mean relative residual per iteration (App. F.12)
    solution_shift: dict[str, float] = field(default_factory=dict)  # mean ||h*_t - h*_prev|| per type (Fig. 3)


@dataclass
class SampleBatch:
    tokens: Tensor  # [B, L], no [mask] left
    blocks_spent: int
    steps: list[StepRecord]


NOISE_REMOVAL_T = 1e-5  # MDLM's sampling grid ends here (`_sample(eps=1e-5)`); its noise removal runs at it


def time_grid(steps: int, noise_removal: bool) -> list[float]:
    """t_0 = 1 > ... > t_S = 0 for S network passes: 1 - i/S, or with noise removal MDLM's grid from 1 to
    1e-5 over the first S - 1 steps and a last step from 1e-5 to 0 (the noise-removal pass, which reveals all)."""
    if not noise_removal:
        return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64).tolist()
    return torch.linspace(1.0, NOISE_REMOVAL_T, steps, dtype=torch.float64).tolist() + [0.0]


def nucleus(log_p: Tensor, top_p: float) -> Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p; the rest get -inf."""
    sorted_log_p, order = log_p.sort(dim=-1, descending=True)
    mass_before = sorted_log_p.exp().cumsum(dim=-1) - sorted_log_p.exp()
    drop_sorted = mass_before >= top_p  # the token that crosses top_p is kept
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return log_p.masked_fill(drop, float("-inf"))


def draw_tokens(logits: Tensor, mask_id: int, top_p: float, greedy: bool, generator: torch.Generator,
                temperature: float = 1.0) -> Tensor:
    """Token values at revealed positions: SUBS ([mask] excluded), float64 (App. D.4), temperature, optional top-p."""
    log_p = (logits.double()[:, :mask_id] / temperature).log_softmax(dim=-1)
    if greedy:
        return log_p.argmax(dim=-1)
    if top_p < 1.0:
        log_p = nucleus(log_p, top_p)
    u = torch.rand(log_p.shape, dtype=torch.float64, generator=generator, device=log_p.device)
    gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))  # Gumbel-max draws from softmax(log_p)
    return (log_p + gumbel).argmax(dim=-1)


def reveal(z: Tensor, t: Tensor | float, s: Tensor | float, mask_id: int, generator: torch.Generator) -> Tensor:
    """The first half of MDLM's transition t -> s: each still-masked token is revealed independently with
    probability (alpha_s - alpha_t) / (1 - alpha_t) = (t - s) / t (log-linear schedule); t, s are floats or [B]."""
    chance = (t - s) / t
    if isinstance(chance, Tensor):
        chance = chance.double()[:, None]
    u = torch.rand(z.shape, generator=generator, device=z.device, dtype=torch.float64)
    return (z == mask_id) & (u < chance)


def fill_revealed(z: Tensor, revealed: Tensor, logits: Tensor, mask_id: int, top_p: float, greedy: bool,
                  generator: torch.Generator, temperature: float = 1.0) -> Tensor:
    """The second half: the revealed tokens take values drawn from `logits`, given at `revealed.nonzero()`
    positions in that order (float64, SUBS); every other token is kept."""
    z = z.clone()
    z[revealed] = draw_tokens(logits, mask_id, top_p, greedy, generator, temperature)
    return z


def _solution_shift(h_star: Tensor, h_prev: Tensor, kinds: Tensor) -> dict[str, float]:
    distance = (h_star - h_prev).float().norm(dim=-1)[:, : kinds.shape[1]]  # per token (register tokens left out)
    return {name: float(distance[kinds == k].mean()) for k, name in enumerate(TRANSITION_NAMES) if (kinds == k).any()}


@dataclass
class NetworkStep:
    """One denoising step's pass through the network: the head's normalised input (`Denoiser.head_features`, what
    MIGM-Shortcut records and predicts) and, for an FP model, the solution h* (the next step's warm-start source)
    and what the solve did."""

    features: Tensor
    h_star: Tensor | None
    stats: SolveStats | None


def network_step(model: Denoiser, z: Tensor, cond: Conditioning, h_prev: Tensor | None, z_prev: Tensor | None,
                 iters: int, reuse: ReuseConfig, tol: float | None, trace: bool) -> NetworkStep:
    """P, then (FP models) G and the solve from the warm start of Alg. 1 for up to `iters` iterations, then H and
    the head's norm; shared by the text and image samplers."""
    h = model.pre_stack(z, cond)  # h_pre (the whole network for a plain model)
    if model.fixed_point is None:
        return NetworkStep(model.head_features(model.post_stack(h, cond)), None, None)
    injected = model.inject(h)
    h0 = warm_start(h, h_prev, z, z_prev, model.cfg.mask_id, reuse)
    h, stats = solve(lambda x: model.fp_step(x, injected, cond), h0, iters, tol, trace)
    return NetworkStep(model.head_features(model.post_stack(h, cond)), h, stats)


def hooked_step(hook: StepHook | None, i: int, record: StepRecord, z: Tensor) -> NetworkStep | None:
    """The shortcut's features in place of the network's pass at step i, or None when the network runs."""
    features = hook.predict(i, z) if hook is not None else None
    if features is None:
        return None
    record.shortcut = True
    return NetworkStep(features, None, None)


def record_solve(record: StepRecord, step: NetworkStep, h_prev: Tensor | None, z: Tensor, z_prev: Tensor | None,
                 mask_id: int, trace: bool) -> None:
    """Iterations, and with `trace` the residual per iteration and the solution shift per transition type."""
    assert step.stats is not None and step.h_star is not None
    record.iterations = step.stats.iterations
    record.residuals = [float(r.mean()) for r in step.stats.residuals] if trace else []
    if trace and h_prev is not None and z_prev is not None:
        record.solution_shift = _solution_shift(step.h_star, h_prev, transition_types(z, z_prev, mask_id))


class MDLMSampler:
    """Owns the solver's warm-start state across the steps of one batch; the model stays a pure function."""

    def __init__(self, model: Denoiser, plan: BudgetPlan, cfg: SamplerConfig, eps: float = 1e-3,
                 light: Denoiser | None = None, hook: StepHook | None = None) -> None:
        self.model = model.eval()
        self.models = {"H": self.model, **({"L": light.eval()} if light is not None else {})}
        self.plan = plan
        self.cfg = cfg
        self.schedule = LogLinearSchedule(eps)
        self.mask_id = model.cfg.mask_id
        self.hook = hook  # MIGM-Shortcut's steps, or a trajectory recorder (cofre.sampling.shortcut)

    @torch.no_grad()
    def sample(self, batch_size: int, generator: torch.Generator, start: Tensor | None = None) -> SampleBatch:
        """`batch_size` sequences from all-[mask], or from `start` ([length] ids, [mask] where to generate): only
        masked positions are ever revealed, so the given tokens condition every step (a prompt, or infilling)."""
        cfg, plan = self.cfg, self.plan
        device = next(self.model.parameters()).device
        if start is None:
            z = torch.full((batch_size, cfg.length), self.mask_id, dtype=torch.long, device=device)
        else:
            z = start.to(device=device, dtype=torch.long).expand(batch_size, cfg.length).clone()
        times = time_grid(plan.steps, cfg.noise_removal)
        h_prev: Tensor | None = None
        z_prev: Tensor | None = None
        carry = dict.fromkeys(self.models, 0)  # unspent iterations stay with the model that left them
        spent, records, counts, last = 0, [], [], "H"
        if self.hook is not None:
            self.hook.start()
        for i in range(plan.steps):
            t, s = times[i], times[i + 1]
            revealed = reveal(z, t, s, self.mask_id, generator)
            name = plan.models[i] if plan.models else "H"
            model = self.models[name]
            if name != last:
                h_prev = z_prev = None  # a switch of model: the solve starts from this model's h_pre
                last = name
            allocated = plan.iterations[i] + carry[name] if plan.iterations and model.fixed_point is not None else 0
            record = StepRecord(step=i, t=t, allocated_iters=allocated, iterations=0, blocks=0, revealed=0, cached=False,
                                model=name)
            records.append(record)
            counts.append(revealed.sum())  # counts are read once after the loop (the cache needs them now)
            if cfg.cache and int(counts[-1]) == 0 and not (self.hook is not None and self.hook.must_run(i)):
                record.cached = True  # nothing changes: MDLM's cache shortcut, no network call, no blocks
                continue
            with autocast(device, cfg.precision):
                cond = model.conditioning(self.schedule.sigma(torch.full((batch_size,), t, device=device)), cfg.length)
                step = hooked_step(self.hook, i, record, z)
                step = step or network_step(model, z, cond, h_prev, z_prev, allocated, cfg.reuse, cfg.tol, cfg.trace)
                if step.h_star is not None:
                    record_solve(record, step, h_prev, z, z_prev, self.mask_id, cfg.trace)
                    carry[name] = allocated - record.iterations  # unspent iterations move on to later steps
                    h_prev, z_prev = step.h_star, z
                record.blocks = 0 if record.shortcut else model.blocks_per_step(record.iterations)
                spent += record.blocks
                if self.hook is not None:
                    self.hook.observe(i, z, step.features)
                logits = model.head_logits(step.features, cond, revealed.nonzero(as_tuple=True))
            greedy = cfg.noise_removal and i == plan.steps - 1  # MDLM's noise removal: argmax of the final pass
            z = fill_revealed(z, revealed, logits, self.mask_id, cfg.top_p, greedy, generator, cfg.temperature)
        for record, count in zip(records, torch.stack(counts).tolist()):
            record.revealed = count
        return SampleBatch(tokens=z, blocks_spent=spent, steps=records)
