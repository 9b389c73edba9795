"""Model scheduling (Sedykh et al., "Not All Denoising Steps Are Equal", arXiv 2604.02340): a light denoiser
replaces the heavy one at a subset of the ancestral sampler's steps.

A schedule is a list of segments in step order, e.g. `L125,H750,L125` (the paper's OWT "sandwich": 125 light
steps, 750 heavy, 125 light) or fractions of `--steps`, `L0.125,H0.75,L0.125`. The schedule fixes the number of
steps; each step costs the blocks of the model that ran it (a plain model its depth, an FP model K_pre + N_i K_fp +
K_post), so the budget is derived from the schedule, and the saving is measured against the heavy model running
every step. An FP model spends its recipe's solver.eval_iters per step on average: N x eval_iters iterations over
its N steps, split by the sampler's iteration schedule (`--schedule`, the weight of each step at its place in the
whole trajectory; `fixed`: eval_iters at every step).

Blocks measure FLOPs only between models of one width, and leave out an FP model's injection mix. So the cost is
also counted in forward FLOPs per token from both models' shapes (cofre.flops: blocks at their width, the FP mix
per iteration and the injection per step, the head), and both savings are reported. The sampler needs no equal
widths: hidden states never pass between the models (a switch starts from the new model's h_pre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cofre.checks import MAX_BUDGET, check_range
from cofre.config import Recipe
from cofre.errors import CofreError
from cofre.flops import FlopCounts
from cofre.sampling.budget import BudgetPlan, allocate_by_weights, schedule_weights

HEAVY, LIGHT = "H", "L"
SWITCH_WARM_START = "h_pre"  # an FP model's solve after the other model ran the previous step starts from h_pre


@dataclass(frozen=True)
class Segment:
    model: str  # "H" or "L"
    steps: int


def parse_model_schedule(text: str, steps: int | None = None) -> list[Segment]:
    """`L125,H750,L125` (step counts; `steps`, when given, must equal their sum) or `L0.125,H0.75,L0.125`
    (fractions of `steps`, summing to 1, each a whole number of steps). Adjacent segments of one model merge."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise CofreError(f"--model-schedule '{text}' names no segment; e.g. L125,H750,L125")
    letters, amounts = [], []
    for part in parts:
        letter, amount = part[0].upper(), part[1:]
        if letter not in (HEAVY, LIGHT):
            raise CofreError(f"--model-schedule segment '{part}' names an unknown model '{part[0]}'; "
                             "use H (heavy) or L (light), e.g. L125,H750,L125")
        try:
            value = float(amount)
        except ValueError:
            raise CofreError(f"--model-schedule segment '{part}' needs a step count or fraction after "
                             f"'{letter}', e.g. {letter}125 or {letter}0.125") from None
        if not value > 0 or math.isinf(value):
            raise CofreError(f"--model-schedule segment '{part}' must cover a positive number of steps")
        if value > MAX_BUDGET:  # a step costs at least one block: checked before any list of steps is built
            raise CofreError(f"--model-schedule segment '{part}' covers more than {MAX_BUDGET} steps")
        letters.append(letter)
        amounts.append((amount, value))
    fractions = ["." in a for a, _ in amounts]
    if any(fractions) and not all(fractions):
        raise CofreError(f"--model-schedule '{text}' mixes step counts and fractions; use one kind")
    if all(fractions):
        if steps is None:
            raise CofreError(f"--model-schedule '{text}' gives fractions; add --steps to say how many steps they divide")
        total = sum(v for _, v in amounts)
        if abs(total - 1) > 1e-9:
            raise CofreError(f"--model-schedule '{text}' fractions sum to {total:g}, not 1: they do not cover the "
                             f"{steps} steps")
        counts = []
        for (amount, value), letter in zip(amounts, letters):
            exact = value * steps
            if abs(exact - round(exact)) > 1e-6 or round(exact) < 1:
                raise CofreError(f"--model-schedule segment {letter}{amount} of {steps} steps is {exact:g} steps; "
                                 "choose --steps so that every segment is a whole number of steps")
            counts.append(round(exact))
    else:
        if any(v != int(v) for _, v in amounts):
            raise CofreError(f"--model-schedule '{text}': step counts must be whole numbers")
        counts = [int(v) for _, v in amounts]
        check_range(f"--model-schedule '{text}': its total steps", sum(counts), 1, MAX_BUDGET)
        if steps is not None and sum(counts) != steps:
            raise CofreError(f"--model-schedule '{text}' covers {sum(counts)} steps, not the {steps} of --steps")
    segments: list[Segment] = []
    for letter, count in zip(letters, counts):
        if segments and segments[-1].model == letter:
            segments[-1] = Segment(letter, segments[-1].steps + count)
        else:
            segments.append(Segment(letter, count))
    return segments


def schedule_text(segments: list[Segment]) -> str:
    """The canonical form, step counts: `L125,H750,L125`."""
    return ",".join(f"{s.model}{s.steps}" for s in segments)


def step_models(segments: list[Segment]) -> list[str]:
    """The model of each step, first step first."""
    return [s.model for s in segments for _ in range(s.steps)]


def check_compatible(heavy: Recipe, light: Recipe, heavy_name: str, light_name: str) -> None:
    """Two denoisers can share one trajectory when they read and write the same tokens: text models with the same
    vocabulary (tokenizer and [mask] id), trained sequence length and noise schedule."""
    for recipe, name in ((heavy, heavy_name), (light, light_name)):
        if recipe.model.modality != "text":
            raise CofreError(f"{name} is an image model; model scheduling schedules text (MDLM) denoisers")
    pairs = {"vocabulary size (tokenizer)": (heavy.model.vocab_size, light.model.vocab_size),
             "[mask] id": (heavy.model.mask_id, light.model.mask_id),
             "sequence length": (heavy.data.seq_len, light.data.seq_len),
             "task.eps (noise schedule)": (heavy.task.eps, light.task.eps)}
    for what, (h, l) in pairs.items():
        if h != l:
            raise CofreError(f"the light model {light_name} has {what} {l}, the heavy model {heavy_name} {h}; "
                             "scheduled models must share tokenizer, sequence length and [mask] id")


def step_iterations(recipe: Recipe) -> int:
    """Fixed-point iterations an FP model spends per step of a schedule on average (its solver.eval_iters); 0 for a
    plain model."""
    return recipe.solver.eval_iters if recipe.model.is_fixed_point else 0


def blocks_of_step(recipe: Recipe) -> int:
    """Blocks one step of this model costs on average: K_pre + N K_fp + K_post (a plain model: its depth)."""
    m = recipe.model
    return m.K_pre + step_iterations(recipe) * m.K_fp + m.K_post


@dataclass
class ScheduleCost:
    """What a schedule spends: blocks per model, against the heavy model alone over the same steps."""

    schedule: str  # canonical step counts, e.g. L125,H750,L125
    segments: list[dict[str, Any]]
    steps: int
    heavy_steps: int
    light_steps: int
    heavy_blocks_per_step: int
    light_blocks_per_step: int
    heavy_blocks: int  # blocks spent by the heavy model's steps
    light_blocks: int
    blocks_spent: int  # the derived budget: the sum over steps of the blocks of the model that ran it
    heavy_alone_blocks: int  # the same steps, all heavy
    saving: float  # 1 - blocks_spent / heavy_alone_blocks
    heavy_iterations: int  # fixed-point iterations per heavy step on average (0: plain)
    light_iterations: int
    seq_len: int  # the sequence length the FLOPs are counted at
    heavy_width: int  # hidden width of each model (blocks of different widths cost different FLOPs)
    light_width: int
    heavy_step_flops: float  # forward FLOPs per token of one step's network pass at the mean iterations, head aside
    light_step_flops: float
    flops_per_token: float  # the whole schedule: every step with the model that ran it, plus the head
    heavy_alone_flops_per_token: float  # the same steps, all heavy
    flop_saving: float  # 1 - flops_per_token / heavy_alone_flops_per_token
    switch_warm_start: str = SWITCH_WARM_START
    counted: str = field(default="blocks: per step, those of the model that ran it; FLOPs (cofre.flops, forward, per "
                                 "token): per step, that model's blocks at its width, an FP model's injection once and "
                                 "its mix per iteration, and the head at each step's expected share of reveals (1/S)")


def schedule_cost(segments: list[Segment], heavy: Recipe, light: Recipe, seq_len: int) -> ScheduleCost:
    """Blocks and forward FLOPs per token spent by a schedule at sequence length `seq_len`, each counted per step with
    the model that ran it, against the heavy model alone."""
    per_step = {HEAVY: blocks_of_step(heavy), LIGHT: blocks_of_step(light)}
    models = step_models(segments)
    count = {name: models.count(name) for name in per_step}
    spent = sum(per_step[m] for m in models)
    alone = len(models) * per_step[HEAVY]
    flops = {name: FlopCounts.of_config(r.model, seq_len) for name, r in ((HEAVY, heavy), (LIGHT, light))}
    # FLOPs are linear in the iterations, so the mean iterations per step give the total whatever --schedule
    step_flops = {name: flops[name].step(r.model, step_iterations(r)) for name, r in ((HEAVY, heavy), (LIGHT, light))}
    # each token meets one head, at the step that reveals it: in expectation 1/S of the tokens at each step
    head = {name: flops[name].head for name in flops}
    scheduled = sum(count[m] * (step_flops[m] + head[m] / len(models)) for m in count)
    heavy_alone = len(models) * step_flops[HEAVY] + head[HEAVY]
    return ScheduleCost(
        schedule=schedule_text(segments), segments=[{"model": s.model, "steps": s.steps} for s in segments],
        steps=len(models), heavy_steps=count[HEAVY], light_steps=count[LIGHT], heavy_blocks_per_step=per_step[HEAVY],
        light_blocks_per_step=per_step[LIGHT], heavy_blocks=count[HEAVY] * per_step[HEAVY],
        light_blocks=count[LIGHT] * per_step[LIGHT], blocks_spent=spent, heavy_alone_blocks=alone,
        saving=1 - spent / alone, heavy_iterations=step_iterations(heavy), light_iterations=step_iterations(light),
        seq_len=seq_len, heavy_width=heavy.model.hidden, light_width=light.model.hidden,
        heavy_step_flops=step_flops[HEAVY], light_step_flops=step_flops[LIGHT], flops_per_token=scheduled,
        heavy_alone_flops_per_token=heavy_alone, flop_saving=1 - scheduled / heavy_alone,
    )


def plan_schedule(segments: list[Segment], heavy: Recipe, light: Recipe, schedule: str,
                  budget: int | None = None) -> BudgetPlan:
    """The sampler's plan for a schedule: per step its model, iterations and blocks; the budget is their sum
    (`budget`, when given, must equal it). An FP model's N x eval_iters iterations over its N steps are split by the
    iteration `schedule`'s weights at those steps' places in the whole trajectory."""
    per_step = {HEAVY: blocks_of_step(heavy), LIGHT: blocks_of_step(light)}
    blocks_spent = sum(per_step[s.model] * s.steps for s in segments)
    check_range(f"--model-schedule {schedule_text(segments)}: the blocks it spends per sample", blocks_spent, 1, MAX_BUDGET)
    models = step_models(segments)
    recipes = {HEAVY: heavy, LIGHT: light}
    weights = schedule_weights(schedule, len(models))
    iterations = [0] * len(models)
    for name, recipe in recipes.items():
        steps = [i for i, m in enumerate(models) if m == name]
        if recipe.model.is_fixed_point and steps:
            allocated = allocate_by_weights(step_iterations(recipe) * len(steps), [weights[i] for i in steps])
            for i, n in zip(steps, allocated):
                iterations[i] = n
    blocks = [recipes[m].model.K_pre + n * recipes[m].model.K_fp + recipes[m].model.K_post
              for m, n in zip(models, iterations)]
    if budget is not None and budget != sum(blocks):
        raise CofreError(f"--model-schedule {schedule_text(segments)} spends {sum(blocks)} blocks ({models.count(HEAVY)} "
                         f"heavy steps x {per_step[HEAVY]} + {models.count(LIGHT)} light x {per_step[LIGHT]}), "
                         f"not the --budget {budget}")
    any_fp = heavy.model.is_fixed_point or light.model.is_fixed_point
    return BudgetPlan(sum(blocks), len(models), iterations if any_fp else [], blocks, models)


def schedule_summary(cost: dict[str, Any]) -> list[tuple[str, str]]:
    """Rows for a terminal summary of a schedule's cost (a `ScheduleCost` as written in JSON)."""
    return [
        ("model schedule", f"{cost['schedule']} (H: this run, L: {cost['light']['path']}; a switch starts from "
                           f"{cost['switch_warm_start']})"),
        ("blocks: heavy + light", f"{cost['heavy_steps']} x {cost['heavy_blocks_per_step']} + {cost['light_steps']} x "
                                  f"{cost['light_blocks_per_step']} = {cost['heavy_blocks']} + {cost['light_blocks']} = "
                                  f"{cost['blocks_spent']}"),
        ("saving vs heavy alone", f"{100 * cost['saving']:.1f}% of {cost['heavy_alone_blocks']} blocks; "
                                  f"{100 * cost['flop_saving']:.1f}% of {cost['heavy_alone_flops_per_token']:.4g} "
                                  f"FLOPs per token (widths {cost['heavy_width']} / {cost['light_width']}, FP mix "
                                  f"included)"),
    ]
