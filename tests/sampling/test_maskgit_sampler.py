"""The image sampler: Halton order, arccos reveal counts, guidance, exact budgets, 3SR on image codes."""

import math

import pytest
import torch

from cofre.config import ModelConfig
from cofre.errors import CofreError
from cofre.models import Denoiser
from cofre.sampling.budget import SCHEDULES, plan_budget
from cofre.sampling.maskgit import (ImageSamplerConfig, MaskGITSampler, guided_logits, halton_order, radical_inverse,
                                    reveal_counts, schedule_value)
from cofre.sampling.reuse import (NEWLY_REVEALED, REUSE_POLICIES, STILL_MASKED, UNCHANGED_VISIBLE, ReuseConfig,
                                  three_state_gamma, transition_types, warm_start)

GRID = (4, 4)
MASK = 16


def image_model(K: tuple[int, int, int] = (1, 1, 1)) -> Denoiser:
    torch.manual_seed(0)
    cfg = ModelConfig(modality="image", vocab_size=MASK + 1, hidden=32, heads=4, cond_dim=16, dropout=0.0,
                      max_seq_len=GRID[0] * GRID[1], K_pre=K[0], K_fp=K[1], K_post=K[2], num_classes=3, registers=1)
    return Denoiser(cfg).eval()


def test_radical_inverse_by_hand() -> None:
    assert [radical_inverse(i, 2) for i in (1, 2, 3, 4)] == [0.5, 0.25, 0.75, 0.125]
    assert radical_inverse(5, 3) == pytest.approx(2 / 3 + 1 / 9)  # 5 = 12 in base 3 -> 0.21


@pytest.mark.parametrize("side", [8, 16, 32])
def test_halton_order_covers_every_cell_once(side: int) -> None:
    order = halton_order(side, side)
    assert sorted(order.tolist()) == list(range(side * side))


@pytest.mark.parametrize("side", [8, 16, 32])
def test_halton_prefixes_spread_over_the_quadrants(side: int) -> None:
    """Low discrepancy: every prefix of 4k cells puts k +- 1 cells in each quadrant (a raster order puts them all
    in the first), and the first 16 cells never share a row band of side/4 more than their share allows."""
    order = halton_order(side, side)
    rows, cols = order // side, order % side
    quadrant = (rows >= side // 2).long() * 2 + (cols >= side // 2).long()
    for k in (4, 8, 16, 64):
        counts = torch.bincount(quadrant[:k], minlength=4)
        assert counts.max() - counts.min() <= 2, (k, counts.tolist())
    bands = torch.bincount(rows[:16] // (side // 4), minlength=4)
    assert bands.max() <= 5


@pytest.mark.parametrize("cells", [16, 49, 256])
def test_reveal_counts_sum_to_the_grid_for_every_step_count(cells: int) -> None:
    for steps in range(1, cells + 1):
        counts = reveal_counts(steps, cells)
        assert len(counts) == steps and sum(counts) == cells and min(counts) >= 1


def test_reveal_counts_follow_the_arccos_schedule() -> None:
    """After step k, about 1 - arccos(k/S)/(pi/2) of the grid is visible: few cells early, many late."""
    counts = reveal_counts(8, 256)
    visible = torch.tensor(counts).cumsum(0).tolist()
    for k, v in enumerate(visible, start=1):
        assert abs(v - (1 - math.acos(k / 8) / (math.pi / 2)) * 256) <= 1
    assert counts[0] < counts[-1]
    with pytest.raises(CofreError, match="cannot each reveal"):
        reveal_counts(17, 16)


def test_guidance_with_zero_weight_is_the_conditional_logits() -> None:
    cond, uncond = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    assert torch.equal(guided_logits(cond, uncond, 0.0), cond)
    assert torch.allclose(guided_logits(cond, uncond, 2.0), 3 * cond - 2 * uncond)
    assert schedule_value(0.0, 3.0, 0, 4) == 0.0 and schedule_value(0.0, 3.0, 3, 4) == 3.0


def test_sampler_without_guidance_runs_the_conditional_pass_only() -> None:
    """w = 0 (the default): one pass on the true labels; w > 0 doubles the batch with the dropped label."""
    model = image_model((2, 0, 0))
    seen: list[torch.Tensor] = []
    original = model.conditioning
    model.conditioning = lambda signal, n: (seen.append(signal.clone()), original(signal, n))[1]  # type: ignore[method-assign]
    labels = torch.tensor([0, 2])
    plan = plan_budget(model.cfg, 4, None, "fixed")
    MaskGITSampler(model, plan, GRID, ImageSamplerConfig()).sample(labels, torch.Generator().manual_seed(0))
    assert all(torch.equal(s, labels) for s in seen)
    seen.clear()
    MaskGITSampler(model, plan, GRID, ImageSamplerConfig(cfg=2.0)).sample(labels, torch.Generator().manual_seed(0))
    assert all(torch.equal(s, torch.tensor([0, 2, 3, 3])) for s in seen)  # 3 = the dropped class


@pytest.mark.parametrize("reuse", REUSE_POLICIES)
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_image_budget_is_spent_exactly(reuse: str, schedule: str) -> None:
    model = image_model()
    for budget, cfg in ((9, 0.0), (14, 1.5)):  # 3 steps x (2 + N) blocks; guidance does not change the count
        plan = plan_budget(model.cfg, budget, 3, schedule)
        config = ImageSamplerConfig(cfg=cfg, reuse=ReuseConfig(policy=reuse))  # type: ignore[arg-type]
        batch = MaskGITSampler(model, plan, GRID, config).sample(torch.tensor([1, 0]), torch.Generator().manual_seed(0))
        assert batch.blocks_spent == budget == sum(r.blocks for r in batch.steps)
        assert (batch.tokens < MASK).all()


def test_halton_sampler_reveals_in_order_and_never_changes_a_code() -> None:
    """Reveal is monotonic, so only Alg. 1's three token states occur; the Halton order decides which cells."""
    model = image_model((1, 0, 0))
    plan = plan_budget(model.cfg, 4, None, "fixed")
    sampler = MaskGITSampler(model, plan, GRID, ImageSamplerConfig())
    states = []
    original = sampler._choose

    def spy(z, *args):  # type: ignore[no-untyped-def]
        states.append(z.clone())
        return original(z, *args)

    sampler._choose = spy  # type: ignore[method-assign]
    final = sampler.sample(torch.tensor([0, 1]), torch.Generator().manual_seed(3)).tokens
    states.append(final)
    order = halton_order(*GRID)
    counts = reveal_counts(4, 16)
    for k in range(1, len(states)):
        kinds = transition_types(states[k], states[k - 1], MASK)
        visible_before = states[k - 1] != MASK
        assert (kinds[visible_before] == UNCHANGED_VISIBLE).all()  # a revealed code never changes or re-masks
        revealed = order[: sum(counts[:k])]
        assert (states[k][:, revealed] != MASK).all() and (states[k] != MASK).sum(1).tolist() == [sum(counts[:k])] * 2
        assert set(kinds.unique().tolist()) <= {UNCHANGED_VISIBLE, STILL_MASKED, NEWLY_REVEALED}


def test_three_state_gamma_on_image_codes_with_a_register() -> None:
    """Codes: visible-unchanged -> 1, still masked -> gamma_mask(v_t), newly revealed -> gamma_changed; the register
    token after the grid takes gamma_mask; the warm start mixes h_prev and h_pre with exactly these weights."""
    z_prev = torch.tensor([[5, MASK, MASK, MASK]])
    z = torch.tensor([[5, 7, MASK, MASK]])
    cfg = ReuseConfig("3sr", 0.75, 0.90, 0.2, 0.2)
    gamma_mask = 0.75 + 0.15 * 0.5  # v_t = 2 / 4 visible
    gamma = three_state_gamma(z, z_prev, MASK, cfg, registers=1)
    assert torch.allclose(gamma, torch.tensor([[1.0, 0.2, gamma_mask, gamma_mask, gamma_mask]]))
    h_pre, h_prev = torch.zeros(1, 5, 3), torch.ones(1, 5, 3)
    h0 = warm_start(h_pre, h_prev, z, z_prev, MASK, cfg)
    assert torch.allclose(h0[0, :, 0], gamma[0])


def test_confidence_order_reveals_the_planned_counts() -> None:
    model = image_model()
    plan = plan_budget(model.cfg, 12, 4, "decreasing")
    sampler = MaskGITSampler(model, plan, GRID, ImageSamplerConfig(order="confidence", temperature=0.5))
    batch = sampler.sample(torch.tensor([2, 2, 1]), torch.Generator().manual_seed(0))
    assert (batch.tokens < MASK).all() and batch.blocks_spent == 12


def test_rotation_rolls_the_order_per_sample() -> None:
    model = image_model((1, 0, 0))
    plan = plan_budget(model.cfg, 2, None, "fixed")
    sampler = MaskGITSampler(model, plan, GRID, ImageSamplerConfig(rotate=True))
    cells = sampler._halton_cells(64, torch.Generator().manual_seed(0), torch.device("cpu"))
    order = halton_order(*GRID)
    for row in cells:
        shift = int((row == order[0]).nonzero())
        assert torch.equal(row, torch.roll(order, shift))
    assert len({tuple(r.tolist()) for r in cells}) > 1
