"""Sampling budgets (§3.3, App. F.9-F.10): total transformer-block forward passes, split between
denoising steps and fixed-point iterations per step."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from cofre.checks import MAX_BUDGET
from cofre.config import ModelConfig
from cofre.errors import CofreError

Schedule = Literal["fixed", "decreasing", "increasing", "cosine", "front-loaded"]
SCHEDULES: tuple[str, ...] = ("fixed", "decreasing", "increasing", "cosine", "front-loaded")
DEFAULT_MEAN_ITERS = 4  # the step rule's target mean iterations per step (see `default_steps`)


def schedule_weights(schedule: str, steps: int) -> list[float]:
    """Relative share of the extra iterations given to each step, first step first (App. F.10)."""
    position = [(i + 0.5) / steps for i in range(steps)]  # step midpoints in (0, 1)
    if schedule == "fixed":
        return [1.0] * steps
    if schedule == "decreasing":  # more solving early, when the sequence is most corrupted
        return [1 - p for p in position]
    if schedule == "increasing":
        return list(position)
    if schedule == "cosine":  # a raised-cosine bump: most iterations mid-trajectory
        return [1 - math.cos(2 * math.pi * p) for p in position]
    if schedule == "front-loaded":  # the first quarter of the steps gets 3x the share of the rest
        return [3.0 if p < 0.25 else 1.0 for p in position]
    raise CofreError(f"unknown schedule '{schedule}'; choose one of {', '.join(SCHEDULES)}")


def allocate_iterations(total: int, steps: int, schedule: str) -> list[int]:
    """Per-step iterations N_i >= 1 that sum exactly to `total`: one each, the rest split by the schedule's
    weights with the largest-remainder rule (ties go to the earlier step)."""
    return allocate_by_weights(total, schedule_weights(schedule, steps))


def allocate_by_weights(total: int, weights: list[float]) -> list[int]:
    """`allocate_iterations` for explicit per-step weights (e.g. a schedule's weights at some of its steps)."""
    steps = len(weights)
    if steps < 1 or total < steps:
        raise CofreError(f"{total} fixed-point iterations cannot give each of {steps} steps at least one")
    extra = total - steps
    shares = [extra * w / sum(weights) for w in weights]
    counts = [math.floor(s) for s in shares]
    by_remainder = sorted(range(steps), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[: extra - sum(counts)]:
        counts[i] += 1
    return [1 + c for c in counts]


@dataclass(frozen=True)
class BudgetPlan:
    """How a budget is spent: steps and the fixed-point iterations of each (empty for a plain model)."""

    budget: int
    steps: int
    iterations: list[int]  # N_i per step; [] for a plain model
    blocks_per_step: list[int]  # K_pre + N_i K_fp + K_post, or the depth of a plain model
    models: list[str] = field(default_factory=list)  # a model schedule's H/L per step; [] = the one model throughout


def default_steps(cfg: ModelConfig, budget: int, mean_iters: int = DEFAULT_MEAN_ITERS) -> int:
    """The step rule when --steps is not given: as many steps as leave `mean_iters` iterations per step
    on average (a step costs K_pre + mean_iters K_fp + K_post), reduced until the budget divides exactly."""
    outer = cfg.K_pre + cfg.K_post
    steps = max(1, budget // (outer + mean_iters * cfg.K_fp))
    while steps > 1 and (budget - steps * outer) % cfg.K_fp:
        steps -= 1
    return steps


def plan_budget(cfg: ModelConfig, budget: int, steps: int | None, schedule: str) -> BudgetPlan:
    """Split `budget` block evaluations exactly, or say which budgets can be met."""
    if not 1 <= budget <= MAX_BUDGET:  # steps and per-step lists are built from it
        raise CofreError(f"--budget must be in 1..{MAX_BUDGET}, got {budget}")
    if not cfg.is_fixed_point:
        depth = cfg.K_pre + cfg.K_post
        if budget % depth:
            lower, upper = budget // depth * depth, (budget // depth + 1) * depth
            raise CofreError(
                f"budget {budget} is not a multiple of the model's {depth} blocks per step; "
                f"valid budgets are multiples of {depth}, e.g. {lower or depth} or {upper}"
            )
        if steps is not None and steps != budget // depth:
            raise CofreError(f"a plain model's budget fixes its steps: budget {budget} = {budget // depth} steps x {depth} blocks")
        return BudgetPlan(budget, budget // depth, [], [depth] * (budget // depth))
    steps = steps if steps is not None else default_steps(cfg, budget)
    outer = cfg.K_pre + cfg.K_post
    minimum = steps * (outer + cfg.K_fp)
    if steps < 1 or budget < minimum or (budget - steps * outer) % cfg.K_fp:
        raise CofreError(
            f"budget {budget} cannot be spent exactly in {steps} steps: each step costs {outer} + N x {cfg.K_fp} "
            f"blocks with N >= 1, so valid budgets are {minimum}, {minimum + cfg.K_fp}, {minimum + 2 * cfg.K_fp}, ..."
        )
    iterations = allocate_iterations((budget - steps * outer) // cfg.K_fp, steps, schedule)
    return BudgetPlan(budget, steps, iterations, [outer + n * cfg.K_fp for n in iterations])
