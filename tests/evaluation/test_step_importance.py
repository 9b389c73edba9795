"""Step importance on stand-in models with known outputs: CE, gap and KL curves, resume, the suggested schedule."""

import math
from pathlib import Path

import pytest
import torch

from cofre.errors import CofreError
from cofre.evaluation.step_importance import (
    ImportancePoint,
    analyse,
    default_times,
    importance_point,
    suggest_schedule,
    trajectory_thirds,
)

MASK = 4  # vocabulary 0..3 and [mask] = 4
Q = torch.tensor([0.7, 0.1, 0.1, 0.1], dtype=torch.float64)


def uniform(z: torch.Tensor, t: float) -> torch.Tensor:
    return torch.full((*z.shape, MASK), math.log(0.25), dtype=torch.float64)


def middle_differs(z: torch.Tensor, t: float) -> torch.Tensor:
    """Uniform like the heavy stand-in, except in the middle of the trajectory, where it predicts Q."""
    if 1 / 3 <= t <= 2 / 3:
        return Q.log().expand(*z.shape, MASK).clone()
    return uniform(z, t)


BATCHES = [torch.zeros(2, 50, dtype=torch.long), torch.zeros(2, 50, dtype=torch.long)]  # every target is token 0
KL_UNIFORM_Q = float((0.25 * (math.log(0.25) - Q.log())).sum())


def test_ce_gap_and_kl_match_the_known_distributions() -> None:
    middle = importance_point(uniform, middle_differs, BATCHES, 0.5, MASK, seed=0)
    assert middle.ce_heavy == pytest.approx(math.log(4))
    assert middle.ce_light == pytest.approx(-math.log(0.7))
    assert middle.gap == pytest.approx(-math.log(0.7) - math.log(4))
    assert middle.kl == pytest.approx(KL_UNIFORM_Q) and middle.kl > 0.3
    expected = sum(int((torch.rand(x.shape, generator=torch.Generator().manual_seed(i)) < 0.5).sum())
                   for i, x in enumerate(BATCHES))
    assert middle.masked == expected  # every masked position of every batch, none other
    early = importance_point(uniform, middle_differs, BATCHES, 0.9, MASK, seed=0)
    assert early.kl == pytest.approx(0) and early.gap == pytest.approx(0) and early.masked > middle.masked  # nested masks


def test_curves_resume_and_locate_the_sensitive_middle(tmp_path: Path) -> None:
    times = default_times(6)
    assert times == pytest.approx([11 / 12, 9 / 12, 7 / 12, 5 / 12, 3 / 12, 1 / 12])
    settings = {"seed": 0, "weights": "a"}
    path = tmp_path / "step-importance.json"
    result = analyse(uniform, middle_differs, BATCHES, times, MASK, settings, path, ("heavy", "light"))
    assert [p.kl > 0.3 for p in result.points] == [False, False, True, True, False, False]
    assert result.most_sensitive == "middle" and result.thirds["middle"] == pytest.approx(KL_UNIFORM_Q)

    def fail(z: torch.Tensor, t: float) -> torch.Tensor:
        raise AssertionError("a stored point was computed again")

    again = analyse(fail, fail, BATCHES, times, MASK, settings, path, ("heavy", "light"))  # read back, not recomputed
    assert again.points == result.points
    with pytest.raises(AssertionError, match="computed again"):  # other settings: computed afresh
        analyse(fail, fail, BATCHES, times, MASK, {**settings, "weights": "b"}, path, ("heavy", "light"))


def points(kls: dict[float, float]) -> list[ImportancePoint]:
    return [ImportancePoint(t, 1.0, 1.0 + kl, kl, kl, 10) for t, kl in kls.items()]


def test_suggested_schedule_makes_the_lowest_kl_steps_light() -> None:
    curve = points({0.9: 0.0, 0.5: 1.0, 0.1: 0.0})
    # 12 steps at t_i = 1 - i/12; KL interpolated: 0 for i = 0, 1, 11, then 1/6 for i = 2, 10, ... up to 1 at i = 6
    s = suggest_schedule(curve, 12, heavy_blocks=4, light_blocks=1, saving=0.3125)  # 5 light steps x 3/4 / 12
    assert (s.schedule, s.light_steps, s.saving) == ("L3,H7,L2", 5, pytest.approx(0.3125))
    assert trajectory_thirds(curve) == {"early (t > 2/3)": 0.0, "middle": 1.0, "late (t < 1/3)": 0.0}
    with pytest.raises(CofreError, match=r"--saving must be in \(0, 0.750\]"):
        suggest_schedule(curve, 12, 4, 1, 0.8)
    with pytest.raises(CofreError, match="nothing to save"):
        suggest_schedule(curve, 12, 4, 4, 0.1)
    with pytest.raises(CofreError, match="less than one light step"):
        suggest_schedule(curve, 12, 4, 1, 0.01)
