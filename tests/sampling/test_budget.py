"""Budget allocation: every schedule spends the budget exactly; impossible budgets say which are possible."""

import pytest

from cofre.config import ModelConfig
from cofre.errors import CofreError
from cofre.sampling.budget import SCHEDULES, allocate_iterations, default_steps, plan_budget

FP = ModelConfig(K_pre=1, K_fp=1, K_post=1)
PLAIN = ModelConfig(K_pre=12)


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("total, steps", [(64, 16), (100, 7), (5, 5), (1000, 33)])
def test_allocation_sums_exactly_and_gives_each_step_one(schedule: str, total: int, steps: int) -> None:
    counts = allocate_iterations(total, steps, schedule)
    assert len(counts) == steps and sum(counts) == total and min(counts) >= 1


def test_schedule_shapes() -> None:
    decreasing = allocate_iterations(64, 16, "decreasing")
    increasing = allocate_iterations(64, 16, "increasing")
    assert decreasing == sorted(decreasing, reverse=True) and decreasing[0] > decreasing[-1]
    assert increasing == decreasing[::-1]
    assert allocate_iterations(64, 16, "fixed") == [4] * 16
    cosine = allocate_iterations(64, 16, "cosine")
    assert max(cosine) in cosine[6:10] and cosine[0] < cosine[8]  # peaks mid-trajectory
    front = allocate_iterations(64, 16, "front-loaded")
    assert min(front[:4]) > max(front[4:])


@pytest.mark.parametrize("budget", [96, 192, 384, 768])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_fp_plan_spends_the_budget(budget: int, schedule: str) -> None:
    plan = plan_budget(FP, budget, None, schedule)
    assert sum(plan.blocks_per_step) == budget
    assert plan.blocks_per_step == [2 + n for n in plan.iterations]


def test_default_step_rule_targets_four_iterations() -> None:
    assert default_steps(FP, 96) == 16  # 96 / (1 + 4 + 1)
    assert default_steps(ModelConfig(K_pre=2, K_fp=2, K_post=2), 100) == 8  # 100/12 = 8; 100 - 8*4 = 68 is even


def test_plain_model_budget_fixes_steps() -> None:
    plan = plan_budget(PLAIN, 96, None, "decreasing")
    assert (plan.steps, plan.iterations, plan.blocks_per_step) == (8, [], [12] * 8)
    with pytest.raises(CofreError, match="valid budgets are multiples of 12, e.g. 96 or 108"):
        plan_budget(PLAIN, 100, None, "fixed")
    with pytest.raises(CofreError, match="fixes its steps"):
        plan_budget(PLAIN, 96, 10, "fixed")


def test_impossible_fp_budget_names_valid_ones() -> None:
    with pytest.raises(CofreError, match="valid budgets are 30, 31, 32"):
        plan_budget(FP, 20, 10, "fixed")
    with pytest.raises(CofreError, match="valid budgets are 24, 26, 28"):
        plan_budget(ModelConfig(K_pre=1, K_fp=2, K_post=1), 25, 6, "fixed")
