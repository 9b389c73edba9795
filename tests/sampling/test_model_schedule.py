"""Model scheduling: schedules parse and cover the steps, blocks and FLOPs are counted per step with the model that ran
it, FP models split their iterations by --schedule, an all-heavy schedule draws the heavy model's samples, a switch of
model starts the solve from h_pre, and models of different widths share a trajectory."""

import dataclasses

import pytest
import torch

from cofre.config import DataConfig, ModelConfig, Recipe, SolverConfig
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.flops import FlopCounts
from cofre.sampling.budget import plan_budget
from cofre.sampling.mdlm import MDLMSampler, SamplerConfig
from cofre.sampling.model_schedule import (
    Segment,
    check_compatible,
    parse_model_schedule,
    plan_schedule,
    schedule_cost,
    step_models,
)
from cofre.sampling.reuse import ReuseConfig

SMALL = dict(vocab_size=50, hidden=32, heads=4, cond_dim=16, dropout=0.0, max_seq_len=16)


def recipe(K_pre: int, K_fp: int = 0, K_post: int = 0, eval_iters: int = 3, **model: object) -> Recipe:
    return Recipe(model=ModelConfig(**{**SMALL, **model}, K_pre=K_pre, K_fp=K_fp, K_post=K_post),  # type: ignore[arg-type]
                  solver=SolverConfig(eval_iters=eval_iters), data=DataConfig(seq_len=16))


def test_the_papers_sandwich_saves_exactly_one_sixth() -> None:
    heavy, light = recipe(12), recipe(4)
    segments = parse_model_schedule("L125,H750,L125", 1000)
    cost = schedule_cost(segments, heavy, light, 16)
    assert (cost.steps, cost.heavy_steps, cost.light_steps) == (1000, 750, 250)
    assert (cost.heavy_blocks, cost.light_blocks, cost.blocks_spent) == (750 * 12, 250 * 4, 10_000)
    assert cost.heavy_alone_blocks == 12_000
    assert cost.saving == pytest.approx(1 / 6) and f"{100 * cost.saving:.1f}%" == "16.7%"
    plan = plan_schedule(segments, heavy, light, "decreasing")  # plain models: no iterations to split
    # the budget is the sum over steps of the blocks of the model that ran each step
    assert plan.budget == sum(plan.blocks_per_step) == 10_000
    assert plan.blocks_per_step == [4] * 125 + [12] * 750 + [4] * 125 and plan.models == step_models(segments)
    assert plan_schedule(segments, heavy, light, "fixed", budget=10_000).budget == 10_000
    with pytest.raises(CofreError, match="spends 10000 blocks .* not the --budget 12000"):
        plan_schedule(segments, heavy, light, "fixed", budget=12_000)


def test_fractions_counts_and_merging() -> None:
    assert parse_model_schedule("L0.125,H0.75,L0.125", 1000) == parse_model_schedule("L125,H750,L125")
    assert parse_model_schedule("h2,H3,l1") == [Segment("H", 5), Segment("L", 1)]  # lower case, adjacent merge
    fp_heavy = recipe(1, 1, 1, eval_iters=3)  # 1 + 3 + 1 = 5 blocks a step
    cost = schedule_cost(parse_model_schedule("H2,L2"), fp_heavy, recipe(1), 16)
    assert (cost.blocks_spent, cost.heavy_iterations, cost.switch_warm_start) == (12, 3, "h_pre")


@pytest.mark.parametrize("text, steps, fragment", [
    ("L125,H750,L125", 900, "covers 1000 steps, not the 900 of --steps"),
    ("L0.125,H0.75", 1000, "fractions sum to 0.875, not 1"),
    ("L0.125,H0.875", 100, "is 12.5 steps"),
    ("L0.5,H0.5", None, "add --steps"),
    ("L1,H0.5", 4, "mixes step counts and fractions"),
    ("X5,H10", None, "unknown model 'X'"),
    ("L,H10", None, "needs a step count or fraction"),
    ("L0,H10", None, "positive number of steps"),
    ("H2.5", 10, "fractions sum to 2.5"),
    ("", None, "names no segment"),
])
def test_bad_schedules_are_one_line_errors(text: str, steps: int | None, fragment: str) -> None:
    with pytest.raises(CofreError) as err:
        parse_model_schedule(text, steps)
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, fragment", [
    ({"vocab_size": 60}, "vocabulary size (tokenizer) 60"),
    ({"modality": "image", "num_classes": 2}, "is an image model"),
])
def test_incompatible_models_are_refused(change: dict, fragment: str) -> None:
    light = recipe(1, **change)
    with pytest.raises(CofreError) as err:
        check_compatible(recipe(2), light, "runs/heavy", "runs/light")
    assert fragment in str(err.value) and "\n" not in str(err.value)
    other_length = dataclasses.replace(recipe(1), data=DataConfig(seq_len=8))
    with pytest.raises(CofreError, match="sequence length 8"):
        check_compatible(recipe(2), other_length, "runs/heavy", "runs/light")


def model(cfg: ModelConfig, seed: int) -> Denoiser:
    torch.manual_seed(seed)
    net = Denoiser(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


def draw(sampler: MDLMSampler, seed: int = 3):  # type: ignore[no-untyped-def]
    return sampler.sample(4, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("heavy_recipe, steps", [(recipe(2), 1000), (recipe(1, 1, 1, eval_iters=3), 8)],
                         ids=["plain-H1000", "fp-H8"])
def test_all_heavy_schedule_draws_the_heavy_models_samples(heavy_recipe: Recipe, steps: int) -> None:
    heavy, light = model(heavy_recipe.model, 0), model(recipe(1).model, 1)
    cfg = SamplerConfig(length=16, reuse=ReuseConfig("3sr"))
    per_step = heavy_recipe.model.K_pre + heavy_recipe.solver.eval_iters * heavy_recipe.model.K_fp + heavy_recipe.model.K_post
    alone = MDLMSampler(heavy, plan_budget(heavy.cfg, steps * per_step, steps, "fixed"), cfg)
    scheduled = MDLMSampler(heavy, plan_schedule(parse_model_schedule(f"H{steps}"), heavy_recipe, recipe(1), "fixed"), cfg,
                            light=light)
    a, b = draw(alone), draw(scheduled)
    assert torch.equal(a.tokens, b.tokens) and a.blocks_spent == b.blocks_spent == steps * per_step


def test_mixed_schedule_counts_each_steps_model_and_switches_from_h_pre() -> None:
    heavy_recipe, light_recipe = recipe(1, 1, 1, eval_iters=3), recipe(1, 1, 0, eval_iters=2)  # 5 and 3 blocks a step
    heavy, light = model(heavy_recipe.model, 0), model(light_recipe.model, 1)
    plan = plan_schedule(parse_model_schedule("L2,H4,L2"), heavy_recipe, light_recipe, "fixed")
    sampler = MDLMSampler(heavy, plan, SamplerConfig(length=16, reuse=ReuseConfig("full"), trace=True), light=light)
    out = draw(sampler)
    assert not (out.tokens == heavy.cfg.mask_id).any()
    assert [r.model for r in out.steps] == list("LLHHHHLL")
    assert [r.blocks for r in out.steps] == [3, 3, 5, 5, 5, 5, 3, 3] == plan.blocks_per_step
    assert out.blocks_spent == 32 == schedule_cost(parse_model_schedule("L2,H4,L2"), heavy_recipe, light_recipe,
                                                   16).blocks_spent
    # a solution shift is measured only against the same model's previous solution: none at a switch (from h_pre)
    assert [bool(r.solution_shift) for r in out.steps] == [False, True, False, True, True, True, False, True]
    # the light steps change what is drawn
    alone = MDLMSampler(heavy, plan_schedule(parse_model_schedule("H8"), heavy_recipe, light_recipe, "fixed"),
                        SamplerConfig(length=16, reuse=ReuseConfig("full")), light=light)
    assert not torch.equal(draw(alone).tokens, out.tokens)


def test_a_narrower_light_model_saves_more_flops_than_its_block_count_says() -> None:
    """Blocks are FLOPs only at one width: a half-width 4-block light model reports the sandwich's 1/6 of blocks, but
    saves more FLOPs (its blocks cost about a quarter of the heavy ones'), counted from both models' shapes."""
    heavy, light = recipe(12), recipe(4, hidden=16, heads=2)
    segments = parse_model_schedule("L125,H750,L125", 1000)
    cost = schedule_cost(segments, heavy, light, 16)
    assert cost.saving == pytest.approx(1 / 6) and (cost.heavy_width, cost.light_width) == (32, 16)
    h, l = FlopCounts.of_config(heavy.model, 16), FlopCounts.of_config(light.model, 16)
    assert cost.heavy_step_flops == 12 * h.block and cost.light_step_flops == 4 * l.block
    scheduled = 750 * 12 * h.block + 250 * 4 * l.block + (750 * h.head + 250 * l.head) / 1000
    assert cost.flops_per_token == pytest.approx(scheduled)
    assert cost.heavy_alone_flops_per_token == pytest.approx(1000 * 12 * h.block + h.head)
    assert cost.flop_saving == pytest.approx(1 - scheduled / (1000 * 12 * h.block + h.head))
    assert cost.flop_saving > 0.2 > cost.saving  # the block count understated this light model's saving
    same_width = schedule_cost(segments, heavy, recipe(4), 16)
    assert same_width.flop_saving == pytest.approx(1 / 6, rel=1e-3)  # one width: blocks are FLOPs (up to the head)


def test_flops_count_the_fixed_point_mix_per_iteration() -> None:
    fp = recipe(1, 1, 1, eval_iters=3)
    f = FlopCounts.of_config(fp.model, 16)
    assert f.mix > 0 and f.injection > 0
    cost = schedule_cost(parse_model_schedule("H4"), fp, recipe(1), 16)
    assert cost.heavy_step_flops == 2 * f.block + f.injection + 3 * (f.block + f.mix)
    assert cost.flops_per_token == pytest.approx(4 * cost.heavy_step_flops + f.head) and cost.flop_saving == 0


def test_fixed_point_models_split_their_iterations_by_the_schedule() -> None:
    """--schedule is honoured: an FP model's N x eval_iters iterations over its N steps follow the schedule's weights at
    those steps' places; fixed gives eval_iters everywhere; the budget is the same either way."""
    heavy, light = recipe(1, 1, 1, eval_iters=4), recipe(1, 1, 0, eval_iters=2)
    segments = parse_model_schedule("L2,H4,L2")
    fixed = plan_schedule(segments, heavy, light, "fixed")
    decreasing = plan_schedule(segments, heavy, light, "decreasing")
    assert fixed.iterations == [2, 2, 4, 4, 4, 4, 2, 2]
    assert decreasing.iterations[2:6] == sorted(decreasing.iterations[2:6], reverse=True) != [4] * 4
    assert decreasing.iterations[:2] >= decreasing.iterations[6:] and decreasing.iterations != fixed.iterations
    assert sum(decreasing.iterations[2:6]) == 16 and sum(decreasing.iterations[:2] + decreasing.iterations[6:]) == 8
    assert decreasing.budget == fixed.budget == sum(decreasing.blocks_per_step) == 4 * 6 + 4 * 3
    for schedule in ("decreasing", "cosine"):  # all heavy: the heavy model's own plan under that schedule
        alone = plan_budget(heavy.model, 8 * 6, 8, schedule)
        assert plan_schedule(parse_model_schedule("H8"), heavy, light, schedule).iterations == alone.iterations
    sampler = MDLMSampler(model(heavy.model, 0), decreasing, SamplerConfig(length=16), light=model(light.model, 1))
    out = draw(sampler)
    assert [r.iterations for r in out.steps] == decreasing.iterations and out.blocks_spent == decreasing.budget


def test_models_of_different_widths_share_a_trajectory() -> None:
    """The sampler passes only tokens between the models (a switch starts from h_pre), so widths may differ."""
    heavy, light = recipe(2), recipe(1, hidden=16, heads=2)
    plan = plan_schedule(parse_model_schedule("L2,H4,L2"), heavy, light, "fixed")
    out = draw(MDLMSampler(model(heavy.model, 0), plan, SamplerConfig(length=16), light=model(light.model, 1)))
    assert not (out.tokens == heavy.model.mask_id).any() and [r.model for r in out.steps] == list("LLHHHHLL")
